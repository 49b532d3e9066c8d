"""riscv64 for vmemcore, an out-of-tree example plugin: ``arch/riscv/mm/{init.c,hugetlbpage.c}``,
``arch/riscv/include/asm/{pgtable.h,pgtable-64.h,page.h,sparsemem.h}``, ``arch/riscv/Kconfig``.

Sv39, Sv48 and Sv57: 4 KiB pages, 3, 4 or 5 levels of 512-entry tables, 39, 48 or 57 bits of
virtual address (the kernel picks the mode at boot, ``set_satp_mode``). The vmemmap sits just below
vmalloc and holds ``1 << VMEMMAP_SHIFT`` bytes (``VMEMMAP_SHIFT = VA_BITS - PAGE_SHIFT - 1 +
STRUCT_PAGE_MAX_SHIFT``: the struct pages of half the VA space). ``vmemmap_populate`` calls the
generic loops (base pages before 6.8, 2 MiB PMD leaves since), ``vmemmap_free`` (6.11+) clears every
leaf it touches. DRAM is taken to start at physical 0 (the kernel's ``vmemmap`` is ``VMEMMAP_START -
(phys_ram_base >> PAGE_SHIFT)``, so the first RAM pfn's struct page is at ``VMEMMAP_START`` anyway).

Imports only :mod:`vmemcore.arch`, like any plugin published through the ``vmemcore.arch`` entry points.
"""

from vmemcore.arch import (
    ArchInfo, BadRequest, Change, Feature, Flush, GiB, HugePageSize, InUse, KiB, Level, MiB, PageTableGeometry,
    PhysRange, PtdumpColumn, PtdumpFormat, SparseGeometry, Support, TeardownPolicy, Variant, hookimpl,
    preallocate_tables, selected,
)

PAGE_SHIFT = 12
STRUCT_PAGE_MAX_SHIFT = 6  # order_base_2(sizeof(struct page)) = 6 for 64 bytes
SECTION_SIZE_BITS = 27  # asm/sparsemem.h
MAX_PHYSMEM_BITS = 56  # asm/sparsemem.h: CONFIG_PA_BITS, 56 on rv64

# mode -> (VA_BITS, level names top first (folded levels vanish), the release that added the mode)
MODES = {
    "Sv39": (39, ("pgd", "pmd", "pte"), None),
    # e8a62cc26ddf "riscv: Implement sv48 support": 5.17 (UNCONFIRMED: Palmer's riscv-sv48 branch of January 2022)
    "Sv48": (48, ("pgd", "pud", "pmd", "pte"), (5, 17)),
    # "riscv: mm: Support Sv57" series (Qinglin Pan): 5.18 (UNCONFIRMED)
    "Sv57": (57, ("pgd", "p4d", "pud", "pmd", "pte"), (5, 18)),
}
# PAGE_OFFSET_L3/L4/L5 (asm/page.h) since the Sv48/Sv57 work; Sv39 used CONFIG_PAGE_OFFSET
# 0xffffffe000000000 before (the "2019" and "5.14" profiles, UNCONFIRMED).
PAGE_OFFSET = {"Sv39": 0xFFFFFFD600000000, "Sv48": 0xFFFFAF8000000000, "Sv57": 0xFF60000000000000}
PAGE_OFFSET_SV39_BEFORE_SV48 = 0xFFFFFFE000000000


def _mode(variant):
    return variant.name


def va_bits(variant):
    return MODES[_mode(variant)][0]


def pgdir_shift(variant):
    """``PGDIR_SHIFT_L3/L4/L5`` (pgtable-64.h): 30, 39, 48."""
    return va_bits(variant) - 9


def vmemmap_size(variant):
    """``VMEMMAP_SIZE = BIT(VMEMMAP_SHIFT)``: 4 GiB (Sv39), 2 TiB (Sv48), 1 PiB (Sv57)."""
    return 1 << (va_bits(variant) - PAGE_SHIFT - 1 + STRUCT_PAGE_MAX_SHIFT)


