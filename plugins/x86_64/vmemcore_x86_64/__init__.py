"""x86_64 for vmemcore: ``arch/x86/mm/init_64.c`` and ``arch/x86/include/asm/pgtable_64_types.h``.

4-level paging (48-bit virtual, 46-bit physical) and 5-level paging (57-bit virtual, 52-bit
physical); 4 KiB pages and 512-entry tables at every level; the vmemmap is mapped with 2 MiB PMD
leaves when the CPU has PSE and the range covers a section, with base pages otherwise.
"""

from vmemcore.arch import (
    ANY_CHANGE, ArchInfo, Change, Feature, Flush, GiB, HugePageSize, InUse, Level, MiB, OutOfMemory,
    PageTableGeometry, PtdumpColumn, PtdumpFormat, SparseGeometry, TeardownPolicy, TiB, Variant, hookimpl,
    selected,
)

# paging -> (virtual address bits, physical address bits, __VMEMMAP_BASE_L4/_L5, vmemmap size)
PAGING = {
    "4-level": (48, 46, 0xFFFFEA0000000000, 1 * TiB),
    "5-level": (57, 52, 0xFFD4000000000000, 512 * TiB),
}


# The dated changes the hooks follow (docs/kernel-map.md#x86_64).
HVO = Change("x86_64-hvo", "HVO merged, x86_64 only (HUGETLB_PAGE_FREE_VMEMMAP)", "5.14", commit="f41f2ed43ca5",
             status="CONFIRMED (in Linus's master during the 5.14 merge window)")
DAX_DEDUP = Change("x86_64-dax-dedup", "compound devmap vmemmap dedup (ARCH_WANT_OPTIMIZE_DAX_VMEMMAP since 6.6)",
                   "5.19", commit="4917f55b4ef9", status="CONFIRMED (MM pull for 5.19-rc1)")
HVO_PREINIT = Change("x86_64-hvo-preinit", "x86 selects ARCH_WANT_HUGETLB_VMEMMAP_PREINIT: boot gigantic pages built "
                     "optimized", "6.15", status="CONFIRMED (release, MM pull for 6.15-rc1); commit id UNCONFIRMED")


def _level(name, shift, leaf=False):
    return Level(name, shift, 9, 4096, 4096, leaf=leaf)


@hookimpl
def vmemcore_arch_info():
    return ArchInfo(
        name="x86_64",
        description="x86-64, 4 KiB pages (arch/x86/mm)",
        variants=tuple(
            Variant(name, {"paging": name}, description=f"{va}-bit virtual, {pa}-bit physical addresses"
                    + (" (LA57)" if name == "5-level" else ""))
            for name, (va, pa, _, _) in PAGING.items()
        ),
        default_variant="4-level",
        features=(
            Feature("pse", True, "2 MiB pages (X86_FEATURE_PSE): vmemmap mapped with PMD leaves"),
            Feature("gbpages", True, "1 GiB pages (X86_FEATURE_GBPAGES): 1 GiB HugeTLB pages"),
            Feature("hypervisor", False, "running under a hypervisor (X86_FEATURE_HYPERVISOR): memory block size"),
        ),
        changes=(HVO, DAX_DEDUP, HVO_PREINIT),
    )


@hookimpl
def vmemcore_pagetable_geometry(variant, profile):
    upper = [_level("pgd", 48), _level("p4d", 39)] if variant.name == "5-level" else [_level("pgd", 39)]
    return PageTableGeometry(
        page_shift=12,
        va_bits=PAGING[variant.name][0],
        levels=upper + [_level("pud", 30, leaf=True), _level("pmd", 21, leaf=True), _level("pte", 12, leaf=True)],
    )


