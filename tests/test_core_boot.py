"""Boot-time vmemmap populate (sparse_init) on x86_64: the shapes of docs/kernel-map.md#boot-populate-shapes."""

import numpy as np
import pytest

from vmemcore.machine import Machine
from vmemcore.physmem import Use
from vmemcore.units import GiB, MiB, TiB


def test_16g_is_128_pmd_leaves_counted_as_boot_memmap(x86_16g):
    c = x86_16g.counters()
    assert c["nr_memmap_boot_pages"] == 65_536  # 256 MiB of struct pages
    assert c["nr_memmap_pages"] == 0
    assert c["vmemmap_leaves_2M"] == 128
    assert "vmemmap_leaves_4K" not in c
    assert c["vmemmap_pagetable_pages_pud"] == 1
    assert c["vmemmap_pagetable_pages_pmd"] == 1
    assert c["vmemmap_pagetable_pages_pte"] == 0
    assert c["memmap_frames"] == 65_536
    assert c["pagetable_frames"] == 2
    assert c["free_frames"] == 4 * 1024 * 1024 - 65_536 - 2 - 8_192  # less the 32 MiB kernel image at 16 MiB ([machine] kernel_image): 8,192 pages never freed
    x86_16g.check()


def test_boot_memmap_frames_are_reserved_and_from_the_top_of_the_node(x86_16g):
    top = 16 * GiB // 4096
    # the sparse buffer is one 256 MiB memblock allocation at the top of node 0
    start, end, owner = x86_16g.physmem.frames.extent(top - 1)
    assert (start, end) == (top - 65_536, top)
    assert owner.use is Use.MEMMAP and owner.reserved
    # page tables come from memblock right below it, top-down
    assert x86_16g.physmem.owner(top - 65_537).use is Use.PAGETABLE


def test_five_level_adds_one_p4d_table():
    m = Machine("x86_64", variant="5-level", memory=[{"size": 16 * GiB}])
    c = m.counters()
    assert (c["vmemmap_pagetable_pages_p4d"], c["vmemmap_pagetable_pages_pud"], c["vmemmap_pagetable_pages_pmd"]) == (1, 1, 1)
    assert c["vmemmap_leaves_2M"] == 128


def test_every_pfn_translates_into_a_memmap_frame_on_its_node():
    m = Machine("x86_64", memory=[{"node": 0, "size": 8 * GiB}, {"node": 1, "size": 8 * GiB}])
    page = 4096
    for start, end, node in m.physmem.nodes.items():
        pfns = np.arange(start, end, dtype=np.int64)
        # each vmemmap page holds 64 struct pages: translate each distinct page once
        pages = np.unique(pfns * 64 // page)
        base = m.sparse_geometry.vmemmap_base
        frames = np.array([m.pagetable.translate(base + int(p) * page) >> 12 for p in pages])
        assert len(pages) * 64 == len(pfns)
        memmap = [(s, e) for s, e, o in m.physmem.frames.items() if o.use is Use.MEMMAP]
        on_node = [(s, e) for s, e, n in m.physmem.nodes.items() if n == node]
        assert sum(int(((frames >= s) & (frames < e)).sum()) for s, e in memmap) == len(frames)
        assert sum(int(((frames >= s) & (frames < e)).sum()) for s, e in on_node) == len(frames)
    assert m.stats["vmemmap_offnode_entries"] == 0
    m.check()


def test_a_section_straddling_nothing_still_populates_whole_sections():
    # 100 MiB of memory: one present section, populated whole (a section with a hole is fully populated)
    m = Machine("x86_64", memory=[{"size": 100 * MiB}])
    assert m.counters()["nr_memmap_boot_pages"] == 512
    assert m.counters()["vmemmap_leaves_2M"] == 1


def test_no_pse_maps_base_pages():
    m = Machine("x86_64", memory=[{"size": 1 * GiB}], features={"pse": False})
    c = m.counters()
    assert c["vmemmap_leaves_4K"] == 4096  # 16 MiB of memmap in 4 KiB pages
    assert c["vmemmap_pagetable_pages_pte"] == 8
    assert c["nr_memmap_boot_pages"] == 4096
    m.check()


def test_two_nodes_get_their_own_buffers_and_no_offnode_entries():
    m = Machine("x86_64", memory=[{"node": 0, "size": 512 * GiB}, {"node": 1, "size": 512 * GiB}])
    c = m.counters()
    assert c["nr_memmap_boot_pages"] == 1 * TiB // 4096 // 64
    assert c["vmemmap_leaves_2M"] == 8192
    assert m.stats["vmemmap_offnode_entries"] == 0
    node1_first = 512 * GiB // 4096
    assert m.physmem.node_of(m.memmap_frame(node1_first)) == 1
    assert m.physmem.node_of(m.memmap_frame(node1_first - 1)) == 0


def test_64t_four_level_shape():
    m = Machine("x86_64", memory=[{"size": 64 * TiB}])
    c = m.counters()
    assert c["vmemmap_leaves_2M"] == 524_288
    assert c["vmemmap_pagetable_pages_pmd"] == 1_024
    assert c["vmemmap_pagetable_pages_pud"] == 2
    assert c["nr_memmap_boot_pages"] == 1 << 28


def test_node_boundary_inside_a_section_is_refused():
    from vmemcore.errors import BadRequest

    with pytest.raises(BadRequest, match="section-aligned"):
        Machine("x86_64", memory=[{"node": 0, "size": 100 * MiB}, {"node": 1, "size": 100 * MiB}])


def test_memory_past_the_physical_limit_is_refused():
    from vmemcore.errors import BadRequest

    with pytest.raises(BadRequest, match="46-bit"):
        Machine("x86_64", memory=[{"size": 128 * TiB}])
