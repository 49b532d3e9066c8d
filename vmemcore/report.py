"""The result of a run: one JSON-able dict (``report``) and its terminal table (``format_report``);
the memory blocks (``hotplug_report``, ``format_blocks``); and the ``/proc/kpageflags`` view of a
range of pfns (``kpageflags_runs``, ``format_kpageflags``)."""

import attrs

from . import structpage
from .physmem import MOVABLE, NORMAL
from .structpage import KPF_COMPOUND_HEAD, KPF_COMPOUND_TAIL, KPF_HUGE
from .units import format_size, human_size


def counter_unit(name) -> str:
    """What a counter counts: "pages" (of the machine's page size), "bytes", or a plain "count"."""
    if "bytes" in name:
        return "bytes"
    if "pages" in name or name.endswith("_frames"):
        return "pages"
    return "count"


def report(machine, steps=()) -> dict:
    """Everything about a machine after a run, as plain data (``json.dumps`` takes it as is).

    ``steps`` are the :class:`vmemcore.scenario.StepResult` values of the run.
    """
    counters = {name: int(value) for name, value in machine.counters().items()}
    return {
        "machine": {
            "arch": machine.arch.name,
            "plugin": machine.plugin.name,
            "variant": machine.variant.name,
            "variant_options": dict(machine.variant.options),
            "kernel": machine.profile.name,
            "features": dict(machine.features),
            "page_size": machine.geometry.page_size,
            "section_size": machine.sparse_geometry.section_size,
            "max_physmem_bits": machine.sparse_geometry.max_physmem_bits,
            "memory": [{"node": r.node, "start": r.start, "size": r.size} for r in machine.memory],
        },
        "nodes": [
            {"node": node, "present_pages": machine.physmem.present_pages(node), "free_pages": machine.physmem.free_pages(node)}
            for node in machine.physmem.node_ids
        ],
        "hugetlb": hugetlb_report(machine.hugetlb),
        "hotplug": hotplug_report(machine),
        "counters": counters,
        "counter_units": {name: counter_unit(name) for name in counters},
        "steps": [attrs.asdict(step) for step in steps],
        "live_entries": live_entries_report(machine),
    }


def live_entries_report(machine, shown=20):
    """The live-entry check (None when off): the arch's rule, the violations counted, per
    operation and kernel function, and the first ``shown`` in full."""
    checker = machine.live_entries
    if checker is None:
        return None
    return {
        "rule": checker.rule.reason,
        "violations": checker.count,
        "by_operation": dict(checker.by_operation),
        "first": [str(v) for v in checker.violations[:shown]],
    }


def hugetlb_report(hugetlb) -> dict:
    """The HVO switch, the arch's HVO support and each hstate's pool (sizes in ascending order)."""
    return {
        "optimize_vmemmap": hugetlb.optimize_vmemmap,
        "support": attrs.asdict(hugetlb.support),
        "vmemmap_remap": hugetlb.hvo.remap.value if hugetlb.hvo.remap else None,
        "hstates": {
            h.name: {
                "nr_hugepages": h.nr_huge_pages,
                "surplus": h.surplus_huge_pages,
                "optimized": sum(map(hugetlb.hvo.is_optimized, h.folios)),
                "boot": sum(f.boot for f in h.folios.values()),
            }
            for _, h in sorted(hugetlb.hstates.items())
        },
    }


def hotplug_report(machine) -> dict:
    """The ``memory_hotplug.memmap_on_memory`` mode, the memory block size, every hot-added memory
    block (by id) and each node's zones (node order, ZONE_NORMAL before ZONE_MOVABLE)."""
    shift = machine.geometry.page_shift
    hotplug = machine.hotplug
    zones = sorted(hotplug.zone_pages().items(), key=lambda item: (item[0][0], (NORMAL, MOVABLE).index(item[0][1])))
    return {
        "memmap_on_memory": hotplug.mode,
        "block_size": hotplug.block_size,
        "blocks": [
            {"id": b.id, "start": b.start_pfn << shift, "size": b.nr_pages << shift, "node": b.node, "state": b.state,
             "zone": b.zone, "self_hosted_pages": hotplug.self_hosted_pages(b)}
            for _, b in sorted(hotplug.blocks.items())
        ],
        "zones": [{"node": node, "zone": zone, "present_pages": present, "managed_pages": managed}
                  for (node, zone), (present, managed) in zones],
    }


def columns(rows, right=(), indent=""):
    """Rows of cells as aligned lines, two spaces apart; columns in ``right`` right-aligned, empty
    columns left out."""
    keep = [i for i in range(len(rows[0])) if any(row[i] for row in rows)]  # rows must not be empty
    wide = {i: max(len(row[i]) for row in rows) for i in keep}
    return [(indent + "  ".join(row[i].rjust(wide[i]) if i in right else row[i].ljust(wide[i]) for i in keep)).rstrip()
            for row in rows]


