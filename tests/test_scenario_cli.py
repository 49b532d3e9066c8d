"""Scenario files, the report and the ``vmemcore`` command line.

The example counters are the kernel numbers of docs/kernel-map.md#boot-populate-shapes, written out by hand.
"""

import json
import textwrap

import pytest

from vmemcore.cli import main
from vmemcore.report import format_report, report
from vmemcore.units import human_size
from vmemcore.scenario import load_scenario, parse_scenario, run_scenario

from scenario_helpers import EXAMPLES, scenario_error


def run_example(name):
    machine, steps = run_scenario(load_scenario(EXAMPLES / name))
    return machine, steps, machine.counters()


# ------------------------------------------------------------------------------------- examples

def test_example_16G():
    machine, steps, c = run_example("x86_64-16G.toml")
    assert c["nr_memmap_boot_pages"] == 65_536
    assert c["nr_memmap_pages"] == 0
    assert c["vmemmap_leaves_2M"] == 128
    assert (c["vmemmap_pagetable_pages_pud"], c["vmemmap_pagetable_pages_pmd"], c["vmemmap_pagetable_pages_pte"]) == (1, 1, 0)
    assert "vmemmap_leaves_4K" not in c
    assert steps == []


def test_example_two_nodes_1T():
    machine, _, c = run_example("x86_64-2nodes-1T.toml")
    assert [(r.node, r.start, r.size) for r in machine.memory] == [(0, 0, 512 << 30), (1, 512 << 30, 512 << 30)]
    assert c["nr_memmap_boot_pages"] == 4_194_304
    assert c["vmemmap_leaves_2M"] == 8_192
    assert (c["vmemmap_pagetable_pages_pud"], c["vmemmap_pagetable_pages_pmd"]) == (1, 16)
    nodes = report(machine)["nodes"]
    used = [n["present_pages"] - n["free_pages"] for n in nodes]
    # each node's memmap on that node; the PUD table and the 32 MiB kernel image (8,192 pages, at
    # 16 MiB) on node 0
    assert used == [2_097_152 + 9 + 8_192, 2_097_152 + 8]


def test_example_64T():
    _, _, c = run_example("x86_64-64T.toml")
    assert c["nr_memmap_boot_pages"] == 268_435_456
    assert c["vmemmap_leaves_2M"] == 524_288
    assert (c["vmemmap_pagetable_pages_pud"], c["vmemmap_pagetable_pages_pmd"]) == (2, 1_024)


def test_example_5level_1P():
    machine, _, c = run_example("x86_64-5level-1P.toml")
    assert machine.variant.name == "5-level"
    assert c["nr_memmap_boot_pages"] == 4_294_967_296
    assert c["vmemmap_leaves_2M"] == 8_388_608
    assert c["vmemmap_pagetable_pages_pmd"] == 16_384
    assert c["vmemmap_pagetable_pages_pud"] == 32
    assert c["vmemmap_pagetable_pages_p4d"] == 1


def test_example_subsection_uses_base_pages_and_removes_them():
    machine, steps, c = run_example("x86_64-subsection.toml")
    assert [(s.index, s.op, s.line) for s in steps] == [(0, "memmap.add", 21), (1, "memmap.remove", 27)]
    assert steps[0].args == {"start": 64 << 30, "size": 2 << 20, "node": 0}
    assert steps[0].changes == {
        "nr_memmap_pages": 8, "vmemmap_leaves_4K": 8, "vmemmap_mapped_bytes_4K": 32_768,
        "vmemmap_pagetable_pages_pte": 1, "vmemmap_pagetable_pages_pmd": 1,
        "memmap_frames": 8, "pagetable_frames": 2, "free_frames": -10,
    }
    assert steps[1].changes["nr_memmap_pages"] == -8
    assert steps[1].changes["vmemmap_leaves_4K"] == -8
    assert steps[1].changes["vmemmap_pagetable_pages_pmd"] == -1
    assert c["nr_memmap_pages"] == 0 and c["vmemmap_pagetable_pages_pte"] == 0
    assert c["free_frames"] == 4_194_304 - 65_536 - 2 - 8_192  # less the 32 MiB kernel image at 16 MiB ([machine] kernel_image): 8,192 pages never freed


