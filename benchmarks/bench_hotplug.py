"""Hotplug benchmark: hot-add and online 16 TiB in 2 GiB blocks, then offline and remove it all.

    python benchmarks/bench_hotplug.py [--runs 3] [--size 16T] [--memmap-on-memory]

x86_64 with 64 GiB of boot memory (so its memory block size is 2 GiB), kernel 6.12, blocks onlined
to ZONE_NORMAL. Without memmap_on_memory each block's memmap comes from the heads of the buddy
allocator's free lists; blocks are offlined and removed newest first, which works before 5.10 (when
a block's memmap lands in memory hot-added before it) as well as after (boot memory, ahead of the
onlined blocks on the lists). Target (issue 4): at most 20 s in total.
"""

import argparse
import json
import statistics
import subprocess
import sys

CHILD = """
import json, resource, sys, time
from vmemcore.machine import Machine
from vmemcore.units import GiB, TiB, parse_size
size, on_memory = parse_size(sys.argv[1]), sys.argv[2] == "1"
m = Machine("x86_64", memory=[{"size": 64 * GiB}], hotplug={"memmap_on_memory": "Y"})
before = m.counters()
block = m.hotplug.block_size
start = 1 * TiB
t = time.perf_counter()
for offset in range(0, size, block):
    for b in m.hotplug.add_memory(start + offset, block, memmap_on_memory=on_memory).blocks:
        m.hotplug.online(b)
added = time.perf_counter() - t
grown = m.counters()
t = time.perf_counter()
for offset in reversed(range(0, size, block)):  # newest first
    m.hotplug.offline((start + offset) // block)
    m.hotplug.remove_memory(start + offset, block)
removed = time.perf_counter() - t
after = m.counters()
assert after["nr_memmap_pages"] == before["nr_memmap_pages"] and after["present_pages"] == before["present_pages"]
print(json.dumps({"add": added, "remove": removed, "blocks": size // block,
                  "memmap_pages": grown["nr_memmap_pages"] - before["nr_memmap_pages"],
                  "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size", default="16T")
    parser.add_argument("--memmap-on-memory", action="store_true")
    args = parser.parse_args()
    runs = [json.loads(subprocess.run([sys.executable, "-c", CHILD, args.size, "1" if args.memmap_on_memory else "0"],
                                      check=True, capture_output=True, text=True).stdout) for _ in range(args.runs)]
    add = statistics.median(r["add"] for r in runs)
    remove = statistics.median(r["remove"] for r in runs)
    print(f"{args.size} in {runs[0]['blocks']:,} blocks of 2 GiB{' (memmap_on_memory)' if args.memmap_on_memory else ''}: "
          f"add+online median {add:.2f} s, offline+remove median {remove:.2f} s, total {add + remove:.2f} s; "
          f"peak {statistics.median(r['peak_mib'] for r in runs):.0f} MiB; {runs[0]['memmap_pages']:,} memmap pages")


if __name__ == "__main__":
    main()
