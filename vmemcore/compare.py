"""``vmemcore compare``: two runs side by side (two scenarios, or one with different ``--set``
keys per side): every counter at the end and what each step changed, with the difference B - A."""

from .jsonout import SCHEMA
from .report import _args, columns
from .stats import counter_key


def _cells(a, b, names):
    """``name -> {"a", "b", "diff"}``; a counter one side does not report counts as 0."""
    return {name: {"a": a.get(name, 0), "b": b.get(name, 0), "diff": b.get(name, 0) - a.get(name, 0)} for name in names}


def _side(data, scenario, settings):
    machine = data["machine"]
    return {
        "scenario": scenario,
        "set": {item.key: item.value for item in settings},
        "machine": {key: machine[key] for key in ("arch", "variant", "kernel", "plugin", "page_size")},
    }


def compare_reports(a, b, sides) -> dict:
    """The comparison of two :func:`~vmemcore.report.report` dicts; ``sides`` holds each side's
    ``(scenario path, overrides)``. Counters come in the report's order (``COUNTER_ORDER``); steps pair up by index."""
    steps = []
    for i in range(max(len(a["steps"]), len(b["steps"]))):
        pair = [data["steps"][i] if i < len(data["steps"]) else None for data in (a, b)]
        changes = [step["changes"] if step else {} for step in pair]
        steps.append({
            "index": i,
            **{side: {"op": step["op"], "args": step["args"], "result": step["result"]} if step else None
               for side, step in zip("ab", pair)},
            "changes": _cells(*changes, sorted(set(changes[0]) | set(changes[1]), key=counter_key)),
        })
    return {
        "schema": SCHEMA,
        "a": _side(a, *sides[0]),
        "b": _side(b, *sides[1]),
        "counters": _cells(a["counters"], b["counters"], sorted(set(a["counters"]) | set(b["counters"]), key=counter_key)),
        "steps": steps,
    }


def _rows(cells, indent, sign=""):
    """Aligned rows of counters (``sign="+"``: deltas, signed)."""
    rows = [("", "A", "B", "B - A")] + [
        (name, f"{c['a']:{sign},}", f"{c['b']:{sign},}", f"{c['diff']:+,}" if c["diff"] else "") for name, c in cells.items()]
    return columns(rows, right=(1, 2, 3), indent=indent)


def format_compare(data) -> str:
    """The comparison as text: each side, the counters, then each step's changes."""
    lines = []
    for side in "ab":
        s = data[side]
        m = s["machine"]
        given = " ".join(f"{key}={value}" for key, value in s["set"].items())
        lines.append(f"{side.upper()}  {s['scenario']}{' ' + given if given else ''}: "
                     f"{m['arch']} {m['variant']}, kernel {m['kernel']}")
    differ = sum(1 for c in data["counters"].values() if c["diff"])
    lines += ["", f"counters ({differ} differ)"] + _rows(data["counters"], "  ")
    if data["steps"]:
        lines += ["", "steps (what each changed)"]
    for step in data["steps"]:
        a, b = step["a"], step["b"]
        same = a and b and (a["op"], a["args"]) == (b["op"], b["args"])
        heads = [f"{side.upper()}: {s['op']} {_args(s['args'])}" if s else f"{side.upper()}: no such step"
                 for side, s in (("a", a), ("b", b))]
        lines.append(f"  [{step['index']}] {a['op'] + ' ' + _args(a['args']) if same else '  '.join(heads)}")
        lines += _rows(step["changes"], "        ", "+") if step["changes"] else ["        no counter changed"]
    return "\n".join(lines)
