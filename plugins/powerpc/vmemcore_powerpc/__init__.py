"""powerpc64 book3s64 for vmemcore: ``arch/powerpc/include/asm/book3s/64/{radix*.h,hash*.h,pgtable.h}``,
``arch/powerpc/include/asm/{sparsemem.h,pgtable.h}``, ``arch/powerpc/mm/init_64.c``,
``arch/powerpc/mm/book3s64/{radix_pgtable.c,hash_utils.c,hugetlbpage.c}``, ``arch/powerpc/Kconfig``.

The MMU (radix or hash) is chosen at boot, the page size at build time. Radix maps the vmemmap in
the Linux page table: ``radix__vmemmap_populate`` (6.6+) takes 2 MiB PMD leaves, from an altmap only
where they fit inside it, and base pages otherwise or when a block cannot be had; ``radix__vmemmap_free``
frees a leaf or page only when no sub-section it serves is still ``pfn_valid``; device-dax compound
pages go through radix's own ``vmemmap_populate_compound_pages``. Page-table pages are whole pages at
boot (``early_alloc_pgtable(PAGE_SIZE)``); after boot the kernel takes PTE and PMD tables as fragments
of a page (256 B and 4 KiB with 64K pages) and PUD tables from a kmem cache, modelled as whole pages
too, from the memmap's node.

Hash (every kernel), and radix before 6.6, use ``init_64.c``'s populate: blocks of
``mmu_vmemmap_psize`` (hash: 16 MiB when the MMU has 16M pages and boot RAM is at least 1 GiB, else
the base page; radix: 2 MiB), each recorded in ``vmemmap_list`` and mapped by a bolted HPTE (hash:
no Linux page table at all, :class:`BoltedVmemmap` is the machine's vmemmap mapping) or a PMD leaf
(radix); a block is freed when no sub-section it describes is ``pfn_valid``. A block comes whole or
not at all: after boot, an order-8 (64K) or order-12 (4K) buddy block, -ENOMEM when memory is
fragmented.
"""

