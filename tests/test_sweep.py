"""``vmemcore sweep`` on a local Dask cluster and on a scheduler and worker started here, its
table, CSV, JSON lines and plots (issue 12, item 1).

Every struct page is 64 bytes on the four arches, so a boot's memmap is size / page size x 64
bytes: x86_64 16 GiB: 16 GiB / 4 KiB x 64 = 256 MiB = 65,536 pages of 4 KiB; powerpc radix-64K
16 GiB: 16 GiB / 64 KiB x 64 = 16 MiB = 256 pages of 64 KiB.
"""

import csv
import io
import json
import socket
import subprocess
import sys
import time

import pytest

from vmemcore.errors import BadRequest
from vmemcore.plot import check_format, plot_axes, sweep_figure
from vmemcore.sweep import Axis, axes_of, points
from vmemcore.units import parse_size

from scenario_helpers import EXAMPLES
from subprocess_helpers import on_a_terminal, vmemcore

X16G = str(EXAMPLES / "x86_64-16G.toml")
HVO = str(EXAMPLES / "x86_64-hvo-2M.toml")
ACCEPTANCE = ["--set", "machine.arch=x86_64,arm64,s390,powerpc", "--set", "memory[0].size=16G,256G,4T"]
ARCHES = ["x86_64", "arm64", "s390", "powerpc"]
SIZES = ["16G", "256G", "4T"]
MIXED = ["--set", "machine.arch=x86_64,powerpc", "--set", "machine.variant=5-level,hash-64K,radix-4K",
         "--set", "memory[0].size=1G"]


def records_of(result):
    return [json.loads(line) for line in result.stdout.splitlines()]


def table_rows(text):
    """The rows of the sweep table, header first, split at runs of spaces."""
    lines = text.split("\n\n")[0].splitlines()
    return [line.split() for line in lines]


# ------------------------------------------------------------------------------------- local

@pytest.fixture(scope="module")
def local(tmp_path_factory):
    """The acceptance command on a local cluster (none set up beforehand): its table and PNG."""
    out = tmp_path_factory.mktemp("local")
    result = vmemcore("sweep", X16G, *ACCEPTANCE, "--plot", "memmap.png", cwd=out)
    return result, out / "memmap.png"


@pytest.fixture(scope="module")
def local_json(tmp_path_factory):
    out = tmp_path_factory.mktemp("local_json")
    result = vmemcore("sweep", X16G, *ACCEPTANCE, "--json", "--workers", "1", "--plot", "memmap.svg", cwd=out)
    assert result.returncode == 0, result.stderr
    return records_of(result), out / "memmap.svg"


