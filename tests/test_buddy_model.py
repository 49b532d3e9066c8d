"""The run-based free lists (vmemcore/buddy.py) against a plain model of ``mm/page_alloc.c``'s:
one Python list of blocks per order, head first, changed one block at a time.

The model follows the kernel's rules directly: ``__free_one_page`` merges a freed block with its
free buddy while it can (up to ``MAX_PAGE_ORDER``), then puts it at the head of its list, or at the
tail for ``FPI_TO_TAIL`` or when ``buddy_merge_likely`` finds the buddy one order up free;
``__rmqueue_smallest`` takes the head of the smallest order's list that has a block and ``expand``
puts the upper halves at the heads of the lower lists. Random sequences of batched frees, batched
allocations and isolations must leave the same blocks in the same list order, and hand out the
same pages in the same order, as the model does one block at a time.
"""

from hypothesis import given, settings, strategies as st

from vmemcore.buddy import FreeLists
from vmemcore.physmem import NORMAL

TOP = 4  # MAX_PAGE_ORDER of the model: small, so that merges up to it happen often
PAGES = 8 << TOP  # eight maximal blocks


class Model:
    def __init__(self):
        self.lists = {order: [] for order in range(TOP + 1)}

    def free(self, pfn, order, to_tail):
        while order < TOP and pfn ^ (1 << order) in self.lists[order]:
            self.lists[order].remove(pfn ^ (1 << order))
            pfn &= ~(1 << order)
            order += 1
        if not to_tail and order < TOP - 1:
            to_tail = (pfn & ~(1 << order)) ^ (1 << (order + 1)) in self.lists[order + 1]
        if to_tail:
            self.lists[order].append(pfn)
        else:
            self.lists[order].insert(0, pfn)

    def free_range(self, start, end, to_tail=False):
        pfn = start
        while pfn < end:
            order = min(TOP, (pfn & -pfn).bit_length() - 1 if pfn else TOP)
            while pfn + (1 << order) > end:
                order -= 1
            self.free(pfn, order, to_tail)
            pfn += 1 << order

    def alloc(self, order):
        k = next((k for k in range(order, TOP + 1) if self.lists[k]), None)
        if k is None:
            return None
        pfn = self.lists[k].pop(0)
        while k > order:
            k -= 1
            self.lists[k].insert(0, pfn + (1 << k))
        return pfn

    def take(self, start, end):
        while True:
            found = sorted((pfn, order) for order, blocks in self.lists.items() for pfn in blocks
                           if pfn < end and pfn + (1 << order) > start)
            if not found:
                return
            pfn, order = found[0]
            self.lists[order].remove(pfn)
            if pfn < start:
                self.free_range(pfn, start)
            if end < pfn + (1 << order):
                self.free_range(end, pfn + (1 << order))


def _same(lists, model):
    for order in range(TOP + 1):
        assert lists.free_list(0, NORMAL, order) == model.lists[order], f"order {order}"
    lists.check(sum(len(blocks) << order for order, blocks in model.lists.items()))


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.data())
def test_batched_free_lists_match_the_one_block_at_a_time_model(data):
    lists, model = FreeLists(max_order=TOP), Model()
    to_tail = data.draw(st.booleans(), label="boot memory to the tail")
    lists.free_range(0, PAGES, 0, NORMAL, to_tail)
    model.free_range(0, PAGES, to_tail)
    held = []  # (pfn, order) of the blocks allocated and not freed
    for _ in range(data.draw(st.integers(1, 12), label="steps")):
        step = data.draw(st.sampled_from(["alloc", "free", "take"]))
        if step == "alloc":
            order = data.draw(st.integers(0, TOP), label="order")
            count = data.draw(st.integers(1, 40), label="count")
            got = lists.alloc_many(count, order, 0, NORMAL).tolist()
            expected = []
            for _ in range(count):
                pfn = model.alloc(order)
                if pfn is None:
                    break
                expected.append(pfn)
            assert got == expected
            held.extend((pfn, order) for pfn in got)
        elif step == "free" and held:
            freed = data.draw(st.lists(st.sampled_from(held), unique=True, min_size=1), label="freed")
            tail = data.draw(st.booleans(), label="to the tail")
            lists.free_ranges([(pfn, pfn + (1 << order)) for pfn, order in freed], 0, NORMAL, tail)
            for pfn, order in freed:
                model.free(pfn, order, tail)
                held.remove((pfn, order))
        elif step == "take":
            start = data.draw(st.integers(0, PAGES - 1), label="start")
            end = data.draw(st.integers(start + 1, min(PAGES, start + 40)), label="end")
            lists.take(start, end)
            model.take(start, end)
            held = [(pfn, order) for pfn, order in held if pfn + (1 << order) <= start or pfn >= end]
            held.extend((pfn, 0) for pfn in range(start, end) if lists.order_of(pfn) is None
                        and not any(p <= pfn < p + (1 << o) for p, o in held))
        _same(lists, model)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.data())
def test_freeing_blocks_one_order_below_the_top_pairs_them_as_the_model(data):
    """Frees of many blocks of order ``MAX_PAGE_ORDER - 1`` (2 MiB HugeTLB folios on x86_64) are
    paired with numpy (``FreeLists._free_pairs``): the same lists as the model's frees one by one,
    whether a buddy is freed earlier in the call, later, or was free before it."""
    import numpy as np

    import vmemcore.buddy as buddy

    order, blocks = TOP - 1, 2 * PAGES >> (TOP - 1)
    lists, model = FreeLists(max_order=TOP), Model()
    lists.free_range(0, 2 * PAGES, 0, NORMAL)
    model.free_range(0, 2 * PAGES)
    assert lists.alloc_many(blocks, order, 0, NORMAL).tolist() == [model.alloc(order) for _ in range(blocks)]
    held = [k << order for k in range(blocks)]
    before = data.draw(st.lists(st.sampled_from(held), unique=True, max_size=blocks // 2), label="freed before")
    tail = data.draw(st.booleans(), label="to the tail")
    for pfn in before:  # one at a time: never the paired path
        lists.free_range(pfn, pfn + (1 << order), 0, NORMAL, tail)
        model.free(pfn, order, tail)
    rest = [pfn for pfn in held if pfn not in before]
    freed = data.draw(st.permutations(rest), label="freed in one call")
    original = buddy.PAIRS
    buddy.PAIRS = 1
    try:
        lists.free_blocks(np.array(freed, dtype=np.int64), 1 << order, 0, NORMAL, tail)
    finally:
        buddy.PAIRS = original
    for pfn in freed:
        model.free(pfn, order, tail)
    _same(lists, model)
