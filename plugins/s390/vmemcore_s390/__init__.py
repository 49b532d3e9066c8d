"""s390x for vmemcore: ``arch/s390/include/asm/{pgtable.h,pgalloc.h,sparsemem.h}``, ``arch/s390/boot/startup.c``,
``arch/s390/mm/{vmem.c,hugetlbpage.c}``.

The kernel ASCE has 3 levels (region-third top, 4 TiB) or 4 levels (region-second top, 8 PiB).
Region and segment ("CRST") tables are 2048 x 8 B = 16 KiB; page tables are 256 x 8 B = 2 KiB. The
vmemmap is mapped with 1 MiB segment leaves when EDAT1 is present, even where a range uses only
part of one (tracked as x86 does), with 4 KiB pages otherwise; its allocations ignore the node.
Region-third entries may hold 2 GiB leaves with EDAT2. The vmemmap starts where
``setup_kernel_memory_layout()`` puts it for the machine's memory (:func:`kernel_memory_layout`), with
the kernel's defaults for what the model lacks: KASLR off, the default vmalloc size, no ``mem=``, no
KASAN or KMSAN.
"""

import attrs

from vmemcore.arch import (
    NUMA_NO_NODE, ArchInfo, Change, Feature, Flush, GiB, HugePageSize, InUse, Level, LiveEntryRule, MhpDesign,
    MiB, PageTableGeometry, PhysRange, PtdumpColumn, PtdumpFormat, SparseGeometry, Support, TeardownPolicy, Variant,
    hookimpl, selected,
)

CRST_BYTES = 2048 * 8  # _CRST_ENTRIES; allocated as CRST_ALLOC_ORDER 2 = 16 KiB
PTE_TABLE_BYTES = 256 * 8  # _PAGE_ENTRIES x 8 B: 2 KiB
MAX_PHYSMEM_BITS = 46  # CONFIG_MAX_PHYSMEM_BITS default
STRUCT_PAGE = 64
REGION3_SIZE, REGION2_SIZE, REGION1_SIZE = 1 << 31, 1 << 42, 1 << 53  # _REGION{3,2,1}_SIZE: 2 GiB, 4 TiB, 8 PiB
SEGMENT_SIZE = 1 << 20  # _SEGMENT_SIZE
MODULES_LEN = 1 << 31  # asm/pgtable.h
VMALLOC_DEFAULT_SIZE = (512 << 30) - MODULES_LEN  # asm/pgtable.h
MAX_DCSS_ADDR = 512 << 30  # asm/extmem.h: the highest address a DCSS segment may have (6.10+)
KASLR_LEN = 1 << 31  # asm/page.h (6.10+)
KERNEL_IMAGE_BASE = 0x3FFE0000000  # CONFIG_KERNEL_IMAGE_BASE default (without KASAN): 4 TiB - 512 MiB
KERNEL_IMAGE_SIZE = 512 << 20  # __NO_KASLR_END_KERNEL = KERNEL_IMAGE_BASE + KERNEL_IMAGE_SIZE = 4 TiB
VA_BITS = {"3-level": 42, "4-level": 53}

# The dated changes the hooks follow (docs/kernel-map.md#s390).
HVO_ON = Change("s390-hvo", "s390 selects ARCH_WANT_HUGETLB_PAGE_OPTIMIZE_VMEMMAP: HVO", "6.2",
                commit="00a34d5a99c0", status="CONFIRMED (s390 pull for 6.2)")
MEMMAP_ON_MEMORY = Change("s390-memmap-on-memory", "s390 selects ARCH_MHP_MEMMAP_ON_MEMORY_ENABLE", "6.9",
                          status="CONFIRMED (MM pull for 6.9-rc1, series by Sumanth Korikkar)")
SECTION_128M = Change("s390-section-128m", "SECTION_SIZE_BITS 28 -> 27: 128 MiB sections", "6.13",
                      commit="e3a6970b7daf", status="CONFIRMED (s390 pull for 6.13); not backported (a feature)")
ZONE_DEVICE = Change("s390-zone-device", "ZONE_DEVICE no longer depends on ARCH_HAS_PTE_DEVMAP (the pte_devmap "
                     "removal, Alistair Popple)", "6.17", status="UNCONFIRMED (release)")
