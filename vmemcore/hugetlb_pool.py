"""An hstate's pool: its folios by head pfn, and its per-node free lists, as arrays.

``struct hstate`` counts its folios (``nr_huge_pages``, ``surplus_huge_pages``) and keeps the free
ones on ``hugepage_freelists[nid]``; a folio's own state is its flags (``HPG_vmemmap_optimized``
among them). A pool of 1 TiB of 2 MiB pages holds 524,288 folios and a 64 TiB machine's 33.5M, so
the pool keeps them as sorted arrays (11 bytes a folio) and a free list as an array of head pfns
(8 bytes), not as a Python object per folio. :class:`Folio` views are made when asked for.

Folios added one at a time wait in a dict until there are enough of them to merge into the arrays
(an eighth of the pool), so a pool grown folio by folio costs O(1) amortised per folio; removed
ones are marked and dropped when half the arrays are gone. Changes are journaled as their logical
inverse (add ↔ remove, old flags back), O(folios changed).
"""

from typing import NamedTuple

import numpy as np

from .descriptors import lookup

BOOT = 1  # allocated from memblock at boot (gigantic ``hugepages=``)
SURPLUS = 2  # a surplus page (``HPageSurplus``): here, one whose vmemmap could not be restored
OPTIMIZED = 4  # ``HPG_vmemmap_optimized``: HVO holds its vmemmap
_GONE = 128  # an entry of the arrays that left the pool, dropped at the next compaction

_NODE = np.int16  # node ids: MAX_NUMNODES is at most 1,024
FEW = 16  # folios looked up one by one rather than with arrays


class Folio(NamedTuple):
    """A HugeTLB folio: its head pfn, order and node; whether it came from boot memory and is a
    surplus page. (A view of one pool entry, made when asked for.)"""

    head: int
    order: int
    node: int
    boot: bool = False
    surplus: bool = False


