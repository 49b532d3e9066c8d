"""Messages as issue 12 found them and as they read now: sizes at any magnitude, ranges labelled
bytes or pfns, the device-dax align, "did you mean", disabled plugins, yes/no, and a
docs/scenarios.md that names every profile and counter."""

import json
import re
from pathlib import Path

import pytest

from scenario_helpers import EXAMPLES, HEAD, cli
from vmemcore.cli import main
from vmemcore.errors import BadRequest
from vmemcore.profiles import PROFILES
from vmemcore.stats import COUNTER_ORDER, counter_key
from vmemcore.units import EiB, GiB, MiB, format_size, human_size
from vmemcore.zone_device import add_devdax_step

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS_MD = (ROOT / "docs" / "scenarios.md").read_text()


def steps(*tables):
    return "".join("\n[[steps]]\n" + "".join(f"{k} = {v}\n" for k, v in t.items()) for t in tables)


@pytest.mark.parametrize("nbytes, text", [
    (0, "0"), (512, "512B"), (4096, "4K"), ((15 << 30) + (768 << 20), "15.75G"), (-(32 << 10), "-32K"),
    (GiB - 1, "1G"),  # rounds up into the next unit, not "1024M"
    (1023 * EiB, "1023E"),
    (1024 * EiB - 1, "1.18e+21 bytes"),  # from 1024E on: scientific, not "1024E"
    (10 ** 23 << 50, "1.13e+38 bytes"),  # issue 12 saw "97656249999999991808E" (float rounding)
    (1 << 200, "1.61e+60 bytes"),
])
def test_human_size_at_any_magnitude(nbytes, text):
    assert human_size(nbytes) == text


def test_format_size_is_exact_below_1024E():
    assert [format_size(n) for n in (0, 4096, 3 << 20, 1023 * EiB, 1024 * EiB, 10 ** 23 << 50)] == [
        "0", "4K", "3M", "1023E", "1.18e+21 bytes", "1.13e+38 bytes"]


def test_a_huge_size_prints_sanely(tmp_path, capsys):
    code, _, err = cli(tmp_path, capsys, HEAD.replace('"16G"', '"100000000000000000000000P"'), "run")
    assert code == 2
    assert "range [0, 1.13e+38 bytes) ends past the 46-bit physical limit (64T)" in err
    assert "97656249999999991808E" not in err
    boot = '[hugetlb]\nboot = [{ size = "100000000000000000000000P", count = 1 }]\n'
    code, _, err = cli(tmp_path, capsys, HEAD + boot, "run")
    assert code == 2 and "size: 1.13e+38 bytes cannot be a HugeTLB page size" in err
    assert "97656250000000000000E" not in err


def test_eexist_and_hotplug_ranges_say_pfns_or_bytes(tmp_path, capsys):
    add = {"op": '"memmap.add"', "start": '"64G"', "size": '"2M"'}
    _, _, err = cli(tmp_path, capsys, HEAD + steps(add, add), "run")
    assert ("sub-sections of pfns [0x1000000, 0x1000200) (bytes [0x1000000000, 0x1000200000)) already have a "
            "memmap (-EEXIST)") in err
    assert "[0x1000000, +0x200)" not in err
    hot = {"op": '"hotplug.add"', "start": '"8G"', "size": '"1G"'}
    _, _, err = cli(tmp_path, capsys, HEAD + steps(hot), "run")
    assert "pfns [0x200000, 0x240000) (bytes [0x200000000, 0x240000000)) overlap memory already present (-EEXIST)" in err
    assert "pfn range [" not in err
    hot = {"op": '"hotplug.add"', "start": '"64G"', "size": '"2G"'}
    online = {"op": '"hotplug.online"', "start": '"64G"', "size": '"1G"'}
    _, _, err = cli(tmp_path, capsys, HEAD.replace('"16G"', '"64G"') + steps(hot, online), "run")
    assert "bytes [0x1000000000, 0x1040000000) are not aligned to the 2G memory block size (-EINVAL)" in err
    assert "+0x40000000" not in err


@pytest.mark.parametrize("start, size, text", [
    ('"1T"', '"1G"', "device range bytes [0x10000000000, 0x10040000000) (1G) is smaller than the 2G compound page size"),
    ('"1T"', '"3G"', "device range bytes [0x10000000000, 0x100c0000000) (3G) is not a multiple of the 2G compound page size"),
    ('"1025G"', '"2G"', "device range bytes [0x10040000000, 0x100c0000000) does not start on a multiple of the 2G compound page size"),
])
def test_devdax_align_larger_than_the_range(tmp_path, capsys, start, size, text):
    code, _, err = cli(tmp_path, capsys, HEAD + steps({"op": '"devdax.add"', "start": start, "size": size, "align": '"2G"'}), "run")
    assert code == 1 and text + " (align; dev_dax_validate_align: -EINVAL)" in err
    assert "sub-sections" not in err


