"""The s390 vmemmap base as arch/s390/boot/startup.c setup_kernel_memory_layout() computes it, with
no KASLR, the default vmalloc size and no mem=, KASAN or KMSAN. Common figures: VMALLOC_DEFAULT_SIZE
= 512 GiB - MODULES_LEN (2 GiB) = 510 GiB, larger than ident_map_size / 8 for every machine here
below 4 TiB; one page of identity map costs PAGE_SIZE + sizeof(struct page) = 4160 bytes."""

import pytest

from vmemcore import BadRequest, GiB, Machine, TiB


def base(kernel, variant, size):
    return Machine("s390", kernel=kernel, variant=variant, memory=[{"size": size}]).sparse_geometry.vmemmap_base


def test_before_516_the_vmemmap_sits_right_above_the_identity_map():
    # 5.14, 16 GiB, 3 levels: round_up(ident_map_size 16G, _REGION3_SIZE 2G) = 16 GiB, below the top
    # split (about 3528 GiB), so vmemmap_off = 16 GiB
    assert base("5.14", "3-level", 16 * GiB) == 16 * GiB
    # 4 levels: the rounding is to a region-second entry, 4 TiB: round_up(16G, 4T) = 4 TiB
    assert base("5.14", "4-level", 16 * GiB) == 4 * TiB
    # 5.15.4 still has it; 5.15.5 took 9a39abb7c9aa
    assert base("5.15.4", "3-level", 16 * GiB) == 16 * GiB


@pytest.mark.parametrize("kernel", ["5.15.5", "6.1", "6.9"])
def test_516_to_69_put_the_vmemmap_below_vmalloc(kernel):
    # 3 levels: MODULES_END = 4 TiB, VMALLOC_END = 4T - 2G = 4094G, vmalloc 510G (less than half),
    # VMALLOC_START = 3584 GiB; pages = SECTION_ALIGN_UP(3584G / 4160) and
    # round_down(3584G - pages * 64, 2G) = round_down(3528.86G, 2G) = 3528 GiB = 0x37200000000
    assert base(kernel, "3-level", 16 * GiB) == 3528 * GiB == 0x37200000000
    # 4 levels: VMALLOC_START = 8P - 512G, the split rounded down to 4 TiB is near 7.9 PiB, then
    # min(., 1 << MAX_PHYSMEM_BITS) = 64 TiB
    assert base(kernel, "4-level", 16 * GiB) == 64 * TiB
    assert base(kernel, "4-level", 4 * TiB) == 64 * TiB


@pytest.mark.parametrize("kernel", ["6.10", "6.12", "7.1"])
def test_610_keeps_the_kernel_image_at_its_base_and_the_vmemmap_below(kernel):
    # The image at CONFIG_KERNEL_IMAGE_BASE 4T - 512M (get_vmem_size for 16 GiB, about 1 TiB, fits
    # below it), MODULES_END = 4T - 512M, VMALLOC_END = 4T - 2.5G, vmalloc 510G: VMALLOC_START =
    # 3583.5 GiB; round_down(3583.5G - SECTION_ALIGN_UP(3583.5G / 4160) * 64, 2G)
    # = round_down(3528.37G, 2G) = 3528 GiB. With KASLR off the kernel picks 3 levels, and a forced
    # 4-level layout keeps the image there and rte_size 2 GiB: the same base.
    assert base(kernel, "3-level", 16 * GiB) == 3528 * GiB
    assert base(kernel, "4-level", 16 * GiB) == 3528 * GiB


def test_memory_past_the_identity_limit_keeps_the_kernels_base():
    # 7.1, 3 levels, 4 TiB: vmalloc = 4 TiB / 8 = 512 GiB; get_vmem_size (about 4.6 TiB) exceeds
    # __NO_KASLR_END_KERNEL (4 TiB), so the image goes to the top, 4T - 512M (where it was anyway);
    # VMALLOC_END = 4T - 2.5G = 4093.5G, VMALLOC_START = 3581.5 GiB, round_down(3581.5G * 4096 / 4160
    # = 3526.4G, 2G) = 3526 GiB. The kernel caps ident_map_size there and leaves the rest unused; the
    # model keeps the memory and grows the region to its memmap: 4T / 4096 * 64 = 64 GiB (the layout
    # left 3581.5 - 3526 = 55.5 GiB).
    m = Machine("s390", kernel="7.1", variant="3-level", memory=[{"size": 4 * TiB}])
    assert (m.sparse_geometry.vmemmap_base, m.sparse_geometry.vmemmap_size) == (3526 * GiB, 64 * GiB)
    assert m.hooks.mappable_range(m).end == 4 * TiB  # the boot memory stays mappable


def test_hot_add_stops_below_the_vmemmap():
    # arch_get_mappable_range: [0, vmemmap_start) = [0, 3528 GiB) on 6.12 with 3 levels
    m = Machine("s390", kernel="6.12", memory=[{"size": 16 * GiB}])
    assert (m.hooks.mappable_range(m).start, m.hooks.mappable_range(m).end) == (0, 3528 * GiB)
    with pytest.raises(BadRequest, match="E2BIG"):
        m.hotplug.add_memory(3528 * GiB, m.hotplug.block_size)
