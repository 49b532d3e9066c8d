"""HugeTLB and HVO in scenarios, the report, ``vmemcore kpageflags`` and ``vmemcore diagram``.

Expected numbers come from the kernel (mm/hugetlb_vmemmap.c; docs/kernel-map.md#hugetlb-sizes-and-hvo):
with 4 KiB pages and a 64-byte struct page, a 2 MiB HugeTLB page has 8 vmemmap pages and a 1 GiB
page 4,096; HVO keeps one (two in the v17 design of 5.14) and frees the rest; from 6.2 it moves the
head to a new page.
"""

import json
import re

import pytest

from vmemcore.cli import main
from vmemcore.diagram import diagram, draw_folio_vmemmap, vmemmap_pages
from vmemcore.report import HEAD_PAGE_FLAGS, TAIL_PAGE_FLAGS, check_folio_flags, format_report, report
from vmemcore.scenario import BootPages, RunError, load_scenario, parse_scenario, run_scenario
from vmemcore.structpage import StructPages

from scenario_helpers import EXAMPLES, HEAD, cli, scenario_error


PAGE, STRUCT_PAGE = 4096, 64
BOOT_MEMMAP = 16 << 30 >> 12 << 6 >> 12  # 16 GiB of struct pages in pages: 65,536
PER_2M = (2 << 20) // PAGE * STRUCT_PAGE // PAGE  # 8 vmemmap pages per 2 MiB page
PER_1G = (1 << 30) // PAGE * STRUCT_PAGE // PAGE  # 4,096 per 1 GiB page
HEAD_FLAGS = 1 << 15 | 1 << 17  # KPF_COMPOUND_HEAD | KPF_HUGE
TAIL_FLAGS = 1 << 16 | 1 << 17  # KPF_COMPOUND_TAIL | KPF_HUGE


def text(kernel="6.12", hugetlb="optimize_vmemmap = true", steps=(("2M", 4),), arch="x86_64"):
    """A 16 GiB scenario with a [hugetlb] table and hugetlb.resize steps of (size, count)."""
    out = f'[machine]\narch = "{arch}"\nkernel = "{kernel}"\n[[memory]]\nsize = "16G"\n[hugetlb]\n{hugetlb}\n'
    for size, count in steps:
        out += f'[[steps]]\nop = "hugetlb.resize"\nsize = "{size}"\ncount = {count}\n'
    return out


def machine_of(source):
    return run_scenario(parse_scenario(source))[0]


def first_folio(machine, size):
    hstate = machine.hugetlb.hstates[size]
    return hstate.folios[min(hstate.folios)]




def section(output, title):
    """The lines of one state of a diagram: from its title to the blank line after it."""
    block = output.split(title, 1)[1].split("\n\n", 1)[0]
    return block.splitlines()


def rows(lines):
    """(index cell, level, access, frame cell) of each data row of a diagram table."""
    found = []
    for line in lines:
        m = re.match(r"\s+\| +(\d+(?:-\d+)?) +\S+ +(0x[0-9a-f]+) +(pte|pmd) +(RW|RO) +\| ---> \| (.+?) +\|$", line)
        if m:
            found.append((m.group(1), m.group(3), m.group(4), m.group(5)))
    return found


# ------------------------------------------------------------------------------------ scenarios

def test_hugetlb_table_parses():
    scenario = parse_scenario(text(hugetlb='optimize_vmemmap = true\nboot = [{ size = "1G", count = 2 }, '
                                           '{ size = "1G", count = 1, node = 0 }]', steps=()))
    assert scenario.hugetlb.optimize_vmemmap is True
    assert scenario.hugetlb.boot == (BootPages(1 << 30, 2, None), BootPages(1 << 30, 1, 0))


def test_boot_as_array_of_tables_and_defaults():
    scenario = parse_scenario('[machine]\narch = "x86_64"\n[[memory]]\nsize = "16G"\n'
                              '[[hugetlb.boot]]\nsize = "1G"\ncount = 1\n')
    assert scenario.hugetlb.optimize_vmemmap is False
    assert scenario.hugetlb.boot == (BootPages(1 << 30, 1, None),)
    assert parse_scenario('[machine]\narch = "x86_64"\n[[memory]]\nsize = "1G"\n').hugetlb is None


