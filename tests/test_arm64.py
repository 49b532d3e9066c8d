"""arm64 vmemmap populate and free (arch/arm64/mm/mmu.c), HugeTLB sizes and HVO (arch/arm64/mm/hugetlbpage.c,
arch/arm64/Kconfig); numbers in docs/kernel-map.md#worked-numbers."""

from types import SimpleNamespace

import pytest

import vmemcore_arm64
from vmemcore import GiB, KiB, MiB, TiB
from vmemcore.altmap import VmemAltmap
from vmemcore.errors import BadRequest, OutOfMemory
from vmemcore.machine import Machine
from vmemcore.plugins import ArchHooks


def machine(variant="4K-48", kernel=None, size=16 * GiB):
    return Machine("arm64", variant=variant, kernel=kernel, memory=[{"start": 0, "size": size}])


def pfn_of(m, addr):
    return addr >> m.geometry.page_shift


# 64K granule: section_map_size() rounds each section's 512 KiB memmap up to PMD_SIZE (512 MiB), so the
# node's sparse buffer asks memblock for all of a 16 GiB node and, in a memblock holding nothing else,
# gets it, leaving no frame for the page tables. One page less makes that allocation fail as it does on
# a real machine (memblock also holds the kernel), and changes no number of the shape.
SIZE_64K = 16 * GiB - 64 * KiB


# ------------------------------------------------- boot (docs/kernel-map.md#boot-populate-shapes)

@pytest.mark.parametrize("variant, size, shape", [
    # variant: (leaves, leaf size, PTE/PMD/PUD/P4D table pages, memmap and page-table frames of PAGE_SIZE)
    ("4K-39", 16 * GiB, dict(leaves_2M=128, pte=0, pmd=1, pud=None, p4d=None, memmap=65_536, tables=1)),
    ("4K-48", 16 * GiB, dict(leaves_2M=128, pte=0, pmd=1, pud=1, p4d=None, memmap=65_536, tables=2)),
    ("4K-52", 16 * GiB, dict(leaves_2M=128, pte=0, pmd=1, pud=1, p4d=1, memmap=65_536, tables=3)),
    ("16K-47", 16 * GiB, dict(leaves_16K=4096, pte=2, pmd=1, pud=None, p4d=None, memmap=4096, tables=3)),
    ("16K-48", 16 * GiB, dict(leaves_16K=4096, pte=2, pmd=1, pud=1, p4d=None, memmap=4096, tables=4)),
    ("16K-52", 16 * GiB, dict(leaves_16K=4096, pte=2, pmd=1, pud=1, p4d=None, memmap=4096, tables=4)),
    ("64K-48", SIZE_64K, dict(leaves_64K=256, pte=1, pmd=1, pud=None, p4d=None, memmap=256, tables=2)),
    ("64K-52", SIZE_64K, dict(leaves_64K=256, pte=1, pmd=1, pud=None, p4d=None, memmap=256, tables=2)),
])
@pytest.mark.parametrize("kernel", ["6.12", "7.1"])
def test_boot_shape_of_16g(variant, size, shape, kernel):
    m = machine(variant, kernel, size)
    c = m.counters()
    leaf_keys = [k for k in shape if k.startswith("leaves_")]
    assert {k: c[f"vmemmap_{k}"] for k in leaf_keys} == {k: shape[k] for k in leaf_keys}
    assert [k for k in c if k.startswith("vmemmap_leaves_")] == [f"vmemmap_{k}" for k in leaf_keys]
    for level in ("pte", "pmd", "pud", "p4d"):
        assert c.get(f"vmemmap_pagetable_pages_{level}") == shape[level]
    assert c["memmap_frames"] == shape["memmap"]
    assert c["nr_memmap_boot_pages"] == shape["memmap"]  # the memmap is exactly the struct pages
    assert c["pagetable_frames"] == shape["tables"]
    m.check()


# ------------------------------------------------------ populate (mmu.c vmemmap_populate)

SUB_4K = 512  # pfns per 2 MiB sub-section with 4 KiB pages
SECTION_4K = 32768


