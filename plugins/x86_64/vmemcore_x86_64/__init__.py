"""x86_64 for vmemcore: ``arch/x86/mm/init_64.c`` and ``arch/x86/include/asm/pgtable_64_types.h``.

4-level paging (48-bit virtual, 46-bit physical) and 5-level paging (57-bit virtual, 52-bit
physical); 4 KiB pages and 512-entry tables at every level; the vmemmap is mapped with 2 MiB PMD
leaves when the CPU has PSE and the range covers a section, with base pages otherwise.
"""

import numpy as np

from vmemcore import (
    ArchInfo, Feature, GiB, HugePageSize, Level, MiB, OutOfMemory, PageTableGeometry, SparseGeometry, Support, TiB,
    Variant, hookimpl,
)
from vmemcore.pagetable import PRESENT, table_index_range
from vmemcore.populate import (
    free_table,
    free_vmemmap_frames,
    free_vmemmap_pages,
    vmemmap_populate_basepages,
    vmemmap_populate_hugepages,
)
from vmemcore.subpmd import SubPmdTracker

VMEMMAP_BASE = {"4-level": 0xFFFFEA0000000000, "5-level": 0xFFD4000000000000}  # __VMEMMAP_BASE_L4/_L5
VMEMMAP_SIZE = {"4-level": 1 * TiB, "5-level": 512 * TiB}
PHYSMEM_BITS = {"4-level": 46, "5-level": 52}


def _level(name, shift, leaf=False):
    return Level(name, shift, 9, 4096, 4096, leaf=leaf)


@hookimpl
def vmemcore_arch_info():
    return ArchInfo(
        name="x86_64",
        description="x86-64, 4 KiB pages (arch/x86/mm)",
        variants=(
            Variant("4-level", {"paging": "4-level"}, description="48-bit virtual, 46-bit physical addresses"),
            Variant("5-level", {"paging": "5-level"}, description="57-bit virtual, 52-bit physical addresses (LA57)"),
        ),
        default_variant="4-level",
        features=(
            Feature("pse", True, "2 MiB pages (X86_FEATURE_PSE): vmemmap mapped with PMD leaves"),
            Feature("gbpages", True, "1 GiB pages (X86_FEATURE_GBPAGES): 1 GiB HugeTLB pages"),
            Feature("hypervisor", False, "running under a hypervisor (X86_FEATURE_HYPERVISOR): memory block size"),
        ),
    )


@hookimpl
def vmemcore_pagetable_geometry(variant, profile):
    upper = [_level("pgd", 48), _level("p4d", 39)] if variant.name == "5-level" else [_level("pgd", 39)]
    return PageTableGeometry(
        page_shift=12,
        va_bits=57 if variant.name == "5-level" else 48,
        levels=upper + [_level("pud", 30, leaf=True), _level("pmd", 21, leaf=True), _level("pte", 12, leaf=True)],
    )


@hookimpl
def vmemcore_sparse_geometry(variant, profile):
    return SparseGeometry(
        page_shift=12,
        section_size_bits=27,
        max_physmem_bits=PHYSMEM_BITS[variant.name],
        memory_block_size=128 << 20,
        vmemmap_base=VMEMMAP_BASE[variant.name],
        vmemmap_size=VMEMMAP_SIZE[variant.name],
        pageblock_order=9,
        max_page_order=10,
    )


@hookimpl
def vmemcore_hugepage_sizes(machine):
    """``arch_hugetlb_valid_size``: 2 MiB always, 1 GiB with GBPAGES."""
    sizes = [HugePageSize(2 * MiB, "pmd")]
    if machine.features["gbpages"]:
        sizes.append(HugePageSize(1 * GiB, "pud"))
    return tuple(sizes)


@hookimpl
def vmemcore_hvo_support(machine):
    """x86_64 selects ARCH_WANT_OPTIMIZE_HUGETLB_VMEMMAP since HVO was merged (5.14)."""
    if machine.profile.at_least(5, 14):
        return Support(True)
    return Support(False, "HugeTLB Vmemmap Optimization was merged in 5.14")


@hookimpl
def vmemcore_dax_vmemmap_support(machine):
    """Compound devmap vmemmap dedup: generic on every arch from its merge (5.19; 5.18/5.19
    UNCONFIRMED), selected by x86_64 through ARCH_WANT_OPTIMIZE_DAX_VMEMMAP since the 6.6 opt-in."""
    if machine.profile.at_least(5, 19):
        return Support(True)
    return Support(False, "compound devmap vmemmap dedup was merged in 5.19 (5.18/5.19 UNCONFIRMED)")


