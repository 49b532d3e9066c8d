"""arm64 for vmemcore: ``arch/arm64/include/asm/{pgtable-hwdef.h,memory.h,sparsemem.h}``, ``arch/arm64/Kconfig``,
``arch/arm64/mm/{mmu.c,hugetlbpage.c}``.

One variant per granule and ``CONFIG_ARM64_VA_BITS`` choice; the number of levels is the
``CONFIG_PGTABLE_LEVELS`` default for that pair. Every table below the top is one page of
``PAGE_SIZE / 8`` entries; the top (``swapper_pg_dir``) has ``1 << (VA_BITS - PGDIR_SHIFT)`` entries.
52-bit variants are modelled with LPA2/LVA present (no runtime folding to 48 bits).

The vmemmap is mapped with PMD blocks only with 4K pages (and, since 6.14-rc7, only for whole
sections), with base pages otherwise; ``vmemmap_free`` clears every leaf it touches and frees its
whole backing (no sub-PMD tracking), then frees the tables left empty.
"""

from vmemcore.arch import (
    RDONLY, ArchInfo, BadRequest, Change, Feature, Flush, HugePageSize, InUse, Level, LiveEntryRule,
    PageTableGeometry, PhysRange, PtdumpColumn, PtdumpFormat, SparseGeometry, TeardownPolicy, Variant,
    hookimpl, selected,
)

PAGE_SHIFT = {"4K": 12, "16K": 14, "64K": 16}

# The dated changes the hooks follow (docs/kernel-map.md#arm64).
HVO_ON = Change("arm64-hvo", "arm64 selects ARCH_WANT_HUGETLB_PAGE_OPTIMIZE_VMEMMAP: HVO", "5.19",
                commit="1e63ac088f20", status="CONFIRMED (MM pull for 5.19-rc1)")
HVO_OFF = Change("arm64-hvo-off", "HVO disabled: remapping live vmemmap PTEs breaks break-before-make", "6.3",
                 stable=("6.1.16", "6.2.3"), commit="060a2c92d1b6",
                 status="CONFIRMED (stable reviews of 6.1.16-rc1 and 6.2.3-rc1; 5.19 was EOL)")
DAX_DEDUP = Change("arm64-dax-dedup", "compound devmap vmemmap dedup, generic on every arch", "5.19",
                   commit="4917f55b4ef9", status="CONFIRMED (MM pull for 5.19-rc1)")
DAX_DEDUP_OFF = Change("arm64-dax-dedup-off", "dedup becomes an arch opt-in that arm64 does not take", "6.4",
                       commit="87a7ae75d738", status="CONFIRMED (mainline); backports to 6.3.2 and 6.2.16 were "
                       "posted, whether applied is UNCONFIRMED (not modelled)")
SUBSECTION_BASEPAGES = Change(
    "arm64-subsection-basepages", "the vmemmap of less than a section is populated with base pages, not PMD blocks",
    "6.14", stable=("6.1.132", "6.6.84", "6.12.20"), commit="d4234d131b0a",
    status="CONFIRMED (6.14-rc7; stable 6.12.20, 6.6.84, 6.1.132); 6.13.8 UNCONFIRMED, not modelled")
# (granule, VA_BITS) -> CONFIG_PGTABLE_LEVELS (arch/arm64/Kconfig defaults)
PGTABLE_LEVELS = {
    ("4K", 39): 3, ("4K", 48): 4, ("4K", 52): 5,
    ("16K", 36): 2, ("16K", 47): 3, ("16K", 48): 4, ("16K", 52): 4,
    ("64K", 42): 2, ("64K", 48): 3, ("64K", 52): 3,
}
LEVEL_NAMES = ("pgd", "p4d", "pud", "pmd", "pte")
SECTION_SIZE_BITS = {"4K": 27, "16K": 27, "64K": 29}  # asm/sparsemem.h
MAX_PAGE_ORDER = {"4K": 10, "16K": 11, "64K": 13}  # ARCH_FORCE_MAX_ORDER
STRUCT_PAGE = 64
VMEMMAP_END = (1 << 64) - (1 << 30)  # memory.h: -SZ_1G in 6.12 and 7.1
PUD_SHIFT_4K = 30
# Entries of a contiguous-hint span: 1 << CONFIG_ARM64_CONT_PTE_SHIFT and 1 << CONFIG_ARM64_CONT_PMD_SHIFT
CONT_PTES = {"4K": 16, "16K": 128, "64K": 32}
CONT_PMDS = {"4K": 16, "16K": 32, "64K": 32}


