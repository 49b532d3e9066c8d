"""The buddy allocator's free lists (``mm/page_alloc.c``), kept as runs of blocks.

One list per node, zone and order, as ``zone->free_area[order]`` holds them (migratetypes are not
modelled: the allocations simulated here never fall back between them in a way that moves a page).
``__rmqueue_smallest`` takes the head of the smallest order's list that has a block and ``expand``
returns the upper halves it splits off to the heads of the lower orders' lists; ``__free_one_page``
merges a freed block with its free buddies, then puts it at the head of its list, or at the tail
with ``FPI_TO_TAIL`` or when ``buddy_merge_likely`` expects the next higher buddy to be freed soon.

Scale: a list is a sequence of *runs*, each a contiguous pfn range of equally sized blocks that sit
next to each other on the list in ascending or descending address order, so a terabyte freed in
one go is one run. Each run has a sort key ``(K, j)``: new runs at the head take a ``K`` below any
other, at the tail one above; the pieces of a run split apart keep ``K`` and take ``j`` from their
first block's place in the run, so the list order is the key order. The runs' first pfns, kept
sorted, find the run holding any free pfn (a buddy) in O(log n).

numpy is imported inside the functions that use it: ``vmemcore --help`` loads this module (through
the scenario validator) and must not load numpy.
"""

import heapq
from bisect import bisect_left, bisect_right, insort