from vmemcore.arch import (
    ArchInfo, BadRequest, Change, Feature, Firmware, Flush, GiB, HugePageSize, InUse, Level, MiB, OutOfMemory, PageTableGeometry,
    PtdumpColumn, PtdumpFormat, SparseGeometry, Support, TeardownPolicy, TiB, Variant, VmemmapMapping,
    format_size, hookimpl,
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
MIN_MEMORY_BLOCK_SIZE = 1 << SECTION_SIZE_BITS  # include/linux/memory.h
# ibm,lmb-size on pseries; QEMU spapr's 256 MiB LMB is the assumed default (UNCONFIRMED from QEMU source)
MEMORY_BLOCK_SIZE = 256 * MiB

# The dated changes the hooks follow (docs/kernel-map.md#powerpc).
BLOCK_SIZE_PROBE = Change(
    "powerpc-memory-block-probe", "the memory block size probed from the device tree (probe_memory_block_size): "
    "without ibm,dynamic-reconfiguration-memory, 1 GiB divided by 4 per memory node (before: "
    "pseries_memory_block_size, the size of the memory node that follows memory@0)", "6.6", commit="4d15721177d5",
    status="CONFIRMED (merged into mainline on 2023-08-31, the 6.6 merge window)")
DAX_DEDUP = Change("powerpc-dax-dedup", "compound devmap vmemmap dedup, generic on every arch", "5.19",
                   commit="4917f55b4ef9", status="CONFIRMED (MM pull for 5.19-rc1)")
DAX_DEDUP_OFF = Change("powerpc-dax-dedup-off", "dedup becomes an arch opt-in (vmemmap_can_optimize) that powerpc "
                       "does not take: the hash crash fix", "6.4", commit="87a7ae75d738",
                       status="CONFIRMED (MM pull for 6.4-rc1)")
RADIX_POPULATE = Change("powerpc-radix-populate", "radix__vmemmap_populate/radix__vmemmap_free (before, radix used "
                        "init_64.c's vmemmap_list blocks)", "6.6", commit="368a0590d954", status="CONFIRMED")
RADIX_DAX_DEDUP = Change("powerpc-radix-dax-dedup", "ARCH_WANT_OPTIMIZE_DAX_VMEMMAP if PPC_RADIX_MMU, radix's own "
                         "vmemmap_populate_compound_pages", "6.6", commit="f2b79c0d7968", status="CONFIRMED")
RADIX_MHP = Change("powerpc-radix-memmap-on-memory", "ARCH_MHP_MEMMAP_ON_MEMORY_ENABLE for radix "
                   "(\"powerpc/book3s64/memhotplug: enable memmap on memory for radix\")", "6.6",
                   status="CONFIRMED (MM pull for 6.6-rc1)")
HASH4K_CONT = Change("powerpc-hash4k-cont-hugepages", "hash-4K HugeTLB pages mapped by runs of 64 PUD / 8 PMD entries "
                     "instead of hugepd directories (\"use contiguous PMD/PUD instead of HUGEPD\")", "6.11",
                     commit="57fb15c32f4f", status="CONFIRMED (in mainline by 2024-07-22, the 6.11 merge window: "
                     "gregkh/tty tty-next's merge of mainline that day lists it)")
VMEMMAP_START_ALIGN = Change("powerpc-vmemmap-start-align", "radix vmemmap start aligned down to PMD_SIZE without an "
                             "altmap, PAGE_SIZE with one", "6.17", commit="f5164797284d",
                             status="CONFIRMED (torvalds/linux master push of 2025-07-30, 6.17 merge window)")


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
            Variant("radix-4K", {"mmu": "radix", "page": "4K"},
                    description="radix MMU, 4 KiB pages, 52-bit VA; vmemmap in 2 MiB PMD leaves (vmemmap_list before 6.6)"),
            Variant("radix-64K", {"mmu": "radix", "page": "64K"},
                    description="radix MMU, 64 KiB pages, 52-bit VA; vmemmap in 2 MiB PMD leaves (vmemmap_list before 6.6)"),
            Variant("hash-4K", {"mmu": "hash", "page": "4K"},
                    description="hash MMU, 4 KiB pages, 46-bit VA; vmemmap bolted in 16 MiB blocks (vmemmap_list), "
                                "no HVO or dax dedup; memmap_on_memory only in the 2019 design"),
            Variant("hash-64K", {"mmu": "hash", "page": "64K"},
                    description="hash MMU, 64 KiB pages, 52-bit VA; vmemmap bolted in 16 MiB blocks (vmemmap_list), "
                                "no HVO or dax dedup; memmap_on_memory only in the 2019 design"),
        ),
        default_variant="radix-64K",
        features=(
            Feature("mmu_16M", True, "the hash MMU offers 16 MiB pages (ibm,segment-page-sizes): the vmemmap is "
                                     "bolted in 16 MiB blocks when boot RAM is at least 1 GiB, else in base pages"),
        ),
        firmware=(
            Firmware("lmb_size", MEMORY_BLOCK_SIZE,
                     "ibm,lmb-size of the ibm,dynamic-reconfiguration-memory node; \"none\": the firmware describes no "
                     "hot-pluggable memory (no such node), the block size then follows the memory nodes"),
        ),
        changes=(DAX_DEDUP, DAX_DEDUP_OFF, RADIX_POPULATE, RADIX_DAX_DEDUP, RADIX_MHP, BLOCK_SIZE_PROBE, HASH4K_CONT,
                 VMEMMAP_START_ALIGN),
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
    cont = (64, 8) if (mmu, page) == ("hash", "4K") and profile.has(HASH4K_CONT) else (1, 1)
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
def vmemcore_memory_block_size(machine):
    """``memory_block_size_bytes()`` on pseries. With an ``ibm,dynamic-reconfiguration-memory`` node,
    its ``ibm,lmb-size`` (the ``lmb_size`` firmware value). Without one, each ``[[memory]]`` range
    standing for a ``memory@`` node: since 4d15721177d5 (6.6) ``update_memory_block_size`` starts at
    1 GiB and, for each node's size, divides by 4 (down to 16 MiB) until the size has no bit at the
    block size (``(mem_size & block_size) == 0``: a bit test, not a multiple test); before it,
    ``pseries_memory_block_size`` took the size of the node at the address where ``memory@0`` ends,
    16 MiB (``MIN_MEMORY_BLOCK_SIZE``) when there is none. ``memory_dev_init`` panics on a size that
    is not a power of two of at least a section: refused here."""
    block = machine.firmware["lmb_size"]
    memory = machine.memory
    if block is None and machine.profile.has(BLOCK_SIZE_PROBE):
        block = 1 * GiB
        for item in memory:
            while block > MIN_MEMORY_BLOCK_SIZE and item.size & block:
                block >>= 2
    elif block is None:
        zero = next((item.size for item in memory if item.start == 0), 0)
        block = next((item.size for item in memory if zero and item.start == zero), MIN_MEMORY_BLOCK_SIZE)
    if block & (block - 1) or block < MIN_MEMORY_BLOCK_SIZE:
        raise BadRequest(f"memory block size {format_size(block)} is not a power of two of at least 16 MiB "
                         "(memory_dev_init panics: \"Memory block size not suitable\")")
    return block


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
    rule was generic on every arch (5.18/5.19 and 6.4/6.5 UNCONFIRMED), but radix then still freed its
    vmemmap through ``vmemmap_list`` only, which the simulation does not pair with the generic
    compound populate: refused as not simulated. Hash never: its vmemmap is bolted into the hash
    table, not mapped by page tables."""
    mmu, _ = _parse(machine.variant)
    profile = machine.profile
    if mmu == "hash":
        return Support(False, "the hash MMU keeps the vmemmap in bolted HPTEs: vmemmap_can_optimize requires radix")
    if profile.has(RADIX_DAX_DEDUP):
        return Support(True)
    if profile.has(DAX_DEDUP) and not profile.has(DAX_DEDUP_OFF):
        # the generic compound populate maps PTEs that init_64.c's vmemmap_free (it frees vmemmap_list
        # blocks only) would never unmap or free; what the kernel then did is not modelled
        return Support(False, "radix before 6.6 frees only vmemmap_list blocks (init_64.c), not the PTEs the generic "
                              "compound populate of 5.19-6.3 maps: not simulated")
    if profile.has(DAX_DEDUP_OFF):
        return Support(False, "powerpc selects ARCH_WANT_OPTIMIZE_DAX_VMEMMAP (radix) only from 6.6")
    return Support(False, "compound devmap vmemmap dedup was merged in 5.19 (5.18/5.19 UNCONFIRMED)")


@hookimpl
def vmemcore_hugepage_sizes(machine):
    """``hugetlbpage_init`` through ``check_and_get_huge_psize``: radix 2 MiB (PMD) and 1 GiB (PUD), hash
    16 MiB and 16 GiB (16G pages come only from firmware reservations). Hash-64K's PMD and PUD entries
    span exactly those; hash-4K maps them with 8 PMD and 64 PUD entries since "use contiguous PMD/PUD
    instead of HUGEPD" (57fb15c32f4f, 6.11), before that from hugepd directories hanging off a PUD (16M)
    or PGD (16G) entry."""
    mmu, page = _parse(machine.variant)
    if mmu == "radix":
        return (HugePageSize(2 * MiB, "pmd"), HugePageSize(1 * GiB, "pud"))
    if page == "64K":
        return (HugePageSize(16 * MiB, "pmd"), HugePageSize(16 * GiB, "pud"))
    if machine.profile.has(HASH4K_CONT):
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
    if not machine.profile.has(RADIX_MHP):
        return Support(False, "powerpc selects ARCH_MHP_MEMMAP_ON_MEMORY_ENABLE (radix) only from 6.6")
    if mmu == "hash":
        return Support(False, "arch_supports_memmap_on_memory is false on the hash MMU")
    pmd = machine.geometry.pmd.entry_span
    if page == "4K" and vmemmap_size % pmd:
        return Support(False, f"with 4K pages the memmap of a block ({format_size(vmemmap_size)}) must be a "
                              f"multiple of PMD_SIZE ({format_size(pmd)})")
    return Support(True)


# ------------------------------------------------------------------------------- vmemmap populate

VMEMMAP_BACKING_SIZE = 24  # struct vmemmap_backing: the list pointer, phys and virt_addr


def _radix_own_populate(machine):
    """``radix__vmemmap_populate`` and ``radix__vmemmap_free`` (368a0590d954, 6.6); before, radix
    shared ``init_64.c``'s ``vmemmap_list`` populate with hash."""
    mmu, _ = _parse(machine.variant)
    return mmu == "radix" and machine.profile.has(RADIX_POPULATE)