@hookimpl
def vmemcore_sparse_geometry(variant, profile):
    return SparseGeometry(
        page_shift=12,
        section_size_bits=27,
        max_physmem_bits=PAGING[variant.name][1],
        memory_block_size=128 << 20,
        vmemmap_base=PAGING[variant.name][2],
        vmemmap_size=PAGING[variant.name][3],
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
def vmemcore_live_entry_rule(machine):
    """x86 rewrites live kernel entries in place (``set_pte_at`` over a present PTE,
    ``pmd_populate_kernel`` over a huge PMD in ``vmemmap_split_pmd``) and flushes afterwards."""
    return ANY_CHANGE


@hookimpl
def vmemcore_hvo_support(machine):
    """x86_64 selects ARCH_WANT_OPTIMIZE_HUGETLB_VMEMMAP since HVO was merged (5.14)."""
    return selected(machine.profile, HVO, before="HugeTLB Vmemmap Optimization was merged in 5.14")


@hookimpl
def vmemcore_dax_vmemmap_support(machine):
    """Compound devmap vmemmap dedup: generic on every arch from its merge (5.19; 5.18/5.19
    UNCONFIRMED), selected by x86_64 through ARCH_WANT_OPTIMIZE_DAX_VMEMMAP since the 6.6 opt-in."""
    return selected(machine.profile, DAX_DEDUP, before="compound devmap vmemmap dedup was merged in 5.19 (5.18/5.19 UNCONFIRMED)")


@hookimpl
def vmemcore_hugetlb_vmemmap_preinit(machine):
    """x86_64 selects ARCH_WANT_HUGETLB_VMEMMAP_PREINIT since 6.15."""
    return selected(machine.profile, HVO_PREINIT, before="boot-time pre-HVO (SPARSEMEM_VMEMMAP_PREINIT) arrived in 6.15")


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


@hookimpl
def vmemcore_vmemmap_populate(machine, start, end, node, altmap):
    """``vmemmap_populate``: base pages (never from the altmap) for less than a section's memmap,
    or while the v17-era HVO is on (its walk cannot split PMD leaves); PMD leaves with PSE; without
    PSE an altmap cannot be used (-ENOMEM)."""
    from vmemcore.arch import vmemmap_populate_basepages, vmemmap_populate_hugepages  # numpy: loaded on first use
    hvo_wants_basepages = (
        machine.profile.hvo_needs_basepage_vmemmap and machine.hugetlb.optimize_vmemmap and altmap is None
    )
    if hvo_wants_basepages or end - start < machine.sparse_geometry.section_memmap_bytes:
        vmemmap_populate_basepages(machine, start, end, node, None)
    elif machine.features["pse"]:
        vmemmap_populate_hugepages(machine, start, end, node, altmap, sub_pmd=True)
    elif altmap is not None:
        raise OutOfMemory("vmemmap_populate: no cpu support for altmap allocations (no PSE)")
    else:
        vmemmap_populate_basepages(machine, start, end, node, None)
    return True


@hookimpl
def vmemcore_vmemmap_free(machine, start, end, altmap):
    """``vmemmap_free`` = ``remove_pagetable(start, end, false, altmap)`` then ``flush_tlb_all``:
    PMD leaves freed when the range covers them or ``vmemmap_pmd_is_unused``, a flush after each PTE
    table (``remove_pte_table``), and PTE and PMD tables freed once empty, PUD tables only under
    5-level paging (``free_pud_table``), P4D tables never."""
    from vmemcore.arch import vmemmap_teardown  # numpy: loaded on first use
    tables = {"pte", "pmd"} | ({"pud"} if machine.variant.name == "5-level" else set())
    policy = TeardownPolicy(InUse.SUB_PMD, tables, flush_pte_table=Flush.ALL, flush_end=Flush.ALL)
    vmemmap_teardown(machine, start, end, altmap, policy)
    return True


#: ``arch/x86/mm/dump_pagetables.c``: ``note_page`` prints ``0x%016lx-0x%016lx   %9lu%c `` and
#: ``printk_prot`` one column per bit (USR, RW/ro, PWT, PCD, PSE on a leaf above the PTE, PAT,
#: GLB, NX/x) then the level name; an empty run prints 30 blanks instead of the columns. The
#: vmemmap's leaves are ``PAGE_KERNEL_LARGE`` (PMD), ``PAGE_KERNEL`` and, for HVO's tails,
#: ``PAGE_KERNEL_RO``: global and no-execute, never user, PWT, PCD or PAT.
PTDUMP_FORMAT = PtdumpFormat(
    line="0x{start:016x}-0x{end:016x}   {phys}{size} {attrs}{level}",
    columns=(
        PtdumpColumn("    "),  # USR
        PtdumpColumn("ro ", "RW ", "rdonly"),
        PtdumpColumn("    "),  # PWT
        PtdumpColumn("    "),  # PCD
        PtdumpColumn("PSE ", "    ", "block"),
        PtdumpColumn("    "),  # PAT
        PtdumpColumn("GLB "),
        PtdumpColumn("NX "),
    ),
    hole=" " * 30,
    markers=("Vmemmap", None),
    source="arch/x86/mm/dump_pagetables.c",
)


@hookimpl
def vmemcore_ptdump_format(machine):
    """``level_name`` is pgd, p4d, pud, pmd, pte: the geometry's names (with 4-level paging the
    folded P4D is never named: ``real_depth()`` reports its holes at the PGD)."""
    return PTDUMP_FORMAT
