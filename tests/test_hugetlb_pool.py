"""The HugeTLB pool as arrays: it reads and changes like a dict of folios, and the journal undoes
any of its changes."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from vmemcore.hugetlb_pool import BOOT, OPTIMIZED, SURPLUS, Folio, FolioPool, FreeList
from vmemcore.journal import Journal

HEADS = st.integers(0, 99).map(lambda k: k * 512)
ops = st.one_of(
    st.tuples(st.just("add"), st.lists(HEADS, unique=True, max_size=40), st.integers(0, 3), st.sampled_from([0, BOOT])),
    st.tuples(st.just("add_one"), HEADS, st.integers(0, 3)),
    st.tuples(st.just("remove"), st.lists(HEADS, unique=True, max_size=40)),
    st.tuples(st.just("flag"), st.lists(HEADS, unique=True, max_size=40), st.sampled_from([SURPLUS, OPTIMIZED]), st.booleans()),
)


def check(pool, model):
    """``model``: head -> (node, flags)."""
    assert len(pool) == len(model) and bool(pool) == bool(model)
    assert list(pool) == sorted(model) and pool.heads().tolist() == sorted(model)
    assert pool.values() == [Folio(h, 9, n, bool(f & BOOT), bool(f & SURPLUS)) for h, (n, f) in sorted(model.items())]
    for head in range(0, 100 * 512, 512):
        assert (head in pool) == (head in model)
        assert pool.get(head) == (Folio(head, 9, model[head][0], bool(model[head][1] & BOOT), bool(model[head][1] & SURPLUS))
                                  if head in model else None)
        for flag in (BOOT, SURPLUS, OPTIMIZED):
            assert pool.has(head, flag) == (head in model and bool(model[head][1] & flag))
    for flag in (BOOT, SURPLUS, OPTIMIZED):
        assert pool.count(flag) == sum(1 for _, f in model.values() if f & flag)
    heads = sorted(model)[::-1]
    assert pool.flags(heads).tolist() == [model[h][1] for h in heads]


def apply(pool, model, step):
    if step[0] == "add":
        _, heads, node, flags = step
        heads = [h for h in heads if h not in model]
        pool.add(heads, node, flags)
        model.update({h: (node, flags) for h in heads})
    elif step[0] == "add_one":
        _, head, node = step
        if head in model:
            with pytest.raises(KeyError):
                pool.add_one(head, node)
            return
        pool.add_one(head, node)
        model[head] = (node, 0)
    elif step[0] == "remove":
        heads = [h for h in step[1] if h in model]
        pool.remove(heads)
        for h in heads:
            del model[h]
    else:
        _, heads, flag, value = step
        heads = [h for h in heads if h in model]
        pool.set_flags(heads, flag, value)
        for h in heads:
            node, flags = model[h]
            model[h] = (node, flags | flag if value else flags & ~flag)


@settings(max_examples=300, deadline=None)
@given(st.lists(ops, max_size=30), st.lists(ops, max_size=30))
def test_pool_reads_and_changes_like_a_dict_and_the_journal_undoes_it(before, during):
    journal = Journal()
    pool, model = FolioPool(9, journal), {}
    for step in before:
        apply(pool, model, step)
        check(pool, model)
    saved, snapshot = dict(model), pool.snapshot()
    with pytest.raises(RuntimeError):
        with journal.transaction():
            for step in during:
                apply(pool, model, step)
                check(pool, model)
            raise RuntimeError("roll back")
    check(pool, saved)
    assert pool.snapshot() == snapshot


def test_a_pool_grown_one_folio_at_a_time_merges_into_its_arrays():
    """Folios added one by one wait in a dict only until they are an eighth of the pool."""
    pool = FolioPool(9)
    pool.add(np.arange(1000, dtype=np.int64) * 512, 0)
    for k in range(1000, 1200):
        pool.add_one(k * 512, 1)
    assert len(pool) == 1200 and len(pool._recent) <= 1000 >> 3
    assert pool[1199 * 512].node == 1 and pool[999 * 512].node == 0


def test_removed_folios_are_dropped_when_half_the_arrays_are_gone():
    pool = FolioPool(9)
    pool.add(np.arange(100, dtype=np.int64) * 512, 0)
    pool.remove(np.arange(40, dtype=np.int64) * 512)
    assert len(pool._heads) == 100 and len(pool) == 60
    pool.remove(np.arange(40, 60, dtype=np.int64) * 512)
    assert len(pool._heads) == 40 and pool._gone == 0 and list(pool)[0] == 60 * 512


def test_a_folio_added_twice_or_removed_when_absent_is_refused():
    pool = FolioPool(9)
    pool.add(np.arange(100, dtype=np.int64) * 512, 0)
    with pytest.raises(KeyError):
        pool.add(np.arange(98, 200, dtype=np.int64) * 512, 0)
    with pytest.raises(KeyError):
        pool.remove([512 * 100])
    assert len(pool) == 100


def test_free_list_is_a_stack_with_the_head_at_the_end():
    stack = FreeList()
    stack.push(np.arange(40, dtype=np.int64))
    assert len(stack) == 40 and stack.pop(3).tolist() == [39, 38, 37]
    index = stack.remove(5)
    assert stack.tolist() == [k for k in range(37) if k != 5]
    stack.insert(index, 5)
    assert stack.tolist() == list(range(37))
    stack.truncate(10)
    assert stack.tolist() == list(range(10)) and stack.pop(20).tolist() == list(range(9, -1, -1))