def vmemmap_start(variant, profile):
    """``VMEMMAP_START = VMALLOC_START - VMEMMAP_SIZE`` with ``VMALLOC_START = PAGE_OFFSET - VMALLOC_SIZE``,
    ``VMALLOC_SIZE = KERN_VIRT_SIZE / 2`` and ``KERN_VIRT_SIZE`` a quarter of the VA space
    (``PTRS_PER_PGD / 2 * PGDIR_SIZE / 2``): 0xffffffc500000000, 0xffff8d8000000000 and 0xff1c000000000000,
    as ``Documentation/arch/riscv/vm-layout.rst`` lists them."""
    mode = _mode(variant)
    page_offset = PAGE_OFFSET[mode]
    if mode == "Sv39" and not profile.at_least(5, 17):
        page_offset = PAGE_OFFSET_SV39_BEFORE_SV48  # UNCONFIRMED layout of the Sv39-only kernels
    kern_virt_size = 512 // 2 * (1 << pgdir_shift(variant)) // 2
    return page_offset - kern_virt_size // 2 - vmemmap_size(variant)


# The dated changes the hooks follow (docs/kernel-map.md#riscv64), declared as any plugin declares
# its own (docs/plugins.md#dated-changes); none of them was backported to a stable series.
HVO = Change("riscv64-hvo", "riscv selects ARCH_WANT_HUGETLB_PAGE_OPTIMIZE_VMEMMAP: HVO", "6.3",
             commit="a3c7d6b642e4", status="CONFIRMED (RISC-V pull for 6.3)")
SVNAPOT_HUGETLB = Change("riscv64-svnapot-hugetlb", "Svnapot 64 KiB HugeTLB pages", "6.4", commit="82a1a1f3bfb6",
                         status="CONFIRMED (torvalds/linux master on 2023-04-29, merge of riscv-for-linus-6.4-mw1, "
                         "after v6.3 of 2023-04-23)")
VMEMMAP_PMD = Change("riscv64-vmemmap-pmd", "vmemmap mapped with PMD leaves (vmemmap_populate_hugepages)", "6.8",
                     commit="ff172d4818ad", status="CONFIRMED (RISC-V pull for 6.8)")
HOTPLUG = Change("riscv64-hotplug", "memory hot(un)plug: ARCH_ENABLE_MEMORY_HOTPLUG/HOTREMOVE", "6.11",
                 commit="f8c2a240556e", status="CONFIRMED (RISC-V pull for 6.11)")
PGTABLE_CACHE_INIT = Change("riscv64-preallocate-vmemmap", "the vmemmap's tables below the PGD pre-allocated in "
                            "pgtable_cache_init", "6.11", commit="66673099f734", status="CONFIRMED (same pull)")
ZONE_DEVICE = Change("riscv64-zone-device", "ZONE_DEVICE (ARCH_HAS_PTE_DEVMAP)", "6.11", commit="216e04bf1e4d",
                     status="CONFIRMED (same pull)")
DAX_DEDUP = Change("riscv64-dax-dedup", "device-dax dedup (ARCH_WANT_OPTIMIZE_DAX_VMEMMAP)", "6.11",
                   commit="4705c1571ad3", status="CONFIRMED (same pull)")


def _check_mode(variant, profile):
    since = MODES[_mode(variant)][2]
    if since is not None and not profile.at_least(*since):
        raise BadRequest(f"kernel {profile.name}: riscv64 {variant.name} paging arrived in "
                         f"{since[0]}.{since[1]} (UNCONFIRMED); this kernel has Sv39 only")


@hookimpl
def vmemcore_arch_info():
    return ArchInfo(
        name="riscv64",
        description="riscv64, 4 KiB pages, Sv39/Sv48/Sv57 (arch/riscv/mm; example out-of-tree plugin)",
        variants=tuple(
            Variant(mode, {"satp_mode": mode}, description=f"{bits}-bit virtual, {len(names)} levels")
            for mode, (bits, names, _) in MODES.items()
        ),
        default_variant="Sv39",
        features=(
            Feature("svnapot", False, "Svnapot extension: 64 KiB NAPOT HugeTLB pages (has_svnapot())"),
        ),
        changes=(HVO, SVNAPOT_HUGETLB, VMEMMAP_PMD, HOTPLUG, PGTABLE_CACHE_INIT, ZONE_DEVICE, DAX_DEDUP),
    )