def test_steps_parse():
    scenario = parse_scenario(text(steps=(("2M", 512), ("1G", 0))) +
                              '[[steps]]\nop = "hugetlb.optimize_vmemmap"\nenabled = false\n')
    assert [(s.op, dict(s.args)) for s in scenario.steps] == [
        ("hugetlb.resize", {"size": 2 << 20, "count": 512}),
        ("hugetlb.resize", {"size": 1 << 30, "count": 0}),
        ("hugetlb.optimize_vmemmap", {"enabled": False}),
    ]




@pytest.mark.parametrize("tail, key, line, message", [
    ('[hugetlb]\noptimize_vmemmap = true\ncolour = 1\n', "hugetlb.colour", 7,
     "unknown key (expected one of: optimize_vmemmap, vmemmap_remap, boot)"),
    ('[hugetlb]\noptimise_vmemmap = true\n', "hugetlb.optimise_vmemmap", 6, "did you mean 'optimize_vmemmap'?"),
    ('[hugetlb]\nboot = [{ size = "1G", count = 2, colour = 1 }]\n', "hugetlb.boot[0].colour", 6,
     "unknown key (expected one of: size, count, node)"),
    ('[hugetlb]\nboot = [\n  { size = "1G", count = 1 },\n  { size = "1G", count = 1, nodes = 0 },\n]\n',
     "hugetlb.boot[1].nodes", 8, "did you mean 'node'?"),
    ('[[hugetlb.boot]]\nsize = "1G"\ncount = 1\n[[hugetlb.boot]]\nsize = "1G"\ncolour = 2\n',
     "hugetlb.boot[1].colour", 10, "unknown key"),
    ('[hugetlb]\nboot = [{ size = "1G" }]\n', "hugetlb.boot[0].count", 6, "missing required key (keys: size, count, node)"),
    ('[hugetlb]\nboot = [{ size = "3M", count = 1 }]\n', "hugetlb.boot[0].size", 6, "3M cannot be a HugeTLB page size"),
    ('[hugetlb]\nboot = [{ size = "4K", count = 1 }]\n', "hugetlb.boot[0].size", 6, "above the 4K page size"),
    ('[hugetlb]\nboot = [{ size = "1G", count = -1 }]\n', "hugetlb.boot[0].count", 6, "count -1 is negative"),
    ('[hugetlb]\nboot = [{ size = "1G", count = 1, node = 1 }]\n', "hugetlb.boot[0].node", 6,
     "node 1 has no [[memory]] (nodes: 0)"),
    ('[hugetlb]\nboot = { size = "1G", count = 1 }\n', "hugetlb.boot", 6, "must be an array of tables"),
    ('[hugetlb]\noptimize_vmemmap = "yes"\n', "hugetlb.optimize_vmemmap", 6, "must be true or false, got string"),
    ('hugetlb = 3\n', "hugetlb", 1, "must be a table"),
    ('[[steps]]\nop = "hugetlb.resize"\nsize = "2M"\n', "steps[0].count", 5,
     "missing required key of hugetlb.resize (keys: size, count)"),
    ('[[steps]]\nop = "hugetlb.resize"\nsize = "2M"\ncount = 1.5\n', "steps[0].count", 8, "must be a count (integer)"),
    ('[[steps]]\nop = "hugetlb.resize"\nsize = "2M"\ncount = 1\nstart = "0"\n', "steps[0].start", 9,
     "unknown key (expected one of: size, count)"),
    ('[[steps]]\nop = "hugetlb.optimize_vmemmap"\nenabled = 1\n', "steps[0].enabled", 7, "must be true or false"),
])
def test_errors_name_key_and_line(tail, key, line, message):
    source = HEAD + tail if not tail.startswith("hugetlb =") else tail + HEAD
    error = scenario_error(source)
    assert (error.key, error.line) == (key, line)
    assert message in str(error)


