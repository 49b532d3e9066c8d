"""``vmemcore sweep --plot``: chosen counters of a sweep's points against one swept key, one line
per combination of the grouping keys, drawn with matplotlib (no pyplot: the Agg and SVG
canvases, no display needed)."""

import difflib

from .errors import BadRequest
from .report import counter_unit
from .sweep import format_value
from .units import human_size, parse_size

FORMATS = ("png", "svg")
_SIZE_KEYS = ("size", "start", "align")


def check_format(path):
    """``path`` if it ends in a format the plot can be written in, else a :class:`BadRequest`."""
    if path.rsplit(".", 1)[-1].lower() not in FORMATS:
        raise BadRequest(f"--plot {path}: write FILE.png or FILE.svg")
    return path


def _key(name, keys, option):
    if name not in keys:
        close = difflib.get_close_matches(name, keys, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise BadRequest(f"{option} {name}: not a swept key (swept: {', '.join(keys)}){hint}")
    return name


def plot_axes(axes, x=None, group=None):
    """``(x key, grouping keys)``: the keys asked for, checked against the swept ones; by default
    x is the first key whose values are all sizes or integers (else the first), the groups every
    other key with more than one value. A key that varies but is neither is a :class:`BadRequest`."""
    keys = [axis.key for axis in axes]
    varying = [axis.key for axis in axes if len(axis.values) > 1]
    if x is None:
        x = next((axis.key for axis in axes if len(axis.values) > 1 and _scale(axis.key, [o.value for o in axis.values])),
                 varying[0] if varying else keys[0])
    _key(x, keys, "--x")
    group = [_key(name, keys, "--group") for name in group] if group is not None else [k for k in varying if k != x]
    loose = [k for k in varying if k != x and k not in group]
    if loose:
        raise BadRequest(f"--plot: {', '.join(loose)} varies too: add it to --group or set one value")
    return x, group


def _scale(key, values):
    """How the values of ``key`` are placed: "size" (``*.size``, ``*.start``, ``*.align``: bytes),
    "number" (integers), or None (in the order swept)."""
    if key.rsplit(".", 1)[-1] in _SIZE_KEYS:
        try:
            for value in values:
                parse_size(value)
            return "size"
        except BadRequest:
            return None
    return "number" if all(isinstance(v, int) and not isinstance(v, bool) for v in values) else None


def sweep_figure(records, x, group, counters, title="", in_bytes=False):
    """A matplotlib Figure: one panel per counter in ``counters``, its value at every point that ran
    (y) against the point's ``x`` value, one line per combination of the ``group`` keys' values.
    Sizes are placed in bytes on a log2 axis labelled 16G, 256G, ...; other values that are not
    integers are placed at 0, 1, ... in the order they were swept. Each y axis names the counter's
    unit (:func:`~vmemcore.report.counter_unit`; bytes for pages ``in_bytes``, as ``--bytes`` made them)."""
    from matplotlib.figure import Figure

    raw = {format_value(r["set"][x]): r["set"][x] for r in records}
    values = list(raw)
    scale = _scale(x, raw.values())
    position = {v: parse_size(raw[v]) if scale == "size" else raw[v] if scale else i for i, v in enumerate(values)}
    lines = {}
    for r in records:
        label = ", ".join(f"{k}={format_value(r['set'][k])}" for k in group) or None
        lines.setdefault(label, [])
        if r["status"] == "ok":
            lines[label].append(r)
    figure = Figure(figsize=(7, 3.2 * len(counters)), layout="constrained")
    panels = figure.subplots(len(counters), 1, squeeze=False)[:, 0]
    for panel, counter in zip(panels, counters):
        for label, points in lines.items():
            points = sorted(points, key=lambda r: position[format_value(r["set"][x])])
            panel.plot([position[format_value(r["set"][x])] for r in points], [r["counters"].get(counter, 0) for r in points],
                       marker="o", label=label)
        unit = counter_unit(counter)
        panel.set_ylabel(f"{counter} ({'bytes' if in_bytes and unit == 'pages' else unit})")
        panel.set_xlabel(x)
        if scale == "size":
            panel.set_xscale("log", base=2)
            panel.set_yscale("log")
        if scale != "number":
            panel.set_xticks([position[v] for v in values], [human_size(position[v]) if scale else v for v in values])
        if any(label for label in lines):
            panel.legend(fontsize="small")
    if title:
        figure.suptitle(title)
    return figure