PTE_FULL_PAGE = Change(
    "s390-pte-full-page", "page_table_alloc() gives every 2 KiB page table a whole 4 KiB page (before: two "
    "tables shared a page as fragments)", "6.7", commit="d08d4e7cd6bf",
    status="CONFIRMED (s390 pull for 6.7, s390-6.7-2); not backported")
BOOT_PTE_FULL_PAGE = Change(
    "s390-boot-pte-full-page", "boot-time vmem_pte_alloc() takes memblock_alloc(PAGE_SIZE, PAGE_SIZE) per page table "
    "(before: a 2 KiB allocation, so two boot page tables shared a page)", "6.17",
    stable=("6.12.42", "6.15.10", "6.16.1"), commit="daa8af80d283",
    status="CONFIRMED (s390 pull for 6.17, s390-6.17-2; stable reviews of 6.12.42-rc1, 6.15.10-rc1, 6.16.1-rc1)")
HVO_OFF = Change("s390-hvo-off", "HVO disabled: a valid entry may not be replaced by another valid one", "6.18",
                 stable=("6.6.117", "6.12.58", "6.17.8"), commit="64e2f60f355e",
                 status="CONFIRMED (stable reviews of 6.12.58-rc1 and 6.6.117-rc1; 6.17.8 from CVE-2025-68179)")
LAYOUT_TOP_DOWN = Change(
    "s390-layout-top-down", "setup_kernel_memory_layout() puts the vmemmap as high as the space below the vmalloc "
    "area allows (rounded down to a top-level region entry, at most 2**MAX_PHYSMEM_BITS) instead of right above the "
    "identity map", "5.16", stable=("5.15.5",), commit="9a39abb7c9aa",
    status="CONFIRMED (s390 pull for 5.16-rc2, s390-5.16-3; 5.15.5-rc1 stable review)")
LAYOUT_FIXED_KERNEL = Change(
    "s390-layout-fixed-kernel", "the kernel image at CONFIG_KERNEL_IMAGE_BASE without KASLR, modules and vmalloc "
    "below it, the vmemmap below the vmalloc area (no longer capped at 2**MAX_PHYSMEM_BITS); 4 levels only with "
    "KASLR or KASAN", "6.10", commit="54f2ecc3188f",
    status="CONFIRMED (s390 pull for the 6.10 merge window, s390-6.10-1, Alexander Gordeev's layout series)")


def _crst(name, shift, hw_name, leaf=False):
    return Level(name, shift, 11, CRST_BYTES, CRST_BYTES, leaf=leaf, hw_name=hw_name)


@hookimpl
def vmemcore_arch_info():
    return ArchInfo(
        name="s390",
        description="s390x, 4 KiB pages (arch/s390/mm)",
        variants=(
            Variant("3-level", {"levels": "3"}, description="region-third top table, 42-bit (4 TiB) kernel VA"),
            Variant("4-level", {"levels": "4"}, description="region-second top table, 53-bit (8 PiB) kernel VA"),
        ),
        default_variant="3-level",
        features=(
            Feature("edat1", True, "1 MiB segment leaves (EDAT1): vmemmap mapped with segment leaves"),
            Feature("edat2", True, "2 GiB region-third leaves (EDAT2): 2 GiB HugeTLB pages"),
        ),
        changes=(LAYOUT_TOP_DOWN, HVO_ON, PTE_FULL_PAGE, MEMMAP_ON_MEMORY, LAYOUT_FIXED_KERNEL, SECTION_128M,
                 BOOT_PTE_FULL_PAGE, ZONE_DEVICE, HVO_OFF),
    )


def _pte_alloc_bytes(profile, change):
    """A page table's allocation: a whole 4 KiB page with ``change``, else a 2 KiB fragment."""
    return 4096 if profile.has(change) else PTE_TABLE_BYTES