def vmemmap_block_size(machine):
    """``1 << mmu_psize_defs[mmu_vmemmap_psize].shift``: the block ``init_64.c`` maps at a time.
    Hash (``htab_init_page_sizes``): 16 MiB when the MMU offers 16M pages and boot RAM is at least
    1 GiB (``memblock_phys_mem_size() >= 0x40000000``), else the base page. Radix before 6.6
    (``radix__early_init_mmu``): 2 MiB, which radix always offers."""
    mmu, _ = _parse(machine.variant)
    if mmu == "radix":
        return 2 * MiB
    boot_ram = sum(r.size for r in machine.config.memory)
    if machine.features.get("mmu_16M", True) and boot_ram >= 1 * GiB:
        return 16 * MiB
    return machine.geometry.page_size


class VmemmapList:
    """``vmemmap_list`` (``arch/powerpc/mm/init_64.c``): one ``struct vmemmap_backing`` (virtual
    address, physical address) per vmemmap block mapped, the only record of the mapping the free path
    has on hash. Entries are handed out of whole pages (``vmemmap_list_alloc``: a page of
    ``PAGE_SIZE / 24`` entries is taken from ``vmemmap_alloc_block`` when the last runs out), and
    freed entries are recycled first (``num_freed``); the pages are never given back.

    Kept per machine (``machine.plugin_state``), journaled; ``snapshot()`` is the entries and the
    pages (which slot of a page an entry sits in is not compared)."""

    def __init__(self, machine):
        self.machine = machine
        self.journal = machine.journal
        self.entries = {}  # block virtual address -> first pfn of its frames
        self.pages = []  # the vmemmap_list pages, in the order they were taken
        self.num_left = 0  # free entries in the newest page
        self.num_freed = 0  # entries on the freed list
        self.per_page = machine.geometry.page_size // VMEMMAP_BACKING_SIZE

    def snapshot(self):
        return tuple(sorted(self.entries.items())), tuple(self.pages)

    def counters(self):
        if not self.pages:
            return {}
        return {"vmemmap_list_entries": len(self.entries), "vmemmap_list_pages": len(self.pages)}

    def pagetable_frames(self):
        return [(pfn, 1) for pfn in self.pages]

    def _save(self):
        state = (self.num_left, self.num_freed, len(self.pages))

        def undo():
            self.num_left, self.num_freed = state[0], state[1]
            del self.pages[state[2]:]

        self.journal.record(undo)

    def capacity(self):
        """Entries ``vmemmap_list_alloc`` can hand out without taking a page."""
        return self.num_left + self.num_freed

    def add(self, addrs, pfns, node):
        """``vmemmap_list_populate`` for each block (``addrs`` mapped by ``pfns``), in order: an entry
        each, from the freed list, else the newest page, else a new page (:class:`OutOfMemory` when
        none can be had: the caller's transaction gives the block back, as the kernel frees it)."""
        from vmemcore.arch import vmemmap_alloc_page  # numpy: loaded on first use

        self._save()
        for addr, pfn in zip(addrs, pfns):
            if self.num_freed:
                self.num_freed -= 1
            else:
                if not self.num_left:
                    page = vmemmap_alloc_page(self.machine, node)
                    if page is None:
                        raise OutOfMemory(f"no page for vmemmap_list entries (node {node}): vmemmap_list_alloc fails, "
                                          f"the block for vmemmap address {addr:#x} is freed (-ENOMEM)")
                    self.pages.append(page)
                    self.num_left = self.per_page
                self.num_left -= 1
            self.entries[addr] = pfn
            self.journal.record(lambda addr=addr: self.entries.pop(addr))

    def remove(self, addr):
        """``vmemmap_list_free``: unlink the entry of the block at ``addr`` onto the freed list;
        its first pfn (None: no such entry)."""
        pfn = self.entries.pop(addr, None)
        if pfn is not None:
            self._save()
            self.num_freed += 1
            self.journal.record(lambda: self.entries.__setitem__(addr, pfn))
        return pfn


