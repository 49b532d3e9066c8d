"""HugeTLB Vmemmap Optimization: remap a HugeTLB folio's tail vmemmap onto one page and free the rest.

Mirrors ``mm/hugetlb_vmemmap.c`` (as of v6.12, the default profile): the remap walk (``vmemmap_remap_range`` with
``vmemmap_pmd_entry``/``vmemmap_pte_entry``), ``vmemmap_split_pmd``, ``vmemmap_remap_pte``,
``vmemmap_restore_pte``, ``vmemmap_remap_free`` (new head page, rollback walk),
``vmemmap_remap_alloc``/``alloc_vmemmap_page_list``, ``free_vmemmap_page``, the single-folio and
batched ``hugetlb_vmemmap_optimize_folio(s)`` / ``hugetlb_vmemmap_restore_folio(s)``, the
``HPG_vmemmap_optimized`` flag (kept in the pool's folio flags), and 6.15+'s boot-time gigantic pages built
optimized (``hugetlb_vmemmap_init_early``, ``hugetlb_vmemmap_optimize_bootmem_folios``). The kernel
profile picks the variant: the v17 design's two reserved pages (5.14), the kept head page (6.1), the
new head page with fallback (6.2+), batching (6.7+), and 7.1's shared read-only tail page.

A failed optimization is not an error: as in the kernel the folio simply stays unoptimized, the
walk's rollback having restored its PTEs (split PMDs stay split). A failed restore leaves the folio
optimized, and the caller keeps it in the pool.
"""

import attrs
import numpy as np

from .errors import BadRequest, OutOfMemory
from .hugetlb_pool import OPTIMIZED, Folios
from .live_entries import LiveWriter, RemapStrategy
from .pagetable import RDONLY, table_index_range
from .physmem import Use, block_runs
from .profiles import HvoHeadPage, HvoTailPage
from .stats import NR_MEMMAP_BOOT_PAGES, NR_MEMMAP_PAGES
from .populate import FramesAhead, vmemmap_populate_hvo
from .structpage import CopyOf, SharedTail, at_home

SPLIT_NO_TLB_FLUSH = 1
REMAP_NO_TLB_FLUSH = 2

ENOMEM = "ENOMEM"
ENOTSUPP = "ENOTSUPP"
UNTRIED = object()  # no new head page has been asked for yet


@attrs.define
class Walk:
    """``struct vmemmap_remap_walk``. ``pages`` is the ``vmemmap_pages`` list: its front (where
    ``list_add`` puts a page and ``list_first_entry`` takes one) is the end of the Python list."""

    remap: object  # None (split only), "free" (vmemmap_remap_pte) or "restore" (vmemmap_restore_pte)
    reuse_addr: int = 0
    tail_page: object = None  # the frame tail PTEs map (walk->reuse_page); None: the first PTE tells
    head_page: object = None  # the frame mapped read-write at reuse_addr (a new head page)
    head_pos: int = -1  # where head_page sits on the list
    pages: list = attrs.Factory(list)
    flags: int = 0
    nr_walked: int = 0


def optimizable_pages(machine, order) -> int:
    """``hugetlb_vmemmap_optimizable_size / PAGE_SIZE``: vmemmap pages HVO can free per folio."""
    sparse = machine.sparse_geometry
    if sparse.struct_page_size & (sparse.struct_page_size - 1):
        return 0
    vmemmap = (1 << order) * sparse.struct_page_size
    return max(vmemmap - machine.profile.hvo_reserve_pages * sparse.page_size, 0) // sparse.page_size


