"""``--set KEY=VALUE`` and the ``--arch``/``--variant``/``--kernel`` shortcuts, ``vmemcore compare``
and progress on stderr (issue 12, items 2 and 4)."""

import json

import pytest

from vmemcore.cli import main
from vmemcore.errors import ScenarioError
from vmemcore.overrides import command_line, override, parse_value, split_values
from vmemcore.scenario import load_scenario
from vmemcore.stats import counter_key

from scenario_helpers import EXAMPLES
from subprocess_helpers import on_a_terminal, vmemcore

HVO = str(EXAMPLES / "x86_64-hvo-2M.toml")
X16G = str(EXAMPLES / "x86_64-16G.toml")


def run_json(capsys, *argv):
    assert main(["run", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


# ------------------------------------------------------------------------------------- values

@pytest.mark.parametrize("key, text, value", [
    ("steps[0].count", "8", 8),
    ("memory[0].size", "16G", "16G"),          # not TOML: the text
    ("memory[0].size", '"16G"', "16G"),        # a TOML string
    ("memory[0].size", "0x400000000", 16 << 30),
    ("hugetlb.optimize_vmemmap", "true", True),
    ("machine.kernel", "6.10", "6.10"),        # a string key keeps the number as written, not the float 6.1
    ("machine.kernel", "2019", "2019"),
    ("machine.variant", '{ paging = "5-level" }', {"paging": "5-level"}),
    ("steps[0].count", "1.5", "1.5"),          # no key takes a float: the validator says "got string"
])
def test_values_are_toml_or_text(key, text, value):
    assert parse_value(key, text) == value


def test_values_split_at_commas_outside_quotes_and_braces():
    assert split_values('x86_64,arm64') == ["x86_64", "arm64"]
    assert split_values('{ page = "16K", va_bits = 47 },"a,b",3') == ['{ page = "16K", va_bits = 47 }', '"a,b"', "3"]


def test_shortcuts_are_machine_keys():
    assert [(o.key, o.value) for o in command_line(["steps[0].count=4"], arch="arm64", kernel="7.1")] == [
        ("machine.arch", "arm64"), ("machine.kernel", "7.1"), ("steps[0].count", 4)]
    assert override("kernel=6.19").key == "machine.kernel"


def test_overrides_reach_the_validated_scenario():
    scenario = load_scenario(HVO, overrides=command_line(
        ["memory[0].size=32G", "steps[0].count=8", 'variant={ paging = "5-level" }']))
    assert scenario.memory[0].size == 32 << 30
    assert scenario.steps[0].args["count"] == 8
    assert scenario.machine.variant == "5-level"


def test_a_new_arch_drops_the_files_variant():
    """x86_64-16G.toml says variant = "4-level", which arm64 does not have: the new arch's default."""
    assert load_scenario(X16G, overrides=command_line(arch="arm64")).machine.variant == "4K-48"
    assert load_scenario(X16G, overrides=command_line(["arch=arm64", "variant=64K-48"])).machine.variant == "64K-48"
    assert load_scenario(X16G, overrides=command_line(arch="x86_64")).machine.variant == "4-level"  # same arch: kept


@pytest.mark.parametrize("sets, key, message", [
    (["machine.kernal=7.1"], "machine.kernal", "did you mean 'kernel'?"),
    (["machin.arch=arm64"], "machin", "did you mean 'machine'?"),
    (["steps[0].cont=3"], "steps[0].cont", "did you mean 'count'?"),
    (["memory[3].size=1G"], "memory[3]", "no such entry: the scenario has 1"),
    (["memory.size=1G"], "memory", "is an array: name an entry, e.g. memory[0]"),
    (["kernel=7.7"], "machine.kernel", "unknown kernel profile '7.7'"),
    (["memory[0].size=-1"], "memory[0].size", "size -1 is negative"),
])
def test_bad_keys_and_values_are_scenario_errors_naming_the_option(sets, key, message):
    with pytest.raises(ScenarioError) as info:
        load_scenario(HVO, overrides=command_line(sets))
    assert info.value.key == key and info.value.line is None  # not a line of the file
    assert message in str(info.value) and f"(--set {sets[0]})" in str(info.value)


def test_run_set_bad_key(capsys):
    assert main(["run", HVO, "--set", "machine.kernal=7.1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vmemcore: error: ") and "did you mean 'kernel'?" in err and "Traceback" not in err
    with pytest.raises(SystemExit):
        main(["run", HVO, "--set"])  # argparse: the option needs KEY=VALUE
    assert main(["run", HVO, "--set", "no equals sign"]) == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err


def test_kernel_shortcut_equals_set(capsys):
    assert run_json(capsys, HVO, "--kernel", "7.1") == run_json(capsys, HVO, "--set", "machine.kernel=7.1")
    assert run_json(capsys, HVO, "--kernel", "7.1")["machine"]["kernel"] == "7.1"
    arm = run_json(capsys, X16G, "--arch", "arm64", "--variant", "16K-47")
    assert (arm["machine"]["arch"], arm["machine"]["variant"]) == ("arm64", "16K-47")
    # 16 GiB / 16 KiB x 64 bytes = 64 MiB of struct pages = 4,096 pages of 16 KiB
    assert arm["counters"]["nr_memmap_boot_pages"] == 4_096


def test_set_a_step_count(capsys):
    data = run_json(capsys, HVO, "--set", "steps[0].count=8", "--set", "steps[1].count=4")
    assert [s["result"]["nr_hugepages"] for s in data["steps"]] == [8, 4]
    assert data["steps"][0]["changes"]["memmap_frames"] == -8 * 7  # 7 of 8 vmemmap pages freed per 2 MiB page


# ------------------------------------------------------------------------------------- compare

def test_compare_hvo_6_12_and_7_1_shows_the_shared_tail_page(capsys):
    """7.1 maps every tail vmemmap page of a 2 MiB page to one read-only page shared per zone and
    order (zone->vmemmap_tails, docs/kernel-map.md, vmemcore/hvo.py shared_tail_page), allocated on
    first use and never freed. Growing the pool to 512: 6.12 frees 512 x 8 old vmemmap frames and
    allocates 512 new heads: memmap_frames -4,096 + 512 = -3,584; 7.1 also allocates the one shared
    tail page: -3,583, so B - A = +1 (and free_frames -1). nr_memmap_pages does not count the shared
    page: equal. Shrinking to 0 restores 512 x 7 pages on both sides; the shared page stays, so at
    the end memmap_frames is 65,536 (as booted) under 6.12 and 65,537 under 7.1."""
    assert main(["compare", HVO, "--a", "kernel=6.12", "--b", "kernel=7.1", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["schema"] == 1 and list(data) == ["schema", "a", "b", "counters", "steps"]
    assert (data["a"]["machine"]["kernel"], data["b"]["machine"]["kernel"]) == ("6.12", "7.1")
    assert data["a"]["set"] == {"machine.kernel": "6.12"}
    assert data["counters"]["memmap_frames"] == {"a": 65_536, "b": 65_537, "diff": 1}
    assert data["counters"]["free_frames"]["diff"] == -1
    assert data["counters"]["nr_memmap_pages"] == {"a": 4_096, "b": 4_096, "diff": 0}
    assert {name for name, c in data["counters"].items() if c["diff"]} == {"memmap_frames", "free_frames"}
    assert list(data["counters"]) == sorted(data["counters"], key=counter_key)  # the report's order
    grow, shrink = data["steps"]
    assert grow["changes"]["memmap_frames"] == {"a": -3_584, "b": -3_583, "diff": 1}
    assert grow["changes"]["nr_memmap_pages"] == {"a": 512, "b": 512, "diff": 0}
    assert shrink["changes"]["memmap_frames"] == {"a": 3_584, "b": 3_584, "diff": 0}
    assert grow["a"]["op"] == grow["b"]["op"] == "hugetlb.resize"


def test_compare_table(capsys):
    assert main(["compare", HVO, "--a", "kernel=6.12", "--b", "kernel=7.1"]) == 0
    out = capsys.readouterr().out
    assert "A  " + HVO + " machine.kernel=6.12: x86_64 4-level, kernel 6.12" in out
    assert "counters (2 differ)" in out
    row = next(line for line in out.splitlines() if line.strip().startswith("memmap_frames"))
    assert row.split() == ["memmap_frames", "65,536", "65,537", "+1"]
    step_row = [line for line in out.splitlines() if line.strip().startswith("memmap_frames")][1]
    assert step_row.split() == ["memmap_frames", "-3,584", "-3,583", "+1"]


def test_compare_two_files(capsys):
    assert main(["compare", X16G, str(EXAMPLES / "x86_64-2nodes-1T.toml"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    # 1 TiB / 4 KiB x 64 bytes = 16 GiB of struct pages = 4,194,304 pages; 16 GiB: 65,536
    assert data["counters"]["nr_memmap_boot_pages"] == {"a": 65_536, "b": 4_194_304, "diff": 4_128_768}
    assert data["steps"] == []


def test_compare_needs_two_sides(capsys):
    assert main(["compare", HVO]) == 2
    assert "needs a second scenario B, or --a/--b" in capsys.readouterr().err
    assert main(["compare", HVO, "--b", "kernel=7.7"]) == 2
    assert "(--b kernel=7.7)" in capsys.readouterr().err


# ------------------------------------------------------------------------------------- progress

def test_no_progress_without_a_terminal():
    result = vmemcore("run", HVO)
    assert result.returncode == 0 and result.stderr == ""
    result = vmemcore("run", HVO, "--set", "machine.kernal=7.1")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("vmemcore: error: ") and result.stdout == ""


def test_progress_on_a_terminal_and_quiet():
    result, err = on_a_terminal("run", HVO)
    assert result.returncode == 0 and "steps[" in err  # the step the run is at
    result, err = on_a_terminal("run", HVO, "--quiet")
    assert result.returncode == 0 and err == ""
