"""Runs of whole sections populated and freed in one arch call (``Sparse.batches``) leave the machine
exactly as the kernel's one call per section (``__add_pages`` / ``__remove_pages`` calling
``sparse_add_section`` / ``sparse_remove_section`` a section at a time) does: page tables, frames,
counters (TLB flushes included), sections, altmaps, struct pages, device pagemaps. The reference is
the same engine with batching off, so every piece is a single section piece."""

import contextlib

import pytest

from vmemcore import hookimpl, populate
from vmemcore.errors import VmemcoreError
from vmemcore.machine import Machine
from vmemcore.physmem import Use
from vmemcore.units import GiB, MiB
from vmemcore.zone_device import add_devdax_step, remove_devdax_step


class PopulateCalls:
    """Counts the arch's vmemmap_populate and vmemmap_free calls."""

    def __init__(self):
        self.populate = self.free = 0

    @hookimpl(wrapper=True)
    def vmemcore_vmemmap_populate(self, machine, start, end, node, altmap):
        self.populate += 1
        return (yield)

    @hookimpl(wrapper=True)
    def vmemcore_vmemmap_free(self, machine, start, end, altmap):
        self.free += 1
        return (yield)


def _unbatched(machine):
    """The machine with section runs never batched: every call a section piece, as the kernel's."""
    machine.sparse.batches = lambda pgmap=None: False
    return machine


def _pair(*args, **kwargs):
    return Machine(*args, **kwargs), _unbatched(Machine(*args, **kwargs))


def _same(batched, reference):
    assert batched.snapshot() == reference.snapshot()
    assert batched.counters() == reference.counters()
    batched.check()


HOTPLUG_MACHINES = [
    ("x86_64", None, None, "N"),
    ("x86_64", None, None, "Y"),
    ("x86_64", None, None, "Y64"),  # 64 GiB of boot memory: 2 GiB blocks of 16 sections, an altmap each
    ("x86_64", "5-level", None, "Y"),
    ("x86_64", None, "5.14", "N"),  # v17-era HVO: whole sections of base pages
    ("x86_64", None, "6.0", "Y"),  # one memory block per hot-add with memmap_on_memory
    ("x86_64", None, "2019", "Y"),  # one altmap over the whole range, freed backwards a section at a time
    ("arm64", "4K-48", None, "Y"),
    ("arm64", "64K-48", None, "N"),  # 512 KiB of memmap per section: never batched
    ("s390", None, None, "Y"),
    ("riscv64", None, None, "N"),
    ("powerpc", "radix-64K", None, "N"),  # 16 KiB of memmap per 16 MiB section: never batched
]


@pytest.mark.parametrize("arch,variant,kernel,mode", HOTPLUG_MACHINES)
def test_hotplug_round_trip_batched_equals_one_section_at_a_time(arch, variant, kernel, mode):
    hugetlb = {"optimize_vmemmap": True} if kernel == "5.14" else None
    boot = 64 * GiB if mode == "Y64" else 4 * GiB
    mode = mode[0]
    machines = _pair(arch, variant, kernel, memory=[{"size": boot}], hugetlb=hugetlb, hotplug={"memmap_on_memory": mode})
    block = machines[0].hotplug.block_size
    size = block if kernel == "6.0" else (2 if boot > 4 * GiB else 4) * block
    for m in machines:
        result = m.hotplug.add_memory(64 * GiB + boot, size, memmap_on_memory=mode == "Y")
        for b in result.blocks:
            m.hotplug.online(b)
    _same(*machines)
    for m in machines:
        for b in sorted(m.hotplug.blocks, reverse=True):
            m.hotplug.offline(b)
        m.hotplug.remove_memory(64 * GiB + boot, size)
    _same(*machines)


def test_a_hot_add_of_whole_sections_is_one_populate_and_one_free():
    calls = PopulateCalls()
    m = Machine("x86_64", memory=[{"size": 4 * GiB}], observers=[calls])
    booted = calls.populate
    m.hotplug.add_memory(64 * GiB, 1 * GiB)  # 8 blocks of one 128 MiB section, memmap from RAM
    assert calls.populate - booted == 1  # the kernel makes 8 calls: x86's section memmap is one 2 MiB PMD leaf
    m.hotplug.remove_memory(64 * GiB, 1 * GiB)
    assert calls.free == 1
    # remove_pagetable ends with flush_tlb_all, once per section in the kernel: 8, as if 8 calls
    assert m.counters()["tlb_flush_all"] == 8


