"""HugeTLB hstates and pools, as ``/proc/sys/vm/nr_hugepages`` and ``hugepages=`` make them.

Mirrors ``mm/hugetlb.c``: ``set_max_huge_pages`` (grow by allocating fresh folios node by node,
interleaved; shrink by freeing free folios, restoring their vmemmap first in bulk —
``update_and_free_pages_bulk`` with ``bulk_vmemmap_restore_error``: a folio whose vmemmap cannot be
restored stays in the pool as a surplus page), boot-time (memblock) gigantic pages gathered after
boot (``gather_bootmem_prealloc``), and the HVO switch (``vm.hugetlb_optimize_vmemmap``, the
``hugetlb_free_vmemmap`` boot parameter) which affects only folios allocated afterwards.
"""

import attrs
import numpy as np

from . import profiles
from .errors import BadRequest, SimulatorLimit, Veto
from .hugetlb_pool import BOOT, OPTIMIZED, SURPLUS, Folio, FolioPool, Folios, FreeList, ascending
from .hvo import Hvo
from .physmem import Owner, Use
from .units import format_size


@attrs.define
class HState:
    """One HugeTLB size (``struct hstate``): its folios and free lists."""

    size: object  # HugePageSize
    order: int
    folios: FolioPool  # head pfn -> Folio
    free_lists: dict = attrs.Factory(dict)  # node -> FreeList
    next_nid_to_alloc: int = 0
    next_nid_to_free: int = 0

    @property
    def name(self):
        return format_size(self.size.size)

    @property
    def nr_huge_pages(self):
        return len(self.folios)

    @property
    def surplus_huge_pages(self):
        return self.folios.count(SURPLUS)


@attrs.frozen
class ResizeResult:
    """What a write to ``nr_hugepages`` did: the pool size asked for and reached, and what HVO did."""

    size: str
    requested: int
    nr_hugepages: int
    allocated: int = 0
    freed: int = 0
    optimized: int = 0
    not_optimized: dict = attrs.field(factory=dict)  # reason -> count
    surplus: int = 0