def test_size_the_arch_lacks_is_a_run_error_naming_the_step(tmp_path, capsys):
    code, out, err = cli(tmp_path, capsys, text(steps=(("2M", 1), ("4M", 1))), "run")
    assert code == 1 and out == ""
    assert "s.toml:12: steps[1] (hugetlb.resize): BadRequest: x86_64 has no 4M HugeTLB pages here (sizes: 2M, 1G)" in err


def test_boot_size_the_arch_lacks_fails_at_boot(tmp_path, capsys):
    source = text(hugetlb='boot = [{ size = "1G", count = 1 }]', steps=()).replace(
        'kernel = "6.12"', 'kernel = "6.12"\nfeatures = { gbpages = false }')
    code, _, err = cli(tmp_path, capsys, source, "run")
    assert code == 1
    assert "s.toml: boot: BadRequest: x86_64 has no 1G HugeTLB pages here (sizes: 2M)" in err


def test_switch_before_5_19_and_without_hvo_fail_the_step(tmp_path, capsys):
    switch = '[[steps]]\nop = "hugetlb.optimize_vmemmap"\nenabled = true\n'
    code, _, err = cli(tmp_path, capsys, text("5.14", "", ()) + switch, "run")
    assert code == 1 and "steps[0] (hugetlb.optimize_vmemmap): BadRequest: kernel 5.14 has no vm.hugetlb_optimize_vmemmap" in err
    code, _, err = cli(tmp_path, capsys, text(arch="arm64", hugetlb="", steps=()) + switch, "run")
    assert code == 1 and "steps[0] (hugetlb.optimize_vmemmap): Veto: arm64:" in err and "break-before-make" in err


def test_hvo_at_boot_on_arm64_is_vetoed():
    with pytest.raises(RunError) as info:
        run_scenario(parse_scenario(text(arch="arm64", steps=())))
    assert info.value.where == "boot" and "break-before-make" in str(info.value)


# ------------------------------------------------------------------------------------- examples

def run_example(name):
    machine, steps = run_scenario(load_scenario(EXAMPLES / name))
    return machine, steps, machine.counters()


def test_example_hvo_2M_grow_and_shrink():
    machine, steps, c = run_example("x86_64-hvo-2M.toml")
    grow, shrink = steps
    assert grow.result == {"size": "2M", "requested": 512, "nr_hugepages": 512, "allocated": 512, "freed": 0,
                           "optimized": 512, "not_optimized": {}, "surplus": 0}
    assert grow.changes["nr_memmap_boot_pages"] == -512 * PER_2M  # -4,096: the old frames were boot memmap
    assert grow.changes["nr_memmap_pages"] == 512  # one new head page each
    assert grow.changes["memmap_frames"] == -512 * (PER_2M - 1)  # -3,584: 7 freed net each
    assert grow.changes["hvo_vmemmap_pages_freed"] == 512 * PER_2M
    # 10 PMD leaves, as the example's comment derives from where the free lists put the pages
    assert grow.changes["hvo_pmd_splits"] == grow.changes["vmemmap_pagetable_pages_pte"] == 10
    assert grow.changes["vmemmap_leaves_4K"] == 10 * 512 and grow.changes["tlb_flush_all"] == 2
    assert shrink.result["freed"] == 512 and shrink.result["nr_hugepages"] == 0
    assert shrink.changes == {"nr_memmap_pages": 512 * (PER_2M - 1), "hvo_vmemmap_pages_allocated": 3_584,
                              "memmap_frames": 3_584, "free_frames": 512 * 512 - 3_584, "tlb_flush_all": 1,
                              "nr_hugepages_2M": -512, "hugetlb_frames": -512 * 512}
    # the sum is back at boot's, the split between the counters is not
    assert (c["nr_memmap_boot_pages"], c["nr_memmap_pages"]) == (BOOT_MEMMAP - 4_096, 4_096)
    assert c["memmap_frames"] == BOOT_MEMMAP and c["vmemmap_pagetable_pages_pte"] == 10  # the 10 split PMDs stay


