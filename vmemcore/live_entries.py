"""Live page-table entries: what may change in a valid entry without break-before-make, a checker
that watches every write of the vmemmap page table against that rule, and the ways HVO can write
live entries.

An entry other CPUs may be walking is *live*. x86 lets the kernel rewrite one in place. arm64 lets
only permission and software bits change (``pgattr_change_is_safe`` in ``arch/arm64/mm/mmu.c``):
a new output address, or a block replaced by a table, needs break-before-make — write the entry
invalid, flush the TLB, write the new entry — and an entry with the contiguous bit may not change
at all. s390 may not replace a valid entry by another valid one (it goes through invalid with
IPTE/IDTE or CRDTE). The plugin states the rule (``vmemcore_live_entry_rule``).

HVO's remap (``vmemmap_remap_pte``, ``vmemmap_split_pmd``) rewrites live entries; that is why
arm64 lost HVO in 6.3 (060a2c92d1b6) and s390 in 6.18 (64e2f60f355e). A
:class:`RemapStrategy` says how HVO writes them: as the kernel does (``plain``), with
break-before-make while the other CPUs are paused (``bbm-paused``), or relying on arm64's
FEAT_BBM level 2 (``bbml2``: a block may become a table of the same memory in place, and a PTE
may move to a page whose contents are identical). See docs/live-entries.md.
"""

import contextlib

import attrs
import numpy as np

from .archtypes import ALL_FLAGS, LiveEntryRule, RemapStrategy
from .errors import VmemcoreError
from .pagetable import CONT, LEAF, PRESENT, RDONLY

WRITE = "a page-table write"  # the function of a write that names none


@attrs.frozen
class Violation:
    """One write that changed a live entry against the arch's rule."""

    operation: str  # the machine operation (a scenario step)
    function: str  # the kernel function whose write it is
    level: str
    vaddr: int
    old: tuple  # (pfn, flags) before
    new: tuple  # (pfn, flags) after
    why: str

    def __str__(self):
        return (f"{self.operation}: {self.function} changed live {self.level} entry at {self.vaddr:#x} "
                f"from {_entry(*self.old)} to {_entry(*self.new)}: {self.why}")


def _entry(pfn, flags):
    if not flags & PRESENT:
        return "none"
    if not flags & LEAF:
        return f"table at pfn {pfn:#x}"
    bits = ["RO" if flags & RDONLY else "RW"] + (["CONT"] if flags & CONT else [])
    return f"pfn {pfn:#x} {' '.join(bits)}"


class BrokenContiguousSpan(VmemcoreError):
    """A span of entries with the contiguous bit breaks the architecture's rule."""


def check_contiguous(pagetable):
    """Every span holding an entry with the contiguous bit must have all its entries valid leaves
    with the bit, mapping physically contiguous memory naturally aligned to the span, with
    identical attributes (arm64 ``CONT_PTES``/``CONT_PMDS``, ``contpte_convert``'s invariant).
    Raises :class:`BrokenContiguousSpan` naming the first span that does not."""
    page_shift = pagetable.geometry.page_shift
    for table in sorted(pagetable.cont_tables, key=lambda t: (t.depth, t.base)):
        n = table.level.contiguous
        flags = table.flags.reshape(-1, n)
        spans = np.flatnonzero((flags & CONT).any(axis=1))
        if not len(spans):
            continue
        if n == 1:
            raise BrokenContiguousSpan(f"{table.level.name} entry at {table.va(int(spans[0])):#x} has the contiguous "
                                       f"bit, but the {table.level.name} level has no contiguous spans")
        f, p = flags[spans], table.pfns.reshape(-1, n)[spans]
        step = table.level.entry_span >> page_shift
        whole = CONT | PRESENT | LEAF
        problems = (
            ("an entry is not a valid leaf with the contiguous bit", ~((f & whole) == whole).all(axis=1)),
            ("the entries' attributes differ", ~(f == f[:, :1]).all(axis=1)),
            ("the entries do not map physically contiguous memory", ~(p == p[:, :1] + np.arange(n) * step).all(axis=1)),
            ("the memory is not aligned to the span", p[:, 0] % (n * step) != 0),
        )
        for why, bad in problems:
            if bad.any():
                k = int(np.argmax(bad))
                start = table.va(int(spans[k]) * n)
                raise BrokenContiguousSpan(f"contiguous span of {n} {table.level.name} entries at {start:#x}: {why}")


