"""Boot allocations outside the sparse buffer, batched (``PhysMem.memblock_alloc``), leave the
machine exactly as one memblock call per vmemmap page does: ``vmemmap_alloc_block_buf`` falls
back to ``vmemmap_alloc_block`` → ``memblock_alloc_try_nid_raw`` a page at a time, each call the
highest aligned free block, top down (``__memblock_find_range_top_down``, mm/memblock.c). The
reference here is that rule written out call by call."""

import numpy as np
import pytest

from vmemcore import Machine
from vmemcore.errors import OutOfMemory
from vmemcore.physmem import FaultInjector, Owner, PhysMem, Use


def _one_by_one(physmem, count, nr_pages, node, purpose, align=1, exact_nid=False, movable=False):
    """``count`` memblock calls, each on its own: the fault injector asked, then the highest block
    of ``nr_pages`` aligned to ``align`` in the highest free range that holds one, the node's ranges
    first and (unless ``exact_nid``) then the others, lowest node id first."""
    pfns = []
    for _ in range(count):
        if physmem.faults.should_fail("memblock", nr_pages, node, purpose):
            break
        found = None
        for candidate in physmem._node_order(node, exact_nid):
            for zone in physmem._zone_order(movable):
                for start, end, _ in physmem._free[candidate].items_reversed(zone):
                    pfn = (end - nr_pages) // align * align
                    if pfn >= start:
                        found = pfn
                        break
                if found is not None:
                    break
            if found is not None:
                break
        if found is None:
            break
        physmem._take(found, nr_pages, Owner(purpose, reserved=True))
        pfns.append(found)
    return np.array(pfns, dtype=np.int64)


def _memory():
    """Two nodes with holes and reservations: free ranges of odd lengths and alignments."""
    pm = PhysMem(page_shift=16, max_pfn=1 << 20)
    pm.add_range(0, 0, 1000)
    pm.add_range(0, 1013, 1100)
    pm.add_range(1, 2000, 2301)
    pm.reserve(1090, 1093, Owner(Use.KERNEL_IMAGE, reserved=True))
    pm.reserve(2200, 2201, Owner(Use.KERNEL_IMAGE, reserved=True))
    return pm


CALLS = [  # (count, nr_pages, node, align, exact_nid)
    (50, 1, 0, 1, False),
    (400, 4, 0, 4, False),  # runs past node 0 into node 1
    (700, 4, 1, 4, True),  # more than node 1 holds: memory runs out
    (90, 3, 0, 8, False),  # blocks smaller than their alignment: steps of 8, gaps left free
    (40, 16, 1, 16, False),
]


@pytest.mark.parametrize("call", CALLS)
def test_batched_memblock_calls_take_the_frames_one_call_each_would(call):
    count, nr_pages, node, align, exact_nid = call
    batched, reference = _memory(), _memory()
    got = batched.memblock_alloc(count, nr_pages, node, Use.MEMMAP, align, exact_nid)
    want = _one_by_one(reference, count, nr_pages, node, Use.MEMMAP, align, exact_nid)
    assert got.tolist() == want.tolist()
    assert batched.snapshot() == reference.snapshot()
    assert (batched.faults.attempts, batched.faults.failed) == (reference.faults.attempts, reference.faults.failed)
    batched.check()


def test_the_first_calls_go_top_down_in_steps_of_the_aligned_size():
    # node 0's highest free range is [1093, 1100) (the image holds 1090-1092): 4-page blocks aligned
    # to 4 fit at 1096 only; then [1013, 1090): 1084, 1080, ..., 1016 (18 blocks); then [0, 1000)
    got = _memory().memblock_alloc(21, 4, 0, Use.MEMMAP, 4).tolist()
    assert got[:3] == [1096, 1084, 1080] and got[18] == 1016 and got[19:] == [996, 992]


@pytest.mark.parametrize("call", CALLS[:3])
def test_batched_memblock_calls_under_fault_injection_at_every_index(call):
    count, nr_pages, node, align, exact_nid = call
    for nth in range(1, count + 2):
        batched, reference = _memory(), _memory()
        batched.faults.arm(nth=nth)
        reference.faults.arm(nth=nth)
        got = batched.memblock_alloc(count, nr_pages, node, Use.MEMMAP, align, exact_nid)
        want = _one_by_one(reference, count, nr_pages, node, Use.MEMMAP, align, exact_nid)
        # the nth call fails, so nth - 1 blocks are granted unless memory ran out first
        assert len(got) == len(want) <= nth - 1
        assert got.tolist() == want.tolist()
        assert batched.snapshot() == reference.snapshot()
        assert (batched.faults.attempts, batched.faults.failed) == (reference.faults.attempts, reference.faults.failed)


def _reference_boot(monkeypatch):
    """Boots from here on take their memblock blocks one call at a time."""
    monkeypatch.setattr(PhysMem, "memblock_alloc", _one_by_one)


def _boot(*args, **kwargs):
    try:
        m = Machine(*args, **kwargs)
    except OutOfMemory as error:
        return str(error)
    return m.counters(), m.snapshot(), m.physmem.faults.attempts


def _same(a, b):
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.array_equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


BOOTS = [
    ("arm64", "64K-52", [{"size": "4194048M"}]),  # 4 TiB less 256 MiB
    ("arm64", "64K-52", [{"size": "1T"}, {"node": 1, "size": "1048320M"}]),
    ("arm64", "64K-48", [{"size": "16318M"}]),
    ("arm64", "64K-48", [{"size": "3G"}, {"node": 1, "start": "8G", "size": "4G"}]),
    ("powerpc", "hash-64K", [{"size": "1022M"}]),
]


@pytest.mark.parametrize("arch, variant, memory", BOOTS)
def test_a_boot_without_the_sparse_buffer_ends_as_one_call_per_page_does(monkeypatch, arch, variant, memory):
    batched = _boot(arch, variant, memory=memory)
    _reference_boot(monkeypatch)
    assert _same(batched, _boot(arch, variant, memory=memory))


def test_the_4t_64k_52_boot_maps_every_section_from_memblock():
    # 4 TiB less 256 MiB of 64 KiB pages: 8,192 sections of 512 MiB (the last one partly present,
    # its memmap whole), each 8,192 x 64 B = 8 pages of memmap; section_map_size() is 512 MiB a
    # section, so the buffer would be the whole node and fails: all 65,536 pages come from memblock
    counters = _boot("arm64", "64K-52", memory=[{"size": "4194048M"}])[0]
    assert counters["memmap_frames"] == counters["nr_memmap_boot_pages"] == 8192 * 8


def test_a_boot_under_fault_injection_at_every_index_fails_or_ends_as_one_call_per_page_does(monkeypatch):
    # arm64 64K-48, 16 GiB: the buffer attempt, 2 page tables and 256 memmap pages from memblock
    arm = FaultInjector.arm
    outcomes = {}
    for reference in (False, True):
        if reference:
            _reference_boot(monkeypatch)
        for nth in range(1, 262):
            monkeypatch.setattr(FaultInjector, "__init__", lambda self, nth=nth: (arm(self, nth=nth), None)[1])
            outcomes.setdefault(nth, []).append(_boot("arm64", "64K-48", memory=[{"size": "16G"}]))
    assert all(_same(*pair) for pair in outcomes.values())
    assert sum(isinstance(pair[0], str) for pair in outcomes.values()) == 256 + 2  # each table and page's call fails the boot
