"""arm64 ``memstart_addr``: the vmemmap of the first page of RAM lies at ``VMEMMAP_START`` wherever
RAM starts. arch/arm64/mm/init.c ``arm64_memblock_init`` sets ``memstart_addr`` to the start of DRAM
rounded down to ``ARM64_MEMSTART_ALIGN`` (1 GiB with 4K and 16K pages, 512 MiB with 64K), and
arch/arm64/include/asm/memory.h defines ``vmemmap`` as ``VMEMMAP_START - (memstart_addr >> PAGE_SHIFT)``
struct pages."""

import pytest

from vmemcore import GiB, MiB
from vmemcore.machine import Machine

STRUCT_PAGE = 64
VMEMMAP_END = (1 << 64) - 1 * GiB


def vmemmap_start(va_bits, page_shift):
    # VMEMMAP_SIZE: a struct page per page of the linear map's lower half, 2**(VA_BITS - 1) bytes
    return VMEMMAP_END - ((1 << (va_bits - 1)) >> page_shift) * STRUCT_PAGE


@pytest.mark.parametrize("variant, page_shift, start, memstart", [
    ("4K-48", 12, 1 * GiB, 1 * GiB),  # QEMU virt: RAM at 1 GiB
    ("4K-48", 12, 1 * GiB + 512 * MiB, 1 * GiB),  # rounded down to ARM64_MEMSTART_ALIGN, 1 GiB
    ("16K-47", 14, 3 * GiB, 3 * GiB),  # 16K: CONT_PMD_SHIFT, 1 GiB
    ("64K-42", 16, 1 * GiB + 512 * MiB, 1 * GiB + 512 * MiB),  # 64K: PMD_SHIFT = SECTION_SIZE_BITS, 512 MiB
])
def test_the_first_page_of_ram_has_its_struct_page_at_vmemmap_start(variant, page_shift, start, memstart):
    m = Machine("arm64", variant=variant, memory=[{"start": start, "size": 4 * GiB}])
    va_bits = int(variant.split("-")[1])
    base = vmemmap_start(va_bits, page_shift)
    assert m.pfn_to_page(memstart >> page_shift) == base
    assert m.pfn_to_page(start >> page_shift) == base + ((start - memstart) >> page_shift) * STRUCT_PAGE
    assert m.pagetable.translate(m.pfn_to_page(start >> page_shift)) is not None
    m.check()


def test_ram_at_32g_needs_one_pmd_table_not_two():
    # 64 GiB of RAM at 32 GiB: 16 Mi pages x 64 B = 1 GiB of struct pages. memstart_addr = 32 GiB,
    # so they fill VMEMMAP_START + [0, 1 GiB): one PUD entry, one PMD table of 512 2 MiB leaves.
    # Counted from physical 0 they would lie at [512 MiB, 1.5 GiB), across two PUD entries.
    m = Machine("arm64", memory=[{"start": 32 * GiB, "size": 64 * GiB}])
    c = m.counters()
    assert m.pagetable.tables["pmd"] == 1
    assert c["vmemmap_leaves_2M"] == 512
    assert m.pfn_to_page(32 * GiB >> 12) == vmemmap_start(48, 12)
    m.check()


def test_hot_added_memory_must_fit_the_linear_map_above_memstart():
    # arch_get_mappable_range: [__pa(PAGE_OFFSET), __pa(PAGE_END - 1)], 2**47 bytes from memstart_addr
    m = Machine("arm64", memory=[{"start": 1 * GiB, "size": 4 * GiB}])
    top = m.hooks.mappable_range(m)
    assert (top.start, top.end) == (1 * GiB, 1 * GiB + (1 << 47))
