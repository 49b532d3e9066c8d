"""HugeTLB hstates and pools, as ``/proc/sys/vm/nr_hugepages`` and ``hugepages=`` make them.

Mirrors ``mm/hugetlb.c``: ``set_max_huge_pages`` (grow by allocating fresh folios node by node,
interleaved; shrink by freeing free folios, restoring their vmemmap first in bulk —
``update_and_free_pages_bulk`` with ``bulk_vmemmap_restore_error``: a folio whose vmemmap cannot be
restored stays in the pool as a surplus page), boot-time (memblock) gigantic pages gathered after
boot (``gather_bootmem_prealloc``), and the HVO switch (``vm.hugetlb_optimize_vmemmap``, the
``hugetlb_free_vmemmap`` boot parameter) which affects only folios allocated afterwards.
"""

import attrs

from .errors import BadRequest, Veto
from .hvo import Hvo, optimizable_pages
from .physmem import Use
from .units import format_size, parse_size


@attrs.frozen
class Folio:
    """A HugeTLB folio: its head pfn, order and node; where it came from and whether HVO holds it."""

    head: int
    order: int
    node: int
    boot: bool = False
    surplus: bool = False


@attrs.define
class HState:
    """One HugeTLB size (``struct hstate``): its folios and free lists."""

    size: object  # HugePageSize
    order: int
    folios: dict = attrs.Factory(dict)  # head pfn -> Folio
    free_lists: dict = attrs.Factory(dict)  # node -> [head pfn], front of the list at the end
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
        return sum(f.surplus for f in self.folios.values())


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
        self.hstates = {s.size: HState(s, (s.size >> page_shift).bit_length() - 1) for s in sizes}
        self.orders = sorted({h.order for h in self.hstates.values()})
        self.support = machine.hooks.hvo_support(machine)
        self.optimize_vmemmap = False
        if optimize_vmemmap:
            self._check_switch()
            self.optimize_vmemmap = True

    def snapshot(self):
        return (
            {size: (dict(h.folios), {n: list(l) for n, l in h.free_lists.items()}, h.next_nid_to_alloc, h.next_nid_to_free)
             for size, h in self.hstates.items()},
            self.optimize_vmemmap,
            self.hvo.snapshot(),
        )

    # -- lookups --------------------------------------------------------------------------------
    def hstate(self, size) -> HState:
        size = parse_size(size)
        if size not in self.hstates:
            offered = ", ".join(h.name for h in self.hstates.values()) or "none"
            raise BadRequest(f"{self.machine.arch.name} has no {format_size(size)} HugeTLB pages here (sizes: {offered})")
        return self.hstates[size]

    def is_gigantic(self, size) -> bool:
        """``hstate_is_gigantic``: larger than the buddy allocator's biggest block."""
        return self.hstate(size).order > self.machine.sparse_geometry.max_page_order

    def folio_of(self, pfn):
        """The HugeTLB folio holding ``pfn``, or None."""
        for order in self.orders:
            head = pfn >> order << order
            for h in self.hstates.values():
                if h.order == order and head in h.folios:
                    return h.folios[head]
        return None

    def folio(self, head):
        for h in self.hstates.values():
            if head in h.folios:
                return h.folios[head]
        raise KeyError(head)

    # -- journaled state changes ----------------------------------------------------------------
    def _record(self, undo):
        if self.machine.journal.active:
            self.machine.journal.record(undo)

    def _put(self, h, folio):
        old = h.folios.get(folio.head)
        self._record(lambda: h.folios.__setitem__(folio.head, old) if old else h.folios.pop(folio.head))
        h.folios[folio.head] = folio

    def _drop(self, h, head):
        old = h.folios.pop(head)
        self._record(lambda: h.folios.__setitem__(head, old))

    def _push_free(self, h, folio):
        stack = h.free_lists.setdefault(folio.node, [])
        stack.append(folio.head)
        self._record(stack.pop)

    def _pop_free(self, h, node):
        stack = h.free_lists[node]
        head = stack.pop()
        self._record(lambda: stack.append(head))
        return head

    def _set_nid(self, h, name, value):
        old = getattr(h, name)
        self._record(lambda: setattr(h, name, old))
        setattr(h, name, value)

    # -- the switch -----------------------------------------------------------------------------
    def _check_switch(self):
        if not self.support.supported and self.hvo.remap is None:
            raise Veto(f"{self.machine.arch.name}: HugeTLB Vmemmap Optimization is not available: {self.support.reason}",
                       [(self.machine.plugin.name, self.support.reason)])

    def set_optimize_vmemmap(self, enabled):
        """The sysctl ``vm.hugetlb_optimize_vmemmap``: only folios allocated afterwards change."""
        if not self.machine.profile.at_least(5, 19):
            raise BadRequest(f"kernel {self.machine.profile.name} has no vm.hugetlb_optimize_vmemmap sysctl "
                             "(added in 5.19): HVO is chosen at boot with hugetlb_free_vmemmap=on")
        if enabled:
            self._check_switch()
        old = self.optimize_vmemmap
        self._record(lambda: setattr(self, "optimize_vmemmap", old))
        self.optimize_vmemmap = bool(enabled)

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
            pfn = self.machine.physmem.alloc(1 << h.order, node, Use.HUGETLB, exact_nid=True, movable=self._movable(h))
            if pfn is not None:
                return Folio(pfn, h.order, node)
        return None

    def add_folios(self, h, folios):
        """``prep_and_add_allocated_folios`` / ``prep_and_add_bootmem_folios``: into the pool, then
        HVO for the lot. Returns {head: reason} for folios HVO left alone."""
        for folio in folios:
            self._put(h, folio)
            self._push_free(h, folio)
        return self.hvo.optimize([h.folios[f.head] for f in folios]) if self.optimize_vmemmap else {}

    def resize(self, size, count):
        """Write ``count`` to ``nr_hugepages`` of ``size`` (``set_max_huge_pages``)."""
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise BadRequest(f"nr_hugepages must be a non-negative integer, got {count!r}")
        with self.machine.transaction():
            h = self.hstate(size)
            if count >= h.nr_huge_pages:
                return self._grow(h, count)
            return self._shrink(h, count)

    def _grow(self, h, count):
        nodes = self._nodes()
        if len(nodes) == 1:  # no interleaving: one allocation sweep gives the same folios
            heads = self.machine.physmem.alloc_pages(count - h.nr_huge_pages, nodes[0], Use.HUGETLB, h.order, exact_nid=True,
                                                     movable=self._movable(h))
            fresh = [Folio(head, h.order, nodes[0]) for head in heads]
        else:
            fresh = []
        while len(nodes) > 1 and h.nr_huge_pages + len(fresh) < count:
            folio = self._alloc_folio(h)
            if folio is None:
                break
            fresh.append(folio)
        failed = self.add_folios(h, fresh)
        return self._result(h, count, allocated=len(fresh), fresh=fresh, failed=failed)

    def _result(self, h, requested, fresh=(), failed=None, **counts):
        failed = failed or {}
        eligible = [f for f in fresh if optimizable_pages(self.machine, f.order)] if self.optimize_vmemmap else []
        reasons = {}
        if self.optimize_vmemmap and len(eligible) < len(fresh):
            reasons["not optimizable"] = len(fresh) - len(eligible)  # struct pages fill at most a page
        for error in failed.values():
            reasons[error] = reasons.get(error, 0) + 1
        return ResizeResult(h.name, requested, h.nr_huge_pages, optimized=len(eligible) - len(failed),
                            not_optimized=reasons, surplus=h.surplus_huge_pages, **counts)

    def take_free_folio(self, h, head):
        """Take a particular free folio off its free list (to dissolve it)."""
        folio = h.folios[head]
        stack = h.free_lists[folio.node]
        index = stack.index(head)
        del stack[index]
        self._record(lambda: stack.insert(index, head))
        return folio

    def _pick_free(self, h):
        """``remove_pool_hugetlb_folio``: the first free folio of the next node to free from."""
        nodes = sorted(n for n, stack in h.free_lists.items() if stack)
        if not nodes:
            return None
        after = [n for n in nodes if n >= h.next_nid_to_free]
        node = after[0] if after else nodes[0]
        self._set_nid(h, "next_nid_to_free", node + 1)
        return h.folios[self._pop_free(h, node)]

    def _shrink(self, h, count):
        victims = []
        while h.nr_huge_pages - len(victims) > count:
            folio = self._pick_free(h)
            if folio is None:
                break
            victims.append(folio)
        freed = self.free_folios(h, victims)
        return self._result(h, count, freed=freed)

    def free_folios(self, h, folios):
        """``update_and_free_pages_bulk``: restore vmemmap in bulk and free what was restored; after
        a failure retry, and when nothing could be restored go one by one: a folio whose vmemmap
        cannot be restored stays in the pool as a surplus page (``bulk_vmemmap_restore_error``)."""
        todo, freed = list(folios), 0
        while todo:
            done, todo, error = self.hvo.restore(todo)
            for folio in done:
                self._free_folio(h, folio)
            freed += len(done)
            if not error or done:
                continue
            rest = []
            for index, folio in enumerate(todo):
                if self.hvo.restore_folio(self.folio(folio.head), 0):
                    self._put(h, attrs.evolve(self.folio(folio.head), surplus=True))
                    self._push_free(h, self.folio(folio.head))
                    self.machine.stats.add("hugetlb_restore_failures", 1)
                    continue
                self._free_folio(h, self.folio(folio.head))
                freed += 1
                rest = todo[index + 1:]
                break
            todo = rest
        return freed

    def _free_folio(self, h, folio):
        """``update_and_free_hugetlb_folio``: the folio's memory goes back to the page allocator.
        The head vmemmap page, now holding plain struct pages again, needs no descriptor."""
        self._drop(h, folio.head)
        self.machine.physmem.release(folio.head, 1 << folio.order)
        structpages = self.machine.structpages
        vaddr = self.machine.pfn_to_page(folio.head)
        frame = self.machine.vmemmap.translate(vaddr) >> self.machine.geometry.page_shift
        descriptor = structpages.contents.get(frame)
        if descriptor is not None and structpages.reads_like_home(descriptor, vaddr):
            structpages.describe(frame, None)

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
        ``vmemmap_wrprotect_hvo``), the others optimized in one batch."""
        preinit = self.hvo.optimize_bootmem_folios(folios)
        for folio in folios:
            self._put(h, folio)
            self._push_free(h, folio)
        rest = [f for f in folios if f not in preinit]
        return self.hvo.optimize(rest) if self.optimize_vmemmap else {}