@hookimpl
def vmemcore_pagetable_geometry(variant, profile):
    """Page tables after boot come from ``page_table_alloc()`` (``vmem_pte_alloc``,
    ``pte_alloc_one_kernel``): 2 KiB fragments, two to a 4 KiB page, until d08d4e7cd6bf (6.7);
    at boot from ``memblock_alloc(size, size)`` of 2 KiB, two to a page again, until daa8af80d283
    (6.17; 6.12.42, 6.15.10, 6.16.1)."""
    upper = [_crst("pgd", 42, "region-second"), _crst("pud", 31, "region-third", leaf=True)]
    if variant.name == "3-level":
        upper = [_crst("pgd", 31, "region-third", leaf=True)]
    return PageTableGeometry(
        page_shift=12,
        va_bits=VA_BITS[variant.name],
        levels=upper + [
            _crst("pmd", 20, "segment", leaf=True),
            Level("pte", 12, 8, PTE_TABLE_BYTES, _pte_alloc_bytes(profile, PTE_FULL_PAGE), leaf=True, hw_name="page",
                  boot_alloc_bytes=_pte_alloc_bytes(profile, BOOT_PTE_FULL_PAGE)),
        ],
    )


def _round_down(value, align):
    return value // align * align


def _round_up(value, align):
    return -(-value // align) * align


@attrs.frozen
class VmemmapLayout:
    """Where ``setup_kernel_memory_layout()`` (``arch/s390/boot/startup.c``) puts the vmemmap:
    ``start`` (the ``vmemmap`` pointer) and ``limit``, the bottom of the area above it (the vmalloc
    area; the absolute lowcore since 6.10), which bounds the struct pages of hot-added memory."""

    start: int
    limit: int


def _memory_end(memory):
    """The end of the highest memory (``detect_max_physmem_end``), 0 without memory."""
    return max((item.start + item.size for item in memory), default=0)


def _section_align_up(pages, section_bits):
    return _round_up(pages, 1 << (section_bits - 12))


def kernel_memory_layout(variant, profile, memory, section_bits):
    """The vmemmap placement of ``setup_kernel_memory_layout()`` for a machine of ``memory``, with the
    kernel's defaults for what the model lacks: no KASLR, no ``mem=``/``vmalloc=``, no KASAN/KMSAN,
    not a kdump kernel and not a protected-virtualization host (no ultravisor limit).

    ``ident_map_size`` is the end of the highest memory (``detect_max_physmem_end``), at most
    ``2**MAX_PHYSMEM_BITS`` (``setup_ident_map_size``); the vmalloc area is ``VMALLOC_DEFAULT_SIZE``
    (510 GiB) or an eighth of ``ident_map_size`` rounded up to a segment, if larger
    (``setup_vmalloc_size``). The
    variant stands for the kernel's choice of 3 levels (limit 4 TiB) or 4 (8 PiB). Then, by kernel:

    * before 9a39abb7c9aa (5.16; 5.15.5): modules and vmalloc at the top of the address space, the
      vmemmap right above the identity map, at ``ident_map_size`` rounded up to a top-level region
      entry (2 GiB with 3 levels, 4 TiB with 4), unless the space left below vmalloc is smaller;
    * since then: the vmemmap as high as the space below vmalloc allows when it is split between the
      identity map and its memmap (``VMALLOC_START / (PAGE_SIZE + sizeof(struct page))`` pages),
      rounded down to a top-level region entry and at most ``2**MAX_PHYSMEM_BITS``;
    * since 54f2ecc3188f (6.10): the kernel image at ``CONFIG_KERNEL_IMAGE_BASE`` (4 TiB - 512 MiB),
      or at the top of the address space when the estimated size of the layout (``get_vmem_size``)
      does not fit below it, modules and vmalloc (at most half of what is left) below the image, the
      vmemmap split as before below the vmalloc area, rounded down to a 2 GiB region-third entry, no
      longer capped.

    Left out: the few pages of the real-memory copy and absolute lowcore areas (they sit between
    modules and vmalloc before 6.10 and below vmalloc since), which move the vmemmap only when the
    unrounded split lands within those pages of a region boundary; and the image size (the image is
    taken as the ``KERNEL_IMAGE_SIZE`` its Kconfig base leaves below 4 TiB)."""
    ident = min(_memory_end(memory), 1 << MAX_PHYSMEM_BITS)
    vmalloc = max(_round_up(ident // 8, SEGMENT_SIZE), VMALLOC_DEFAULT_SIZE)
    four_levels = variant.name == "4-level"
    asce_limit = REGION1_SIZE if four_levels else REGION2_SIZE
    split = 4096 + STRUCT_PAGE  # PAGE_SIZE + sizeof(struct page): one page of identity map and its struct page
    if profile.has(LAYOUT_FIXED_KERNEL):
        memmap = _section_align_up(ident // 4096, section_bits) * STRUCT_PAGE
        vsize = (_round_up((1 << 31) + max(ident, MAX_DCSS_ADDR), REGION3_SIZE)  # SZ_2G +
                 + _round_up(memmap, REGION3_SIZE) + MODULES_LEN + KASLR_LEN + vmalloc)
        nokaslr_end = KERNEL_IMAGE_BASE + KERNEL_IMAGE_SIZE
        kernel_start = KERNEL_IMAGE_BASE
        if asce_limit < nokaslr_end or min(vsize, asce_limit) > nokaslr_end:
            kernel_start = asce_limit - KERNEL_IMAGE_SIZE
        vmalloc_end = _round_down(kernel_start, SEGMENT_SIZE) - MODULES_LEN
        vmalloc = min(vmalloc, _round_down(vmalloc_end // 2, SEGMENT_SIZE))
        top = vmalloc_end - vmalloc
        pages = _section_align_up(top // split, section_bits)
        return VmemmapLayout(_round_down(top - pages * STRUCT_PAGE, REGION3_SIZE), top)
    rte_size = REGION2_SIZE if four_levels else REGION3_SIZE
    vmalloc_end = asce_limit - MODULES_LEN
    if profile.has(LAYOUT_TOP_DOWN):
        top = vmalloc_end - min(vmalloc, _round_down(vmalloc_end // 2, REGION3_SIZE))
        pages = _section_align_up(top // split, section_bits)
        start = min(_round_down(top - pages * STRUCT_PAGE, rte_size), 1 << MAX_PHYSMEM_BITS)
        return VmemmapLayout(start, top)
    memmap = _section_align_up(ident // 4096, section_bits) * STRUCT_PAGE
    above_ident = _round_up(ident, rte_size)
    if above_ident + memmap > vmalloc_end or vmalloc > vmalloc_end - above_ident - memmap:
        vmalloc = min(vmalloc, vmalloc_end // 2)
    top = vmalloc_end - vmalloc
    pages = _section_align_up(top // split, section_bits)
    return VmemmapLayout(min(_round_up(top - pages * STRUCT_PAGE, rte_size), above_ident), top)


def _section_bits(profile):
    # asm/sparsemem.h: 28 (256 MiB), 27 (128 MiB) since e3a6970b7daf (6.13)
    return 27 if profile.has(SECTION_128M) else 28


@hookimpl
def vmemcore_sparse_geometry(variant, profile, memory):
    """The vmemmap starts where :func:`kernel_memory_layout` puts it and spans the space the layout
    leaves up to the area above it (the struct pages of every address the identity map may reach,
    :func:`vmemcore_mappable_range`), at most the memmap of ``2**MAX_PHYSMEM_BITS`` bytes.

    Boot memory above the identity map's limit (``vmemmap_start``: about 3.5 TiB with 3 levels) is
    left unused by the kernel (``ident_map_size`` capped, ``physmem_set_usable_limit``); the model
    cannot drop memory it was given, so it keeps that memory and lets the region grow to hold its
    struct pages, as far as the address space allows."""
    section_bits = _section_bits(profile)
    layout = kernel_memory_layout(variant, profile, memory, section_bits)
    boot_memmap = _section_align_up(_memory_end(memory) // 4096, section_bits) * STRUCT_PAGE
    return SparseGeometry(
        page_shift=12,
        section_size_bits=section_bits,
        max_physmem_bits=MAX_PHYSMEM_BITS,
        memory_block_size=1 << section_bits,  # max(section, sclp.rzm): rzm taken as <= one section
        vmemmap_base=layout.start,
        vmemmap_size=min(max(layout.limit - layout.start, boot_memmap), (1 << MAX_PHYSMEM_BITS) // 4096 * STRUCT_PAGE),
        pageblock_order=8,  # HPAGE_SHIFT 20: 1 MiB
        max_page_order=10,
    )


@hookimpl
def vmemcore_mappable_range(machine):
    """``arch_get_mappable_range()``: the struct pages of what is added must fit below the area above
    the vmemmap, and since 9a39abb7c9aa (5.16; 5.15.5) the identity map ends below the vmemmap
    (``VMEM_MAX_PHYS``, the ``vmemmap`` pointer; ``max_mappable``, at most ``vmemmap_start``, since
    6.10). The kernel counts standby memory in ``ident_map_size``, which the model does not have: so
    before 5.16 (where ``VMEM_MAX_PHYS`` is ``ident_map_size`` rounded up to a region entry) and for
    the 6.10+ bound ``max(ident_map_size, MAX_DCSS_ADDR)``, hot-added memory is taken as standby
    memory the layout already counted. Boot memory the model keeps above the identity limit (see
    :func:`vmemcore_sparse_geometry`) stays inside the range."""
    sparse = machine.sparse_geometry
    holds = sparse.vmemmap_size // sparse.struct_page_size * sparse.page_size
    if machine.profile.has(LAYOUT_TOP_DOWN):
        return PhysRange(0, max(min(sparse.vmemmap_base, holds), _memory_end(machine.memory)))
    return PhysRange(0, holds)


@hookimpl
def vmemcore_hugepage_sizes(machine):
    """``arch_hugetlb_valid_size``: 1 MiB segments with EDAT1, 2 GiB region-third entries with EDAT2
    (the region-third level is the top, named "pgd", of the 3-level ASCE)."""
    sizes = []
    if machine.features["edat1"]:
        sizes.append(HugePageSize(1 * MiB, "pmd"))
    if machine.features["edat2"]:
        region_third = next(level for level in machine.geometry.levels if level.hw_name == "region-third")
        sizes.append(HugePageSize(2 * GiB, region_third.name))
    return tuple(sizes)


@hookimpl
def vmemcore_dax_vmemmap_support(machine):
    """s390 has never had compound devmap vmemmap dedup."""
    return Support(False, "s390 does not select ARCH_WANT_OPTIMIZE_DAX_VMEMMAP")


@hookimpl
def vmemcore_zone_device_support(machine):
    """``ZONE_DEVICE`` depended on ``ARCH_HAS_PTE_DEVMAP``, which s390 never selected, until
    "mm: remove devmap related functions and page table bits" (Alistair Popple; 6.17, UNCONFIRMED)."""
    return selected(machine.profile, ZONE_DEVICE, before="ZONE_DEVICE depends on ARCH_HAS_PTE_DEVMAP, which s390 does "
                                                    "not select (until the pte_devmap removal, 6.17 UNCONFIRMED)")


@hookimpl
def vmemcore_hvo_support(machine):
    """``ARCH_WANT_HUGETLB_PAGE_OPTIMIZE_VMEMMAP`` was selected from 6.2 (00a34d5a99c0) until
    64e2f60f355e (6.18; stable 6.6.117, 6.12.58, 6.17.8), with the caveat that HVO breaks the live-entry rule."""
    rule = ("s390 may not replace a valid page-table entry by another valid one without going through "
            "invalid (IPTE/IDTE or CRDTE/CSPG), which HVO's remapping does")
    return selected(
        machine.profile, HVO_ON, HVO_OFF,
        before="s390 did not select ARCH_WANT_HUGETLB_PAGE_OPTIMIZE_VMEMMAP before 6.2 (00a34d5a99c0)",
        after=f"{rule}: disabled by 64e2f60f355e (2025-10-30) in 6.18, backported to 6.6.117, 6.12.58 and 6.17.8",
        caveat=f"{rule} (disabled by 64e2f60f355e in 6.18)",
    )


@hookimpl
def vmemcore_live_entry_rule(machine):
    """s390 may not replace a valid page-table entry by another valid one: the entry goes invalid
    first (IPTE/IDTE, or CRDTE/CSPG), then the new one is written (64e2f60f355e's reason)."""
    return LiveEntryRule(
        output=False, flags=0,
        reason="s390 never replaces a valid entry by another valid one: it is invalidated first "
               "(IPTE/IDTE or CRDTE/CSPG), then written",
    )


@hookimpl
def vmemcore_vmemmap_populate(machine, start, end, node, altmap):
    """``vmemmap_populate`` = ``add_pagetable(start, end, direct=false, altmap)``, its allocations
    made with ``NUMA_NO_NODE`` (any node, lowest id first; nothing to verify). With EDAT1
    ``modify_pmd_table`` gives an empty segment a 1 MiB frame even if the range uses only part of
    it (``vmemmap_use_new_sub_pmd``), and falls back to a page table of 4 KiB pages from the same
    altmap when the frame cannot be had; without EDAT1 every segment gets a page table. On failure
    the kernel undoes the range with ``remove_pagetable``; here the engine's journal does."""
    from vmemcore.arch import vmemmap_populate_basepages, vmemmap_populate_hugepages  # numpy: loaded on first use
    if machine.features["edat1"]:
        vmemmap_populate_hugepages(machine, start, end, NUMA_NO_NODE, altmap, sub_pmd=True, altmap_fallback=True)
    else:
        vmemmap_populate_basepages(machine, start, end, NUMA_NO_NODE, altmap)
    return True


@hookimpl
def vmemcore_vmemmap_free(machine, start, end, altmap):
    """``vmemmap_free`` = ``remove_pagetable(start, end, direct=false, altmap)``: a segment leaf is
    freed when the range covers it or ``vmemmap_unuse_sub_pmd`` finds all of it unused, frames go to
    the altmap they came from (``vmem_free_pages``), every page, segment and region table is freed
    once empty (``try_free_*_table``; the top stays), and one ``flush_tlb_kernel_range`` ends it."""
    from vmemcore.arch import vmemmap_teardown  # numpy: loaded on first use
    vmemmap_teardown(machine, start, end, altmap, TeardownPolicy(InUse.SUB_PMD, flush_end=Flush.RANGE))
    return True


@hookimpl
def vmemcore_supports_memmap_on_memory(machine, vmemmap_size):
    """s390 selects ARCH_MHP_MEMMAP_ON_MEMORY_ENABLE only from 6.9 (the 2019 RFC had no such switch)."""
    if machine.profile.mhp_design is MhpDesign.RFC2019 or machine.profile.has(MEMMAP_ON_MEMORY):
        return None
    return Support(False, "s390 does not select ARCH_MHP_MEMMAP_ON_MEMORY_ENABLE before 6.9: standby memory "
                          "only becomes accessible when it is onlined")


@hookimpl
def vmemcore_arch_add_memory(machine, request):
    """In the 2019 RFC (docs/kernel-map.md#memmap_on_memory-designs) s390's ``arch_add_memory`` clears MHP_MEMMAP_FROM_RANGE: the memory only becomes
    accessible at online time, so its memmap cannot be written at add time."""
    if machine.profile.mhp_design is MhpDesign.RFC2019 and request.memmap_on_memory:
        return attrs.evolve(request, memmap_on_memory=False)
    return None


#: ``arch/s390/mm/dump_pagetables.c``: ``note_page`` prints ``0x%016lx-0x%016lx %9lu%c `` and
#: ``print_prot`` the level's name, then ``I`` for an invalid run or ``RO ``/``RW `` and ``NX``/``X``.
#: Its ``level_name`` is ASCE, PGD, PUD, PMD, PTE by the generic walk's level (pgd, p4d, pud,
#: pmd, pte), so a region-third entry is a PUD and a segment a PMD. The vmemmap is
#: ``PAGE_KERNEL``/``SEGMENT_KERNEL``: no-execute.
_PTDUMP_LEVELS = {"region-first": "ASCE", "region-second": "PGD", "region-third": "PUD", "segment": "PMD", "page": "PTE"}


@hookimpl
def vmemcore_ptdump_format(machine):
    return PtdumpFormat(
        line="0x{start:016x}-0x{end:016x} {phys}{size} {level} {attrs}",
        columns=(PtdumpColumn("RO ", "RW ", "rdonly"), PtdumpColumn("NX")),
        level_names={level.name: _PTDUMP_LEVELS[level.hw_name] for level in machine.geometry.levels},
        hole="I",
        markers=("vmemmap Area", None),
        source="arch/s390/mm/dump_pagetables.c",
    )