def _parse(variant):
    return variant.options["page"], int(variant.options["va_bits"])


def level_shift(page_shift, n):
    """``ARM64_HW_PGTABLE_LEVEL_SHIFT(n)`` (pgtable-hwdef.h): the shift of hardware level ``n``."""
    return (page_shift - 3) * (4 - n) + 3


def va_bits_min(page, va_bits):
    """``VA_BITS_MIN`` (memory.h): 52-bit kernels must also run with 48 (47 with 16K) bits."""
    if va_bits > 48:
        return 47 if page == "16K" else 48
    return va_bits


def vmemmap_size(page, va_bits):
    """``VMEMMAP_SIZE`` (memory.h): one struct page per page of ``[PAGE_OFFSET, _PAGE_END(VA_BITS_MIN))``.

    ``PAGE_OFFSET`` is ``-(1 << VA_BITS)`` and ``_PAGE_END(va)`` is ``-(1 << (va - 1))``, so the range is
    ``2**VA_BITS - 2**(VA_BITS_MIN - 1)``: half the VA space when ``VA_BITS == VA_BITS_MIN``, but almost all
    of it for the 52-bit variants (the 48-bit fallback uses the top end of the same vmemmap).
    """
    linear_range = (1 << va_bits) - (1 << (va_bits_min(page, va_bits) - 1))
    return (linear_range >> PAGE_SHIFT[page]) * STRUCT_PAGE


def memstart_addr(page, memory):
    """``memstart_addr`` (``arm64_memblock_init`` in arch/arm64/mm/init.c): the start of DRAM rounded
    down to ``ARM64_MEMSTART_ALIGN``, the larger of a section and ``1 << ARM64_MEMSTART_SHIFT``
    (``PUD_SHIFT`` with 4K pages, ``CONT_PMD_SHIFT`` with 16K, ``PMD_SHIFT`` with 64K: 1 GiB, 1 GiB,
    512 MiB). 0 when no memory is described."""
    if not memory:
        return 0
    page_shift = PAGE_SHIFT[page]
    pmd_shift = level_shift(page_shift, 2)
    shift = {"4K": level_shift(page_shift, 1), "16K": pmd_shift + CONT_PMDS[page].bit_length() - 1}.get(page, pmd_shift)
    align = 1 << max(shift, SECTION_SIZE_BITS[page])
    return min(item.start for item in memory) // align * align


def _variant(page, va_bits):
    levels = PGTABLE_LEVELS[(page, va_bits)]
    return Variant(
        f"{page}-{va_bits}",
        {"page": page, "va_bits": str(va_bits)},
        description=f"{page} granule, {va_bits}-bit VA, {levels} levels",
    )


@hookimpl
def vmemcore_arch_info():
    return ArchInfo(
        name="arm64",
        description="arm64, 4K/16K/64K granules (arch/arm64/mm)",
        variants=tuple(_variant(page, va) for page, va in PGTABLE_LEVELS),
        default_variant="4K-48",
        features=(
            Feature("vmemmap_cont_pte", False,
                    "what-if: base-page vmemmap written with contiguous PTEs where a whole span fits (no kernel does)"),
        ),
        changes=(HVO_ON, DAX_DEDUP, HVO_OFF, DAX_DEDUP_OFF, SUBSECTION_BASEPAGES),
    )