def test_populate_and_depopulate_steps():
    scenario = parse_scenario(textwrap.dedent("""\
        [machine]
        arch = "x86_64"
        [[memory]]
        size = "16G"
        [[steps]]
        op = "memmap.populate"
        start = "64G"
        size = "4M"
        [[steps]]
        op = "memmap.depopulate"
        start = "64G"
        size = "4M"
        """))
    machine, steps = run_scenario(scenario)
    assert steps[0].changes["nr_memmap_pages"] == 16 and steps[0].changes["vmemmap_leaves_4K"] == 16
    assert steps[1].changes["nr_memmap_pages"] == -16 and steps[1].changes["vmemmap_leaves_4K"] == -16
    assert machine.counters()["memmap_frames"] == 65_536


# ----------------------------------------------------------------------------------- validation

def test_unknown_key_names_key_and_line():
    error = scenario_error("""\
        # a comment
        [machine]
        arch = "x86_64"

        [[memory]]
        size = "16G"

        [[memory]]
        node = 1
        sise = "16G"
        """)
    assert error.key == "memory[1].sise"
    assert error.line == 10
    assert "did you mean 'size'" in str(error)
    assert str(error).startswith("s.toml:10: memory[1].sise:")


@pytest.mark.parametrize("text, key, line", [
    ('[machine]\narch = "x86_64"\ncolour = 1\n[[memory]]\nsize = "1G"\n', "machine.colour", 3),
    ('[machine]\narch = "x86_64"\n[hugepages]\nx = 1\n[[memory]]\nsize = "1G"\n', "hugepages", 3),
    ('[machine]\narch = "x86_64"\n\n[machine.features]\npse = 1\n[[memory]]\nsize = "1G"\n', "machine.features.pse", 5),
    ('[machine]\narch = "x86_64"\nfeatures = { nx = true }\n[[memory]]\nsize = "1G"\n', "machine.features.nx", 3),
    ('[machine]\narch = "x86_64"\nvariant = "6-level"\n[[memory]]\nsize = "1G"\n', "machine.variant", 3),
    ('[machine]\narch = "x86_64"\nkernel = "4.19"\n[[memory]]\nsize = "1G"\n', "machine.kernel", 3),
    ('[machine]\narch = "vax"\n[[memory]]\nsize = "1G"\n', "machine.arch", 2),
    ('[machine]\nvariant = "4-level"\n[[memory]]\nsize = "1G"\n', "machine.arch", 1),
    ('[machine]\narch = "x86_64"\n[[memory]]\nnode = 0\n', "memory[0].size", 3),
    ('[machine]\narch = "x86_64"\n[[memory]]\nnode = -1\nsize = "1G"\n', "memory[0].node", 4),
    ('[machine]\narch = "x86_64"\n[[memory]]\nsize = "1G"\n[[steps]]\nop = "memmap.ad"\n', "steps[0].op", 6),
    ('[machine]\narch = "x86_64"\n[[memory]]\nsize = "1G"\n[[steps]]\nstart = "2G"\n', "steps[0].op", 5),
    ('[machine]\narch = "x86_64"\n[[memory]]\nsize = "1G"\n[[steps]]\nop = "memmap.add"\nsize = "2M"\n', "steps[0].start", 5),
    ('[machine]\narch = "x86_64"\n[[memory]]\nsize = "1G"\n[[steps]]\nop = "memmap.add"\nstart = "2G"\nsize = "2M"\n'
     '[[steps]]\nop = "memmap.remove"\nstart = "2G"\nsize = "2M"\nnode = 0\n', "steps[1].node", 13),
    ('[machine]\narch = "x86_64"\n[[memory]]\nsize = "1G"\n[[steps]]\nop = "memmap.add"\nstart = "2G"\nsize = "1M"\n', "steps[0].size", 8),
])
def test_errors_name_key_and_line(text, key, line):
    error = scenario_error(text)
    assert (error.key, error.line) == (key, line)