def vmemmap_list(machine) -> VmemmapList:
    return machine.plugin_state("vmemmap_list", VmemmapList)


class BoltedVmemmap(VmemmapMapping):
    """The hash MMU's vmemmap: no Linux page table; each block is a bolted HPTE
    (``hash__vmemmap_create_mapping`` → ``htab_bolt_mapping(start, start + page_size, phys, PAGE_KERNEL,
    mmu_vmemmap_psize, mmu_kernel_ssize)``), and the blocks are exactly ``vmemmap_list``'s entries, so
    translation reads them. The hash page table itself (sized from RAM at boot) is not modelled."""

    label = "bolted"

    def __init__(self, machine):
        self.machine = machine
        self.page_shift = machine.geometry.page_shift

    def translate(self, vaddr):
        size = vmemmap_block_size(self.machine)
        block = vaddr - (vaddr - self.machine.sparse_geometry.vmemmap_base) % size
        pfn = vmemmap_list(self.machine).entries.get(block)
        return None if pfn is None else (pfn << self.page_shift) + vaddr - block

    def leaf_extents(self, start, end):
        import numpy as np  # loaded when the hash mapping is first read

        size = vmemmap_block_size(self.machine)
        base = start - (start - self.machine.sparse_geometry.vmemmap_base) % size
        entries = vmemmap_list(self.machine).entries
        for addr in sorted(a for a in entries if base <= a < end):
            yield addr, size, np.array([entries[addr]], dtype=np.int64)

    def leaf_spans(self):
        entries = vmemmap_list(self.machine).entries
        return {vmemmap_block_size(self.machine): len(entries)} if entries else {}

    def leaf_frames(self):
        import numpy as np  # loaded when the hash mapping is first read

        entries = vmemmap_list(self.machine).entries
        if not entries:
            return []
        pfns = np.fromiter(entries.values(), dtype=np.int64, count=len(entries))
        return [(pfns, vmemmap_block_size(self.machine) >> self.page_shift)]


