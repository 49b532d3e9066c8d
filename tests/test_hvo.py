"""HugeTLB Vmemmap Optimization on x86_64: the kernel's numbers, struct pages through the vmemmap,
fault injection, and the batched path against the one-folio-at-a-time path."""

import pytest

from vmemcore.errors import BadRequest, Veto
from vmemcore.hugetlb_pool import OPTIMIZED
from vmemcore.machine import Machine
from vmemcore.physmem import NORMAL, Owner, Use
from vmemcore.structpage import KPF_COMPOUND_HEAD, KPF_COMPOUND_TAIL, KPF_HUGE, ReadOnlyFault, StructPage
from vmemcore.units import GiB, TiB


def machine(kernel="6.12", size=16 * GiB, hvo=True, **kw):
    return Machine("x86_64", kernel=kernel, memory=[{"size": size}], hugetlb={"optimize_vmemmap": hvo}, **kw)


def memmap_total(m):
    c = m.counters()
    return c["nr_memmap_boot_pages"] + c["nr_memmap_pages"]


def assert_selftest(m, folio):
    """tools/testing/selftests/mm/hugepage-vmemmap.c: head is head+huge, every other pfn tail+huge."""
    sp = m.structpages
    count = 1 << folio.order
    flags = sp.kpageflags_range(folio.head, count)
    assert flags[0] & (1 << KPF_COMPOUND_HEAD | 1 << KPF_HUGE) == (1 << KPF_COMPOUND_HEAD | 1 << KPF_HUGE)
    for pfn, value in enumerate(flags[1:], folio.head + 1):
        assert value & (1 << KPF_COMPOUND_TAIL) and value & (1 << KPF_HUGE), hex(pfn)
        assert not value & (1 << KPF_COMPOUND_HEAD), f"pfn {pfn:#x} reads as a head"
    assert set(sp.compound_heads(folio.head, count)) == {folio.head}


@pytest.mark.parametrize("kernel, size, count, vmemmap_pages, freed", [
    ("6.12", "2M", 4, 8, 7), ("7.1", "2M", 4, 8, 7), ("5.14", "2M", 4, 8, 6), ("6.1", "2M", 4, 8, 7),
    ("6.12", "1G", 2, 4096, 4095), ("7.1", "1G", 2, 4096, 4095), ("5.14", "1G", 2, 4096, 4094),
])
def test_vmemmap_pages_freed_per_folio(kernel, size, count, vmemmap_pages, freed):
    m = machine(kernel)
    frames = m.counters()["memmap_frames"]
    total = memmap_total(m)
    m.hugetlb.resize(size, count)
    h = m.hugetlb.hstate(size)
    assert h.nr_huge_pages == count
    tail_pages = len(m.hugetlb.hvo.tail_pages)  # 7.1's shared tail page: kept, not counted
    assert frames - m.counters()["memmap_frames"] == count * freed - tail_pages
    assert total - memmap_total(m) == count * freed
    for folio in h.folios.values():
        start = m.pfn_to_page(folio.head)
        mapped = {m.pagetable.translate(start + k * 4096) >> 12 for k in range(vmemmap_pages)}
        assert len(mapped) == vmemmap_pages - freed + (kernel == "7.1")
        assert_selftest(m, folio)
    m.check()


def test_growing_and_shrinking_512_pages_moves_the_counters_as_the_kernel_does():
    m = machine()
    before = m.counters()
    result = m.hugetlb.resize("2M", 512)
    assert (result.allocated, result.optimized, result.not_optimized) == (512, 512, {})
    grown = m.counters()
    # 6.12: all 8 boot-allocated frames per folio freed (boot counter), 1 new head page (buddy counter)
    assert before["nr_memmap_boot_pages"] - grown["nr_memmap_boot_pages"] == 512 * 8
    assert grown["nr_memmap_pages"] - before["nr_memmap_pages"] == 512
    assert before["memmap_frames"] - grown["memmap_frames"] == 512 * 7
    assert grown["tlb_flush_all"] - before.get("tlb_flush_all", 0) == 2  # one batch: after the splits, at the end
    result = m.hugetlb.resize("2M", 0)
    assert (result.freed, result.nr_hugepages, result.surplus) == (512, 0, 0)
    shrunk = m.counters()
    assert memmap_total(m) == before["nr_memmap_boot_pages"] + before["nr_memmap_pages"]
    assert shrunk["nr_memmap_pages"] - before["nr_memmap_pages"] == 512 + 512 * 7  # restored pages come from buddy
    assert shrunk["memmap_frames"] == before["memmap_frames"]
    assert shrunk["free_frames"] == before["free_frames"] - grown["vmemmap_pagetable_pages_pte"]  # splits stay
    m.check()


