"""The vmemmap region of the kernel page table in the arch's own debugfs format
(``/sys/kernel/debug/kernel_page_tables``; ``CONFIG_PTDUMP_DEBUGFS``).

Every arch's dumper (``arch/x86/mm/dump_pagetables.c``, ``arch/arm64/mm/ptdump.c``,
``arch/powerpc/mm/ptdump/ptdump.c``, ``arch/s390/mm/dump_pagetables.c``,
``arch/riscv/mm/ptdump.c``) walks the page table in address order and calls its ``note_page`` for
every leaf and every empty entry (a hole is noted at the level where the walk found it); a line is
printed when the next entry breaks the run: another level, other attributes, a new address marker
(powerpc: also a physical address that does not follow on). Table entries print nothing: the walk
goes down into them. The size is printed as ``%9lu%c`` in the largest unit of 1024 that divides it.

What differs between arches is data, so a plugin describes it with a :class:`PtdumpFormat`
(hook ``vmemcore_ptdump_format``): the level names, the attribute columns, the line layout, how a
hole prints, the marker lines. The walk and the merging are this module's, once.

Simulation departures (docs/ptdump.md): only the vmemmap region is dumped, so the last run stops at
the region's end where the kernel's runs on to the next mapping; attributes the simulation does not
keep (global, no-execute, memory type) are printed as the vmemmap's kernel mappings always have
them (``PAGE_KERNEL``, ``PAGE_KERNEL_LARGE``, ``PAGE_KERNEL_RO``).
"""

import difflib

import attrs
import numpy as np

from .pagetable import CONT, LEAF, PRESENT, RDONLY, table_index_range

@attrs.define(slots=True)
class Run:
    """Consecutive entries of one level with the same attributes: ``[start, end)``; ``pa`` the
    physical address of the first entry (None: empty), ``last_pa`` of the last, ``shared``: more
    than one entry, all mapping the page at ``pa``."""

    start: int
    end: int
    depth: int
    key: int  # PRESENT | LEAF | RDONLY | CONT bits; 0 for an empty run
    span: int  # bytes one entry maps
    pa: int | None = None
    last_pa: int | None = None
    shared: bool = False

    @property
    def present(self) -> bool:
        return bool(self.key & PRESENT)


def _table_runs(machine, table, start, end, phys):
    """The runs of ``table`` inside ``[start, end)``, address order, descending into tables."""
    geometry = machine.geometry
    lo, hi = table_index_range(table, start, end)
    if lo >= hi:
        return
    flags = table.flags[lo:hi]
    present = (flags & PRESENT) != 0
    is_table = present & ((flags & LEAF) == 0)
    key = np.where(present, flags & (PRESENT | LEAF | RDONLY | CONT), 0)
    breaks = np.zeros(hi - lo, dtype=bool)
    breaks[0] = True
    breaks[1:] = (key[1:] != key[:-1]) | is_table[1:] | is_table[:-1]
    span = table.level.entry_span
    pfns = table.pfns[lo:hi]
    if phys:
        step = span >> geometry.page_shift
        breaks[1:] |= present[1:] & (pfns[1:] != pfns[:-1] + step)
    page_shift = geometry.page_shift
    edges = np.flatnonzero(breaks).tolist() + [hi - lo]
    for a, b in zip(edges[:-1], edges[1:]):
        index = lo + a
        va = max(table.va(index), start)
        stop = min(table.va(lo + b), end)
        if is_table[a]:
            yield from _table_runs(machine, table.children[index], start, end, phys)
            continue
        if present[a]:
            first, last = int(pfns[a]) << page_shift, int(pfns[b - 1]) << page_shift
            yield Run(va, stop, table.depth, int(key[a]), span, first, last)
        else:
            yield Run(va, stop, table.depth, 0, span)


def _mergeable(a, b, fmt, phys):
    if a.depth != b.depth or a.key != b.key or a.end != b.start:
        return None
    if not b.present or not (phys and fmt.phys_breaks):
        return "extend"
    one_a = a.pa == a.last_pa and (a.shared or a.end - a.start == a.span)
    one_b = b.pa == b.last_pa and b.end - b.start == b.span
    if one_a and one_b and a.pa == b.pa:
        return "shared"
    if not a.shared and b.pa == a.last_pa + a.span:
        return "extend"
    return None


