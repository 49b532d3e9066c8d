"""A map from integer ranges to values, stored as extents: the scale tool of the engine.

Frames (by pfn), sections (by number) and free memory are described by runs of equal values, so a
64 TiB machine costs a handful of extents, and an operation costs the extents it touches.
"""

from bisect import bisect_right


class RangeMap:
    """Disjoint half-open extents ``[start, end) -> value``; gaps have no value.

    Adjacent extents with equal values are merged. ``totals`` keeps the length per value. Changes
    are recorded in ``journal`` (if given) so a transaction can undo them.
    """

    def __init__(self, journal=None):
        self._starts = []
        self._ends = []
        self._values = []
        self.totals = {}
        self.journal = journal

    def __len__(self):
        return len(self._starts)

    def get(self, key, default=None):
        i = bisect_right(self._starts, key) - 1
        if i >= 0 and key < self._ends[i]:
            return self._values[i]
        return default

    def extent(self, key):
        """``(start, end, value)`` of the extent holding ``key``, or None."""
        i = bisect_right(self._starts, key) - 1
        if i >= 0 and key < self._ends[i]:
            return self._starts[i], self._ends[i], self._values[i]
        return None

    def items(self, start=None, end=None):
        """Extents overlapping ``[start, end)``, clipped to it, in order."""
        if start is None:
            return list(zip(self._starts, self._ends, self._values))
        i = max(bisect_right(self._starts, start) - 1, 0)
        out = []
        while i < len(self._starts) and self._starts[i] < end:
            s, e = max(self._starts[i], start), min(self._ends[i], end)
            if s < e:
                out.append((s, e, self._values[i]))
            i += 1
        return out

    def items_reversed(self, value=None):
        """Extents from the highest down (only those holding ``value``, if given), lazily."""
        for i in range(len(self._starts) - 1, -1, -1):
            if value is None or self._values[i] == value:
                yield self._starts[i], self._ends[i], self._values[i]

    def covered(self, start, end) -> int:
        """How many keys of ``[start, end)`` have a value."""
        return sum(e - s for s, e, _ in self.items(start, end))

    def set(self, start, end, value):
        """Give ``[start, end)`` the value ``value`` (None removes it)."""
        if start >= end:
            return
        old = self.items(start, end)
        self._assign(start, end, [(start, end, value)] if value is not None else [])
        if self.journal is not None and self.journal.active:
            self.journal.record(lambda: self._restore(start, end, old))

    def _restore(self, start, end, segments):
        self._assign(start, end, segments)

    def _assign(self, start, end, segments):
        starts, ends, values = self._starts, self._ends, self._values
        lo = max(bisect_right(starts, start) - 1, 0)
        while lo < len(starts) and ends[lo] <= start:
            lo += 1
        hi = lo
        while hi < len(starts) and starts[hi] < end:
            hi += 1
        new = []
        if lo < hi and starts[lo] < start:
            new.append((starts[lo], start, values[lo]))
        new.extend(segments)
        if lo < hi and ends[hi - 1] > end:
            new.append((end, ends[hi - 1], values[hi - 1]))
        for s, e, v in zip(starts[lo:hi], ends[lo:hi], values[lo:hi]):
            self.totals[v] -= min(e, end) - max(s, start)
        for s, e, v in segments:
            self.totals[v] = self.totals.get(v, 0) + e - s
        # merge with the neighbours outside the replaced window
        if lo > 0 and new and ends[lo - 1] == new[0][0] and values[lo - 1] == new[0][2]:
            lo -= 1
            new[0] = (starts[lo], new[0][1], new[0][2])
        if hi < len(starts) and new and starts[hi] == new[-1][1] and values[hi] == new[-1][2]:
            new[-1] = (new[-1][0], ends[hi], new[-1][2])
            hi += 1
        merged = []
        for seg in new:
            if merged and merged[-1][1] == seg[0] and merged[-1][2] == seg[2]:
                merged[-1] = (merged[-1][0], seg[1], seg[2])
            elif seg[0] < seg[1]:
                merged.append(seg)
        starts[lo:hi] = [s for s, _, _ in merged]
        ends[lo:hi] = [e for _, e, _ in merged]
        values[lo:hi] = [v for _, _, v in merged]
        for v in [v for v, n in self.totals.items() if n == 0]:
            del self.totals[v]