@hookimpl
def vmemcore_pagetable_geometry(variant, profile):
    page, va_bits = _parse(variant)
    page_shift = PAGE_SHIFT[page]
    nlevels = PGTABLE_LEVELS[(page, va_bits)]
    pmd_shift = level_shift(page_shift, 2)
    page_bytes = 1 << page_shift
    # top first: the top is always "pgd", the rest are the lowest names (folded levels vanish)
    names = ("pgd",) + LEVEL_NAMES[len(LEVEL_NAMES) - nlevels + 1:]
    levels = []
    for k, name in enumerate(names):
        shift = level_shift(page_shift, 4 - nlevels + k)
        bits = va_bits - shift if k == 0 else page_shift - 3
        table = (1 << bits) * 8
        # Leaves by span, since folding renames levels: PMD blocks always; PUD (1 GiB) blocks only with
        # 4K (mmu.c pud_sect_supported()); e.g. 4K/39's top is the folded PUD and may hold 1 GiB blocks.
        leaf = shift in (page_shift, pmd_shift) or (page == "4K" and shift == PUD_SHIFT_4K)
        # Tables below the top are one page each; the top (swapper_pg_dir, static) takes one page too.
        # the contiguous bit groups CONT_PTES PTEs or CONT_PMDS PMD blocks (pgtable-hwdef.h)
        cont = CONT_PTES[page] if shift == page_shift else CONT_PMDS[page] if shift == pmd_shift else 1
        levels.append(Level(name, shift, bits, table, max(table, page_bytes), leaf=leaf, contiguous=cont))
    return PageTableGeometry(page_shift=page_shift, va_bits=va_bits, levels=levels)


@hookimpl
def vmemcore_sparse_geometry(variant, profile, memory):
    """``vmemmap`` (memory.h) is ``VMEMMAP_START - (memstart_addr >> PAGE_SHIFT)`` struct pages: the
    first page of RAM has its struct page at ``VMEMMAP_START`` wherever RAM starts. The struct pages
    of the pfns below ``memstart_addr`` (never present) would lie below ``VMEMMAP_START``."""
    page, va_bits = _parse(variant)
    page_shift = PAGE_SHIFT[page]
    below = (memstart_addr(page, memory) >> page_shift) * STRUCT_PAGE
    size = vmemmap_size(page, va_bits) + below
    return SparseGeometry(
        page_shift=page_shift,
        section_size_bits=SECTION_SIZE_BITS[page],
        max_physmem_bits=52 if va_bits == 52 else 48,  # CONFIG_ARM64_PA_BITS
        memory_block_size=1 << SECTION_SIZE_BITS[page],  # weak memory_block_size_bytes(): one section
        # VMEMMAP_START = VMEMMAP_END - VMEMMAP_SIZE; `vmemmap` is memstart_addr's struct pages below
        vmemmap_base=VMEMMAP_END - size,
        vmemmap_size=size,
        pageblock_order=level_shift(page_shift, 2) - page_shift,  # HUGETLB_PAGE_ORDER = PMD order
        max_page_order=MAX_PAGE_ORDER[page],
    )


@hookimpl
def vmemcore_mappable_range(machine):
    """``arch_get_mappable_range``: hot-added memory must fit the linear map, ``[__pa(PAGE_OFFSET),
    __pa(PAGE_END - 1)]``: half the kernel VA (``VA_BITS - 1`` bits) above ``memstart_addr``."""
    page, va_bits = _parse(machine.variant)
    start = memstart_addr(page, machine.memory)
    return PhysRange(start, start + (1 << (va_bits - 1)))


def _hugepage(geometry, size, contiguous=1):
    """``size`` mapped by ``contiguous`` entries of the level whose entries span ``size // contiguous``
    (folded levels vanish from the geometry: the 1 GiB PUD block of 4K/39 sits in its top table)."""
    span = size // contiguous
    level = next(level for level in geometry.levels if level.entry_span == span)
    return HugePageSize(size, level.name, contiguous)


