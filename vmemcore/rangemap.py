"""A map from integer ranges to values, stored as extents: the scale tool of the engine.

Frames (by pfn), sections (by number) and free memory are described by runs of equal values, so a
64 TiB machine costs a handful of extents, and an operation costs the extents it touches.

The extents are kept in sorted blocks of at most ``2 * BLOCK`` (a chunked sorted list): finding an
extent is two bisections and changing one splices a single small block, so an update costs
O(log n + BLOCK) however many extents the map holds (a map of a million extents, as a pool of
HugeTLB folios with their vmemmap kept apart makes, is updated as fast as one of ten).
"""

from bisect import bisect_left, bisect_right

BLOCK = 256  # extents per block when blocks are (re)built; a block is split past twice this


class RangeMap:
    """Disjoint half-open extents ``[start, end) -> value``; gaps have no value.

    Adjacent extents with equal values are merged. ``totals`` keeps the length per value. Changes
    are recorded in ``journal`` (if given) so a transaction can undo them.
    """

    def __init__(self, journal=None):
        self._starts = []  # blocks of extent starts, each sorted, the blocks in order
        self._ends = []
        self._values = []
        self._mins = []  # the first start of each block
        self.totals = {}
        self.journal = journal

    def __len__(self):
        return sum(map(len, self._starts))

    # -- positions: (block, index in the block) -------------------------------------------------
    # A position is canonical: its index lies inside its block, except at the very end (the last
    # block, its length), so that positions compare as the extents they point at.
    def _after(self, key):
        """Position of the first extent starting after ``key``."""
        return self._position(max(bisect_right(self._mins, key) - 1, 0), key, bisect_right)

    def _at_or_after(self, key):
        """Position of the first extent starting at or after ``key``."""
        return self._position(max(bisect_left(self._mins, key) - 1, 0), key, bisect_left)

    def _position(self, b, key, bisect):
        if not self._mins:
            return 0, 0
        i = bisect(self._starts[b], key)
        if i == len(self._starts[b]) and b + 1 < len(self._mins):
            return b + 1, 0
        return b, i

    def _before(self, b, i):
        """The position before ``(b, i)``, or None at the very first extent."""
        if i > 0:
            return b, i - 1
        if b > 0:
            return b - 1, len(self._starts[b - 1]) - 1
        return None

    def _slice(self, first, last):
        """``(start, end, value)`` of the extents from position ``first`` up to ``last`` (excluded)."""
        (b1, i1), (b2, i2) = first, last
        if b1 == b2:
            return list(zip(self._starts[b1][i1:i2], self._ends[b1][i1:i2], self._values[b1][i1:i2])) if self._starts else []
        out = []
        for b in range(b1, min(b2, len(self._starts) - 1) + 1):
            lo = i1 if b == b1 else 0
            hi = i2 if b == b2 else len(self._starts[b])
            out.extend(zip(self._starts[b][lo:hi], self._ends[b][lo:hi], self._values[b][lo:hi]))
        return out

    # -- reading --------------------------------------------------------------------------------
    def get(self, key, default=None):
        b = bisect_right(self._mins, key) - 1
        if b >= 0:
            i = bisect_right(self._starts[b], key) - 1
            if key < self._ends[b][i]:
                return self._values[b][i]
        return default

    def extent(self, key):
        """``(start, end, value)`` of the extent holding ``key``, or None."""
        b = bisect_right(self._mins, key) - 1
        if b >= 0:
            i = bisect_right(self._starts[b], key) - 1
            if key < self._ends[b][i]:
                return self._starts[b][i], self._ends[b][i], self._values[b][i]
        return None

    def items(self, start=None, end=None):
        """Extents overlapping ``[start, end)``, clipped to it, in order."""
        if start is None:
            return [e for b in range(len(self._starts)) for e in zip(self._starts[b], self._ends[b], self._values[b])]
        b = bisect_right(self._mins, start) - 1
        if b >= 0:  # the common case first: one extent holds the whole range
            i = bisect_right(self._starts[b], start) - 1
            if end <= self._ends[b][i]:
                return [(start, end, self._values[b][i])] if start < end else []
        b, i = self._after(start)
        first = self._before(b, i)
        if first is None or self._ends[first[0]][first[1]] <= start:
            first = b, i
        out = []
        for s, e, v in self._slice(first, self._at_or_after(end)):
            s, e = max(s, start), min(e, end)
            if s < e:
                out.append((s, e, v))
        return out

    def items_reversed(self, value=None):
        """Extents from the highest down (only those holding ``value``, if given), lazily. Each
        step looks the next extent up afresh, so the map may change behind the one just yielded."""
        key = None
        while True:
            position = self._before(*self._at_or_after(key)) if key is not None else self._last()
            if position is None:
                return
            b, i = position
            extent = self._starts[b][i], self._ends[b][i], self._values[b][i]
            key = extent[0]
            if value is None or extent[2] == value:
                yield extent

    def _last(self):
        return (len(self._starts) - 1, len(self._starts[-1]) - 1) if self._starts else None

    def covered(self, start, end) -> int:
        """How many keys of ``[start, end)`` have a value."""
        return sum(e - s for s, e, _ in self.items(start, end))

    # -- writing --------------------------------------------------------------------------------
    def set(self, start, end, value):
        """Give ``[start, end)`` the value ``value`` (None removes it)."""
        if start >= end:
            return
        old = self._assign(start, end, [(start, end, value)] if value is not None else [])
        if self.journal is not None and self.journal.active:
            self.journal.record(self._assign, start, end, old)

    def set_many(self, runs):
        """:meth:`set` of each ``(start, end, value)`` of ``runs`` (sorted, disjoint; values, not
        None), as one change: what lies between them is kept. Costs the runs and the extents
        between the first and the last, not a change per run."""
        if len(runs) < 2:
            for start, end, value in runs:
                self.set(start, end, value)
            return
        start, end = runs[0][0], runs[-1][1]
        between = self.items(start, end)  # the extents the runs fall among, clipped
        segments, done, j = [], start, 0  # done: where the segments built so far end
        for lo, hi, value in runs:
            while j < len(between) and between[j][0] < lo:  # what lies in the gap before this run
                s, e, kept = between[j]
                if max(s, done) < min(e, lo):
                    segments.append((max(s, done), min(e, lo), kept))
                if e > lo:
                    break
                j += 1
            segments.append((lo, hi, value))
            done = hi
            while j < len(between) and between[j][1] <= hi:
                j += 1
        old = self._assign(start, end, segments)
        if self.journal is not None and self.journal.active:
            self.journal.record(self._assign, start, end, old)

    def _window(self, start, end):
        """Positions of the first and past the last extent overlapping ``[start, end)`` or touching
        it (to merge with): within one block when they can be, found with two bisections."""
        mins = self._mins
        b = bisect_right(mins, start) - 1
        if b >= 0:
            starts = self._starts[b]
            i = bisect_left(starts, start)
            if i:  # the extent before the window's first is in this block
                lo = i - 1 if self._ends[b][i - 1] >= start else i
                hi = bisect_right(starts, end, lo)
                if hi < len(starts) or b + 1 == len(mins) or mins[b + 1] > end:
                    return (b, lo), (b, hi)
        b, i = self._at_or_after(start)
        first = self._before(b, i)
        if first is None or self._ends[first[0]][first[1]] < start:
            first = b, i
        return first, self._after(end)

    def _assign(self, start, end, segments):
        """Replace whatever ``[start, end)`` holds by ``segments`` (sorted, inside it); returns
        what it held, as ``items(start, end)`` would have."""
        first, last = self._window(start, end)
        window = self._slice(first, last)
        totals = self.totals
        new, old, right = [], [], []
        for s, e, v in window:  # each ends at or after start and starts at or before end
            if s < start:
                new.append((s, start, v))
            if e > end:
                right.append((end, e, v))
            lo, hi = s if s > start else start, e if e < end else end
            if lo < hi:
                totals[v] -= hi - lo
                old.append((lo, hi, v))
        for s, e, v in segments:
            totals[v] = totals.get(v, 0) + e - s
        new.extend(segments)
        new.extend(right)
        for _, _, v in old:
            if not totals.get(v, 1):
                del totals[v]
        merged = []
        for seg in new:
            if merged and merged[-1][1] == seg[0] and merged[-1][2] == seg[2]:
                merged[-1] = (merged[-1][0], seg[1], seg[2])
            elif seg[0] < seg[1]:
                merged.append(seg)
        self._replace(first, last, merged)
        return old

    def _replace(self, first, last, extents):
        """Put ``extents`` in place of the extents from position ``first`` up to ``last``."""
        starts, ends, values, mins = self._starts, self._ends, self._values, self._mins
        (b1, i1), (b2, i2) = first, last
        if not starts:
            b1 = b2 = i1 = i2 = 0
            starts.append([])
            ends.append([])
            values.append([])
            mins.append(0)
        elif b2 >= len(starts):
            b2, i2 = len(starts) - 1, len(starts[-1])
        new_s, new_e, new_v = zip(*extents) if extents else ((), (), ())
        if b1 == b2 and len(starts[b1]) - (i2 - i1) + len(extents) <= 2 * BLOCK:
            starts[b1][i1:i2] = new_s
            ends[b1][i1:i2] = new_e
            values[b1][i1:i2] = new_v
            if starts[b1]:
                mins[b1] = starts[b1][0]
            else:
                del starts[b1], ends[b1], values[b1], mins[b1]
            return
        # the window spans blocks or overfills one: rebuild the blocks it touches
        all_s = starts[b1][:i1] + list(new_s) + starts[b2][i2:]
        all_e = ends[b1][:i1] + list(new_e) + ends[b2][i2:]
        all_v = values[b1][:i1] + list(new_v) + values[b2][i2:]
        cuts = range(0, len(all_s), BLOCK)
        starts[b1:b2 + 1] = [all_s[k:k + BLOCK] for k in cuts]
        ends[b1:b2 + 1] = [all_e[k:k + BLOCK] for k in cuts]
        values[b1:b2 + 1] = [all_v[k:k + BLOCK] for k in cuts]
        mins[b1:b2 + 1] = [all_s[k] for k in cuts]
