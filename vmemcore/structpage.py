"""struct page contents, read through the simulated vmemmap.

Contents are lazy. A memmap frame mapped where populate put it ("at home") holds the struct pages
of the pfns its virtual address describes, and those are computed from the machine's state (which
HugeTLB folio or device compound page a pfn belongs to, whether its frame is boot memory). Only
frames whose contents can differ from that, or that are mapped elsewhere too, are materialised: a
frame that HVO maps somewhere else or copies (a new head page, a restored tail page, 7.1's shared
tail page), or the first tail page a device compound page shares, gets a descriptor. Reading the
struct page of a pfn always translates its vmemmap address through the page tables first, so after
HVO (or device-dax dedup) every tail pfn really reads the page it shares — and ``compound_head``
(with the kernel's fake-head fix, ``page_fixed_fake_head``, or 7.1's mask encoding) must still find
the right head.

The kpageflags view mirrors ``stable_page_flags`` (``fs/proc/page.c``) for the flags modelled here.
"""

import attrs
import numpy as np

from .descriptors import CopyOf, Descriptors, SharedTail, lookup
from .errors import VmemcoreError
from .profiles import HvoTailPage

PLAIN, HEAD, TAIL = "plain", "head", "tail"

# page flags modelled (bits of StructPage.flags)
PG_RESERVED = 1
PG_HUGETLB = 2  # the folio is a HugeTLB folio (kept in the folio's first struct pages)
PG_VMEMMAP_OPTIMIZED = 4  # HPG_vmemmap_optimized, on the head
PG_FOLIO_META = 8  # struct pages 1 and 2 of a large folio carry folio metadata (__NR_USED_SUBPAGE = 3)

# include/uapi/linux/kernel-page-flags.h
KPF_COMPOUND_HEAD = 15
KPF_COMPOUND_TAIL = 16
KPF_HUGE = 17
KPF_NOPAGE = 20
KPF_RESERVED = 32


@attrs.frozen
class StructPage:
    """One struct page as the simulation keeps it.

    ``kind`` is plain, head or tail. A head has ``order``. A tail links to its head either by the
    head's pfn (``head``, kernels before 7.1: ``compound_head`` with bit 0 set) or by the folio
    order alone (``order``, 7.1's ``compound_info`` mask: the head is found from the tail's own
    address).
    """

    kind: str = PLAIN
    head: int = -1
    order: int = 0
    flags: int = 0


class ReadOnlyFault(VmemcoreError):
    """A write hit a read-only vmemmap mapping (HVO maps shared tail pages read-only)."""


FEW_PAGES = 16  # vmemmap pages that materialised() looks up one by one rather than a table at a time


def at_home(descriptor, first_pfn) -> bool:
    """Is ``descriptor`` a plain copy of the struct pages of the vmemmap page from ``first_pfn``?"""
    return type(descriptor) is CopyOf and not descriptor.overrides and descriptor.first_pfn == first_pfn