@hookimpl
def vmemcore_hugepage_sizes(machine):
    """``__hugetlb_valid_size``: CONT_PTE, PMD and CONT_PMD sizes, and PUD with 4K pages
    (``pud_sect_supported``)."""
    page, _ = _parse(machine.variant)
    geometry = machine.geometry
    pmd_size = 1 << level_shift(geometry.page_shift, 2)
    sizes = [
        _hugepage(geometry, CONT_PTES[page] * geometry.page_size, CONT_PTES[page]),
        _hugepage(geometry, pmd_size),
        _hugepage(geometry, CONT_PMDS[page] * pmd_size, CONT_PMDS[page]),
    ]
    if page == "4K":
        sizes.append(_hugepage(geometry, 1 << PUD_SHIFT_4K))
    return tuple(sizes)


@hookimpl
def vmemcore_hvo_support(machine):
    """``ARCH_WANT_HUGETLB_PAGE_OPTIMIZE_VMEMMAP`` was selected from 5.19 (1e63ac088f20) until
    060a2c92d1b6 (6.3) dropped it; that went back to 6.1.16 and 6.2.3, so only 5.19, 6.0, 6.1.0-6.1.15
    and 6.2.0-6.2.2 keep HVO, with the caveat that it breaks the live-entry rule (``vmemcore_live_entry_rule``)."""
    bbm = "HVO changes the output address of live vmemmap PTEs, which arm64's break-before-make rule forbids"
    return selected(
        machine.profile, HVO_ON, HVO_OFF,
        before="arm64 did not select ARCH_WANT_HUGETLB_PAGE_OPTIMIZE_VMEMMAP before 5.19 (1e63ac088f20)",
        after=f"{bbm}: disabled in 6.3 by 060a2c92d1b6, backported to 6.1.16 and 6.2.3",
        caveat=f"{bbm} (disabled in 6.3 by 060a2c92d1b6)",
    )


@hookimpl
def vmemcore_live_entry_rule(machine):
    """``pgattr_change_is_safe`` (``arch/arm64/mm/mmu.c``): creating or taking down a mapping is
    always safe; a live entry may change only its permission and software bits (never its output
    address, nor from block to table), and an entry with the contiguous bit may not change at all.
    FEAT_BBM level 2 lets a block become a table of the same memory in place."""
    return LiveEntryRule(
        output=False, flags=RDONLY, contiguous=False, bbml2=True,
        reason="arm64 pgattr_change_is_safe(): only permission and software bits of a live entry may "
               "change; anything else needs break-before-make (invalid, TLB flush, new entry)",
    )


@hookimpl
def vmemcore_dax_vmemmap_support(machine):
    """Compound devmap dedup was generic on every arch from 5.19 (5.18/5.19 UNCONFIRMED); since it
    became an opt-in (6.4, ARCH_WANT_OPTIMIZE_DAX_VMEMMAP from 6.6) arm64 has not selected it."""
    return selected(machine.profile, DAX_DEDUP, DAX_DEDUP_OFF,
                    before="compound devmap vmemmap dedup was merged in 5.19 (5.18/5.19 UNCONFIRMED)",
                    after="arm64 does not select ARCH_WANT_OPTIMIZE_DAX_VMEMMAP (dedup is an arch opt-in since 6.4/6.6)")


@hookimpl
def vmemcore_vmemmap_populate(machine, start, end, node, altmap):
    """``vmemmap_populate``: PMD blocks with 4K pages (``vmemmap_check_pmd`` keeps an existing
    block), base pages from the altmap too with 16K and 64K pages. Since "Populate vmemmap at the
    page level if not section aligned" (6.14-rc7, stable 6.12.20, 6.6.84, 6.1.132) less than a
    section's memmap takes base pages.
    The what-if feature ``vmemmap_cont_pte`` writes base pages with contiguous PTEs where a whole
    span fits (docs/live-entries.md)."""
    from vmemcore.arch import vmemmap_populate_basepages, vmemmap_populate_hugepages  # numpy: loaded on first use
    page, _ = _parse(machine.variant)
    partial = end - start < machine.sparse_geometry.section_memmap_bytes
    if page != "4K" or (partial and machine.profile.has(SUBSECTION_BASEPAGES)):
        vmemmap_populate_basepages(machine, start, end, node, altmap, contiguous=machine.features["vmemmap_cont_pte"])
    else:
        vmemmap_populate_hugepages(machine, start, end, node, altmap)
    return True


