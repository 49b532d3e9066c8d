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

import numpy as np

from vmemcore import (
    ArchInfo, BadRequest, GiB, HugePageSize, Level, MiB, OutOfMemory, PageTableGeometry, SparseGeometry, Support, TiB,
    Variant, format_size, hookimpl,
)
from vmemcore.pagetable import PRESENT, table_index_range
from vmemcore.populate import (
    alloc_blocks,
    free_table,
    free_vmemmap_frames,
    free_vmemmap_pages,
    table_allocator,
    vmemmap_populate_hugepages,
    vmemmap_verify,
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
    # Radix 64K: the 256 B PTE table and 4 KiB PMD/PUD tables are fragments of a 64 KiB page after slab
    # is up (pte_fragment_alloc/pmd_fragment_alloc), but vmemmap_{pud,pmd,pte}_alloc() take a whole
    # page per table before that (early_alloc_pgtable(PAGE_SIZE)): alloc_bytes is that whole page.
    # Hash 64K: the 2 KiB PTE table is a 4 KiB fragment (second half: hash-slot info) and the 8 KiB PMD a
    # 16 KiB fragment with THP/HugeTLB; hash-4K's 1 KiB PMD comes from a kmem cache. Whole pages here too.
    levels = [
        Level("pgd", pgd_shift, pgd_bits, 8 << pgd_bits, max(page_bytes, 8 << pgd_bits)),  # static, 64 KiB radix
        # leaves: radix 1 GiB PUD / 2 MiB PMD; hash 16 GiB / 16 MiB HugeTLB (hash-64K; hash-4K as 64 / 8 entries)
        Level("pud", pud_shift, pud_bits, 8 << pud_bits, max(page_bytes, 8 << pud_bits), leaf=True),
        Level("pmd", pmd_shift, pmd_bits, 8 << pmd_bits, max(page_bytes, 8 << pmd_bits), leaf=True),
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
    the letter. Since "Optimize vmemmap start alignment" (f5164797284d, 6.17) ``start`` is aligned down
    to ``PMD_SIZE`` without an altmap (a fallback then maps base pages from the PMD's start) and to
    ``PAGE_SIZE`` with one; 6.12.0 takes ``start`` as given. The 6.15/6.16 rule (9cf7e13fecba: base
    pages for every PMD-unaligned start) belongs to no profile."""
    _check_backend(machine)
    if machine.profile.at_least(6, 17):
        align = machine.geometry.pmd.entry_span if altmap is None else machine.geometry.page_size
        start = start // align * align
    if altmap is None:
        vmemmap_populate_hugepages(machine, start, end, node)
    else:
        _populate_with_altmap(machine, start, end, node, altmap)
    return True


def _populate_with_altmap(machine, start, end, node, altmap):
    """``radix__vmemmap_populate`` with an altmap, a PMD at a time: an empty PMD takes a block from the
    altmap only if ``addr`` is PMD-aligned and the block does not cross the altmap's boundary; otherwise,
    or when the altmap cannot give it, base pages. Tables come from ``vmemmap_{pud,pmd,pte}_alloc``."""
    pt = machine.pagetable
    geometry = machine.geometry
    span = geometry.pmd.entry_span
    alloc_table = table_allocator(machine, node)
    addr = start
    while addr < end:
        table = pt.walk(addr, geometry.pmd_depth, alloc_table)
        i = table.index(addr)
        if table.is_leaf(i):  # vmemmap_check_pmd
            vmemmap_verify(machine, table.pfns[i:i + 1], node)
            addr = table.va(i + 1)
            continue
        if not table.present(i) and addr % span == 0 and not _altmap_cross_boundary(machine, altmap, addr, span):
            pfns = alloc_blocks(machine, span >> geometry.page_shift, 1, node, altmap)
            if len(pfns):  # vmemmap_set_pmd
                pt.set_leaves(table, slice(i, i + 1), pfns)
                vmemmap_verify(machine, pfns, node)
                addr = table.va(i + 1)
                continue
        addr = _populate_base_pages(machine, addr, min(table.va(i + 1), end), node, altmap, alloc_table)


def _populate_base_pages(machine, addr, stop, node, altmap, alloc_table):
    """``base_mapping`` for the kernel's PAGE_SIZE steps from ``addr`` below ``stop`` (inside one PMD):
    ``vmemmap_pte_alloc``, then ``radix__vmemmap_pte_populate`` gives each empty PTE a page from the
    altmap unless that page would cross the altmap's boundary (judged from the step's address), and from
    RAM when it does or the altmap is exhausted. Returns the address of the next step."""
    page = machine.geometry.page_size
    steps = -(-(stop - addr) // page)
    table = machine.pagetable.walk(addr, len(machine.geometry.levels) - 1, alloc_table)
    first = table.index(addr)
    empty = [k for k in range(steps) if not table.flags[first + k] & PRESENT]
    fits = [k for k in empty if not _altmap_cross_boundary(machine, altmap, addr + k * page, page)]
    from_altmap = alloc_blocks(machine, 1, len(fits), node, altmap)  # one page needs no alignment padding
    taken = fits[:len(from_altmap)]
    rest = sorted(set(empty) - set(taken))
    from_ram = alloc_blocks(machine, 1, len(rest), node, None)
    if len(from_ram) < len(rest):
        raise OutOfMemory(f"no memory for the struct pages at {table.va(first + rest[len(from_ram)]):#x} (node {node})")
    if empty:
        pfns = np.concatenate([from_altmap, from_ram])
        machine.pagetable.set_leaves(table, np.array(taken + rest, dtype=np.int64) + first, pfns)
        vmemmap_verify(machine, pfns, node)
    return addr + steps * page


# ----------------------------------------------------------------------------------- vmemmap free

@hookimpl
def vmemcore_vmemmap_free(machine, start, end, altmap):
    """``vmemmap_free`` = ``radix__vmemmap_free`` = ``remove_pagetable(start, end, direct=false, altmap)``,
    which ends with one ``radix__flush_tlb_kernel_range(start, end)``."""
    _remove(machine, machine.pagetable.top, start, end, altmap)
    machine.flush_tlb_kernel_range(start, end)
    return True


def _remove(machine, table, start, end, altmap):
    """``remove_{pud,pmd}_table`` below ``table``, each child table followed by its
    ``free_{pud,pmd,pte}_table`` (freed once all its entries are none; the PGD stays). A PMD leaf is freed
    when the range covers it whole or ``vmemmap_pmd_is_unused`` (only PMD leaves map the vmemmap)."""
    lo, hi = table_index_range(table, start, end)
    span = table.level.entry_span
    for i in (np.flatnonzero(table.flags[lo:hi] & PRESENT) + lo).tolist():
        first, last = max(table.va(i), start), min(table.va(i + 1), end)
        if table.is_leaf(i):
            if (first % span == 0 and last % span == 0) or not _vmemmap_populated(machine, table.va(i), span):
                pfn = int(table.pfns[i])
                owner = altmap if altmap is not None and altmap.holds(pfn) else None
                free_vmemmap_frames(machine, pfn, span >> machine.geometry.page_shift, owner)
                machine.pagetable.clear_leaves(table, slice(i, i + 1))
            continue
        child = table.children[i]
        if child.level is machine.geometry.levels[-1]:
            _remove_ptes(machine, child, first, last, altmap)
        else:
            _remove(machine, child, first, last, altmap)
        if child.empty:
            free_table(machine, table, i)


def _remove_ptes(machine, table, start, end, altmap):
    """``remove_pte_table``: a page the range covers whole is freed, one it covers in part (64K pages: a
    page holds the struct pages of 32 sub-sections) only when ``vmemmap_page_is_unused``. Radix's
    ``free_vmemmap_pages`` gives a frame inside the altmap's ``[base_pfn, base_pfn + reserve + free)``
    back to it and any other to memblock (``free_reserved_page``) or the buddy allocator."""
    page = table.level.entry_span
    lo, hi = table_index_range(table, start, end)
    present = np.flatnonzero(table.flags[lo:hi] & PRESENT) + lo
    partial = {i for i, edge in ((lo, start), (hi - 1, end)) if edge % page}
    kept = [i for i in partial if _vmemmap_populated(machine, table.va(i), page)]
    freed = np.setdiff1d(present, kept)
    if not len(freed):
        return
    pfns = table.pfns[freed]
    held = np.array([altmap is not None and altmap.holds(pfn) for pfn in pfns.tolist()], dtype=bool)
    for pfn in pfns[held].tolist():
        free_vmemmap_frames(machine, pfn, 1, altmap)
    free_vmemmap_pages(machine, pfns[~held])
    machine.pagetable.clear_leaves(table, freed)


def _vmemmap_populated(machine, vaddr, size):
    """``vmemmap_populated(vaddr, size)``: is any pfn the kernel looks at still ``pfn_valid``? It walks the
    pfns of the struct pages in ``[vaddr, vaddr + size)`` a sub-section apart from the first (a 2 MiB leaf
    or 64 KiB page starts on a sub-section; a 4 KiB page lies inside one), so every present section's
    first pfn in the range is on its walk (the range being removed is already invalid: the engine, like
    ``section_deactivate``, clears its sub-section bits before ``vmemmap_free``)."""
    sparse = machine.sparse
    lo, hi = machine.sparse_geometry.page_to_pfn(vaddr), machine.sparse_geometry.page_to_pfn(vaddr + size)
    for s, e, _ in sparse.sections.items(sparse.section_nr(lo), sparse.section_nr(hi - 1) + 1):
        pfn, last = max(lo, sparse.section_pfn(s)), min(hi, sparse.section_pfn(e))
        while pfn < last:
            if sparse.valid(pfn):
                return True
            else:
                pfn += machine.sparse_geometry.pages_per_subsection
    return False