class StructPages:
    """The machine's struct page contents: descriptors of materialised frames, and the reads."""

    def __init__(self, machine):
        self.machine = machine
        self.per_page = machine.geometry.page_size // machine.sparse_geometry.struct_page_size
        self.contents = Descriptors()  # frame pfn -> CopyOf | SharedTail
        self.journal = machine.journal

    def snapshot(self):
        return dict(self.contents.items())

    # -- descriptors ----------------------------------------------------------------------------
    def describe(self, frame, descriptor):
        """Materialise ``frame``'s contents as ``descriptor`` (None: back to plain "at home")."""
        old = self.contents.get(frame)
        self._put(frame, descriptor)
        if self.journal.active:
            self.journal.record(lambda: self._put(frame, old))

    def describe_many(self, frames, descriptors):
        """``describe`` each of ``frames`` (distinct; a list or an int64 array) as the descriptor
        at the same place in ``descriptors`` (None: back to plain), journaled once."""
        if not len(frames):
            return
        frames = np.asarray(frames, dtype=np.int64)
        taken = self.contents.take_many(frames)
        self.contents.put(frames, descriptors)
        self._record_undo(frames, taken)

    def describe_plain(self, frames, firsts):
        """``describe`` each of ``frames`` (an int64 array of distinct frames) as a plain copy,
        ``CopyOf(first)``, of the pfn at the same place in ``firsts``; kept as arrays, journaled once."""
        if not len(frames):
            return
        taken = self.contents.take_many(frames)
        self.contents.add_plain(frames, firsts)
        self._record_undo(frames, taken)

    def _record_undo(self, frames, taken):
        if self.journal.active:
            self.journal.record(self._undo_many, frames, taken)

    def _undo_many(self, frames, taken):
        self.contents.take_many(frames)
        self.contents.put_back(taken)

    def _put(self, frame, descriptor):
        if descriptor is None:
            self.contents.pop(frame, None)
        else:
            self.contents[frame] = descriptor

    def descriptor_at(self, vaddr):
        """What the frame mapped at vmemmap address ``vaddr`` holds, as a descriptor."""
        frame = self.machine.vmemmap.translate(vaddr) >> self.machine.geometry.page_shift
        found = self.contents.get(frame)
        if found is not None:
            return found
        first = self.machine.sparse_geometry.page_to_pfn(vaddr) // self.per_page * self.per_page
        return CopyOf(first)

    def copy_page(self, vaddr, overrides=()):
        """A descriptor for a copy of the page mapped at ``vaddr`` (``copy_page``)."""
        source = self.descriptor_at(vaddr)
        if isinstance(source, SharedTail):
            return source
        merged = dict(source.overrides)
        merged.update(overrides)
        return CopyOf(source.first_pfn, tuple(sorted(merged.items())))

    def reset_struct_pages(self, descriptor, count):
        """``reset_struct_pages``: struct pages ``count..2*count-1`` copied over ``0..count-1``."""
        if count == 0 or isinstance(descriptor, SharedTail):
            return descriptor
        first = descriptor.first_pfn
        overrides = dict(descriptor.overrides)
        for i in range(count):
            overrides[i] = overrides[count + i] if count + i in overrides else self.home(first + count + i)
        return CopyOf(first, tuple(sorted(overrides.items())))

    def equals_home(self, descriptor, first_pfn) -> bool:
        """Does a frame holding ``descriptor`` read exactly like the struct pages the kernel keeps
        for ``first_pfn``'s vmemmap page? (Only records that can differ are compared: overrides,
        heads and folio metadata; both pages must lie inside one HugeTLB folio.)"""
        hugetlb = self.machine.hugetlb
        folio = hugetlb.folio_of(first_pfn)
        if folio is None or first_pfn + self.per_page > folio.head + (1 << folio.order):
            return False
        if isinstance(descriptor, SharedTail):
            shared = self.machine.profile.hvo_tail_page is HvoTailPage.SHARED
            return shared and descriptor.order == folio.order and first_pfn - folio.head >= 3
        source = descriptor.first_pfn
        if hugetlb.folio_of(source) != folio or source + self.per_page > folio.head + (1 << folio.order):
            return False
        overrides = dict(descriptor.overrides)
        suspects = set(overrides) | {j for j in range(self.per_page)
                                     if source + j - folio.head < 3 or first_pfn + j - folio.head < 3}
        return all((overrides[j] if j in overrides else self.home(source + j)) == self.home(first_pfn + j)
                   for j in suspects)

    def same_contents(self, old, new, vaddr) -> bool:
        """Do frames ``old`` and ``new``, each mapped at vmemmap address ``vaddr``, read the same?
        (A frame without a descriptor reads as the struct pages that belong at ``vaddr``.)"""
        first = self.machine.sparse_geometry.page_to_pfn(vaddr) // self.per_page * self.per_page
        a, b = self.contents.get(old), self.contents.get(new)
        if a == b:
            return True
        if a is None or b is None:
            return self.equals_home(a if b is None else b, first)
        return self.equals_home(a, first) and self.equals_home(b, first)

    def materialised(self, start_pfn, end_pfn) -> list:
        """``(first_pfn, frame, at_home)`` for each vmemmap page of ``[start_pfn, end_pfn)`` (whole
        vmemmap pages) whose frame holds a descriptor, in address order: ``first_pfn`` the first
        pfn it describes, ``at_home`` whether the descriptor is a plain copy of the struct pages
        that belong there. One pass over the leaves, a table at a time, looking their frames up
        one by one, or, when the range's vmemmap pages outnumber the descriptors, in the
        descriptors' frames sorted once (so the cost is neither tables x descriptors nor
        calls x descriptors)."""
        if not self.contents:
            return []
        machine = self.machine
        contents = self.contents
        per_page = self.per_page
        first = -(-start_pfn // per_page) * per_page
        size = machine.sparse_geometry.struct_page_size
        if end_pfn - first <= FEW_PAGES * per_page and not size & (size - 1):  # a few whole pages: each looked up
            pt, page_shift, out = machine.pagetable, machine.geometry.page_shift, []
            for pfn in range(first, end_pfn, per_page):
                phys = pt.translate(machine.pfn_to_page(pfn))
                frame = None if phys is None else phys >> page_shift
                found = contents.get(frame)
                if found is not None:
                    out.append((pfn, frame, at_home(found, pfn)))
            return out
        keys = None  # the descriptors' frames, sorted once when the range's pages outnumber them
        if (end_pfn - start_pfn) // self.per_page >= len(contents):
            keys = np.sort(contents.frames())
        page_shift = machine.geometry.page_shift
        out = []
        for vaddr, level, pfns in machine.pagetable.leaf_runs(machine.pfn_to_page(start_pfn), machine.pfn_to_page(end_pfn)):
            pages = level.entry_span >> page_shift
            if pages > 1:  # a block leaf: the frames of its pages follow one another
                pfns = (pfns[:, None] + np.arange(pages)).ravel()
            if keys is None:
                hits = np.flatnonzero(contents.holds(pfns))
            else:
                hits = np.flatnonzero(lookup(keys, pfns)[1])
            first = machine.sparse_geometry.page_to_pfn(vaddr)
            for k, frame in zip(hits.tolist(), pfns[hits].tolist()):
                pfn = first + k * self.per_page
                if start_pfn <= pfn < end_pfn:
                    out.append((pfn, frame, at_home(self.contents[frame], pfn)))
        return out

    def reads_like_home(self, descriptor, vaddr) -> bool:
        """Is ``descriptor`` a plain copy of the struct pages that belong at ``vaddr``?"""
        return at_home(descriptor, self.machine.sparse_geometry.page_to_pfn(vaddr) // self.per_page * self.per_page)

    def forget_many(self, frames, ordered=False):
        """``forget`` for frames (a list or an int64 array, ascending if ``ordered``), each once."""
        if not self.contents:
            return
        taken = self.contents.take_many(np.asarray(frames, dtype=np.int64), ordered)
        if self.journal.active and (taken[0] or taken[1]):
            self.journal.record(self.contents.put_back, taken)

    def forget(self, frame, nr_pages=1):
        """Frames given back to the allocator: their contents no longer matter."""
        if not self.contents:
            return
        if nr_pages <= len(self.contents):
            frames = [f for f in range(frame, frame + nr_pages) if f in self.contents]
        else:
            frames = [f for f in self.contents if frame <= f < frame + nr_pages]
        for f in frames:
            self.describe(f, None)

    # -- reading --------------------------------------------------------------------------------
    def tail(self, head, order, flags=0) -> StructPage:
        """A tail struct page as this kernel links it to its head: by the head's pfn
        (``compound_head``), or by the order alone (7.1's ``compound_info`` mask)."""
        if self.machine.profile.hvo_tail_page is HvoTailPage.SHARED:
            return StructPage(TAIL, order=order, flags=flags)
        return StructPage(TAIL, head=head, flags=flags)

    def home(self, pfn) -> StructPage:
        """The struct page of ``pfn`` as the kernel has written it (from the machine's state)."""
        device = self.machine.zone_device.struct_page(pfn)
        if device is not None:
            return device
        owner = self.machine.physmem.owner(pfn)
        reserved = PG_RESERVED if owner is not None and owner.reserved and owner.use.value != "hugetlb" else 0
        folio = self.machine.hugetlb.folio_of(pfn) if self.machine.hugetlb else None
        if folio is None:
            return StructPage(flags=reserved)
        if pfn == folio.head:
            flags = PG_HUGETLB | (PG_VMEMMAP_OPTIMIZED if self.machine.hugetlb.hvo.is_optimized(folio.head) else 0)
            return StructPage(HEAD, order=folio.order, flags=flags)
        return self.tail(folio.head, folio.order, PG_FOLIO_META if pfn - folio.head < 3 else 0)

    def read(self, pfn):
        """The struct page of ``pfn``, read through the vmemmap; None if it is not mapped."""
        return self.read_range(pfn, 1)[0]

    def read_range(self, start, count):
        """The struct pages of ``[start, start + count)``, each read through the vmemmap (one
        translation per vmemmap page); None where nothing is mapped."""
        machine = self.machine
        page_shift = machine.geometry.page_shift
        pages, pfn, end = [], start, start + count
        while pfn < end:
            first = pfn - pfn % self.per_page
            stop = min(first + self.per_page, end)
            phys = machine.vmemmap.translate(machine.pfn_to_page(first))
            if phys is None:
                pages.extend([None] * (stop - pfn))
                pfn = stop
                continue
            descriptor = self.contents.get(phys >> page_shift) or CopyOf(first)
            if isinstance(descriptor, SharedTail):
                pages.extend([StructPage(TAIL, order=descriptor.order)] * (stop - pfn))
            else:
                pages.extend(self._copy_records(descriptor, pfn - first, stop - first))
            pfn = stop
        return pages

    def _copy_records(self, descriptor, lo, hi):
        """Struct pages ``lo..hi-1`` of a frame holding ``descriptor``."""
        overrides = dict(descriptor.overrides)
        base = descriptor.first_pfn
        records = self.home_range(base + lo, hi - lo)
        for index, page in overrides.items():
            if lo <= index < hi:
                records[index - lo] = page
        return records

    def home_range(self, start, count):
        """``home`` for ``count`` pfns from ``start``; a run inside one HugeTLB folio and one owner
        extent, or inside one device compound page, is built from two records instead of looked up
        pfn by pfn."""
        end = start + count
        compound = self.machine.zone_device.compound_page(start)
        if compound is None:
            folio = self.machine.hugetlb.folio_of(start) if self.machine.hugetlb else None
            extent = self.machine.physmem.frames.extent(start)
            if folio is None and extent is not None and extent[1] >= end and extent[2].use.value != "hugetlb":
                return [self.home(start)] * count  # one owner, no folio: every struct page alike
            if folio is not None and extent is not None and extent[1] >= end:
                compound = folio.head, 1 << folio.order
        if compound is None or compound[0] + compound[1] < end:
            return [self.home(pfn) for pfn in range(start, end)]
        records = []
        plain = max(start, compound[0] + 3)
        records.extend(self.home(pfn) for pfn in range(start, min(plain, end)))
        if plain < end:
            records.extend([self.home(plain)] * (end - plain))
        return records

    def compound_heads(self, start, count):
        """``compound_head`` of each pfn of the range, as pfns (None where nothing is mapped)."""
        return self._heads(start, self.read_range(start, count + 1))[:count]

    def _heads(self, start, pages):
        heads = []
        for k, page in enumerate(pages[:-1]):
            pfn, after = start + k, pages[k + 1]
            if page is None:
                heads.append(None)
            elif page.kind == TAIL:
                heads.append(page.head if page.head >= 0 else pfn >> page.order << page.order)
            elif page.kind == HEAD and pfn % self.per_page == 0 and after is not None \
                    and after.kind == TAIL and after.head >= 0:
                # page_fixed_fake_head: an HVO'd tail page aliasing the head page reads a head
                # here; the struct page after it tells the truth
                heads.append(after.head)
            else:
                heads.append(pfn)
        return heads

    def compound_head(self, pfn):
        """``compound_head(pfn_to_page(pfn))`` as a pfn, through the vmemmap."""
        return self.compound_heads(pfn, 1)[0]

    def max_dump_pfn(self) -> int:
        """``get_max_dump_pfn`` (``fs/proc/page.c``): ``max_pfn`` rounded up to a whole section,
        where ``/proc/kpageflags`` ends; here the end of the highest section with a memmap."""
        sections = self.machine.sparse.sections.items()
        return self.machine.sparse.section_pfn(sections[-1][1]) if sections else 0

    def kpageflags_range(self, start, count):
        """The flags ``/proc/kpageflags`` reports for each pfn of the range (the subset modelled);
        like ``kpageflags_read``, the list stops at :meth:`max_dump_pfn`."""
        self.machine.rules.pfn("pfn", start)
        count = max(0, min(self.machine.rules.count("count", count), self.max_dump_pfn() - start))
        if not count:
            return []
        pages = self.read_range(start, count + 1)
        heads = self._heads(start, pages)
        head_pages = {}
        out = []
        for k in range(count):
            pfn, page, head = start + k, pages[k], heads[k]
            # pfn_to_online_page() is NULL for device (ZONE_DEVICE) pages: they are never online
            device = self.machine.zone_device.pagemap_of(pfn) is not None
            if page is None or not self.machine.sparse.valid(pfn) or device:
                out.append(1 << KPF_NOPAGE)
                continue
            flags = (1 << KPF_RESERVED) if page.flags & PG_RESERVED else 0
            if head not in head_pages:
                head_pages[head] = page if head == pfn else self.read(head)
            head_page = head_pages[head]
            if head_page is not None and head_page.kind == HEAD:
                flags |= 1 << (KPF_COMPOUND_HEAD if head == pfn else KPF_COMPOUND_TAIL)
                if head_page.flags & PG_HUGETLB:
                    flags |= 1 << KPF_HUGE
            out.append(flags)
        return out

    def kpageflags(self, pfn) -> int:
        """The flags ``/proc/kpageflags`` reports for ``pfn``."""
        return self.kpageflags_range(pfn, 1)[0]

    # -- writing --------------------------------------------------------------------------------
    def write(self, pfn, page: StructPage):
        """Store ``page`` as the struct page of ``pfn`` through the vmemmap; a read-only mapping
        faults (:class:`ReadOnlyFault`) and nothing changes."""
        vaddr = self.machine.pfn_to_page(pfn)
        read_only = self.machine.vmemmap.read_only(vaddr)
        if read_only is None:
            raise ReadOnlyFault(f"struct page of pfn {pfn:#x} at vmemmap address {vaddr:#x} is not mapped")
        if read_only:
            raise ReadOnlyFault(f"write to the struct page of pfn {pfn:#x} hit a read-only vmemmap mapping at vmemmap address {vaddr:#x}")
        frame = self.machine.vmemmap.translate(vaddr) >> self.machine.geometry.page_shift
        self.describe(frame, self.copy_page(vaddr, {pfn % self.per_page: page}))
