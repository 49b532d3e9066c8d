"""Which parts of a PMD-mapped vmemmap block are unused, for arches that free a PMD leaf only when
no part of it is used (x86_64 and s390).

Mirrors ``vmemmap_use_new_sub_pmd``, ``vmemmap_use_sub_pmd`` and ``vmemmap_pmd_is_unused``
(``arch/x86/mm/init_64.c``, ``arch/s390/mm/vmem.c``): the kernel fills unused struct-page bytes with
``PAGE_UNUSED`` (0xFD) and calls a leaf free when all of it is. Here the 0xFD bytes are a range map
of virtual addresses, journaled like every other state.
"""

from .rangemap import RangeMap


class SubPmdTracker:
    def __init__(self, machine):
        self.pmd_size = machine.geometry.pmd.entry_span
        self.unused = RangeMap(machine.journal)  # vmemmap byte ranges filled with PAGE_UNUSED

    def _pmd(self, addr):
        start = addr // self.pmd_size * self.pmd_size
        return start, start + self.pmd_size

    def use_new(self, start, end):
        """A new leaf serves only ``[start, end)``: the rest of its PMD is unused."""
        pmd_start, pmd_end = self._pmd(start)
        self.unused.set(pmd_start, pmd_end, True)
        self.unused.set(start, end, None)

    def use(self, start, end):
        """An existing leaf now also serves ``[start, end)``."""
        self.unused.set(start, end, None)

    def pmd_is_unused(self, start, end) -> bool:
        """Mark ``[start, end)`` unused; True (and forget the PMD) if its whole block now is."""
        self.unused.set(start, end, True)
        pmd_start, pmd_end = self._pmd(start)
        if self.unused.covered(pmd_start, pmd_end) == self.pmd_size:
            self.unused.set(pmd_start, pmd_end, None)
            return True
        return False

    def snapshot(self):
        return self.unused.items()
