"""``vmemcore sweep``: a scenario run at every point of the product of ``--set KEY=V1,V2,...``
values, each point a full run on a Dask cluster (a :class:`distributed.LocalCluster` sized to the
machine, or the scheduler named by ``--scheduler``), as a table, CSV or JSON lines (docs/sweeps.md).

A point whose keys do not validate (a variant the arch does not have) is ``invalid`` and never
leaves this process; one whose boot or step fails is ``failed``; both carry the error and the
sweep goes on.
"""

import csv
import difflib
import io
import itertools
import json
import logging
import os
from contextlib import contextmanager

from attrs import frozen

from . import progress
from .errors import BadRequest, VmemcoreError
from .jsonout import SCHEMA
from .overrides import Override, parse_assignment, parse_value, split_values
from .plugins import Registry
from .report import columns, counter_unit, report
from .scenario import parse_scenario, run_scenario



@frozen
class Axis:
    """One swept key and its values, as :class:`Override` values, in the order given."""

    key: str
    values: tuple

    @classmethod
    def parse(cls, text):
        """The axis of ``KEY=V1,V2,...``."""
        key, values = parse_assignment(text)
        items = [value.strip() for value in split_values(values)]
        if not all(items):
            raise BadRequest(f"--set {text!r}: empty value (write KEY=V1,V2,...)")
        return cls(key, tuple(Override(key, parse_value(key, item), f"--set {key}={item}") for item in items))


def axes_of(texts):
    """The axes of the ``--set`` options; a key given twice is a :class:`BadRequest`."""
    axes = [Axis.parse(text) for text in texts]
    keys = [axis.key for axis in axes]
    for key in keys:
        if keys.count(key) > 1:
            raise BadRequest(f"--set {key} is given twice: list every value in one --set {key}=V1,V2,...")
    return axes


def points(axes):
    """Every combination of the axes' values (the first axis varies slowest)."""
    return [tuple(combo) for combo in itertools.product(*(axis.values for axis in axes))]


def _failure(status, error):
    """The result of a point that did not run to the end: ``invalid`` or ``failed``, and why."""
    return {"status": status, "machine": None, "counters": None,
            "error": {"type": type(error).__name__, "errno": getattr(error, "errno_name", None), "message": str(error)}}


def run_point(text, path, settings, disabled=()):
    """Validate and run one point (on a Dask worker): its record without the index and keys."""
    registry = Registry(disabled=disabled)
    try:
        scenario = parse_scenario(text, path, registry, settings)
    except VmemcoreError as error:
        return _failure("invalid", error)
    try:
        data = report(*run_scenario(scenario, registry=registry))
    except VmemcoreError as error:
        return _failure("failed", error)
    machine = {key: data["machine"][key] for key in ("arch", "variant", "kernel", "page_size")}
    return {"status": "ok", "machine": machine, "counters": dict(sorted(data["counters"].items())), "error": None}


def _record(index, point, result):
    return {"schema": SCHEMA, "index": index, "set": {item.key: item.value for item in point}, **result}


@contextmanager
def dask_client(scheduler=None, workers=None):
    """A :class:`distributed.Client` of the cluster at ``scheduler``, or of a local cluster of
    ``workers`` single-threaded worker processes, closed on exit."""
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            client = Client(scheduler, timeout="10s")
        except (OSError, TimeoutError) as error:
            raise BadRequest(f"--scheduler {scheduler}: cannot reach the Dask scheduler ({error})") from None
        with client:
            yield client
        return
    # no dashboard, and its HTTP server (health checks) on a free port rather than 8787
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, scheduler_kwargs={"dashboard_address": ":0"},
                      silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        yield client


