"""powerpc64 book3s64 for vmemcore: ``arch/powerpc/include/asm/book3s/64/{radix*.h,hash*.h,pgtable.h}``,
``arch/powerpc/include/asm/{sparsemem.h,pgtable.h}``, ``arch/powerpc/mm/init_64.c``,
``arch/powerpc/mm/book3s64/{radix_pgtable.c,hugetlbpage.c}``, ``arch/powerpc/Kconfig``.

The MMU (radix or hash) is chosen at boot, the page size at build time. Radix maps the vmemmap in
the Linux page table: ``radix__vmemmap_populate`` (6.6+) takes 2 MiB PMD leaves, from an altmap only
where they fit inside it, and base pages otherwise or when a block cannot be had; ``radix__vmemmap_free``
frees a leaf or page only when no sub-section it serves is still ``pfn_valid``. Page-table pages are
whole pages at boot (``early_alloc_pgtable(PAGE_SIZE)``); after boot the kernel takes PTE and PMD tables
as fragments of a page (256 B and 4 KiB with 64K pages) and PUD tables from a kmem cache, modelled as
whole pages too, from the memmap's node.

Not simulated yet: the hash MMU's vmemmap (bolted HPTEs recorded in ``vmemmap_list``), and radix before
6.6, which shared that ``init_64.c`` populate with hash; such machines refuse to boot.
"""

