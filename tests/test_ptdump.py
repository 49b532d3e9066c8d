"""``vmemcore ptdump``: the vmemmap's page tables in each arch's debugfs format (docs/ptdump.md)."""

import json
import types
from pathlib import Path

import pytest

import vmemcore_x86_64
from vmemcore import GiB, Machine, hookimpl
from vmemcore.arch import PtdumpColumn, PtdumpFormat
from vmemcore.cli import main
from vmemcore.errors import PluginError
from vmemcore.plugins import Registry
from vmemcore.archtypes import GENERIC
from vmemcore.ptdump import format_size, ptdump_data, ptdump_lines

ROOT = Path(__file__).parent.parent
GOLDEN = Path(__file__).parent / "data" / "ptdump"

HVO_ONE = """
[machine]
arch = "x86_64"
kernel = "6.12"

[[memory]]
node = 0
size = "16G"

[hugetlb]
optimize_vmemmap = true

[[steps]]
op = "hugetlb.resize"
size = "2M"
count = 1
"""


def _run(capsys, *argv):
    code = main(list(argv))
    return code, capsys.readouterr().out


def test_x86_64_16G_prints_the_hand_written_golden_dump(capsys):
    """tests/data/ptdump/README.md derives every column of the golden file from dump_pagetables.c."""
    code, out = _run(capsys, "ptdump", str(ROOT / "examples" / "x86_64-16G.toml"))
    assert code == 0
    assert out == (GOLDEN / "x86_64-16G.txt").read_text()


def test_size_is_printed_in_the_largest_unit_that_divides_it():
    # note_page: divide by 1024 while it divides evenly; %9lu%c
    assert format_size(4096) == "        4K"
    assert format_size(28 * 1024) == "       28K"
    assert format_size(2 << 20) == "        2M"
    assert format_size(1984 << 20) == "     1984M"
    assert format_size(511 << 30) == "      511G"
    assert format_size(1 << 60) == "        1E"


def _hvo_one(tmp_path):
    path = tmp_path / "hvo-one.toml"
    path.write_text(HVO_ONE)
    return str(path)


def test_hvo_of_one_2M_page_turns_one_pmd_into_a_pte_table_of_1_rw_and_7_ro_entries(tmp_path, capsys):
    """x86_64 6.12 (mm/hugetlb_vmemmap.c): vmemmap_split_pmd makes the PMD leaf holding the folio's
    32 KiB of struct pages a PTE table; vmemmap_remap_free maps the head's PTE to a new head page
    RW and the 7 tail PTEs to that page read-only (PAGE_KERNEL_RO)."""
    code, out = _run(capsys, "ptdump", _hvo_one(tmp_path), "--diff", "boot", "0", "--phys", "--json")
    assert code == 0
    data = json.loads(out)
    assert [line.split()[0] for line in data["removed"]] == ["0xffffea0000000000-0xffffea0010000000"]
    assert "256M" in data["removed"][0] and data["removed"][0].endswith("pmd")
    ptes = [run for run in data["after"]["runs"] if run["level"] == "pte"]
    assert sum(run["entries"] for run in ptes) == 512  # one PTE table: 2 MiB of vmemmap
    assert ptes[0]["start"] % (2 << 20) == 0 and ptes[-1]["end"] == ptes[0]["start"] + (2 << 20)
    ro = [run for run in ptes if run["read_only"]]
    assert [(run["entries"], run["shared_page"]) for run in ro] == [(7, True)]
    (tails,) = ro
    head = next(run for run in ptes if run["end"] == tails["start"])
    assert (head["entries"], head["read_only"], head["phys"]) == (1, False, tails["phys"])  # the new head page
    pmds = [run for run in data["after"]["runs"] if run["level"] == "pmd" and run["present"]]
    assert sum(run["size"] for run in pmds) == (256 << 20) - (2 << 20)
    # every added line is one of the after-dump's, and the rest of the dump did not change
    assert set(data["added"]) <= set(data["after"]["lines"])
    assert len(data["added"]) == len(data["after"]["lines"]) - len(data["before"]["lines"]) + 1


def test_diff_in_text_is_a_unified_diff_of_the_kernel_lines(tmp_path, capsys):
    code, out = _run(capsys, "ptdump", _hvo_one(tmp_path), "--diff", "boot", "0")
    assert code == 0
    lines = out.splitlines()
    assert lines[:2] == ["--- after boot", "+++ after steps[0]"]
    changed = [line for line in lines[3:] if line[0] in "+-"]
    assert [line[0] for line in changed] == ["-"] + ["+"] * 5
    assert changed[2].endswith("RW                 GLB NX pte")
    assert changed[3].split()[1:] == ["28K", "ro", "GLB", "NX", "pte"]  # 7 read-only tails