def test_struct_pages_are_right_before_optimize_after_and_after_restore():
    m = machine(hvo=False)
    m.hugetlb.resize("2M", 3)
    folios = list(m.hugetlb.hstate("2M").folios.values())
    for folio in folios:
        assert_selftest(m, folio)
    m.hugetlb.set_optimize_vmemmap(True)
    m.hugetlb.hvo.optimize(folios)
    for folio in folios:
        assert m.hugetlb.hvo.is_optimized(folio.head)
        assert_selftest(m, folio)
    done, rest, error = m.hugetlb.hvo.restore(folios)
    assert (len(done), rest, error) == (3, [], None)
    for folio in folios:
        assert not m.hugetlb.hvo.is_optimized(folio.head)
        assert_selftest(m, folio)
    m.check()


def test_the_switch_only_affects_pages_allocated_afterwards():
    m = machine(hvo=False)
    m.hugetlb.resize("2M", 2)
    m.hugetlb.set_optimize_vmemmap(True)
    m.hugetlb.resize("2M", 5)
    optimized = [m.hugetlb.hvo.is_optimized(f.head) for f in m.hugetlb.hstate("2M").folios.values()]
    assert sorted(optimized) == [False, False, True, True, True]
    m.hugetlb.set_optimize_vmemmap(False)
    assert sum(m.hugetlb.hvo.is_optimized(f.head) for f in m.hugetlb.hstate("2M").folios.values()) == 3


def test_tails_are_read_only_and_a_write_faults_without_changing_anything():
    m = machine()
    m.hugetlb.resize("2M", 1)
    folio = next(iter(m.hugetlb.hstate("2M").folios.values()))
    before = m.snapshot()
    with pytest.raises(ReadOnlyFault, match="read-only"):
        m.structpages.write(folio.head + 100, StructPage())
    assert m.snapshot() == before
    m.structpages.write(folio.head + 5, StructPage(flags=0))  # the head vmemmap page is writable


def test_new_head_page_falls_back_to_the_old_one_when_it_cannot_be_had():
    m = machine(hvo=False)
    m.hugetlb.resize("2M", 1)
    m.hugetlb.set_optimize_vmemmap(True)
    folio = next(iter(m.hugetlb.hstate("2M").folios.values()))
    old_head_frame = m.memmap_frame(folio.head)
    m.physmem.faults.arm(predicate=lambda r: r.purpose.value == "memmap")
    assert m.hugetlb.hvo.optimize([folio]) == {}
    assert m.memmap_frame(folio.head) == old_head_frame  # head kept, 7 tails freed
    assert m.memmap_frame(folio.head + 511) == old_head_frame
    assert_selftest(m, folio)


def test_71_without_a_new_head_page_does_not_optimize():
    m = machine("7.1", hvo=False)
    m.hugetlb.resize("2M", 1)
    m.hugetlb.set_optimize_vmemmap(True)
    folio = next(iter(m.hugetlb.hstate("2M").folios.values()))
    m.hugetlb.hvo.shared_tail_page(folio.node, folio.order)
    before = m.counters()
    m.physmem.faults.arm(predicate=lambda r: r.purpose.value == "memmap")
    assert m.hugetlb.hvo.optimize([folio]) == {folio.head: "ENOMEM"}
    assert not m.hugetlb.hvo.is_optimized(folio.head)
    assert m.counters()["memmap_frames"] == before["memmap_frames"]
    assert_selftest(m, folio)


