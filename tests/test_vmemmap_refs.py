"""References on vmemmap frames shared by several PTEs (device-dax dedup): ``VmemmapRefs``."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from vmemcore.journal import Journal
from vmemcore.populate import VmemmapRefs

ref_ops = st.one_of(
    st.tuples(st.just("get"), st.lists(st.integers(0, 40), min_size=1, max_size=12)),
    st.tuples(st.just("put"), st.integers(0, 40)),
    st.tuples(st.just("tables"), st.lists(st.lists(st.integers(0, 40), min_size=1, max_size=6), min_size=1, max_size=3)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(ref_ops, max_size=30), st.lists(ref_ops, max_size=10))
def test_vmemmap_refs_count_like_a_dict_and_roll_back(steps, undone):
    """Extra references (refcount - 1) as a dict model counts them: get_page per entry,
    put_page_testzero per put, tables cleared in turn freeing each frame with the table of its
    last entry; and a failed transaction leaves them as they were."""
    refs, extra = VmemmapRefs(Journal()), {}

    def run(step):
        if step[0] == "get":
            for frame in step[1]:
                extra[frame] = extra.get(frame, 0) + 1
            refs.get(np.array(step[1], dtype=np.int64))
        elif step[0] == "put":
            held = extra.get(step[1], 0) > 0
            assert refs.put(step[1]) == held
            if held:
                extra[step[1]] -= 1
        else:
            entries = [f for table in step[1] for f in table]
            last = {f: k for k, table in enumerate(step[1]) for f in table}
            freed = [[] for _ in step[1]]
            for frame in sorted(set(entries)):
                count, held = entries.count(frame), extra.get(frame, 0)
                extra[frame] = max(held - count, 0)
                if count > held:
                    freed[last[frame]].append(frame)
            assert [t.tolist() for t in refs.put_tables([np.array(t, dtype=np.int64) for t in step[1]])] == freed
        assert refs.extra == {f: v for f, v in extra.items() if v}

    for step in steps:
        run(step)
    before = refs.extra
    with pytest.raises(ZeroDivisionError), refs.journal.transaction():
        for step in undone:
            run(step)
        1 / 0
    assert refs.extra == before
