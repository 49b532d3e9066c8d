"""powerpc memory block size from the firmware's device tree (``[machine] firmware.lmb_size``):
``ibm,lmb-size`` when the firmware describes hot-pluggable memory (``ibm,dynamic-reconfiguration-
memory``); otherwise arch/powerpc/mm/init_64.c ``probe_memory_block_size`` (6.6+) or, before,
arch/powerpc/platforms/pseries/hotplug-memory.c ``pseries_memory_block_size``."""

import json

import pytest

from scenario_helpers import cli, scenario_error
from vmemcore import GiB, MiB
from vmemcore.errors import BadRequest
from vmemcore.machine import Machine


def block_size(kernel="6.12", memory=({"size": "16G"},), **firmware):
    return Machine("powerpc", kernel=kernel, memory=list(memory), firmware=firmware).hotplug.block_size


@pytest.mark.parametrize("kernel", ["6.5", "6.12"])
def test_the_lmb_size_is_the_block_size(kernel):
    assert block_size(kernel) == 256 * MiB  # QEMU spapr's LMB, the default
    assert block_size(kernel, lmb_size="1G") == 1 * GiB
    assert block_size(kernel, lmb_size=64 * MiB) == 64 * MiB


@pytest.mark.parametrize("size, expected", [
    (16 * GiB, 1 * GiB),  # 16 GiB has no 1 GiB bit: 1 GiB stays
    (1536 * MiB, 256 * MiB),  # the 1 GiB bit is set: /4 = 256 MiB, whose bit 1.5 GiB lacks
    (1 * GiB + 256 * MiB + 64 * MiB, 16 * MiB),  # bits at 1 GiB, 256 MiB and 64 MiB: down to 16 MiB
    (320 * MiB, 1 * GiB),  # no 1 GiB bit: 1 GiB, larger than the memory (the kernel's bit test)
])
def test_without_drconf_memory_6_6_divides_1g_by_4_until_the_size_lacks_that_bit(size, expected):
    assert block_size("6.6", memory=[{"size": size}], lmb_size="none") == expected


def test_every_memory_node_narrows_the_block_size():
    # 16 GiB keeps 1 GiB, then a 1.5 GiB node at 16 GiB brings it to 256 MiB
    memory = [{"size": "16G"}, {"node": 1, "size": "1536M"}]
    assert block_size("6.12", memory=memory, lmb_size="none") == 256 * MiB


def test_before_6_6_the_node_after_memory0_gives_the_block_size():
    # pseries_memory_block_size: memory@0 is 1 GiB, so /memory@40000000's size is the block size
    memory = [{"size": "1G"}, {"node": 1, "size": "512M"}]
    assert block_size("6.5", memory=memory, lmb_size="none") == 512 * MiB
    # one node only: no /memory@<size of memory@0>, MIN_MEMORY_BLOCK_SIZE (a 16 MiB section)
    assert block_size("6.5", lmb_size="none") == 16 * MiB


def test_a_block_size_the_kernel_would_panic_on_is_refused():
    with pytest.raises(BadRequest, match="not a power of two of at least 16 MiB"):
        block_size("6.12", lmb_size="48M")
    with pytest.raises(BadRequest, match="not a power of two of at least 16 MiB"):
        block_size("6.5", memory=[{"size": "1G"}, {"node": 1, "size": "768M"}], lmb_size="none")


def test_the_scenario_key(tmp_path, capsys):
    source = ('[machine]\narch = "powerpc"\nkernel = "6.12"\nfirmware = { lmb_size = "none" }\n'
              '[[memory]]\nsize = "1536M"\n')
    code, out, _ = cli(tmp_path, capsys, source, "run", "--json")
    assert code == 0
    assert json.loads(out)["hotplug"]["block_size"] == 256 * MiB
    error = scenario_error('[machine]\narch = "x86_64"\nfirmware = { lmb_size = "1G" }\n[[memory]]\nsize = "16G"\n')
    assert "machine.firmware.lmb_size" in str(error) and "x86_64 has no such firmware value" in str(error)