@hookimpl
def vmemcore_pagetable_geometry(variant, profile):
    """Every table is one page of 512 entries (``PTRS_PER_PGD/P4D/PUD/PMD/PTE``); leaves at 4K,
    2M and 1G (the folded PUD of Sv39 sits in its top table), and 512G P4D leaves with Sv57
    (``best_map_size``)."""
    _check_mode(variant, profile)
    bits, names, _ = MODES[_mode(variant)]
    levels = []
    for k, name in enumerate(names):
        shift = PAGE_SHIFT + 9 * (len(names) - 1 - k)
        leaf = shift in (12, 21, 30) or (name == "p4d" and shift == 39)
        # a Svnapot PTE maps 16 pages (NAPOT_CONT64KB: the only napot order Linux uses)
        levels.append(Level(name, shift, 9, 4096, 4096, leaf=leaf, contiguous=16 if shift == PAGE_SHIFT else 1))
    return PageTableGeometry(page_shift=PAGE_SHIFT, va_bits=bits, levels=levels)


@hookimpl
def vmemcore_sparse_geometry(variant, profile):
    """``SECTION_SIZE_BITS`` 27 and ``MAX_PHYSMEM_BITS`` 56 (``asm/sparsemem.h``); riscv keeps the weak
    ``memory_block_size_bytes()`` (one section); ``pageblock_order`` = ``HUGETLB_PAGE_ORDER`` 9; no
    ``ARCH_FORCE_MAX_ORDER``, so ``MAX_PAGE_ORDER`` 10."""
    _check_mode(variant, profile)
    return SparseGeometry(
        page_shift=PAGE_SHIFT,
        section_size_bits=SECTION_SIZE_BITS,
        max_physmem_bits=MAX_PHYSMEM_BITS,
        memory_block_size=1 << SECTION_SIZE_BITS,
        vmemmap_base=vmemmap_start(variant, profile),
        vmemmap_size=vmemmap_size(variant),
        pageblock_order=9,
        max_page_order=10,
    )


@hookimpl
def vmemcore_hugepage_sizes(machine):
    """``arch_hugetlb_valid_size``: ``HPAGE_SIZE`` (2 MiB PMD), ``PUD_SIZE`` (1 GiB; Sv39's PUD is
    folded into its top table), and with Svnapot the NAPOT sizes (``napot_cont_size``: 64 KiB, 16 PTEs;
    82a1a1f3bfb6 "riscv: mm: support Svnapot in hugetlb page", 6.4). No 512 GiB size."""
    gigantic = next(level.name for level in machine.geometry.levels if level.shift == 30)
    sizes = [HugePageSize(2 * MiB, "pmd"), HugePageSize(1 * GiB, gigantic)]
    if machine.features["svnapot"] and machine.profile.has(SVNAPOT_HUGETLB):
        sizes.insert(0, HugePageSize(64 * KiB, "pte", 16))
    return tuple(sizes)


@hookimpl
def vmemcore_hvo_support(machine):
    """``ARCH_WANT_HUGETLB_PAGE_OPTIMIZE_VMEMMAP`` selected since a3c7d6b642e4 "riscv: mm: hugetlb:
    Enable ARCH_WANT_HUGETLB_PAGE_OPTIMIZE_VMEMMAP" (Guo Ren, 6.3); still selected in 7.1 (no removal
    seen: UNCONFIRMED)."""
    return selected(machine.profile, HVO, before="riscv selects ARCH_WANT_HUGETLB_PAGE_OPTIMIZE_VMEMMAP "
                                                    "only from 6.3 (a3c7d6b642e4)")