@hookimpl
def vmemcore_hugetlb_vmemmap_preinit(machine):
    """x86_64 selects ARCH_WANT_HUGETLB_VMEMMAP_PREINIT since 6.15."""
    if machine.profile.at_least(6, 15):
        return Support(True)
    return Support(False, "boot-time pre-HVO (SPARSEMEM_VMEMMAP_PREINIT) arrived in 6.15")


@hookimpl
def vmemcore_memory_block_size(machine):
    """``probe_memory_block_size``: 128 MiB below 64 GiB of boot memory; else 2 GiB on bare metal,
    and under a hypervisor the largest power of two up to 2 GiB that divides the end of boot memory."""
    boot_end = max(item.start + item.size for item in machine.memory)
    if boot_end < 64 * GiB:
        return 128 * MiB
    if not machine.features["hypervisor"]:
        return 2 * GiB
    size = 2 * GiB
    while size > 128 * MiB and boot_end % size:
        size //= 2
    return size


def _sub_pmd(machine):
    return machine.plugin_state("x86_64.sub_pmd", SubPmdTracker)


@hookimpl
def vmemcore_vmemmap_populate(machine, start, end, node, altmap):
    """``vmemmap_populate``: base pages (never from the altmap) for less than a section's memmap,
    or while the v17-era HVO is on (its walk cannot split PMD leaves); PMD leaves with PSE; without
    PSE an altmap cannot be used (-ENOMEM)."""
    hvo_wants_basepages = (
        machine.profile.hvo_needs_basepage_vmemmap and machine.hugetlb.optimize_vmemmap and altmap is None
    )
    if hvo_wants_basepages or end - start < machine.sparse_geometry.section_memmap_bytes:
        vmemmap_populate_basepages(machine, start, end, node, None)
    elif machine.features["pse"]:
        tracker = _sub_pmd(machine)
        vmemmap_populate_hugepages(
            machine, start, end, node, altmap,
            on_new_leaf=lambda m, a, n: tracker.use_new(a, n),
            on_existing_leaf=lambda m, a, n: tracker.use(a, n),
        )
    elif altmap is not None:
        raise OutOfMemory("vmemmap_populate: no cpu support for altmap allocations (no PSE)")
    else:
        vmemmap_populate_basepages(machine, start, end, node, None)
    return True


@hookimpl
def vmemcore_vmemmap_free(machine, start, end, altmap):
    """``vmemmap_free`` = ``remove_pagetable(start, end, false, altmap)`` then ``flush_tlb_all``."""
    _remove(machine, machine.pagetable.top, start, end, altmap, machine.variant.name == "5-level")
    machine.flush_tlb_all()
    return True


def _remove(machine, table, start, end, altmap, five_level):
    """The ``remove_{p4d,pud,pmd,pte}_table`` walk below ``table`` over ``[start, end)``."""
    pt = machine.pagetable
    lo, hi = table_index_range(table, start, end)
    present = np.flatnonzero(table.flags[lo:hi] & PRESENT) + lo
    if table.level.name == "pte":
        free_vmemmap_pages(machine, table.pfns[present])  # "we never populate base pages from the altmap"
        pt.clear_leaves(table, present)
        machine.flush_tlb_all()
        return
    span = table.level.entry_span
    pmd_pages = span >> machine.geometry.page_shift
    for i in present.tolist():
        first, last = max(table.va(i), start), min(table.va(i + 1), end)
        if table.is_leaf(i):
            if table.level.name != "pmd":
                continue  # PUD leaves belong to the direct map, never to the vmemmap
            if (first % span == 0 and last % span == 0) or _sub_pmd(machine).pmd_is_unused(first, last):
                free_vmemmap_frames(machine, int(table.pfns[i]), pmd_pages, altmap)
                pt.clear_leaves(table, slice(i, i + 1))
            continue
        child = table.children[i]
        _remove(machine, child, first, last, altmap, five_level)
        # free_pte_table / free_pmd_table always; free_pud_table only under 5-level paging; P4D never
        if child.empty and (child.level.name in ("pte", "pmd") or (child.level.name == "pud" and five_level)):
            free_table(machine, table, i)