def test_a_failed_split_midway_rolls_the_walk_back_as_the_kernel_does():
    # 1G folio: its 16 MiB of vmemmap spans 8 PMD leaves; from the 3rd on, no split can be had
    m = machine(hvo=False)
    m.hugetlb.resize("1G", 1)
    folio = next(iter(m.hugetlb.hstate("1G").folios.values()))
    m.hugetlb.set_optimize_vmemmap(True)
    total, frames = memmap_total(m), m.counters()["memmap_frames"]
    tables = []
    m.physmem.faults.arm(predicate=lambda r: r.purpose.value == "pagetable" and (tables.append(r) or len(tables) >= 3))
    failed = m.hugetlb.hvo.optimize([folio])
    assert failed == {folio.head: "ENOMEM"}
    assert not m.hugetlb.hvo.is_optimized(folio.head)
    c = m.counters()
    # pass 2 fails at the 3rd PMD twice (the batch retries once after freeing what is pending); each
    # rollback leaves the head on a new page and frees the previous head frame: frames balance
    assert len(tables) == 5  # pass 1: 2 splits and a failure; pass 2: the walk and its retry fail there
    assert c["memmap_frames"] == frames
    assert memmap_total(m) == total
    assert c["vmemmap_leaves_4K"] == 2 * 512  # the two splits that worked stay split
    assert m.memmap_frame(folio.head) != m.memmap_frame(folio.head + 64)  # tails have frames of their own
    assert_selftest(m, folio)
    m.check()


def test_boot_gigantic_pages_are_optimized_through_the_boot_path_as_boot_memory():
    m = Machine("x86_64", memory=[{"size": 16 * GiB}],
                hugetlb={"optimize_vmemmap": True, "boot": [{"size": "1G", "count": 2}]})
    h = m.hugetlb.hstate("1G")
    assert h.nr_huge_pages == 2 and all(f.boot for f in h.folios.values())
    c = m.counters()
    assert c["nr_memmap_boot_pages"] == 65_536 - 2 * 4096
    assert c["nr_memmap_pages"] == 2  # the new head pages
    # memblock gave them, but gather_bootmem_prealloc made them managed pages (adjust_managed_page_count)
    assert not any(m.physmem.owner(f.head).reserved for f in h.folios.values())
    for folio in h.folios.values():
        assert m.hugetlb.hvo.is_optimized(folio.head)
        assert_selftest(m, folio)
    m.check()


def test_514_maps_the_vmemmap_with_base_pages_and_keeps_two_pages():
    m = machine("5.14")
    assert "vmemmap_leaves_2M" not in m.counters()
    with pytest.raises(BadRequest, match="5.19"):
        m.hugetlb.set_optimize_vmemmap(False)


def test_self_hosted_vmemmap_is_refused():
    m = machine(hvo=False)
    m.hugetlb.resize("2M", 2)
    folios = list(m.hugetlb.hstate("2M").folios.values())
    m.hugetlb.set_optimize_vmemmap(True)
    # as if the memory were hot-added with memmap_on_memory: its memmap frames are self-hosted
    frame = m.memmap_frame(folios[0].head)
    m.physmem.retag(frame, 1, Owner(Use.MEMMAP, self_hosted=True))
    failed = m.hugetlb.hvo.optimize(folios)
    assert failed == {folios[0].head: "ENOTSUPP"}
    assert m.hugetlb.hvo.is_optimized(folios[1].head)


def test_an_arch_without_hvo_refuses_with_the_kernels_reason():
    with pytest.raises(Veto, match="break-before-make"):
        Machine("arm64", memory=[{"size": 16 * GiB}], hugetlb={"optimize_vmemmap": True})


def test_sizes_that_are_not_optimizable_are_left_alone_and_reported():
    # arm64 4K, kernel 6.0 (arm64 had HVO from 5.19): a 64K cont-PTE page has 16 struct pages = 1 KiB
    m = Machine("arm64", kernel="6.0", memory=[{"size": 16 * GiB}], hugetlb={"optimize_vmemmap": True})
    result = m.hugetlb.resize("64K", 4)
    assert result.not_optimized == {"not optimizable": 4} and result.optimized == 0
    result = m.hugetlb.resize("2M", 2)
    assert result.optimized == 2


def test_restore_failure_keeps_the_folio_as_a_surplus_page():
    m = machine()
    m.hugetlb.resize("2M", 2)
    m.physmem.faults.arm(predicate=lambda r: r.purpose.value == "memmap")
    result = m.hugetlb.resize("2M", 0)
    assert (result.freed, result.nr_hugepages, result.surplus) == (0, 2, 2)
    assert m.stats["hugetlb_restore_failures"] == 2
    m.physmem.faults.disarm()
    result = m.hugetlb.resize("2M", 0)
    assert (result.freed, result.nr_hugepages) == (2, 0)
    m.check()


