"""``--json`` on every command: ``schema`` first, a stable counter order, failures as JSON error
objects with the report up to the failed step, ``-`` for stdin, ``vmemcore --version``."""

import io
import json
import subprocess
import sys
from importlib.metadata import version

import pytest

from scenario_helpers import EXAMPLES, HEAD, cli
from vmemcore.cli import main
from vmemcore.jsonout import SCHEMA
from vmemcore.stats import COUNTER_ORDER, counter_key

HVO_2M = str(EXAMPLES / "x86_64-hvo-boot-1G.toml")

CLASH = HEAD + """
[[steps]]
op = "memmap.add"
start = "64G"
size = "2M"

[[steps]]
op = "memmap.add"
start = "64G"
size = "2M"
"""  # steps[1] (line 11) asks again for the sub-section steps[0] added: -EEXIST


def _json(capsys, *argv):
    """Run ``vmemcore ARGV``: (exit code, the JSON object on stdout)."""
    code = main(list(argv))
    return code, json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("argv", [
    ["run", str(EXAMPLES / "x86_64-16G.toml")],
    ["blocks", str(EXAMPLES / "x86_64-hotplug-roundtrip.toml")],
    ["kpageflags", HVO_2M, "--pfn", "0x380000", "--count", "2"],
    ["kpageflags", HVO_2M, "--hugetlb", "1G", "--check"],
    ["diagram", HVO_2M],
    ["arches"],
    ["arches", "arm64", "--variant", "16K-47"],
    ["capabilities", "riscv64", "--kernel", "6.12"],
])
def test_every_command_prints_json_with_the_schema_first(capsys, argv):
    code, data = _json(capsys, *argv, "--json")
    assert code == 0
    assert list(data)[0] == "schema" and data["schema"] == SCHEMA == 1


def test_conformance_json_has_the_schema(capsys):
    code, data = _json(capsys, "conformance", "--arch", "riscv64", "--variant", "Sv39", "--kernel", "6.12", "--json")
    assert (code, list(data)[:2], data["schema"], data["failed"]) == (0, ["schema", "results"], 1, 0)


def test_diagram_json_has_both_sides_and_the_summary(capsys):
    code, data = _json(capsys, "diagram", HVO_2M, "--json")
    assert (code, data["size"], data["current"], data["note"]) == (0, "1G", "after", None)
    # 262,144 struct pages x 64 bytes = 4,096 vmemmap pages: before, 4,096 frames (page 0, then
    # 4,095 restored ones); after, all on the head's page. The restore takes its pages from the
    # free lists' heads, lowest first within each block, and alloc_vmemmap_page_list list_add()s
    # each, so the PTEs map them highest first: no run of consecutive frames, 4,096 runs of one
    runs = data["before"]["runs"]
    assert [(r["first"], r["count"]) for r in runs] == [(i, 1) for i in range(4096)]
    assert len({r["frame"] for r in runs}) == 4096
    assert (data["before"]["distinct_frames"], data["after"]["distinct_frames"]) == (4096, 1)
    assert data["after"]["shared_frames"][0]["vmemmap_pages"] == 4096
    assert data["summary"]["frames_freed"] == 4095 - data["summary"]["newly_allocated"]


def test_diagram_json_without_hvo_has_one_side_and_says_why(tmp_path, capsys):
    source = '[machine]\narch = "arm64"\n[[memory]]\nsize = "4G"\n[[steps]]\nop = "hugetlb.resize"\nsize = "2M"\ncount = 1\n'
    code, out, _ = cli(tmp_path, capsys, source, "diagram", "--json")
    data = json.loads(out)
    assert (code, data["current"], data["after"], data["summary"]) == (0, "before", None, None)
    assert "HVO is not available on arm64" in data["note"] and data["before"]["vmemmap_pages"] == 8


def test_counters_come_in_one_documented_order(capsys):
    orders = []
    for name in ("x86_64-16G.toml", "x86_64-devdax-1G.toml", "x86_64-hvo-2M.toml", "x86_64-2nodes-1T.toml"):
        _, data = _json(capsys, "run", str(EXAMPLES / name), "--json")
        names = list(data["counters"])
        assert names == sorted(names, key=counter_key) and list(data["counter_units"]) == names
        for step in data["steps"]:
            assert list(step["changes"]) == sorted(step["changes"], key=counter_key)
        orders.append(names)
    common = set.intersection(*map(set, orders))
    assert len({tuple(n for n in names if n in common) for names in orders}) == 1
    assert orders[0][:2] == ["nr_memmap_boot_pages", "nr_memmap_pages"]
    # page tables top down, leaves largest first, whatever order they were allocated in
    assert sorted(["vmemmap_pagetable_pages_pte", "vmemmap_pagetable_pages_pud", "vmemmap_pagetable_pages_pmd",
                   "vmemmap_leaves_4K", "vmemmap_leaves_1G", "vmemmap_leaves_2M", "tlb_flush_all", "zz_new"],
                  key=counter_key) == [
        "vmemmap_pagetable_pages_pud", "vmemmap_pagetable_pages_pmd", "vmemmap_pagetable_pages_pte",
        "vmemmap_leaves_1G", "vmemmap_leaves_2M", "vmemmap_leaves_4K", "tlb_flush_all", "zz_new"]
    assert len(set(COUNTER_ORDER)) == len(COUNTER_ORDER)


