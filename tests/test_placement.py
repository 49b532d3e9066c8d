"""Allocation placement as the kernel's free lists give it (vmemcore/buddy.py, mm/page_alloc.c).

Each expected frame is derived from the kernel's rules in a comment: ``memblock_free_all`` frees
every free memblock range lowest first in the largest aligned blocks (at most ``MAX_PAGE_ORDER``),
at the tail since 5.10 (``FPI_TO_TAIL``); ``__rmqueue_smallest`` takes the head of the smallest
order's list that has a block, and ``expand`` puts the upper halves at the heads of the lower lists;
``__free_one_page`` merges with free buddies and puts the result at the head.
"""

import pytest

from vmemcore.buddy import FreeLists
from vmemcore.errors import BadRequest
from vmemcore.machine import Machine
from vmemcore.physmem import NORMAL, PhysMem, Use
from vmemcore.units import GiB

BLOCK = 128 << 20  # x86_64's memory block size with 16 GiB of boot memory
PMD_ORDER = 9  # a 2 MiB block of 4 KiB pages: the memmap of one 128 MiB block (32768 * 64 bytes)


def test_expand_returns_upper_halves_and_merges_on_free():
    lists = FreeLists(max_order=10)
    lists.free_range(0, 1024, 0, NORMAL, to_tail=True)
    # one order-10 block; an order-0 request splits it: expand keeps pfn 0 and puts 512, 256, ...,
    # 1 at the heads of the order 9..0 lists
    assert lists.alloc(0, 0, NORMAL) == 0
    assert [lists.order_of(pfn) for pfn in (1, 2, 4, 512)] == [0, 1, 2, 9]
    # the next order-0 request takes the order-0 head (pfn 1), then order 1 is split: 2, and 3 is left
    assert lists.alloc(0, 0, NORMAL) == 1
    assert lists.alloc(0, 0, NORMAL) == 2
    assert lists.free_list(0, NORMAL, 0) == [3]
    # freeing pfn 2 merges with its free buddy 3 (order 1 at 2); 0 and 1 are still allocated
    lists.free_range(2, 3, 0, NORMAL)
    assert lists.order_of(2) == 1 and lists.free_list(0, NORMAL, 0) == []
    lists.free_range(1, 2, 0, NORMAL)
    lists.free_range(0, 1, 0, NORMAL)
    # 0 merges with 1, then with 2 (order 1), 4, ... up to the whole order-10 block again
    assert lists.free_list(0, NORMAL, 10) == [0]
    lists.check(1024)


def test_freed_blocks_go_to_the_head_and_are_reused_first():
    lists = FreeLists(max_order=10)
    lists.free_range(0, 4096, 0, NORMAL, to_tail=True)
    # the four order-10 blocks are on the list lowest first
    got = [lists.alloc(10, 0, NORMAL) for _ in range(4)]
    assert got == [0, 1024, 2048, 3072]
    lists.free_range(2048, 3072, 0, NORMAL)
    lists.free_range(1024, 2048, 0, NORMAL)
    # freed at the head: the last one freed is handed out first
    assert [lists.alloc(10, 0, NORMAL) for _ in range(2)] == [1024, 2048]


def test_buddy_merge_likely_puts_a_block_at_the_tail():
    lists = FreeLists(max_order=10)
    lists.free_range(0, 2048, 0, NORMAL, to_tail=True)
    # two order-10 blocks, each split into four order-8 blocks lowest first
    assert [lists.alloc(8, 0, NORMAL) for _ in range(8)] == list(range(0, 2048, 256))
    lists.free_range(1536, 1792, 0, NORMAL)  # buddy 1792 in use; the order-9 block 1024 in use: head
    lists.free_range(512, 768, 0, NORMAL)  # buddy 768 in use; the order-9 block 0 in use: head
    assert lists.free_list(0, NORMAL, 8) == [512, 1536]
    lists.free_range(768, 1024, 0, NORMAL)  # merges with 512: the order-9 block 512
    # 256's buddy 0 is in use, but buddy_merge_likely finds the buddy of the order-9 block holding
    # them (0 ^ 512 = 512) free at order 9: 256 goes to the tail, behind 1536
    lists.free_range(256, 512, 0, NORMAL)
    assert lists.free_list(0, NORMAL, 8) == [1536, 256]
    lists.check(2048 - 4 * 256)


