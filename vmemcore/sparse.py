"""Sections and their memmap: boot-time ``sparse_init`` and the runtime section lifecycle.

Mirrors ``mm/sparse.c``: ``memblocks_present``, ``sparse_init``/``sparse_init_nid`` (one sparse
buffer per node), ``__populate_section_memmap``/``depopulate_section_memmap`` with the memmap
counters, and ``sparse_add_section``/``sparse_remove_section`` (``section_activate`` and
``section_deactivate``: sub-section maps, early sections, ``free_map_bootmem``).
"""

from errno import EEXIST

from attrs import frozen

from .errors import BadRequest
from .geometry import SUBSECTION_SHIFT
from .populate import SparseBuffer, vmemmap_can_optimize, vmemmap_populate_compound_pages
from .rangemap import RangeMap
from .stats import NR_MEMMAP_BOOT_PAGES, NR_MEMMAP_PAGES
from .units import format_size, pfn_range


@frozen
class SectionState:
    """A present section: its node, whether it came from boot memory (``SECTION_IS_EARLY``), and
    its sub-section map (bit i set: sub-section i has a memmap)."""

    node: int
    early: bool
    subsections: int


class Sparse:
    """The machine's ``mem_section`` array, stored as runs of equal sections."""

    def __init__(self, machine):
        self.machine = machine
        self.geometry = machine.sparse_geometry
        self.sections = RangeMap(machine.journal)  # section number -> SectionState
        self.full_map = (1 << self.geometry.subsections_per_section) - 1

    # -- arithmetic -----------------------------------------------------------------------------
    def section_nr(self, pfn) -> int:
        return pfn >> self.geometry.pfn_section_shift

    def section_pfn(self, nr) -> int:
        return nr << self.geometry.pfn_section_shift

    def subsection_bits(self, pfn, nr_pages) -> int:
        """``fill_subsection_map``'s mask for ``[pfn, pfn + nr_pages)`` inside one section."""
        per = self.geometry.pages_per_subsection
        first = (pfn - self.section_pfn(self.section_nr(pfn))) // per
        count = -(-nr_pages // per)
        return ((1 << count) - 1) << first

    def memmap_pages(self, nr_pages) -> int:
        """``DIV_ROUND_UP(nr_pages * sizeof(struct page), PAGE_SIZE)``: what the counters add."""
        return -(-nr_pages * self.geometry.struct_page_size // self.geometry.page_size)

    def section_map_pages(self) -> int:
        """``section_map_size()`` in pages: a section's memmap rounded up to ``PMD_SIZE``."""
        pmd = self.machine.geometry.pmd.entry_span
        size = -(-self.geometry.section_memmap_bytes // pmd) * pmd
        return size >> self.geometry.page_shift

    def _pfns(self, pfn, nr_pages):
        """``[pfn, pfn + nr_pages)`` for a message, labelled, with its physical addresses."""
        return pfn_range(pfn, pfn + nr_pages, self.geometry.page_shift)

    def check_span(self, pfn, nr_pages):
        per = self.geometry.pages_per_subsection
        if nr_pages <= 0 or pfn % per or nr_pages % per:
            raise BadRequest(
                f"{self._pfns(pfn, nr_pages)} are not a whole number of {1 << SUBSECTION_SHIFT >> 20} MiB sub-sections"
            )
        if pfn + nr_pages > self.geometry.max_pfn:
            raise BadRequest(f"{self._pfns(pfn, nr_pages)} end past the architecture's physical limit "
                             f"({self.geometry.max_physmem_bits} bits)")
        self.check_vmemmap(pfn, pfn + nr_pages)

    def check_vmemmap(self, pfn, end_pfn):
        """The struct pages of ``[pfn, end_pfn)`` lie inside the vmemmap the arch reserved."""
        limit = self.geometry.vmemmap_max_pfn
        if end_pfn > limit:
            raise BadRequest(
                f"the struct pages of {pfn_range(pfn, end_pfn)} fall outside the vmemmap at virtual addresses "
                f"[{self.geometry.vmemmap_base:#x}, +{format_size(self.geometry.vmemmap_size)}), which describes pfns "
                f"below {limit:#x} ({format_size(limit << self.geometry.page_shift)} of physical address space)"
            )

    def valid(self, pfn) -> bool:
        """``pfn_valid``: the section has a memmap and is early or has the pfn's sub-section."""
        state = self.sections.get(self.section_nr(pfn))
        if state is None:
            return False
        return state.early or bool(state.subsections & self.subsection_bits(pfn, 1))

    # -- memmap population ----------------------------------------------------------------------
    def populate(self, pfn, nr_pages, node, altmap=None, sections=1, pgmap=None):
        """``__populate_section_memmap``: map the memmap of ``[pfn, pfn + nr_pages)`` through the
        arch's ``vmemmap_populate``, or for a device pagemap whose vmemmap can be deduplicated
        (``vmemmap_can_optimize``) with ``vmemmap_populate_compound_pages``, and count it in full.
        ``sections`` > 1 is the boot batch of that many whole sections (each counted as the kernel
        counts one call)."""
        self.check_span(pfn, nr_pages)
        machine = self.machine
        start, end = self.geometry.pfn_to_page(pfn), self.geometry.pfn_to_page(pfn + nr_pages)
        if pgmap is not None and vmemmap_can_optimize(machine, altmap, pgmap).supported:
            if not machine.hooks.vmemmap_populate_compound_pages(machine, pfn, start, end, node, pgmap):
                vmemmap_populate_compound_pages(machine, pfn, start, end, node, pgmap)
        else:
            machine.hooks.vmemmap_populate(machine, start, end, node, altmap)
        counted = sections * self.memmap_pages(nr_pages // sections)
        machine.stats.add(NR_MEMMAP_BOOT_PAGES if machine.physmem.booting else NR_MEMMAP_PAGES, counted)

    def depopulate(self, pfn, nr_pages, altmap=None, sections=1):
        """``depopulate_section_memmap``: the arch's ``vmemmap_free`` of the range, counted;
        ``sections`` > 1: a run of that many whole sections (each counted as the kernel counts one
        call)."""
        machine = self.machine
        start, end = self.geometry.pfn_to_page(pfn), self.geometry.pfn_to_page(pfn + nr_pages)
        machine.hooks.vmemmap_free(machine, start, end, altmap)
        machine.stats.add(NR_MEMMAP_PAGES, -sections * self.memmap_pages(nr_pages // sections))

    # -- boot -----------------------------------------------------------------------------------
    def init(self):
        """``sparse_init``: mark present sections, then populate them node run by node run."""
        machine = self.machine
        for start, end, node in machine.physmem.nodes.items():
            first, last = self.section_nr(start), self.section_nr(end - 1) + 1
            for s, e, state in self.sections.items(first, last):
                if state.node != node:
                    raise BadRequest(
                        f"section {s} holds memory of node {state.node} and node {node}: node boundaries must be section-aligned"
                    )
            self.sections.set(first, last, SectionState(node, True, self.full_map))
        runs = []  # [node, [(first section, end section), ...]] for consecutive present sections per node
        for first, last, state in self.sections.items():
            if runs and runs[-1][0] == state.node:
                runs[-1][1].append((first, last))
            else:
                runs.append([state.node, [(first, last)]])
        pps = self.geometry.pages_per_section
        for node, extents in runs:
            map_count = sum(last - first for first, last in extents)
            per_section = self.section_map_pages()
            machine.sparse_buffer = SparseBuffer(machine, map_count * per_section, per_section, node)
            try:
                preinit = machine.hugetlb.hvo.vmemmap_init_early(node)  # sections already populated
                for first, last in extents:
                    for start, end in _without(first, last, preinit):
                        self.populate(self.section_pfn(start), (end - start) * pps, node, sections=end - start)
            finally:
                machine.sparse_buffer.fini()
                machine.sparse_buffer = None

    # -- runtime section lifecycle --------------------------------------------------------------
    def batches(self, pgmap=None) -> bool:
        """Does one arch call for a run of whole sections map or free what one call per section
        does? ``__add_pages`` and ``__remove_pages`` (``mm/memory_hotplug.c``) call
        ``sparse_add_section`` / ``sparse_remove_section`` a section at a time, each with its own
        ``vmemmap_populate`` or ``vmemmap_free``; here a run of whole sections is one call (as boot's
        runs are) when each section's memmap fills whole PMD leaves: no two sections share a leaf,
        a PTE table or a ``PAGE_UNUSED`` mark, so no call sees another's work but through the tables
        above, which the walk visits in the same ascending order. With a deduplicated device
        pagemap, its compound pages must also lie inside a section (no ``reuse_compound_section``)."""
        if self.geometry.section_memmap_bytes % self.machine.geometry.pmd.entry_span:
            return False
        return pgmap is None or pgmap.vmemmap_nr <= self.geometry.pages_per_section

    def add(self, node, pfn, nr_pages, altmap=None, pgmap=None):
        """``sparse_add_section`` of a range inside one section (``section_activate``), or of each
        section of a run of whole sections (when :meth:`batches`: one populate); ``pgmap``: the
        device pagemap (:class:`vmemcore.zone_device.DevicePagemap`) the range belongs to."""
        self.check_span(pfn, nr_pages)
        nr = self.section_nr(pfn)
        end_nr = self.section_nr(pfn + nr_pages - 1) + 1
        if end_nr - nr > 1:
            self._add_sections(node, nr, end_nr, altmap, pgmap)
            return
        state = self.sections.get(nr)
        bits = self.subsection_bits(pfn, nr_pages)
        if state is not None and state.subsections & bits:
            raise self._exists(pfn, nr_pages)
        if state is not None and state.node != node:
            raise BadRequest(f"section {nr} belongs to node {state.node}, not node {node}")
        early = state is not None and state.early
        if not (early and nr_pages < self.geometry.pages_per_section):
            self.populate(pfn, nr_pages, node, altmap, pgmap=pgmap)
        self.sections.set(nr, nr + 1, SectionState(node, early, (state.subsections if state else 0) | bits))

    def _add_sections(self, node, first, last, altmap, pgmap):
        """Sections ``first..last-1``, none present, each as ``section_activate`` would add it; the
        first one present fails as its own ``sparse_add_section`` would, before anything changed."""
        present = self.sections.items(first, last)
        if present:
            raise self._exists(self.section_pfn(present[0][0]), self.geometry.pages_per_section)
        pfn, count = self.section_pfn(first), last - first
        self.populate(pfn, count * self.geometry.pages_per_section, node, altmap, sections=count, pgmap=pgmap)
        self.sections.set(first, last, SectionState(node, False, self.full_map))

    def _exists(self, pfn, nr_pages):
        return BadRequest(f"sub-sections of {self._pfns(pfn, nr_pages)} already have a memmap (-EEXIST)", errno=-EEXIST)

    def remove(self, pfn, nr_pages, altmap=None):
        """``sparse_remove_section`` of a range inside one section (``section_deactivate``), or of
        each section of a run of whole sections: one ``vmemmap_free`` when every one is a hot-added
        section with its whole memmap (else a section at a time)."""
        self.check_span(pfn, nr_pages)
        nr = self.section_nr(pfn)
        end_nr = self.section_nr(pfn + nr_pages - 1) + 1
        pps = self.geometry.pages_per_section
        if end_nr - nr > 1:
            runs = self.sections.items(nr, end_nr)
            if sum(e - s for s, e, state in runs if not state.early and state.subsections == self.full_map) == end_nr - nr:
                self.sections.set(nr, end_nr, None)  # clear_subsection_map, for every section first
                self.depopulate(pfn, nr_pages, altmap, sections=end_nr - nr)
            else:
                for section in range(nr, end_nr):
                    self.remove(self.section_pfn(section), pps, altmap)
            return
        state = self.sections.get(nr)
        bits = self.subsection_bits(pfn, nr_pages)
        if state is None or state.subsections & bits != bits:
            raise BadRequest(f"{self._pfns(pfn, nr_pages)} have no memmap to remove (section already deactivated)")
        left = state.subsections ^ bits
        # clear_subsection_map comes first: vmemmap_free sees the range as no longer pfn_valid
        self.sections.set(nr, nr + 1, SectionState(state.node, state.early, left) if left else None)
        if not state.early:
            self.depopulate(pfn, nr_pages, altmap)
        elif not left:
            self.free_map_bootmem(nr)

    def free_map_bootmem(self, nr):
        """Free a whole early section's memmap (no altmap); 6.12 leaves the boot counter alone."""
        machine = self.machine
        pfn = self.section_pfn(nr)
        start = self.geometry.pfn_to_page(pfn)
        machine.hooks.vmemmap_free(machine, start, start + self.geometry.section_memmap_bytes, None)
        if machine.profile.boot_memmap_free_lowers_counter:
            machine.stats.add(NR_MEMMAP_BOOT_PAGES, -self.memmap_pages(self.geometry.pages_per_section))


def _without(first, last, taken):
    """``[first, last)`` minus the sorted, disjoint ranges in ``taken``, as ranges."""
    for start, end in taken:
        if end <= first or start >= last:
            continue
        if start > first:
            yield first, start
        first = max(first, end)
    if first < last:
        yield first, last