@hookimpl
def vmemcore_vmemmap_mapping(machine):
    """Hash: the bolted blocks of :class:`BoltedVmemmap`; radix: the Linux page table."""
    mmu, _ = _parse(machine.variant)
    return BoltedVmemmap(machine) if mmu == "hash" else None


def _list_populate(machine, start, end, node, altmap):
    """``vmemmap_populate`` of ``init_64.c`` (hash always; radix before 6.6): from ``start`` aligned
    down to the block size, each block not yet populated gets its frames, from the altmap when it
    does not cross the altmap's boundary (a failed altmap block falls back to RAM), else
    ``vmemmap_alloc_block_buf`` with no smaller fallback (-ENOMEM), then its ``vmemmap_list`` entry,
    then its mapping: a bolted HPTE (hash) or a leaf of the block's size (radix,
    ``radix__vmemmap_create_mapping``). "Not yet populated" is ``vmemmap_populated``: a sub-section
    the block describes is ``pfn_valid``; here, the block has an entry, which is the same answer
    (an entry exists exactly while a valid sub-section needs it, and a boot or hot-added section's
    own sub-sections are not valid before its populate)."""
    from vmemcore.arch import vmemmap_alloc_block_buf, vmemmap_alloc_blocks, vmemmap_map_leaf  # numpy: loaded on first use

    size = vmemmap_block_size(machine)
    nr_pages = size >> machine.geometry.page_shift
    base = machine.sparse_geometry.vmemmap_base
    blocks = vmemmap_list(machine)
    mmu, _ = _parse(machine.variant)
    todo = [addr for addr in range(start - (start - base) % size, end, size) if addr not in blocks.entries]
    while todo:
        if altmap is not None:
            pfn = None
            if not _altmap_cross_boundary(machine, altmap, todo[0], size):
                pfn = vmemmap_alloc_block_buf(machine, nr_pages, node, altmap)
            if pfn is None:
                pfn = vmemmap_alloc_block_buf(machine, nr_pages, node)
            pfns = [] if pfn is None else [pfn]
        else:  # blocks that fit the list's free entries in one batch; the block before a new page alone
            count = min(len(todo), blocks.capacity() or 1)
            pfns = vmemmap_alloc_blocks(machine, nr_pages, count, node).tolist()
        addrs, todo = todo[:len(pfns)], todo[len(pfns):]
        blocks.add(addrs, pfns, node)
        if mmu == "radix":
            for addr, pfn in zip(addrs, pfns):
                vmemmap_map_leaf(machine, addr, size, pfn, node, function="radix__vmemmap_create_mapping")
        if not pfns:
            where = f"node {node}" + (", altmap then RAM" if altmap is not None else "")
            raise OutOfMemory(f"no {format_size(size)} block for the vmemmap at {todo[0]:#x} ({where}): "
                              "vmemmap_alloc_block_buf has no fallback to smaller pages (-ENOMEM)")


