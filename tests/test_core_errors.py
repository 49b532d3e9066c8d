"""Errors carry the kernel's errno: the default of their class, or the one the failing path returns."""

import errno

import pytest

from vmemcore.errors import BadRequest, OutOfMemory, PluginError, ScenarioError, Veto
from vmemcore.machine import Machine
from vmemcore.scenario import RunError, parse_scenario, run_scenario
from vmemcore.units import GiB, MiB

G64 = 64 * GiB


def machine(mode="N", kernel="6.12"):
    return Machine("x86_64", kernel=kernel, memory=[{"size": 16 * GiB}], hotplug={"memmap_on_memory": mode})


def test_each_class_has_its_default_errno():
    assert (BadRequest("x").errno, BadRequest("x").errno_name) == (-errno.EINVAL, "EINVAL")
    assert (OutOfMemory("x").errno, OutOfMemory("x").errno_name) == (-errno.ENOMEM, "ENOMEM")
    assert Veto("x", [("arm64", "no")]).errno == -errno.EINVAL
    assert PluginError("p", "vmemcore_hook", "x").errno == -errno.EINVAL
    assert ScenarioError("key", "x").errno == -errno.EINVAL


def test_errno_is_settable_and_must_be_a_negative_error_number():
    assert BadRequest("x", errno=-errno.EBUSY).errno_name == "EBUSY"
    assert Veto("x", errno=-errno.EEXIST).errno == -errno.EEXIST
    with pytest.raises(ValueError, match="negative"):
        BadRequest("x", errno=errno.EBUSY)


def test_an_overlapping_hot_add_is_eexist():
    m = machine()
    m.hotplug.add_memory(G64, 128 * MiB)
    for start in (G64, 8 * GiB):  # over the hot-added block, and over boot memory
        with pytest.raises(BadRequest) as info:
            m.hotplug.add_memory(start, 128 * MiB)
        assert (info.value.errno, info.value.errno_name) == (-errno.EEXIST, "EEXIST")


def test_a_hot_add_past_the_physical_limit_is_e2big_and_a_misaligned_one_einval():
    m = machine()
    with pytest.raises(BadRequest) as info:
        m.hotplug.add_memory(1 << 46, 128 * MiB)
    assert info.value.errno == -errno.E2BIG
    with pytest.raises(BadRequest) as info:
        m.hotplug.add_memory(G64 + 1 * MiB, 128 * MiB)
    assert info.value.errno == -errno.EINVAL


def test_an_offline_with_unmovable_pages_and_removing_online_memory_are_ebusy():
    m = machine()
    [a] = m.hotplug.add_memory(G64, 128 * MiB).blocks
    m.hotplug.online(a)
    # since 5.10 a hot-added block's memmap comes from boot memory, ahead of onlined blocks on the free
    # lists: use it up first. Boot memory [0, 0x3efffe) holds 0x3efc00 / 512 + 1 = 8063 order-9
    # blocks (the order-10 run from pfn 0 and the order-9 block left at its top); a's memmap took
    # one, so 8062 2 MiB HugeTLB pages take the rest, and the next block's memmap comes from the
    # lowest block of a, now the lists' head
    m.hugetlb.resize("2M", 8062)
    m.hotplug.add_memory(G64 + 128 * MiB, 128 * MiB)  # its memmap comes from block a
    with pytest.raises(BadRequest) as info:
        m.hotplug.offline(a)
    assert info.value.errno_name == "EBUSY"
    with pytest.raises(BadRequest) as info:
        m.hotplug.remove_memory(G64, 128 * MiB)
    assert info.value.errno_name == "EBUSY"


def test_an_injected_allocation_failure_is_enomem():
    m = machine()
    m.physmem.faults.arm(nth=1)
    with pytest.raises(OutOfMemory) as info:
        m.hotplug.add_memory(G64, 1 * GiB)
    assert (info.value.errno, info.value.errno_name) == (-errno.ENOMEM, "ENOMEM")


def test_a_refused_memmap_on_memory_is_a_veto_with_einval():
    m = Machine("x86_64", kernel="6.1", memory=[{"size": 16 * GiB}], hotplug={"memmap_on_memory": "Y"})
    with pytest.raises(Veto) as info:
        m.hotplug.add_memory(G64, 256 * MiB, memmap_on_memory=True)  # 5.12-6.7: one block only
    assert info.value.errno == -errno.EINVAL


def test_a_failed_scenario_step_carries_the_errno_of_its_cause():
    scenario = parse_scenario('[machine]\narch = "x86_64"\n[[memory]]\nsize = "16G"\n'
                              '[[steps]]\nop = "hotplug.add"\nstart = "8G"\nsize = "128M"\n')
    with pytest.raises(RunError) as info:
        run_scenario(scenario)
    assert info.value.errno_name == "EEXIST" and info.value.cause.errno == -errno.EEXIST


def test_device_memory_over_system_ram_is_enxio_and_over_another_pagemap_enomem():
    from vmemcore.zone_device import add_devdax_step

    m = machine()
    with pytest.raises(BadRequest) as info:
        add_devdax_step(m, 0, 2 * MiB)
    assert info.value.errno_name == "ENXIO"
    add_devdax_step(m, G64, 2 * MiB)
    with pytest.raises(BadRequest) as info:
        add_devdax_step(m, G64, 2 * MiB)
    assert info.value.errno_name == "ENOMEM"