def test_acceptance_runs_locally(local):
    result, png = local
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # no progress bar (not a terminal), no Dask chatter
    rows = table_rows(result.stdout)
    assert rows[0] == ["machine.arch", "memory[0].size", "status", "memmap_frames", "pagetable_frames"]
    assert [row[:3] for row in rows[1:]] == [[a, s, "ok"] for a in ARCHES for s in SIZES]
    frames = {(row[0], row[1]): int(row[3].replace(",", "")) for row in rows[1:]}
    assert frames["x86_64", "16G"] == 65_536  # 16 GiB / 4 KiB x 64 B = 256 MiB
    assert frames["powerpc", "16G"] == 256  # 16 GiB / 64 KiB x 64 B = 16 MiB of 64 KiB pages
    for arch in ARCHES:  # the memmap scales with memory: x16 from 16G to 256G and again to 4T
        assert frames[arch, "256G"] == 16 * frames[arch, "16G"] and frames[arch, "4T"] == 256 * frames[arch, "16G"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_json_lines(local_json):
    records, svg = local_json
    assert [(r["index"], r["set"]) for r in records] == [
        (i, {"machine.arch": a, "memory[0].size": s}) for i, (a, s) in enumerate((a, s) for a in ARCHES for s in SIZES)]
    for r in records:
        assert list(r) == ["schema", "index", "set", "status", "machine", "counters", "error"] and r["schema"] == 1
        assert r["status"] == "ok" and r["error"] is None
        assert list(r["counters"]) == sorted(r["counters"])
        page = r["machine"]["page_size"]
        assert r["counters"]["memmap_frames"] * page == parse_size(r["set"]["memory[0].size"]) // page * 64
    assert {r["machine"]["variant"] for r in records if r["machine"]["arch"] != "x86_64"} == {"4K-48", "3-level", "radix-64K"}
    assert svg.read_text().lstrip().startswith("<?xml") and "<svg" in svg.read_text()


# ------------------------------------------------------------------------------------- scheduler

def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def scheduler():
    """A dask-scheduler and one single-threaded dask-worker on localhost, stopped afterwards."""
    address = f"tcp://127.0.0.1:{_free_port()}"
    port = address.rsplit(":", 1)[1]
    procs = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                               "--port", port, "--no-dashboard"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        procs.append(subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address, "--nworkers", "1",
                                       "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        from distributed import Client

        deadline = time.monotonic() + 120
        while True:
            try:
                with Client(address, timeout="5s") as client:
                    client.wait_for_workers(1, timeout=120)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
        yield address
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_scheduler_gives_identical_results(scheduler, local, local_json):
    result = vmemcore("sweep", X16G, *ACCEPTANCE, "--json", "--scheduler", scheduler)
    assert result.returncode == 0 and result.stderr == ""
    assert records_of(result) == local_json[0]
    table = vmemcore("sweep", X16G, *ACCEPTANCE, "--scheduler", scheduler)
    assert table.stdout == local[0].stdout


def test_failed_points_are_reported_and_the_sweep_goes_on(scheduler):
    """x86_64 has 5-level but no hash-64K or radix-4K; powerpc has both but no 5-level: invalid
    points. x86_64 5-level and powerpc radix-4K run: 1 GiB / 4 KiB x 64 B = 16 MiB = 4,096 pages; powerpc
    hash-64K bolts its 1 MiB of struct pages in one 16 MiB block (boot RAM >= 1 GiB): 256 pages of 64 KiB."""
    result = vmemcore("sweep", X16G, *MIXED, "--scheduler", scheduler)
    assert result.returncode == 1
    assert result.stderr == "vmemcore: error: 3 of 6 points did not run to the end (their errors are in the output)\n"
    rows = table_rows(result.stdout)
    assert [row[:4] for row in rows[1:]] == [
        ["x86_64", "5-level", "1G", "ok"], ["x86_64", "hash-64K", "1G", "invalid"], ["x86_64", "radix-4K", "1G", "invalid"],
        ["powerpc", "5-level", "1G", "invalid"], ["powerpc", "hash-64K", "1G", "ok"], ["powerpc", "radix-4K", "1G", "ok"]]
    assert rows[1][4] == rows[6][4] == "4,096" and rows[5][4] == "256"
    failures = result.stdout.split("\n\n")[1]
    assert "[1] machine.arch=x86_64 machine.variant=hash-64K memory[0].size=1G: invalid: " in failures
    assert "x86_64 has no variant 'hash-64K'" in failures and "(--set machine.variant=hash-64K)" in failures
    assert "[3] machine.arch=powerpc machine.variant=5-level memory[0].size=1G: invalid: " in failures

    result = vmemcore("sweep", X16G, *MIXED, "--csv", "--scheduler", scheduler)
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [row["status"] for row in rows] == ["ok", "invalid", "invalid", "invalid", "ok", "ok"]
    assert (rows[4]["variant"], rows[4]["page_size"], rows[4]["memmap_frames"]) == ("hash-64K", "65536", "256")
    assert (rows[5]["variant"], rows[5]["page_size"], rows[5]["memmap_frames"]) == ("radix-4K", "4096", "4096")


def test_progress_counts_points_on_a_terminal(scheduler):
    result, err = on_a_terminal("sweep", X16G, "--set", "memory[0].size=1G,2G,4G", "--scheduler", scheduler)
    assert result.returncode == 0 and "sweep" in err and "3/3" in err
    result, err = on_a_terminal("sweep", X16G, "--set", "memory[0].size=1G,2G,4G", "--scheduler", scheduler, "--quiet")
    assert result.returncode == 0 and err == ""


def test_bytes(scheduler):
    """--bytes: page counters times the page size. 1 GiB of x86_64: 1 GiB / 4 KiB x 64 bytes = 16 MiB
    of memmap, 4,096 pages of 4 KiB. powerpc radix-64K: 1 GiB / 64 KiB x 64 bytes = 1 MiB, mapped by
    one 2 MiB PMD leaf: 32 pages of 64 KiB = 2 MiB."""
    argv = ["sweep", X16G, "--set", "arch=x86_64,powerpc", "--set", "memory[0].size=1G", "--json", "--scheduler", scheduler]
    pages, in_bytes = records_of(vmemcore(*argv)), records_of(vmemcore(*argv, "--bytes"))
    assert [r["counters"]["memmap_frames"] for r in pages] == [4_096, 32]
    assert [r["counters"]["memmap_frames"] for r in in_bytes] == [16 << 20, 2 << 20]
    assert [r["counters"]["vmemmap_mapped_bytes_2M"] for r in in_bytes] == [r["counters"]["vmemmap_mapped_bytes_2M"] for r in pages]


def test_step_counts_swept(scheduler):
    """The two pool sizes of the HVO example: each 2 MiB page optimized frees its 8 vmemmap pages
    and takes a new head page (7 net); max(grow, keep) pages are optimized in all (the second step
    grows the pool when keep > grow), and the keep pages left at the end stay optimized."""
    result = vmemcore("sweep", HVO, "--set", "steps[0].count=0,64,512", "--set", "steps[1].count=0,64",
                      "--y", "hvo_vmemmap_pages_freed,memmap_frames", "--json", "--scheduler", scheduler)
    assert result.returncode == 0, result.stderr
    got = {(r["set"]["steps[0].count"], r["set"]["steps[1].count"]): r["counters"] for r in records_of(result)}
    for (grow, keep), counters in got.items():
        assert counters.get("hvo_vmemmap_pages_freed", 0) == 8 * max(grow, keep)
        assert counters["memmap_frames"] == 65_536 - 7 * keep
    assert len(got) == 6


def test_nothing_valid_exits_2_without_a_cluster():
    result = vmemcore("sweep", X16G, "--set", "machine.kernal=6.12,7.1", "--scheduler", "tcp://127.0.0.1:9")
    assert result.returncode == 2  # the unreachable scheduler is never contacted
    assert "did you mean 'kernel'?" in result.stdout and "Traceback" not in result.stderr


@pytest.mark.parametrize("argv, message", [
    (["--set", "machine.arch=x86_64", "--set", "machine.arch=arm64"], "is given twice"),
    (["--set", "memory[0].size=16G,,1T"], "empty value"),
    (["--set", "memory[0].size=16G", "--plot", "m.jpg"], "write FILE.png or FILE.svg"),
    (["--set", "memory[0].size=16G", "--plot", "m.png", "--x", "memory[0].sise"], "did you mean 'memory[0].size'?"),
    (["--set", "memory[0].size=1G", "--y", "memap_frames", "--scheduler", "{scheduler}"], "did you mean 'memmap_frames'?"),
    (["--set", "memory[0].size=1G", "--scheduler", "tcp://127.0.0.1:9"], "cannot reach the Dask scheduler"),
])
def test_bad_command_lines_exit_2(argv, message, request):
    if "{scheduler}" in argv:
        argv = [request.getfixturevalue("scheduler") if a == "{scheduler}" else a for a in argv]
    result = vmemcore("sweep", X16G, *argv)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


# ------------------------------------------------------------------------------------- plot

def test_plotted_series_equal_the_table(local, local_json):
    """The figure's lines hold the table's numbers: one line per arch, x the size in bytes."""
    records = local_json[0]
    rows = table_rows(local[0].stdout)
    table = {(row[0], row[1]): (int(row[3].replace(",", "")), int(row[4].replace(",", ""))) for row in rows[1:]}
    axes = axes_of(ACCEPTANCE[1::2])
    x, group = plot_axes(axes)
    assert (x, group) == ("memory[0].size", ["machine.arch"])
    figure = sweep_figure(records, x, group, ["memmap_frames", "pagetable_frames"])
    assert [panel.get_ylabel() for panel in figure.axes] == ["memmap_frames (pages)", "pagetable_frames (pages)"]
    for column, panel in enumerate(figure.axes):
        assert [line.get_label() for line in panel.lines] == [f"machine.arch={a}" for a in ARCHES]
        for arch, line in zip(ARCHES, panel.lines):
            assert list(line.get_xdata()) == [16 << 30, 256 << 30, 4 << 40]
            assert list(line.get_ydata()) == [table[arch, size][column] for size in SIZES]


def test_plot_of_categories_skips_failed_points():
    records = [
        {"set": {"machine.arch": "x86_64", "machine.kernel": k}, "status": s, "counters": c}
        for k, s, c in (("6.12", "ok", {"memmap_frames": 5}), ("7.1", "failed", None), ("6.19", "ok", {"memmap_frames": 7}))]
    axes = [Axis.parse("machine.arch=x86_64"), Axis.parse("machine.kernel=6.12,7.1,6.19")]
    x, group = plot_axes(axes)
    assert (x, group) == ("machine.kernel", [])
    (panel,) = sweep_figure(records, x, group, ["memmap_frames"], in_bytes=True).axes
    assert panel.get_ylabel() == "memmap_frames (bytes)"
    (line,) = panel.lines
    assert list(line.get_xdata()) == [0, 2] and list(line.get_ydata()) == [5, 7]
    assert [t.get_text() for t in panel.get_xticklabels()] == ["6.12", "7.1", "6.19"]


def test_plot_keys_checked():
    axes = axes_of(["machine.arch=x86_64,arm64", "memory[0].size=1G,2G", "machine.kernel=6.12,7.1"])
    assert plot_axes(axes) == ("memory[0].size", ["machine.arch", "machine.kernel"])
    with pytest.raises(BadRequest, match="machine.kernel varies too"):
        plot_axes(axes, group=["machine.arch"])
    with pytest.raises(BadRequest, match="not a swept key"):
        plot_axes(axes, x="steps[0].count")
    with pytest.raises(BadRequest):
        check_format("plot.pdf")


def test_points_are_the_product_in_order():
    axes = axes_of(["arch=x86_64,arm64", 'variant={ page = "16K", va_bits = 47 },4-level'])
    assert [a.key for a in axes] == ["machine.arch", "machine.variant"]
    assert [[o.value for o in p] for p in points(axes)] == [
        ["x86_64", {"page": "16K", "va_bits": 47}], ["x86_64", "4-level"],
        ["arm64", {"page": "16K", "va_bits": 47}], ["arm64", "4-level"]]


def test_sweep_reads_the_scenario_from_stdin_and_refuses_devices():
    """One reader for every command: ``-`` is standard input, a device is refused (exit 2)."""
    import subprocess
    import sys
    from pathlib import Path

    example = (Path(__file__).parent.parent / "examples" / "x86_64-16G.toml").read_text()
    code = "import sys; from vmemcore.cli import main; sys.exit(main(sys.argv[1:]))"
    done = subprocess.run([sys.executable, "-c", code, "sweep", "-", "--set", "memory[0].size=1G,2G", "--workers", "1",
                           "--json"], input=example, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    # 1 GiB: 262,144 struct pages x 64 B = 4,096 pages of 4 KiB
    assert [r["counters"]["nr_memmap_boot_pages"] for r in rows] == [4096, 8192]
    refused = subprocess.run([sys.executable, "-c", code, "sweep", "/dev/zero", "--set", "kernel=6.12"],
                             capture_output=True, text=True)
    assert refused.returncode == 2 and "not a regular file or a pipe" in refused.stderr