class FolioPool:
    """The folios of one hstate (one order) by head pfn: a read-only mapping head -> :class:`Folio`
    plus array operations. Changes are journaled in ``journal`` while a transaction is open."""

    def __init__(self, order, journal=None):
        self.order = order
        self.journal = journal
        self._heads = np.empty(0, dtype=np.int64)  # sorted
        self._nodes = np.empty(0, dtype=_NODE)
        self._flags = np.empty(0, dtype=np.uint8)
        self._gone = 0  # entries of the arrays marked _GONE
        self._recent = {}  # head -> [node, flags]: added one by one since the last merge

    # -- reading --------------------------------------------------------------------------------
    def __len__(self):
        return len(self._heads) - self._gone + len(self._recent)

    def __bool__(self):
        return len(self) > 0

    def _index(self, head):
        """Index of the live array entry for ``head``, or -1."""
        heads = self._heads
        if not len(heads):
            return -1
        i = int(heads.searchsorted(head))
        if i < len(heads) and heads[i] == head and not self._flags[i] & _GONE:
            return i
        return -1

    def __contains__(self, head):
        return head in self._recent or self._index(head) >= 0

    def _entry(self, head):
        """``(node, flags)`` of ``head``; KeyError if the pool has no such folio."""
        entry = self._recent.get(head)
        if entry is not None:
            return entry
        i = self._index(head)
        if i < 0:
            raise KeyError(head)
        return int(self._nodes[i]), int(self._flags[i])

    def __getitem__(self, head):
        node, flags = self._entry(head)
        return Folio(int(head), self.order, node, bool(flags & BOOT), bool(flags & SURPLUS))

    def get(self, head, default=None):
        return self[head] if head in self else default

    def _settle(self):
        """Merge the recent folios into the arrays and drop the entries gone."""
        if not self._recent and not self._gone:
            return
        keep = self._flags & _GONE == 0
        heads, nodes, flags = self._heads[keep], self._nodes[keep], self._flags[keep]
        if self._recent:
            extra = np.fromiter(self._recent, dtype=np.int64, count=len(self._recent))
            order = np.argsort(extra)
            extra = extra[order]
            entries = np.array(list(self._recent.values()), dtype=np.int64).reshape(-1, 2)[order]
            at = np.searchsorted(heads, extra)
            heads = np.insert(heads, at, extra)
            nodes = np.insert(nodes, at, entries[:, 0].astype(_NODE))
            flags = np.insert(flags, at, entries[:, 1].astype(np.uint8))
        self._heads, self._nodes, self._flags = heads, nodes, flags
        self._gone, self._recent = 0, {}

    def _merged(self):
        """Merge the recent folios into the arrays (the entries gone are dropped on the way)."""
        if self._recent:
            self._settle()

    def heads(self):
        """The head pfns, ascending (an array)."""
        self._settle()
        return self._heads

    def __iter__(self):
        return iter(self.heads().tolist())

    def values(self):
        """The folios, by head pfn."""
        return self.view(self.heads())

    def view(self, heads):
        """The folios ``heads`` (array-like, all in the pool), in that order."""
        heads = np.asarray(heads, dtype=np.int64)
        self._merged()
        at = self._find(heads)
        order = self.order
        return [Folio(head, order, node, bool(flags & BOOT), bool(flags & SURPLUS))
                for head, node, flags in zip(heads.tolist(), self._nodes[at].tolist(), self._flags[at].tolist())]

    def _find(self, heads):
        """Array indices of ``heads`` (an array, all in the pool, none of them recent)."""
        pool = self._heads
        at = pool.searchsorted(heads)
        if len(heads) and (at.max() >= len(pool) or not np.array_equal(pool[at], heads)
                           or self._gone and (self._flags[at] & _GONE).any()):
            raise KeyError("a folio asked for is not in the pool")
        return at

    def flags(self, heads):
        """The flags of the folios ``heads`` (array-like, all in the pool), as an array."""
        heads = np.asarray(heads, dtype=np.int64)
        if len(heads) <= FEW:  # looked up one by one: the recent folios stay where they are
            return np.array([self._entry(head)[1] for head in heads.tolist()], dtype=np.uint8)
        self._merged()
        return self._flags[self._find(heads)]

    def nodes(self, heads):
        """The nodes of the folios ``heads`` (array-like, all in the pool), as an array."""
        heads = np.asarray(heads, dtype=np.int64)
        if len(heads) <= FEW:
            return np.array([self._entry(head)[0] for head in heads.tolist()], dtype=np.int64)
        self._merged()
        return self._nodes[self._find(heads)].astype(np.int64)

    def has(self, head, flag) -> bool:
        """Is ``flag`` set on the folio ``head``? (False when the pool has no such folio.)"""
        entry = self._recent.get(head)
        if entry is not None:
            return bool(entry[1] & flag)
        i = self._index(head)
        return i >= 0 and bool(self._flags[i] & flag)

    def count(self, flag) -> int:
        """How many folios have ``flag`` set."""
        live = self._flags[self._flags & _GONE == 0]
        return int(np.count_nonzero(live & flag)) + sum(1 for _, f in self._recent.values() if f & flag)

    def snapshot(self):
        """The pool's logical content, comparable across changes (bytes of the settled arrays)."""
        self._settle()
        return self._heads.tobytes(), self._nodes.tobytes(), self._flags.tobytes()

    # -- changing -------------------------------------------------------------------------------
    def _record(self, undo, *args):
        journal = self.journal
        if journal is not None and journal.active:
            journal.record(undo, *args)

    def add(self, heads, nodes, flags=0):
        """Folios ``heads`` (array-like, none in the pool) on ``nodes`` (one node or one each) join
        the pool with ``flags``."""
        heads = np.asarray(heads, dtype=np.int64)
        if not len(heads):
            return
        nodes = np.broadcast_to(np.asarray(nodes, dtype=_NODE), heads.shape)
        self._add(heads, nodes, np.broadcast_to(np.asarray(flags, dtype=np.uint8), heads.shape))
        self._record(self._remove, heads)

    def add_one(self, head, node, flags=0):
        """One folio joins the pool (the folio-by-folio paths): O(1) amortised."""
        if head in self:
            raise KeyError(f"folio {head:#x} is in the pool already")
        self._recent[head] = [node, flags]
        self._record(self._remove_one, head)
        if len(self._recent) > max(64, len(self._heads) >> 3):
            self._settle()

    def _remove_one(self, head):
        if self._recent.pop(head, None) is None:
            self._remove(np.array([head], dtype=np.int64))

    def _add(self, heads, nodes, flags):
        if len(heads) <= FEW:
            if any(head in self for head in heads.tolist()):
                raise KeyError("a folio added is in the pool already")
            added = []
            try:
                for head, node, flag in zip(heads.tolist(), nodes.tolist(), flags.tolist()):
                    self._recent[head] = [node, flag]
                    added.append(head)
            except BaseException:  # a MemoryError half-way leaves the pool as it was
                for head in added:
                    del self._recent[head]
                raise
            if len(self._recent) > max(64, len(self._heads) >> 3):
                self._settle()
            return
        self._settle()  # (no entry gone may share a head with one added)
        heads, nodes, flags = ascending(heads, nodes, flags)
        if (heads[1:] == heads[:-1]).any() or lookup(self._heads, heads)[1].any():
            raise KeyError("a folio added is in the pool already")
        pool = self._heads
        if not len(pool) or heads[0] > pool[-1]:  # after every folio there: appended
            merged = (np.concatenate((pool, heads)), np.concatenate((self._nodes, nodes.astype(_NODE))),
                      np.concatenate((self._flags, flags.astype(np.uint8))))
        else:
            at = pool.searchsorted(heads)
            merged = np.insert(pool, at, heads), np.insert(self._nodes, at, nodes), np.insert(self._flags, at, flags)
        self._heads, self._nodes, self._flags = merged

    def remove(self, heads):
        """Folios ``heads`` (array-like, all in the pool) leave it."""
        heads = np.asarray(heads, dtype=np.int64)
        if not len(heads):
            return
        nodes, flags = self._remove(heads)
        self._record(self._add, heads, nodes, flags)

    def _remove(self, heads):
        """Take ``heads`` out; returns their nodes and flags (arrays, in the order of ``heads``)."""
        if len(heads) <= FEW:  # one by one: the recent folios stay where they are
            entries = [self._entry(head) for head in heads.tolist()]  # all there, or KeyError
            for head in heads.tolist():
                if self._recent.pop(head, None) is None:
                    self._flags[self._index(head)] |= _GONE
                    self._gone += 1
            self._compact()
            entries = np.array(entries, dtype=np.int64).reshape(-1, 2)
            return entries[:, 0].astype(_NODE), entries[:, 1].astype(np.uint8)
        self._merged()
        at = self._find(heads)
        nodes, flags = self._nodes[at], self._flags[at].copy()
        self._flags[at] |= _GONE
        self._gone += len(at)
        self._compact()
        return nodes, flags

    def _compact(self):
        """Drop the entries gone once they are half the arrays."""
        if self._gone and self._gone >= len(self._heads) >> 1:
            self._settle()

    def set_flags(self, heads, flag, value=True):
        """Set (or clear) ``flag`` on the folios ``heads`` (array-like, all in the pool)."""
        heads = np.asarray(heads, dtype=np.int64)
        if not len(heads):
            return
        old = self._set_flags(heads, flag, value)
        self._record(self._put_flags, heads, old)

    def _set_flags(self, heads, flag, value):
        old = self.flags(heads)
        self._put_flags(heads, old | np.uint8(flag) if value else old & np.uint8(~flag & 0xFF))
        return old

    def _put_flags(self, heads, flags):
        """The flags of the folios ``heads`` become ``flags`` (arrays)."""
        if len(heads) <= FEW:
            for head, value in zip(heads.tolist(), flags.tolist()):
                entry = self._recent.get(head)
                if entry is not None:
                    entry[1] = value
                    continue
                i = self._index(head)
                if i < 0:
                    raise KeyError(head)
                self._flags[i] = value
            return
        self._merged()
        self._flags[self._find(heads)] = flags