def test_bad_size():
    error = scenario_error('[machine]\narch = "x86_64"\n[[memory]]\nsize = "16X"\n')
    assert (error.key, error.line) == ("memory[0].size", 4)
    assert "'16X' is not understood" in str(error)


def test_size_of_wrong_type():
    error = scenario_error('[machine]\narch = "x86_64"\n[[memory]]\nsize = 1.5\n')
    assert (error.key, error.line) == ("memory[0].size", 4)


@pytest.mark.parametrize("first, second, message", [
    ("0", "8G", "range [8G, 24G) overlaps memory[0] [0, 16G)"),
    ("16G", "8G", "range [8G, 24G) overlaps memory[0] [16G, 32G)"),  # begins below, ends inside
    ("8G", "0", "range [0, 16G) overlaps memory[0] [8G, 24G)"),
])
def test_overlapping_ranges(first, second, message):
    error = scenario_error(f"""\
        [machine]
        arch = "x86_64"
        [[memory]]
        start = "{first}"
        size = "16G"
        [[memory]]
        node = 1
        start = "{second}"
        size = "16G"
        """)
    assert (error.key, error.line) == ("memory[1].start", 8)
    assert message in str(error)


def test_touching_ranges_do_not_overlap():
    text = '[machine]\narch = "x86_64"\n[[memory]]\nstart = "16G"\nsize = "16G"\n[[memory]]\nsize = "16G"\nstart = "0"\n'
    assert [(m.start, m.size) for m in parse_scenario(text).memory] == [(16 << 30, 16 << 30), (0, 16 << 30)]


def test_nodes_sharing_a_section():
    error = scenario_error('[machine]\narch = "x86_64"\n[[memory]]\nsize = "64M"\n[[memory]]\nnode = 1\nsize = "64M"\n')
    assert (error.key, error.line) == ("memory[1]", 5)
    assert "node 1 shares a 128M section with memory[0] of node 0" in str(error)
    # the same node may fill a section from two ranges
    text = '[machine]\narch = "x86_64"\n[[memory]]\nsize = "64M"\n[[memory]]\nsize = "64M"\n'
    assert len(parse_scenario(text).memory) == 2


def test_range_past_physical_limit_4level_but_not_5level():
    text = '[machine]\narch = "x86_64"\nvariant = "{}"\n[[memory]]\nsize = "128T"\n'
    error = scenario_error(text.format("4-level"))
    assert (error.key, error.line) == ("memory[0].size", 5)
    assert "46-bit" in str(error)
    scenario = parse_scenario(text.format("5-level"))
    assert scenario.memory[0].size == 128 << 40


def test_kernel_written_as_float_is_refused():
    error = scenario_error('[machine]\narch = "x86_64"\nkernel = 6.10\n[[memory]]\nsize = "1G"\n')
    assert error.key == "machine.kernel" and "quoted string" in str(error)


def test_syntax_error_has_tomllib_line():
    error = scenario_error('[machine]\narch = "x86_64"\n[[memory]]\nsize = \n')
    assert (error.key, error.line) == ("syntax", 4)


def test_defaults_are_resolved():
    scenario = parse_scenario(textwrap.dedent("""\
        [machine]
        arch = "x86_64"
        variant = { paging = "5-level" }
        [[memory]]
        size = "1G"
        [[memory]]
        node = 1
        size = "1G"
        [[steps]]
        op = "memmap.populate"
        start = "64G"
        size = "2M"
        """))
    assert (scenario.machine.variant, scenario.machine.kernel) == ("5-level", "6.12")
    assert [(m.node, m.start) for m in scenario.memory] == [(0, 0), (1, 1 << 30)]
    assert dict(scenario.steps[0].args) == {"start": 64 << 30, "size": 2 << 20, "node": 0}