from vmemcore.arch import (
    ArchInfo, BadRequest, Flush, GiB, HugePageSize, InUse, Level, MiB, PageTableGeometry, SparseGeometry, Support,
    TeardownPolicy, TiB, Variant, format_size, hookimpl, vmemmap_populate_compound_by_address, vmemmap_populate_hugepages,
    vmemmap_teardown,
)

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
    # Radix 64K: the 256 B PTE table and 4 KiB PMD/PUD tables are fragments of a 64 KiB page after slab
    # is up (pte_fragment_alloc/pmd_fragment_alloc), but vmemmap_{pud,pmd,pte}_alloc() take a whole
    # page per table before that (early_alloc_pgtable(PAGE_SIZE)): alloc_bytes is that whole page.
    # Hash 64K: the 2 KiB PTE table is a 4 KiB fragment (second half: hash-slot info) and the 8 KiB PMD a
    # 16 KiB fragment with THP/HugeTLB; hash-4K's 1 KiB PMD comes from a kmem cache. Whole pages here too.
    # hash-4K maps 16G and 16M HugeTLB pages with runs of 64 PUD and 8 PMD entries from 6.12
    cont = (64, 8) if (mmu, page) == ("hash", "4K") and profile.at_least(6, 12) else (1, 1)
    levels = [
        Level("pgd", pgd_shift, pgd_bits, 8 << pgd_bits, max(page_bytes, 8 << pgd_bits)),  # static, 64 KiB radix
        # leaves: radix 1 GiB PUD / 2 MiB PMD; hash 16 GiB / 16 MiB HugeTLB (hash-64K; hash-4K as 64 / 8 entries)
        Level("pud", pud_shift, pud_bits, 8 << pud_bits, max(page_bytes, 8 << pud_bits), leaf=True, contiguous=cont[0]),
        Level("pmd", pmd_shift, pmd_bits, 8 << pmd_bits, max(page_bytes, 8 << pmd_bits), leaf=True, contiguous=cont[1]),
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


@hookimpl
def vmemcore_hugepage_sizes(machine):
    """``hugetlbpage_init`` through ``check_and_get_huge_psize``: radix 2 MiB (PMD) and 1 GiB (PUD), hash
    16 MiB and 16 GiB (16G pages come only from firmware reservations). Hash-64K's PMD and PUD entries
    span exactly those; hash-4K maps them with 8 PMD and 64 PUD entries since "use contiguous PMD/PUD
    instead of HUGEPD" (6.12, UNCONFIRMED), before that from hugepd directories hanging off a PUD (16M)
    or PGD (16G) entry."""
    mmu, page = _parse(machine.variant)
    if mmu == "radix":
        return (HugePageSize(2 * MiB, "pmd"), HugePageSize(1 * GiB, "pud"))
    if page == "64K":
        return (HugePageSize(16 * MiB, "pmd"), HugePageSize(16 * GiB, "pud"))
    if machine.profile.at_least(6, 12):
        return (HugePageSize(16 * MiB, "pmd", 8), HugePageSize(16 * GiB, "pud", 64))
    return (HugePageSize(16 * MiB, "pud", directory=True), HugePageSize(16 * GiB, "pgd", directory=True))


@hookimpl
def vmemcore_hvo_support(machine):
    """No HVO in any kernel: powerpc never selected the option."""
    mmu, _ = _parse(machine.variant)
    reason = ("powerpc has never selected ARCH_WANT_OPTIMIZE_HUGETLB_VMEMMAP "
              "(ARCH_WANT_HUGETLB_PAGE_OPTIMIZE_VMEMMAP before 6.6)")
    if mmu == "hash":
        reason += "; the hash MMU's vmemmap is bolted into the hash table, outside the page tables HVO remaps"
    return Support(False, reason)


@hookimpl
def vmemcore_supports_memmap_on_memory(machine, vmemmap_size):
    """``ARCH_MHP_MEMMAP_ON_MEMORY_ENABLE if PPC_RADIX_MMU`` from 6.6, then ``arch_supports_memmap_on_memory``
    (``asm/pgtable.h``): false on hash; with 4K pages the memmap must fill whole PMD leaves; with 64K pages
    always true (the populate falls back to base pages, and the pageblock rule is the generic one's)."""
    mmu, page = _parse(machine.variant)
    if not machine.profile.at_least(6, 6):
        return Support(False, "powerpc selects ARCH_MHP_MEMMAP_ON_MEMORY_ENABLE (radix) only from 6.6")
    if mmu == "hash":
        return Support(False, "arch_supports_memmap_on_memory is false on the hash MMU")
    pmd = machine.geometry.pmd.entry_span
    if page == "4K" and vmemmap_size % pmd:
        return Support(False, f"with 4K pages the memmap of a block ({format_size(vmemmap_size)}) must be a "
                              f"multiple of PMD_SIZE ({format_size(pmd)})")
    return Support(True)


# ------------------------------------------------------------------------------- vmemmap populate

def _check_backend(machine):
    """Only radix's own populate (6.6+) is simulated."""
    mmu, _ = _parse(machine.variant)
    if mmu == "hash":
        raise BadRequest("the hash MMU's bolted vmemmap is not simulated yet (__vmemmap_populate bolts each "
                         "block into the hash page table and records it in vmemmap_list)")
    if not machine.profile.at_least(6, 6):
        raise BadRequest(f"kernel {machine.profile.name}: radix used the hash MMU's vmemmap_list populate of "
                         "init_64.c until radix__vmemmap_populate came in 6.6 (368a0590d954); that backend is "
                         "not simulated yet")


def _altmap_cross_boundary(machine, altmap, addr, size):
    """``altmap_cross_boundary``: do the struct pages in ``[addr, addr + size)`` describe a pfn outside
    the altmap's ``[base_pfn, end_pfn]`` (counted from the pfn of ``addr``'s struct page)?"""
    sparse = machine.sparse_geometry
    first = sparse.page_to_pfn(addr)
    return first < altmap.base_pfn or first + size // sparse.struct_page_size - 1 > altmap.end_pfn


@hookimpl
def vmemcore_vmemmap_populate(machine, start, end, node, altmap):
    """``vmemmap_populate`` = ``radix__vmemmap_populate`` (6.6+). Without an altmap every empty PMD gets a
    2 MiB leaf (``vmemmap_set_pmd``), an existing leaf is kept (``vmemmap_check_pmd``), and a PMD whose
    block cannot be had, or that holds a PTE table, gets base pages: ``vmemmap_populate_hugepages`` to
    the letter. With an altmap an empty PMD takes a block from it only if the kernel's cursor is
    PMD-aligned and the block does not cross the altmap's boundary, and base pages come from the
    altmap unless they would cross it (judged at the cursor, which keeps ``start``'s offset inside a
    page) or it is exhausted, then from RAM. Since "Optimize vmemmap start alignment" (f5164797284d,
    6.17) ``start`` is aligned down to ``PMD_SIZE`` without an altmap (a fallback then maps base pages
    from the PMD's start) and to ``PAGE_SIZE`` with one; 6.12.0 takes ``start`` as given. The
    6.15/6.16 rule (9cf7e13fecba: base pages for every PMD-unaligned start) belongs to no profile."""
    _check_backend(machine)
    page = machine.geometry.page_size
    if machine.profile.at_least(6, 17):
        align = machine.geometry.pmd.entry_span if altmap is None else page
        start = start // align * align
    if altmap is None:
        vmemmap_populate_hugepages(machine, start, end, node)
        return True
    offset = start % page  # once the cursor is off a page boundary, it stays off every PMD boundary

    def block_allowed(m, addr, span, altmap):
        return offset == 0 and addr % span == 0 and not _altmap_cross_boundary(m, altmap, addr, span)

    def page_allowed(m, addr, altmap):
        return not _altmap_cross_boundary(m, altmap, addr + offset, page)

    vmemmap_populate_hugepages(machine, start, end, node, altmap, leaf_allowed=block_allowed,
                               altmap_fallback=True, altmap_page_allowed=page_allowed)
    return True


@hookimpl
def vmemcore_vmemmap_free(machine, start, end, altmap):
    """``vmemmap_free`` = ``radix__vmemmap_free`` = ``remove_pagetable(start, end, direct=false, altmap)``:
    a PMD leaf or a page the range covers in part (64K pages: a page holds the struct pages of 32
    sub-sections) is freed only when ``vmemmap_populated`` finds none of the sub-sections it serves
    ``pfn_valid``; radix's ``free_vmemmap_pages`` gives a frame inside the altmap back to it and any
    other to memblock or the buddy allocator; ``free_{pud,pmd,pte}_table`` free a table once all its
    entries are none (the PGD stays); one ``radix__flush_tlb_kernel_range(start, end)`` ends it."""
    vmemmap_teardown(machine, start, end, altmap, TeardownPolicy(InUse.PFN_VALID, flush_end=Flush.RANGE))
    return True


@hookimpl
def vmemcore_vmemmap_populate_compound_pages(machine, start_pfn, start, end, node, pgmap):
    """Radix defines its own ``vmemmap_populate_compound_pages`` (``radix_pgtable.c``, f2b79c0d7968,
    6.6): each compound page's head page and first tail page get frames, every later tail page maps
    the first tail page's frame, found by address (so a 64K page holding the memmap of four sections
    needs no section-by-section reuse), and a page under an existing PMD leaf is left to it. Before
    6.6 the generic populate ran (hash never dedups)."""
    mmu, _ = _parse(machine.variant)
    if mmu != "radix" or not machine.profile.at_least(6, 6):
        return None
    vmemmap_populate_compound_by_address(machine, start_pfn, start, end, node, pgmap)
    return True