def ascending(heads, *rest):
    """``heads`` and the arrays ``rest`` in ascending order of ``heads`` (a grow's heads come
    ascending or, newest first, descending: no sort needed then)."""
    steps = np.diff(heads)
    if (steps > 0).all():
        return (heads, *rest)
    if (steps < 0).all():
        return (heads[::-1], *(a[::-1] for a in rest))
    order = np.argsort(heads, kind="stable")
    return (heads[order], *(a[order] for a in rest))


class FreeList:
    """``h->hugepage_freelists[nid]``: the free folios' head pfns, the head of the list at the end
    (a stack: the kernel takes and puts folios at the list's head)."""

    def __init__(self):
        self._heads = np.empty(16, dtype=np.int64)
        self._len = 0

    def __len__(self):
        return self._len

    def __iter__(self):
        """The heads, from the list's tail to its head."""
        return iter(self._heads[:self._len].tolist())

    def __getitem__(self, index):
        return self._heads[:self._len].tolist()[index]

    def tolist(self):
        return self._heads[:self._len].tolist()

    def push(self, heads):
        """Put ``heads`` (array-like) at the head of the list, one after another."""
        heads = np.asarray(heads, dtype=np.int64)
        end = self._len + len(heads)
        if end > len(self._heads):
            grown = np.empty(max(end, 2 * len(self._heads)), dtype=np.int64)
            grown[:self._len] = self._heads[:self._len]
            self._heads = grown
        self._heads[self._len:end] = heads
        self._len = end

    def pop(self, count):
        """Take ``count`` folios off the head of the list: their heads, the first taken first."""
        count = min(count, self._len)
        taken = self._heads[self._len - count:self._len][::-1].copy()
        self._len -= count
        return taken

    def truncate(self, length):
        """Back to the ``length`` folios at the list's tail end."""
        self._len = length

    def remove(self, head):
        """Take ``head`` out of the list; returns where it was (for :meth:`insert`)."""
        where = np.flatnonzero(self._heads[:self._len] == head)
        if not len(where):
            raise ValueError(f"folio {head:#x} is not on the free list")
        index = int(where[-1])
        self._heads[index:self._len - 1] = self._heads[index + 1:self._len].copy()
        self._len -= 1
        return index

    def insert(self, index, head):
        """Put ``head`` back where :meth:`remove` took it from."""
        self.push([0])
        self._heads[index + 1:self._len] = self._heads[index:self._len - 1].copy()
        self._heads[index] = head