def run_sweep(path, text, axes, disabled=(), scheduler=None, workers=None, show_progress=False):
    """Run every point of ``axes`` over the scenario ``text`` (read from ``path``): the records in
    point order. Points are validated here first; the valid ones run on the cluster (a local one
    has ``workers`` processes, default one per CPU, never more than there are points)."""
    registry = Registry(disabled=disabled)
    records, pending = {}, []
    for index, point in enumerate(points(axes)):
        try:
            parse_scenario(text, path, registry, point)
            pending.append((index, point))
        except VmemcoreError as error:
            records[index] = _record(index, point, _failure("invalid", error))
    if pending:
        from distributed import as_completed

        workers = min(workers or os.cpu_count() or 1, len(pending))
        with dask_client(scheduler, workers) as client, progress.bar("sweep", len(pending), show_progress) as advance:
            futures = {client.submit(run_point, text, path, point, tuple(disabled), pure=False): (index, point)
                       for index, point in pending}
            for future in as_completed(futures):
                index, point = futures[future]
                try:
                    result = future.result()
                except Exception as error:  # a worker lost or a bug: this point fails, the sweep goes on
                    result = _failure("failed", error)
                records[index] = _record(index, point, result)
                advance()
    return [records[i] for i in sorted(records)]


def in_bytes(records):
    """The records with every counter counted in pages (:func:`~vmemcore.report.counter_unit`)
    multiplied by its point's page size, so that arches with different page sizes compare."""
    return [r | {"counters": {name: value * r["machine"]["page_size"] if counter_unit(name) == "pages" else value
                              for name, value in r["counters"].items()}} if r["counters"] else r for r in records]


def counter_names(records):
    """Every counter any point reports, sorted."""
    return sorted({name for r in records if r["counters"] for name in r["counters"]})


def check_counters(records, wanted):
    """``wanted`` (``--y``) if every name is a counter some point reports, else a :class:`BadRequest`."""
    known = counter_names(records)
    for name in wanted:
        if known and name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise BadRequest(f"--y {name}: no point reports this counter (counters: {', '.join(known)}){hint}")
    return wanted


def format_value(value):
    """A swept value as the user would write it: ``16G``, ``8``, ``{ paging = "5-level" }``."""
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in value.items()) + " }"
    return json.dumps(value) if isinstance(value, bool) else str(value)


def format_table(records, counters):
    """One row per point: the swept values, the status and ``counters``; failures listed below."""
    keys = list(records[0]["set"])
    rows = [(*keys, "status", *counters)]
    for r in records:
        values = [f"{r['counters'].get(c, 0):,}" if r["counters"] else "" for c in counters]
        rows.append((*(format_value(v) for v in r["set"].values()), r["status"], *values))
    lines = columns(rows, right=range(len(keys) + 1, len(keys) + 1 + len(counters)))
    failed = [r for r in records if r["status"] != "ok"]
    if failed:
        lines += ["", f"{len(failed)} of {len(records)} points {'were' if len(failed) > 1 else 'was'} not run to the end:"]
        lines += [f"  [{r['index']}] {' '.join(f'{k}={format_value(v)}' for k, v in r['set'].items())}: "
                  f"{r['status']}: {r['error']['message']}" for r in failed]
    return "\n".join(lines)


def format_csv(records):
    """CSV with a header: index, the swept keys, status, machine, every counter (sorted), error."""
    keys = list(records[0]["set"])
    names = counter_names(records)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["index", *keys, "status", "arch", "variant", "kernel", "page_size", *names, "error"])
    for r in records:
        machine = r["machine"] or {}
        writer.writerow([r["index"], *map(format_value, r["set"].values()), r["status"],
                         *(machine.get(k, "") for k in ("arch", "variant", "kernel", "page_size")),
                         *((r["counters"].get(n, 0) if r["counters"] else "") for n in names),
                         r["error"]["message"] if r["error"] else ""])
    return out.getvalue().rstrip("\n")


def format_json_lines(records):
    """One JSON object per point and line, keys in a fixed order, counters sorted."""
    return "\n".join(json.dumps(r) for r in records)
