"""Boot-populate benchmark: medians of wall time and peak memory, each run in a fresh process.

    python benchmarks/bench_boot.py [--runs 5]

Targets (issue 2): 64 TiB x86_64 4-level in <= 5 s and <= 1 GiB; 1 PiB 5-level in <= 60 s and <= 2 GiB.
"""

import argparse
import json
import statistics
import subprocess
import sys

CASES = {
    "x86_64 4-level 64T": ("4-level", "64T"),
    "x86_64 5-level 1P": ("5-level", "1P"),
}

CHILD = """
import json, resource, sys, time
from vmemcore.machine import Machine
t = time.perf_counter()
m = Machine("x86_64", variant=sys.argv[1], memory=[{"size": sys.argv[2]}])
elapsed = time.perf_counter() - t
c = m.counters()
print(json.dumps({"seconds": elapsed, "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "pmd_leaves": c["vmemmap_leaves_2M"], "pmd_tables": c["vmemmap_pagetable_pages_pmd"]}))
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    for name, (variant, size) in CASES.items():
        runs = [json.loads(subprocess.run([sys.executable, "-c", CHILD, variant, size], check=True,
                                          capture_output=True, text=True).stdout) for _ in range(args.runs)]
        seconds = statistics.median(r["seconds"] for r in runs)
        peak = statistics.median(r["peak_mib"] for r in runs)
        print(f"{name}: median {seconds:.3f} s, peak {peak:.0f} MiB over {args.runs} runs "
              f"({runs[0]['pmd_leaves']:,} PMD leaves, {runs[0]['pmd_tables']:,} PMD tables)")


if __name__ == "__main__":
    main()