@hookimpl
def vmemcore_dax_vmemmap_support(machine):
    """``ARCH_WANT_OPTIMIZE_DAX_VMEMMAP`` since 4705c1571ad3 "riscv: Enable DAX VMEMMAP optimization" (6.11)."""
    return selected(machine.profile, DAX_DEDUP, before="riscv selects ARCH_WANT_OPTIMIZE_DAX_VMEMMAP only from 6.11 "
                                                     "(4705c1571ad3)")


@hookimpl
def vmemcore_memory_hotplug_support(machine):
    """``ARCH_ENABLE_MEMORY_HOTPLUG``/``HOTREMOVE`` since f8c2a240556e "riscv: Enable memory hotplugging
    for RISC-V" (Björn Töpel, 6.11), with ``arch_add_memory``/``vmemmap_free`` from c75a74f4ba19."""
    return selected(machine.profile, HOTPLUG, before="riscv has memory hotplug only from 6.11 (f8c2a240556e: "
                                                     "ARCH_ENABLE_MEMORY_HOTPLUG, ARCH_ENABLE_MEMORY_HOTREMOVE)")


@hookimpl
def vmemcore_zone_device_support(machine):
    """``ZONE_DEVICE`` needed ``ARCH_HAS_PTE_DEVMAP``, selected since 216e04bf1e4d "riscv: mm: Add
    support for ZONE_DEVICE" (6.11); the pte_devmap removal (6.17 UNCONFIRMED) dropped the select
    together with the dependency, so ZONE_DEVICE stays (UNCONFIRMED)."""
    return selected(machine.profile, ZONE_DEVICE, before="ZONE_DEVICE depends on ARCH_HAS_PTE_DEVMAP, which riscv "
                                                     "selects only from 6.11 (216e04bf1e4d)")


# the direct mapping of all physical memory (Documentation/arch/riscv/vm-layout.rst)
DIRECT_MAP_SIZE = {"Sv39": 128 * GiB, "Sv48": 64 << 40, "Sv57": 32 << 50}


@hookimpl
def vmemcore_mappable_range(machine):
    """``arch_get_mappable_range`` (``arch/riscv/mm/init.c``, with c75a74f4ba19, 6.11): hot-added memory
    must fit the direct map, ``[__pa(PAGE_OFFSET), __pa(PAGE_END - 1)]``, whose size
    ``Documentation/arch/riscv/vm-layout.rst`` gives per mode (RAM taken to start at physical 0;
    the size before 6.11's layout is UNCONFIRMED)."""
    return PhysRange(0, DIRECT_MAP_SIZE[_mode(machine.variant)])


@hookimpl
def vmemcore_supports_memmap_on_memory(machine, vmemmap_size):
    """riscv does not select ``ARCH_MHP_MEMMAP_ON_MEMORY_ENABLE``: the 6.11 series enabled only
    ``ARCH_ENABLE_MEMORY_HOTPLUG``/``HOTREMOVE`` (no later select seen: UNCONFIRMED)."""
    return Support(False, "riscv does not select ARCH_MHP_MEMMAP_ON_MEMORY_ENABLE")


@hookimpl
def vmemcore_pgtable_cache_init(machine):
    """``pgtable_cache_init`` → ``preallocate_pgd_pages_range(VMEMMAP_START, VMEMMAP_END, "vmemmap")``
    under ``CONFIG_MEMORY_HOTPLUG`` (66673099f734, 6.11): every table of the level just below the PGD
    (P4D with Sv57, PUD with Sv48, PMD with Sv39) is created, so a later hot-add never has to change
    ``swapper_pg_dir``, which every process's page table copies."""
    if not machine.profile.has(PGTABLE_CACHE_INIT):
        return
    base = machine.sparse_geometry.vmemmap_base
    below_pgd = machine.geometry.levels[1].name
    preallocate_tables(machine, base, base + machine.sparse_geometry.vmemmap_size, below_pgd)