def _run(kernel, batch_runs, nth, shrink):
    m = machine(kernel, size=4 * GiB, hvo=True)
    m.hugetlb.hvo.batch_runs = batch_runs
    if shrink:
        m.hugetlb.resize("2M", 80)
    m.physmem.faults.arm(nth=nth)
    m.hugetlb.resize("2M", 20 if shrink else 80)
    attempts = m.physmem.faults.attempts
    m.physmem.faults.disarm()
    return m, attempts


@pytest.mark.parametrize("kernel", ["6.12", "7.1"])
@pytest.mark.parametrize("shrink", [False, True])
def test_fault_at_every_allocation_batched_equals_folio_by_folio(kernel, shrink):
    _, attempts = _run(kernel, True, None, shrink)
    assert attempts > 80
    for nth in list(range(1, 12)) + list(range(12, attempts + 1, 7)):
        fast, _ = _run(kernel, True, nth, shrink)
        slow, _ = _run(kernel, False, nth, shrink)
        assert fast.snapshot() == slow.snapshot(), f"fault at allocation {nth}"
        fast.check()
        for folio in fast.hugetlb.hstate("2M").folios.values():
            assert fast.structpages.compound_head(folio.head + 200) == folio.head


def test_one_tib_of_2m_pages_frees_3670016_pages_and_splits_8192_pmds():
    # no kernel image (kernel_image=0): the pool below covers [0, 1 TiB) with no hole at 16 MiB
    m = Machine("x86_64", memory=[{"size": 1 * TiB + 64 * GiB}], kernel_image=0)
    # unoptimized padding: the order-9 blocks memblock_free_all left at the top of boot memory go
    # first (the order-9 list's head), so that the pool then grows from pfn 0 through the order-10
    # blocks: 524,288 pages cover [0, 1 TiB), 8,192 whole 2 MiB vmemmap leaves of 64 pages each
    m.hugetlb.resize("2M", len(m.physmem.buddy.free_list(0, NORMAL, 9)))
    m.hugetlb.set_optimize_vmemmap(True)
    frames = m.counters()["memmap_frames"]
    result = m.hugetlb.resize("2M", m.hugetlb.hstate("2M").nr_huge_pages + 524_288)
    assert result.optimized == 524_288
    c = m.counters()
    assert frames - c["memmap_frames"] == 3_670_016
    assert c["hvo_pmd_splits"] == 8_192
    assert c["vmemmap_pagetable_pages_pte"] == 8_192


def _gigantic(kernel):
    m = machine(kernel, size=4 * GiB, hvo=False)
    m.hugetlb.resize("1G", 1)
    m.hugetlb.set_optimize_vmemmap(True)
    return m, next(iter(m.hugetlb.hstate("1G").folios.values()))