def test_devdax_range_of_partial_subsections(x86_16g):
    with pytest.raises(BadRequest) as info:
        add_devdax_step(x86_16g, start=64 * GiB + MiB, size="2M")
    assert str(info.value) == "device range bytes [0x1000100000, 0x1000300000) is not made of whole 2M sub-sections (-EINVAL)"


@pytest.mark.parametrize("machine, text", [
    ('arch = "x86-64"', "no plugin provides architecture 'x86-64' (found: "),
    ('arch = "x86_64"\nvariant = "5level"', "x86_64 has no variant '5level' (variants: 4-level, 5-level); did you mean '5-level'?"),
    # 6.12.0 is a valid version since kernel versions became a timeline; a near miss still gets "did you mean"
    ('arch = "x86_64"\nkernel = "6.12.x"', "unknown kernel profile '6.12.x' (a version 5.14 to 7.1.y as X.Y or X.Y.Z, "
                                          "or a named profile: " + ", ".join(PROFILES) + "); did you mean '6.12'?"),
])
def test_did_you_mean_arch_variant_kernel(tmp_path, capsys, machine, text):
    code, _, err = cli(tmp_path, capsys, HEAD.replace('arch = "x86_64"', machine), "run")
    assert code == 2 and text in err and "did you mean" in err
    if "x86-64" in machine:
        assert err.rstrip().endswith("did you mean 'x86_64'?")


def test_did_you_mean_on_the_command_line(capsys):
    assert main(["arches", "x86-64"]) == 2
    assert "did you mean 'x86_64'?" in capsys.readouterr().err
    assert main(["capabilities", "x86_64", "--variant", "4level"]) == 2
    assert "did you mean '4-level'?" in capsys.readouterr().err
    assert main(["capabilities", "x86_64", "--kernel", "7.10"]) == 2
    assert "--kernel '7.10': unknown kernel profile '7.10'" in capsys.readouterr().err


def test_a_disabled_plugin_is_named_with_its_option(tmp_path, capsys):
    code, _, err = cli(tmp_path, capsys, HEAD, "run", "-p", "no:x86_64")
    assert code == 2
    assert "no plugin provides architecture 'x86_64'" in err
    assert "the plugin 'x86_64' is disabled by -p no:x86_64 (disabled= in the API)" in err
    assert main(["arches", "x86_64", "-p", "no:x86_64"]) == 2
    assert "disabled by -p no:x86_64" in capsys.readouterr().err
    # an arch that is merely missing names the plugins that were disabled
    assert main(["arches", "sparc", "-p", "no:s390"]) == 2
    assert capsys.readouterr().err.rstrip().endswith("; disabled: -p no:s390")


def test_the_text_report_says_yes_and_no(capsys):
    for path in sorted(EXAMPLES.glob("*.toml")):
        assert main(["run", str(path)]) == 0
        out = capsys.readouterr().out
        assert not re.search(r"\b(True|False)\b", out), path.name
    assert main(["run", str(EXAMPLES / "x86_64-devdax-1G.toml")]) == 0
    out = capsys.readouterr().out
    assert "align=1G altmap=no" in out and "altmap=no dedup=yes" in out


def test_scenarios_md_names_every_kernel_profile():
    row = next(line for line in SCENARIOS_MD.splitlines() if line.startswith("| `kernel` |"))
    assert [name for name in PROFILES if f'`"{name}"`' not in row] == []


def test_scenarios_md_documents_every_counter():
    table = SCENARIOS_MD[SCENARIOS_MD.index("| counter | meaning |"):]
    documented = re.findall(r"`([a-z0-9_]+?)(?:<[a-z]+>)?`", table[:table.index("\n\n")])
    assert [name for name in COUNTER_ORDER if name.rstrip("_") not in {d.rstrip("_") for d in documented}] == []
    assert "PAGES_PER_SECTION" in table  # nr_memmap_boot_pages is counted per whole present section


def test_every_counter_the_engine_adds_has_its_place_in_the_order():
    names = set()
    for path in [*ROOT.glob("vmemcore/**/*.py"), *ROOT.glob("plugins/*/*/*.py")]:
        names |= set(re.findall(r"stats\.add\(\"([a-z0-9_]+)\"", path.read_text()))
    assert names and [name for name in sorted(names) if counter_key(name)[0] == len(COUNTER_ORDER)] == []


def test_every_counter_a_report_emits_has_its_place_in_the_order(capsys):
    for path in sorted(EXAMPLES.glob("*.toml")):
        assert main(["run", str(path), "--json"]) == 0
        counters = json.loads(capsys.readouterr().out)["counters"]
        assert [name for name in counters if counter_key(name)[0] == len(COUNTER_ORDER)] == [], path.name