# ------------------------------------------------------------------------------------------ cli

def test_cli_run_text(capsys):
    assert main(["run", str(EXAMPLES / "x86_64-16G.toml")]) == 0
    out = capsys.readouterr().out
    assert "nr_memmap_boot_pages" in out and "65,536  (256M)" in out
    assert "x86_64 4-level" in out


def test_cli_run_json(capsys):
    assert main(["run", str(EXAMPLES / "x86_64-16G.toml"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["counters"]["nr_memmap_boot_pages"] == 65536
    assert data["counters"]["vmemmap_leaves_2M"] == 128
    assert data["machine"]["memory"] == [{"node": 0, "start": 0, "size": 16 << 30}]
    assert data["counter_units"]["nr_memmap_boot_pages"] == "pages"


def test_cli_run_steps_json(capsys):
    assert main(["run", str(EXAMPLES / "x86_64-subsection.toml"), "--json"]) == 0
    steps = json.loads(capsys.readouterr().out)["steps"]
    assert [(s["op"], s["changes"]["nr_memmap_pages"]) for s in steps] == [("memmap.add", 8), ("memmap.remove", -8)]


def test_cli_validation_error_exit_2(tmp_path, capsys):
    path = tmp_path / "big.toml"
    path.write_text('[machine]\narch = "x86_64"\n\n[[memory]]\nsize = "128T"\n')
    assert main(["run", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"{path}:5: memory[0].size:" in captured.err


def test_cli_missing_file_exit_2(tmp_path, capsys):
    assert main(["run", str(tmp_path / "nope.toml")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_cli_step_failure_exit_1(tmp_path, capsys):
    path = tmp_path / "clash.toml"
    path.write_text('[machine]\narch = "x86_64"\n[[memory]]\nsize = "16G"\n'
                    '[[steps]]\nop = "memmap.add"\nstart = "8G"\nsize = "2M"\n')
    assert main(["run", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{path}:5: steps[0] (memmap.add): BadRequest:" in err
    assert "already have a memmap" in err


def test_cli_boot_failure_exit_1(tmp_path, capsys):
    path = tmp_path / "tiny.toml"
    # no kernel image: 2 MiB cannot hold the default one (a scenario error); without it the boot fails
    path.write_text('[machine]\narch = "x86_64"\nkernel_image = 0\n[[memory]]\nsize = "2M"\n')
    assert main(["run", str(path)]) == 1
    assert "boot: OutOfMemory" in capsys.readouterr().err


def test_cli_trace(capsys, monkeypatch):
    monkeypatch.setenv("VMEMCORE_TRACE", "")  # restored after the test: main sets it to 1
    assert main(["run", str(EXAMPLES / "x86_64-subsection.toml"), "--trace"]) == 0
    err = capsys.readouterr().err
    assert "[vmemcore trace] x86_64: vmemcore_vmemmap_populate(" in err
    assert "[vmemcore] steps[1] memmap.remove" in err


def test_cli_run_help_explains_format(capsys):
    with pytest.raises(SystemExit) as info:
        main(["run", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "[[memory]]" in out and "memmap.remove" in out
    assert "2  invalid scenario" in out and "3  a plugin" in out


def test_arches_lists_all_four(capsys):
    # the four built-ins at least: an installed third-party plugin (examples/plugins/riscv64) adds its own
    assert main(["arches"]) == 0
    out = capsys.readouterr().out
    heads = [line.split()[0] for line in out.splitlines() if line and not line.startswith(" ")]
    assert {"arm64", "powerpc", "s390", "x86_64"} <= set(heads)
    assert len(heads) == len(set(heads))
    assert "4-level  paging=4-level  48-bit virtual, 46-bit physical addresses  (default)" in out


def test_arches_geometry_5level(capsys):
    assert main(["arches", "x86_64", "--variant", "5-level"]) == 0
    out = capsys.readouterr().out
    assert "page-table levels          5" in out
    assert "    p4d                      shift 39, 512 entries" in out
    assert "max physical address bits  52" in out


def test_arches_geometry_default_variant(capsys):
    assert main(["arches", "x86_64"]) == 0
    out = capsys.readouterr().out
    assert "x86_64 4-level" in out and "page-table levels          4" in out and "p4d" not in out


def test_arches_unknown_variant_exit_2(capsys):
    assert main(["arches", "x86_64", "--variant", "3-level"]) == 2
    assert "no variant '3-level'" in capsys.readouterr().err


def test_disable_plugin(capsys):
    assert main(["arches", "-p", "no:arm64"]) == 0
    out = capsys.readouterr().out
    assert "arm64" not in out and "x86_64" in out and "s390" in out


def test_bad_plugin_option_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["arches", "-p", "arm64"])
    assert info.value.code == 2


def test_broken_plugin_is_named_and_others_listed(tmp_path, monkeypatch, capsys):
    (tmp_path / "vmemcore_test_broken.py").write_text("raise RuntimeError('boom at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("VMEMCORE_PLUGINS", "vmemcore_test_broken")
    assert main(["arches"]) == 0
    captured = capsys.readouterr()
    assert "plugin 'vmemcore_test_broken': failed to load: RuntimeError: boom at import" in captured.err
    assert "x86_64" in captured.out and "s390" in captured.out


def test_plugin_with_wrong_answer_type_is_named(tmp_path, monkeypatch, capsys):
    (tmp_path / "vmemcore_test_dict.py").write_text(textwrap.dedent("""\
        from vmemcore import hookimpl

        @hookimpl
        def vmemcore_arch_info():
            return {"name": "toy"}
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("VMEMCORE_PLUGINS", "vmemcore_test_dict")
    assert main(["arches"]) == 0
    captured = capsys.readouterr()
    assert "plugin 'vmemcore_test_dict', hook vmemcore_arch_info: returned dict, expected ArchInfo" in captured.err
    assert "arm64" in captured.out


def test_plugin_failing_a_step_hook_exits_3(tmp_path, monkeypatch, capsys):
    """A plugin that answers vmemmap_populate with a non-True value: plugin error, exit 3."""
    (tmp_path / "vmemcore_test_toy.py").write_text(textwrap.dedent("""\
        import attrs
        import vmemcore_x86_64 as x86
        from vmemcore import hookimpl

        @hookimpl
        def vmemcore_arch_info():
            return attrs.evolve(x86.vmemcore_arch_info(), name="toy")

        vmemcore_pagetable_geometry = x86.vmemcore_pagetable_geometry
        vmemcore_sparse_geometry = x86.vmemcore_sparse_geometry

        @hookimpl
        def vmemcore_vmemmap_populate(machine, start, end, node, altmap):
            return "yes"
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("VMEMCORE_PLUGINS", "vmemcore_test_toy")
    path = tmp_path / "toy.toml"
    path.write_text('[machine]\narch = "toy"\n[[memory]]\nsize = "1G"\n')
    assert main(["run", str(path)]) == 3
    assert "plugin 'vmemcore_test_toy', hook vmemcore_vmemmap_populate: returned 'yes'" in capsys.readouterr().err


# --------------------------------------------------------------------------------------- report

def test_human_size():
    assert [human_size(n) for n in (0, 100, 4096, 256 << 20, (63 << 30) + (3 << 28), -(32 << 10))] == [
        "0", "100B", "4K", "256M", "63.75G", "-32K"]


def test_format_report_aligns_and_humanises():
    machine, steps, _ = run_example("x86_64-subsection.toml")
    text = format_report(report(machine, steps))
    lines = text.splitlines()
    assert "  nr_memmap_boot_pages              65,536  (256M)" in lines
    assert "  vmemmap_leaves_2M                    128" in lines
    assert "  [0] memmap.add start=64G size=2M node=0  (line 21)" in lines
    assert "        nr_memmap_pages                   +8  (+32K)" in lines
