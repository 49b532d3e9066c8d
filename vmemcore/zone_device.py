"""ZONE_DEVICE pagemaps and the compound devmap (device-dax) vmemmap dedup.

Mirrors ``memremap_pages``/``memunmap_pages`` (``mm/memremap.c``: ``pagemap_range``,
``pageunmap_range``, the ``pgmap_array`` that ``get_dev_pagemap`` searches), ``compound_nr_pages``
and ``memmap_init_zone_device`` (``mm/mm_init.c``), and the namespace layout of ``nd_pfn_init``
(``drivers/nvdimm/pfn_devs.c``) for a memmap kept on the device. The compound populate itself
(``vmemmap_can_optimize``, ``vmemmap_populate_compound_pages``) lives with the other populate
paths in :mod:`vmemcore.populate`, as the kernel keeps it in ``mm/sparse-vmemmap.c``.

Device memory is not System RAM: physical memory never sees its pfns, and an altmap over it (the
device's own memmap area) tracks its frames alone. Its memmap is added through the section
machinery (``sparse_add_section`` per section piece, with the pagemap), whose populate takes the
compound path when ``vmemmap_can_optimize`` allows: per compound page the head vmemmap page and
the first tail vmemmap page get frames of their own and every later PTE maps the first tail page's
frame, taking a reference (``VMEMMAP_POPULATE_PAGEREF``); a section that continues a compound page
begun in an earlier one maps that section's last frame throughout. So a compound page costs 2
frames whatever its size, while the memmap counters count its full size (``populate_section_memmap`` in ``mm/sparse.c``;
docs/kernel-map.md#memmap-counters).
"""

from errno import ENOMEM, ENXIO

import attrs
import numpy as np

from .altmap import VmemAltmap
from .errors import BadRequest, Veto
from .geometry import SUBSECTION_SHIFT, Support
from .hotplug import check_mappable
from .physmem import Use
from .populate import VMEMMAP_RESERVE_NR, vmemmap_can_optimize
from .rangemap import RangeMap
from .stats import NR_MEMMAP_PAGES
from .structpage import HEAD, PG_FOLIO_META, StructPage
from .units import byte_range, format_size, human_size, parse_size

INFO_BLOCK = 8 << 10  # SZ_8K: the pfn device's info block at the start of a namespace
MAX_STRUCT_PAGE_SIZE = 64  # what a namespace sets aside per page for its memmap


@attrs.frozen
class DeviceRange:
    """One physical range of a pagemap (``struct range``), in bytes."""

    start: int = attrs.field(converter=parse_size)
    size: int = attrs.field(converter=parse_size)


def _ranges(value):
    ranges = tuple(r if isinstance(r, DeviceRange) else DeviceRange(**r) if isinstance(r, dict) else DeviceRange(*r)
                   for r in value)
    if not ranges:
        raise BadRequest("a device pagemap needs at least one range")
    return ranges


@attrs.frozen
class DevicePagemap:
    """A device-dax ``struct dev_pagemap``: its physical ranges, the order of its compound pages
    (``vmemmap_shift``, 0 for base pages), an optional altmap (a :class:`VmemAltmap` over the start
    of its single range: the memmap lives on the device) and the node its memmap is allocated on."""

    ranges: tuple = attrs.field(converter=_ranges)
    vmemmap_shift: int = attrs.field(default=0, validator=attrs.validators.ge(0))
    altmap: VmemAltmap | None = None
    node: int = attrs.field(default=0, validator=attrs.validators.ge(0))

    @property
    def vmemmap_nr(self) -> int:
        """``pgmap_vmemmap_nr``: pages per compound page."""
        return 1 << self.vmemmap_shift


