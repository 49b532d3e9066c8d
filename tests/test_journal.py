"""The undo journal: state saved whole at its first change in a transaction (the counters)."""

import pytest

from vmemcore.journal import Journal
from vmemcore.stats import Counters


def _changes(journal, counters):
    for _ in range(100):
        counters.add("a", 1)
        counters.add("b", 2)
    assert len(journal._records) == 1  # one record for 200 changes


def test_counters_are_saved_once_a_transaction_and_restored_whole():
    journal = Journal()
    counters = Counters(journal)
    counters.add("a", 3)
    with pytest.raises(ZeroDivisionError), journal.transaction():
        _changes(journal, counters)
        1 / 0
    assert (counters["a"], counters["b"], "b" in counters.as_dict()) == (3, 0, False)
    with journal.transaction():  # a new transaction saves again
        _changes(journal, counters)
    assert (counters["a"], counters["b"]) == (103, 200)
    counters.add("a", 1)  # outside a transaction: nothing recorded
    assert counters["a"] == 104 and not journal.active
