"""Live-entry checking: what `vmemcore run --check-live-entries` costs on the user's path.

    python benchmarks/bench_live_entries.py [--runs 3] [--pool 256G] [--arch x86_64] [--kernel 6.12]

Each run is a fresh `vmemcore run` process of a scenario that grows a pool of 2 MiB HugeTLB pages
with HVO and shrinks it to 0, once without and once with --check-live-entries. Prints the
medians and their ratio (target, issue 14: at most 2x; off costs nothing measurable).
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SCENARIO = """
[machine]
arch = "{arch}"
kernel = "{kernel}"
[[memory]]
size = "{memory}"
[hugetlb]
optimize_vmemmap = true
[[steps]]
op = "hugetlb.resize"
size = "2M"
count = {count}
[[steps]]
op = "hugetlb.resize"
size = "2M"
count = 0
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--pool", default="256G", help="pool size (a multiple of 2M)")
    parser.add_argument("--arch", default="x86_64")
    parser.add_argument("--kernel", default="6.12")
    args = parser.parse_args()
    from vmemcore.units import parse_size, format_size
    pool = parse_size(args.pool)
    text = SCENARIO.format(arch=args.arch, kernel=args.kernel, memory=format_size(pool + (16 << 30)),
                           count=pool // (2 << 20))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pool.toml"
        path.write_text(text)
        times = {"off": [], "on": []}
        for _ in range(args.runs):
            for mode, extra in (("off", []), ("on", ["--check-live-entries"])):
                start = time.perf_counter()
                subprocess.run([str(Path(sys.executable).with_name("vmemcore")), "run", *extra, str(path)],
                               check=True, stdout=subprocess.DEVNULL)
                times[mode].append(time.perf_counter() - start)
    off, on = statistics.median(times["off"]), statistics.median(times["on"])
    print(json.dumps({"pool": args.pool, "arch": args.arch, "kernel": args.kernel, "runs": args.runs,
                      "off_s": round(off, 3), "on_s": round(on, 3), "ratio": round(on / off, 3)}))


if __name__ == "__main__":
    main()