def test_an_arm64_64k_hot_add_is_a_call_per_section():
    calls = PopulateCalls()
    m = Machine("arm64", "64K-48", memory=[{"size": 4 * GiB}], observers=[calls])
    assert not m.sparse.batches()  # 8,192 pages x 64 bytes = 512 KiB of memmap, a 512 MiB PMD leaf is not filled
    booted = calls.populate
    m.hotplug.add_memory(64 * GiB, 2 * GiB)  # 4 blocks of one 512 MiB section
    assert calls.populate - booted == 4


DEVDAX_MACHINES = [("x86_64", None, None), ("x86_64", None, "5.14"), ("arm64", "4K-48", None), ("riscv64", None, None),
                   ("powerpc", "radix-64K", None)]


@pytest.mark.parametrize("arch,variant,kernel", DEVDAX_MACHINES)
@pytest.mark.parametrize("align,altmap", [("2M", False), ("1G", False), ("2M", True), (None, False)])
def test_devdax_batched_equals_one_section_at_a_time(arch, variant, kernel, align, altmap):
    machines = _pair(arch, variant, kernel, memory=[{"size": 4 * GiB}])
    # starts 64 MiB into a section (x86: the run is half a section, 8 whole ones, half a section)
    start, size = 64 * GiB + 64 * MiB, 1 * GiB + (0 if align == "1G" else 64 * MiB)
    if align == "1G":
        start = 64 * GiB
    added = _both(machines, lambda m: add_devdax_step(m, start, size, align, altmap=altmap))
    if added:  # arm64 fails the 2M altmap case alike both ways: its PMD blocks find the altmap exhausted
        _both(machines, lambda m: remove_devdax_step(m, start, size))


def _both(machines, operation):
    """Run ``operation`` on both machines: the same result or the same error, the same machines.
    Whether it succeeded."""
    outcomes = []
    for m in machines:
        try:
            outcomes.append(operation(m))
        except VmemcoreError as error:
            outcomes.append(f"{type(error).__name__}: {error}")
    assert outcomes[0] == outcomes[1]
    _same(*machines)
    return not isinstance(outcomes[0], str)


def test_a_1g_compound_devdax_is_populated_a_section_at_a_time():
    """1 GiB compound pages cross 128 MiB sections: each section after the first maps the previous
    section's last vmemmap page (reuse_compound_section), so sections are not batched."""
    m = Machine("x86_64", memory=[{"size": 4 * GiB}])
    add_devdax_step(m, 64 * GiB, 1 * GiB, "1G")
    pgmap = m.zone_device.pagemaps[64 * GiB >> 12].pgmap
    assert pgmap.vmemmap_nr == 262_144 > m.sparse_geometry.pages_per_section == 32_768
    assert not m.sparse.batches(pgmap) and m.sparse.batches()


def _state(machine):
    """The machine's snapshot and the order of its free lists (which later allocations follow)."""
    return machine.snapshot(), machine.physmem.buddy.lists()


def _fault_every_index(build, operation, reference=_unbatched):
    """Fail each allocation the operation makes, one at a time, on a batched machine and on the
    reference (by default one section at a time): both fail alike (nothing half-applied, the machine
    unchanged, free lists included) or both succeed alike. Returns how many allocations a clean run makes."""
    clean = build()
    clean.physmem.faults.arm()
    operation(clean)
    attempts = clean.physmem.faults.attempts
    assert attempts > 0
    for nth in range(1, attempts + 1):
        outcomes = []
        for m in (build(), reference(build())):
            before = _state(m)
            m.physmem.faults.arm(nth=nth)
            try:
                operation(m)
                outcomes.append(("ok", _state(m)))
            except VmemcoreError as error:
                assert _state(m) == before, f"allocation {nth}: the failed operation left changes"
                outcomes.append((f"{type(error).__name__}: {error}", None))
            m.physmem.faults.disarm()
        assert outcomes[0] == outcomes[1], f"allocation {nth}"
    return attempts


