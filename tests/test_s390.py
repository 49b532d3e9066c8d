"""s390 vmemmap populate and free (arch/s390/mm/vmem.c), HugeTLB sizes and HVO (arch/s390/mm/hugetlbpage.c,
arch/s390/Kconfig); numbers in docs/kernel-map.md#worked-numbers."""

import pytest

from vmemcore import GiB, MiB
from vmemcore.altmap import VmemAltmap
from vmemcore.errors import OutOfMemory
from vmemcore.machine import Machine

SUB = 512  # pfns per 2 MiB sub-section: 32 KiB of struct pages
SEGMENT_FRAMES = 256  # one 1 MiB segment block
PFN_64G = 64 * GiB // 4096


def machine(variant="3-level", kernel="7.1", size=64 * GiB, **features):
    return Machine("s390", variant=variant, kernel=kernel, memory=[{"start": 0, "size": size}], features=features)


# ------------------------------------------------- boot (docs/kernel-map.md#boot-populate-shapes)

@pytest.mark.parametrize("variant, region_third_pages", [("3-level", None), ("4-level", 4)])
@pytest.mark.parametrize("kernel", ["6.12", "7.1"])
def test_64g_boots_into_1024_segment_leaves_under_one_segment_table(variant, region_third_pages, kernel):
    m = machine(variant, kernel)
    c = m.counters()
    assert c["vmemmap_leaves_1M"] == 1024
    assert [k for k in c if k.startswith("vmemmap_leaves_")] == ["vmemmap_leaves_1M"]
    assert c["vmemmap_pagetable_pages_pmd"] == 4  # one 16 KiB segment table
    assert c["vmemmap_pagetable_pages_pte"] == 0
    assert c.get("vmemmap_pagetable_pages_pud") == region_third_pages
    assert c["pagetable_frames"] == 4 + (region_third_pages or 0)
    assert c["memmap_frames"] == c["nr_memmap_boot_pages"] == 262_144  # 1 GiB of struct pages
    m.check()


def test_without_edat1_the_vmemmap_is_4k_pages_in_page_tables():
    m = machine(edat1=False)
    c = m.counters()
    assert c["vmemmap_leaves_4K"] == 262_144
    assert "vmemmap_leaves_1M" not in c
    assert c["vmemmap_pagetable_pages_pte"] == 1024  # 2 KiB tables, a 4 KiB page each
    assert c["pagetable_frames"] == 4 + 1024
    m.check()


# ----------------------------------------------------- populate (vmem.c vmemmap_populate)

@pytest.mark.parametrize("kernel", ["6.12", "7.1"])
def test_a_subsection_takes_a_whole_1m_block_shared_by_the_next_one(kernel):
    m = machine(kernel=kernel)
    before = m.snapshot()
    booted = m.counters()
    first, second = PFN_64G, PFN_64G + SUB
    m.add_memmap(first, SUB)
    c = m.counters()
    assert c["vmemmap_leaves_1M"] == 1025
    assert c["memmap_frames"] - booted["memmap_frames"] == SEGMENT_FRAMES  # for 32 KiB of struct pages
    assert c["nr_memmap_pages"] == 8
    segment = m.pfn_to_page(first)
    assert m.sub_pmd.snapshot() == [(segment + 32 * 1024, segment + MiB, True)]
    m.add_memmap(second, SUB)
    assert m.memmap_frame(second) == m.memmap_frame(first) + 8  # the same block, 32 KiB further
    assert m.counters()["memmap_frames"] == c["memmap_frames"]
    m.remove_memmap(first, SUB)  # vmemmap_unuse_sub_pmd: the second sub-section still uses the block
    assert m.counters()["vmemmap_leaves_1M"] == 1025
    assert m.memmap_frame(second) == m.memmap_frame(first) + 8
    m.remove_memmap(second, SUB)  # now all of it is unused: the leaf goes
    assert m.counters()["vmemmap_leaves_1M"] == 1024
    after = m.snapshot()
    assert after["physmem"] == before["physmem"]
    assert after["sub_pmd"] == []
    assert m.counters()["tlb_flush_kernel_range"] == 2  # one per vmemmap_free
    m.check()


def test_a_failed_1m_block_falls_back_to_a_page_table():
    m = machine()
    m.physmem.faults.arm(predicate=lambda r: r.nr_pages == SEGMENT_FRAMES)
    m.add_memmap(PFN_64G, 32768)  # one 128 MiB section: 2 MiB of struct pages, 2 segments
    c = m.counters()
    assert c["vmemmap_leaves_1M"] == 1024
    assert c["vmemmap_leaves_4K"] == 512
    assert c["vmemmap_pagetable_pages_pte"] == 2
    m.physmem.faults.disarm()
    before = m.counters()
    m.remove_memmap(PFN_64G, 32768)
    c = m.counters()
    assert "vmemmap_leaves_4K" not in c
    assert c["vmemmap_pagetable_pages_pte"] == 0
    assert c["free_frames"] - before["free_frames"] == 512 + 2
    m.check()


def test_an_exhausted_altmap_falls_back_to_4k_pages_from_the_altmap():
    # the generic vmemmap_populate_hugepages would fail (-ENOMEM, no fallback with an altmap); s390
    # takes a page table and asks the altmap for 4 KiB pages
    m = machine()
    base = PFN_64G
    m.physmem.hot_add(0, base, base + SUB)  # the memory being added hosts its memmap
    altmap = VmemAltmap(base_pfn=base, end_pfn=base + SUB - 1, free=8, journal=m.journal)
    before = m.snapshot()
    m.populate_section_memmap(PFN_64G, SUB, altmap=altmap)
    c = m.counters()
    assert (c["vmemmap_leaves_4K"], c["vmemmap_pagetable_pages_pte"]) == (8, 1)
    assert m.memmap_frame(PFN_64G) == base
    assert (altmap.alloc, altmap.align) == (8, 0)
    m.depopulate_section_memmap(PFN_64G, SUB, altmap=altmap)
    assert altmap.alloc == 0
    assert m.snapshot()["physmem"] == before["physmem"]
    m.check()


