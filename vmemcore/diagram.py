"""Diagrams of a HugeTLB folio's vmemmap, read from the simulated page tables, in the spirit of
the kernel's ``Documentation/mm/vmemmap_dedup.rst``: which frame backs each page of the folio's
struct pages, before and after HugeTLB Vmemmap Optimization.
"""

from collections import Counter
from string import ascii_uppercase

from .errors import BadRequest
from .hvo import optimizable_pages
from .report import columns
from .units import format_size

UNCOLLAPSED = 16  # folios with at most this many vmemmap pages get one line per page


class _Rollback(Exception):
    """Carries a result out of a transaction that must be undone."""


def folio_title(machine, folio, label="") -> str:
    """One line naming the folio (``label`` after its size, e.g. "#0 of 512"): size, pfns, node,
    origin and HVO state."""
    nr = 1 << folio.order
    origin = ", boot" if folio.boot else ""
    origin += ", surplus" if folio.surplus else ""
    state = "optimized" if machine.hugetlb.hvo.is_optimized(folio.head) else "not optimized"
    name = f"HugeTLB {format_size(nr << machine.geometry.page_shift)} folio {label + ' ' if label else ''}"
    return f"{name}at pfn {folio.head:#x}-{folio.head + nr - 1:#x} ({nr:,} pfns), node {folio.node}{origin}, vmemmap {state}"