def _list_free(machine, start, end, altmap):
    """``vmemmap_free`` of ``init_64.c``: for each block of the range, skipped while
    ``vmemmap_populated`` (a sub-section it describes is still ``pfn_valid``), else its
    ``vmemmap_list`` entry is freed, its frames go back to the altmap that holds them, else (boot
    frames, PageReserved) a page at a time to the buddy allocator, else as one ``free_pages``, and
    its mapping is removed: ``htab_remove_mapping`` (hash) or ``radix__vmemmap_remove_mapping``."""
    from vmemcore.arch import free_vmemmap_frames, vmemmap_populated, vmemmap_unmap_leaf  # numpy: loaded on first use

    size = vmemmap_block_size(machine)
    nr_pages = size >> machine.geometry.page_shift
    base = machine.sparse_geometry.vmemmap_base
    blocks = vmemmap_list(machine)
    mmu, _ = _parse(machine.variant)
    for addr in range(start - (start - base) % size, end, size):
        if vmemmap_populated(machine, addr, size):
            continue
        pfn = blocks.remove(addr)
        if pfn is None:
            continue
        held = altmap is not None and altmap.holds(pfn)
        free_vmemmap_frames(machine, pfn, nr_pages, altmap if held else None)
        if mmu == "radix":
            vmemmap_unmap_leaf(machine, addr, function="radix__vmemmap_remove_mapping")


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
    6.15/6.16 rule (9cf7e13fecba: base pages for every PMD-unaligned start) belongs to no profile.
    Hash, and radix before 6.6: ``init_64.c``'s ``vmemmap_list`` populate (:func:`_list_populate`)."""
    from vmemcore.arch import vmemmap_populate_hugepages  # numpy: loaded on first use

    if not _radix_own_populate(machine):
        _list_populate(machine, start, end, node, altmap)
        return True
    page = machine.geometry.page_size
    if machine.profile.has(VMEMMAP_START_ALIGN):
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
    entries are none (the PGD stays); one ``radix__flush_tlb_kernel_range(start, end)`` ends it.
    Hash, and radix before 6.6: ``init_64.c``'s ``vmemmap_free`` (:func:`_list_free`)."""
    from vmemcore.arch import vmemmap_teardown  # numpy: loaded on first use

    if not _radix_own_populate(machine):
        _list_free(machine, start, end, altmap)
        return True
    vmemmap_teardown(machine, start, end, altmap, TeardownPolicy(InUse.PFN_VALID, flush_end=Flush.RANGE))
    return True