def _value_cells(name, value, page_size, signed=False):
    """(number, size) cells of one counter: "65,536", "(256M)"."""
    number = f"{value:+,}" if signed else f"{value:,}"
    unit = counter_unit(name)
    if value == 0:
        return number, ""
    if unit == "pages":
        return number, f"({'+' if signed and value > 0 else ''}{human_size(value * page_size)})"
    if unit == "bytes":
        return number, f"({'+' if signed and value > 0 else ''}{human_size(value)})"
    return number, ""


def _args(args):
    """``key=value`` pairs; byte sizes exact in their largest unit, lists of ids as ranges, booleans
    as yes/no, empty values left out."""
    def cell(key, value):
        if isinstance(value, bool):
            return "yes" if value else "no"
        if key in ("start", "size", "align") and isinstance(value, int) and not isinstance(value, bool):
            return format_size(value)
        return id_ranges(value) if isinstance(value, list) else value
    return " ".join(f"{key}={cell(key, value)}" for key, value in args.items() if value not in ({}, ""))


def id_ranges(ids) -> str:
    """Integers as comma-separated runs: ``[512, 513, 514, 600]`` -> ``"512-514,600"``."""
    runs = []
    for i in ids:
        if runs and runs[-1][1] == i - 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def _hugetlb_lines(data):
    support = data["support"]
    if data["vmemmap_remap"]:
        state = f"HVO {'on' if data['optimize_vmemmap'] else 'off'}, what-if remap strategy {data['vmemmap_remap']}"
    elif not support["supported"]:
        state = f"HVO unavailable: {support['reason']}"
    else:
        state = f"HVO {'on' if data['optimize_vmemmap'] else 'off'}"
        if support["reason"]:
            state += f" (caveat: {support['reason']})"
    if not data["hstates"]:
        return [f"hugetlb   no HugeTLB sizes; {state}"]
    header = ("size", "nr_hugepages", "surplus", "optimized", "boot")
    rows = [header] + [(name, *(f"{h[key]:,}" for key in header[1:])) for name, h in data["hstates"].items()]
    return [f"hugetlb   {state}"] + columns(rows, right=range(5), indent="          ")


def _zone_lines(zones, page):
    rows = [("node", "zone", "present_pages", "", "managed_pages", "")]
    rows += [(str(z["node"]), z["zone"], f"{z['present_pages']:,}", f"({human_size(z['present_pages'] * page)})",
              f"{z['managed_pages']:,}", f"({human_size(z['managed_pages'] * page)})") for z in zones]
    table = columns(rows, right=(0, 2, 4), indent="          ")
    return ["zones" + table[0][len("zones"):]] + table[1:]  # the title in the header row's indent


UNCOLLAPSED_BLOCKS = 16  # at most this many blocks get one row each


def format_blocks(data, page) -> str:
    """The memory blocks of a :func:`hotplug_report` dict, one row per block as
    ``/sys/devices/system/memory`` lists them; with more than UNCOLLAPSED_BLOCKS blocks, consecutive
    blocks with the same node, state, zone and self-hosted pages share a row (``512-583 (72 blocks)``)."""
    blocks = data["blocks"]
    head = f"memory blocks  {human_size(data['block_size'])} each, memory_hotplug.memmap_on_memory={data['memmap_on_memory']}"
    if not blocks:
        return f"{head}\n  no hot-added memory blocks"
    same = ("node", "state", "zone", "self_hosted_pages")
    groups = []
    for b in blocks:
        last = groups[-1][-1] if groups else None
        if len(blocks) > UNCOLLAPSED_BLOCKS and last and last["id"] + 1 == b["id"] and all(last[k] == b[k] for k in same):
            groups[-1].append(b)
        else:
            groups.append([b])
    rows = [("block", "", "start", "size", "node", "state", "zone", "self-hosted pages")]
    for group in groups:
        b, n = group[0], len(group)
        hosted = f"{b['self_hosted_pages']:,}" + (" each" if n > 1 and b["self_hosted_pages"] else "")
        rows.append((f"{b['id']}-{group[-1]['id']}" if n > 1 else str(b["id"]), f"({n} blocks)" if n > 1 else "",
                     f"{b['start']:#x}", human_size(n * b["size"]), str(b["node"]), b["state"], b["zone"] or "-", hosted))
    online = sum(b["state"] == "online" for b in blocks)
    hosted = sum(b["self_hosted_pages"] for b in blocks)
    total = (f"  {len(blocks):,} block{'s' if len(blocks) > 1 else ''} ({human_size(sum(b['size'] for b in blocks))}): "
             f"{online:,} online, {len(blocks) - online:,} offline; {hosted:,} self-hosted pages"
             + (f" ({human_size(hosted * page)})" if hosted else ""))
    return "\n".join([head] + columns(rows, right=(3, 4, 7), indent="  ") + [total])


