"""Bad page checks when memory goes back to the page allocator (``mm/page_alloc.c``).

``free_pages_prepare`` checks every struct page of what is freed: for a compound page each tail
through ``free_tail_page_prepare`` (PageTail set, ``compound_head`` pointing at the head, the
first two tails' folio fields clear, every later tail's ``mapping`` equal to ``TAIL_MAPPING``),
and each page through ``free_page_is_bad`` (``page_expected_state``: ``_mapcount`` -1, no
``mapping``, refcount 0, no ``PAGE_FLAGS_CHECK_AT_FREE`` flag such as ``PG_reserved``). A failed
check calls ``bad_page``, which prints ``BUG: Bad page state in process COMM  pfn:PFN`` and the
page (``dump_page``, ``mm/debug.c``), taints the kernel, and ``free_pages_prepare`` returns false:
the whole block is not freed, it is leaked (since 6.4 the checks run when ``check_pages_enabled``
is on: ``CONFIG_DEBUG_VM``, ``init_on_free``, page poisoning, ``debug_pagealloc``).

What is checked here, so that it costs little: only struct pages that can differ from what the
machine's state says they are (:mod:`vmemcore.structpage` computes every other struct page from
that state, so it is right by construction). Those are the materialised ones: the frames behind
the vmemmap that hold a descriptor (HVO's new head page and restored copies, 7.1's shared tail
page, device pages). The frames HVO and ``vmemmap_free`` give back are memmap frames, whose own
struct pages are never materialised (a vmemmap page describes the pfns of one folio or none), so
the HugeTLB folio freed to the buddy allocator (``update_and_free_hugetlb_folio`` after
``hugetlb_vmemmap_restore_folio``) is the path checked: a restore that left copies of the head's
struct pages in a tail page (no ``reset_struct_pages``) is caught there, as in the kernel.

The machine keeps the reports (``machine.bad_pages``) and counts them (``bad_page_reports``, and the
frames leaked, ``bad_page_leaked_frames``); leaked frames are owned as ``leaked`` and
``machine.check()`` accounts for them. ``Machine(check_bad_pages=False)`` turns the check off.
"""

import attrs

from .physmem import Owner, Use
from .structpage import HEAD, PG_FOLIO_META, PG_HUGETLB, PG_RESERVED, TAIL

LEAKED = Owner(Use.LEAKED)

#: ``include/linux/page-flags.h`` bit numbers (6.12 ``enum pageflags``) of the modelled flags, and
#: their names as ``%pGp`` prints them. UNCONFIRMED for releases that reordered the enum.
PG_BITS = (("head", 6), ("reserved", 13))

#: ``bad_page`` stops printing after 60 reports in a row (``nr_shown``); they are still counted.
MAX_SHOWN = 60

#: ``current->comm`` in the report: the simulator stands for the process that freed the page.
COMM = "vmemcore"


@attrs.frozen
class BadPage:
    """One ``bad_page`` report: the pfn, the kernel's reason and the lines it prints."""

    pfn: int
    reason: str
    lines: tuple

    def __str__(self):
        return "\n".join(self.lines)


def _hex(value):
    """``%#lx``: 0 prints as ``0``, other values with ``0x``."""
    return f"{value:#x}" if value else "0"


def report_lines(machine, pfn, page, reason, folio=None):
    """What ``bad_page`` and ``dump_page`` print for the struct page ``page`` of ``pfn`` (a page of
    ``folio`` when given): the BUG line, ``page:`` (refcount, mapcount, mapping, index, pfn), and,
    as ``__dump_folio`` prints the folio the page belongs to (``page_folio``: a tail's head),
    ``head:`` for a large folio, ``flags:`` (``%pGp``: the modelled flags and the node; zone and
    last-cpupid fields are not modelled) and ``page_type:`` when hugetlb's type is still set;
    then the reason. The ``raw:`` hex lines are not printed."""
    if page.kind == TAIL and folio is not None:  # the head's folio, whose type was cleared
        order, flags = folio.order, ["head"]
    else:
        order = page.order if page.kind == HEAD else None
        flags = [name for name, _ in PG_BITS
                 if (name == "head" and page.kind == HEAD) or (name == "reserved" and page.flags & PG_RESERVED)]
    value = sum(1 << bit for name, bit in PG_BITS if name in flags)
    index = pfn - folio.head if folio is not None else 0
    lines = [f"BUG: Bad page state in process {COMM}  pfn:{pfn:05x}",
             f"page: refcount:0 mapcount:0 mapping:{0:016x} index:{_hex(index)} pfn:{pfn:#x}"]
    if order is not None:
        lines.append(f"head: order:{order} mapcount:0 entire_mapcount:0 nr_pages_mapped:0 pincount:0")
    lines.append(f"flags: {_hex(value)}({'|'.join(flags + [f'node={machine.physmem.node_of(pfn)}'])})")
    if page.kind != TAIL and page.flags & PG_HUGETLB:
        lines.append("page_type: f4(hugetlb)")
    lines.append(f"page dumped because: {reason}")
    return tuple(lines)


