"""``vmemcore conformance`` and ``vmemcore capabilities``: the suite and the capability matrix
outside a pytest project, as tables or JSON."""

import contextlib
import sys
import tempfile
from pathlib import Path

import pytest

from ..plugins import Registry
from ..profiles import select_kernels
from .capabilities import probe


class _Collector:
    """A pytest plugin that records each check's outcome per target."""

    def __init__(self):
        self.results = []

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item, call):
        report = yield
        callspec = getattr(item, "callspec", None)
        target = callspec.params.get("vmemcore_target") if callspec else None
        if target is None or (report.when != "call" and not (report.failed or report.skipped)):
            return report
        extra = "".join(f"[{k}={v}]" for k, v in callspec.params.items() if k != "vmemcore_target")
        if report.skipped:
            message = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            message = message.removeprefix("Skipped: ")
        elif report.failed:
            crash = getattr(report.longrepr, "reprcrash", None)
            message = crash.message if crash is not None else str(report.longrepr)
        else:
            message = ""
        self.results.append({"target": target.id, "arch": target.arch, "variant": target.variant,
                             "kernel": target.kernel, "features": dict(target.features),
                             "check": item.originalname + extra, "outcome": report.outcome, "message": message})
        return report


def run_conformance(arches=(), variants=(), kernels=(), full=False, disabled=(), quiet=True) -> dict:
    """Run the suite; ``{"results": [...], "passed", "failed", "skipped"}`` (the CLI adds ``schema``)."""
    suite = Path(__file__).with_name("suite.py")
    with tempfile.TemporaryDirectory() as home:  # an empty configuration: the caller's own pytest.ini stays out
        ini = Path(home) / "pytest.ini"
        ini.write_text("[pytest]\n")
        return _run(suite, ini, arches, variants, kernels, full, disabled, quiet)


def _run(suite, ini, arches, variants, kernels, full, disabled, quiet):
    args = [str(suite), "-p", "vmemcore.testing", "-p", "no:cacheprovider", "--rootdir", str(ini.parent),
            "-c", str(ini), "-q" if quiet else "-v", "--no-header", "-rN"]
    for option, values in (("--vmemcore-arch", arches), ("--vmemcore-variant", variants),
                           ("--vmemcore-kernel", kernels), ("--vmemcore-disable", disabled)):
        for value in values:
            args += [option, value]
    if full:
        args.append("--vmemcore-full")
    args += ["-W", "ignore::pytest.PytestAssertRewriteWarning"]  # vmemcore is imported before pytest starts
    collector = _Collector()
    with contextlib.redirect_stdout(sys.stderr):  # pytest's progress on stderr; stdout is the matrix
        code = pytest.main(args, plugins=[collector])
    if code not in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED):
        raise RuntimeError(f"the conformance suite could not run (pytest exit {int(code)})")
    counts = {outcome: sum(r["outcome"] == outcome for r in collector.results)
              for outcome in ("passed", "failed", "skipped")}
    return {"results": collector.results, **counts}


def format_matrix(data) -> str:
    """The matrix as text: a row per target, a column per check (P pass, F fail, s skip), then
    every failure with its message and every distinct skip reason."""
    checks = list(dict.fromkeys(r["check"] for r in data["results"]))
    targets = list(dict.fromkeys(r["target"] for r in data["results"]))
    cell = {(r["target"], r["check"]): r for r in data["results"]}
    mark = {"passed": "P", "failed": "F", "skipped": "s"}
    wide = max((len(t) for t in targets), default=6)
    lines = ["checks:"] + [f"  {i + 1:>2}  {name}" for i, name in enumerate(checks)]
    lines.append("")
    lines.append(f"{'target':<{wide}}  " + " ".join(f"{i + 1:>2}" for i in range(len(checks))))
    for t in targets:
        lines.append(f"{t:<{wide}}  " + " ".join(f"{mark[cell[(t, c)]['outcome']] if (t, c) in cell else '-':>2}"
                                                for c in checks))
    failures = [r for r in data["results"] if r["outcome"] == "failed"]
    if failures:
        lines += ["", "failures:"] + [f"  {r['target']} {r['check']}: {r['message']}" for r in failures]
    reasons = sorted({r["message"] for r in data["results"] if r["outcome"] == "skipped"})
    if reasons:
        lines += ["", "skipped because:"] + [f"  {reason}" for reason in reasons]
    lines += ["", f"{data['passed']} passed, {data['failed']} failed, {data['skipped']} skipped"]
    return "\n".join(lines)


def capability_matrix(registry: Registry, arches=(), variants=(), kernels=()) -> dict:
    """Per arch, variant and profile: what the arch offers, from its own hook answers."""
    from . import Target

    rows = []
    for arch in sorted(arches or registry.arches):
        plugin = registry.get(arch)
        for variant in plugin.info.variants:
            if variants and variant.name not in variants:
                continue
            for kernel in select_kernels(kernels):
                target = Target(plugin.name, arch, variant.name, kernel)
                caps = probe(lambda: target.machine(registry, hotplug={"memmap_on_memory": "Y"}))
                rows.append({"arch": arch, "variant": variant.name, "kernel": kernel, **caps.report()})
    return {"capabilities": rows}


def format_capabilities(data) -> str:
    """A row per arch, variant and profile; a refusal shows as "no" and its reason is listed once below."""
    keys = ("hvo", "dax_dedup", "memory_hotplug", "zone_device", "memmap_on_memory")
    heads = ("HVO", "dax dedup", "hotplug", "ZONE_DEVICE", "memmap_on_memory")
    reasons = {}

    def show(answer):
        if answer["supported"]:
            return "yes"
        number = reasons.setdefault(answer["reason"], len(reasons) + 1)
        return f"no[{number}]"

    table = []
    for row in data["capabilities"]:
        name = f"{row['arch']} {row['variant']} {row['kernel']}"
        if not row["boots"]["supported"]:
            table.append((name, f"does not boot[{reasons.setdefault(row['boots']['reason'], len(reasons) + 1)}]"))
            continue
        sizes = ",".join(h["size"] + (f"x{h['contiguous']}" if h["contiguous"] > 1 else "") for h in row["hugepage_sizes"])
        table.append((name, sizes or "-", *(show(row[k]) for k in keys), row.get("vmemmap", "")))
    heads += ("vmemmap",)
    wide = [max(len(r[i]) for r in table if len(r) > i) for i in range(len(heads) + 2)]
    header = ("target", "HugeTLB sizes") + heads
    widths = [max(w, len(h)) for w, h in zip(wide, header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in table]
    lines += ["", "reasons:"] + [f"  [{n}] {reason}" for reason, n in reasons.items()]
    return "\n".join(lines)