class HugeTLB:
    """The machine's hstates, the HVO switch and the HVO engine."""

    def __init__(self, machine, optimize_vmemmap=False, remap=None):
        self.machine = machine
        self.hvo = Hvo(machine, remap)
        sizes = machine.hooks.hugepage_sizes(machine)
        page_shift = machine.geometry.page_shift
        self.hstates = {}
        for s in sizes:
            order = (s.size >> page_shift).bit_length() - 1
            self.hstates[s.size] = HState(s, order, FolioPool(order, machine.journal))
        self._pools = {h.order: h.folios for h in self.hstates.values()}
        self.support = machine.hooks.hvo_support(machine)
        self.optimize_vmemmap = False
        if optimize_vmemmap:
            self._check_switch()
            self.optimize_vmemmap = True

    def snapshot(self):
        return (
            {size: (h.folios.snapshot(), {n: l.tolist() for n, l in h.free_lists.items()}, h.next_nid_to_alloc, h.next_nid_to_free)
             for size, h in self.hstates.items()},
            self.optimize_vmemmap,
            self.hvo.snapshot(),
        )

    # -- lookups --------------------------------------------------------------------------------
    def hstate(self, size) -> HState:
        size = self.machine.rules.hugepage("size", size)
        if size not in self.hstates:
            offered = ", ".join(h.name for h in self.hstates.values()) or "none"
            raise BadRequest(f"{self.machine.arch.name} has no {format_size(size)} HugeTLB pages here (sizes: {offered})")
        return self.hstates[size]

    def is_gigantic(self, size) -> bool:
        """``hstate_is_gigantic``: larger than the buddy allocator's biggest block."""
        return self.hstate(size).order > self.machine.sparse_geometry.max_page_order

    def folio_of(self, pfn):
        """The HugeTLB folio holding ``pfn``, or None."""
        for h in self.hstates.values():
            head = pfn >> h.order << h.order
            if head in h.folios:
                return h.folios[head]
        return None

    def pool(self, order) -> FolioPool:
        """The folios of the hstate of ``order``."""
        return self._pools[order]

    def folio(self, head):
        """The HugeTLB folio whose head pfn is ``head``."""
        for h in self.hstates.values():
            if head in h.folios:
                return h.folios[head]
        raise BadRequest(f"no HugeTLB folio has its head at pfn {head!r}")

    # -- journaled state changes ----------------------------------------------------------------
    def _record(self, undo, *args):
        if self.machine.journal.active:
            self.machine.journal.record(undo, *args)

    def _push_free(self, h, node, heads):
        """Put ``heads`` (on ``node``) at the head of its free list, one after another."""
        stack = h.free_lists.get(node)
        if stack is None:
            stack = h.free_lists[node] = FreeList()
            self._record(lambda: h.free_lists.pop(node))
        length = len(stack)
        stack.push(heads)
        self._record(lambda: stack.truncate(length))

    def _set_nid(self, h, name, value):
        old = getattr(h, name)
        if old == value:
            return
        setattr(h, name, value)
        self._record(lambda: setattr(h, name, old))

    # -- the switch -----------------------------------------------------------------------------
    def _check_switch(self):
        if not self.support.supported and self.hvo.remap is None:
            raise Veto(f"{self.machine.arch.name}: HugeTLB Vmemmap Optimization is not available: {self.support.reason}",
                       [(self.machine.plugin.name, self.support.reason)])

    def set_optimize_vmemmap(self, enabled):
        """The sysctl ``vm.hugetlb_optimize_vmemmap``: only folios allocated afterwards change."""
        if not self.machine.profile.has(profiles.HVO_SYSCTL):
            raise BadRequest(f"kernel {self.machine.profile.name} has no vm.hugetlb_optimize_vmemmap sysctl "
                             "(added in 5.19): HVO is chosen at boot with hugetlb_free_vmemmap=on")
        self.machine.rules.flag("enabled", enabled)
        if enabled:
            self._check_switch()
        old = self.optimize_vmemmap
        self.optimize_vmemmap = bool(enabled)
        self._record(lambda: setattr(self, "optimize_vmemmap", old))

    # -- pool growth and shrinking --------------------------------------------------------------
    def _nodes(self):
        return self.machine.physmem.node_ids

    def _movable(self, h):
        """``htlb_alloc_mask``: movable (ZONE_MOVABLE first) unless gigantic (``hugepage_movable_supported``)."""
        return h.order <= self.machine.sparse_geometry.max_page_order

    def _alloc_folio(self, h):
        """``alloc_pool_huge_folio``: try each node once, round robin from ``next_nid_to_alloc``."""
        nodes = self._nodes()
        first = nodes.index(h.next_nid_to_alloc) if h.next_nid_to_alloc in nodes else 0
        for k in range(len(nodes)):
            node = nodes[(first + k) % len(nodes)]
            self._set_nid(h, "next_nid_to_alloc", nodes[(first + k + 1) % len(nodes)])
            head = self._alloc_on(h, node)
            if head is not None:
                return head, node
        return None

    def _alloc_on(self, h, node):
        """The head pfn of a fresh folio of ``h`` on ``node`` alone (``__GFP_THISNODE``), or None."""
        return self.machine.physmem.alloc(1 << h.order, node, Use.HUGETLB, exact_nid=True, movable=self._movable(h))

    def add_folios(self, h, heads, nodes):
        """``prep_and_add_allocated_folios`` (6.7+: the lot, in page_list order; before, called
        for each fresh folio): the fresh folios ``heads`` (on ``nodes``, arrays) into the pool,
        each at the head of its free list, then HVO for the lot. Returns {head: reason} for folios
        HVO left alone."""
        if len(heads) == 1:  # the folio-by-folio path, before 6.7
            head, node = int(heads[0]), int(nodes[0])
            h.folios.add_one(head, node)
            self._push_free(h, node, heads)
            return self.hvo.optimize([Folio(head, h.order, node)]) if self.optimize_vmemmap else {}
        h.folios.add(heads, nodes)
        for node in np.unique(nodes).tolist():
            self._push_free(h, node, heads if len(nodes) and np.all(nodes == node) else heads[nodes == node])
        if not self.optimize_vmemmap:
            return {}
        return self.hvo.optimize(Folios(heads, nodes, h.order))

    def resize(self, size, count):
        """Write ``count`` to ``nr_hugepages`` of ``size`` (``set_max_huge_pages``)."""
        self.machine.rules.count("count", count)
        with self.machine.transaction():
            h = self.hstate(size)
            if count >= h.nr_huge_pages:
                return self._grow(h, count)
            return self._shrink(h, count)

    def boot_pages(self, size, count, node=None):
        """``hugetlb_hstate_alloc_pages`` for a size the buddy allocator holds (``hugepages=``):
        ``count`` more pages, as a write to ``nr_hugepages`` adds them, or with ``node``
        (``hugepages=node:count``) all on that node (``hugetlb_hstate_alloc_pages_onenode``,
        ``__GFP_THISNODE``), the round robin of the other writes left where it was."""
        h = self.hstate(size)
        if node is None:
            return self.resize(size, h.nr_huge_pages + count)
        if node not in self._nodes():
            raise BadRequest(f"hugepages on node {node!r}: the machine has no memory there (nodes: {self._nodes()})")
        with self.machine.transaction():
            return self._grow(h, h.nr_huge_pages + count, node)

    def _grow(self, h, count, node=None):
        nodes = self._nodes() if node is None else [node]
        # set_max_huge_pages allocates until an allocation fails: no more than the free frames can
        # hold, plus the attempt that fails, whatever count was asked for
        attempts = min(count - h.nr_huge_pages, (self.machine.physmem.free_pages() >> h.order) + 1)
        # a folio costs the pool 19 bytes; one HVO optimizes, or one allocated node by node, much more
        optimizing = self.optimize_vmemmap and self.hvo.optimizable(h.order)
        limit = SimulatorLimit.MAX_RECORDS if optimizing or len(nodes) > 1 else SimulatorLimit.MAX_FOLIOS
        if attempts > limit:
            raise SimulatorLimit(f"nr_hugepages {count:,} of {h.name}: up to {attempts:,} new HugeTLB pages, more than the "
                                 f"{limit:,} the simulator keeps records of in one operation"
                                 + (" with HVO on" if optimizing else " on more than one node" if len(nodes) > 1 else ""))
        pool_list = self.machine.profile.hugetlb_pool_list
        if self.optimize_vmemmap and not pool_list:
            return self._grow_one_by_one(h, count, node)
        if len(nodes) == 1:  # no interleaving: one allocation sweep gives the same folios
            heads = self.machine.physmem.alloc_pages(attempts, nodes[0], Use.HUGETLB, h.order, exact_nid=True,
                                                     movable=self._movable(h))
            heads, on = np.asarray(heads, dtype=np.int64), np.full(len(heads), nodes[0], dtype=np.int64)
        else:
            fresh = []
            while h.nr_huge_pages + len(fresh) < count:
                got = self._alloc_folio(h)
                if got is None:
                    break
                fresh.append(got)
            heads = np.array([head for head, _ in fresh], dtype=np.int64)
            on = np.array([node for _, node in fresh], dtype=np.int64)
        # 6.7+: set_max_huge_pages list_add()s each fresh folio to its page_list, so HVO and the free
        # lists take them newest first and the oldest ends at the head of its free list; before,
        # each went to the head as it came
        failed = self.add_folios(h, heads[::-1], on[::-1]) if pool_list else self.add_folios(h, heads, on)
        return self._result(h, count, allocated=len(heads), failed=failed)

    def _grow_one_by_one(self, h, count, node=None):
        """Before 6.7 (d67e32f26713) each fresh folio is optimized as it is allocated
        (``alloc_fresh_hugetlb_folio`` → ``prep_new_hugetlb_folio`` → ``hugetlb_vmemmap_optimize``),
        so the vmemmap pages one frees may hold the next folio's page table, new head page, or
        (merged) the next folio."""
        allocated, failed = 0, {}
        while h.nr_huge_pages < count:
            got = self._alloc_folio(h) if node is None else self._alloc_on(h, node)
            if got is None:
                break
            head, on = got if node is None else (got, node)
            allocated += 1
            failed.update(self.add_folios(h, np.array([head], dtype=np.int64), np.array([on], dtype=np.int64)))
        return self._result(h, count, allocated=allocated, failed=failed)

    def _result(self, h, requested, allocated=0, failed=None, **counts):
        failed = failed or {}
        eligible = allocated if self.optimize_vmemmap and self.hvo.optimizable(h.order) else 0  # fresh: of h's order
        reasons = {}
        if self.optimize_vmemmap and eligible < allocated:
            reasons["not optimizable"] = allocated - eligible  # struct pages fill at most a page
        for error in failed.values():
            reasons[error] = reasons.get(error, 0) + 1
        return ResizeResult(h.name, requested, h.nr_huge_pages, allocated=allocated, optimized=eligible - len(failed),
                            not_optimized=reasons, surplus=h.surplus_huge_pages, **counts)

    def take_free_folio(self, h, head):
        """Take a particular free folio off its free list (to dissolve it)."""
        folio = h.folios[head]
        stack = h.free_lists[folio.node]
        index = stack.remove(head)
        self._record(lambda: stack.insert(index, head))
        return folio

    def dissolve(self, h, head):
        """``dissolve_free_hugetlb_folio``: the free folio at ``head`` leaves the pool, its vmemmap
        restored on its own (``hugetlb_vmemmap_restore_folio``: no batch, its own TLB flush) and
        its memory freed, before the caller dissolves the next. Returns ENOMEM when the vmemmap
        cannot be restored (the caller fails, as offline_pages does)."""
        folio = self.take_free_folio(h, head)
        error = self.hvo.restore_folio(folio, 0)
        if not error:
            self._free_folios(h, [folio.head])
        return error

    def _pick_free(self, h, count):
        """``remove_pool_hugetlb_folio`` up to ``count`` times: each takes the first free folio of
        the next node to free from (round robin from ``next_nid_to_free``). Returns their heads,
        in the order taken (an array)."""
        stacks = {node: stack for node, stack in h.free_lists.items() if len(stack)}
        nid = h.next_nid_to_free
        if len(stacks) == 1:  # one node: the top of its stack, in order
            (node, stack), = stacks.items()
            victims, nid = stack.pop(count), node + 1
            self._record(stack.push, victims[::-1])
        else:
            taken = []
            while len(taken) < count and stacks:
                nodes = sorted(stacks)
                node = next((n for n in nodes if n >= nid), nodes[0])
                stack = stacks[node]
                head = stack.pop(1)
                self._record(stack.push, head)
                taken.append(int(head[0]))
                if not len(stack):
                    del stacks[node]
                nid = node + 1
            victims = np.array(taken, dtype=np.int64)
        if len(victims):
            self._set_nid(h, "next_nid_to_free", nid)
        return victims

    def _shrink(self, h, count):
        victims = self._pick_free(h, h.nr_huge_pages - count)
        # set_max_huge_pages list_add()s each folio removed to its page_list: the list to free is reversed
        freed = self.free_folios(h, victims[::-1])
        return self._result(h, count, freed=freed)

    def free_folios(self, h, heads):
        """``update_and_free_pages_bulk`` of the folios ``heads`` (an array, in page_list order):
        restore vmemmap in bulk and free what was restored; after a failure retry, and when nothing
        could be restored go one by one: a folio whose vmemmap cannot be restored stays in the
        pool as a surplus page (``bulk_vmemmap_restore_error``). Before 6.7 (no batching) the loop
        is over folios: each has its vmemmap restored and is freed before the next
        (``update_and_free_page``, ``update_and_free_hugetlb_folio`` from 6.2), so its memory may
        hold the next one's restored vmemmap. Returns how many were freed."""
        heads = np.asarray(heads, dtype=np.int64)
        if not h.folios.count(OPTIMIZED) or not (h.folios.flags(heads) & OPTIMIZED).any():  # no vmemmap to restore
            self._free_folios(h, heads)
            return len(heads)
        folios = Folios(heads, h.folios.nodes(heads), h.order)
        if not self.machine.profile.hvo_batched:
            freed = 0
            for folio in folios:
                if self.hvo.restore_folio(folio, 0):
                    self._keep_surplus(h, folio)
                else:
                    self._free_folios(h, [folio.head])
                    freed += 1
            return freed
        todo, freed = folios, 0
        while todo:
            done, todo, error = self.hvo.restore(todo)
            self._free_folios(h, done.heads)
            freed += len(done)
            if not error or done:
                continue
            rest = []
            for index, folio in enumerate(todo):
                if self.hvo.restore_folio(self.folio(folio.head), 0):
                    self._keep_surplus(h, folio)
                    continue
                self._free_folios(h, [folio.head])
                freed += 1
                rest = todo[index + 1:]
                break
            todo = rest
        return freed

    def _keep_surplus(self, h, folio):
        """A folio whose vmemmap could not be restored goes back to the pool as a surplus page."""
        h.folios.set_flags([folio.head], SURPLUS)
        self._push_free(h, folio.node, [folio.head])
        self.machine.stats.add("hugetlb_restore_failures", 1)

    def _free_folios(self, h, heads):
        """``update_and_free_hugetlb_folio`` of each folio of ``heads``: it leaves the pool and its
        memory goes back to the page allocator a folio at a time in the list's order, so the free
        lists' heads hold the folios freed last (``__free_one_page``). The head vmemmap page, now
        holding plain struct pages again, needs no descriptor."""
        heads = np.asarray(heads, dtype=np.int64)
        if not len(heads):
            return
        machine = self.machine
        structpages = machine.structpages
        size = 1 << h.order
        suspects, home_heads = set(), {}  # folios with struct pages to check; head pages to forget
        ordered = ascending(heads)[0] if len(heads) > 1 else heads
        for lo, hi in _clusters(ordered, size) if len(heads) > 1 else [(0, 1)]:
            found = structpages.materialised(int(ordered[lo]), int(ordered[hi - 1]) + size)
            if not found:
                continue
            cluster = ordered[lo:hi]
            firsts = np.array([first for first, _, _ in found], dtype=np.int64)
            owners = cluster[np.searchsorted(cluster, firsts, side="right") - 1]
            for (first, frame, home), head in zip(found, owners.tolist()):
                if first >= head + size:
                    continue  # between the folios freed
                if not home:
                    suspects.add(head)
                elif first == head:
                    home_heads[head] = frame
        # free_pages_prepare refuses a bad one: leaked, its struct pages left for debugging
        bad = [head for head in heads.tolist() if head in suspects and machine.bad_pages.free_folio_is_bad(h.folios[head])]
        h.folios.remove(heads)
        for head in bad:
            machine.bad_pages.leak(head, size)
        freed = heads[~np.isin(heads, bad)] if bad else heads
        if home_heads:
            structpages.forget_many([home_heads[head] for head in freed.tolist() if head in home_heads])
        # one release per folio, in the list's order, as the kernel frees them
        machine.physmem.release_blocks(freed, size)

    # -- boot -----------------------------------------------------------------------------------
    def reserve_boot_pages(self, size, count, node=None):
        """``hugepages=`` for a gigantic size: memblock allocations before ``sparse_init`` (the
        smaller sizes are allocated from buddy after boot, as ``hugetlb_init`` does)."""
        h = self.hstate(size)
        physmem = self.machine.physmem
        nodes = [node] if node is not None else self._nodes()
        folios = []
        for k in range(count):
            for attempt in range(len(nodes)):
                target = nodes[(k + attempt) % len(nodes)]
                pfn = physmem.alloc(1 << h.order, target, Use.HUGETLB, align=1 << h.order, exact_nid=True)
                if pfn is not None:
                    folios.append(Folio(pfn, h.order, target, boot=True))
                    break
            else:
                break
        return folios

    def gather_boot_pages(self, h, folios):
        """``gather_bootmem_prealloc``: boot folios join the pool; those built optimized are marked
        so and their mirrored tail PTEs made read-only (``hugetlb_vmemmap_optimize_bootmem_folios``,
        ``vmemmap_wrprotect_hvo``), the others optimized in one batch. Each folio's frames are
        managed from then on: ``adjust_managed_page_count(page, pages_per_huge_page(h))`` restores
        the pages memblock "stole" to ``totalram_pages`` and the zone's ``managed_pages``, in every
        kernel modelled (the early-CMA pages 6.15 exempts are not modelled). Before 6.7 the folios
        come newest first (``huge_boot_pages`` is built with ``list_add``), so the oldest ends at
        the head of the free list; since, gathered on a second list, oldest first."""
        if not self.machine.profile.hugetlb_pool_list:
            folios = folios[::-1]
        physmem = self.machine.physmem
        for folio in folios:
            physmem.retag(folio.head, 1 << folio.order, Owner(Use.HUGETLB))
            h.folios.add_one(folio.head, folio.node, BOOT)
            self._push_free(h, folio.node, [folio.head])
        preinit = self.hvo.optimize_bootmem_folios(folios)
        rest = [f for f in folios if f not in preinit]
        return self.hvo.optimize(rest) if self.optimize_vmemmap else {}


CLUSTER_GAP = 64  # folios: a wider gap between freed folios is not scanned for their struct pages


def _clusters(heads, size):
    """``(lo, hi)`` index ranges of the sorted array ``heads`` whose folios lie within
    ``CLUSTER_GAP`` folios of each other: the stretches of memory worth one scan of the vmemmap (a
    pool spread over all of memory is scanned where its folios are, not across the memory between
    them)."""
    bounds = [0, *(np.flatnonzero(np.diff(heads) > CLUSTER_GAP * size) + 1).tolist(), len(heads)]
    return zip(bounds, bounds[1:])
