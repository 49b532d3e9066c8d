"""Undo journal: what makes every machine operation transactional.

Each piece of mutable state records how to undo a change while a transaction is open, right
after making the change: a record always undoes state that exists, so an exception anywhere (a
MemoryError included) leaves nothing half-undone. A failed operation replays the records
backwards, leaving the machine exactly as before, at a cost that grows with the entries changed,
never with the machine's size. This is the order of the kernel's own rollback paths, which undo
only the steps that completed (e.g. ``vmemmap_remap_free``'s restore of the PTEs it changed).

Python's cyclic garbage collector is paused while a transaction is open: an operation makes up to
millions of long-lived objects (records, descriptors, folios) and no garbage cycles, and each full
collection would scan them all for nothing (15 of them, a quarter of a 1 TiB HugeTLB grow's time).
"""

import gc
from contextlib import contextmanager


class Journal:
    def __init__(self):
        self._records = None  # None: no transaction open, nothing recorded
        self._saved = {}  # id -> owner whose state the transaction saved whole (kept: ids stay unique)

    @property
    def active(self) -> bool:
        return self._records is not None

    def record(self, undo, *args):
        """Remember ``undo(*args)``, called right after the change it undoes, if a transaction is
        open; if it cannot be remembered, the change is undone at once. (Passing the arguments
        rather than a closure over them keeps a record to a tuple: the hot paths make millions.)"""
        if self._records is not None:
            try:
                self._records.append((undo, args))
            except BaseException:
                undo(*args)
                raise

    def first_change(self, owner) -> bool:
        """True the first time ``owner`` asks in a transaction: it then records one undo that
        restores its whole state as it was (small state changed many times, such as counters:
        one record instead of one per change). False outside a transaction."""
        if self._records is None or id(owner) in self._saved:
            return False
        self._saved[id(owner)] = owner
        return True

    @contextmanager
    def transaction(self):
        """Run a block all-or-nothing; nested transactions join the outer one."""
        if self._records is not None:
            yield
            return
        self._records = []
        collecting = gc.isenabled()
        gc.disable()  # see the module's docstring
        try:
            yield
        except BaseException:
            records, self._records = self._records, None
            for undo, args in reversed(records):
                undo(*args)
            raise
        finally:
            self._saved = {}
            if collecting:
                gc.enable()
        self._records = None
