"""Generic N-level kernel page tables, driven by a :class:`PageTableGeometry`.

Each table is a real structure: an array of entries (a pfn and flags) whose frame was allocated
from simulated memory, so page-table overhead is counted as the kernel counts it. Entries are
numpy arrays written a run at a time, so mapping a whole table costs one write, and leaves may sit
at any level the geometry allows. Every change is journaled for rollback.
"""

import numpy as np

from .errors import BadRequest, SimulatorLimit
from .archtypes import CONT, LEAF, PRESENT, RDONLY  # noqa: F401  (the entry bits, for the engine's modules)
from .mapping import VmemmapMapping

NO_PFN = -1


class Table:
    """One page table: ``nr`` entries of (pfn, flags), child tables for non-leaf entries."""

    __slots__ = ("depth", "level", "pfn", "base", "pfns", "flags", "children", "nr_present")

    def __init__(self, depth, level, pfn, base):
        self.depth = depth  # index into geometry.levels
        self.level = level
        self.pfn = pfn  # the frame holding this table (None for the static top table)
        self.base = base  # virtual address mapped by entry 0
        self.pfns = np.full(level.entries, NO_PFN, dtype=np.int64)
        self.flags = np.zeros(level.entries, dtype=np.uint8)
        self.children = {}
        self.nr_present = 0

    def index(self, vaddr) -> int:
        return (vaddr - self.base) >> self.level.shift

    def va(self, index) -> int:
        return self.base + (index << self.level.shift)

    def is_leaf(self, index) -> bool:
        return self.flags[index] & (PRESENT | LEAF) == PRESENT | LEAF

    def present(self, index) -> bool:
        return bool(self.flags[index] & PRESENT)

    @property
    def empty(self) -> bool:
        return self.nr_present == 0

    def __repr__(self):
        return f"<Table {self.level.name} @{self.base:#x} pfn={self.pfn} present={self.nr_present}>"