class Hvo:
    """HVO on one machine: the walks, the per-folio and batched entry points, 7.1's tail pages."""

    def __init__(self, machine, remap=None):
        self.machine = machine
        self.remap = remap  # the what-if RemapStrategy asked for (None: the kernel's)
        self.writer = LiveWriter(machine, remap or RemapStrategy.PLAIN)
        if remap is RemapStrategy.BBML2:
            if not machine.live_entry_rule.bbml2:
                raise BadRequest(f"{machine.arch.name} has no FEAT_BBM level 2: the bbml2 remap strategy is arm64's")
            if machine.live_entries is not None:
                machine.live_entries.bbml2 = True
        self.page = machine.geometry.page_size
        self.tail_pages = {}  # (node, order) -> frame of 7.1's shared tail page (zone->vmemmap_tails)
        self._home_copies = {}  # where a restored copy sits in its folio -> does it read like home?
        self.batch_runs = True  # remap runs of folios a page table at a time (False: folio by folio)
        self._optimizable = {}  # order -> vmemmap pages HVO frees per folio
        self.preinit = []  # boot folios whose vmemmap sparse_init builds optimized (6.15+)

    def snapshot(self):
        return dict(self.tail_pages)

    # -- the optimized flag (HPG_vmemmap_optimized, kept by the pool) -------------------------------
    def is_optimized(self, head) -> bool:
        return any(h.folios.has(head, OPTIMIZED) for h in self.machine.hugetlb.hstates.values())

    def _optimized(self, folios):
        """Whether each of ``folios`` (:class:`Folios`) is optimized: a bool array."""
        if not len(folios):
            return np.zeros(0, dtype=bool)
        return self.machine.hugetlb.pool(folios.order).flags(folios.heads) & OPTIMIZED != 0

    def should_optimize(self, folios) -> Folios:
        """The folios ``vmemmap_should_optimize_folio`` passes (of ``folios``, :class:`Folios`):
        HVO on, the folio not optimized yet, and something to free."""
        if not self.machine.hugetlb.optimize_vmemmap or not self.optimizable(folios.order):
            return folios[:0]
        optimized = self._optimized(folios)
        return folios[~optimized] if optimized.any() else folios

    def optimizable(self, order) -> int:
        """:func:`optimizable_pages` of ``order`` on this machine (the same for every folio)."""
        pages = self._optimizable.get(order)
        if pages is None:
            pages = self._optimizable[order] = optimizable_pages(self.machine, order)
        return pages

    def set_optimized(self, folio, value):
        """Set or clear the folio's vmemmap-optimized flag, journaled."""
        self.machine.hugetlb.pool(folio.order).set_flags([folio.head], OPTIMIZED, value)

    def set_optimized_many(self, order, heads, value=True):
        """Set (or clear) the flag of the folios ``heads`` of ``order``, journaled once."""
        self.machine.hugetlb.pool(order).set_flags(heads, OPTIMIZED, value)

    # -- boot-time gigantic pages built optimized (6.15+) ------------------------------------------
    def plan_preinit(self, folios):
        """6.15+ (SPARSEMEM_VMEMMAP_PREINIT): which boot folios get their vmemmap built optimized at
        ``sparse_init`` (``vmemmap_should_optimize_bootmem_page``): HVO on at boot, the arch opts in,
        and the folio's start and size are multiples of a section and of the memory one PMD of
        vmemmap describes (128 MiB on x86_64), so whole sections hold nothing else."""
        m = self.machine
        if not m.hugetlb.optimize_vmemmap or not m.hooks.hugetlb_vmemmap_preinit(m):
            return
        pmd_pfns = m.geometry.pmd.entry_span // m.sparse_geometry.struct_page_size
        unit = max(m.sparse_geometry.pages_per_section, pmd_pfns)
        for folio in folios:
            if optimizable_pages(m, folio.order) and folio.head % unit == 0 and (1 << folio.order) % unit == 0:
                self.preinit.append(folio)

    def vmemmap_init_early(self, node):
        """``hugetlb_vmemmap_init_early``: populate the planned folios of ``node`` HVO-style
        (``vmemmap_populate_hvo``), one boot memmap page each; returns the sections they fill."""
        m = self.machine
        sections = []
        for folio in (f for f in self.preinit if f.node == node):
            start = m.pfn_to_page(folio.head)
            end = start + (m.sparse_geometry.struct_page_size << folio.order)
            tail = None
            if m.profile.hvo_tail_page is HvoTailPage.SHARED:
                tail = self.shared_tail_page(node, folio.order)
                if tail is None:
                    raise OutOfMemory("no memory for the shared vmemmap tail page at boot")
            vmemmap_populate_hvo(m, start, end, node, m.geometry.page_size, tail)
            m.stats.add(NR_MEMMAP_BOOT_PAGES, 1)
            first = m.sparse.section_nr(folio.head)
            sections.append((first, first + ((1 << folio.order) >> m.sparse_geometry.pfn_section_shift)))
        return sorted(sections)

    def optimize_bootmem_folios(self, folios):
        """``hugetlb_vmemmap_optimize_bootmem_folios``: the boot folios whose vmemmap ``sparse_init``
        built optimized are marked so and their mirrored tail PTEs made read-only
        (``vmemmap_wrprotect_hvo``); returns them."""
        m = self.machine
        preinit = [f for f in folios if f in self.preinit]
        for folio in preinit:
            start = m.pfn_to_page(folio.head)
            if m.profile.hvo_tail_page is not HvoTailPage.SHARED:
                self.alias_head_page(start)
            self.set_optimized(folio, True)
            self.wrprotect(start + m.geometry.page_size, start + (m.sparse_geometry.struct_page_size << folio.order))
        return preinit


    # -- the walk -------------------------------------------------------------------------------
    def remap_range(self, start, end, walk):
        """``vmemmap_remap_range``: walk ``[start, end)``; returns None, ENOMEM or ENOTSUPP."""
        m = self.machine
        pt = m.pagetable
        depth = m.geometry.pmd_depth
        addr = start
        while addr < end:
            table = pt.walk(addr, depth)
            i = table.index(addr)
            nxt = min(table.va(i + 1), end)
            error = self._pmd_entry(table, i, addr, walk)
            if error:
                return error
            if walk.remap is not None:
                self._pte_range(table.children[i], addr, nxt, walk)
            addr = nxt
        if walk.remap is not None and not walk.flags & REMAP_NO_TLB_FLUSH:
            m.flush_tlb_kernel_range(start, end)
        return None

    def _pmd_entry(self, table, i, addr, walk):
        """``vmemmap_pmd_entry``: the self-hosted check, then split a leaf PMD."""
        m = self.machine
        leaf = table.is_leaf(i)
        if walk.nr_walked == 0:
            frame = m.pagetable.translate(addr) >> m.geometry.page_shift
            owner = m.physmem.owner(frame)
            if owner is not None and owner.self_hosted:
                return ENOTSUPP
        if not leaf:
            return None
        return self.split_pmd(table, i, addr, walk)

    def split_pmd(self, table, i, addr, walk):
        """``vmemmap_split_pmd``: a PTE table mapping the same 2 MiB, installed in place of the leaf."""
        m = self.machine
        level = m.geometry.levels[table.depth + 1]
        node = m.physmem.node_of(int(table.pfns[i]))
        pfn = m.table_frames.alloc(level, node)  # pte_alloc_one_kernel
        if pfn is None:
            return ENOMEM
        self.writer.split_leaf(table, i, pfn, "vmemmap_split_pmd")
        m.stats.add("hvo_pmd_splits", 1)
        if not walk.flags & SPLIT_NO_TLB_FLUSH:
            start = table.va(i)
            m.flush_tlb_kernel_range(start, start + table.level.entry_span)
        return None

    def _pte_range(self, table, addr, end, walk):
        """``vmemmap_pte_entry`` over the PTEs of one table, a run at a time."""
        lo, hi = table_index_range(table, addr, end)
        if walk.tail_page is None:  # the reuse page is found first in the walk
            walk.tail_page = int(table.pfns[lo])
            self._alias(walk.tail_page, table.va(lo))
            walk.nr_walked += 1
            lo += 1
        if lo < hi:
            if walk.remap == "free":
                self._remap_ptes(table, lo, hi, walk)
            else:
                self._restore_ptes(table, lo, hi, walk)
            walk.nr_walked += hi - lo

    def alias_head_page(self, vaddr):
        """The frame mapped at ``vaddr`` (a head vmemmap page) is mapped elsewhere too."""
        self._alias(self.machine.pagetable.translate(vaddr) >> self.machine.geometry.page_shift, vaddr)

    def wrprotect(self, start, end):
        """``vmemmap_wrprotect_hvo``: the PTEs of ``[start, end)`` become read-only."""
        pt = self.machine.pagetable
        for table, lo, hi in pt.tables_in(start, end):
            if table.level is self.machine.geometry.levels[-1]:
                pt.set_flags(table, slice(lo, hi), set_bits=RDONLY, function="vmemmap_wrprotect_hvo")

    def _alias(self, frame, vaddr):
        """``frame``, mapped at ``vaddr``, is about to be mapped elsewhere too: materialise it."""
        structpages = self.machine.structpages
        if frame not in structpages.contents:
            structpages.describe(frame, structpages.descriptor_at(vaddr))

    def _remap_ptes(self, table, lo, hi, walk):
        """``vmemmap_remap_pte``: old frames onto the list; PTEs to the tail page read-only, the
        reuse address to the new head page read-write (taking it off the list)."""
        walk.pages.extend(table.pfns[lo:hi].tolist())
        pfns, flags = walk.tail_page, RDONLY
        if table.va(lo) <= walk.reuse_addr < table.va(hi):
            del walk.pages[walk.head_pos]
            head = table.index(walk.reuse_addr) - lo
            pfns, flags = np.full(hi - lo, pfns, dtype=np.int64), np.full(hi - lo, flags, dtype=np.uint8)
            pfns[head], flags[head] = walk.head_page, 0
        self.writer.set_leaves(table, slice(lo, hi), pfns, flags, "vmemmap_remap_pte")

    def _restore_ptes(self, table, lo, hi, walk):
        """``vmemmap_restore_pte``: each PTE that maps the tail page gets a fresh page from the
        list holding a copy of the tail page (with ``reset_struct_pages``), read-write."""
        if np.any(table.pfns[lo:hi] != walk.tail_page):
            raise AssertionError(f"restore walk found a PTE not mapping the reuse page {walk.tail_page:#x}")
        frames = walk.pages[:-(hi - lo) - 1:-1]
        del walk.pages[-(hi - lo):]
        self._fill_copies(frames, walk.tail_page, table.va(lo))
        self.writer.set_leaves(table, slice(lo, hi), np.array(frames, dtype=np.int64), 0, "vmemmap_restore_pte")

    def _fill_copies(self, frames, source_frame, vaddr):
        """Copy the page ``source_frame`` into ``frames`` (to be mapped from ``vaddr`` on) and reset
        their first struct pages; copies whose struct pages then equal what the kernel keeps at
        that address need no descriptor of their own."""
        m = self.machine
        structpages = m.structpages
        target = m.sparse_geometry.page_to_pfn(vaddr) // structpages.per_page * structpages.per_page
        copy = self._restored_copy(structpages.contents[source_frame], target, m.hugetlb.folio_of(target))
        if copy is not None:
            structpages.describe_many(frames, [copy] * len(frames))

    def _restored_copy(self, source, target, folio):
        """What a copy of a page holding ``source``, reset (``reset_struct_pages``) and mapped as
        the vmemmap page of the pfns from ``target`` (in ``folio``, or None), holds: its
        descriptor, or None when it reads exactly like the struct pages the kernel keeps there."""
        m = self.machine
        structpages = m.structpages
        key = None
        if folio is not None and not getattr(source, "overrides", ()):
            # the outcome depends only on where source and target sit in the folio
            first = getattr(source, "first_pfn", None)
            key = (type(source), None if first is None else first - folio.head,
                   min(target - folio.head, structpages.per_page), folio.order,
                   m.hugetlb.pool(folio.order).has(folio.head, OPTIMIZED))
        same = self._home_copies.get(key)
        copy = None
        if same is None:
            copy = structpages.reset_struct_pages(source, m.profile.nr_reset_struct_page)
            same = structpages.equals_home(copy, target)
            if key is not None:
                self._home_copies[key] = same
        if same:
            return None
        return copy or structpages.reset_struct_pages(source, m.profile.nr_reset_struct_page)

    # -- free and allocate vmemmap pages --------------------------------------------------------
    def free_page_list(self, pages):
        """``free_vmemmap_page_list``: boot frames lower the boot counter, buddy frames the other.
        ``pages`` holds frames and arrays of frames (a group's, appended whole)."""
        if not pages:
            return
        m = self.machine
        chunks = [p for p in pages if isinstance(p, np.ndarray)]
        singles = [p for p in pages if not isinstance(p, np.ndarray)]
        if chunks:
            frames = np.concatenate(chunks + [np.array(singles, dtype=np.int64)])
            pages.clear()  # the chunks are copied: let them go before the sort
            frames.sort(kind="stable")  # each chunk ascends, mostly: a merge of runs costs little
            starts, ends = block_runs(frames, 1)
        else:  # a folio's few pages: numpy's per-call cost would dominate
            frames = sorted(singles)
            starts, ends = [frames[0]], []
            for before, frame in zip(frames, frames[1:]):
                if frame != before + 1:
                    ends.append(before + 1)
                    starts.append(frame)
            ends.append(frames[-1] + 1)
        m.structpages.forget_many(frames, ordered=True)
        for start, end in zip(starts, ends):
            for s, e, owner in m.physmem.frames.items(start, end):
                m.stats.add(NR_MEMMAP_BOOT_PAGES if owner.reserved else NR_MEMMAP_PAGES, -(e - s))
        m.physmem.release_many([(start, end - start) for start, end in zip(starts, ends)])
        m.stats.add("hvo_vmemmap_pages_freed", len(frames))
        pages.clear()

    def _alloc_page(self, node):
        """A new head page (or 7.1's shared tail page): on ``node`` alone before 6.7 (__GFP_THISNODE)."""
        m = self.machine
        return m.physmem.alloc(1, node, Use.MEMMAP, exact_nid=not m.profile.hvo_node_fallback)

    def alloc_page_list(self, count, node):
        """``alloc_vmemmap_page_list``: all ``count`` pages (in allocation order) or None."""
        physmem = self.machine.physmem
        pages = physmem.alloc_pages(count, node, Use.MEMMAP, exact_nid=not self.machine.profile.hvo_node_fallback)
        if len(pages) < count:
            for frame in pages:
                physmem.release(frame, 1)
            return None
        self.machine.stats.add(NR_MEMMAP_PAGES, count)
        self.machine.stats.add("hvo_vmemmap_pages_allocated", count)
        return pages

    def shared_tail_page(self, node, order):
        """7.1 ``vmemmap_get_tail``: one read-only page of tail struct pages per (zone, order),
        allocated on first use, never freed, not counted in the memmap counters."""
        key = (node, order)
        frame = self.tail_pages.get(key)
        if frame is None:
            frame = self._alloc_page(node)
            if frame is None:
                return None
            self.machine.structpages.describe(frame, SharedTail(order))
            self.tail_pages[key] = frame
            journal = self.machine.journal
            if journal.active:
                journal.record(lambda: self.tail_pages.pop(key))
        return frame

    # -- one folio ------------------------------------------------------------------------------
    def _range(self, folio):
        m = self.machine
        start = m.pfn_to_page(folio.head)
        return start, start + (1 << folio.order) * m.sparse_geometry.struct_page_size

    def split_folio(self, folio):
        """``hugetlb_vmemmap_split_folio``: split-only walk of the folio's vmemmap."""
        start, end = self._range(folio)
        reuse = start + (self.machine.profile.hvo_reserve_pages - 1) * self.page
        return self.remap_range(reuse, end, Walk(None, flags=SPLIT_NO_TLB_FLUSH))

    def optimize_folio(self, folio, pages, flags, head=UNTRIED):
        """``__hugetlb_vmemmap_optimize_folio``: None on success, else the error (the folio is then
        left unoptimized). Freed frames go onto ``pages`` for the caller to free. ``head`` is the
        outcome of a new-head allocation already attempted for this folio (None: it failed)."""
        m = self.machine
        profile = m.profile
        start, end = self._range(folio)
        node = m.physmem.node_of(folio.head)
        walk = Walk("free", flags=flags, pages=pages)
        if profile.hvo_tail_page is HvoTailPage.SHARED:
            walk.tail_page = self.shared_tail_page(node, folio.order)
            if walk.tail_page is None:
                return ENOMEM
        self.set_optimized(folio, True)  # set first, so the new head page's copy carries it
        walk.reuse_addr = start + (profile.hvo_reserve_pages - 1) * self.page
        if profile.hvo_head_page is not HvoHeadPage.KEEP:
            if head is UNTRIED:
                head = self._alloc_page(node)
            if head is None and profile.hvo_head_page is HvoHeadPage.ALWAYS:
                self.set_optimized(folio, False)
                return ENOMEM
            if head is not None:
                m.structpages.describe(head, m.structpages.copy_page(walk.reuse_addr))
                walk.head_pos = len(pages)
                pages.append(head)
                m.stats.add(NR_MEMMAP_PAGES, 1)
                walk.head_page = head
                if walk.tail_page is None:
                    walk.tail_page = head
        error = self.remap_range(walk.reuse_addr, end, walk)
        if error and walk.nr_walked:
            self._rollback(walk)
        if error:
            self.set_optimized(folio, False)
        return error

    def _rollback(self, failed):
        """The second walk of ``vmemmap_remap_free``: restore what the failed walk remapped."""
        start = failed.reuse_addr
        walk = Walk("restore", reuse_addr=start, pages=failed.pages)
        if self.machine.profile.hvo_tail_page is HvoTailPage.SHARED:
            walk.tail_page = failed.tail_page
            start += self.page  # 7.1 restores only the PTEs mapping the shared tail page
        self.remap_range(start, failed.reuse_addr + failed.nr_walked * self.page, walk)

    def restore_folio(self, folio, flags):
        """``__hugetlb_vmemmap_restore_folio``: None on success, else ENOMEM (folio unchanged)."""
        m = self.machine
        if not m.hugetlb.pool(folio.order).has(folio.head, OPTIMIZED):
            return None
        start, end = self._range(folio)
        reserve = m.profile.hvo_reserve_pages * self.page
        pages = self.alloc_page_list((end - start - reserve) // self.page, m.physmem.node_of(folio.head))
        if pages is None:
            return ENOMEM
        if not m.profile.hvo_batched:  # list_add_tail until 91f386bf0772 (6.7): the first page allocated maps first
            pages.reverse()
        walk = Walk("restore", flags=flags, pages=pages, reuse_addr=start + reserve - self.page)
        walk_start = walk.reuse_addr
        if m.profile.hvo_tail_page is HvoTailPage.SHARED:
            walk.tail_page = self.tail_pages[(m.physmem.node_of(folio.head), folio.order)]
            walk_start += self.page
        self.remap_range(walk_start, end, walk)
        structpages = m.structpages
        for vaddr in range(start, start + reserve, self.page):  # the pages kept: mapped at home alone again
            frame = m.vmemmap.translate(vaddr) >> m.geometry.page_shift
            if structpages.reads_like_home(structpages.contents.get(frame), vaddr):
                structpages.describe(frame, None)
        self.set_optimized(folio, False)
        return None

    # -- entry points ---------------------------------------------------------------------------
    def optimize(self, folios):
        """Optimize ``folios`` as the profile's kernel does: batched with one TLB flush (6.7+,
        ``hugetlb_vmemmap_optimize_folios``) or one at a time (``hugetlb_vmemmap_optimize_folio``).
        Returns {head: error} for the folios left unoptimized."""
        m = self.machine
        failed = {}
        if not m.profile.hvo_batched:
            on = m.hugetlb.optimize_vmemmap
            for folio in folios:
                if not on or not self.optimizable(folio.order) or m.hugetlb.pool(folio.order).has(folio.head, OPTIMIZED):
                    continue  # vmemmap_should_optimize_folio says no
                pages = []
                error = self.optimize_folio(folio, pages, 0)
                self.free_page_list(pages)
                if error:
                    failed[folio.head] = error
            return failed
        todo = self.should_optimize(Folios.of(folios))
        self._split_pass(todo)
        m.flush_tlb_all()
        pages = []
        described = []  # the groups' new head pages, described together (see _optimize_group)
        runs = self._runs(todo)
        ahead, ahead_end = None, 0  # new head pages drawn for the groups up to run ahead_end
        try:
            for r, (run, groupable) in enumerate(runs):
                if r >= ahead_end:
                    ahead = _used_up(ahead)
                k = 0
                while k < len(run):
                    folio, head = run[k], UNTRIED
                    if groupable and self._groups_remap(folio):
                        if ahead is None:
                            ahead_end = self._stretch(runs, r, self._groups_remap)
                            count = len(run) - k + sum(len(later) for later, _ in runs[r + 1:ahead_end])
                            ahead = FramesAhead(m.physmem.alloc_sequence([(Use.MEMMAP, count)], folio.node))
                        k += self._optimize_group(run[k:], pages, ahead, described)
                        if k == len(run):
                            break
                        folio, head, ahead = run[k], None, _used_up(ahead)  # its new head page could not be had
                    k += 1
                    self._describe_heads(described)
                    error = self.optimize_folio(folio, pages, REMAP_NO_TLB_FLUSH, head)
                    if error == ENOMEM and pages:  # free what is pending and try once more
                        m.flush_tlb_all()
                        self.free_page_list(pages)
                        error = self.optimize_folio(folio, pages, REMAP_NO_TLB_FLUSH)
                    if error:
                        failed[folio.head] = error
        finally:
            self._describe_heads(described)
        _used_up(ahead)
        m.flush_tlb_all()
        self.free_page_list(pages)
        return failed

    def restore(self, folios):
        """``hugetlb_vmemmap_restore_folios`` (or one at a time before 6.7): restore in order and
        stop at the first failure. Returns (folios with a full vmemmap, the rest, error), the two
        as :class:`Folios`."""
        m = self.machine
        folios = Folios.of(folios)
        batched = m.profile.hvo_batched
        restored, error = 0, None
        runs = self._runs(folios) if batched else [(folios, False)]
        ahead, ahead_end = None, 0  # vmemmap pages drawn for the groups up to run ahead_end
        optimized = self._optimized(folios)  # a restore changes only its own
        starts = np.cumsum([0] + [len(run) for run, _ in runs]).tolist()  # where each run starts in folios
        per_folio = self.optimizable(folios.order)
        for r, (run, groupable) in enumerate(runs):
            if r >= ahead_end:
                ahead = _used_up(ahead)
            flags = optimized[starts[r]:starts[r + 1]]
            k = 0
            while k < len(run):
                if not flags[k]:
                    k += 1
                    continue
                if groupable:  # the optimized folios from here on
                    plain = np.flatnonzero(~flags[k:])
                    n = int(plain[0]) if len(plain) else len(run) - k
                    if ahead is None:
                        ahead_end = self._stretch(runs, r, lambda folio: True)
                        # the optimized folios from here to the stretch's end
                        pages = per_folio * int(np.count_nonzero(optimized[starts[r] + k:starts[ahead_end]]))
                        ahead = FramesAhead(m.physmem.alloc_sequence([(Use.MEMMAP, pages)], run[k].node))
                    count, error = self._restore_group(run[k:k + n], ahead)
                else:
                    error = self.restore_folio(run[k], REMAP_NO_TLB_FLUSH if batched else 0)
                    count = 0 if error else 1
                restored += count
                k += count
                if error:
                    _used_up(ahead)
                    if batched and restored:
                        m.flush_tlb_all()
                    at = starts[r] + k
                    return folios[:at], folios[at:], error
        _used_up(ahead)
        if batched and restored:
            m.flush_tlb_all()
        return folios, folios[:0], None

    # -- batches a page table at a time ---------------------------------------------------------
    def _any_self_hosted(self):
        return any(owner.self_hosted for owner in self.machine.physmem.frames.totals)

    def _split_pass(self, todo):
        """Pass 1 of the batch: split every PMD the folios' vmemmap needs, stopping at the first
        ENOMEM. Each PMD is split when the first folio needing it comes, as one walk per folio would."""
        if not len(todo):
            return
        m = self.machine
        if self._any_self_hosted():
            for folio in todo:
                if self.split_folio(folio) == ENOMEM:
                    return
            return
        depth = m.geometry.pmd_depth
        span = m.geometry.levels[depth].entry_span
        size = m.sparse_geometry.struct_page_size
        heads = todo.heads
        first = (heads * size + (m.profile.hvo_reserve_pages - 1) * self.page) // span
        last = (heads * size + (size << todo.order) - 1) // span
        pmds = (first[:, None] + np.arange(int((last - first).max()) + 1)).ravel()
        pmds = pmds[pmds <= np.repeat(last, len(pmds) // len(heads))]
        _, where = np.unique(pmds, return_index=True)
        base = m.sparse_geometry.vmemmap_base
        leaves = []  # (table, index, address) of each leaf PMD to split, in the order they come
        for pmd in pmds[np.sort(where)].tolist():
            addr = base + pmd * span
            table = m.pagetable.walk(addr, depth)
            i = table.index(addr)
            if table.is_leaf(i):
                leaves.append((table, i, addr))
        level = m.geometry.levels[depth + 1]
        if not self.batch_runs or level.alloc_bytes != self.page or m.physmem.booting:  # a table a call
            for table, i, addr in leaves:
                if self.split_pmd(table, i, addr, Walk(None, flags=SPLIT_NO_TLB_FLUSH)) == ENOMEM:
                    return
            return
        # the PTE tables are single pages allocated one after another: drawn a node's stretch at a time
        nodes = [m.physmem.node_of(int(table.pfns[i])) for table, i, _ in leaves]
        k = 0
        while k < len(leaves):
            end = k + 1
            while end < len(leaves) and nodes[end] == nodes[k]:
                end += 1
            frames = m.physmem.alloc_pages(end - k, nodes[k], Use.PAGETABLE)
            for (table, i, _), pfn in zip(leaves[k:end], frames):
                m.table_frames.adopt(level, pfn)
                self.writer.split_leaf(table, i, pfn, "vmemmap_split_pmd")
            m.stats.add("hvo_pmd_splits", len(frames))
            if len(frames) < end - k:
                return
            k = end

    def _runs(self, folios):
        """Split ``folios`` into runs, each marked True when its folios' whole vmemmap lies in one
        existing PTE table on one node, so that a batch can remap the run with a few array writes."""
        m = self.machine
        if not len(folios) or not self.batch_runs or m.profile.hvo_reserve_pages != 1 or self._any_self_hosted():
            return [(folios, False)]
        span = m.geometry.levels[-1].table_span
        size = m.sparse_geometry.struct_page_size
        n = len(folios)
        heads, nodes = folios.heads, folios.nodes
        offsets, vmemmap = heads * size, size << folios.order
        table = offsets // span
        alone = (vmemmap < self.page) | (table != (offsets + vmemmap - 1) // span)  # vmemmap over tables
        # a run ends where the next folio differs in node or PTE table, and around a lone one
        cut = np.ones(n, dtype=bool)
        cut[1:] = alone[1:] | alone[:-1] | (nodes[1:] != nodes[:-1]) | (table[1:] != table[:-1])
        starts = np.flatnonzero(cut).tolist()
        runs = []
        for i, j in zip(starts, starts[1:] + [n]):
            if alone[i]:
                runs.append((folios[i:j], False))
                continue
            split = m.pagetable.walk(m.pfn_to_page(int(heads[i])), len(m.geometry.levels) - 1) is not None
            runs.append((folios[i:j], split))
        return runs

    def _entries(self, group):
        """The PTE table of a group and the (folios x vmemmap pages) index array of its entries (of
        the narrowest type that holds them: the journal keeps it)."""
        m = self.machine
        table = m.pagetable.walk(m.pfn_to_page(int(group.heads[0])), len(m.geometry.levels) - 1)
        size = m.sparse_geometry.struct_page_size
        pages = (size << group.order) // self.page
        offsets = group.heads * size
        first = (offsets - (table.base - m.sparse_geometry.vmemmap_base)) // self.page
        return table, (first[:, None] + np.arange(pages)).astype(np.min_scalar_type(table.level.entries))

    def _groups_remap(self, folio) -> bool:
        """Can ``folio``, in a run sharing a split PTE table, be remapped as part of a group? (7.1:
        once its zone's shared tail page exists; allocating that one is the single-folio path's.)"""
        return self.machine.profile.hvo_tail_page is not HvoTailPage.SHARED or (folio.node, folio.order) in self.tail_pages

    @staticmethod
    def _stretch(runs, r, groups):
        """The index of the first run after ``r`` that is not groupable, is on another node than
        ``runs[r]``, or holds folios ``groups`` refuses. The runs before it allocate one after
        another with nothing else allocated or freed between them, so one sweep draws them all."""
        node = int(runs[r][0].nodes[0])
        end = r + 1
        while end < len(runs) and runs[end][1] and int(runs[end][0].nodes[0]) == node and groups(runs[end][0][0]):
            end += 1
        return end

    def _optimize_group(self, group, pages, ahead, described):
        """``__hugetlb_vmemmap_optimize_folio`` for a run of folios sharing a PTE table, all split
        already: new head pages taken from ``ahead`` (drawn in one allocation sweep), the PTEs in
        one write. New head pages that copy plain struct pages go onto ``described`` as (frames,
        first pfns), for :meth:`_describe_heads`: nothing reads them before (they are fresh frames,
        each mapped at the head of a folio done with), unless the live-entry watch is on. Returns
        how many folios were optimized; fewer than ``len(group)`` means the next one's head
        allocation failed."""
        m = self.machine
        structpages = m.structpages
        heads = ahead.take(len(group))
        if not len(heads):
            return 0
        group = group[:len(heads)]
        table, index = self._entries(group)
        old = table.pfns[index]
        new = np.empty_like(old)
        new[:, 0] = heads
        new[:, 1:] = self.tail_pages[(int(group.nodes[0]), group.order)] if m.profile.hvo_tail_page is HvoTailPage.SHARED else heads[:, None]
        flags = np.full(old.shape, RDONLY, dtype=np.uint8)
        flags[:, 0] = 0
        per_page = structpages.per_page
        self.set_optimized_many(group.order, group.heads)
        firsts = group.heads // per_page * per_page
        sources = structpages.contents.get_many(old[:, 0])  # what the old head pages hold, if anything
        if any(sources):
            structpages.describe_many(heads, [source or CopyOf(first) for source, first in zip(sources, firsts.tolist())])
        elif m.live_entries is not None:  # the live-entry watch compares the contents of each PTE's frames
            structpages.describe_plain(heads, firsts)
        else:
            described.append((heads, firsts))
        # the journal keeps the old frames the list holds, and a slice when the entries follow one another
        self.writer.set_leaves(table, _as_slice(index.ravel()), new.ravel(), flags.ravel(), "vmemmap_remap_pte",
                               old=old.ravel())
        pages.append(old.ravel())  # a chunk of the list: free_page_list takes arrays too
        m.stats.add(NR_MEMMAP_PAGES, len(heads))
        return len(heads)

    def _describe_heads(self, described):
        """Describe the new head pages gathered by :meth:`_optimize_group` (plain copies), at once."""
        if described:
            self.machine.structpages.describe_plain(np.concatenate([f for f, _ in described]),
                                                    np.concatenate([p for _, p in described]))
            described.clear()

    def _restore_group(self, group, ahead):
        """``__hugetlb_vmemmap_restore_folio`` for a run of optimized folios sharing a PTE table:
        their page lists taken from ``ahead`` (drawn in one allocation sweep), the PTEs in one
        write. Returns (restored, error)."""
        m = self.machine
        wanted = len(group)
        table, index = self._entries(group)
        tails = index[:, 1:]
        per_folio = tails.shape[1]
        frames = ahead.take(wanted * per_folio)
        count = len(frames) // per_folio
        for frame in frames[count * per_folio:].tolist():  # the failing folio frees what it got
            m.physmem.release(frame, 1)
        if count:
            group, index, tails = group[:count], index[:count], tails[:count]
            if m.profile.hvo_tail_page is HvoTailPage.SHARED:
                source = np.full(count, self.tail_pages[(int(group.nodes[0]), group.order)], dtype=np.int64)
            else:
                source = table.pfns[index[:, 0]]  # the reuse page: what the head PTE maps
            if np.any(table.pfns[tails] != source[:, None]):
                raise AssertionError("restore found a tail PTE not mapping its folio's reuse page")
            fresh = frames[:count * per_folio].reshape(count, per_folio)[:, ::-1]
            # each folio's tail pages get copies of its reuse page, and its head page is mapped at
            # home alone again: descriptors for all at once
            structpages, copied, copies, forget = m.structpages, [], [], []
            contents, per_page = structpages.contents, structpages.per_page
            heads = table.pfns[index[:, 0]]
            if np.array_equal(heads, source) and np.array_equal(contents.plain_firsts(source), group.heads) \
                    and self._restored_copy(CopyOf(group[0].head), group[0].head + per_page, group[0]) is None:
                # each folio's reuse page is its head page, a plain copy of home: the same outcome
                # for all (restored copies read like home; each head page at home alone again)
                forget = heads
            else:
                sources = contents.get_many(source)
                for folio, head, source_desc, row in zip(group, heads.tolist(), sources, fresh.tolist()):
                    copy = self._restored_copy(source_desc, folio.head + per_page, folio)
                    if copy is not None:
                        copied.extend(row)
                        copies.extend([copy] * len(row))
                    if at_home(contents.get(head), folio.head):
                        forget.append(head)
            structpages.describe_many(copied, copies)
            self.set_optimized_many(group.order, group.heads, False)
            self.writer.set_leaves(table, tails.ravel(), fresh.ravel(), 0, "vmemmap_restore_pte")
            structpages.forget_many(forget)  # once no tail maps them
            m.stats.add(NR_MEMMAP_PAGES, count * per_folio)
            m.stats.add("hvo_vmemmap_pages_allocated", count * per_folio)
        return count, (ENOMEM if count < wanted else None)


def _as_slice(entries):
    """The index array ``entries`` as a slice when it counts up one by one (else itself)."""
    start = int(entries[0])
    if int(entries[-1]) - start + 1 == len(entries) and np.array_equal(entries, np.arange(start, start + len(entries))):
        return slice(start, start + len(entries))
    return entries


def _used_up(ahead):
    """A stretch's draw is done with: every page drawn was handed out (else frames would leak)."""
    if ahead is not None and ahead.used != len(ahead.pfns):
        raise AssertionError(f"{len(ahead.pfns) - ahead.used} vmemmap pages drawn for an HVO batch were not used")
    return None