def vmemmap_pages(machine, folio) -> list:
    """``(vaddr, level name, read-only, frame)`` of each vmemmap page of the folio's struct pages,
    read from the page tables."""
    page = machine.geometry.page_size
    start = machine.pfn_to_page(folio.head)
    end = start + (machine.sparse_geometry.struct_page_size << folio.order)
    pages = []
    for vaddr in range(start // page * page, end, page):
        label, read_only, frame = machine.vmemmap.entry(vaddr)
        pages.append((vaddr, label, read_only, frame))
    return pages


def _view(machine, folio):
    """The folio's vmemmap pages and 7.1's shared tail pages (frame -> (node, order))."""
    return vmemmap_pages(machine, folio), {frame: key for key, frame in machine.hugetlb.hvo.tail_pages.items()}


def _runs(pages, collapse):
    """``[first index, count, frame step]`` of consecutive vmemmap pages at one level and access
    mapping one frame (step 0) or consecutive frames (step 1); single pages unless ``collapse``."""
    runs = []
    for i, (_, level, ro, frame) in enumerate(pages):
        if collapse and runs:
            first, count, step = runs[-1]
            _, last_level, last_ro, last_frame = pages[first + count - 1]
            delta = frame - last_frame
            if (level, ro) == (last_level, last_ro) and delta in (0, 1) and (count == 1 or delta == step):
                runs[-1] = [first, count + 1, delta]
                continue
        runs.append([i, 1, 0])
    return runs


def _view_data(machine, folio, view, collapse=True) -> dict:
    """A view as plain data: its runs of vmemmap pages (see :func:`_runs`; ``pfns`` are the first
    and last pfn whose struct pages they hold) and the frames that back more than one page."""
    pages, tails = view
    per_page = machine.geometry.page_size // machine.sparse_geometry.struct_page_size
    end = folio.head + (1 << folio.order)
    uses = Counter(frame for *_, frame in pages)
    runs = []
    for first, count, step in _runs(pages, collapse):
        vaddr, level, ro, frame = pages[first]
        pfns = [folio.head + first * per_page, min(folio.head + (first + count) * per_page, end) - 1]
        runs.append({"first": first, "count": count, "pfns": pfns, "vaddr": vaddr, "entry": level,
                     "access": "RO" if ro else "RW", "frame": frame, "frame_step": step})
    shared = [{"frame": frame, "vmemmap_pages": n,
               "shared_tail_page": dict(zip(("node", "order"), tails[frame])) if frame in tails else None}
              for frame, n in uses.items() if n > 1]
    return {"vmemmap_pages": len(pages), "distinct_frames": len(uses), "runs": runs, "shared_frames": shared}


def _table(machine, folio, view):
    """The drawing of a view: the vmemmap box, arrows, the frames box, and a legend."""
    data = _view_data(machine, folio, view, len(view[0]) > UNCOLLAPSED)
    labels = {s["frame"]: ascii_uppercase[i] if i < 26 else str(i) for i, s in enumerate(data["shared_frames"])}
    left = [("vmemmap page", "struct pages of pfns", "virtual address", "entry", "access")]
    right = [("frame",)]
    for run in data["runs"]:
        first, count, frame = run["first"], run["count"], run["frame"]
        left.append((str(first) if count == 1 else f"{first}-{first + count - 1}",
                     f"{run['pfns'][0]:#x}-{run['pfns'][1]:#x}", f"{run['vaddr']:#x}", run["entry"], run["access"]))
        if run["frame_step"] and count > 1:
            right.append((f"{frame:#x}-{frame + count - 1:#x}",))
        else:
            right.append((f"{frame:#x}" + (f" [{labels[frame]}]" if frame in labels else ""),))
    boxes = [_box(columns(left, right=(0,))), _box(columns(right))]
    lines = [f"  {a}{' ---> ' if 2 < k < len(boxes[0]) - 1 else '      '}{b}" for k, (a, b) in enumerate(zip(*boxes))]
    for shared in data["shared_frames"]:
        frame = shared["frame"]
        line = f"  [{labels[frame]}] {frame:#x} backs {shared['vmemmap_pages']:,} vmemmap pages of this folio"
        if shared["shared_tail_page"]:
            tail = shared["shared_tail_page"]
            line += (f"\n      (the read-only tail page of node {tail['node']} shared by every optimized "
                     f"order-{tail['order']} folio there)")
        lines.append(line)
    distinct = data["distinct_frames"]
    lines.append(f"  {data['vmemmap_pages']:,} vmemmap pages, {distinct:,} distinct frame{'s' if distinct > 1 else ''}")
    return lines


def _box(rows):
    """Aligned rows framed as a box, the first row a header."""
    wide = max(map(len, rows))
    rule = "+" + "-" * (wide + 2) + "+"
    framed = [f"| {row.ljust(wide)} |" for row in rows]
    return [rule, framed[0], rule, *framed[1:], rule]


def draw_folio_vmemmap(machine, folio) -> str:
    """The folio's vmemmap as the page tables map it now."""
    return "\n".join(_table(machine, folio, _view(machine, folio)))


def _what_if(machine, change):
    """``change()`` run in a transaction that is then rolled back; returns what it returned."""
    try:
        with machine.transaction():
            raise _Rollback(change())
    except _Rollback as done:
        return done.args[0]


def _sides(machine, folio):
    """``(before, after, note)``: the folio's views before and after HVO, one of them the current
    mapping, the other computed by restoring (or optimizing, with the switch turned on) inside a
    transaction that is rolled back; when the other side cannot be had, the current view on its
    side, None on the other, and ``note`` says why."""
    hugetlb = machine.hugetlb
    optimized = hugetlb.hvo.is_optimized(folio.head)
    if not hugetlb.support.supported:
        note = f"HVO is not available on {machine.arch.name} with kernel {machine.profile.name}: {hugetlb.support.reason}"
    elif not optimizable_pages(machine, folio.order):
        note = "HVO has nothing to free here: the folio's struct pages fit in the page HVO keeps"
    else:
        try:
            other = _what_if(machine, (lambda: _restored(machine, folio)) if optimized else (lambda: _optimized(machine, folio)))
        except BadRequest as error:
            other = str(error)
        if not isinstance(other, str):
            current = _view(machine, folio)
            return (other, current, None) if optimized else (current, other, None)
        note = f"cannot show the {'restored' if optimized else 'optimized'} mapping: {other}"
    current = _view(machine, folio)
    return (None, current, note) if optimized else (current, None, note)


def diagram(machine, folio, label="") -> str:
    """The folio's vmemmap before and after HVO (see :func:`_sides`), the machine left as it was.
    ``label`` goes into the title."""
    before, after, note = _sides(machine, folio)
    head = [folio_title(machine, folio, label), _vmemmap_line(machine, folio), ""]
    if note is not None:
        return "\n".join(head + [note, "", "the current mapping"] + _table(machine, folio, before or after))
    optimized = machine.hugetlb.hvo.is_optimized(folio.head)
    how = "restored in a rolled-back transaction; split PMDs stay split" if optimized else "the current mapping"
    done = "the current mapping" if optimized else "optimized in a rolled-back transaction"
    return "\n".join(head + [f"before optimization: {how}"] + _table(machine, folio, before)
                     + ["", f"after optimization: {done}"] + _table(machine, folio, after)
                     + [""] + _summary(before, after))


def diagram_data(machine, folio) -> dict:
    """What :func:`diagram` draws, as plain data: the folio, its struct pages, which side is the
    current mapping, each side's runs of vmemmap pages (null when it cannot be had, ``note`` says
    why) and the summary."""
    before, after, note = _sides(machine, folio)
    size = machine.sparse_geometry.struct_page_size
    start = machine.pfn_to_page(folio.head)
    optimized = machine.hugetlb.hvo.is_optimized(folio.head)
    return {
        "folio": {"head": folio.head, "order": folio.order, "node": folio.node, "boot": folio.boot,
                  "surplus": folio.surplus, "optimized": optimized},
        "struct_pages": {"start": start, "end": start + (size << folio.order), "struct_page_size": size},
        "kernel": machine.profile.name,
        "current": "after" if optimized else "before",
        "note": note,
        "before": _view_data(machine, folio, before) if before else None,
        "after": _view_data(machine, folio, after) if after else None,
        "summary": _summary_data(before, after) if note is None else None,
    }


def _vmemmap_line(machine, folio):
    size = machine.sparse_geometry.struct_page_size
    start = machine.pfn_to_page(folio.head)
    return (f"struct pages: {1 << folio.order:,} x {size} bytes at [{start:#x}, {start + (size << folio.order):#x}), "
            f"kernel {machine.profile.name}")


def _restored(machine, folio):
    """The vmemmap pages after ``hugetlb_vmemmap_restore_folio``, or why it failed."""
    _, _, error = machine.hugetlb.hvo.restore([folio])
    return f"restoring the vmemmap failed ({error})" if error else _view(machine, folio)


def _optimized(machine, folio):
    """The vmemmap pages after turning the switch on and optimizing the folio, or why it failed."""
    machine.hugetlb.set_optimize_vmemmap(True)
    failed = machine.hugetlb.hvo.optimize([folio])
    if not machine.hugetlb.hvo.is_optimized(folio.head):
        return f"HVO leaves this folio alone ({failed.get(folio.head, 'not eligible')})"
    return _view(machine, folio)


def _summary_data(before, after) -> dict:
    """Vmemmap pages, distinct frames, and frames freed: no longer mapped minus newly allocated
    (7.1's shared tail page, allocated once per zone and order, is not counted)."""
    old = {frame for *_, frame in before[0]}
    new = {frame for *_, frame in after[0]}
    released, allocated = old - new, new - old - set(after[1])
    return {"vmemmap_pages_mapped": [len(before[0]), len(after[0])], "distinct_frames": [len(old), len(new)],
            "frames_freed": len(released) - len(allocated), "no_longer_mapped": len(released),
            "newly_allocated": len(allocated)}


def _summary(before, after):
    """:func:`_summary_data` as a table."""
    data = _summary_data(before, after)
    rows = [("", "before", "after")] + [(label, *(f"{n:,}" for n in data[key])) for label, key in
                                        (("vmemmap pages mapped", "vmemmap_pages_mapped"), ("distinct frames", "distinct_frames"))]
    return (["summary"] + columns(rows, right=(1, 2), indent="  ")
            + [f"  frames freed by the optimization: {data['frames_freed']:,} "
               f"({data['no_longer_mapped']:,} no longer mapped, {data['newly_allocated']:,} newly allocated)"])