class PageTable(VmemmapMapping):
    """The kernel page table that maps the vmemmap (the static top table preexists); as the
    vmemmap's :class:`~vmemcore.mapping.VmemmapMapping` it answers from its leaves."""

    label = "page table"

    def __init__(self, geometry, journal=None, va_base=0):
        self.geometry = geometry
        self.page_shift = geometry.page_shift
        self.journal = journal
        top = geometry.levels[0]
        span = top.shift + top.bits
        self.top = Table(0, top, None, va_base >> span << span)
        self.tables = {level.name: 0 for level in geometry.levels[1:]}  # allocated tables per level
        self._cursor = (None, None, None)  # (depth, base, table): walks along a range hit the same table
        self.observer = None  # a LiveEntryChecker that sees every write (vmemcore.live_entries)
        self.cont_tables = set()  # tables that have held an entry with the contiguous bit

    def _record(self, undo):
        if self.journal is not None and self.journal.active:
            self.journal.record(undo)

    # -- walking --------------------------------------------------------------------------------
    def walk(self, vaddr, depth, alloc=None):
        """The table at ``depth`` whose span holds ``vaddr``.

        Missing tables are created with ``alloc(level)`` (which returns the new table's pfn or raises
        :class:`OutOfMemory`); without ``alloc`` a missing table gives None. A leaf above ``depth``
        also gives None.
        """
        span_shift = self.geometry.levels[depth].shift + self.geometry.levels[depth].bits
        base = vaddr >> span_shift << span_shift
        cdepth, cbase, ctable = self._cursor
        if cdepth == depth and cbase == base:
            return ctable
        table = self.top
        while table.depth < depth:
            i = table.index(vaddr)
            child = table.children.get(i)
            if child is None:
                if table.flags[i] & PRESENT or alloc is None:
                    return None
                child = self._new_table(table, i, alloc)
            table = child
        self._cursor = (depth, base, table)
        return table

    def _new_table(self, parent, index, alloc):
        level = self.geometry.levels[parent.depth + 1]
        pfn = alloc(level)
        child = Table(parent.depth + 1, level, pfn, parent.va(index))
        self.attach(parent, index, child)
        return child

    def attach(self, parent, index, child, function=None):
        """Make entry ``index`` of ``parent`` point to ``child`` (``pmd_populate`` and friends)."""
        if parent.flags[index] & PRESENT:
            raise BadRequest(f"entry {index} of {parent} is already present")
        if sum(self.tables.values()) >= SimulatorLimit.MAX_TABLES:
            raise SimulatorLimit(f"a {child.level.name} table beyond the {SimulatorLimit.MAX_TABLES:,} page tables "
                                 "the simulator keeps (each holds its entries in its own memory)")
        if self.observer is not None:
            self.observer.attach(parent, index, child, function)
        parent.children[index] = child
        parent.pfns[index] = child.pfn if child.pfn is not None else NO_PFN
        parent.flags[index] = PRESENT
        parent.nr_present += 1
        self.tables[child.level.name] += 1
        self._record(lambda: self._detach(parent, index))

    def detach(self, parent, index):
        """Clear the entry pointing to a child table and return that table (its frame is the caller's;
        freeing it flushes the walk caches, as ``free_empty_tables`` and ``free_pagetable`` do)."""
        child = parent.children[index]
        self._detach(parent, index)
        self._record(lambda: self.attach_restore(parent, index, child))
        return child

    def _detach(self, parent, index):
        child = parent.children.pop(index)
        parent.pfns[index] = NO_PFN
        parent.flags[index] = 0
        parent.nr_present -= 1
        self.tables[child.level.name] -= 1
        self._cursor = (None, None, None)

    def attach_restore(self, parent, index, child):
        parent.children[index] = child
        parent.pfns[index] = child.pfn if child.pfn is not None else NO_PFN
        parent.flags[index] = PRESENT
        parent.nr_present += 1
        self.tables[child.level.name] += 1

    # -- entries --------------------------------------------------------------------------------
    def set_leaves(self, table, index, pfns, flags=0, function=None, same=None, old=None):
        """Entries ``index`` (a slice or an index array) of ``table`` become leaves mapping ``pfns``
        with ``flags`` (one value, or one per entry); ``function``: the kernel function writing;
        ``same``: which entries' new page holds what the old one holds (for the checker); ``old``:
        a copy of the entries' pfns that the caller made and leaves unchanged (the journal keeps
        it rather than a copy of its own)."""
        if not table.level.leaf:
            raise BadRequest(f"level {table.level.name} cannot hold leaves on this architecture")
        if isinstance(flags, int):
            flags |= PRESENT | LEAF
            cont = flags & CONT
        else:
            flags = flags | np.uint8(PRESENT | LEAF)
            cont = np.any(flags & CONT)
        if self.observer is not None:
            self.observer.write(table, index, pfns, flags, function, same)
        if cont:
            self.cont_tables.add(table)
        self._save(table, index, old)
        old_present = int(np.count_nonzero(table.flags[index] & PRESENT))
        table.pfns[index] = pfns
        table.flags[index] = flags
        table.nr_present += len(table.flags[index]) - old_present

    def set_flags(self, table, index, set_bits=0, clear_bits=0, function=None):
        """Set and clear flag bits of leaf entries ``index`` (e.g. make them read-only)."""
        flags = (table.flags[index] | np.uint8(set_bits)) & np.uint8(0xFF ^ clear_bits)
        if self.observer is not None:
            self.observer.write(table, index, table.pfns[index], flags, function)
        if set_bits & CONT:
            self.cont_tables.add(table)
        self._save(table, index)
        table.flags[index] = flags

    def clear_leaves(self, table, index, function=None):
        """Entries ``index`` (leaves or none, never table pointers) become none."""
        flags = table.flags[index]
        if np.any((flags & (PRESENT | LEAF)) == PRESENT):
            raise BadRequest(f"clear_leaves over a table entry of {table}")
        if self.observer is not None:
            self.observer.clear(table, index)
        self._save(table, index)
        table.nr_present -= int(np.count_nonzero(flags & PRESENT))
        table.pfns[index] = NO_PFN
        table.flags[index] = 0

    def _save(self, table, index, pfns=None):
        if self.journal is not None and self.journal.active:
            pfns = table.pfns[index].copy() if pfns is None else pfns
            flags, present = table.flags[index].copy(), table.nr_present

            def undo():
                table.pfns[index] = pfns
                table.flags[index] = flags
                table.nr_present = present

            self.journal.record(undo)

    def split_leaf(self, table, index, alloc, function=None, between=None):
        """Replace the leaf at ``table[index]`` by a table of the next level whose entries map the
        same memory with the same flags (``vmemmap_split_pmd`` and friends); returns the new table.
        With ``between`` it is a break-before-make: the leaf is cleared, ``between()`` runs (a TLB
        flush), then the table is installed; without, the leaf is replaced in place."""
        if not table.is_leaf(index):
            raise BadRequest(f"entry {index} of {table} is not a leaf")
        if table.depth + 1 >= len(self.geometry.levels):
            raise BadRequest("a PTE cannot be split")
        pfn, flags = int(table.pfns[index]), int(table.flags[index])
        level = self.geometry.levels[table.depth + 1]
        child = Table(table.depth + 1, level, alloc(level), table.va(index))
        step = level.entry_span >> self.geometry.page_shift
        child.pfns[:] = pfn + np.arange(level.entries, dtype=np.int64) * step
        child.flags[:] = flags
        child.nr_present = level.entries
        if between is not None:
            self.clear_leaves(table, slice(index, index + 1), function)
            between()
            self.attach(table, index, child, function)
            return child
        observer, self.observer = self.observer, None
        try:
            if observer is not None:
                observer.split(table, index, child.pfn, function)
            self.clear_leaves(table, slice(index, index + 1))
            self.attach(table, index, child)
        finally:
            self.observer = observer
        return child

    # -- queries --------------------------------------------------------------------------------
    def lookup(self, vaddr):
        """``(table, index)`` of the leaf mapping ``vaddr``, or None if it is not mapped."""
        table = self.top
        if not table.base <= vaddr < table.base + table.level.table_span:
            return None  # outside what the page table maps at all
        while True:
            i = table.index(vaddr)
            if not table.flags[i] & PRESENT:
                return None
            if table.flags[i] & LEAF:
                return table, i
            table = table.children[i]

    def translate(self, vaddr):
        """Physical address ``vaddr`` maps to, or None."""
        hit = self.lookup(vaddr)
        if hit is None:
            return None
        table, i = hit
        offset = vaddr & (table.level.entry_span - 1)
        return (int(table.pfns[i]) << self.geometry.page_shift) + offset

    def read_only(self, vaddr):
        hit = self.lookup(vaddr)
        return None if hit is None else bool(hit[0].flags[hit[1]] & RDONLY)

    def entry(self, vaddr):
        hit = self.lookup(vaddr)
        if hit is None:
            return None
        table, i = hit
        frame = int(table.pfns[i]) + ((vaddr - table.va(i)) >> self.geometry.page_shift)
        return table.level.name, bool(table.flags[i] & RDONLY), frame

    def leaf_extents(self, start, end):
        for addr, level, pfns in self.leaf_runs(start, end):
            yield addr, level.entry_span, pfns

    def leaf_spans(self) -> dict:
        spans = {}
        for table in self.all_tables():
            n = int(np.count_nonzero((table.flags & (PRESENT | LEAF)) == (PRESENT | LEAF)))
            if n:
                spans[table.level.entry_span] = spans.get(table.level.entry_span, 0) + n
        return spans

    def leaf_frames(self):
        frames = []
        for table in self.all_tables():
            leaves = np.flatnonzero((table.flags & (PRESENT | LEAF)) == (PRESENT | LEAF))
            if len(leaves):
                frames.append((table.pfns[leaves], table.level.entry_span >> self.geometry.page_shift))
        return frames

    def tables_in(self, start, end, depth=None, table=None):
        """Yield ``(table, lo, hi)`` for every table reached in ``[start, end)``, leaves-first order
        of addresses; ``lo..hi`` is the index range of that table inside the range."""
        table = table or self.top
        lo = max(table.index(max(start, table.base)), 0)
        last = min(end, table.base + table.level.table_span) - 1
        hi = table.index(last) + 1
        yield table, lo, hi
        children = table.children
        if hi - lo < len(children):  # fewer entries in the range than children: look each one up
            reached = [i for i in range(lo, hi) if i in children]
        else:
            reached = sorted(i for i in children if lo <= i < hi)
        for i in reached:
            yield from self.tables_in(start, end, table=children[i])

    def leaf_runs(self, start, end):
        """Yield ``(vaddr, level, pfns)`` for each table's present leaves in ``[start, end)``:
        ``pfns`` is the array of backing pfns of consecutive leaf entries starting at ``vaddr``."""
        for table, lo, hi in self.tables_in(start, end):
            flags = table.flags[lo:hi]
            is_leaf = (flags & (PRESENT | LEAF)) == (PRESENT | LEAF)
            if not is_leaf.any():
                continue
            edges = np.flatnonzero(np.diff(np.concatenate(([0], is_leaf.view(np.int8), [0]))))
            for a, b in zip(edges[::2], edges[1::2]):
                yield table.va(int(lo + a)), table.level, table.pfns[lo + a: lo + b]

    def contiguous_spans(self) -> dict:
        """Spans of entries with the contiguous bit, per level name."""
        spans = {}
        for table in self.cont_tables:
            n = table.level.contiguous
            if n > 1:
                count = int(np.count_nonzero((table.flags.reshape(-1, n)[:, 0] & CONT) != 0))
                spans[table.level.name] = spans.get(table.level.name, 0) + count
        return spans

    def all_tables(self):
        stack = [self.top]
        while stack:
            table = stack.pop()
            yield table
            stack.extend(table.children.values())


def table_index_range(table, start, end):
    """Index range ``lo, hi`` of ``table`` that ``[start, end)`` touches."""
    lo = max(table.index(max(start, table.base)), 0)
    hi = table.index(min(end, table.base + table.level.table_span) - 1) + 1
    return lo, hi