@pytest.mark.parametrize("kernel, leaves_2m, leaves_4k, pte_tables, frames", [
    ("6.12", 129, 0, 0, 512),  # 6.12.0: PMD leaf even for 32 KiB of memmap
    ("6.19", 128, 8, 1, 8),    # 6.14-rc7 on: base pages for less than a section
    ("7.1", 128, 8, 1, 8),
])
def test_a_subsection_add_per_profile(kernel, leaves_2m, leaves_4k, pte_tables, frames):
    m = machine(kernel=kernel)
    before = m.counters()
    m.add_memmap(64 * GiB // 4096, SUB_4K)
    c = m.counters()
    assert c["vmemmap_leaves_2M"] == leaves_2m
    assert c.get("vmemmap_leaves_4K", 0) == leaves_4k
    assert c["vmemmap_pagetable_pages_pte"] == pte_tables
    assert c["memmap_frames"] - before["memmap_frames"] == frames
    assert c["nr_memmap_pages"] == 8  # the counter sees 32 KiB of struct pages either way
    m.check()


@pytest.mark.parametrize("kernel, survives", [("6.12", False), ("7.1", True)])
def test_removing_one_subsection_of_a_pmd_leaf_unmaps_its_neighbour_before_614(kernel, survives):
    # "Populate vmemmap at the page level if not section aligned": a 6.12.0 vmemmap_free of memblock1
    # clears the whole PMD entry that also maps memblock2's struct pages.
    m = machine(kernel=kernel)
    before = m.snapshot()
    first, second = 64 * GiB // 4096, 64 * GiB // 4096 + SUB_4K
    m.add_memmap(first, SUB_4K)
    m.add_memmap(second, SUB_4K)
    frame = m.memmap_frame(second)
    m.remove_memmap(first, SUB_4K)
    assert m.memmap_frame(second) == (frame if survives else None)
    m.remove_memmap(second, SUB_4K)
    assert m.snapshot()["physmem"] == before["physmem"]
    m.check()


def test_subsection_base_pages_come_from_the_altmap():
    # unlike x86_64, arm64 passes the altmap to vmemmap_populate_basepages
    m = machine(kernel="7.1")
    pfn = base = 64 * GiB // 4096
    m.physmem.hot_add(0, base, base + SUB_4K)  # the memory being added hosts its memmap
    altmap = VmemAltmap(base_pfn=base, end_pfn=base + SUB_4K - 1, free=8, journal=m.journal)
    before = m.snapshot()
    m.populate_section_memmap(pfn, SUB_4K, altmap=altmap)
    assert m.memmap_frame(pfn) == base
    assert m.memmap_frame(pfn + SUB_4K - 64) == base + 7
    assert (altmap.alloc, altmap.nr_free) == (8, 0)
    m.depopulate_section_memmap(pfn, SUB_4K, altmap=altmap)
    assert altmap.alloc == 0
    assert m.snapshot()["physmem"] == before["physmem"]
    m.check()


def test_16k_and_64k_always_map_base_pages():
    m16 = machine("16K-48", "6.12")
    m16.add_memmap(64 * GiB // (16 * KiB), 8192)  # one 128 MiB section: 512 KiB of memmap
    assert m16.counters()["vmemmap_leaves_16K"] == 4096 + 32
    m64 = machine("64K-48", "6.12", SIZE_64K)
    m64.add_memmap(64 * GiB // (64 * KiB), 8192)  # one 512 MiB section: 512 KiB of memmap
    assert m64.counters()["vmemmap_leaves_64K"] == 256 + 8
    assert "vmemmap_leaves_32M" not in m16.counters() and "vmemmap_leaves_512M" not in m64.counters()


# -------------------------------------------------------------- free (mmu.c vmemmap_free)

@pytest.mark.parametrize("variant, size, kernel, new_tables, flushes", [
    # new tables for a memmap 4 GiB (4K) / 1 GiB (16K) / 256 MiB (64K) into the vmemmap; TLB flushes
    ("4K-48", 16 * GiB, "6.12", 2, 4),      # a PUD and a PMD table; one PMD leaf per section
    ("4K-48", 16 * GiB, "7.1", 2, 4),
    ("4K-52", 16 * GiB, "7.1", 2, 4),       # a PUD and a PMD table under the boot P4D table
    ("16K-48", 16 * GiB, "7.1", 2, 4 * 32),  # a PMD and a PTE table; one flush per 16 KiB page
    ("64K-48", SIZE_64K, "7.1", 0, 4 * 8),   # inside the boot PTE table (512 MiB of VA)
])
def test_hot_added_sections_round_trip_frees_everything(variant, size, kernel, new_tables, flushes):
    m = machine(variant, kernel, size)
    before, booted = m.snapshot(), m.counters()
    pages = m.sparse_geometry.pages_per_section
    pfn = pfn_of(m, 256 * GiB)
    m.add_memmap(pfn, 4 * pages)
    added = m.counters()
    assert added["nr_memmap_pages"] == 4 * m.sparse_geometry.section_memmap_bytes // m.geometry.page_size
    assert added["pagetable_frames"] - booted["pagetable_frames"] == new_tables
    m.remove_memmap(pfn, 4 * pages)
    after = m.snapshot()
    assert after["physmem"] == before["physmem"]
    assert after["tables"] == before["tables"]
    assert m.counters()["tlb_flush_kernel_range"] == flushes
    assert m.counters()["nr_memmap_pages"] == 0
    m.check()


def test_a_table_reaching_past_vmemmap_end_is_never_freed():
    # free_empty_tables(start, end, VMEMMAP_START, VMEMMAP_END): the memmap of the last section below
    # 128 TiB ends at VMEMMAP_END (-1 GiB). Its PMD table (1 GiB of VA) lies inside the ceiling and goes;
    # its PUD table spans the last 512 GiB, past the ceiling (fixmap, PCI I/O), and stays.
    m = machine("4K-48", "7.1")
    before = m.counters()
    pfn = (128 * TiB - 128 * MiB) // 4096
    assert m.pfn_to_page(pfn + SECTION_4K) == m.sparse_geometry.vmemmap_base + m.sparse_geometry.vmemmap_size
    m.add_memmap(pfn, SECTION_4K)
    c = m.counters()
    assert (c["vmemmap_pagetable_pages_pud"], c["vmemmap_pagetable_pages_pmd"]) == (2, 2)
    m.remove_memmap(pfn, SECTION_4K)
    c = m.counters()
    assert (c["vmemmap_pagetable_pages_pud"], c["vmemmap_pagetable_pages_pmd"]) == (2, 1)
    assert c["pagetable_frames"] == before["pagetable_frames"] + 1
    assert c["free_frames"] == before["free_frames"] - 1
    m.check()


def test_the_table_reaching_below_vmemmap_start_holds_the_first_boot_struct_pages():
    # The floor side of free_empty_tables: VMEMMAP_START (-2 TiB - 1 GiB) is not 512 GiB aligned, so
    # the PUD table holding memstart_addr's struct pages starts below it; it spans 1 GiB of vmemmap
    # above VMEMMAP_START, the struct pages of 64 GiB from memstart_addr, and RAM starts less than
    # ARM64_MEMSTART_ALIGN (1 GiB) above memstart_addr: its boot memmap is always in that table's
    # first PMD table, which arm64 never removes (prevent_bootmem_remove_notifier). Memory hot-added
    # beside it comes and goes without freeing either table.
    m = Machine("arm64", variant="4K-48", kernel="7.1", memory=[{"start": 64 * GiB + 512 * MiB, "size": 16 * GiB}])
    assert m.pfn_to_page(64 * GiB // 4096) == vmemcore_arm64.VMEMMAP_END - 2 * TiB  # VMEMMAP_START
    before = m.snapshot()
    pfn = 64 * GiB // 4096  # RAM below the boot RAM, above memstart_addr: inside the linear map
    m.add_memmap(pfn, SECTION_4K)
    assert m.counters()["vmemmap_pagetable_pages_pmd"] == 1
    with pytest.raises(BadRequest, match="never removes boot memory"):
        m.remove_memmap(pfn + 4 * SECTION_4K, SECTION_4K)
    m.remove_memmap(pfn, SECTION_4K)
    assert m.snapshot()["tables"] == before["tables"]
    m.check()


def test_a_16k_pte_table_goes_only_with_its_last_page():
    m = machine("16K-48", "7.1")
    pfn = pfn_of(m, 256 * GiB)  # memmap 1 GiB into the vmemmap: a PTE table of its own (32 MiB of VA)
    m.add_memmap(pfn, 2 * 8192)
    assert m.counters()["vmemmap_pagetable_pages_pte"] == 3
    m.remove_memmap(pfn, 8192)
    assert m.counters()["vmemmap_pagetable_pages_pte"] == 3
    assert m.counters()["vmemmap_leaves_16K"] == 4096 + 32
    m.remove_memmap(pfn + 8192, 8192)
    assert m.counters()["vmemmap_pagetable_pages_pte"] == 2
    m.check()


@pytest.mark.parametrize("variant, size, pages", [("4K-48", 16 * GiB, SECTION_4K), ("16K-48", 16 * GiB, 8192)])
def test_boot_memory_is_never_removed_and_nothing_changes(variant, size, pages):
    m = machine(variant, "7.1", size)
    before = m.snapshot()
    with pytest.raises(BadRequest, match="arm64 never removes boot memory"):
        m.remove_memmap(pages, pages)  # the second boot section
    assert m.snapshot() == before
    m.check()


# ------------------------------------------------------------------------ fault injection

def _attempts(variant, kernel, op):
    m = machine(variant, kernel)
    m.physmem.faults.arm()
    op(m)
    return m.physmem.faults.attempts


@pytest.mark.parametrize("variant, kernel, attempts, completes", [
    # a new PUD table, a new PMD table, the 2 MiB block; a failed block falls back to base pages
    ("4K-48", "7.1", 3, {3}),
    ("4K-48", "6.12", 3, {3}),
    # a new PTE table and 32 pages of 16 KiB: no fallback
    ("16K-48", "7.1", 33, set()),
])
def test_fault_at_every_allocation_of_a_section_add(variant, kernel, attempts, completes):
    def op(m):
        m.add_memmap(pfn_of(m, 64 * GiB), m.sparse_geometry.pages_per_section)

    assert _attempts(variant, kernel, op) == attempts
    for index in range(1, attempts + 1):
        m = machine(variant, kernel)
        before = m.snapshot()
        m.physmem.faults.arm(nth=index)
        try:
            op(m)
        except OutOfMemory:
            assert index not in completes
            assert m.snapshot() == before, f"fault at allocation {index} left changes behind"
        else:
            assert index in completes
            assert m.counters()["vmemmap_leaves_4K"] == 512  # the section's PMD as base pages
        m.check()


# -------------------------------------- HugeTLB sizes (hugetlbpage.c __hugetlb_valid_size)

@pytest.mark.parametrize("variant, sizes", [
    ("4K-39", [(64 * KiB, "pte", 16), (2 * MiB, "pmd", 1), (32 * MiB, "pmd", 16), (1 * GiB, "pgd", 1)]),
    ("4K-48", [(64 * KiB, "pte", 16), (2 * MiB, "pmd", 1), (32 * MiB, "pmd", 16), (1 * GiB, "pud", 1)]),
    ("4K-52", [(64 * KiB, "pte", 16), (2 * MiB, "pmd", 1), (32 * MiB, "pmd", 16), (1 * GiB, "pud", 1)]),
    ("16K-47", [(2 * MiB, "pte", 128), (32 * MiB, "pmd", 1), (1 * GiB, "pmd", 32)]),
    ("16K-48", [(2 * MiB, "pte", 128), (32 * MiB, "pmd", 1), (1 * GiB, "pmd", 32)]),
    ("64K-48", [(2 * MiB, "pte", 32), (512 * MiB, "pmd", 1), (16 * GiB, "pmd", 32)]),
    ("64K-52", [(2 * MiB, "pte", 32), (512 * MiB, "pmd", 1), (16 * GiB, "pmd", 32)]),
])
def test_hugepage_sizes(variant, sizes):
    m = machine(variant, size=SIZE_64K if variant.startswith("64K") else 16 * GiB)
    got = m.hooks.hugepage_sizes(m)
    assert [(h.size, h.level, h.contiguous) for h in got] == sizes
    for h in got:  # the named level's entries, times the contiguous count, make the size
        assert m.geometry.level(h.level).entry_span * h.contiguous == h.size


@pytest.mark.parametrize("variant, sizes", [
    ("16K-36", [(2 * MiB, "pte", 128), (32 * MiB, "pgd", 1), (1 * GiB, "pgd", 32)]),
    ("64K-42", [(2 * MiB, "pte", 32), (512 * MiB, "pgd", 1), (16 * GiB, "pgd", 32)]),
])
def test_two_level_hugepage_sizes_sit_in_the_top_table(variant, sizes):
    # the folded PMD is the top table (such a machine cannot boot yet: the engine's section_map_size
    # looks for a level named "pmd"), so the hook is asked with just a variant and its geometry
    hooks = ArchHooks("arm64", vmemcore_arm64)
    chosen = hooks.info.variant(variant)
    stub = SimpleNamespace(variant=chosen, geometry=hooks.pagetable_geometry(chosen, None))
    got = vmemcore_arm64.vmemcore_hugepage_sizes(stub)
    assert [(h.size, h.level, h.contiguous) for h in got] == sizes


# ----------------------------------------------- HVO (docs/kernel-map.md#hvo-per-architecture)

@pytest.mark.parametrize("kernel, reason", [
    ("5.14", "before 5.19"),
    ("6.1", "060a2c92d1b6"),  # the disable was backported to 6.1.y
    ("6.12", "break-before-make"),
    ("6.19", "break-before-make"),
    ("7.1", "break-before-make"),
])
def test_no_profile_has_hvo(kernel, reason):
    m = machine(kernel=kernel)
    support = m.hooks.hvo_support(m)
    assert support.supported is False
    assert reason in support.reason
