"""The result of a run: one JSON-able dict (``report``) and its terminal table (``format_report``)."""

import attrs

from .units import human_size


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
        "counters": counters,
        "counter_units": {name: counter_unit(name) for name in counters},
        "steps": [attrs.asdict(step) for step in steps],
    }


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


def _table(rows, indent=""):
    """Rows of (name, number, size) with the name left-aligned and the number right-aligned."""
    if not rows:
        return []
    wide = max(len(r[0]) for r in rows)
    wnum = max(len(r[1]) for r in rows)
    return [f"{indent}{name:<{wide}}  {number:>{wnum}}  {size}".rstrip() for name, number, size in rows]


def _args(args):
    return " ".join(f"{key}={human_size(value) if key in ('start', 'size') else value}" for key, value in args.items())


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
    lines += ["", "counters"]
    lines += _table([(name, *_value_cells(name, value, page)) for name, value in data["counters"].items()], "  ")
    if data["steps"]:
        lines += ["", "steps"]
        for step in data["steps"]:
            where = f"  (line {step['line']})" if step["line"] else ""
            lines.append(f"  [{step['index']}] {step['op']} {_args(step['args'])}{where}")
            changes = [(name, *_value_cells(name, delta, page, signed=True)) for name, delta in step["changes"].items()]
            lines += _table(changes, "        ") or ["        no counter changed"]
    return "\n".join(lines)
