"""s390x for vmemcore: ``arch/s390/include/asm/{pgtable.h,pgalloc.h,sparsemem.h}``, ``arch/s390/boot/startup.c``,
``arch/s390/mm/{vmem.c,hugetlbpage.c}``.

The kernel ASCE has 3 levels (region-third top, 4 TiB) or 4 levels (region-second top, 8 PiB).
Region and segment ("CRST") tables are 2048 x 8 B = 16 KiB; page tables are 256 x 8 B = 2 KiB. The
vmemmap is mapped with 1 MiB segment leaves when EDAT1 is present, even where a range uses only
part of one (tracked as x86 does), with 4 KiB pages otherwise; its allocations ignore the node.
Region-third entries may hold 2 GiB leaves with EDAT2.
"""

import attrs

from vmemcore.arch import (
    NUMA_NO_NODE, ArchInfo, Change, Feature, Flush, GiB, HugePageSize, InUse, Level, LiveEntryRule, MhpDesign,
    MiB, PageTableGeometry, PtdumpColumn, PtdumpFormat, SparseGeometry, Support, TeardownPolicy, TiB, Variant,
    hookimpl, selected,
)

CRST_BYTES = 2048 * 8  # _CRST_ENTRIES; allocated as CRST_ALLOC_ORDER 2 = 16 KiB
PTE_TABLE_BYTES = 256 * 8  # _PAGE_ENTRIES x 8 B: 2 KiB
MAX_PHYSMEM_BITS = 46  # CONFIG_MAX_PHYSMEM_BITS default
# The kernel places the vmemmap dynamically (startup.c setup_kernel_memory_layout()): just below the
# lowcore, sized for the identity map, rounded down to a top-level region entry. Fixed stand-ins here:
# a region-entry aligned range holding the memmap of 2**MAX_PHYSMEM_BITS bytes (2**34 pages x 64 B).
VMEMMAP_SIZE = 1 * TiB
VMEMMAP_BASE = {"3-level": 2 * TiB, "4-level": 1 << 52}  # inside 4 TiB / 8 PiB, 2 GiB / 4 TiB aligned
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
        changes=(HVO_ON, PTE_FULL_PAGE, MEMMAP_ON_MEMORY, SECTION_128M, BOOT_PTE_FULL_PAGE, ZONE_DEVICE, HVO_OFF),
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


@hookimpl
def vmemcore_sparse_geometry(variant, profile):
    # asm/sparsemem.h: 28 (256 MiB), 27 (128 MiB) since e3a6970b7daf (6.13)
    section_bits = 27 if profile.has(SECTION_128M) else 28
    return SparseGeometry(
        page_shift=12,
        section_size_bits=section_bits,
        max_physmem_bits=MAX_PHYSMEM_BITS,
        memory_block_size=1 << section_bits,  # max(section, sclp.rzm): rzm taken as <= one section
        vmemmap_base=VMEMMAP_BASE[variant.name],
        vmemmap_size=VMEMMAP_SIZE,
        pageblock_order=8,  # HPAGE_SHIFT 20: 1 MiB
        max_page_order=10,
    )


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
