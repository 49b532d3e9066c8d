"""The riscv64 example plugin dates its behaviour with its own ``Change`` values, as any third-party
plugin may (docs/plugins.md#dated-changes): they are listed by ``vmemcore profiles --arch riscv64``
and switch at the first release that carries them, point releases included."""

import json

import pytest

import vmemcore
from vmemcore.cli import main

import vmemcore_riscv64 as riscv


def test_the_plugin_declares_its_changes():
    info = riscv.vmemcore_arch_info()
    assert [c.name for c in info.changes] == [
        "riscv64-hvo", "riscv64-svnapot-hugetlb", "riscv64-vmemmap-pmd", "riscv64-hotplug",
        "riscv64-preallocate-vmemmap", "riscv64-zone-device", "riscv64-dax-dedup"]
    assert all(c.stable == () for c in info.changes)  # nothing of riscv's was backported


@pytest.mark.parametrize("kernel, hotplug, leaves_2m", [
    ("6.7.12", False, 0), ("6.8", False, 128), ("6.10.14", False, 128), ("6.11", True, 128)])
def test_changes_switch_at_their_mainline_release(kernel, hotplug, leaves_2m):
    # 16 GiB: 128 sections of 2 MiB of memmap, PMD leaves from ff172d4818ad (6.8), base pages before
    m = vmemcore.Machine("riscv64", variant="Sv48", kernel=kernel, memory=[{"size": "16G"}])
    assert m.hooks.memory_hotplug_support(m).supported is hotplug
    assert m.counters().get("vmemmap_leaves_2M", 0) == leaves_2m


def test_profiles_lists_them(capsys):
    assert main(["profiles", "6.11.3", "--arch", "riscv64", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    via = {c["name"]: c["via"] for c in data["changes"] if c["owner"] == "riscv64"}
    assert via == {"riscv64-hvo": "v6.3", "riscv64-svnapot-hugetlb": "v6.4", "riscv64-vmemmap-pmd": "v6.8",
                   "riscv64-hotplug": "v6.11", "riscv64-preallocate-vmemmap": "v6.11",
                   "riscv64-zone-device": "v6.11", "riscv64-dax-dedup": "v6.11"}