class LiveEntryChecker:
    """Watches every write of a machine's page table against the arch's :class:`LiveEntryRule`.

    Besides in-place changes it catches a break not flushed before the make: an entry cleared
    and written again with no TLB flush of its address in between. ``violations`` keeps the first
    ``keep`` in detail; ``count`` counts them all. Diagnostics, not machine state: a rolled-back
    operation keeps the violations its writes made.
    """

    def __init__(self, rule: LiveEntryRule, keep=1000):
        self.rule = rule
        self.keep = keep
        self.violations = []
        self.count = 0
        self.by_operation = {}  # "operation: function" -> violations
        self.operation = "boot"
        self.bbml2 = False  # the bbml2 remap strategy is in force
        self._stale = {}  # table -> bool array: cleared entries the TLB may still hold

    @contextlib.contextmanager
    def during(self, operation):
        """Attribute the writes made inside to ``operation``."""
        old, self.operation = self.operation, operation
        try:
            yield
        finally:
            self.operation = old

    # -- what the page table reports ------------------------------------------------------------
    def write(self, table, index, pfns, flags, function, same=None):
        """Entries ``index`` of ``table`` become leaves ``(pfns, flags)``; ``same``: a mask of the
        entries whose old and new pages hold identical contents (None: not known)."""
        old_p, old_f = table.pfns[index], table.flags[index]
        new_p = np.broadcast_to(np.asarray(pfns, dtype=np.int64), old_p.shape)
        new_f = np.broadcast_to(np.asarray(flags, dtype=np.uint8), old_f.shape)
        live = (old_f & PRESENT) != 0
        self._made_unflushed(table, index, ~live, old_p, old_f, new_p, new_f, function)
        moved = live & (old_p != new_p)
        changed = moved | (live & (old_f != new_f))
        if not changed.any():
            return
        rule = self.rule
        why = np.zeros(changed.shape, dtype=np.uint8)  # bit 1 output, 2 flags, 4 contiguous
        if not rule.output:
            allowed = same if (self.bbml2 and rule.bbml2 and same is not None) else False
            why |= (moved & ~np.asarray(allowed, dtype=bool)).astype(np.uint8)
        why |= ((changed & (((old_f ^ new_f) & np.uint8(ALL_FLAGS ^ rule.flags)) != 0)) * 2).astype(np.uint8)
        if not rule.contiguous:
            why |= ((changed & (((old_f | new_f) & CONT) != 0)) * 4).astype(np.uint8)
        self._record(table, index, why, old_p, old_f, new_p, new_f, function)

    def split(self, table, index, child_pfn, function):
        """The live block at ``table[index]`` becomes the table at ``child_pfn``, mapping the same
        memory, in place."""
        cont = bool(table.flags[index] & CONT) and not self.rule.contiguous
        if (self.rule.output or (self.bbml2 and self.rule.bbml2)) and not cont:
            return
        why = "an entry with the contiguous bit changed" if cont else "a block replaced by a table in place"
        self._add(table, index, (int(table.pfns[index]), int(table.flags[index])), (child_pfn, PRESENT), function, why)

    def attach(self, table, index, child, function):
        """The empty entry ``table[index]`` comes to point to table ``child``."""
        stale = self._stale.get(table)
        if stale is not None and stale[index]:
            stale[index] = False
            self._add(table, index, (-1, 0), (child.pfn, PRESENT), function,
                      "made before the TLB was flushed after its break")

    def clear(self, table, index):
        """Entries ``index`` of ``table`` become invalid: the TLB may hold them until a flush."""
        if not self.rule.strict:
            return
        live = (table.flags[index] & PRESENT) != 0
        if not live.any():
            return
        stale = self._stale.get(table)
        if stale is None:
            stale = self._stale[table] = np.zeros(table.level.entries, dtype=bool)
        idx = np.arange(table.level.entries)[index]
        stale[np.atleast_1d(idx)[np.atleast_1d(live)]] = True

    def flush(self, start=None, end=None):
        """A TLB flush of ``[start, end)`` (None: everything)."""
        if not self._stale:
            return
        if start is None:
            self._stale.clear()
            return
        for table in list(self._stale):
            lo = max(0, (start - table.base) >> table.level.shift)
            hi = min(table.level.entries, -((table.base - end) >> table.level.shift))
            if lo < hi:
                self._stale[table][lo:hi] = False
                if not self._stale[table].any():
                    del self._stale[table]

    # -- recording ------------------------------------------------------------------------------
    def _made_unflushed(self, table, index, empty, old_p, old_f, new_p, new_f, function):
        stale = self._stale.get(table)
        if stale is None:
            return
        hit = stale[index] & empty
        if hit.any():
            stale[index] = stale[index] & ~empty
            why = np.where(hit, 8, 0).astype(np.uint8)
            self._record(table, index, why, old_p, old_f, new_p, new_f, function)

    def _record(self, table, index, why, old_p, old_f, new_p, new_f, function):
        bad = np.flatnonzero(np.atleast_1d(why))
        if not len(bad):
            return
        idx = np.atleast_1d(np.arange(table.level.entries)[index])
        why, old_p, old_f = np.atleast_1d(why), np.atleast_1d(old_p), np.atleast_1d(old_f)
        new_p, new_f = np.atleast_1d(new_p), np.atleast_1d(new_f)
        room = max(self.keep - len(self.violations), 0)
        for k in bad[:room].tolist():
            self._keep(table, int(idx[k]), (int(old_p[k]), int(old_f[k])), (int(new_p[k]), int(new_f[k])),
                       function, _why(int(why[k])))
        self._count(function, len(bad))

    def _add(self, table, index, old, new, function, why):
        if len(self.violations) < self.keep:
            self._keep(table, index, old, new, function, why)
        self._count(function, 1)

    def _count(self, function, n):
        key = f"{self.operation}: {function or WRITE}"
        self.by_operation[key] = self.by_operation.get(key, 0) + n
        self.count += n

    def _keep(self, table, index, old, new, function, why):
        self.violations.append(Violation(self.operation, function or WRITE, table.level.name, table.va(index), old, new, why))


