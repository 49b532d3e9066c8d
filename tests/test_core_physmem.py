"""Physical memory: owners add up, and bulk allocation equals one call per block."""

import random

import pytest

from vmemcore.physmem import PhysMem, Use


def _machine(seed):
    rng = random.Random(seed)
    p = PhysMem(12, 1 << 30)
    p.add_range(0, 0, 5000)
    p.add_range(1, 5000, 9000)
    p.end_boot()
    for _ in range(30):
        p.alloc(rng.choice([1, 4, 16]), rng.choice([0, 1]), Use.MEMMAP)
    return p


@pytest.mark.parametrize("seed", range(60))
def test_alloc_pages_equals_successive_allocs(seed):
    rng = random.Random(1000 + seed)
    order, node, exact = rng.choice([0, 1, 3, 5]), rng.choice([0, 1]), rng.choice([True, False])
    count, nth = rng.randint(1, 400), rng.choice([None, rng.randint(1, 400)])
    one = _machine(seed)
    one.faults.arm(nth=nth)
    singles = []
    for _ in range(count):
        pfn = one.alloc(1 << order, node, Use.HUGETLB, exact_nid=exact)
        if pfn is None:
            break
        singles.append(pfn)
    bulk = _machine(seed)
    bulk.faults.arm(nth=nth)
    assert bulk.alloc_pages(count, node, Use.HUGETLB, order=order, exact_nid=exact) == singles
    assert bulk.snapshot() == one.snapshot()
    assert bulk.faults.attempts == one.faults.attempts
    bulk.check()



@pytest.mark.parametrize("seed", range(30))
def test_a_bulk_allocation_shows_fault_injection_the_attempts_successive_calls_make(seed):
    """Up to the first failure, injected or memory run out, and no attempt past it: a sweep asked
    for far more than memory holds costs what memory holds, not what was asked."""
    rng = random.Random(2000 + seed)
    order, node = rng.choice([0, 3, 5]), rng.choice([0, 1])
    fail_at = rng.choice([None, rng.randint(1, 600)])
    seen = {"one": [], "bulk": []}

    def predicate(name):
        return lambda request: seen[name].append(request.index) or request.index == fail_at

    one = _machine(seed)
    one.faults.arm(predicate=predicate("one"))
    while one.alloc(1 << order, node, Use.HUGETLB) is not None:
        pass
    bulk = _machine(seed)
    bulk.faults.arm(predicate=predicate("bulk"))
    bulk.alloc_pages(10**9, node, Use.HUGETLB, order=order)
    assert seen["bulk"] == seen["one"]
    assert bulk.snapshot() == one.snapshot()
    assert (bulk.faults.attempts, bulk.faults.failed) == (one.faults.attempts, one.faults.failed)

def test_buddy_blocks_are_naturally_aligned_and_split_from_the_list_head():
    p = PhysMem(12, 1 << 30)
    p.add_range(0, 0, 4096)
    p.end_boot()
    # memblock_free_all (5.10+) puts the four order-10 blocks at the tail, lowest first: the head is
    # pfn 0. An order-2 request splits it (expand keeps the lower half, the upper halves 512, 256,
    # ..., 4 go to the order 9..2 lists), so it gets pfn 0
    assert p.alloc(3, 0, Use.PAGETABLE) == 0  # order 2 block
    assert p.alloc(512, 0, Use.HUGETLB) == 512  # the order-9 list's head: the upper half expand left
    assert p.free_pages() == 4096 - 4 - 512
    p.check()


def test_memblock_can_fall_back_to_another_node_unless_exact():
    p = PhysMem(12, 1 << 30)
    p.add_range(0, 0, 100)
    p.add_range(1, 100, 1000)
    assert p.alloc(200, 0, Use.MEMMAP, exact_nid=True) is None
    assert p.alloc(200, 0, Use.MEMMAP) == 800
    p.check()