def test_example_hvo_boot_1G():
    machine, steps, c = run_example("x86_64-hvo-boot-1G.toml")
    assert steps == []
    assert c["nr_memmap_boot_pages"] == BOOT_MEMMAP - 2 * PER_1G == 57_344
    assert c["nr_memmap_pages"] == 2 and c["memmap_frames"] == 57_346
    assert c["hvo_vmemmap_pages_freed"] == 8_192 and c["hvo_pmd_splits"] == 16
    assert report(machine)["hugetlb"] == {
        "optimize_vmemmap": True,
        "support": {"supported": True, "reason": ""},
        "vmemmap_remap": None,
        "hstates": {"2M": {"nr_hugepages": 0, "surplus": 0, "optimized": 0, "boot": 0},
                    "1G": {"nr_hugepages": 2, "surplus": 0, "optimized": 2, "boot": 2}},
    }


def test_example_hvo_7_1_shared_tail_page():
    machine, (grow, shrink), c = run_example("x86_64-hvo-7.1.toml")
    assert grow.changes["nr_memmap_boot_pages"] == -4_096 and grow.changes["nr_memmap_pages"] == 512
    assert grow.changes["memmap_frames"] == -3_584 + 1  # plus the shared tail page, not counted in nr_memmap_pages
    assert shrink.changes["nr_memmap_pages"] == 256 * (PER_2M - 1)
    assert (c["nr_memmap_boot_pages"], c["nr_memmap_pages"], c["memmap_frames"]) == (61_440, 2_304, 63_745)
    assert list(machine.hugetlb.hvo.tail_pages) == [(0, 9)]


# --------------------------------------------------------------------------------------- report

def test_report_text_and_json(tmp_path, capsys):
    code, out, _ = cli(tmp_path, capsys, text(steps=(("2M", 4),)), "run")
    assert code == 0
    lines = out.splitlines()
    assert "hugetlb   HVO on" in lines
    assert "          size  nr_hugepages  surplus  optimized  boot" in lines
    assert "            2M             4        0          4     0" in lines
    assert "        result: size=2M requested=4 nr_hugepages=4 allocated=4 freed=0 optimized=4 surplus=0" in lines
    code, out, _ = cli(tmp_path, capsys, text(steps=(("2M", 4),)), "run", "--json")
    data = json.loads(out)
    assert data["hugetlb"]["hstates"]["2M"] == {"nr_hugepages": 4, "surplus": 0, "optimized": 4, "boot": 0}
    assert data["steps"][0]["result"]["optimized"] == 4
    assert data["counters"]["hvo_vmemmap_pages_freed"] == 4 * PER_2M
    assert all(isinstance(v, int) for v in data["counters"].values())


def test_report_unsupported_arch_gives_the_reason():
    machine = machine_of(text(arch="arm64", hugetlb="", steps=(("2M", 1),)))
    data = report(machine)
    assert data["hugetlb"]["support"]["supported"] is False
    assert "060a2c92d1b6" in data["hugetlb"]["support"]["reason"]
    assert "hugetlb   HVO unavailable: HVO changes the output address" in format_report(data)


def test_switch_step_reports_the_new_value():
    machine, steps = run_scenario(parse_scenario(
        text(hugetlb="", steps=(("2M", 1),)) + '[[steps]]\nop = "hugetlb.optimize_vmemmap"\nenabled = true\n'))
    assert steps[1].result == {"optimize_vmemmap": True} and steps[1].changes == {}
    assert machine.hugetlb.optimize_vmemmap and not machine.hugetlb.hvo.is_optimized(first_folio(machine, 2 << 20).head)


# ----------------------------------------------------------------------------------- kpageflags

