"""MachineConfig: one validation for Machine's keywords and scenario tables, one way to boot."""

import attrs
import pytest

from vmemcore import Machine, MachineConfig, MemoryRange
from vmemcore.config import BootPages, HotplugSpec, HugetlbSpec, machine_config
from vmemcore.errors import BadRequest
from vmemcore.hotplug import MemmapOnMemory
from vmemcore.scenario import parse_scenario
from vmemcore.units import GiB, MiB

KEYWORDS = dict(variant={"paging": "5-level"}, kernel="6.19", features={"pse": True},
                memory=[{"size": "4G"}, {"node": 1, "size": 4 * GiB}],
                hugetlb={"optimize_vmemmap": True, "boot": [{"size": "1G", "count": 1, "node": 1}, {"size": "2M", "count": 8}]},
                hotplug={"memmap_on_memory": True})
TOML = """\
[machine]
arch = "x86_64"
variant = { paging = "5-level" }
kernel = "6.19"
features = { pse = true }
[[memory]]
size = "4G"
[[memory]]
node = 1
size = "4G"
[hugetlb]
optimize_vmemmap = true
boot = [{ size = "1G", count = 1, node = 1 }, { size = "2M", count = 8 }]
[hotplug]
memmap_on_memory = true
"""


def test_keywords_make_a_typed_frozen_config():
    config = machine_config("x86_64", **KEYWORDS)
    assert config == MachineConfig(
        "x86_64", "5-level", "6.19", (MemoryRange(0, 0, 4 * GiB), MemoryRange(1, 4 * GiB, 4 * GiB)), {"pse": True},
        HugetlbSpec(True, (BootPages(GiB, 1, 1), BootPages(2 * MiB, 8))), HotplugSpec(MemmapOnMemory.Y))
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        config.kernel = "6.1"


def test_a_scenario_and_the_keywords_make_the_same_config():
    assert parse_scenario(TOML).machine == machine_config("x86_64", **KEYWORDS)


def test_the_keyword_and_the_config_api_build_identical_machines():
    by_keywords = Machine("x86_64", **KEYWORDS)
    by_config = Machine.from_config(parse_scenario(TOML).machine)
    assert by_config.config == by_keywords.config
    assert by_config.snapshot() == by_keywords.snapshot()
    assert by_config.counters() == by_keywords.counters()
    assert (by_config.features, by_config.hotplug.mode) == (by_keywords.features, MemmapOnMemory.Y)


def test_memory_ranges_may_be_given_as_memory_range_values():
    config = machine_config("x86_64", memory=[MemoryRange(0, 0, "1G"), {"size": "1G"}])
    assert config.memory == (MemoryRange(0, 0, GiB), MemoryRange(0, GiB, GiB))


@pytest.mark.parametrize("keywords, message", [
    ({"variant": "6-level"}, "machine.variant: "),
    ({"kernel": "9.9"}, "machine.kernel: unknown kernel profile '9.9'"),
    ({"kernel": 6.10}, "machine.kernel: must be a quoted string"),
    ({"features": {"pse": 1}}, "machine.features.pse: must be true or false, got integer 1"),
    ({"features": {"psd": True}}, "machine.features.psd: x86_64 has no such feature"),
    ({"memory": []}, "memory: must be a non-empty array"),
    ({"memory": [{"size": "1G", "nodes": 1}]}, "memory[0].nodes: unknown key (expected one of: node, start, size); did you mean 'node'?"),
    ({"memory": [{"size": "1G"}, {"start": "512M", "size": "1G"}]}, "memory[1].start: range [512M, 1.5G) overlaps memory[0]"),
    ({"memory": [{"size": 4097}]}, "memory[0].size: 0x1001 is not a multiple of the page size (4K)"),
    ({"hugetlb": {"optimise_vmemmap": True}}, "hugetlb.optimise_vmemmap: unknown key"),
    ({"hugetlb": {"boot": [{"size": "3M", "count": 1}]}}, "hugetlb.boot[0].size: 3M cannot be a HugeTLB page size"),
    ({"hugetlb": {"boot": [{"size": "2M", "count": 1, "node": 3}]}}, "hugetlb.boot[0].node: node 3 has no [[memory]]"),
    ({"hotplug": {"memmap_on_memory": "maybe"}}, "hotplug.memmap_on_memory: must be 'N', 'Y', 'force' or true/false"),
])
def test_bad_keywords_are_bad_requests_naming_the_setting(keywords, message):
    for build in (machine_config, Machine):
        with pytest.raises(BadRequest) as info:
            build("x86_64", **keywords)
        assert str(info.value).startswith(message)
