"""s390x for vmemcore: ``arch/s390/include/asm/{pgtable.h,pgalloc.h,sparsemem.h}``, ``arch/s390/boot/startup.c``.

Geometry only (no populate/free yet). The kernel ASCE has 3 levels (region-third top, 4 TiB) or 4
levels (region-second top, 8 PiB). Region and segment ("CRST") tables are 2048 x 8 B = 16 KiB; page
tables are 256 x 8 B = 2 KiB. The vmemmap is mapped with 1 MiB segment leaves when EDAT1 is present;
region-third entries may hold 2 GiB leaves with EDAT2.
"""

from vmemcore import ArchInfo, Feature, Level, PageTableGeometry, SparseGeometry, TiB, Variant, hookimpl

CRST_BYTES = 2048 * 8  # _CRST_ENTRIES; allocated as CRST_ALLOC_ORDER 2 = 16 KiB
# A 2 KiB page table takes a whole 4 KiB page: page_table_alloc() since d08d4e7cd6bf (~6.7), boot-time
# vmem_pte_alloc() since daa8af80d283 (6.17, stable 6.12.42); older kernels paired two tables per page.
PTE_TABLE_ALLOC = 4096
MAX_PHYSMEM_BITS = 46  # CONFIG_MAX_PHYSMEM_BITS default
# The kernel places the vmemmap dynamically (startup.c setup_kernel_memory_layout()): just below the
# lowcore, sized for the identity map, rounded down to a top-level region entry. Fixed stand-ins here:
# a region-entry aligned range holding the memmap of 2**MAX_PHYSMEM_BITS bytes (2**34 pages x 64 B).
VMEMMAP_SIZE = 1 * TiB
VMEMMAP_BASE = {"3-level": 2 * TiB, "4-level": 1 << 52}  # inside 4 TiB / 8 PiB, 2 GiB / 4 TiB aligned
VA_BITS = {"3-level": 42, "4-level": 53}


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
    )


@hookimpl
def vmemcore_pagetable_geometry(variant, profile):
    upper = [_crst("pgd", 42, "region-second"), _crst("pud", 31, "region-third", leaf=True)]
    if variant.name == "3-level":
        upper = [_crst("pgd", 31, "region-third", leaf=True)]
    return PageTableGeometry(
        page_shift=12,
        va_bits=VA_BITS[variant.name],
        levels=upper + [
            _crst("pmd", 20, "segment", leaf=True),
            Level("pte", 12, 8, 256 * 8, PTE_TABLE_ALLOC, leaf=True, hw_name="page"),  # _PAGE_ENTRIES
        ],
    )


@hookimpl
def vmemcore_sparse_geometry(variant, profile):
    # asm/sparsemem.h: 28 (256 MiB) in 6.12, 27 (128 MiB) in 6.19 and 7.1; the release that changed it
    # is UNCONFIRMED (taken here as 6.19).
    section_bits = 27 if profile.at_least(6, 19) else 28
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