def tail_reasons(page, index, head, pfn):
    """The reasons ``free_tail_page_prepare`` and then ``free_page_is_bad`` give for the struct
    page ``page`` at ``index`` (1..) of a compound page whose head is ``head``."""
    reasons = []
    if index >= 3 and (page.kind == HEAD or page.flags & PG_FOLIO_META):
        reasons.append("corrupted mapping in tail page")  # a head's or folio fields' word where TAIL_MAPPING belongs
    elif page.kind != TAIL:
        reasons.append("PageTail not set")
    elif (page.head if page.head >= 0 else pfn >> page.order << page.order) != head:
        reasons.append("compound_head not consistent")
    reasons.extend(_page_reasons(page))
    return reasons


def _page_reasons(page):
    """``page_bad_reason``: the last of mapcount, mapping, refcount, flags that fails."""
    reason = None
    if page.flags & PG_HUGETLB:  # hugetlb's page type still in _mapcount (a copy of the head's)
        reason = "nonzero mapcount"
    if page.flags & PG_RESERVED:
        reason = "PAGE_FLAGS_CHECK_AT_FREE flag set"
    return [reason] if reason else []


def materialised_pages(machine, start_pfn, end_pfn):
    """The first pfn of each vmemmap page of ``[start_pfn, end_pfn)`` whose frame holds a
    descriptor that may read otherwise than the machine's state says (not a plain copy of the
    struct pages that belong there), in order."""
    return [first for first, _, home in machine.structpages.materialised(start_pfn, end_pfn) if not home]


class BadPages:
    """The machine's bad page reports; journaled, so a failed operation takes its reports back."""

    def __init__(self, machine, enabled=True):
        self.machine = machine
        self.enabled = enabled
        self.reports = []

    def snapshot(self):
        return list(self.reports)

    def _report(self, bad):
        self.reports.append(bad)
        journal = self.machine.journal
        if journal.active:
            journal.record(self.reports.pop)
        self.machine.stats.add("bad_page_reports", 1)

    def free_folio_is_bad(self, folio) -> bool:
        """``free_pages_prepare`` of a HugeTLB folio going back to the buddy allocator: check the
        materialised struct pages of the folio (read through the vmemmap, as the kernel reads
        them); report each bad one. True when the folio must be leaked."""
        if not self.enabled:
            return False
        m = self.machine
        end = folio.head + (1 << folio.order)
        bad = 0
        per_page = m.structpages.per_page
        for first in materialised_pages(m, folio.head, end):
            for k, page in enumerate(m.structpages.read_range(first, per_page)):
                pfn = first + k
                if page is None:
                    continue
                if pfn == folio.head:  # __folio_clear_hugetlb cleared the head's page type before
                    reasons = _page_reasons(attrs.evolve(page, flags=page.flags & ~PG_HUGETLB))
                else:
                    reasons = tail_reasons(page, pfn - folio.head, folio.head, pfn)
                for reason in reasons:
                    bad += 1
                    if len(self.reports) < MAX_SHOWN:
                        self._report(BadPage(pfn, reason, report_lines(m, pfn, page, reason, folio)))
                    else:
                        m.stats.add("bad_page_reports", 1)
        return bad > 0

    def leak(self, pfn, nr_pages):
        """The block is not freed (``free_pages_prepare`` returned false): its frames stay owned,
        as leaked."""
        self.machine.physmem.retag(pfn, nr_pages, LEAKED)
        self.machine.stats.add("bad_page_leaked_frames", nr_pages)

    def check(self):
        """Leaked frames are exactly those counted."""
        leaked = self.machine.physmem.pages_owned(Use.LEAKED)
        counted = self.machine.stats["bad_page_leaked_frames"]
        assert leaked == counted, f"{leaked} frames owned as leaked, {counted} counted"

