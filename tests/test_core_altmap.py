"""The altmap allocator's arithmetic (altmap_alloc_block_buf, vmem_altmap_free), hand-computed."""

import pytest

from vmemcore.altmap import VmemAltmap
from vmemcore.errors import OutOfMemory
from vmemcore.units import GiB


def test_aligned_base_2m_request_takes_the_first_pfns():
    a = VmemAltmap(base_pfn=0x10000, end_pfn=0x17FFF, free=512)
    assert a.alloc_block(512) == 0x10000
    assert (a.alloc, a.align, a.nr_free) == (512, 0, 0)
    assert a.alloc_block(1) is None  # exhausted


def test_unaligned_base_pads_to_the_request_alignment():
    a = VmemAltmap(base_pfn=0x10001, end_pfn=0x17FFF, free=1024)
    assert a.alloc_block(512) == 0x10200  # padded by 511 pfns to a 512-pfn boundary
    assert (a.alloc, a.align) == (512, 511)
    assert a.nr_free == 1
    assert a.alloc_block(512) is None
    assert a.alloc_block(1) == 0x10400  # next pfn: base + reserve + alloc + align
    assert a.nr_free == 0


def test_odd_sized_request_needs_no_padding():
    a = VmemAltmap(base_pfn=0x10001, end_pfn=0x17FFF, free=8)
    assert a.alloc_block(3) == 0x10001  # 3 pfns: lowest set bit 1, no alignment
    assert a.alloc_block(2) == 0x10004  # 2 pfns from 0x10004: already aligned
    assert a.alloc_block(4) is None  # 0x10006 needs 2 pfns of padding: 4 + 2 > 3 left


def test_reserve_and_16m_alignment():
    a = VmemAltmap(base_pfn=0x20000, end_pfn=0x2FFFF, reserve=8, free=8192)
    assert a.offset == 8200
    assert a.alloc_block(4096) == 0x21000  # 0x20008 padded by 4088
    assert (a.alloc, a.align, a.nr_free) == (4096, 4088, 8)
    assert a.alloc_block(4096) is None


def test_free_gives_back_alloc_but_never_align():
    a = VmemAltmap(base_pfn=0x10001, end_pfn=0x17FFF, free=1024)
    a.alloc_block(512)
    a.release(512)
    assert (a.alloc, a.align, a.nr_free) == (0, 511, 513)


def test_batch_equals_successive_calls():
    one = VmemAltmap(base_pfn=0x10003, end_pfn=0x1FFFF, free=3000)
    many = VmemAltmap(base_pfn=0x10003, end_pfn=0x1FFFF, free=3000)
    singles = [one.alloc_block(512) for _ in range(6)]
    granted, first = many.alloc_blocks(512, 6)
    assert singles[:granted] == [first + 512 * k for k in range(granted)]
    assert singles[granted:] == [None] * (6 - granted)
    assert granted == 4 and (one.alloc, one.align) == (many.alloc, many.align)


def test_x86_section_populate_from_an_altmap_then_exhaustion_without_fallback(x86_16g):
    m = x86_16g
    section = 64 * GiB // 4096
    m.physmem.hot_add(0, section, section + 2 * 32768)  # the memory being added hosts its memmap
    altmap = VmemAltmap(base_pfn=section, end_pfn=section + 32767, free=512, journal=m.journal)
    m.populate_section_memmap(section, 32768, altmap=altmap)
    assert m.memmap_frame(section) == section
    assert m.counters()["vmemmap_leaves_2M"] == 129
    before = m.snapshot()
    with pytest.raises(OutOfMemory, match="altmap exhausted"):
        m.populate_section_memmap(section + 32768, 32768, altmap=altmap)
    assert m.snapshot() == before
    assert altmap.alloc == 512
    m.check()