@pytest.mark.parametrize("kernel", ["6.1", "6.12", "7.1"])
def test_fault_at_every_allocation_of_a_gigantic_optimize_and_restore(kernel):
    m, folio = _gigantic(kernel)
    m.physmem.faults.arm()
    m.hugetlb.hvo.optimize([folio])
    optimize_attempts = m.physmem.faults.attempts
    m.physmem.faults.arm()
    m.hugetlb.hvo.restore([folio])
    restore_attempts = m.physmem.faults.attempts
    assert optimize_attempts >= 8 and restore_attempts == 4095  # 8 PMD splits (+ new head, tail page)
    for phase, attempts in (("optimize", optimize_attempts), ("restore", restore_attempts)):
        for nth in sorted({1, 2, 3, 5, 8, attempts // 2, attempts}):
            m, folio = _gigantic(kernel)
            if phase == "restore":
                m.hugetlb.hvo.optimize([folio])
            baseline = memmap_total(m) - m.counters()["memmap_frames"] + len(m.hugetlb.hvo.tail_pages)
            before = m.snapshot()
            m.physmem.faults.arm(nth=nth)
            if phase == "optimize":
                m.hugetlb.hvo.optimize([folio])
            else:
                done, rest, error = m.hugetlb.hvo.restore([folio])
                if error:  # nothing could be allocated: the folio and the machine are as they were
                    assert m.snapshot() == before and m.hugetlb.hvo.is_optimized(folio.head)
            m.physmem.faults.disarm()
            assert memmap_total(m) - m.counters()["memmap_frames"] + len(m.hugetlb.hvo.tail_pages) == baseline
            assert_selftest(m, folio)
            m.check()


def test_a_bad_request_changes_nothing():
    m = machine()
    m.hugetlb.resize("2M", 3)
    before = m.snapshot()
    with pytest.raises(BadRequest, match="no 4M HugeTLB pages"):
        m.hugetlb.resize("4M", 1)
    with pytest.raises(BadRequest, match="count -1 is negative"):
        m.hugetlb.resize("2M", -1)
    assert m.snapshot() == before


@pytest.mark.parametrize("kernel, frames_kept", [("6.19", 1), ("7.1", 1)])
def test_615_builds_boot_gigantic_pages_vmemmap_already_optimized(kernel, frames_kept):
    m = Machine("x86_64", kernel=kernel, memory=[{"size": 16 * GiB}],
                hugetlb={"optimize_vmemmap": True, "boot": [{"size": "1G", "count": 2}]})
    c = m.counters()
    # SPARSEMEM_VMEMMAP_PREINIT: the 16 sections of the two pages are skipped by sparse_init, each
    # page gets one head vmemmap page (boot counter +1), the rest of its PTEs mirror one frame
    assert c["nr_memmap_boot_pages"] == 65_536 - 2 * 4096 + 2
    assert c["nr_memmap_pages"] == 0
    assert "hvo_pmd_splits" not in c and c["vmemmap_pagetable_pages_pte"] == 16
    shared = len(m.hugetlb.hvo.tail_pages)
    assert shared == (kernel == "7.1")
    assert c["memmap_frames"] == 65_536 - 2 * 4096 + 2 + shared
    for folio in m.hugetlb.hstate("1G").folios.values():
        assert m.hugetlb.hvo.is_optimized(folio.head)
        table, index = m.pagetable.lookup(m.pfn_to_page(folio.head + 64))
        assert table.flags[index] & 4  # vmemmap_wrprotect_hvo made the mirrored tails read-only
        assert_selftest(m, folio)
    m.hugetlb.resize("1G", 0)  # restore allocates the 4,095 tail pages each from buddy
    assert m.counters()["nr_memmap_pages"] == 2 * 4095
    m.check()


def test_before_615_boot_gigantic_pages_are_optimized_after_boot_with_splits():
    m = Machine("x86_64", kernel="6.12", memory=[{"size": 16 * GiB}],
                hugetlb={"optimize_vmemmap": True, "boot": [{"size": "1G", "count": 2}]})
    assert m.counters()["hvo_pmd_splits"] == 16


@pytest.mark.parametrize("nodes", [1, 2])
def test_shrinking_a_pool_at_once_equals_shrinking_it_a_page_at_a_time(nodes):
    """The pool is shrunk with its victims picked and its memory released in batches; the
    machine must end as freeing them one ``nr_hugepages`` write at a time leaves it."""
    memory = [{"node": n, "start": n * 8 * GiB, "size": 8 * GiB} for n in range(nodes)]
    batched, single = (Machine("x86_64", memory=memory) for _ in range(2))
    for m in (batched, single):
        m.hugetlb.resize("2M", 1000)
    batched.hugetlb.resize("2M", 301)
    for count in range(999, 300, -1):
        single.hugetlb.resize("2M", count)
    for m in (batched, single):
        m.check()
    assert batched.snapshot()["physmem"] == single.snapshot()["physmem"]
    assert batched.snapshot()["hugetlb"] == single.snapshot()["hugetlb"]
    assert batched.hugetlb.hstate("2M").nr_huge_pages == 301


def _pre_67_pool(kernel, folios):
    m = machine(kernel, size=4 * GiB)
    m.hugetlb.resize("2M", folios)
    return m


@pytest.mark.parametrize("kernel", ["5.14", "6.0", "6.1"])
def test_before_67_shrinking_at_once_equals_shrinking_a_folio_at_a_time(kernel):
    """Before 6.7 ``update_and_free_pages_bulk`` restores and frees each folio before the next, so
    one write of ``nr_hugepages`` must leave the machine as one write per folio does (the frames
    a freed folio gives back may hold the next one's restored vmemmap) -- except which restored
    vmemmap page maps where: ``set_max_huge_pages`` adds each folio it takes to the front of its
    list, so one write frees the 60 in the reverse of the order 60 writes do, and the same frames
    reach the restores in another order."""
    at_once, one_by_one = _pre_67_pool(kernel, 80), _pre_67_pool(kernel, 80)
    optimized = at_once.counters()["memmap_frames"]
    result = at_once.hugetlb.resize("2M", 20)
    for count in range(79, 19, -1):
        one_by_one.hugetlb.resize("2M", count)
    snapshots = at_once.snapshot(), one_by_one.snapshot()
    assert snapshots[0].pop("tables") != snapshots[1].pop("tables")
    assert snapshots[0] == snapshots[1] and at_once.counters() == one_by_one.counters()
    at_once.check()
    # every freed folio got back the vmemmap HVO took: 64 struct pages of 64 bytes fill a 4 KiB
    # page, so 512 pfns need 8 pages, of which 5.14 keeps 2 and later kernels 1
    kept = 2 if kernel == "5.14" else 1
    assert result.freed == 60
    assert at_once.counters()["memmap_frames"] - optimized == 60 * (8 - kept)


@pytest.mark.parametrize("kernel", ["5.14", "6.0"])
def test_before_67_a_failed_restore_keeps_that_folio_as_surplus_and_frees_the_rest(kernel):
    """A fault at every allocation of a 10-folio shrink: ``alloc_vmemmap_page_list`` asks for the
    folio's pages one at a time, so attempt ``nth`` belongs to folio ``(nth - 1) // pages``; that
    folio stays optimized in the pool as a surplus page, the other nine are freed."""
    pages = 6 if kernel == "5.14" else 7
    for nth in range(1, 10 * pages + 1):
        m = _pre_67_pool(kernel, 30)
        # set_max_huge_pages adds each folio it takes to the front of its list: restored last first
        victims = m.hugetlb._pick_free(m.hugetlb.hstate("2M"), 10).tolist()[::-1]
        m = _pre_67_pool(kernel, 30)  # the same pool, untouched
        m.physmem.faults.arm(nth=nth)
        result = m.hugetlb.resize("2M", 20)
        assert (result.freed, result.nr_hugepages, result.surplus) == (9, 21, 1), f"fault at allocation {nth}"
        failed = victims[(nth - 1) // pages]
        assert m.hugetlb.folio(failed).surplus and m.hugetlb.hvo.is_optimized(failed)
        # the list allocation stops at its failing page (the rest of that folio's are never
        # asked for); the later folios ask for all of theirs
        assert m.physmem.faults.attempts == 10 * pages - (pages - 1 - (nth - 1) % pages)
        m.physmem.faults.disarm()
        m.check()


@pytest.mark.parametrize("kernel, interleaved", [("6.1", True), ("6.6", True), ("6.12", False)])
def test_before_67_each_fresh_folio_is_optimized_before_the_next_is_allocated(kernel, interleaved):
    # alloc_fresh_hugetlb_folio -> prep_new_hugetlb_folio -> hugetlb_vmemmap_optimize (before 6.7):
    # the PTE table that splits the first folio's vmemmap PMD is allocated before the second folio.
    # With one order-9 block left below order 10, the first folio takes it; the table is then cut
    # from the lowest page of the first order-10 block (expand() keeps the low end), and the second
    # folio gets that block's upper half (6.2-6.6 allocate the new head page before the split,
    # from the same place). 6.7+ allocates both folios first (the second the low
    # half), then optimizes the list: the table comes from the upper half.
    m = machine(kernel, size=4 * GiB)
    buddy = m.physmem.buddy
    for order in range(10):
        for _ in buddy.free_list(0, NORMAL, order)[order == 9:]:
            m.physmem.alloc(1 << order, 0, Use.PINNED)
    assert [len(buddy.free_list(0, NORMAL, order)) for order in range(10)] == [0] * 9 + [1]
    (b9,), b10 = buddy.free_list(0, NORMAL, 9), buddy.free_list(0, NORMAL, 10)[0]
    m.hugetlb.resize("2M", 2)
    heads = sorted(m.hugetlb.hstate("2M").folios)
    owner = m.physmem.owner(b10 if interleaved else b10 + 512).use  # 6.2+ allocates a new head page first
    assert owner is (Use.PAGETABLE if kernel != "6.6" else Use.MEMMAP)
    assert heads == sorted([b9, b10 + 512] if interleaved else [b9, b10])


@pytest.mark.parametrize("kernel", ["6.1", "6.12", "7.1"])
def test_materialised_looks_up_a_few_pages_as_the_table_walk_finds_them(kernel, monkeypatch):
    from vmemcore import structpage

    m = machine(kernel, size=4 * GiB)
    m.hugetlb.resize("2M", 40)
    m.hugetlb.resize("2M", 30)  # some restored, some still optimized
    heads = sorted(m.hugetlb.hstate("2M").folios)
    ranges = [(h + d, h + d + n) for h in heads[::3] for d in (0, 1, 63, 64, 511) for n in (1, 64, 65, 512, 1024)]
    fast = [m.structpages.materialised(*r) for r in ranges]
    monkeypatch.setattr(structpage, "FEW_PAGES", 0)
    assert fast == [m.structpages.materialised(*r) for r in ranges]
    assert sum(map(len, fast)) > 0


@pytest.mark.parametrize("kernel", ["6.1", "6.6"])
def test_before_67_one_write_of_n_grows_the_pool_as_n_writes_of_one_more(kernel):
    # each fresh folio is allocated (round robin over the nodes), optimized and enqueued before
    # the next, whether one write asks for all of them or each write for one more
    def two_nodes():
        return Machine("x86_64", kernel=kernel, memory=[{"size": 2 * GiB, "node": 0}, {"size": 2 * GiB, "node": 1}],
                       hugetlb={"optimize_vmemmap": True})
    at_once, one_by_one = two_nodes(), two_nodes()
    at_once.hugetlb.resize("2M", 150)
    for count in range(1, 151):
        one_by_one.hugetlb.resize("2M", count)
    assert at_once.snapshot() == one_by_one.snapshot()
    assert at_once.counters() == one_by_one.counters()
    assert {f.node for f in at_once.hugetlb.hstate("2M").folios.values()} == {0, 1}


@pytest.mark.parametrize("kernel, first_allocated_maps_first", [("6.1", True), ("6.6", True), ("6.12", False)])
def test_a_restore_maps_its_pages_in_the_order_of_the_kernels_list(kernel, first_allocated_maps_first):
    # alloc_vmemmap_page_list list_add_tail()ed each page until 91f386bf0772 (6.7), list_add() since;
    # vmemmap_restore_pte maps the tails, lowest first, to the list's first entry each time
    m = machine(kernel, size=4 * GiB)
    m.hugetlb.hvo.batch_runs = False
    m.hugetlb.resize("2M", 1)
    folio = next(iter(m.hugetlb.hstate("2M").folios.values()))
    hvo, allocated = m.hugetlb.hvo, []
    alloc_page_list = hvo.alloc_page_list
    hvo.alloc_page_list = lambda count, node: allocated.extend(alloc_page_list(count, node)) or list(allocated)
    assert hvo.restore_folio(folio, 0) is None
    start = m.pfn_to_page(folio.head)
    mapped = [m.pagetable.translate(start + i * 4096) >> 12 for i in range(1, 8)]
    assert len(set(allocated)) == 7
    assert mapped == (allocated if first_allocated_maps_first else allocated[::-1])


@pytest.mark.parametrize("kernel, falls_back", [("6.6", False), ("6.12", True)])
def test_a_restore_takes_pages_of_another_node_from_6_7(kernel, falls_back):
    # alloc_vmemmap_page_list asked for __GFP_THISNODE until 6.7 ("mm: hugetlb_vmemmap: fix hugetlb
    # page number decrease failed on movable nodes"): with the folio's node full, the restore fails
    # and the folio stays in the pool as a surplus page; from 6.7 the pages come from node 1
    m = Machine("x86_64", kernel=kernel, memory=[{"size": 2 * GiB, "node": 0}, {"size": 2 * GiB, "node": 1}],
                hugetlb={"optimize_vmemmap": True})
    m.hugetlb.resize("2M", 1)
    folio = next(iter(m.hugetlb.hstate("2M").folios.values()))
    m.physmem.alloc_pages(m.physmem.free_pages(folio.node), folio.node, Use.PINNED, exact_nid=True)
    assert m.physmem.free_pages(folio.node) == 0
    result = m.hugetlb.resize("2M", 0)
    assert (result.freed, result.surplus) == ((1, 0) if falls_back else (0, 1))
    if falls_back:
        frames = [m.physmem.owner(pfn) for pfn in range(folio.head, folio.head + 512)]
        assert all(owner.use is Use.FREE for owner in frames)
    m.check()


@pytest.mark.parametrize("kernel, hvo", [("6.1", True), ("6.6", False), ("6.12", True), ("6.12", False)])
def test_boot_gigantic_pages_join_the_pool_in_the_order_of_the_kernels_lists(kernel, hvo):
    # memblock hands the boot pages out top down. Before 6.7 gather_bootmem_prealloc walks
    # huge_boot_pages (list_add: newest first) and enqueues each at the head of the free list, so
    # the oldest (highest) ends at the head; since d67e32f26713 (6.7) it gathers them on a second
    # list first, and the newest (lowest) ends at the head. HVO takes them in the same order.
    m = Machine("x86_64", kernel=kernel, memory=[{"size": 16 * GiB}],
                hugetlb={"optimize_vmemmap": hvo, "boot": [{"size": "1G", "count": 3}]})
    h = m.hugetlb.hstate("1G")
    (stack,) = h.free_lists.values()  # the end of the stack is the head of the list
    head_first = stack[::-1]
    assert head_first == (sorted(stack, reverse=True) if kernel != "6.12" else sorted(stack))


@pytest.mark.parametrize("kernel", ["6.1", "6.12"])
def test_boot_pages_of_a_buddy_size_asked_for_one_node_all_land_there(kernel):
    # hugepages=1:4 (hugetlb_hstate_alloc_pages_onenode, __GFP_THISNODE): the four pages are node
    # 1's, and the round robin of later writes to nr_hugepages still starts at node 0
    m = Machine("x86_64", kernel=kernel, memory=[{"size": 2 * GiB, "node": 0}, {"size": 2 * GiB, "node": 1}],
                hugetlb={"optimize_vmemmap": True, "boot": [{"size": "2M", "count": 4, "node": 1}]})
    h = m.hugetlb.hstate("2M")
    assert [f.node for f in h.folios.values()] == [1, 1, 1, 1]
    assert h.next_nid_to_alloc == 0
    m.hugetlb.resize("2M", 6)
    assert sorted(f.node for f in h.folios.values()) == [0, 1, 1, 1, 1, 1]
    m.check()


@pytest.mark.parametrize("operation", ["depopulate_section_memmap", "remove_memmap"])
def test_the_memmap_of_hugetlb_pages_is_not_freed_under_them(operation):
    """The kernel frees a section's memmap only once its memory is offline, which dissolves the
    HugeTLB pages there; freeing it under 1 GiB folios whose vmemmap HVO remapped (one reuse page
    mapped from eight PTE tables) is refused, and nothing changes."""
    from vmemcore.scenario import parse_scenario, run_scenario

    m, _ = run_scenario(parse_scenario(
        '[machine]\narch = "x86_64"\nkernel = "6.12"\n[[memory]]\nsize = "2G"\n[hugetlb]\noptimize_vmemmap = true\n'
        '[[steps]]\nop = "hotplug.add"\nstart = "64G"\nsize = "4G"\n'
        '[[steps]]\nop = "hotplug.online"\nstart = "64G"\nsize = "4G"\n'
        '[[steps]]\nop = "hugetlb.resize"\nsize = "1G"\ncount = 2\n'))
    assert m.hugetlb.hstate("1G").nr_huge_pages == 2 and m.hugetlb.hstate("1G").folios.count(OPTIMIZED) == 2
    before = m.snapshot()
    with pytest.raises(BadRequest, match=r"pfn 0x1000000 is a HugeTLB page.*offline the memory first"):
        getattr(m, operation)(64 * GiB >> 12, 4 * GiB >> 12)
    assert m.snapshot() == before
    m.check()