class Folios:
    """A list of folios of one order as arrays of heads and nodes: what the batched paths pass
    around. Indexing gives a :class:`Folio` view (not boot, not surplus: the pool knows those),
    slicing and masks give :class:`Folios`."""

    __slots__ = ("heads", "nodes", "order")

    def __init__(self, heads, nodes, order):
        self.heads = np.asarray(heads, dtype=np.int64)
        self.nodes = np.asarray(nodes, dtype=np.int64)
        if self.nodes.shape != self.heads.shape:
            self.nodes = np.broadcast_to(self.nodes, self.heads.shape)
        self.order = order

    @classmethod
    def _part(cls, heads, nodes, order):
        """Folios of arrays already made (a slice's: no checks, as it is made per page table)."""
        part = cls.__new__(cls)
        part.heads, part.nodes, part.order = heads, nodes, order
        return part

    @classmethod
    def of(cls, folios):
        """``folios`` (Folios, or a sequence of Folio of one order) as Folios."""
        if isinstance(folios, Folios):
            return folios
        orders = {f.order for f in folios}
        if len(orders) > 1:
            raise ValueError(f"folios of one order expected, got orders {sorted(orders)}")
        return cls([f.head for f in folios], [f.node for f in folios], orders.pop() if orders else 0)

    def __len__(self):
        return len(self.heads)

    def __getitem__(self, key):
        if isinstance(key, (slice, np.ndarray)):
            return Folios._part(self.heads[key], self.nodes[key], self.order)
        return Folio(int(self.heads[key]), self.order, int(self.nodes[key]))

    def __iter__(self):
        order = self.order
        return (Folio(head, order, node) for head, node in zip(self.heads.tolist(), self.nodes.tolist()))

    def __eq__(self, other):
        return list(self) == list(other)

    def __repr__(self):
        return f"Folios({len(self)} of order {self.order})"