@hookimpl
def vmemcore_vmemmap_populate(machine, start, end, node, altmap):
    """``vmemmap_populate``: ``vmemmap_populate_basepages`` until ff172d4818ad "riscv: Use hugepage
    mappings for vmemmap" (Alexandre Ghiti, 6.8) made it ``vmemmap_populate_hugepages`` (with
    ``vmemmap_set_pmd`` = ``pmd_set_huge``); the altmap is passed on since e3ecf2fdc8f3 (6.11), before
    which no altmap could reach it (no hotplug, no ZONE_DEVICE)."""
    from vmemcore.arch import vmemmap_populate_basepages, vmemmap_populate_hugepages  # numpy: loaded on first use
    if machine.profile.has(VMEMMAP_PMD):
        vmemmap_populate_hugepages(machine, start, end, node, altmap)
    else:
        vmemmap_populate_basepages(machine, start, end, node, altmap)
    return True


def teardown_policy(machine):
    """The policy of ``remove_pgd_mapping(start, end, is_vmemmap=true, altmap)`` (c75a74f4ba19, 6.11):
    a present PMD (or larger) leaf is cleared and its whole backing freed (``free_vmemmap_storage``,
    to the altmap when one is given) however little of it the range covers: no sub-PMD tracking, so
    ``InUse.NEVER``. ``free_pte_table`` always frees an empty PTE table, ``free_pmd_table`` only with
    ``pgtable_l4_enabled`` and ``free_pud_table`` only with ``pgtable_l5_enabled``: the level just below
    the PGD is never freed (``pgtable_cache_init`` pre-allocated it), nor any P4D table. One
    ``flush_tlb_all`` ends the walk."""
    mode = _mode(machine.variant)
    tables = {"Sv39": {"pte"}, "Sv48": {"pte", "pmd"}, "Sv57": {"pte", "pmd", "pud"}}[mode]
    return TeardownPolicy(InUse.NEVER, tables, flush_end=Flush.ALL)


@hookimpl
def vmemcore_vmemmap_free(machine, start, end, altmap):
    """``vmemmap_free`` = ``remove_pgd_mapping(start, end, true, altmap)`` (see :func:`teardown_policy`)."""
    from vmemcore.arch import vmemmap_teardown  # numpy: loaded on first use
    vmemmap_teardown(machine, start, end, altmap, teardown_policy(machine))
    return True


#: ``arch/riscv/mm/ptdump.c``: ``dump_addr`` prints ``0x%016lx-0x%016lx   `` then `` 0x%016lx ``
#: (the run's first physical address; a run does not end where they stop following on) and
#: ``%9lu%c %s`` (size, level name); ``dump_prot`` prints `` %s`` per bit: N (Svnapot), MT, RSW,
#: D, A, G, U, X, W, R, V. Empty runs print no line. The vmemmap is ``PAGE_KERNEL`` (read, write,
#: accessed, dirty, global), read-only without W.
_PTDUMP_COLUMNS = (
    PtdumpColumn(" N", " .", "cont"),
    PtdumpColumn("   ..  "),  # MT
    PtdumpColumn("   ..  "),  # RSW
    PtdumpColumn(" D"),
    PtdumpColumn(" A"),
    PtdumpColumn(" G"),
    PtdumpColumn(" ."),  # U
    PtdumpColumn(" ."),  # X
    PtdumpColumn(" .", " W", "rdonly"),
    PtdumpColumn(" R"),
    PtdumpColumn(" V"),
)


@hookimpl
def vmemcore_ptdump_format(machine):
    """``pg_level[].name``: PGD, P4D, PUD, PMD, PTE, folded levels named as the PGD (the
    geometry's names, upper case); markers ``vmemmap start`` and ``vmemmap end``."""
    return PtdumpFormat(
        line="0x{start:016x}-0x{end:016x}    {phys}{size} {level}{attrs}",
        columns=_PTDUMP_COLUMNS,
        level_names={level.name: level.name.upper() for level in machine.geometry.levels},
        hole=None,
        markers=("vmemmap start", "vmemmap end"),
        always_phys=True,
        phys_breaks=False,
        source="arch/riscv/mm/ptdump.c",
    )
