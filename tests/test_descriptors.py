"""The struct-page descriptor store: its two tiers read and change exactly like one dict."""

import numpy as np
from hypothesis import given, settings, strategies as st

from vmemcore.descriptors import CopyOf, Descriptors, SharedTail

FRAMES = st.integers(0, 63)
ops = st.one_of(
    st.tuples(st.just("set"), FRAMES, st.sampled_from([CopyOf(7, ((0, "x"),)), SharedTail(9), CopyOf(5)])),
    st.tuples(st.just("pop"), FRAMES),
    st.tuples(st.just("plain"), st.lists(FRAMES, unique=True, max_size=20), st.integers(0, 1000)),
    st.tuples(st.just("take"), st.lists(FRAMES, unique=True, max_size=30), st.booleans()),
)


def check(store, model):
    assert len(store) == len(model) and bool(store) == bool(model)
    assert dict(store.items()) == model
    assert sorted(store.frames().tolist()) == sorted(model)
    probe = np.arange(64, dtype=np.int64)
    assert store.get_many(probe) == [model.get(f) for f in range(64)]
    assert store.holds(probe).tolist() == [f in model for f in range(64)]
    for frame in range(64):
        assert (frame in store) == (frame in model) and store.get(frame) == model.get(frame)
    plain = store.plain_firsts(probe)
    for frame in range(64):  # a plain copy in the array tier reads back its first pfn
        assert plain[frame] == -1 or model[frame] == CopyOf(int(plain[frame]))


@settings(max_examples=300, deadline=None)
@given(st.lists(ops, max_size=40))
def test_store_reads_and_changes_like_a_dict(steps):
    store, model, undo = Descriptors(), {}, []
    for step in steps:
        if step[0] == "set":
            _, frame, descriptor = step
            store[frame] = descriptor
            model[frame] = descriptor
        elif step[0] == "pop":
            assert store.pop(step[1]) == model.pop(step[1], None)
        elif step[0] == "plain":  # add_plain takes frames holding nothing: take them first
            _, frames, base = step
            frames = np.array(frames, dtype=np.int64)
            before = dict(model)
            taken = store.take_many(frames)
            store.add_plain(frames, frames + base)
            model.update({f: CopyOf(f + base) for f in frames.tolist()})
            undo.append((frames, taken, before))
        else:
            _, frames, ordered = step
            frames = np.array(sorted(frames) if ordered else frames, dtype=np.int64)
            taken = store.take_many(frames, ordered)
            assert dict(taken[0]) | {f: CopyOf(p) for fs, ps in taken[1] for f, p in zip(fs.tolist(), ps.tolist())} \
                == {f: model[f] for f in frames.tolist() if f in model}
            for f in frames.tolist():
                model.pop(f, None)
        check(store, model)
    for frames, taken, before in reversed(undo[-3:]):  # the last plain additions, undone as the journal does
        store.take_many(frames)
        store.put_back(taken)
        for f in frames.tolist():
            if f in before:
                model[f] = before[f]
            else:
                model.pop(f, None)
    check(store, model)


def test_blocks_merge_as_they_grow():
    """Many batches of plain copies end in a few blocks (each about twice the next)."""
    store = Descriptors()
    for k in range(1000):
        frames = np.arange(k * 8, k * 8 + 8, dtype=np.int64)[::-1]
        store.add_plain(frames, frames * 2)
    assert len(store) == 8000 and len(store._blocks) <= 11
    assert store.get(7999) == CopyOf(15998) and store.plain_firsts(np.array([4, 8001])).tolist() == [8, -1]