def test_fault_injection_at_every_allocation_of_a_batched_hot_add():
    def build():
        return Machine("x86_64", memory=[{"size": 4 * GiB}])

    # 2 blocks of one 128 MiB section, memmap from RAM: 64 GiB's struct pages start 1 GiB into the
    # vmemmap, a PUD entry boot never used, so a PMD table, then a 2 MiB block per section
    attempts = _fault_every_index(build, lambda m: m.hotplug.add_memory(64 * GiB, 256 * MiB))
    assert attempts == 3  # one PMD table, two 2 MiB memmap blocks


def test_fault_injection_at_every_allocation_of_a_batched_devdax_add():
    def build():
        return Machine("x86_64", memory=[{"size": 4 * GiB}])

    # 2 whole sections of 2 MiB compound pages: per compound page 2 own vmemmap pages (head, first
    # tail), 128 compound pages a section, plus a PMD table and a PTE table per section
    attempts = _fault_every_index(build, lambda m: add_devdax_step(m, 64 * GiB, 256 * MiB, "2M"))
    assert attempts == 1 + 2 * (1 + 2 * 64)



def _fragmented():
    """4 GiB, 2 MiB of device memory added (so the next add finds its PMD table and the PTE table
    of its first section begun: 4 pages taken, a 4 MiB block split down to orders 2..9), then 3
    single pages taken and the middle one given back: the draw starts with single free pages,
    goes on through the split orders and ends in whole 4 MiB blocks."""
    m = Machine("x86_64", memory=[{"size": 4 * GiB}])
    add_devdax_step(m, 64 * GiB, 2 * MiB, "2M")
    pfns = [m.physmem.alloc(1, 0, Use.PINNED) for _ in range(3)]
    m.physmem.release(pfns[1], 1)
    return m


def test_fault_injection_at_every_allocation_of_a_compound_populate_drawn_ahead(monkeypatch):
    """The reference allocates each page table and each PTE table's head and first tail pages when
    the walk reaches them (``draw_ahead`` refused), as the kernel does."""
    draw_ahead = populate.draw_ahead
    monkeypatch.setattr(populate, "draw_ahead",
                        lambda machine, *args: None if getattr(machine, "as_it_goes", False) else draw_ahead(machine, *args))

    def as_it_goes(m):
        m.as_it_goes = True
        return m

    def add(m):  # the rest of section 0, then section 1: one populate call
        add_devdax_step(m, 64 * GiB + 2 * MiB, 254 * MiB, "2M")

    attempts = _fault_every_index(_fragmented, add, as_it_goes)
    # section 0's PTE table is there: 63 compound pages of 2 own vmemmap pages each; then
    # section 1: a PTE table and 64 compound pages (the PMD table came with the first 2 MiB)
    assert attempts == 2 * 63 + 1 + 2 * 64
    drawn, walked = _fragmented(), as_it_goes(_fragmented())
    for m in (drawn, walked):
        add(m)
    assert _state(drawn) == _state(walked)
    drawn.check()


def _freeing_as_it_goes(machine):
    """The machine with each free of a teardown reaching the allocator when the walk makes it."""
    machine.physmem.releases_gathered = contextlib.nullcontext
    return machine


@pytest.mark.parametrize("arch,variant,kernel", DEVDAX_MACHINES)
def test_teardown_frees_gathered_equal_frees_one_by_one(arch, variant, kernel):
    """A teardown's frees done at its end, in order, leave the free lists (their order included)
    and the frame maps as freeing each when the walk reaches it: device-dax and hot-added memory."""
    machines = [Machine(arch, variant, kernel, memory=[{"size": 4 * GiB}]) for _ in range(2)]
    _freeing_as_it_goes(machines[1])
    for m in machines:
        add_devdax_step(m, 64 * GiB + 64 * MiB, 1 * GiB + 64 * MiB, "2M")
        add_devdax_step(m, 72 * GiB, 256 * MiB)  # base pages: a frame per vmemmap page
        m.hotplug.add_memory(80 * GiB, 2 * m.hotplug.block_size)
    assert _state(machines[0]) == _state(machines[1])
    for m in machines:
        remove_devdax_step(m, 72 * GiB, 256 * MiB)
        remove_devdax_step(m, 64 * GiB + 64 * MiB)
        m.hotplug.remove_memory(80 * GiB, 2 * m.hotplug.block_size)
    assert _state(machines[0]) == _state(machines[1])
    machines[0].check()