#: ``arch/powerpc/mm/ptdump/ptdump.c`` with ``book3s64.c``'s ``flag_array`` (radix): ``dump_addr``
#: prints ``0x%016lx-0x%016lx `` (the last byte, not one past), the physical address (`` 0x%016lx ``,
#: or ``[0x%016lx]`` with one page's size for a run of entries that all map one page), ``%9lu%c``,
#: then ``  %s`` per flag: user, r, w, X, pte, valid, present, hpte, dirty, accessed,
#: non-idempotent, tolerant (busy, combo, 4K_pfn and special print nothing when clear). No level
#: name; empty runs print no line; a physical address that does not follow on ends a run. The
#: vmemmap is ``PAGE_KERNEL`` (privileged, read, write, dirty, accessed), read-only ``PAGE_KERNEL_RO``
#: (no write, no dirty).
_PTDUMP_COLUMNS = (
    PtdumpColumn("      "),  # user (privileged)
    PtdumpColumn("  r"),
    PtdumpColumn("   ", "  w", "rdonly"),
    PtdumpColumn("     "),  # X
    PtdumpColumn("  pte"),
    PtdumpColumn("  valid"),
    PtdumpColumn("  present"),
    PtdumpColumn("      "),  # hpte
    PtdumpColumn("       ", "  dirty", "rdonly"),
    PtdumpColumn("  accessed"),
    PtdumpColumn("  " + " " * 14),  # non-idempotent
    PtdumpColumn("  " + " " * 8),  # tolerant
)


@hookimpl
def vmemcore_ptdump_format(machine):
    return PtdumpFormat(
        line="0x{start:016x}-0x{last:016x} {phys}{size}{attrs}",
        columns=_PTDUMP_COLUMNS,
        hole=None,
        markers=("vmemmap start", None),
        phys=" 0x{pa:016x} ",
        shared_phys="[0x{pa:016x}]",
        always_phys=True,
        shared_size=True,
        source="arch/powerpc/mm/ptdump/ptdump.c, arch/powerpc/mm/ptdump/book3s64.c",
    )


@hookimpl
def vmemcore_vmemmap_populate_compound_pages(machine, start_pfn, start, end, node, pgmap):
    """Radix defines its own ``vmemmap_populate_compound_pages`` (``radix_pgtable.c``, f2b79c0d7968,
    6.6): each compound page's head page and first tail page get frames, every later tail page maps
    the first tail page's frame, found by address (so a 64K page holding the memmap of four sections
    needs no section-by-section reuse), and a page under an existing PMD leaf is left to it. Before
    6.6 the generic populate ran (hash never dedups)."""
    from vmemcore.arch import vmemmap_populate_compound_by_address  # numpy: loaded on first use

    mmu, _ = _parse(machine.variant)
    if mmu != "radix" or not machine.profile.has(RADIX_DAX_DEDUP):
        return None
    vmemmap_populate_compound_by_address(machine, start_pfn, start, end, node, pgmap)
    return True