def vmemmap_runs(machine, phys=False, fmt=None) -> list:
    """The runs of the vmemmap region ``[vmemmap_base, vmemmap_base + vmemmap_size)`` as the
    arch's dumper merges them (``phys``: physical addresses shown, which may end runs)."""
    fmt = fmt or machine.hooks.ptdump_format(machine)
    phys = phys or fmt.always_phys
    breaks = phys and fmt.phys_breaks
    sparse = machine.sparse_geometry
    start, end = sparse.vmemmap_base, sparse.vmemmap_base + sparse.vmemmap_size
    runs = []
    for run in _table_runs(machine, machine.pagetable.top, start, end, breaks):
        if runs:
            how = _mergeable(runs[-1], run, fmt, phys)
            if how is not None:
                last = runs[-1]
                last.end, last.last_pa, last.shared = run.end, run.last_pa, last.shared or how == "shared"
                continue
        runs.append(run)
    return runs


def format_size(nbytes) -> str:
    """``%9lu%c``: the size in the largest of K, M, G, T, P, E that divides it (``note_page``)."""
    value, units = nbytes >> 10, "KMGTPE"
    unit = 0
    while value and not value & 1023 and unit < len(units) - 1:
        value >>= 10
        unit += 1
    return f"{value:9d}{units[unit]}"


def _attributes(machine, run, fmt):
    if not run.present:
        return fmt.hole
    lowest = run.depth == len(machine.geometry.levels) - 1
    has = {"rdonly": bool(run.key & RDONLY), "cont": bool(run.key & CONT), "block": not lowest, "page": lowest}
    return "".join(column.set if column.bit is None or has[column.bit] else column.clear for column in fmt.columns)


def run_line(machine, run, fmt, phys=False):
    """The line the arch prints for ``run`` (None: the arch prints none, an empty run on powerpc)."""
    attrs_text = _attributes(machine, run, fmt)
    if attrs_text is None:
        return None
    size = run.end - run.start
    if phys or fmt.always_phys:
        if run.pa is None:
            phys_text = " " * len(fmt.phys.format(pa=0))
        elif run.shared:
            phys_text = fmt.shared_phys.format(pa=run.pa)
            if fmt.shared_size:
                size = run.span
        else:
            phys_text = fmt.phys.format(pa=run.pa)
    else:
        phys_text = ""
    level = fmt.level_name(machine.geometry.levels[run.depth].name)
    return fmt.line.format(start=run.start, end=run.end, last=run.end - 1, phys=phys_text,
                           size=format_size(size), level=level, attrs=attrs_text)


def ptdump_lines(machine, phys=False, fmt=None) -> list:
    """The vmemmap region's dump: the marker line(s) and one line per run."""
    fmt = fmt or machine.hooks.ptdump_format(machine)
    lines = [f"---[ {fmt.markers[0]} ]---"]
    for run in vmemmap_runs(machine, phys, fmt):
        line = run_line(machine, run, fmt, phys)
        if line is not None:
            lines.append(line)
    if fmt.markers[1] is not None:
        lines.append(f"---[ {fmt.markers[1]} ]---")
    return lines


def ptdump_data(machine, phys=False, fmt=None) -> dict:
    """The dump as data: the region, the format's source, and each run with its line."""
    fmt = fmt or machine.hooks.ptdump_format(machine)
    sparse = machine.sparse_geometry
    runs = []
    for run in vmemmap_runs(machine, phys, fmt):
        level = machine.geometry.levels[run.depth].name
        runs.append({
            "start": run.start, "end": run.end, "size": run.end - run.start, "level": level,
            "present": run.present, "read_only": bool(run.key & RDONLY), "contiguous": bool(run.key & CONT),
            "entries": (run.end - run.start) // run.span if run.present else None,
            "phys": run.pa, "shared_page": run.shared, "line": run_line(machine, run, fmt, phys),
        })
    return {"arch": machine.arch.name, "format": fmt.source,
            "region": {"start": sparse.vmemmap_base, "end": sparse.vmemmap_base + sparse.vmemmap_size},
            "lines": ptdump_lines(machine, phys, fmt), "runs": runs}


def ptdump_diff(before, after, names=("a", "b")) -> list:
    """What changed between two dumps (lists of lines): a unified diff without context, the
    changed lines of ``before`` as ``-`` and those of ``after`` as ``+``."""
    return list(difflib.unified_diff(before, after, fromfile=names[0], tofile=names[1], lineterm="", n=0))