@attrs.frozen
class Pagemap:
    """A pagemap in use: the altmap its memmap came from (device memory; None without one), whether
    its vmemmap was deduplicated (or why not), and what its memmap cost when it was added."""

    pgmap: DevicePagemap
    altmap: VmemAltmap | None
    dedup: Support
    pages_mapped: int  # vmemmap pages its populate mapped (leaves it added, in pages)
    frames_used: int  # frames behind them (from RAM or from the altmap)
    pagetable_pages: int  # page-table pages its populate allocated
    struct_pages_initialized: int  # memmap_init_zone_device's work (compound_nr_pages per compound page)
    pages_counted: int = 0  # what nr_memmap_pages counted: per section piece, its memmap rounded up to pages

    @property
    def pages_saved(self) -> int:
        """Vmemmap pages the dedup spared: pages mapped less frames used, so mapped = used + saved
        (0 without dedup, where every mapped page has a frame of its own)."""
        return self.pages_mapped - self.frames_used

    def report(self) -> dict:
        first = self.pgmap.ranges[0]
        return {
            "start": first.start,
            "size": sum(r.size for r in self.pgmap.ranges),
            "ranges": len(self.pgmap.ranges),
            "vmemmap_shift": self.pgmap.vmemmap_shift,
            "altmap": self.altmap is not None,
            "dedup": self.dedup.supported,
            "dedup_refused": self.dedup.reason,
            "vmemmap_pages_mapped": self.pages_mapped,
            "vmemmap_frames_used": self.frames_used,
            "vmemmap_pages_saved": self.pages_saved,
            "memmap_pages_counted": self.pages_counted,
            "pagetable_pages": self.pagetable_pages,
            "struct_pages_initialized": self.struct_pages_initialized,
        }


