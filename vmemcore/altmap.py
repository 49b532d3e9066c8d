"""The altmap: memmap carved from the memory being added (``struct vmem_altmap``).

Mirrors ``altmap_alloc_block_buf``, ``vmem_altmap_next_pfn``, ``vmem_altmap_nr_free``,
``vmem_altmap_offset`` and ``vmem_altmap_free`` (``mm/sparse-vmemmap.c``, ``include/linux/memremap.h``).
"""

import attrs

from .errors import BadRequest


@attrs.define
class VmemAltmap:
    """``base_pfn``..``end_pfn`` (inclusive, as the kernel keeps it); ``reserve`` pfns for the driver,
    ``free`` pfns set aside for memmap, ``align`` pfns wasted to alignment, ``alloc`` pfns handed out.
    ``device``: the pfns are device memory (a ZONE_DEVICE pagemap's), not System RAM, so physical
    memory never sees them and the altmap alone tracks its frames."""

    base_pfn: int
    end_pfn: int
    reserve: int = 0
    free: int = 0
    align: int = 0
    alloc: int = 0
    journal: object = attrs.field(default=None, repr=False, eq=False)
    device: bool = attrs.field(default=False, kw_only=True)

    def __attrs_post_init__(self):
        if min(self.base_pfn, self.reserve, self.free) < 0 or self.end_pfn < self.base_pfn:
            raise BadRequest(f"invalid altmap {self!r}")

    @property
    def next_pfn(self) -> int:
        return self.base_pfn + self.reserve + self.alloc + self.align

    @property
    def nr_free(self) -> int:
        return max(self.free - (self.alloc + self.align), 0)

    @property
    def offset(self) -> int:
        """``vmem_altmap_offset``: pfns from ``base_pfn`` to where usable memory starts."""
        return self.reserve + self.free

    def _set(self, alloc, align):
        old = (self.alloc, self.align)
        self.alloc, self.align = alloc, align
        if self.journal is not None and self.journal.active:
            self.journal.record(lambda: self._restore(*old))

    def _restore(self, alloc, align):
        self.alloc, self.align = alloc, align

    def alloc_block(self, nr_pfns):
        """First pfn of ``nr_pfns`` pfns aligned to the lowest set bit of ``nr_pfns``, or None."""
        granted, pfn = self.alloc_blocks(nr_pfns, 1)
        return pfn if granted else None

    def alloc_blocks(self, nr_pfns, count):
        """``count`` successive ``altmap_alloc_block_buf`` calls of ``nr_pfns`` each, as arithmetic.

        Returns ``(granted, first_pfn)``: blocks after the first need no padding (they stay aligned),
        so the granted blocks are contiguous from ``first_pfn``; ``granted < count`` means the next
        call failed.
        """
        if nr_pfns <= 0:
            raise BadRequest("altmap allocation of no pages")
        if count == 0:
            return 0, None
        pfn = self.next_pfn
        boundary = nr_pfns & -nr_pfns
        pad = -pfn % boundary
        room = self.nr_free
        if nr_pfns + pad > room:
            return 0, None
        granted = min(count, 1 + (room - nr_pfns - pad) // nr_pfns)
        self._set(self.alloc + granted * nr_pfns, self.align + pad)
        return granted, pfn + pad

    def release(self, nr_pfns):
        """``vmem_altmap_free``: only ``alloc`` goes down; ``align`` is never given back."""
        self._set(self.alloc - nr_pfns, self.align)

    def holds(self, pfn) -> bool:
        """Does ``pfn`` lie in the memmap part of the altmap (``[base, base + reserve + free)``)?"""
        return self.base_pfn <= pfn < self.base_pfn + self.reserve + self.free

    def holds_many(self, pfns):
        """:meth:`holds` of each pfn of the array ``pfns``, as a boolean array."""
        return (pfns >= self.base_pfn) & (pfns < self.base_pfn + self.reserve + self.free)