def test_a_failed_step_prints_the_error_and_the_report_so_far(tmp_path, capsys):
    code, out, err = cli(tmp_path, capsys, CLASH, "run", "--json")
    data = json.loads(out)
    assert code == 1 and list(data) == ["schema", "error", "report"]
    error = data["error"]
    assert (error["type"], error["errno"], error["errno_name"]) == ("BadRequest", -17, "EEXIST")
    assert (error["key"], error["line"], error["step"], error["op"]) == ("steps[1]", 11, 1, "memmap.add")
    assert error["path"] == str(tmp_path / "s.toml")
    assert error["message"] in err and "already have a memmap (-EEXIST)" in error["message"]
    report = data["report"]
    assert [s["index"] for s in report["steps"]] == [0]  # the report stops before the failed step
    assert report["counters"]["nr_memmap_pages"] == 8  # steps[0]'s 2M sub-section: 512 x 64 bytes / 4K


def test_a_bad_scenario_prints_the_error_and_exits_2(tmp_path, capsys):
    code, out, err = cli(tmp_path, capsys, HEAD.replace('size = "16G"', 'sise = "16G"'), "blocks", "--json")
    data = json.loads(out)
    assert code == 2 and data["schema"] == 1 and data["report"] is None
    error = data["error"]
    assert (error["type"], error["errno_name"], error["key"], error["line"]) == ("ScenarioError", "EINVAL", "memory[0].sise", 4)
    assert "did you mean 'size'?" in error["message"] and error["message"] in err


def test_a_boot_failure_has_no_report(tmp_path, capsys):
    source = HEAD.replace('"x86_64"', '"x86_64"\nkernel = "6.1"') + '[hotplug]\nmemmap_on_memory = "force"\n'
    code, out, _ = cli(tmp_path, capsys, source, "kpageflags", "--pfn", "0", "--json")
    data = json.loads(out)
    assert (code, data["report"], data["error"]["step"], data["error"]["key"]) == (1, None, None, None)
    assert "no 'force' mode" in data["error"]["message"]


def test_a_bad_command_line_is_a_json_error_too(capsys):
    code, data = _json(capsys, "arches", "x86-64", "--json")
    assert code == 2 and data["error"]["type"] == "BadRequest" and "did you mean 'x86_64'?" in data["error"]["message"]
    code, data = _json(capsys, "kpageflags", HVO_2M, "--pfn", "0", "--check", "--json")
    assert code == 2 and "--check and --index go with --hugetlb" in data["error"]["message"]


def test_a_usage_error_is_a_json_error_too(capsys):
    with pytest.raises(SystemExit) as info:
        main(["run", str(EXAMPLES / "x86_64-16G.toml"), "--json", "--bogus"])
    assert info.value.code == 2
    captured = capsys.readouterr()
    error = json.loads(captured.out)["error"]
    assert (error["type"], error["message"]) == ("BadRequest", "vmemcore: unrecognized arguments: --bogus")
    assert "vmemcore: error: unrecognized arguments: --bogus" in captured.err  # argparse's usage and message
    with pytest.raises(SystemExit):
        main(["run", "--bogus"])
    assert capsys.readouterr().out == ""  # without --json, nothing on stdout


def test_dash_reads_the_scenario_from_stdin(monkeypatch, capsys):
    path = EXAMPLES / "x86_64-16G.toml"
    assert main(["run", str(path)]) == 0
    from_file = capsys.readouterr().out
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(path.read_bytes())))
    assert main(["run", "-"]) == 0
    assert capsys.readouterr().out == from_file


def test_stdin_errors_name_stdin(monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(HEAD.replace("16G", "16Q").encode())))
    code, data = _json(capsys, "run", "-", "--json")
    assert (code, data["error"]["path"], data["error"]["key"], data["error"]["line"]) == (2, "<stdin>", "memory[0].size", 4)
    assert data["error"]["message"].startswith("<stdin>:4: memory[0].size: ")


def test_version_from_the_package_metadata():
    run = subprocess.run([sys.executable, "-c", "from vmemcore.cli import main; raise SystemExit(main())", "--version"],
                         capture_output=True, text=True)
    assert (run.returncode, run.stdout) == (0, f"vmemcore {version('vmemcore')}\n")