def _why(bits):
    reasons = []
    if bits & 8:
        reasons.append("made before the TLB was flushed after its break")
    if bits & 1:
        reasons.append("the output address changed")
    if bits & 2:
        reasons.append("attribute bits the rule fixes changed")
    if bits & 4:
        reasons.append("an entry with the contiguous bit changed")
    return "; ".join(reasons)


def unfold_contiguous(machine, table, index, keep=None):
    """Break-before-make of every contiguous span of ``table`` that entries ``index`` touch
    (unless it is wholly inside ``keep``, entries about to be cleared together): its entries go
    invalid, one TLB flush of the span, then they are written again without the contiguous bit
    (arm64 ``contpte_convert``). Returns the spans unfolded."""
    n = table.level.contiguous
    idx = np.atleast_1d(np.arange(table.level.entries)[index])
    spans = np.unique(idx // n)
    spans = spans[(table.flags.reshape(-1, n)[spans] & CONT).any(axis=1)]
    if keep is not None and len(spans):
        kept = np.isin(spans[:, None] * n + np.arange(n), keep).all(axis=1)
        spans = spans[~kept]
    pt = machine.pagetable
    for span in spans.tolist():
        entries = slice(span * n, (span + 1) * n)
        pfns, flags = table.pfns[entries].copy(), table.flags[entries] & np.uint8(ALL_FLAGS ^ CONT)
        pt.clear_leaves(table, entries, function="contpte_convert")
        machine.flush_tlb_kernel_range(table.va(span * n), table.va((span + 1) * n))
        pt.set_leaves(table, entries, pfns, flags, function="contpte_convert")
        machine.stats.add("bbm_sequences", 1)
        machine.stats.add("bbm_entries", n)
    machine.stats.add("cont_spans_unfolded", len(spans))
    return len(spans)


class LiveWriter:
    """Writes HVO makes to live vmemmap entries, as the machine's :class:`RemapStrategy` says."""

    def __init__(self, machine, strategy=RemapStrategy.PLAIN):
        self.machine = machine
        self.strategy = RemapStrategy(strategy)

    def set_leaves(self, table, index, pfns, flags, function, old=None):
        """Entries ``index`` of ``table`` map ``pfns`` with ``flags`` (``old``: see
        :meth:`~vmemcore.pagetable.PageTable.set_leaves`)."""
        m = self.machine
        pt = m.pagetable
        if table in pt.cont_tables:
            unfold_contiguous(m, table, index)
        if self.strategy is RemapStrategy.BBM_PAUSED:
            live = np.atleast_1d(np.arange(table.level.entries)[index])
            live = live[(table.flags[live] & PRESENT) != 0]
            if len(live):
                self._paused(table, live, lambda: pt.clear_leaves(table, live, function=function))
                old = None  # the entries were cleared: the caller's copy no longer holds them
        same = self._same_contents(table, index, pfns) if self.strategy is RemapStrategy.BBML2 else None
        pt.set_leaves(table, index, pfns, flags, function=function, same=same, old=old)

    def split_leaf(self, table, index, pfn, function):
        """The block at ``table[index]`` becomes a table of ``pfn`` mapping the same memory."""
        pt = self.machine.pagetable
        between = None
        if self.strategy is RemapStrategy.BBM_PAUSED:
            between = lambda: self._paused(table, np.array([index]), lambda: None)  # noqa: E731 (split_leaf breaks)
        pt.split_leaf(table, index, lambda _level: pfn, function=function, between=between)

    def _paused(self, table, entries, brk):
        """One break-before-make of ``entries`` with the other CPUs paused: ``brk``
        makes them invalid, then a TLB flush of their range; the caller writes the new entries."""
        m = self.machine
        brk()
        m.flush_tlb_kernel_range(table.va(int(entries.min())), table.va(int(entries.max()) + 1))
        m.stats.add("bbm_sequences", 1)
        m.stats.add("bbm_entries", len(entries))
        m.stats.add("cpu_pause_windows", 1)

    def _same_contents(self, table, index, pfns):
        """Which entries' new page holds what the old page holds."""
        m = self.machine
        idx = np.atleast_1d(np.arange(table.level.entries)[index])
        new = np.broadcast_to(np.asarray(pfns, dtype=np.int64), idx.shape)
        old = table.pfns[idx]
        return np.array([bool(table.flags[i] & PRESENT) and m.structpages.same_contents(int(o), int(n), table.va(int(i)))
                         for i, o, n in zip(idx.tolist(), old.tolist(), new.tolist())], dtype=bool)