def _hot_add_three(kernel):
    m = Machine("x86_64", kernel=kernel)
    assert m.hotplug.block_size == BLOCK
    memmaps = []
    for i in range(3):
        start = 16 * GiB + i * BLOCK
        (block,) = m.hotplug.add_memory(start, BLOCK).blocks
        m.hotplug.online(block)
        memmaps.append(m.memmap_frame(start >> 12))
    return m, memmaps


def test_hot_added_memmap_comes_from_boot_memory_so_blocks_go_oldest_first():
    m, memmaps = _hot_add_three("6.12")
    # boot memory [0, 0x3efffe) (the memmap and page tables memblock took lie above it) was freed
    # at the tail: order-10 blocks from pfn 0 up, then the leftover blocks of orders 9..1 at the top
    # of the range (0x3efc00 is the order-9 one). Each block's memmap is one order-9 block:
    # block 0 takes the order-9 list's head, 0x3efc00; block 1 splits the order-10 head (pfn 0,
    # expand keeps the lower half); block 2 takes the upper half expand left on the order-9 list,
    # 0x200. The onlined blocks went to the tails, behind all boot memory.
    assert memmaps == [0x3EFC00, 0x0, 0x200]
    for i in range(3):  # oldest first, as since 5.10
        start = 16 * GiB + i * BLOCK
        m.hotplug.offline(start // BLOCK)
        m.hotplug.remove_memory(start, BLOCK)
    m.check()


def test_before_5_10_hot_added_memmap_lands_in_hot_added_memory():
    # the profiles before 5.10 model the 2019 memmap-from-range design; the free lists alone show
    # the old placement: boot memory and onlined memory freed at the heads
    p = PhysMem(12, 1 << 24, max_order=10, free_core_to_tail=False)
    p.add_range(0, 0, 4096)
    p.end_boot()
    # order-10 blocks freed lowest first at the head: the head is the highest, 3072
    assert p.alloc(512, 0, Use.MEMMAP) == 3072
    blocks = [0x8000 + i * 0x8000 for i in range(3)]  # three 128 MiB blocks above boot memory
    memmaps = []
    for start in blocks:
        p.hot_add(0, start, start + 0x8000)
        memmaps.append(p.alloc(512, 0, Use.MEMMAP))  # the memmap, allocated before onlining
        p.online(start, start + 0x8000, NORMAL)
    # block 0's memmap: the order-9 list's head, the upper half 3584 of the block split before;
    # block 1's: block 0 was onlined at the heads, lowest first, so the order-10 head is its highest
    # block 0xfc00, split: the lower half; block 2's: the upper half 0xfe00 expand left
    assert memmaps == [3584, 0xFC00, 0xFE00]
    p.offline(blocks[2], blocks[2] + 0x8000)  # newest first works...
    with pytest.raises(BadRequest):
        p.offline(blocks[0], blocks[0] + 0x8000)  # ...oldest first does not: it holds the others' memmap
    p.check()


@pytest.mark.parametrize("kernel", ["6.6", "6.12"])
def test_hugetlb_pages_allocated_after_a_shrink_land_on_the_frames_just_freed(kernel):
    m = Machine("x86_64", kernel=kernel)
    m.hugetlb.resize("2M", 4)
    h = m.hugetlb.hstate("2M")
    # allocated in this order: the order-9 list's head 0x3efc00, then pfn 0 (split from the
    # order-10 head), the upper half 0x200 expand left, then the next order-10 block 0x400 split
    # (0x600 left on the order-9 list)
    assert sorted(h.folios) == [0x0, 0x200, 0x400, 0x3EFC00]
    m.hugetlb.resize("2M", 2)
    # the pool's free list gives its head first; set_max_huge_pages list_add()s each folio removed
    # to its page_list, which is freed in list order: the second removed first
    if kernel == "6.6":
        # each fresh folio went to the head as it came: 0x400 and then 0x200 are removed. 0x200's
        # buddy 0 is in use: head of order 9. 0x400 merges with its free buddy 0x600 into the
        # order-10 block 0x400, at the head of order 10.
        assert sorted(h.folios) == [0x0, 0x3EFC00]
        assert m.physmem.buddy.free_list(0, NORMAL, 9)[0] == 0x200
    else:
        # 6.7+ (d67e32f26713) enqueues the fresh list newest first: the oldest, 0x3efc00 and then
        # 0, are at the head and removed. 0 (buddy 0x200 in use) and then 0x3efc00 (buddy 0x3efe00
        # not free) go to the head of order 9.
        assert sorted(h.folios) == [0x200, 0x400]
        assert m.physmem.buddy.free_list(0, NORMAL, 9)[:2] == [0x3EFC00, 0x0]
    m.hugetlb.resize("2M", 4)
    # the frames just freed: 6.6 the order-9 head 0x200, then the order-10 head 0x400 split;
    # 6.12 the order-9 head 0x3efc00, then 0
    assert sorted(h.folios) == [0x0, 0x200, 0x400, 0x3EFC00]
    m.check()


def test_a_failed_operation_restores_the_free_lists():
    m = Machine("x86_64")
    m.hugetlb.resize("2M", 4)
    m.hugetlb.resize("2M", 2)  # free lists with split runs, merged blocks and single blocks
    before, lists = m.snapshot(), m.physmem.buddy.lists()
    with pytest.raises(RuntimeError):
        with m.transaction():
            m.hugetlb.resize("2M", 6)
            m.hugetlb.resize("2M", 1)
            raise RuntimeError("abort")
    assert m.snapshot() == before
    assert m.physmem.buddy.lists() == lists  # the journal restores the lists' order too
    m.check()


def test_release_many_frees_in_the_order_given_as_one_release_per_block_does():
    """HugeTLB frees a pool's folios with ``release_many``: the frame and free maps are updated a
    run at a time, the free lists block by block in the order given. The lists' order shows in
    what later allocations get, so both machines must hand out the same pages in the same order."""
    machines = [Machine("x86_64", memory=[{"size": 4 * GiB}]) for _ in range(2)]
    for m in machines:
        got = m.physmem.alloc_pages(6, 0, Use.PINNED, order=9)
        # an order with adjacent and separate blocks, not sorted: merging must not reorder the lists
        blocks = [(got[i], 512) for i in (3, 0, 1, 5, 2)]
    machines[0].physmem.release_many(blocks)
    for block in blocks:
        machines[1].physmem.release(*block)
    assert machines[0].snapshot() == machines[1].snapshot()
    after = [m.physmem.alloc_pages(len(blocks), 0, Use.PINNED, order=9) for m in machines]
    assert after[0] == after[1] and sorted(after[0]) == sorted(pfn for pfn, _ in blocks)
    for m in machines:
        m.check()


@pytest.mark.parametrize("nodes", [1, 2])
def test_release_blocks_frees_as_release_many_does(nodes, monkeypatch):
    """A pool's folios freed as an array (``release_blocks``; order-9 blocks are paired with numpy
    on x86_64) leave the machine and the free lists' order as ``release_many`` of the same blocks;
    across two nodes the lists take each node's blocks in turn."""
    import numpy as np

    import vmemcore.buddy as buddy
    import vmemcore.physmem as physmem

    monkeypatch.setattr(buddy, "PAIRS", 4)
    monkeypatch.setattr(physmem, "FEW_BLOCKS", 4)
    memory = [{"size": 4 * GiB}] + ([{"node": 1, "size": 4 * GiB}] if nodes == 2 else [])
    machines = [Machine("x86_64", memory=memory) for _ in range(2)]
    for m in machines:
        got = [pfn for node in range(nodes) for pfn in m.physmem.alloc_pages(8, node, Use.PINNED, order=9, exact_nid=True)]
        order = [3, 0, 1, 7, 5, 2, 6] + ([11, 8, 15, 9] if nodes == 2 else [])
        blocks = [got[i] for i in order]  # some buddies freed before their pair, some after, one never
    machines[0].physmem.release_blocks(np.array(blocks, dtype=np.int64), 512)
    machines[1].physmem.release_many([(pfn, 512) for pfn in blocks])
    assert machines[0].snapshot() == machines[1].snapshot()
    assert machines[0].physmem.buddy.lists() == machines[1].physmem.buddy.lists()
    for m in machines:
        m.check()
