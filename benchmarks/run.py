"""The user's path, measured: each scenario of benchmarks/scenarios through `vmemcore run` in a
fresh process, plus `vmemcore --help`, `vmemcore arches` and the 16 GiB example.

    python benchmarks/run.py [--runs 3] [--only NAME ...] [--json]

Prints one table: scenario, median wall time of the runs, the median peak RSS of the process,
the target (a scenario's first line, `# target: N s`) and median / target. The README's figures
come from this table, with the date and the machine.
"""

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VMEMCORE = str(Path(sys.executable).with_name("vmemcore"))
COMMANDS = {  # name -> (arguments, target in seconds)
    "vmemcore --help": (["--help"], 0.15),
    "vmemcore arches": (["arches"], 0.15),
    "examples/x86_64-16G.toml": (["run", str(ROOT / "examples" / "x86_64-16G.toml")], 0.3),
}


def cases():
    """``(name, arguments, target)`` of every benchmark, the commands first."""
    out = [(name, args, target) for name, (args, target) in COMMANDS.items()]
    for path in sorted((ROOT / "benchmarks" / "scenarios").glob("*.toml")):
        found = re.match(r"# target: ([0-9.]+) s", path.read_text())
        out.append((path.stem, ["run", str(path)], float(found.group(1)) if found else None))
    return out


def measure(args):
    """Wall time (s) and peak RSS (MiB) of one `vmemcore ARGS` process."""
    start = time.perf_counter()
    child = subprocess.Popen([VMEMCORE, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    elapsed = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        raise RuntimeError(f"vmemcore {' '.join(args)} exited {child.returncode}: {child.stderr.read().decode()[-500:]}")
    return elapsed, usage.ru_maxrss / 1024


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="runs per benchmark (default 3)")
    parser.add_argument("--only", action="append", default=[], metavar="NAME",
                        help="only benchmarks whose name contains NAME (repeatable)")
    parser.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    args = parser.parse_args()
    rows = []
    for name, arguments, target in cases():
        if args.only and not any(part in name for part in args.only):
            continue
        runs = [measure(arguments) for _ in range(args.runs)]
        seconds = statistics.median(r[0] for r in runs)
        rows.append({"benchmark": name, "median_s": round(seconds, 3),
                     "peak_mib": round(statistics.median(r[1] for r in runs)), "target_s": target,
                     "ratio": round(seconds / target, 2) if target else None})
        if args.json:
            print(json.dumps(rows[-1]), flush=True)
    if not args.json:
        print(f"{date.today()}, {platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
              f"median of {args.runs}")
        header = ("benchmark", "median", "peak RSS", "target", "ratio")
        table = [header] + [(r["benchmark"], f"{r['median_s']:.2f} s", f"{r['peak_mib']} MiB",
                             f"{r['target_s']:g} s" if r["target_s"] else "-", f"{r['ratio']:.2f}" if r["ratio"] else "-")
                            for r in rows]
        widths = [max(len(row[i]) for row in table) for i in range(len(header))]
        for row in table:
            print("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))))


if __name__ == "__main__":
    main()
