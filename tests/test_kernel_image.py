"""The kernel image: the first memblock reservation of setup_arch (x86 ``early_reserve_memory``,
arm64 ``arm64_memblock_init``), never handed to the buddy allocator (``memblock_free_all`` frees
only memblock's free ranges) and so never managed."""

import pytest

from vmemcore import Machine
from vmemcore.errors import BadRequest
from vmemcore.physmem import Use
from vmemcore.scenario import parse_scenario
from vmemcore.structpage import PG_RESERVED
from vmemcore.units import GiB, KiB, MiB

from scenario_helpers import HEAD, scenario_error

PAGE = 4 * KiB


def test_x86_64_reserves_32m_at_config_physical_start_by_default():
    m = Machine("x86_64", memory=[{"size": 16 * GiB}])
    # CONFIG_PHYSICAL_START = 16 MiB: pfns [0x1000, 0x3000), 32 MiB / 4 KiB = 8,192 pages
    assert m.kernel_image == (0x1000, 0x3000)
    assert {m.physmem.owner(pfn).use for pfn in (0x1000, 0x2fff)} == {Use.KERNEL_IMAGE}
    assert m.physmem.owner(0xfff).use is m.physmem.owner(0x3000).use is Use.FREE
    assert m.physmem.buddy.order_of(0x1000) is None and m.physmem.buddy.order_of(0xfff) is not None
    c = m.counters()
    assert c["kernel_image_frames"] == 8_192
    # 16 GiB = 4,194,304 pages less the boot memmap (65,536), its PUD and PMD tables and the image
    assert c["free_frames"] == 4_194_304 - 65_536 - 2 - 8_192
    present, managed = m.hotplug.zone_pages()[(0, "normal")]
    assert (present, managed) == (4_194_304, 4_194_304 - 65_536 - 2 - 8_192)
    # the image's struct pages say so: PageReserved, as memblock's reserved memory is marked
    # (reserve_bootmem_region), unlike the free page next to it
    assert m.structpages.read(0x1000).flags & PG_RESERVED and not m.structpages.read(0xfff).flags & PG_RESERVED
    m.check()


def test_no_kernel_image_frees_those_pages():
    with_image = Machine("x86_64", memory=[{"size": 16 * GiB}]).counters()
    without = Machine("x86_64", memory=[{"size": 16 * GiB}], kernel_image=0)
    assert without.kernel_image is None
    c = without.counters()
    assert c["free_frames"] - with_image["free_frames"] == 8_192 and c["kernel_image_frames"] == 0


def test_the_size_is_rounded_up_to_whole_pages():
    # memblock_reserve(_text, _end - _text) reserves bytes; memblock_free_all frees only whole free
    # pages (PFN_UP of a free range's start): 33 KiB covers 9 pages of 4 KiB
    m = Machine("x86_64", memory=[{"size": 1 * GiB}], kernel_image="33K")
    assert m.kernel_image == (0x1000, 0x1009)


def test_other_arches_load_it_at_the_start_of_ram():
    # arm64 with RAM from 1 GiB (QEMU virt): the image is the first 32 MiB there, 2,048 pages of 16 KiB
    m = Machine("arm64", "16K-47", memory=[{"start": 1 * GiB, "size": 4 * GiB}])
    assert m.kernel_image == (GiB // (16 * KiB), (GiB + 32 * MiB) // (16 * KiB))
    assert m.counters()["kernel_image_frames"] == 2_048
    m.check()


def test_x86_64_loads_it_in_the_lowest_range_that_holds_it_above_16m():
    # [0, 16 MiB) lies below LOAD_PHYSICAL_ADDR and [16 MiB, 32 MiB) is too small: the decompressor
    # runs a kernel loaded higher where it lies, here at the start of the range at 4 GiB
    m = Machine("x86_64", memory=[{"size": 32 * MiB}, {"start": 4 * GiB, "size": 4 * GiB}])
    assert m.kernel_image == (4 * GiB // PAGE, (4 * GiB + 32 * MiB) // PAGE)
    m.check()


def test_a_scenario_sets_the_size():
    config = parse_scenario(HEAD.replace('arch = "x86_64"', 'arch = "x86_64"\nkernel_image = "64M"')).machine
    assert config.kernel_image == 64 * MiB
    assert Machine.from_config(config).counters()["kernel_image_frames"] == 16_384


def test_an_image_that_fits_nowhere_is_refused_naming_the_key():
    error = scenario_error(HEAD.replace('arch = "x86_64"', 'arch = "x86_64"\nkernel_image = "32G"'))
    assert error.key == "machine.kernel_image"
    assert "a kernel image of 32G fits in no [[memory]] range at or above 16M" in str(error)
    with pytest.raises(BadRequest, match="machine.kernel_image: a kernel image of 32M fits in no"):
        Machine("x86_64", memory=[{"size": 32 * MiB}])
