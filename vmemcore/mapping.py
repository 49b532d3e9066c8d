"""The vmemmap's mapping as the engine reads it: ``pfn_to_page`` translation, the leaves and their
frames, whether a struct page may be written.

On most architectures the vmemmap lives in the kernel's Linux page table
(:class:`vmemcore.pagetable.PageTable` answers these questions from its tables). Where it does not,
the arch plugin gives the machine another mapping through ``vmemcore_vmemmap_mapping``: powerpc's
hash MMU bolts each vmemmap block into the hash page table and records it in ``vmemmap_list``
(``arch/powerpc/mm/init_64.c``), with no Linux page table behind it. Either way the engine reads the
vmemmap only through this interface (``machine.vmemmap``): struct pages, ``memmap_frame``, the
counters and ``machine.check()`` work the same on both.
"""

class VmemmapMapping:
    """What the engine asks of the vmemmap's mapping. A plugin's backend subclasses it and answers
    :meth:`translate`, :meth:`leaf_extents` and :meth:`leaf_spans`; the others follow."""

    #: label of a leaf in a diagram and the counters (a page-table level name, or e.g. "bolted")
    label = "mapping"

    def translate(self, vaddr):
        """The physical address ``vaddr`` maps to, or None."""
        raise NotImplementedError

    def read_only(self, vaddr):
        """Is ``vaddr`` mapped read-only? None when it is not mapped."""
        return None if self.translate(vaddr) is None else False

    def leaf_extents(self, start, end):
        """Yield ``(vaddr, span, pfns)`` for runs of consecutive leaves mapping part of
        ``[start, end)``: ``pfns`` (an array) backs ``span``-byte leaves from ``vaddr`` on."""
        raise NotImplementedError

    def leaf_spans(self) -> dict:
        """Present leaves per span in bytes."""
        raise NotImplementedError

    def leaf_frames(self):
        """``[(pfn array, pages per leaf)]`` of every present leaf (for ``machine.check()``)."""
        raise NotImplementedError

    def entry(self, vaddr):
        """``(label, read_only, frame)`` of the page mapped at ``vaddr`` (None if unmapped)."""
        phys = self.translate(vaddr)
        if phys is None:
            return None
        return self.label, bool(self.read_only(vaddr)), phys >> self.page_shift

    page_shift = 0