def test_after_step_dumps_the_machine_as_that_step_left_it(tmp_path, capsys):
    scenario = str(ROOT / "examples" / "x86_64-hvo-2M.toml")
    _, boot = _run(capsys, "ptdump", scenario, "--after-step", "boot")
    _, grown = _run(capsys, "ptdump", scenario, "--after-step", "0")
    _, last = _run(capsys, "ptdump", scenario)
    assert boot == (GOLDEN / "x86_64-16G.txt").read_text()  # the same machine before any step
    assert " ro " in grown and " pte" in grown
    assert " ro " not in last and " pte" in last  # restored: read-write again, the split PMDs stay PTE tables
    code = main(["ptdump", scenario, "--after-step", "5"])
    assert code == 2 and "there is no step 5" in capsys.readouterr().err


def test_phys_ends_runs_where_physical_addresses_stop_following_on():
    m = Machine("x86_64", memory=[{"size": 4 * GiB}])
    plain = ptdump_data(m)["runs"]
    with_phys = ptdump_data(m, phys=True)["runs"]
    assert len(plain) == 4  # 64M of PMD leaves, then holes at pmd, pud and pgd
    assert sum(run["size"] for run in with_phys if run["present"]) == 64 << 20
    for run in with_phys:
        if run["present"]:
            assert run["phys"] is not None and run["line"].split()[1] == f"0x{run['phys']:016x}"


@pytest.mark.parametrize("arch, first, hole", [
    ("x86_64", "---[ Vmemmap ]---", "pmd"),
    ("arm64", "---[ vmemmap start ]---", "PMD"),
    ("s390", "---[ vmemmap Area ]---", "PMD I"),
    ("powerpc", "---[ vmemmap start ]---", None),
    ("riscv64", "---[ vmemmap start ]---", None),
])
def test_ptdump_format_of_each_arch(arch, first, hole):
    m = Machine(arch, memory=[{"size": 4 * GiB}])
    lines = ptdump_lines(m)
    assert lines[0] == first
    leaves = [line for line in lines[1:] if not line.startswith("---")]
    assert leaves[0].startswith(f"0x{m.sparse_geometry.vmemmap_base:016x}-")
    if hole is None:  # powerpc and riscv print no line for an empty run
        assert len(leaves) == 1
    else:
        assert leaves[1].endswith(hole)
    assert (lines[-1] == "---[ vmemmap end ]---") == (arch in ("arm64", "riscv64"))


def test_ptdump_format_default_and_a_third_party_answer():
    lean = types.ModuleType("lean")
    for key in dir(vmemcore_x86_64):
        if key.startswith("vmemcore_") and key != "vmemcore_ptdump_format":
            setattr(lean, key, getattr(vmemcore_x86_64, key))
    m = Machine("x86_64", memory=[{"size": 1 * GiB}], registry=Registry(autoload=False, extra=[lean]))
    assert m.hooks.ptdump_format(m) is GENERIC
    assert ptdump_lines(m)[1].endswith("16M pmd RW")

    mine = PtdumpFormat(line="{start:x}+{size}:{attrs}", columns=(PtdumpColumn("r-", "rw", "rdonly"),), hole=None,
                        markers=("mine", "end of mine"))

    @hookimpl
    def fmt(machine):
        return mine

    custom = types.ModuleType("custom")
    for key in dir(lean):
        if key.startswith("vmemcore_"):
            setattr(custom, key, getattr(lean, key))
    custom.vmemcore_ptdump_format = fmt
    m = Machine("x86_64", memory=[{"size": 1 * GiB}], registry=Registry(autoload=False, extra=[custom]))
    assert ptdump_lines(m) == ["---[ mine ]---", "ffffea0000000000+       16M:rw", "---[ end of mine ]---"]

    @hookimpl
    def bad(machine):
        return "0x%lx"

    custom.vmemcore_ptdump_format = bad
    m = Machine("x86_64", memory=[{"size": 1 * GiB}], registry=Registry(autoload=False, extra=[custom]))
    with pytest.raises(PluginError, match="vmemcore_ptdump_format: returned str, expected PtdumpFormat"):
        ptdump_lines(m)


def test_a_bad_ptdump_format_is_refused_at_the_boundary():
    with pytest.raises(ValueError, match="not a valid template"):
        PtdumpFormat(line="{start} {nonsense}")
    with pytest.raises(ValueError):
        PtdumpColumn("X", bit="writable")


def test_a_64T_machine_dumps_in_a_few_lines(capsys):
    code, out = _run(capsys, "ptdump", str(ROOT / "examples" / "x86_64-64T.toml"))
    assert code == 0
    assert out.splitlines()[1].split()[1] == "1T"  # 64 TiB of RAM: 1 TiB of struct pages in PMD leaves
