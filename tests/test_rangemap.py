"""The frame-owner map's chunked sorted list against a naive model: a dict of every key's value.

Blocks of two extents (``BLOCK`` patched down) make even a few dozen extents span many blocks, so
random sequences of ``set`` cross, split, empty and rebuild blocks.
"""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmemcore import rangemap
from vmemcore.journal import Journal
from vmemcore.rangemap import RangeMap

KEYS = 64
ops = st.lists(st.tuples(st.integers(0, KEYS), st.integers(0, KEYS), st.sampled_from([None, "a", "b", "c"])),
               max_size=60)


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    monkeypatch.setattr(rangemap, "BLOCK", 2)


def runs(model):
    """The model's maximal runs of equal values: the extents a merged map must hold."""
    out = []
    for key in sorted(model):
        if out and out[-1][1] == key and out[-1][2] == model[key]:
            out[-1] = (out[-1][0], key + 1, model[key])
        else:
            out.append((key, key + 1, model[key]))
    return out


def assert_matches(m, model):
    extents = runs(model)
    assert m.items() == extents
    assert len(m) == len(extents)
    assert list(m.items_reversed()) == extents[::-1]
    assert list(m.items_reversed("a")) == [e for e in extents[::-1] if e[2] == "a"]
    totals = {}
    for value in model.values():
        totals[value] = totals.get(value, 0) + 1
    assert m.totals == totals
    for key in range(KEYS + 1):
        assert m.get(key) == model.get(key)
        found = m.extent(key)
        assert found == next(((s, e, v) for s, e, v in extents if s <= key < e), None)
    for start in range(0, KEYS, 7):
        for end in range(start, KEYS + 1, 5):
            clipped = [(max(s, start), min(e, end), v) for s, e, v in extents if max(s, start) < min(e, end)]
            assert m.items(start, end) == clipped
            assert m.covered(start, end) == sum(1 for k in range(start, end) if k in model)


@settings(max_examples=150, deadline=None)
@given(ops)
def test_set_get_and_iteration_agree_with_a_dict_of_keys(sequence):
    m, model = RangeMap(), {}
    for a, b, value in sequence:
        start, end = min(a, b), max(a, b)
        m.set(start, end, value)
        for key in range(start, end):
            if value is None:
                model.pop(key, None)
            else:
                model[key] = value
    assert_matches(m, model)


@settings(max_examples=100, deadline=None)
@given(ops, ops)
def test_an_undone_transaction_leaves_the_map_as_it_was(before, during):
    journal = Journal()
    m, model = RangeMap(journal), {}
    for a, b, value in before:
        m.set(min(a, b), max(a, b), value)
        for key in range(min(a, b), max(a, b)):
            model.pop(key, None) if value is None else model.__setitem__(key, value)
    with pytest.raises(ZeroDivisionError), journal.transaction():
        for a, b, value in during:
            m.set(min(a, b), max(a, b), value)
        1 / 0
    assert_matches(m, model)


def test_items_reversed_steps_past_changes_made_behind_it():
    # an allocator walks free extents from the top and carves each as it goes: every extent
    # below the one being carved must still come, once
    m = RangeMap()
    for k in range(10):
        m.set(10 * k, 10 * k + 5, "free")
    seen = []
    for start, end, _ in m.items_reversed("free"):
        seen.append(start)
        m.set(start + 2, end, None)  # take the top three keys of the extent
    assert seen == list(range(90, -1, -10))
    assert m.covered(0, 100) == 10 * 2


@settings(max_examples=150, deadline=None)
@given(ops, st.lists(st.tuples(st.integers(1, 5), st.integers(0, 5), st.sampled_from(["a", "b", "c"])), max_size=12))
def test_set_many_equals_set_run_by_run(before, runs):
    """Runs set as one change (what lies between them kept) leave the map as one set per run."""
    many, one, pos, spans = RangeMap(Journal()), RangeMap(), 0, []
    for a, b, value in before:
        for m in (many, one):
            m.set(min(a, b), max(a, b), value)
    for length, gap, value in runs:  # sorted, disjoint, some touching
        spans.append((pos + gap, pos + gap + length, value))
        pos += gap + length
    with many.journal.transaction():
        many.set_many(spans)
    for span in spans:
        one.set(*span)
    assert many.items() == one.items() and many.totals == one.totals
    undone = RangeMap(Journal())
    for a, b, value in before:
        undone.set(min(a, b), max(a, b), value)
    expected = undone.items()
    with pytest.raises(ZeroDivisionError), undone.journal.transaction():
        undone.set_many(spans)
        1 / 0
    assert undone.items() == expected