def test_kpageflags_folio_check_2M(tmp_path, capsys):
    code, out, _ = cli(tmp_path, capsys, text(), "kpageflags", "--hugetlb", "2M", "--index", "1", "--check")
    assert code == 0
    lines = out.splitlines()
    # the pool's four pages: the order-9 list's head 0x3efc00 (left at the top of boot memory by
    # memblock_free_all), pfn 0 split from the first order-10 block, its upper half 0x200 (expand
    # left it on the order-9 list), then 0x400; by pfn, #1 is 0x200
    assert lines[0] == "HugeTLB 2M folio #1 of 4 at pfn 0x200-0x3ff (512 pfns), node 0, vmemmap optimized"
    assert lines[2].split() == ["0x200", "0x0000000000028000", "compound_head,huge"]
    assert lines[3].split() == ["0x201-0x3ff", "(511", "pfns)", "0x0000000000030000", "compound_tail,huge"]
    assert lines[4].startswith("check passed: head pfn 0x200 has compound_head,huge; the 511 other pfns")


def test_kpageflags_folio_json_7_1(capsys):
    assert main(["kpageflags", str(EXAMPLES / "x86_64-hvo-7.1.toml"), "--hugetlb", "2M", "--check", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    head = data["folio"]["head"]
    assert data["folio"]["size"] == "2M" and data["folio"]["optimized"] is True
    assert data["ranges"] == [
        {"start": head, "count": 1, "flags": HEAD_FLAGS, "names": ["compound_head", "huge"]},
        {"start": head + 1, "count": 511, "flags": TAIL_FLAGS, "names": ["compound_tail", "huge"]},
    ]
    assert data["check"] == {"passed": True, "failure": None}


def test_kpageflags_check_1G_boot_page(capsys):
    assert main(["kpageflags", str(EXAMPLES / "x86_64-hvo-boot-1G.toml"), "--hugetlb", "1G", "--index", "1", "--check"]) == 0
    out = capsys.readouterr().out
    assert "0x3c0001-0x3fffff  (262,143 pfns)  0x0000000000030000  compound_tail,huge" in out
    assert "check passed: head pfn 0x3c0000" in out


def test_kpageflags_pfns(tmp_path, capsys):
    # the first of the pool's pages is the order-9 block 0x3efc00 at the top of boot memory (see
    # test_kpageflags_folio_check_2M); the page below it is free
    code, out, _ = cli(tmp_path, capsys, text(), "kpageflags", "--pfn", str(0x3efc00 - 1), "--count", "3")
    assert code == 0
    assert [line.split() for line in out.splitlines()] == [
        ["pfn", "flags", "symbolic-flags"],
        ["0x3efbff", "0x0000000000000000", "none"],
        ["0x3efc00", "0x0000000000028000", "compound_head,huge"],
        ["0x3efc01", "0x0000000000030000", "compound_tail,huge"],
    ]
    # fs/proc/page.c: /proc/kpageflags ends at get_max_dump_pfn(), max_pfn rounded up to a section:
    # 16 GiB is 0x400000 pfns, already whole 128 MiB sections; a read there returns nothing
    code, out, err = cli(tmp_path, capsys, text(), "kpageflags", "--pfn", "0x400000")
    assert (code, out) == (2, "") and "--pfn 0x400000: /proc/kpageflags ends at pfn 0x400000" in err
    code, out, err = cli(tmp_path, capsys, text(), "kpageflags", "--pfn", "0x57ffffffff")  # was an IndexError
    assert (code, out) == (2, "") and "ends at pfn 0x400000" in err and "Traceback" not in err
    code, out, err = cli(tmp_path, capsys, text(), "kpageflags", "--pfn", "0x3ffffe", "--count", "100000000")
    assert code == 0 and [line.split()[0] for line in out.splitlines()] == ["pfn", "0x3ffffe", "0x3fffff"]
    assert "/proc/kpageflags ends at pfn 0x400000: 2 pfns shown" in err


def test_kpageflags_check_failure_exits_1(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(StructPages, "kpageflags_range", lambda self, start, count: [HEAD_PAGE_FLAGS] * count)  # all heads
    code, out, _ = cli(tmp_path, capsys, text(), "kpageflags", "--hugetlb", "2M", "--check")
    assert code == 1
    assert ("check failed: tail pfn 0x1 has flags 0x28000 (compound_head,huge): "  # folio #0: pfn 0
            "compound_tail and huge without compound_head expected") in out


def test_check_folio_flags_rule():
    head = 0x200
    assert check_folio_flags(head, [[head, 1, HEAD_PAGE_FLAGS], [head + 1, 511, TAIL_PAGE_FLAGS]]) is None
    assert check_folio_flags(head, [[head, 1, TAIL_PAGE_FLAGS], [head + 1, 511, TAIL_PAGE_FLAGS]]).startswith("head pfn 0x200")
    assert check_folio_flags(head, [[head, 1, HEAD_PAGE_FLAGS], [head + 1, 9, TAIL_PAGE_FLAGS],
                                    [head + 10, 1, 1 << 16], [head + 11, 501, TAIL_PAGE_FLAGS]]).startswith("tail pfn 0x20a")
    assert check_folio_flags(head, [[head, 1, HEAD_PAGE_FLAGS], [head + 1, 511, TAIL_PAGE_FLAGS | HEAD_PAGE_FLAGS]]
                             ).startswith("tail pfn 0x201")


@pytest.mark.parametrize("argv, message", [
    (["--pfn", "1", "--check"], "--check and --index go with --hugetlb SIZE"),
    (["--hugetlb", "2M", "--count", "4"], "--count N (at least 1) goes with --pfn"),
    (["--hugetlb", "4M"], "x86_64 has no 4M HugeTLB pages here"),
    (["--hugetlb", "2M", "--index", "4"], "no 2M folio #4: the pool holds 4 (nr_hugepages)"),
])
def test_kpageflags_bad_arguments_exit_2(tmp_path, capsys, argv, message):
    code, out, err = cli(tmp_path, capsys, text(), "kpageflags", *argv)
    assert code == 2 and out == "" and message in err


# -------------------------------------------------------------------------------------- diagram

def unchanged(machine):
    """The machine's snapshot, counters that are zero left out: a rolled-back counter comes back as
    0 rather than absent (the engine's Counters journal)."""
    snap = machine.snapshot()
    snap["counters"] = {k: v for k, v in snap["counters"].items() if v}
    return snap


def test_diagram_6_12_optimized_2M():
    machine = machine_of(text())
    folio = first_folio(machine, 2 << 20)
    state = unchanged(machine)
    out = diagram(machine, folio)
    assert unchanged(machine) == state
    before = rows(section(out, "before optimization: restored in a rolled-back transaction"))
    after = rows(section(out, "after optimization: the current mapping"))
    head_frame = machine.memmap_frame(folio.head)
    assert [r[0] for r in before] == [str(i) for i in range(PER_2M)]
    assert len({r[3] for r in before}) == PER_2M and all(r[1:3] == ("pte", "RW") for r in before)
    assert after == [("0", "pte", "RW", f"{head_frame:#x} [A]")] + [(str(i), "pte", "RO", f"{head_frame:#x} [A]")
                                                                     for i in range(1, PER_2M)]
    assert before[0][3] == f"{head_frame:#x}"  # restore keeps the head page where it is
    assert f"  [A] {head_frame:#x} backs 8 vmemmap pages of this folio" in out
    assert "  8 vmemmap pages, 8 distinct frames" in out and "  8 vmemmap pages, 1 distinct frame" in out
    assert "  frames freed by the optimization: 7 (7 no longer mapped, 0 newly allocated)" in out


def test_diagram_not_optimized_is_optimized_in_a_rolled_back_transaction():
    machine = machine_of(text(hugetlb="optimize_vmemmap = false"))
    folio = first_folio(machine, 2 << 20)
    state = unchanged(machine)
    out = diagram(machine, folio)
    assert unchanged(machine) == state and not machine.hugetlb.optimize_vmemmap
    before = rows(section(out, "before optimization: the current mapping"))
    after = rows(section(out, "after optimization: optimized in a rolled-back transaction"))
    first = machine.memmap_frame(folio.head)
    assert before == [(str(i), "pmd", "RW", f"{first + i:#x}") for i in range(PER_2M)]  # inside a PMD leaf
    assert len({r[3] for r in after}) == 1 and after[0][2] == "RW" and {r[2] for r in after[1:]} == {"RO"}
    assert after[0][3].split()[0] not in {r[3] for r in before}  # 6.12 moves the head to a new page
    assert "  frames freed by the optimization: 7 (8 no longer mapped, 1 newly allocated)" in out


def test_diagram_7_1_head_and_shared_tail():
    machine = machine_of(text("7.1"))
    folio = first_folio(machine, 2 << 20)
    tail = machine.hugetlb.hvo.tail_pages[(0, 9)]
    out = diagram(machine, folio)
    after = rows(section(out, "after optimization: the current mapping"))
    assert after[0] == ("0", "pte", "RW", f"{machine.memmap_frame(folio.head):#x}")
    assert after[1:] == [(str(i), "pte", "RO", f"{tail:#x} [A]") for i in range(1, PER_2M)]
    assert "  8 vmemmap pages, 2 distinct frames" in out
    assert "(the read-only tail page of node 0 shared by every optimized order-9 folio there)" in out
    assert "  frames freed by the optimization: 7 (7 no longer mapped, 0 newly allocated)" in out


def test_diagram_5_14_keeps_two_pages():
    machine = machine_of(text("5.14"))
    folio = first_folio(machine, 2 << 20)
    out = diagram(machine, folio)
    after = rows(section(out, "after optimization: the current mapping"))
    pages = vmemmap_pages(machine, folio)
    assert [r[2] for r in after] == ["RW", "RW"] + ["RO"] * 6
    assert len({frame for *_, frame in pages}) == 2
    assert [r[3] for r in after[1:]] == [f"{pages[1][3]:#x} [A]"] * 7  # tails map the second kept page
    assert "  frames freed by the optimization: 6 (6 no longer mapped, 0 newly allocated)" in out


def test_diagram_1G_collapses_runs(capsys):
    assert main(["diagram", str(EXAMPLES / "x86_64-hvo-boot-1G.toml"), "--size", "1G", "--index", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("HugeTLB 1G folio #1 of 2 at pfn 0x3c0000-0x3fffff (262,144 pfns), node 0, boot, vmemmap optimized")
    before = rows(section(out, "before optimization:"))
    after = rows(section(out, "after optimization:"))
    assert [r[:3] for r in after] == [("0", "pte", "RW"), ("1-4095", "pte", "RO")]
    assert after[0][3] == after[1][3] and after[0][3].endswith("[A]")
    # the restored pages map highest first within each block (see test_cli_json's diagram test): one row each
    assert before[-1][0] == "4095" and all(re.fullmatch(r"0x[0-9a-f]+(-0x[0-9a-f]+)?", r[3]) for r in before)
    assert "  4,096 vmemmap pages, 4,096 distinct frames" in out and "  4,096 vmemmap pages, 1 distinct frame" in out
    assert "  frames freed by the optimization: 4,095 (4,095 no longer mapped, 0 newly allocated)" in out


def test_diagram_without_hvo_draws_the_current_mapping():
    machine = machine_of(text(arch="arm64", hugetlb="", steps=(("2M", 1),)))
    folio = first_folio(machine, 2 << 20)
    out = diagram(machine, folio)
    assert "HVO is not available on arm64 with kernel 6.12: HVO changes the output address" in out
    assert out.endswith(draw_folio_vmemmap(machine, folio))
    assert [r[1:3] for r in rows(out.splitlines())] == [("pmd", "RW")] * PER_2M
    machine = machine_of(text("5.14", hugetlb=""))
    out = diagram(machine, first_folio(machine, 2 << 20))
    assert "cannot show the optimized mapping: kernel 5.14 has no vm.hugetlb_optimize_vmemmap sysctl" in out


def test_diagram_cli_errors(tmp_path, capsys):
    code, _, err = cli(tmp_path, capsys, text(), "diagram", "--size", "1G")
    assert code == 2 and "no 1G folio #0: the pool holds 0" in err
    code, _, err = cli(tmp_path, capsys, text(steps=()), "diagram")
    assert code == 2 and "the scenario leaves no HugeTLB folios" in err