def test_allocations_ignore_the_node():
    # NUMA_NO_NODE: every node is tried, lowest id first (and vmemmap_verify is never called)
    m = Machine("s390", memory=[{"node": 0, "size": 32 * GiB}, {"node": 1, "size": 32 * GiB}])
    m.add_memmap(PFN_64G, 32768, node=1)
    assert m.physmem.node_of(m.memmap_frame(PFN_64G)) == 0
    assert m.stats["vmemmap_offnode_entries"] == 0
    m.check()


# ------------------------------------------------------------- free (vmem.c vmemmap_free)

@pytest.mark.parametrize("kernel, sections", [("6.12", 4), ("7.1", 8)])
def test_hot_added_gigabyte_round_trip_restores_the_machine(kernel, sections):
    m = machine(kernel=kernel)
    before = m.snapshot()
    pages = 1 * GiB // 4096
    m.add_memmap(PFN_64G, pages)
    c = m.counters()
    assert c["vmemmap_leaves_1M"] == 1024 + 16
    assert c["nr_memmap_pages"] == 16 * 256
    m.remove_memmap(PFN_64G, pages)
    after = m.snapshot()
    assert after["physmem"] == before["physmem"]
    assert after["tables"] == before["tables"]
    assert m.counters()["tlb_flush_kernel_range"] == sections  # one per section's vmemmap_free
    m.check()


@pytest.mark.parametrize("variant", ["3-level", "4-level"])
def test_removing_all_boot_memory_frees_every_table_below_the_top(variant):
    m = machine(variant, "7.1")
    m.remove_memmap(0, 64 * GiB // 4096)
    c = m.counters()
    assert (c["memmap_frames"], c["pagetable_frames"]) == (0, 0)
    assert c["free_frames"] == c["present_pages"] - c["kernel_image_frames"]  # the kernel image is never freed
    assert c["nr_memmap_boot_pages"] == 0
    assert c["tlb_flush_kernel_range"] == 512
    m.check()


# ------------------------------------------------------------------------ fault injection

@pytest.mark.parametrize("variant", ["3-level", "4-level"])
@pytest.mark.parametrize("kernel, segments", [("6.12", 4), ("7.1", 2)])
def test_fault_at_every_allocation_of_a_section_add(variant, kernel, segments):
    # at 128 GiB the memmap starts a new segment table (2 GiB of VA): the table, then one 1 MiB
    # block per segment; a failed block falls back to a page table of 4 KiB pages
    def op(m):
        m.add_memmap(128 * GiB // 4096, m.sparse_geometry.pages_per_section)

    probe = machine(variant, kernel)
    probe.physmem.faults.arm()
    op(probe)
    assert probe.physmem.faults.attempts == 1 + segments
    for index in range(1, segments + 2):
        m = machine(variant, kernel)
        before = m.snapshot()
        m.physmem.faults.arm(nth=index)
        try:
            op(m)
        except OutOfMemory:
            assert index == 1
            assert m.snapshot() == before, f"fault at allocation {index} left changes behind"
        else:
            assert index > 1
            c = m.counters()
            assert (c["vmemmap_leaves_4K"], c["vmemmap_leaves_1M"]) == (256, 1024 + segments - 1)
        m.check()


def test_a_failure_after_the_fallback_undoes_the_whole_range():
    # the kernel's vmemmap_populate runs remove_pagetable over the range; the journal does the same
    m = machine()
    before = m.snapshot()
    m.physmem.faults.arm(predicate=lambda r: r.index > 1)  # the 1st segment's block, then nothing
    with pytest.raises(OutOfMemory, match="pte table"):
        m.add_memmap(PFN_64G, 32768)
    assert m.snapshot() == before
    m.check()


# ----------------------------------- HugeTLB sizes (hugetlbpage.c arch_hugetlb_valid_size)

@pytest.mark.parametrize("variant, features, sizes", [
    ("3-level", {}, [(1 * MiB, "pmd"), (2 * GiB, "pgd")]),  # region-third is the top of 3 levels
    ("4-level", {}, [(1 * MiB, "pmd"), (2 * GiB, "pud")]),
    ("3-level", {"edat1": False}, [(2 * GiB, "pgd")]),
    ("4-level", {"edat2": False}, [(1 * MiB, "pmd")]),
])
def test_hugepage_sizes(variant, features, sizes):
    m = machine(variant, size=4 * GiB, **features)
    got = m.hooks.hugepage_sizes(m)
    assert [(h.size, h.level, h.contiguous) for h in got] == [(size, level, 1) for size, level in sizes]
    for h in got:
        assert m.geometry.level(h.level).entry_span == h.size


# ----------------------------------------------- HVO (docs/kernel-map.md#hvo-per-architecture)

@pytest.mark.parametrize("kernel, supported, reason", [
    ("5.14", False, "before 6.2"),
    ("6.1", False, "before 6.2"),
    ("6.12", True, "64e2f60f355e"),  # a yes with the caveat that it breaks the live-entry rule
    ("6.19", False, "64e2f60f355e"),
    ("7.1", False, "without going through invalid"),
])
def test_hvo_from_62_until_618(kernel, supported, reason):
    m = machine(kernel=kernel, size=4 * GiB)
    support = m.hooks.hvo_support(m)
    assert support.supported is supported
    assert reason in support.reason