class FreeLists:
    """The free lists of every node and zone; changes are journaled (``journal``)."""

    def __init__(self, max_order, journal=None):
        self.max_order = max_order  # MAX_PAGE_ORDER: the largest block
        self.journal = journal
        self._starts = []  # the first pfn of every run, sorted
        self._where = {}  # first pfn of a run -> (its list, its key)
        self._runs = {}  # (node, zone, order) -> {key: (lo, hi, ascending, ordinal of the first block)}
        self._heaps = {}  # (node, zone, order) -> heap of keys; keys no longer in _runs are skipped
        self._low = 0  # the last K given to a run at a list's head (decreasing)
        self._high = 0  # the last K given to a run at a list's tail (increasing)

    # -- runs -----------------------------------------------------------------------------------
    def _set_run(self, lst, key, run):
        """``run`` under ``key`` in list ``lst`` (None: remove it), journaled."""
        runs = self._runs.setdefault(lst, {})
        old = runs.get(key)
        self._assign(lst, key, run)
        if self.journal is not None and self.journal.active:
            self.journal.record(lambda: self._assign(lst, key, old))

    def _assign(self, lst, key, run):
        runs = self._runs.setdefault(lst, {})
        old = runs.pop(key, None)
        if old is not None:
            del self._starts[bisect_left(self._starts, old[0])]
            del self._where[old[0]]
        if run is None:
            return
        if old is None:
            heapq.heappush(self._heaps.setdefault(lst, []), key)
        runs[key] = run
        insort(self._starts, run[0])
        self._where[run[0]] = (lst, key)

    def _locate(self, pfn):
        """``(list, key)`` of the run holding free ``pfn``, or None."""
        i = bisect_right(self._starts, pfn) - 1
        if i < 0:
            return None
        lst, key = self._where[self._starts[i]]
        return (lst, key) if pfn < self._runs[lst][key][1] else None

    def _head(self, lst):
        """The key of the run at the head of ``lst``, or None when the list is empty."""
        runs, heap = self._runs.get(lst), self._heaps.get(lst)
        while heap:
            if heap[0] in runs:
                return heap[0]
            heapq.heappop(heap)
        return None

    def _cut(self, lst, key, lo, hi):
        """Take the blocks of ``[lo, hi)`` out of the run ``key``: what is left before them in the
        list keeps the key, what follows them takes ``(K, ordinal)``."""
        start, end, ascending, first = self._runs[lst][key]
        size = 1 << lst[2]
        self._set_run(lst, key, None)
        before, after = ((start, lo), (hi, end)) if ascending else ((hi, end), (start, lo))
        taken = (hi - lo) // size
        if before[0] < before[1]:
            self._set_run(lst, key, (before[0], before[1], ascending, first))
        if after[0] < after[1]:
            ordinal = first + (before[1] - before[0]) // size + taken
            later = (key[0], ordinal)
            self._set_run(lst, later, (after[0], after[1], ascending, ordinal))

    def _add(self, lst, lo, hi, ascending, tail):
        """Put the blocks of ``[lo, hi)`` (listed ascending or not) at the head or tail of ``lst``."""
        size = 1 << lst[2]
        if not tail and hi - lo == size:  # one block at the head: extend the head run if it continues it
            key = self._head(lst)
            if key is not None:
                start, end, asc, first = self._runs[lst][key]
                single = end - start == size
                if hi == start and (asc or single):
                    ascending, lo, hi = True, lo, end
                elif lo == end and (not asc or single):
                    ascending, lo, hi = False, start, hi
                else:
                    key = None
                if key is not None:
                    self._set_run(lst, key, None)
                    new = (key[0], first - 1)
                    self._set_run(lst, new, (lo, hi, ascending, first - 1))
                    return
        if tail:
            self._high += 1
            key = (self._high, 0)
        else:
            self._low -= 1
            key = (self._low, 0)
        self._set_run(lst, key, (lo, hi, ascending, 0))

    def _free_block(self, pfn, lst):
        """The key of the run of list ``lst`` that holds the free block at ``pfn``, or None."""
        found = self._locate(pfn)
        return found[1] if found is not None and found[0] == lst else None

    # -- freeing --------------------------------------------------------------------------------
    def free_one(self, pfn, order, node, zone, to_tail=False):
        """``__free_one_page``: merge with free buddies up to ``MAX_PAGE_ORDER``, then the head of
        the list, or the tail for ``FPI_TO_TAIL`` (``to_tail``) or when ``buddy_merge_likely``
        finds the buddy of the next order up free."""
        while order < self.max_order:
            buddy = pfn ^ (1 << order)
            key = self._free_block(buddy, (node, zone, order))
            if key is None:
                break
            self._cut((node, zone, order), key, buddy, buddy + (1 << order))
            pfn &= ~(1 << order)
            order += 1
        if not to_tail and order < self.max_order - 1:
            higher = pfn & ~(1 << order)  # buddy_pfn & pfn: the block of the next order up
            to_tail = self._free_block(higher ^ (1 << (order + 1)), (node, zone, order + 1)) is not None
        self._add((node, zone, order), pfn, pfn + (1 << order), True, to_tail)

    def free_range(self, start, end, node, zone, to_tail=False):
        """Free ``[start, end)`` as the largest naturally aligned blocks, lowest first, as
        ``__free_pages_memory`` and ``online_pages_range`` cut memory for ``__free_pages_core``.
        The ``MAX_PAGE_ORDER`` blocks cannot merge further, so a stretch of them is added as one run."""
        top = self.max_order
        pfn = start
        while pfn < end:
            order = min(top, (pfn & -pfn).bit_length() - 1 if pfn else top)
            while pfn + (1 << order) > end:
                order -= 1
            if order == top:
                count = (end - pfn) >> top
                last = pfn + (count << top)
                # one by one at the head lists them highest first; at the tail lowest first
                self._add((node, zone, top), pfn, last, to_tail, to_tail)
                pfn = last
            else:
                self.free_one(pfn, order, node, zone, to_tail)
                pfn += 1 << order

    # -- allocation -----------------------------------------------------------------------------
    def _smallest(self, order, node, zone):
        """The lowest order from ``order`` up whose list has a block, and its head run's key."""
        for k in range(order, self.max_order + 1):
            key = self._head((node, zone, k))
            if key is not None:
                return k, key
        return None, None

    def _take_head(self, lst, key, count):
        """Take the first ``count`` blocks of run ``key`` (the head of ``lst``): their first pfns
        in list order."""
        import numpy as np

        start, end, ascending, first = self._runs[lst][key]
        size = 1 << lst[2]
        if ascending:
            lo, hi = start, start + count * size
            pfns = np.arange(lo, hi, size, dtype=np.int64)
            rest = (hi, end)
        else:
            lo, hi = end - count * size, end
            pfns = np.arange(hi - size, lo - 1, -size, dtype=np.int64)
            rest = (start, lo)
        self._set_run(lst, key, (rest[0], rest[1], ascending, first + count) if rest[0] < rest[1] else None)
        return pfns

    def alloc(self, order, node, zone):
        """``__rmqueue_smallest``: the head block of the smallest order that has one, split by
        ``expand`` (the upper halves to the heads of the lower lists). Its pfn, or None."""
        k, key = self._smallest(order, node, zone)
        if k is None:
            return None
        pfn = int(self._take_head((node, zone, k), key, 1)[0])
        while k > order:  # expand()
            k -= 1
            self._add((node, zone, k), pfn + (1 << k), pfn + (2 << k), True, False)
        return pfn

    def alloc_many(self, count, order, node, zone):
        """Up to ``count`` successive :meth:`alloc` calls of ``order`` in one zone: the same blocks
        in the same order, a run at a time. When the smallest list that has a block is of order k
        above ``order``, the lists in between are empty, so allocating one such block's 2**(k-order)
        pieces one by one takes them lowest first (``expand`` keeps the lower half) and leaves the
        lists as they were: whole blocks go in one step. Returns an array of first pfns."""
        import numpy as np

        parts, left = [], count
        while left:
            k, key = self._smallest(order, node, zone)
            if k is None:
                break
            lst = (node, zone, k)
            start, end, _, _ = self._runs[lst][key]
            per = 1 << (k - order)
            whole = min(left // per, (end - start) >> k)
            if not whole:
                parts.append(np.array([self.alloc(order, node, zone)], dtype=np.int64))
                left -= 1
                continue
            blocks = self._take_head(lst, key, whole)
            pieces = np.arange(per, dtype=np.int64) << order
            parts.append((blocks[:, None] + pieces[None, :]).ravel())
            left -= whole * per
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)

    def take(self, start, end):
        """Take every free page of ``[start, end)`` off the lists (isolated for offlining, pinned,
        or ``alloc_contig_range``); the parts of blocks that stick out go back at the heads."""
        while True:
            i = max(bisect_right(self._starts, start) - 1, 0)
            found = None
            for first in self._starts[i:i + 2]:  # the run holding start, or the next one
                lst, key = self._where[first]
                if first < end and self._runs[lst][key][1] > start:
                    found = lst, key
                    break
            if found is None:
                return
            lst, key = found
            node, zone, order = lst
            run_lo, run_hi, _, _ = self._runs[lst][key]
            size = 1 << order
            lo = max(run_lo, start & -size)
            hi = min(run_hi, end + size - 1 & -size)
            self._cut(lst, key, lo, hi)
            if lo < start:
                self.free_range(lo, start, node, zone)
            if end < hi:
                self.free_range(end, hi, node, zone)

    # -- queries --------------------------------------------------------------------------------
    def lists(self):
        """``{(node, zone, order): [(lo, hi, ascending), ...]}`` in list order (empty lists left out)."""
        out = {}
        for lst, runs in sorted(self._runs.items(), key=lambda item: (item[0][0], str(item[0][1]), item[0][2])):
            if runs:
                out[lst] = [runs[key][:3] for key in sorted(runs)]
        return out

    def blocks(self):
        """``{(node, zone, order): [(lo, hi), ...]}``: which free blocks of each order there are, as
        sorted ranges, whatever their order on the lists (a round trip may reorder the lists, as in
        the kernel, yet leave the same blocks free)."""
        out = {}
        for start in self._starts:
            lst, key = self._where[start]
            end = self._runs[lst][key][1]
            ranges = out.setdefault(lst, [])
            if ranges and ranges[-1][1] == start:
                ranges[-1] = (ranges[-1][0], end)
            else:
                ranges.append((start, end))
        return out

    def order_of(self, pfn):
        """The order of the free block holding ``pfn``, or None when it is not free."""
        found = self._locate(pfn)
        return None if found is None else found[0][2]

    def free_list(self, node, zone, order):
        """The first pfns of the blocks on one list, head first (for tests and reports: costs the
        list's length)."""
        out = []
        for lo, hi, ascending in self.lists().get((node, zone, order), []):
            blocks = range(lo, hi, 1 << order)
            out.extend(blocks if ascending else reversed(blocks))
        return out

    def check(self, free_pages):
        """Assert that the lists hold exactly ``free_pages`` pages in disjoint, aligned runs, each
        found by its first pfn."""
        total, end = 0, -1
        for start in self._starts:
            lst, key = self._where[start]
            lo, hi, _, _ = self._runs[lst][key]
            size = 1 << lst[2]
            assert lo == start and lo % size == 0 and (hi - lo) % size == 0 and lo >= end, \
                f"run [{lo:#x}, {hi:#x}) of order {lst[2]} misaligned or overlapping"
            total, end = total + hi - lo, hi
        assert len(self._starts) == sum(len(runs) for runs in self._runs.values()), "runs missing from the index"
        assert total == free_pages, f"free lists hold {total} pages, free frames {free_pages}"
