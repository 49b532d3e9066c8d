"""x86_64 for vmemcore: ``arch/x86/mm/init_64.c`` and ``arch/x86/include/asm/pgtable_64_types.h``.

4-level paging (48-bit virtual, 46-bit physical) and 5-level paging (57-bit virtual, 52-bit
physical); 4 KiB pages and 512-entry tables at every level; the vmemmap is mapped with 2 MiB PMD
leaves when the CPU has PSE and the range covers a section, with base pages otherwise.
"""

from vmemcore import ArchInfo, Feature, Level, PageTableGeometry, SparseGeometry, TiB, Variant, hookimpl

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
