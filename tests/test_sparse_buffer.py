"""The sparse buffer (``sparse_buffer_init`` in mm/sparse.c) and its fallback: the node's whole
buffer, ``section_map_size()`` (a section's memmap rounded up to PMD_SIZE) per present section,
aligned to ``section_map_size()``, comes from ``memmap_alloc(..., exact_nid=true)``
(memblock_alloc_exact_nid_raw); when no free memblock range of the node holds it, there is no
buffer and each ``vmemmap_alloc_block_buf`` falls back to ``vmemmap_alloc_block``: memblock, top
down, one block at a time."""

import pytest

from vmemcore import Machine
from vmemcore.errors import OutOfMemory
from vmemcore.units import GiB


def test_arm64_64k_machine_of_exactly_16g_boots_without_the_buffer():
    # 64K pages, 48-bit VA: SECTION_SIZE_BITS 29 (512 MiB sections) and PMD_SIZE 512 MiB, so
    # section_map_size() = ALIGN(8,192 x 64 B = 512 KiB, 512 MiB) = 512 MiB per section: the buffer
    # of 32 sections is 16 GiB, the whole node, and the 32 MiB kernel image at the start of RAM
    # leaves no free range that large: the buffer fails and boot goes on without it
    m = Machine("arm64", "64K-48", memory=[{"size": 16 * GiB}])
    c = m.counters()
    # __populate_section_memmap adds DIV_ROUND_UP(PAGES_PER_SECTION x sizeof(struct page), PAGE_SIZE)
    # per section while booting (memmap_boot_pages_add): 32 x DIV_ROUND_UP(8,192 x 64, 65,536) = 32 x 8
    assert c["nr_memmap_boot_pages"] == 32 * 8 == 256
    assert c["memmap_frames"] == 256 and c["vmemmap_leaves_64K"] == 256  # base pages: PMDs are 512 MiB
    # each vmemmap page is its own top-down memblock allocation: after the PMD table (pfn 262,143)
    # and the PTE table (262,142) the walk from the lowest address meets, the memmap of pfn 0 gets
    # 262,141 and each later vmemmap page the next lower frame, down to 262,141 - 255 = 261,886
    assert m.physmem.owner(262_143).use.value == m.physmem.owner(262_142).use.value == "pagetable"
    assert (m.memmap_frame(0), m.memmap_frame(262_143)) == (262_141, 261_886)
    # 262,144 pages less the memmap, its 2 tables and the image (32 MiB = 512 pages of 64 KiB)
    assert c["free_frames"] == 262_144 - 256 - 2 - 512
    m.check()


def test_a_buffer_that_fits_is_taken_whole_and_handed_out_in_order():
    # x86_64 16 GiB: 128 sections x section_map_size() 2 MiB = 256 MiB, at the top of memory (memblock
    # is top-down, aligned to 2 MiB): the memmap of pfn 0 is the buffer's first frame, 4,194,304 -
    # 65,536, and the page tables come from below the buffer
    m = Machine("x86_64", memory=[{"size": 16 * GiB}])
    assert m.memmap_frame(0) == 4_194_304 - 65_536
    assert m.physmem.owner(4_194_304 - 65_536 - 1).use.value == "pagetable"
    m.check()


def test_without_the_kernel_image_the_whole_node_buffer_is_taken_and_boot_runs_out_of_memory():
    # no reservation: the 16 GiB buffer fits the node's one free range exactly, so memblock grants it
    # (as the kernel's rule does), and the vmemmap's first page table finds no free frame left
    with pytest.raises(OutOfMemory, match="no memory for a pmd table of the vmemmap"):
        Machine("arm64", "64K-48", memory=[{"size": 16 * GiB}], kernel_image=0)