@hookimpl
def vmemcore_vmemmap_free(machine, start, end, altmap):
    """``vmemmap_free`` = ``unmap_hotplug_range(start, end, free_mapped=true, altmap)``: every leaf
    touched is cleared, its TLB entry flushed and its whole backing freed (``free_hotplug_page_range``),
    then ``free_empty_tables(start, end, VMEMMAP_START, VMEMMAP_END)``: a table goes when empty and
    ``pgtable_range_aligned`` puts it inside the vmemmap; the top (``swapper_pg_dir``) stays. Boot
    memory is never removed (``prevent_bootmem_remove_notifier``), so its memmap never gets here."""
    from vmemcore.arch import vmemmap_boot_frame, vmemmap_teardown  # numpy: loaded on first use
    boot = vmemmap_boot_frame(machine, start, end)
    if boot is not None:
        raise BadRequest(f"arm64 never removes boot memory (prevent_bootmem_remove_notifier): the memmap at "
                         f"vmemmap address {boot:#x} is backed by boot frames")
    page, va_bits = _parse(machine.variant)
    policy = TeardownPolicy(InUse.NEVER, floor=VMEMMAP_END - vmemmap_size(page, va_bits), ceiling=VMEMMAP_END,
                            flush_leaf=Flush.RANGE)
    vmemmap_teardown(machine, start, end, altmap, policy)
    return True


#: ``arch/arm64/mm/ptdump.c``: ``note_page`` prints ``0x%016lx-0x%016lx   %9lu%c %s`` (the size,
#: then the level's name) and, for a valid entry, ``dump_prot`` prints `` %s`` for each of
#: ``pte_bits``: valid, USR, ro/RW, NX (PXN), SHD, AF, NG, CON, BLK (table bit clear), UXN, GP,
#: the memory type. An empty entry has no prot bits: its line ends at the level name. The vmemmap
#: is ``PAGE_KERNEL`` (``PROT_SECT_NORMAL`` for a PMD block): PXN, UXN, shareable, accessed,
#: global (nG only with KPTI, not assumed), MT_NORMAL; HVO's tails (5.19-6.2) are read-only.
_PTDUMP_COLUMNS = (
    PtdumpColumn("  "),  # valid
    PtdumpColumn("    "),  # USR
    PtdumpColumn(" ro", " RW", "rdonly"),
    PtdumpColumn(" NX"),
    PtdumpColumn(" SHD"),
    PtdumpColumn(" AF"),
    PtdumpColumn("   "),  # NG
    PtdumpColumn(" CON", "    ", "cont"),
    PtdumpColumn(" BLK", "    ", "block"),
    PtdumpColumn(" UXN"),
    PtdumpColumn("   "),  # GP
    PtdumpColumn(" MEM/NORMAL"),
)


@hookimpl
def vmemcore_ptdump_format(machine):
    """``pg_level[].name``: PGD, P4D, PUD, PMD, PTE, a folded level named as the one it folds into
    (the geometry's names, upper case); markers ``vmemmap start`` and ``vmemmap end``."""
    return PtdumpFormat(
        line="0x{start:016x}-0x{end:016x}   {phys}{size} {level}{attrs}",
        columns=_PTDUMP_COLUMNS,
        level_names={level.name: level.name.upper() for level in machine.geometry.levels},
        hole="",
        markers=("vmemmap start", "vmemmap end"),
        source="arch/arm64/mm/ptdump.c",
    )