def format_report(data) -> str:
    """A readable text rendering of a :func:`report` dict."""
    m = data["machine"]
    page = m["page_size"]
    options = ", ".join(f"{k}={v}" for k, v in m["variant_options"].items())
    features = ", ".join(f"{k}={'on' if v else 'off'}" for k, v in m["features"].items()) or "none"
    lines = [
        f"machine   {m['arch']} {m['variant']} ({options}), kernel {m['kernel']}, plugin {m['plugin']}",
        f"geometry  {human_size(page)} pages, {human_size(m['section_size'])} sections, "
        f"{m['max_physmem_bits']}-bit physical addresses",
        f"features  {features}",
    ]
    for r in m["memory"]:
        end = r["start"] + r["size"]
        lines.append(f"memory    node {r['node']}  [{r['start']:#x}, {end:#x})  {human_size(r['size'])}")
    for n in data["nodes"]:
        used = n["present_pages"] - n["free_pages"]
        lines.append(f"node {n['node']}    {n['present_pages']:,} pages present, {used:,} used ({human_size(used * page)}), "
                     f"{n['free_pages']:,} free")
    lines += _hugetlb_lines(data["hugetlb"])
    lines += _zone_lines(data["hotplug"]["zones"], page)
    lines += ["", "counters"]
    lines += columns([(name, *_value_cells(name, value, page)) for name, value in data["counters"].items()], (1,), "  ")
    if data["hotplug"]["blocks"]:
        lines += ["", format_blocks(data["hotplug"], page)]
    if data["steps"]:
        lines += ["", "steps"]
        for step in data["steps"]:
            where = f"  (line {step['line']})" if step["line"] else ""
            lines.append(f"  [{step['index']}] {step['op']} {_args(step['args'])}{where}")
            if step["result"]:
                lines.append(f"        result: {_args(step['result'])}")
            changes = [(name, *_value_cells(name, delta, page, signed=True)) for name, delta in step["changes"].items()]
            lines += columns(changes, (1,), "        ") if changes else ["        no counter changed"]
    if data["live_entries"] is not None:
        lines += ["", *_live_entry_lines(data["live_entries"])]
    return "\n".join(lines)


def _live_entry_lines(live):
    lines = [f"live entries  {live['violations']:,} violation(s) of the rule: {live['rule']}"]
    lines += [f"  {count:,}  {where}" for where, count in live["by_operation"].items()]
    if live["first"]:
        lines += ["  first:"] + [f"    {v}" for v in live["first"]]
    return lines


# -- /proc/kpageflags ---------------------------------------------------------------------------

KPF_NAMES = {value: name[4:].lower() for name, value in vars(structpage).items() if name.startswith("KPF_")}
HEAD_PAGE_FLAGS = 1 << KPF_COMPOUND_HEAD | 1 << KPF_HUGE  # tools/testing/selftests/mm/hugepage-vmemmap.c
TAIL_PAGE_FLAGS = 1 << KPF_COMPOUND_TAIL | 1 << KPF_HUGE


def kpageflag_names(flags) -> list:
    """The names of the bits set in ``flags``, as page-types spells them ("compound_head", "huge")."""
    return [KPF_NAMES.get(bit, f"bit{bit}") for bit in range(flags.bit_length()) if flags >> bit & 1]


def kpageflags_runs(machine, pfn, count, collapse=True) -> list:
    """``[start, nr_pfns, flags]`` for ``[pfn, pfn + count)``: one per pfn, or with ``collapse``
    one per run of consecutive pfns whose flags are identical."""
    runs = []
    for p, flags in enumerate(machine.structpages.kpageflags_range(pfn, count), pfn):
        if collapse and runs and runs[-1][2] == flags:
            runs[-1][1] += 1
        else:
            runs.append([p, 1, flags])
    return runs


def check_folio_flags(head, runs):
    """The kernel selftest's rule over the runs of a HugeTLB folio starting at pfn ``head``: the
    head has compound_head and huge, every other pfn compound_tail and huge but not compound_head.
    Returns None when the folio passes, else what the first failing pfn shows."""
    for start, count, flags in runs:
        if start == head:
            if flags & HEAD_PAGE_FLAGS != HEAD_PAGE_FLAGS:
                return f"head pfn {start:#x} has flags {flags:#x} ({_names(flags)}): compound_head and huge expected"
            if count == 1:
                continue
            start += 1
        if flags & TAIL_PAGE_FLAGS != TAIL_PAGE_FLAGS or flags & HEAD_PAGE_FLAGS == HEAD_PAGE_FLAGS:
            return f"tail pfn {start:#x} has flags {flags:#x} ({_names(flags)}): compound_tail and huge without compound_head expected"
    return None


def _names(flags):
    return ",".join(kpageflag_names(flags)) or "none"


def kpageflags_report(runs) -> list:
    """The runs as plain data: ``start``, ``count``, ``flags`` and ``names`` each."""
    return [{"start": start, "count": count, "flags": flags, "names": kpageflag_names(flags)} for start, count, flags in runs]


def format_kpageflags(runs) -> str:
    """page-types style lines: the pfn (or ``first-last`` and the count of a run), the flags in
    hex and their names."""
    rows = [("pfn", "", "flags", "symbolic-flags")]
    for start, count, flags in runs:
        span = f"{start:#x}" if count == 1 else f"{start:#x}-{start + count - 1:#x}"
        rows.append((span, "" if count == 1 else f"({count:,} pfns)", f"{flags:#018x}", _names(flags)))
    return "\n".join(columns(rows, right=(1,)))