def compound_nr_pages(machine, altmap, pgmap) -> int:
    """``compound_nr_pages``: the struct pages ``memmap_init_compound`` writes per compound page —
    with dedup only those in the vmemmap pages the compound page has of its own."""
    if not vmemmap_can_optimize(machine, altmap, pgmap).supported:
        return pgmap.vmemmap_nr
    return VMEMMAP_RESERVE_NR * (machine.geometry.page_size // machine.sparse_geometry.struct_page_size)


# -- memremap_pages / memunmap_pages ------------------------------------------------------------

class ZoneDevice:
    """The machine's device pagemaps (``memremap_pages``) and what their struct pages hold."""

    def __init__(self, machine):
        self.machine = machine
        self.pagemaps = {}  # first pfn of the first range -> Pagemap
        self.pfns = RangeMap(machine.journal)  # pfn -> (key, first data pfn of its range, vmemmap_shift)

    def snapshot(self):
        altmaps = {key: (pm.altmap.alloc, pm.altmap.align) for key, pm in self.pagemaps.items() if pm.altmap}
        return dict(self.pagemaps), altmaps, self.pfns.items()

    def _put(self, key, pagemap):
        """``self.pagemaps[key] = pagemap`` (None: delete), journaled."""
        old = self.pagemaps.get(key)
        self._set(key, pagemap)
        self.machine.journal.record(lambda: self._set(key, old))

    def _set(self, key, pagemap):
        if pagemap is None:
            del self.pagemaps[key]
        else:
            self.pagemaps[key] = pagemap

    def _cost(self):
        """Memmap pages counted, memmap frames and page-table frames of System RAM, and vmemmap
        pages mapped."""
        m = self.machine
        return (m.stats[NR_MEMMAP_PAGES], m.physmem.pages_owned(Use.MEMMAP), m.physmem.pages_owned(Use.PAGETABLE),
                m.vmemmap_mapped_bytes() >> m.geometry.page_shift)

    def add(self, pgmap: DevicePagemap) -> Pagemap:
        """``memremap_pages``: check the ranges, then for each, in order, record its pfns
        (``pgmap_array``) and add its memmap section piece by section piece (``__add_pages``), with
        the altmap reset (``alloc = 0``). All or nothing."""
        m = self.machine
        shift = m.geometry.page_shift
        self._check_request(pgmap)
        key = pgmap.ranges[0].start >> shift
        altmap = None
        if pgmap.altmap is not None:
            altmap = attrs.evolve(pgmap.altmap, alloc=0, device=True, journal=m.journal)
        with m.transaction():
            dedup = vmemmap_can_optimize(m, altmap, pgmap)
            per_compound = compound_nr_pages(m, altmap, pgmap)
            before = self._cost()
            initialized = 0
            for index, r in enumerate(pgmap.ranges):
                pfn, nr_pages = r.start >> shift, r.size >> shift
                first = pfn + (altmap.offset if altmap is not None and index == 0 else 0)  # pfn_first
                self.pfns.set(pfn, pfn + nr_pages, (key, first, pgmap.vmemmap_shift))
                m.add_memmap(pfn, nr_pages, pgmap.node, altmap, pgmap=pgmap)
                initialized += (pfn + nr_pages - first) // pgmap.vmemmap_nr * per_compound
            counted, ram, tables, mapped = (after - was for after, was in zip(self._cost(), before))
            device = altmap.alloc if altmap is not None else 0
            pagemap = Pagemap(pgmap, altmap, dedup, mapped, ram + device, tables, initialized, counted)
            self._put(key, pagemap)
        return pagemap

    def _check_request(self, pgmap):
        m = self.machine
        support = m.hooks.zone_device_support(m)
        if not support.supported:
            raise Veto(f"{m.arch.name} kernel {m.profile.name} has no ZONE_DEVICE: {support.reason}",
                       [(m.plugin.name, support.reason)])
        shift = m.geometry.page_shift
        subsection, compound = 1 << SUBSECTION_SHIFT, pgmap.vmemmap_nr << shift
        align = f"the {format_size(compound)} compound page size (align; dev_dax_validate_align: -EINVAL)"
        for r in pgmap.ranges:
            where = f"device range {byte_range(r.start, r.start + r.size)}"
            if r.size == 0 or (r.start | r.size) % subsection:  # check_pfn_span
                raise BadRequest(f"{where} is not made of whole {format_size(subsection)} sub-sections (-EINVAL)")
            if r.size < compound:
                raise BadRequest(f"{where} ({human_size(r.size)}) is smaller than {align}")
            if r.size % compound:
                raise BadRequest(f"{where} ({human_size(r.size)}) is not a multiple of {align}")
            if r.start % compound:
                raise BadRequest(f"{where} does not start on a multiple of {align}")
            pfn, nr_pages = r.start >> shift, r.size >> shift
            m.sparse.check_span(pfn, nr_pages)
            check_mappable(m, r.start, r.start + r.size, "device range")
            if m.physmem.nodes.covered(pfn, pfn + nr_pages):
                raise BadRequest(f"{where} overlaps System RAM (memremap_pages: -ENXIO)", errno=-ENXIO)
            if self.pfns.covered(pfn, pfn + nr_pages):
                raise BadRequest(f"{where} overlaps another device pagemap (conflicting mapping: -ENOMEM)", errno=-ENOMEM)
        altmap = pgmap.altmap
        if altmap is None:
            return
        if len(pgmap.ranges) > 1:
            raise BadRequest("altmap not supported for multiple ranges (memremap_pages: -EINVAL)")
        pfn, nr_pages = pgmap.ranges[0].start >> shift, pgmap.ranges[0].size >> shift
        if altmap.base_pfn != pfn or altmap.offset > nr_pages or altmap.end_pfn >= pfn + nr_pages:
            raise BadRequest(f"invalid altmap {altmap!r} for {nr_pages:#x} pages at pfn {pfn:#x} (-EINVAL)")
        if altmap.offset % pgmap.vmemmap_nr:
            boundary = format_size(pgmap.vmemmap_nr << shift)
            raise BadRequest(f"the altmap's {altmap.offset} pfns do not end on a {boundary} compound page boundary")

    def remove(self, start) -> Pagemap:
        """``memunmap_pages``: remove each range's memmap (``__remove_pages``, giving altmap frames
        back) and its pfns. Returns the pagemap removed."""
        m = self.machine
        key = parse_size(start) >> m.geometry.page_shift
        pagemap = self.pagemaps.get(key)
        if pagemap is None:
            raise BadRequest(f"no device pagemap starts at physical address {parse_size(start):#x}")
        with m.transaction():
            for r in pagemap.pgmap.ranges:
                pfn, nr_pages = r.start >> m.geometry.page_shift, r.size >> m.geometry.page_shift
                m.remove_memmap(pfn, nr_pages, pagemap.altmap)
                self.pfns.set(pfn, pfn + nr_pages, None)
            self._put(key, None)
        return pagemap

    # -- queries --------------------------------------------------------------------------------
    def pagemap_of(self, pfn):
        """``get_dev_pagemap``: the pagemap holding ``pfn``, or None."""
        found = self.pfns.get(pfn)
        return None if found is None else self.pagemaps.get(found[0])

    def compound_page(self, pfn):
        """``(head, nr_pages)`` of the device compound page holding ``pfn``, or None."""
        found = self.pfns.get(pfn)
        if found is None or found[2] == 0 or pfn < found[1]:
            return None
        nr = 1 << found[2]
        return pfn - (pfn - found[1]) % nr, nr

    def struct_page(self, pfn):
        """What ``memmap_init_zone_device`` wrote in the struct page of a device pfn (None for other
        pfns): a head at the start of each compound page, counted from the range's first data pfn,
        and tails linked to it (the first two carrying folio metadata); base pages and the altmap's
        own pfns are plain."""
        if self.pfns.get(pfn) is None:
            return None
        compound = self.compound_page(pfn)
        if compound is None:
            return StructPage()
        head, nr = compound
        if pfn == head:
            return StructPage(HEAD, order=nr.bit_length() - 1)
        return self.machine.structpages.tail(head, nr.bit_length() - 1, PG_FOLIO_META if pfn - head < 3 else 0)

    def counters(self) -> dict:
        """The pagemaps' vmemmap use, summed (no entries while there is no pagemap)."""
        if not self.pagemaps:
            return {}
        pagemaps = self.pagemaps.values()
        return {
            "devdax_vmemmap_pages_mapped": sum(pm.pages_mapped for pm in pagemaps),
            "devdax_vmemmap_frames_used": sum(pm.frames_used for pm in pagemaps),
            "devdax_vmemmap_pages_saved": sum(pm.pages_saved for pm in pagemaps),
        }

    def check(self, leaf_frames):
        """Leaf frames in device memory must lie in a pagemap's altmap area and add up to what the
        altmaps handed out. Returns ``leaf_frames`` without them (the ones System RAM must own)."""
        extents = [(s, e) for s, e, _ in self.pfns.items()]
        if not extents:
            return leaf_frames
        altmaps = [pm.altmap for pm in self.pagemaps.values() if pm.altmap]
        areas = [(altmap.base_pfn, altmap.base_pfn + altmap.offset) for altmap in altmaps]
        ram, device = [], 0
        for pfns, n in leaf_frames:
            inside = np.zeros(len(pfns), dtype=bool)
            for s, e in extents:
                inside |= (pfns >= s) & (pfns < e)
            if inside.any():
                hosted = np.zeros(len(pfns), dtype=bool)
                for s, e in areas:
                    hosted |= (pfns >= s) & (pfns + n <= e)
                stray = pfns[inside & ~hosted]
                assert not len(stray), f"vmemmap frame {int(stray[0]):#x} is device memory outside every altmap"
                device += int(inside.sum()) * n
            ram.append((pfns[~inside], n))
        handed_out = sum(altmap.alloc for altmap in altmaps)
        assert device == handed_out, f"{device} vmemmap frames are device memory, altmaps handed out {handed_out}"
        return ram


# -- scenario steps -----------------------------------------------------------------------------

def pmem_altmap(machine, start, size, align):
    """The altmap of a pmem namespace whose memmap lives on the device (``nd_pfn_init``,
    PFN_MODE_PMEM): an 8 KiB info block reserved, then ``MAX_STRUCT_PAGE_SIZE`` bytes per page of
    the whole range, the data starting at the next ``max(align, memremap_compat_align())`` boundary
    (the sub-section size on the arches simulated here)."""
    shift = machine.geometry.page_shift
    unit = max(align, 1 << SUBSECTION_SHIFT)
    offset = -(-(INFO_BLOCK + (size >> shift) * MAX_STRUCT_PAGE_SIZE) // unit) * unit
    reserve = INFO_BLOCK >> shift
    return VmemAltmap(base_pfn=start >> shift, end_pfn=((start + size) >> shift) - 1, reserve=reserve,
                      free=(offset >> shift) - reserve)


def add_devdax_step(machine, start, size, align=None, node=0, altmap=False):
    """The ``devdax.add`` step: device memory ``[start, start + size)`` with compound pages of
    ``align`` bytes (default: base pages), its memmap on the device when ``altmap``; returns the
    pagemap's report."""
    page = machine.geometry.page_size
    rules = machine.rules
    start, size, node, altmap = rules.size("start", start), rules.size("size", size), rules.node("node", node), rules.flag("altmap", altmap)
    align = page if align is None else rules.size("align", align)
    if align < page or align & (align - 1):
        raise BadRequest(f"align {align:#x} is not a power of two of at least the {format_size(page)} page size")
    pgmap = DevicePagemap(
        ranges=[(start, size)],
        vmemmap_shift=(align // page).bit_length() - 1,
        altmap=pmem_altmap(machine, start, size, align) if altmap else None,
        node=node,
    )
    return machine.zone_device.add(pgmap).report()


def remove_devdax_step(machine, start, size=None):
    """The ``devdax.remove`` step: remove the pagemap whose first range starts at ``start`` (and
    whose ranges add up to ``size``, if given); returns its report."""
    pagemap = machine.zone_device.pagemaps.get(parse_size(start) >> machine.geometry.page_shift)
    if size is not None and pagemap is not None and sum(r.size for r in pagemap.pgmap.ranges) != parse_size(size):
        raise BadRequest(f"the device pagemap at physical address {parse_size(start):#x} is not "
                         f"{format_size(parse_size(size))} long")
    return machine.zone_device.remove(start).report()
