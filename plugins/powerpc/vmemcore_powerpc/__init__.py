"""powerpc64 book3s64 for vmemcore: ``arch/powerpc/include/asm/book3s/64/{radix*.h,hash*.h,pgtable.h}``,
``arch/powerpc/include/asm/sparsemem.h``, ``arch/powerpc/mm/init_64.c``.

Geometry only (no populate/free yet). The MMU (radix or hash) is chosen at boot, the page size at
build time. Radix maps the vmemmap in the Linux page table (2 MiB PMD leaves); hash keeps it in bolted
HPTEs outside the Linux page table, whose geometry is still given here for completeness.
"""

from vmemcore import ArchInfo, Level, MiB, PageTableGeometry, SparseGeometry, Support, TiB, Variant, hookimpl

PAGE_SHIFT = {"4K": 12, "64K": 16}
# *_INDEX_SIZE (PTE, PMD, PUD, PGD): book3s/64/radix-{4k,64k}.h, hash-{4k,64k}.h
INDEX_SIZE = {
    ("radix", "4K"): (9, 9, 9, 13),
    ("radix", "64K"): (5, 9, 9, 13),
    ("hash", "4K"): (9, 7, 9, 9),
    ("hash", "64K"): (8, 10, 10, 8),
}
# kernel VA layout (book3s/64/radix.h, hash-4k.h, hash-64k.h): vmemmap start and region size
VMEMMAP_BASE = {"radix": 0xC00C000000000000, "hash-64K": 0xC00C000000000000, "hash-4K": 0xC0003F0000000000}
VMEMMAP_SIZE = {"radix": 512 * TiB, "hash-64K": 512 * TiB, "hash-4K": 1 * TiB}  # 2**49 / 2**40
# pageblock_order: set_pageblock_order() from hpage_shift (radix 2 MiB, hash 16 MiB huge pages)
PAGEBLOCK_ORDER = {("radix", "4K"): 9, ("radix", "64K"): 5, ("hash", "4K"): 12, ("hash", "64K"): 8}
MAX_PAGE_ORDER = {"4K": 12, "64K": 8}
SECTION_SIZE_BITS = 24  # asm/sparsemem.h
# ibm,lmb-size on pseries; QEMU spapr's 256 MiB LMB is the assumed default (UNCONFIRMED from QEMU source)
MEMORY_BLOCK_SIZE = 256 * MiB


def _parse(variant):
    return variant.options["mmu"], variant.options["page"]


def _layout(mmu, page):
    return "radix" if mmu == "radix" else f"hash-{page}"


@hookimpl
def vmemcore_arch_info():
    return ArchInfo(
        name="powerpc",
        description="powerpc64 book3s64, radix or hash MMU, 4K/64K pages (arch/powerpc/mm)",
        variants=(
            Variant("radix-4K", {"mmu": "radix", "page": "4K"}, description="radix MMU, 4 KiB pages, 52-bit VA"),
            Variant("radix-64K", {"mmu": "radix", "page": "64K"}, description="radix MMU, 64 KiB pages, 52-bit VA"),
            Variant("hash-4K", {"mmu": "hash", "page": "4K"}, description="hash MMU, 4 KiB pages, 46-bit VA"),
            Variant("hash-64K", {"mmu": "hash", "page": "64K"}, description="hash MMU, 64 KiB pages, 52-bit VA"),
        ),
        default_variant="radix-64K",
        features=(),
    )


@hookimpl
def vmemcore_pagetable_geometry(variant, profile):
    mmu, page = _parse(variant)
    page_shift = PAGE_SHIFT[page]
    page_bytes = 1 << page_shift
    pte_bits, pmd_bits, pud_bits, pgd_bits = INDEX_SIZE[(mmu, page)]
    pmd_shift = page_shift + pte_bits  # runtime PMD_SHIFT: 21 (radix, hash-4K) or 24 (hash-64K)
    pud_shift = pmd_shift + pmd_bits
    pgd_shift = pud_shift + pud_bits
    radix = mmu == "radix"
    # Radix 64K: the 256 B PTE table and 4 KiB PMD/PUD tables are fragments of a 64 KiB page after slab
    # is up (pte_fragment_alloc/pmd_fragment_alloc), but vmemmap_{pud,pmd,pte}_alloc() take a whole
    # page per table before that (early_alloc_pgtable(PAGE_SIZE)): alloc_bytes is that whole page.
    # Hash 64K: the 2 KiB PTE table is a 4 KiB fragment (second half: hash-slot info) and the 8 KiB PMD a
    # 16 KiB fragment with THP/HugeTLB; hash-4K's 1 KiB PMD comes from a kmem cache. Whole pages here too.
    levels = [
        Level("pgd", pgd_shift, pgd_bits, 8 << pgd_bits, max(page_bytes, 8 << pgd_bits)),  # static, 64 KiB radix
        Level("pud", pud_shift, pud_bits, 8 << pud_bits, max(page_bytes, 8 << pud_bits), leaf=radix),  # 1 GiB
        Level("pmd", pmd_shift, pmd_bits, 8 << pmd_bits, max(page_bytes, 8 << pmd_bits), leaf=radix),  # 2 MiB
        Level("pte", page_shift, pte_bits, 8 << pte_bits, max(page_bytes, 8 << pte_bits), leaf=True),
    ]
    va_bits = 46 if (mmu, page) == ("hash", "4K") else 52
    return PageTableGeometry(page_shift=page_shift, va_bits=va_bits, levels=levels)


@hookimpl
def vmemcore_sparse_geometry(variant, profile):
    mmu, page = _parse(variant)
    layout = _layout(mmu, page)
    return SparseGeometry(
        page_shift=PAGE_SHIFT[page],
        section_size_bits=SECTION_SIZE_BITS,
        # 51 with SPARSEMEM_VMEMMAP+EXTREME; hash-4K is held to H_MAX_PHYSMEM_BITS 46, which is
        # exactly what its 1 TiB vmemmap region can describe.
        max_physmem_bits=46 if layout == "hash-4K" else 51,
        memory_block_size=MEMORY_BLOCK_SIZE,
        vmemmap_base=VMEMMAP_BASE[layout],
        vmemmap_size=VMEMMAP_SIZE[layout],
        pageblock_order=PAGEBLOCK_ORDER[(mmu, page)],
        max_page_order=MAX_PAGE_ORDER[page],
    )


@hookimpl
def vmemcore_dax_vmemmap_support(machine):
    """``vmemmap_can_optimize`` is ``radix_enabled()`` and the generic rule since the 6.6 opt-in
    (``ARCH_WANT_OPTIMIZE_DAX_VMEMMAP if PPC_RADIX_MMU``); from 5.19 until the opt-in of 6.4 the
    rule was generic on every arch (5.18/5.19 and 6.4/6.5 UNCONFIRMED). Hash never: its vmemmap
    is bolted into the hash table, not mapped by page tables."""
    mmu, _ = _parse(machine.variant)
    profile = machine.profile
    if mmu == "hash":
        return Support(False, "the hash MMU keeps the vmemmap in bolted HPTEs: vmemmap_can_optimize requires radix")
    if profile.at_least(6, 6) or (profile.at_least(5, 19) and not profile.at_least(6, 4)):
        return Support(True)
    if profile.at_least(6, 4):
        return Support(False, "powerpc selects ARCH_WANT_OPTIMIZE_DAX_VMEMMAP (radix) only from 6.6")
    return Support(False, "compound devmap vmemmap dedup was merged in 5.19 (5.18/5.19 UNCONFIRMED)")
