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
first block's place in the run, so the list order is the key order. The runs' first pfns, kept in
a sorted list of blocks (``sortedcontainers``), find the run holding any free pfn (a buddy) in
O(log n) however many runs there are. A bit mask per zone of the orders whose list has a block
finds the smallest order to allocate from in one step.

numpy and sortedcontainers are imported inside the functions that use them: ``vmemcore --help``
loads this module (through the scenario validator) and must stay fast.
"""

import heapq

SHORT = 1024  # allocations of at most this many blocks are listed in Python, longer ones with numpy
PAIRS = 64  # frees of at least this many blocks one order below the top are paired with numpy


class FreeLists:
    """The free lists of every node and zone; changes are journaled (``journal``)."""

    def __init__(self, max_order, journal=None):
        from sortedcontainers import SortedList

        self.max_order = max_order  # MAX_PAGE_ORDER: the largest block
        self.journal = journal
        self._starts = SortedList()  # the first pfn of every run
        self._where = {}  # first pfn of a run -> (its list, its key)
        self._runs = {}  # (node, zone, order) -> {key: (lo, hi, ascending, ordinal of the first block)}
        self._heaps = {}  # (node, zone, order) -> heap of keys; keys no longer in _runs are skipped
        self._orders = {}  # (node, zone) -> bit mask of the orders whose list has a block
        self._low = 0  # the last K given to a run at a list's head (decreasing)
        self._high = 0  # the last K given to a run at a list's tail (increasing)

    # -- runs -----------------------------------------------------------------------------------
    def _set_run(self, lst, key, run):
        """``run`` under ``key`` in list ``lst`` (None: remove it), journaled."""
        old = self._assign(lst, key, run)
        journal = self.journal
        if journal is not None and journal.active:
            journal.record(self._assign, lst, key, old)

    def _assign(self, lst, key, run):
        """Put ``run`` under ``key`` (None: remove it); returns the run it replaces."""
        runs = self._runs.get(lst)
        if runs is None:
            runs = self._runs[lst] = {}
        old = runs.pop(key, None)
        if old is not None:
            self._starts.remove(old[0])
            del self._where[old[0]]
        if run is not None:
            if old is None:
                heapq.heappush(self._heaps.setdefault(lst, []), key)
            runs[key] = run
            self._starts.add(run[0])
            self._where[run[0]] = (lst, key)
        zone, bit = lst[:2], 1 << lst[2]
        self._orders[zone] = self._orders.get(zone, 0) | bit if runs else self._orders.get(zone, 0) & ~bit
        return old

    def _locate(self, pfn):
        """``(list, key)`` of the run holding free ``pfn``, or None."""
        starts = self._starts
        i = starts.bisect_right(pfn) - 1
        if i < 0:
            return None
        lst, key = self._where[starts[i]]
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

    def _push(self, lst, entries, tail):
        """Put ``entries``, ``(lo, hi, ascending)`` stretches of blocks listed in list order, at the
        head or the tail of ``lst`` as that order's runs: adjacent stretches that continue one
        another become one run, and at the head the last one joins the head run if it continues it."""
        size = 1 << lst[2]
        runs = []
        for lo, hi, ascending in entries:
            if runs:
                joined = _join(runs[-1], (lo, hi, ascending), size)
                if joined is not None:
                    runs[-1] = joined
                    continue
            runs.append((lo, hi, ascending))
        if tail:
            for lo, hi, ascending in runs:
                self._high += 1
                self._set_run(lst, (self._high, 0), (lo, hi, ascending, 0))
            return
        key = self._head(lst)
        if key is not None and runs:
            start, end, ascending, first = self._runs[lst][key]
            joined = _join(runs[-1], (start, end, ascending), size)
            if joined is not None:  # the head run grows at its front: it keeps K, its ordinals go down
                lo, hi, _ = runs.pop()
                ordinal = first - (hi - lo) // size
                self._set_run(lst, key, None)
                self._set_run(lst, (key[0], ordinal), (*joined, ordinal))
        for lo, hi, ascending in reversed(runs):
            self._low -= 1
            self._set_run(lst, (self._low, 0), (lo, hi, ascending, 0))

    def _free_block(self, pfn, lst):
        """The key of the run of list ``lst`` that holds the free block at ``pfn``, or None."""
        found = self._locate(pfn)
        return found[1] if found is not None and found[0] == lst else None

    # -- freeing --------------------------------------------------------------------------------
    def free_range(self, start, end, node, zone, to_tail=False):
        """:meth:`free_ranges` of the one range ``[start, end)``."""
        self.free_ranges([(start, end)], node, zone, to_tail)

    def free_blocks(self, pfns, nr_pages, node, zone, to_tail=False):
        """:meth:`free_ranges` of ``nr_pages`` pages at each pfn of the array ``pfns``, in turn."""
        size = 1 << (self.max_order - 1)
        if len(pfns) >= PAIRS and nr_pages == size and not (pfns & (size - 1)).any():
            self._free_pairs(pfns, node, zone, to_tail)
        else:
            self.free_ranges([(pfn, pfn + nr_pages) for pfn in pfns.tolist()], node, zone, to_tail)

    def free_ranges(self, ranges, node, zone, to_tail=False):
        """Free each ``[start, end)`` of ``ranges`` in turn, cut into the largest naturally aligned
        blocks, lowest first, as ``__free_pages_memory`` and ``online_pages_range`` cut memory for
        ``__free_pages_core`` (a list of folios is freed one by one the same way). Each block is
        ``__free_one_page``'d: merged with free buddies up to ``MAX_PAGE_ORDER``, then put at the
        head of its list, or at the tail for ``FPI_TO_TAIL`` (``to_tail``) or when
        ``buddy_merge_likely`` finds the buddy of the next order up free.

        The blocks merge one by one in the order given, but the lists take the survivors at the
        end, a run at a time: those put at the head in the reverse order of their freeing, before
        every block listed before, those put at the tail in order, after them, as freeing them one
        at a time would list them; a block merged away within the call never touches the lists.
        The ``MAX_PAGE_ORDER`` blocks of a range cannot merge, so a stretch of them is one entry."""
        top = self.max_order
        added = []  # (order, lo, hi, ascending, tail) in the order freed; None once merged away
        pending = {}  # first pfn of a block of `added` below MAX_PAGE_ORDER -> its index there
        for start, end in ranges:
            pfn = start
            while pfn < end:
                order = min(top, (pfn & -pfn).bit_length() - 1 if pfn else top)
                while pfn + (1 << order) > end:
                    order -= 1
                if order == top:
                    last = pfn + ((end - pfn) >> top << top)
                    # freed one by one at the head they list highest first; at the tail lowest first
                    added.append((top, pfn, last, to_tail, to_tail))
                    pfn = last
                    continue
                block, pfn = pfn, pfn + (1 << order)
                while order < top:
                    buddy = block ^ (1 << order)
                    if not self._take_free(buddy, order, node, zone, added, pending):
                        break
                    block &= ~(1 << order)
                    order += 1
                tail = to_tail
                if not tail and order < top - 1:  # buddy_merge_likely: buddy_pfn & pfn, its buddy one order up
                    higher = (block & ~(1 << order)) ^ (1 << (order + 1))
                    tail = self._is_free(higher, order + 1, node, zone, added, pending)
                if order < top:
                    pending[block] = len(added)
                added.append((order, block, block + (1 << order), True, tail))
        listed = {}
        for entry in added:
            if entry is not None:
                order, lo, hi, ascending, tail = entry
                listed.setdefault((order, tail), []).append((lo, hi, ascending))
        for (order, tail), entries in listed.items():
            self._push((node, zone, order), entries if tail else entries[::-1], tail)

    def _free_pairs(self, starts, node, zone, to_tail):
        """:meth:`free_ranges` of blocks one order below ``MAX_PAGE_ORDER`` (2 MiB HugeTLB folios on
        most arches), found a whole array at a time: each merges with its buddy, if that was freed
        earlier in the call or is on the list, into a ``MAX_PAGE_ORDER`` block, which merges no
        further; a block that stays is never ``buddy_merge_likely``-tested (that asks for an order
        two below the top), so it goes where ``to_tail`` says."""
        import numpy as np

        order = self.max_order - 1
        size = 1 << order
        blocks = np.asarray(starts, dtype=np.int64)
        position = np.arange(len(blocks))
        by_pfn = np.argsort(blocks, kind="stable")
        buddies = blocks ^ size
        k = np.minimum(np.searchsorted(blocks[by_pfn], buddies), len(blocks) - 1)
        partner = np.where(blocks[by_pfn][k] == buddies, by_pfn[k], -1)
        merged = partner >= 0
        merges = merged & (partner < position)  # the later of a pair merges; the earlier leaves no entry
        lst = (node, zone, order)
        for i in np.flatnonzero(~merged).tolist():  # a buddy freed before the call, if it is on the list
            key = self._free_block(int(buddies[i]), lst)
            if key is not None:
                self._cut(lst, key, int(buddies[i]), int(buddies[i]) + size)
                merges[i] = merged[i] = True
        stays = ~merged
        listed = []  # (order, first pfns in the order freed)
        if stays.any():
            listed.append((order, blocks[stays]))
        if merges.any():
            listed.append((order + 1, blocks[merges] & ~size))
        for block_order, firsts in listed:
            span = 1 << block_order
            in_list_order = (firsts if to_tail else firsts[::-1]).tolist()
            self._push((node, zone, block_order), ((lo, lo + span, True) for lo in in_list_order), to_tail)

    def _is_free(self, pfn, order, node, zone, added, pending):
        """Is the block of ``order`` at ``pfn`` free: freed earlier in this call, or on its list?"""
        index = pending.get(pfn)
        if index is not None:
            return added[index][0] == order
        return self._free_block(pfn, (node, zone, order)) is not None

    def _take_free(self, pfn, order, node, zone, added, pending):
        """Take the free block of ``order`` at ``pfn`` (a buddy to merge with) off the lists, or out
        of the blocks freed earlier in this call. False when there is none."""
        index = pending.get(pfn)
        if index is not None:
            if added[index][0] != order:
                return False
            added[index] = None
            del pending[pfn]
            return True
        key = self._free_block(pfn, (node, zone, order))
        if key is None:
            return False
        self._cut((node, zone, order), key, pfn, pfn + (1 << order))
        return True

    # -- allocation -----------------------------------------------------------------------------
    def _smallest(self, order, node, zone):
        """The lowest order from ``order`` up whose list has a block, and its head run's key."""
        mask = self._orders.get((node, zone), 0) >> order
        if not mask:
            return None, None
        k = order + (mask & -mask).bit_length() - 1
        return k, self._head((node, zone, k))

    def _take_head(self, lst, key, count):
        """Take the first ``count`` blocks of run ``key`` (the head of ``lst``): ``(first, step)``,
        the blocks being ``first + i * step`` in list order."""
        start, end, ascending, first = self._runs[lst][key]
        size = count << lst[2]
        if ascending:
            taken, rest = (start, 1 << lst[2]), (start + size, end)
        else:
            taken, rest = (end - (1 << lst[2]), -(1 << lst[2])), (start, end - size)
        self._set_run(lst, key, (rest[0], rest[1], ascending, first + count) if rest[0] < rest[1] else None)
        return taken

    def alloc(self, order, node, zone):
        """One block of ``order`` (:meth:`alloc_many`): its first pfn, or None."""
        pfns = self.alloc_many(1, order, node, zone)
        return int(pfns[0]) if len(pfns) else None

    def alloc_many(self, count, order, node, zone):
        """Up to ``count`` successive ``__rmqueue_smallest`` calls of ``order`` in one zone: each the
        head block of the smallest order that has one, split by ``expand`` (the upper halves to the
        heads of the lower lists). The same blocks in the same order, a run at a time: when the
        smallest list that has a block is of order k above ``order``, the lists in between are
        empty, so allocating that block's 2**(k-order) pieces one by one takes them lowest first
        and leaves the lists as they were (whole blocks go in one step), and allocating only the
        first n of them leaves the rest's largest aligned blocks, one on each list in between.
        Returns an array of first pfns."""
        parts, left = [], count  # (first block, step between blocks, blocks, pieces per block)
        while left:
            k, key = self._smallest(order, node, zone)
            if k is None:
                break
            lst = (node, zone, k)
            start, end, _, _ = self._runs[lst][key]
            per = 1 << (k - order)
            whole = min(left // per, (end - start) >> k)
            if whole:
                first, step = self._take_head(lst, key, whole)
                parts.append((first, step, whole, per))
                left -= whole * per
                continue
            block, _ = self._take_head(lst, key, 1)
            parts.append((block, 1 << order, left, 1))
            pfn = block + (left << order)
            while pfn < block + (1 << k):  # what is left of the block, as expand() leaves it
                j = (pfn & -pfn).bit_length() - 1
                self._push((node, zone, j), [(pfn, pfn + (1 << j), True)], False)
                pfn += 1 << j
            left = 0
        return _pfns(parts, order)

    def take(self, start, end):
        """Take every free page of ``[start, end)`` off the lists (isolated for offlining, pinned,
        or ``alloc_contig_range``); the parts of blocks that stick out go back at the heads."""
        while True:
            starts = self._starts
            i = max(starts.bisect_right(start) - 1, 0)
            found = None
            for first in starts.islice(i, i + 2):  # the run holding start, or the next one
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

    def blocks_available(self, order, node, zone) -> int:
        """How many blocks of ``order`` the lists of ``node`` and ``zone`` can hand out (splitting
        the larger blocks): what successive allocations get before one finds nothing."""
        total = 0
        for o in range(order, self.max_order + 1):
            for lo, hi, *_ in self._runs.get((node, zone, o), {}).values():
                total += (hi - lo) >> order
        return total

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


def _join(before, after, size):
    """One stretch ``(lo, hi, ascending)`` for two stretches of blocks of ``size`` listed one
    after the other, or None when the second does not continue the first."""
    lo1, hi1, asc1 = before
    lo2, hi2, asc2 = after
    single1, single2 = hi1 - lo1 == size, hi2 - lo2 == size
    if hi1 == lo2 and (asc1 or single1) and (asc2 or single2):
        return lo1, hi2, True
    if lo1 == hi2 and not (asc1 and not single1) and not (asc2 and not single2):
        return lo2, hi1, False
    return None


def _pfns(parts, order):
    """The first pfns of the pieces of ``order`` that ``parts`` describe, ``(first block, step
    between blocks, blocks, pieces per block)`` each, in order: an array (built in Python when it
    is short, where numpy's per-call cost would dominate)."""
    import numpy as np

    piece = 1 << order
    if sum(blocks * per for _, _, blocks, per in parts) <= SHORT:
        out = []
        for first, step, blocks, per in parts:
            if per == 1:
                out.extend(range(first, first + blocks * step, step))
            else:
                for block in range(first, first + blocks * step, step):
                    out.extend(range(block, block + per * piece, piece))
        return np.array(out, dtype=np.int64)
    arrays = [(first + np.arange(blocks, dtype=np.int64)[:, None] * step
               + np.arange(0, per * piece, piece, dtype=np.int64)[None, :]).ravel()
              for first, step, blocks, per in parts]
    return np.concatenate(arrays)
