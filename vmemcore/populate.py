"""Generic vmemmap population and the frame allocators behind it (``mm/sparse-vmemmap.c``).

Mirrors ``vmemmap_populate_basepages``, ``vmemmap_populate_hugepages``, ``vmemmap_alloc_block_buf``,
``vmemmap_alloc_block``, ``vmemmap_alloc_block_zero``, ``vmemmap_verify``, the sparse buffer of
``mm/sparse.c`` (``sparse_buffer_init/alloc/fini``) and the references ``VMEMMAP_POPULATE_PAGEREF``
takes on frames mapped more than once (``get_page``, ``put_page_testzero``), and the compound
devmap path: ``vmemmap_can_optimize`` (``include/linux/mm.h``), ``vmemmap_populate_compound_pages``,
``reuse_compound_section`` and ``compound_section_tail_page``. Base pages and compound pages share
one PTE walk (``vmemmap_populate_range``). Arch plugins build
their ``vmemmap_populate`` and ``vmemmap_free`` from these. The loops go a page table at a time: a
run of empty entries gets its frames in one batch (the same frames, in the same order, that one
call per entry would get), so populating a 1 PiB machine costs its page tables, not its 8 million
PMD entries one by one.
"""

import numpy as np

from . import profiles
from .archtypes import NUMA_NO_NODE
from .descriptors import lookup
from .errors import BadRequest, OutOfMemory
from .geometry import Support
from .pagetable import CONT, PRESENT, table_index_range
from .physmem import Owner, Use, block_runs
from .structpage import CopyOf
from .units import format_size

MEMMAP = Owner(Use.MEMMAP)


class SparseBuffer:
    """One node's boot memmap buffer (``sparse_buffer_init``): handed out in order, gaps freed.

    ``memmap_alloc(size, section_map_size(), ..., exact_nid=true)``, i.e. memblock_alloc_exact_nid_raw,
    fails when no free memblock range of the node holds ``nr_pages`` aligned to ``align``; the
    buffer is then absent and every ``vmemmap_alloc_block_buf`` falls back to
    ``vmemmap_alloc_block`` (memblock, any node). Where ``section_map_size()`` is a whole section's
    memory (arm64 64K pages: 512 MiB of PMD per 512 MiB section; powerpc hash-64K: 16 MiB per
    16 MiB section) the buffer is as large as the node, so any reservation on it (the kernel image)
    makes it fail."""

    def __init__(self, machine, nr_pages, align, node):
        self.machine = machine
        self.start = machine.physmem.alloc(nr_pages, node, Use.MEMMAP, align=align, exact_nid=True)
        self.cursor = self.start
        self.end = None if self.start is None else self.start + nr_pages

    def alloc(self, nr_pages, count):
        """``count`` calls of ``sparse_buffer_alloc(nr_pages pages)``: ``(granted, first_pfn)``."""
        if self.start is None or count == 0:
            return 0, None
        first = -(-self.cursor // nr_pages) * nr_pages
        granted = min(count, max((self.end - first) // nr_pages, 0))
        if granted:
            self.machine.physmem.release(self.cursor, first - self.cursor)  # the skipped alignment gap
            self.cursor = first + granted * nr_pages
        return granted, first

    def fini(self):
        """``sparse_buffer_fini``: the unused tail goes back to memblock."""
        if self.start is not None and self.cursor < self.end:
            self.machine.physmem.release(self.cursor, self.end - self.cursor)
        self.start = None


def alloc_blocks(machine, nr_pages, count, node, altmap):
    """``count`` successive ``vmemmap_alloc_block_buf`` calls of ``nr_pages`` pages each.

    Returns the pfns of the blocks granted, in order (fewer than ``count`` when the next call
    failed). With an altmap there is no fallback; otherwise the sparse buffer (at boot), then
    ``vmemmap_alloc_block``: a naturally aligned block on (or near) ``node``, from memblock at boot
    and the buddy allocator after, all the calls in one batch that hands out the same blocks, in
    the same order.
    """
    if altmap is not None:
        granted, first = altmap.alloc_blocks(nr_pages, count)
        if granted:
            if not altmap.device:
                machine.physmem.claim(first, granted * nr_pages, MEMMAP)
            return first + np.arange(granted, dtype=np.int64) * nr_pages
        return np.empty(0, dtype=np.int64)
    parts = []
    buffer = machine.sparse_buffer
    if buffer is not None:
        granted, first = buffer.alloc(nr_pages, count)
        if granted:
            parts.append(first + np.arange(granted, dtype=np.int64) * nr_pages)
            count -= granted
    if machine.physmem.booting:
        parts.append(machine.physmem.memblock_alloc(count, nr_pages, node, Use.MEMMAP, align=nr_pages))
    else:
        singles = machine.physmem.alloc_pages(count, node, Use.MEMMAP, order=(nr_pages - 1).bit_length())
        parts.append(np.array(singles, dtype=np.int64))
    return np.concatenate(parts)


def vmemmap_alloc_block_buf(machine, nr_pages, node, altmap=None):
    """``vmemmap_alloc_block_buf``: one naturally aligned block of ``nr_pages`` frames for memmap,
    from ``altmap`` if given (no fallback), else the sparse buffer at boot, memblock or the buddy
    allocator (no smaller pages: a fragmented buddy fails an order-8 block). The first pfn, or None."""
    pfns = alloc_blocks(machine, nr_pages, 1, node, altmap)
    return int(pfns[0]) if len(pfns) else None


def vmemmap_alloc_blocks(machine, nr_pages, count, node):
    """``count`` successive :func:`vmemmap_alloc_block_buf` calls without an altmap, in one batch
    (the same blocks, in the same order): an array of first pfns, shorter when a call failed."""
    return alloc_blocks(machine, nr_pages, count, node, None)


def vmemmap_alloc_page(machine, node):
    """``vmemmap_alloc_block(PAGE_SIZE, node)`` for an arch's own bookkeeping of the mapping
    (powerpc's ``vmemmap_list`` pages), owned as page-table memory. The pfn, or None."""
    return machine.physmem.alloc(1, node, Use.PAGETABLE, align=1)


def vmemmap_map_leaf(machine, addr, span, pfn, node, function="__map_kernel_page"):
    """Map one vmemmap block: the ``span``-byte leaf at ``addr`` maps the frames from ``pfn``
    (powerpc ``radix__vmemmap_create_mapping`` → ``__map_kernel_page``); missing tables are taken
    on ``node`` (:class:`OutOfMemory` when they cannot be had)."""
    geometry = machine.geometry
    depth = next((d for d, level in enumerate(geometry.levels) if level.leaf and level.entry_span == span), None)
    if depth is None:
        raise BadRequest(f"no page-table level maps {format_size(span)} leaves")
    table = machine.pagetable.walk(addr, depth, table_allocator(machine, node))
    if table is None:
        raise BadRequest(f"vmemmap address {addr:#x} is already mapped by a leaf above {geometry.levels[depth].name}")
    index = np.array([table.index(addr)])
    if table.flags[index[0]] & PRESENT:
        raise BadRequest(f"vmemmap address {addr:#x} is already mapped")
    pfns = np.array([pfn], dtype=np.int64)
    machine.pagetable.set_leaves(table, index, pfns, function=function)
    vmemmap_verify(machine, pfns, node)


def table_allocator(machine, node, ahead=None):
    """``vmemmap_alloc_block_zero(PAGE_SIZE, node)`` for page-table pages (a fragment of one where
    the level's tables are smaller, vmemcore/pgalloc.py), raising on failure; from the frames
    drawn ``ahead`` (:class:`FramesAhead`) if given."""

    def alloc(level):
        if ahead is None:
            pfn = machine.table_frames.alloc(level, node)
        else:
            got = ahead.take(1)
            pfn = int(got[0]) if len(got) else None
            if pfn is not None:
                machine.table_frames.adopt(level, pfn)
        if pfn is None:
            raise OutOfMemory(f"no memory for a {level.name} table of the vmemmap (node {node})")
        return pfn

    return alloc


def vmemmap_verify(machine, pfns, node):
    """Count entries whose backing frame is on another node (``vmemmap_verify``'s warning)."""
    if len(pfns) == 0 or node == NUMA_NO_NODE or len(machine.physmem.node_ids) < 2:
        return
    nodes = machine.physmem.nodes
    lo, hi = int(pfns.min()), int(pfns.max()) + 1
    extents = nodes.items(lo, hi)
    if len(extents) == 1 and extents[0][0] <= lo and extents[0][1] >= hi:
        offnode = 0 if extents[0][2] == node else len(pfns)
    else:
        offnode = sum(nodes.get(int(p)) != node for p in pfns)
    machine.stats.add("vmemmap_offnode_entries", offnode)


def vmemmap_populate_basepages(machine, start, end, node, altmap=None, reuse_pfn=None, *, altmap_page_allowed=None,
                               contiguous=False):
    """Map ``[start, end)`` with base pages, leaving present PTEs alone; frames from ``altmap``
    if given, or every PTE mapping the existing frame ``reuse_pfn`` (``vmemmap_populate_range``
    with a ``ptpfn``). Raises :class:`OutOfMemory` when a frame or table cannot be had.

    ``altmap_page_allowed(machine, addr, altmap)``: the arch's rule for which pages may come from
    the altmap (powerpc's ``altmap_cross_boundary``); when given, the other pages, and those the
    altmap has no room for, come from RAM instead of failing.

    ``contiguous`` (a what-if: no kernel maps the vmemmap so): each span of the PTE level's
    contiguous entries that this call maps whole gets one span-aligned block of frames and is
    written with the contiguous bit."""

    def fill(table, lo, hi):
        empty = np.flatnonzero((table.flags[lo:hi] & PRESENT) == 0) + lo
        if not len(empty):
            return
        flags = 0
        if reuse_pfn is not None:
            pfns = np.full(len(empty), reuse_pfn, dtype=np.int64)
        elif altmap is not None and altmap_page_allowed is not None:
            empty, pfns = _altmap_then_ram(machine, table, empty, node, altmap, altmap_page_allowed)
        elif contiguous and table.level.contiguous > 1:
            empty, pfns, flags = _contiguous_spans(machine, table, empty, node, altmap)
        else:
            pfns = alloc_blocks(machine, 1, len(empty), node, altmap)
        _set_ptes(machine, table, empty, pfns, node, "altmap" if altmap else "", flags)

    _fill_pte_tables(machine, start, end, node, fill)


def _fill_pte_tables(machine, start, end, node, fill, ahead=None):
    """The PTE walk both populate paths share (``vmemmap_populate_range``): each PTE table under
    ``[start, end)`` (rounded out to pages) is created if missing (from the frames drawn ``ahead``,
    if given), then ``fill(table, lo, hi)`` maps its entries ``lo..hi``, a table at a time."""
    pt = machine.pagetable
    page = machine.geometry.page_size
    depth = len(machine.geometry.levels) - 1
    alloc = table_allocator(machine, node, ahead)
    addr, end = start // page * page, -(-end // page) * page
    while addr < end:
        table = pt.walk(addr, depth, alloc)
        if table is None:
            raise BadRequest(f"vmemmap address {addr:#x} is already mapped by a leaf above the PTE level")
        lo, hi = table_index_range(table, addr, end)
        fill(table, lo, hi)
        addr = table.va(hi)


class FramesAhead:
    """Single frames drawn ahead in one sweep (for a PTE walk, :func:`draw_ahead`; for an HVO
    batch), handed out in order."""

    def __init__(self, pfns):
        self.pfns = pfns
        self.used = 0

    def take(self, count):
        """The next ``count`` frames (fewer when the draw stopped short: that allocation failed)."""
        got = self.pfns[self.used:self.used + count]
        self.used += len(got)
        return got


def draw_ahead(machine, start, end, node, wanted):
    """The single-page allocations a PTE walk of ``[start, end)`` will make, drawn in one sweep
    (:meth:`~vmemcore.physmem.PhysMem.alloc_sequence`): in walk order, each missing table
    (``vmemmap_alloc_block_zero`` of a page, top down) and then ``wanted(base, lo, hi, flags)``
    frames for the entries ``lo..hi`` of the PTE table at ``base`` (``flags``: its entries' flags,
    None while it is missing). The same pages, in the same order, as the walk's own calls would
    get, the failure (fault or no memory) at the same attempt. None where the walk's allocations
    are not all single buddy pages (booting, tables smaller or larger than a page) or it would
    meet a leaf: the caller walks allocating as it goes."""
    geometry = machine.geometry
    page = geometry.page_size
    levels = geometry.levels
    if machine.physmem.booting or any(level.alloc_bytes != page for level in levels[1:]):
        return None
    pt = machine.pagetable
    depth = len(levels) - 1
    span = levels[depth].table_span
    created = set()  # (depth, base) of the tables the walk will have created
    requests = []

    def request(purpose, count):
        if count and requests and requests[-1][0] is purpose:
            requests[-1] = (purpose, requests[-1][1] + count)
        elif count:
            requests.append((purpose, count))

    addr, end = start // page * page, -(-end // page) * page
    while addr < end:
        missing = 0
        for d in range(1, depth + 1):
            key = (d, addr >> (levels[d].shift + levels[d].bits))
            if not missing and (key in created or pt.walk(addr, d) is not None):
                continue
            parent = None if missing else pt.walk(addr, d - 1)
            if parent is not None and parent.flags[parent.index(addr)] & PRESENT:
                return None  # a leaf above the PTE level: the walk refuses it
            missing += 1
            created.add(key)
        request(Use.PAGETABLE, missing)
        base = addr // span * span
        table = pt.walk(addr, depth)
        lo, hi = (addr - base) // page, (min(end, base + span) - base) // page
        request(Use.MEMMAP, wanted(base, lo, hi, None if table is None else table.flags))
        addr = base + span
    return FramesAhead(machine.physmem.alloc_sequence(requests, node))


def _contiguous_spans(machine, table, empty, node, altmap):
    """The what-if contiguous populate: each whole span of the empty entries ``empty`` gets one
    span-aligned block (as ``vmemmap_alloc_block_buf`` of the span's size) mapped with the
    contiguous bit; the other entries, and spans no block could be had for, get a page each.
    Returns the entries (reordered), their frames and their flags."""
    n = table.level.contiguous
    _, first, count = np.unique(empty // n, return_index=True, return_counts=True)
    spans = first[count == n][:, None] + np.arange(n)  # positions in ``empty`` of whole spans
    blocks = alloc_blocks(machine, n, len(spans), node, altmap)
    taken = empty[spans[:len(blocks)].ravel()]
    rest = np.setdiff1d(empty, taken)
    pfns = np.concatenate([(blocks[:, None] + np.arange(n)).ravel(), alloc_blocks(machine, 1, len(rest), node, altmap)])
    flags = np.zeros(len(taken) + len(rest), dtype=np.uint8)
    flags[:len(taken)] = CONT
    return np.concatenate([taken, rest]), pfns, flags


def _set_ptes(machine, table, index, pfns, node, what, flags=0):
    """Map PTEs ``index`` of ``table`` to the frames ``pfns`` had; fewer frames than entries is
    :class:`OutOfMemory` (after mapping those there are: the transaction rolls them back)."""
    if len(pfns):
        if not isinstance(flags, int):
            flags = flags[:len(pfns)]
        machine.pagetable.set_leaves(table, index[:len(pfns)], pfns, flags, function="vmemmap_pte_populate")
        vmemmap_verify(machine, pfns, node)
    if len(pfns) < len(index):
        where = table.va(int(index[len(pfns)]))
        raise OutOfMemory(f"no memory for the struct pages at vmemmap address {where:#x} (node {node}{', ' + what if what else ''})")


def _altmap_then_ram(machine, table, empty, node, altmap, allowed):
    """Frames for the empty PTEs ``empty`` of ``table``: from the altmap for those ``allowed``
    (as many as it has), from RAM for the rest; returns the entries (reordered) and their frames."""
    fits = np.array([allowed(machine, table.va(int(i)), altmap) for i in empty], dtype=bool)
    from_altmap = alloc_blocks(machine, 1, int(fits.sum()), node, altmap)
    taken = empty[fits][:len(from_altmap)]
    rest = np.setdiff1d(empty, taken)
    from_ram = alloc_blocks(machine, 1, len(rest), node, None)
    return np.concatenate([taken, rest]), np.concatenate([from_altmap, from_ram])


def vmemmap_populate_hvo(machine, start, end, node, headsize, tail_pfn=None):
    """``vmemmap_populate_hvo``: a HugeTLB page's vmemmap born optimized (6.15+ boot pages): the
    first ``headsize`` bytes with their own base pages, every other PTE mapping one frame — the last
    head page (6.15-6.19) or ``tail_pfn`` (7.1's shared tail page)."""
    vmemmap_populate_basepages(machine, start, start + headsize, node)
    if tail_pfn is None:
        tail_pfn = machine.pagetable.translate(start + headsize - machine.geometry.page_size) >> machine.geometry.page_shift
    vmemmap_populate_basepages(machine, start + headsize, end, node, reuse_pfn=tail_pfn)


def vmemmap_populate_hugepages(machine, start, end, node, altmap=None, *, sub_pmd=False, leaf_allowed=None,
                               altmap_fallback=False, altmap_page_allowed=None):
    """Map ``[start, end)`` with PMD leaves; an existing leaf is kept (``vmemmap_check_pmd``) and an
    existing PTE table filled with base pages. A PMD whose block cannot be had falls back to base
    pages; with an altmap that is :class:`OutOfMemory` (no fallback) unless ``altmap_fallback``.

    The arch's policy: ``sub_pmd`` tracks leaves a range uses only in part (x86/s390
    ``vmemmap_use_new_sub_pmd``/``vmemmap_use_sub_pmd``, for :class:`~vmemcore.archtypes.InUse`
    ``SUB_PMD``); ``leaf_allowed(machine, addr, span, altmap)`` says whether the empty PMD at
    ``addr`` may get a block (powerpc: only aligned blocks inside the altmap), else it gets base
    pages; ``altmap_page_allowed`` is passed to :func:`vmemmap_populate_basepages`.
    """
    pt = machine.pagetable
    geometry = machine.geometry
    depth = geometry.pmd_depth
    span = geometry.levels[depth].entry_span
    nr_pages = span >> geometry.page_shift
    alloc = table_allocator(machine, node)

    def basepages(first, last, altmap):
        vmemmap_populate_basepages(machine, first, last, node, altmap, altmap_page_allowed=altmap_page_allowed)

    addr = start
    while addr < end:
        table = pt.walk(addr, depth, alloc)
        if table is None:
            raise BadRequest(f"vmemmap address {addr:#x} is already mapped by a leaf above the PMD level")
        lo, hi = table_index_range(table, addr, end)
        i = lo
        while i < hi:
            first, last = max(table.va(i), start), min(table.va(i + 1), end)
            if table.flags[i] & PRESENT:
                if table.is_leaf(i):
                    vmemmap_verify(machine, table.pfns[i:i + 1], node)
                    if sub_pmd:
                        machine.sub_pmd.use(first, last)
                else:
                    basepages(first, last, altmap)
                i += 1
                continue
            if leaf_allowed is not None and not leaf_allowed(machine, first, span, altmap):
                basepages(first, last, altmap)
                i += 1
                continue
            present = np.flatnonzero(table.flags[i:hi] & PRESENT)
            j = i + (int(present[0]) if len(present) else hi - i)
            if leaf_allowed is not None:  # a run of empty PMDs ends at the first one refused a block
                j = next((k for k in range(i + 1, j) if not leaf_allowed(machine, table.va(k), span, altmap)), j)
            pfns = alloc_blocks(machine, nr_pages, j - i, node, altmap)
            if len(pfns):
                pt.set_leaves(table, slice(i, i + len(pfns)), pfns, function="vmemmap_set_pmd")
                vmemmap_verify(machine, pfns, node)
                if sub_pmd:  # only the run's ends can be partly used
                    for k in sorted({i, i + len(pfns) - 1}):
                        first, last = max(table.va(k), start), min(table.va(k + 1), end)
                        if last - first != span:
                            machine.sub_pmd.use_new(first, last)
            i += len(pfns)
            if i < j:
                if altmap is not None and not altmap_fallback:
                    raise OutOfMemory(f"altmap exhausted at vmemmap address {table.va(i):#x}: no fallback to base pages")
                basepages(max(table.va(i), start), min(table.va(i + 1), end), altmap if altmap_fallback else None)
                i += 1
        addr = table.va(hi)


def free_vmemmap_frames(machine, pfn, nr_pages, altmap=None):
    """Give back the frames behind a vmemmap mapping: to the altmap (``vmem_altmap_free``; the
    frames are offline memory again, or device memory that physical memory never saw), or as
    ``free_reserved_page`` (boot frames) / ``free_pages`` (buddy frames) — free either way. A frame
    that more than one PTE maps (:class:`VmemmapRefs`) only loses a reference until the last one."""
    if machine.vmemmap_refs.put(pfn):
        return
    machine.structpages.forget(pfn, nr_pages)
    _give_back(machine, pfn, nr_pages, altmap)


def _give_back(machine, pfn, nr_pages, altmap):
    """Frames ``[pfn, pfn + nr_pages)`` back to ``altmap`` (offline memory again, unless device
    memory) or, without one, to the page allocator."""
    if altmap is None:
        machine.physmem.release(pfn, nr_pages)
        return
    altmap.release(nr_pages)
    if not altmap.device:
        machine.physmem.unclaim(pfn, nr_pages)


def give_back_frames(machine, frames, nr_pages=1, altmap=None, forget=True):
    """Give back the ``nr_pages`` frames at each of ``frames`` (sorted, their last reference gone),
    as the one-by-one frees would leave them: those ``altmap`` holds to it first, then the others,
    each a contiguous run at a time. Their contents are forgotten (unless ``forget`` is False:
    the caller forgets a batch's at once)."""
    if not len(frames):
        return
    if nr_pages == 1 and forget:
        machine.structpages.forget_many(frames)
    if altmap is not None:
        held = altmap.holds_many(frames)
        parts = [(frames[held], altmap), (frames[~held], None)]
    else:
        parts = [(frames, None)]
    for part, where in parts:
        if not len(part):
            continue
        for first, end in zip(*block_runs(part, nr_pages)):
            if nr_pages > 1:
                machine.structpages.forget(first, end - first)
            _give_back(machine, first, end - first, where)


class VmemmapRefs:
    """References on vmemmap frames that back more than one PTE: ``vmemmap_pte_populate`` with
    ``VMEMMAP_POPULATE_PAGEREF`` takes ``get_page`` on the frame it maps again, and the free path's
    ``put_page_testzero`` frees a frame only with its last reference. Kept as refcount - 1 ("extra"
    references) for frames with more than one reference, in sorted arrays of frames and counts (a
    count of 0 is no entry; they are dropped when they make up half); changes are journaled."""

    def __init__(self, journal=None):
        self._frames = np.zeros(0, dtype=np.int64)
        self._counts = np.zeros(0, dtype=np.int64)
        self._unused = 0  # entries whose count is 0
        self.journal = journal

    @property
    def extra(self) -> dict:
        """frame -> extra references, for the frames that have some."""
        held = self._counts > 0
        return dict(zip(self._frames[held].tolist(), self._counts[held].tolist()))

    def get(self, frames, times=None):
        """``get_page`` once per entry of the array ``frames`` (a frame may repeat), or ``times``
        times (an array alongside)."""
        pfns, where = np.unique(frames, return_inverse=True)
        counts = np.bincount(where.ravel(), weights=times, minlength=len(pfns)).astype(np.int64)
        old = self._extra_of(pfns)
        self._set(pfns, old, old + counts)

    def put_tables(self, tables):
        """``put_page_testzero`` once per entry of each array of ``tables`` in turn (the frames of
        page tables cleared one after another): for each, the frames (sorted, each once) whose
        last reference went there."""
        frames = np.concatenate(tables)
        # each frame's count, and the table of its last entry (unique over the reversed entries)
        pfns, back, counts = np.unique(frames[::-1], return_index=True, return_counts=True)
        if len(tables) == 1:
            last = np.zeros(len(pfns), dtype=np.int64)
        else:
            last = np.repeat(np.arange(len(tables)), [len(t) for t in tables])[len(frames) - 1 - back]
        extra = self._extra_of(pfns)
        held = extra > 0
        if held.any():
            self._set(pfns[held], extra[held], np.maximum(extra[held] - counts[held], 0))
            gone = counts > extra
            pfns, last = pfns[gone], last[gone]
        if len(tables) == 1:
            return [pfns]
        order = np.argsort(last, kind="stable")  # by table, each table's frames still sorted
        pfns, last = pfns[order], last[order]
        bounds = np.searchsorted(last, np.arange(len(tables) + 1)).tolist()
        return [pfns[a:b] for a, b in zip(bounds, bounds[1:])]

    def put(self, frame) -> bool:
        """``put_page_testzero`` on ``frame``: True while other references remain (nothing to free)."""
        pfns = np.array([frame], dtype=np.int64)
        extra = self._extra_of(pfns)
        if not extra[0]:
            return False
        self._set(pfns, extra, extra - 1)
        return True

    def _extra_of(self, pfns):
        """The extra references of each of the sorted ``pfns`` (0: none)."""
        at, found = lookup(self._frames, pfns)
        out = np.zeros(len(pfns), dtype=np.int64)
        out[found] = self._counts[at[found]]
        return out

    def _set(self, pfns, old, new):
        """The sorted ``pfns`` go from ``old`` extra references to ``new`` (arrays alongside), journaled."""
        self._apply(pfns, new)
        if self.journal is not None and self.journal.active:
            self.journal.record(self._apply, pfns, old)

    def _apply(self, pfns, values):
        at, found = lookup(self._frames, pfns)
        was, now = self._counts[at[found]] > 0, values[found] > 0
        self._unused += int(np.count_nonzero(was & ~now)) - int(np.count_nonzero(now & ~was))
        self._counts[at[found]] = values[found]
        fresh = ~found & (values > 0)
        if fresh.any():
            self._frames = np.insert(self._frames, at[fresh], pfns[fresh])
            self._counts = np.insert(self._counts, at[fresh], values[fresh])
        if self._unused and 2 * self._unused >= len(self._counts):
            held = self._counts > 0
            self._frames, self._counts, self._unused = self._frames[held], self._counts[held], 0

    def snapshot(self):
        return self.extra

    def check(self, leaf_frames):
        """Every referenced frame is mapped by exactly as many PTEs as it holds references
        (``leaf_frames``: (pfn array, pages per leaf) pairs of every present leaf)."""
        extra = self.extra
        if not extra:
            return
        keys = np.fromiter(extra, dtype=np.int64, count=len(extra))
        ptes = [p for p, n in leaf_frames if n == 1]
        ptes = np.concatenate(ptes) if ptes else keys[:0]
        pfns, counts = np.unique(ptes[np.isin(ptes, keys)], return_counts=True)
        found = dict(zip(pfns.tolist(), counts.tolist()))
        for frame, count in extra.items():
            assert found.get(frame, 0) == count + 1, (
                f"vmemmap frame {frame:#x} holds {count + 1} references but {found.get(frame, 0)} PTEs map it")


# -- compound devmap pages (device-dax): vmemmap_can_optimize and the compound populate ----------

APPLY_EVERY = 64  # PTE tables the compound populate fills before it describes their frames and takes references
VMEMMAP_RESERVE_NR = 2  # vmemmap pages a deduplicated compound page keeps of its own
# c1a6c536fb08 (v6.6, profiles.VMEMMAP_RESERVE_NR) made dedup need more than VMEMMAP_RESERVE_NR
# vmemmap pages per compound page; before, any compound page (vmemmap_shift > 0) took the compound path

def vmemmap_can_optimize(machine, altmap, pgmap) -> Support:
    """``vmemmap_can_optimize``: the arch opts in (hook ``vmemcore_dax_vmemmap_support``), struct
    page is a power of two, there is no altmap, and a compound page spans more than
    ``VMEMMAP_RESERVE_NR`` vmemmap pages (before 6.6: is a compound page at all). A no says why."""
    arch = machine.hooks.dax_vmemmap_support(machine)
    if not arch.supported:
        return arch
    size = machine.sparse_geometry.struct_page_size
    if size & (size - 1):
        return Support(False, f"struct page is {size} bytes, not a power of two")
    if altmap is not None:
        return Support(False, "the memmap comes from the device (altmap), which is never deduplicated")
    nr = pgmap.vmemmap_nr
    if nr == 1:
        return Support(False, "base pages (vmemmap_shift 0): no compound pages")
    if machine.profile.has(profiles.VMEMMAP_RESERVE_NR) and nr * size >> machine.geometry.page_shift <= VMEMMAP_RESERVE_NR:
        return Support(False, f"a compound page of {nr} pages has {format_size(nr * size)} of struct pages: "
                              f"not more than VMEMMAP_RESERVE_NR ({VMEMMAP_RESERVE_NR}) vmemmap pages")
    return Support(True)


def _range_start(machine, pfn, pgmap):
    """First pfn of the range of ``pgmap`` that holds ``pfn``."""
    shift = machine.geometry.page_shift
    return next(r.start >> shift for r in pgmap.ranges if r.start >> shift <= pfn < (r.start + r.size) >> shift)


def reuse_compound_section(machine, start_pfn, pgmap) -> bool:
    """``reuse_compound_section``: does the section piece at ``start_pfn`` continue a compound page
    begun in an earlier section? (Its offset into the range being onlined is not compound-aligned,
    and compound pages are larger than a sub-section.)"""
    nr = pgmap.vmemmap_nr
    offset = start_pfn - _range_start(machine, start_pfn, pgmap)
    return offset % nr != 0 and nr > machine.sparse_geometry.pages_per_subsection


def compound_section_tail_page(machine, start) -> int:
    """``compound_section_tail_page``: the frame behind the PTE just below ``start`` — the previous
    section's last vmemmap page, which holds tail struct pages only (sections are populated in
    ascending order)."""
    phys = machine.pagetable.translate(start - machine.geometry.page_size)
    if phys is None:
        raise BadRequest(f"the memmap below vmemmap address {start:#x} is not populated: sections must come in ascending order")
    return phys >> machine.geometry.page_shift


def _map_reused(machine, table, index, frames, node):
    """Map PTEs ``index`` of ``table`` to existing ``frames`` (the caller takes a reference per PTE)."""
    if len(index):
        machine.pagetable.set_leaves(table, index, frames, function="vmemmap_pte_populate")
        vmemmap_verify(machine, frames, node)


def vmemmap_populate_compound_pages(machine, start_pfn, start, end, node, pgmap):
    """``vmemmap_populate_compound_pages``: map ``[start, end)``, the memmap of the section piece at
    ``start_pfn``, with writable PTEs (``PAGE_KERNEL``). Frames come in the kernel's order (head,
    first tail, for each compound page; page tables when the walk reaches them); present PTEs are
    left alone. Raises :class:`OutOfMemory` when a frame or table cannot be had."""
    page = machine.geometry.page_size
    csize = pgmap.vmemmap_nr * machine.sparse_geometry.struct_page_size
    if end - start < page:
        raise BadRequest(
            f"the memmap of a section piece ({format_size(end - start)}) is smaller than a "
            f"{format_size(page)} page: the generic compound populate of kernel {machine.profile.name} maps "
            "vmemmap pages past it (the crash VMEMMAP_RESERVE_NR fixed): not simulated")
    if csize < 2 * page:
        raise BadRequest(
            f"kernel {machine.profile.name} maps vmemmap pages past the range for compound pages of "
            f"{format_size(csize)} of struct pages (the crash VMEMMAP_RESERVE_NR fixed): not simulated")
    reuse = None
    if reuse_compound_section(machine, start_pfn, pgmap):
        reuse = compound_section_tail_page(machine, start)
    per = min(end - start, csize) // page  # vmemmap pages per step of the kernel's loop
    sparse = machine.sparse_geometry
    carried = []  # (compound page, frame of its first tail page) of the last one a table began
    shapes = {}  # (first entry's vmemmap page in the range, lo, hi) -> where the table's compound pages lie
    described, firsts = [], []  # gathered over the walk, applied every APPLY_EVERY tables and at its end
    shared_frames, shared_counts = [], []

    def shape(base, lo, hi):
        """Each entry's compound page (counted from the range's start) and vmemmap page within it:
        the same for every table the range crosses alike, so worked out once per kind of table."""
        step = (base - start) // page + lo
        key = (step % per, lo, hi)
        found = shapes.get(key)
        if found is None:
            compound, pos = np.divmod(step % per + np.arange(hi - lo), per)
            found = shapes[key] = (compound, pos, np.flatnonzero(pos < 2), np.flatnonzero(pos == 1),
                                   np.flatnonzero(pos >= 2))
        compound, pos, own, first_tail, shared = found
        return compound + step // per, pos, own, first_tail, shared

    def own_pages(base, lo, hi, flags):  # the head and first tail pages still to map
        _, _, own, _, _ = shape(base, lo, hi)
        return len(own) if flags is None else int(np.count_nonzero((flags[lo:hi][own] & PRESENT) == 0))

    ahead = None if reuse is not None else draw_ahead(machine, start, end, node, own_pages)

    def fill(table, lo, hi):
        index = np.arange(lo, hi)
        empty = (table.flags[lo:hi] & PRESENT) == 0
        if reuse is not None:
            count = int(empty.sum())
            _map_reused(machine, table, index[empty], np.full(count, reuse, dtype=np.int64), node)
            shared_frames.append(np.array([reuse], dtype=np.int64))
            shared_counts.append(np.array([count], dtype=np.int64))
            return
        compound, pos, own, first_tail, shared = shape(table.base, lo, hi)
        if not empty.all():
            own, shared = own[empty[own]], shared[empty[shared]]
        got = alloc_blocks(machine, 1, len(own), node, None) if ahead is None else ahead.take(len(own))
        _set_ptes(machine, table, own + lo, got, node, "compound devmap")
        mapped = own[pos[own] == 1]  # the first tail pages: shared, so described
        described.append(table.pfns[mapped + lo])
        firsts.append((table.va(0) - sparse.vmemmap_base + (mapped + lo) * page) // sparse.struct_page_size)
        # each shared PTE maps its compound page's first tail frame: in this table, or carried
        # over from the table where a compound page larger than a table began (ascending order)
        heads, frames = compound[first_tail], table.pfns[first_tail + lo]
        if carried:
            heads, frames = np.concatenate(([carried[0][0]], heads)), np.concatenate(([carried[0][1]], frames))
        if len(heads):
            carried[:] = [(int(heads[-1]), int(frames[-1]))]
        which = np.searchsorted(heads, compound[shared])
        _map_reused(machine, table, shared + lo, frames[which], node)
        counts = np.bincount(which, minlength=len(heads))
        shared_frames.append(frames[counts > 0])
        shared_counts.append(counts[counts > 0])

    def apply():
        if described:
            machine.structpages.describe_plain(np.concatenate(described), np.concatenate(firsts))
        if shared_frames:
            machine.vmemmap_refs.get(np.concatenate(shared_frames), np.concatenate(shared_counts))
        for gathered in (described, firsts, shared_frames, shared_counts):
            gathered.clear()

    def fill_and_apply(table, lo, hi):
        fill(table, lo, hi)
        if len(shared_frames) == APPLY_EVERY:
            apply()

    try:
        _fill_pte_tables(machine, start, end, node, fill_and_apply, ahead)
    finally:  # what was mapped, even when the walk stopped short (the caller tears it down)
        apply()


def vmemmap_populate_compound_by_address(machine, start_pfn, start, end, node, pgmap):
    """powerpc radix's ``vmemmap_populate_compound_pages`` (``radix_pgtable.c``, 6.6+, f2b79c0d7968),
    which finds each compound page's shared tail page by address instead of by section: walk
    ``[start, end)`` a page at a time (``start`` need not be page-aligned: a 64K page holds the
    memmap of four sections), counting the kernel's ``addr_pfn`` from ``start_pfn``;

    - a PMD leaf already there (``pmd_leaf``: a nearby request's 2 MiB mapping) is skipped whole;
    - a present PTE is skipped (a compound page's head or tail page mapped by an earlier call);
    - at a compound page's head (``addr_pfn`` a multiple of ``vmemmap_nr``) the head page and the
      next page get frames of their own (``radix__vmemmap_populate_address``: -ENOMEM if the next
      page lies under a PMD leaf);
    - elsewhere ``vmemmap_compound_tail_page`` looks ``addr_pfn``'s offset into its compound page back
      from ``addr`` plus one page, maps that page (and the one before it) if missing, and this PTE
      maps its frame with a reference (``get_page``); a page under a PMD leaf gets a frame of its own.

    ``addr_pfn`` advances by one per vmemmap page, not by the struct pages a page holds (as the
    kernel's code does; "fix wrong addr_pfn tracking in compound vmemmap population", 2026, is in
    no modelled release): where a call spans more than a page (4K pages) the tail page is looked for
    in the wrong place, and pages get frames of their own or share another tail page of the same
    compound page. Raises :class:`OutOfMemory` when a frame or table cannot be had."""
    pt = machine.pagetable
    geometry = machine.geometry
    page, shift = geometry.page_size, geometry.page_shift
    pmd_depth, pte_depth = geometry.pmd_depth, len(geometry.levels) - 1
    pmd_span = geometry.levels[pmd_depth].entry_span
    struct_page = machine.sparse_geometry.struct_page_size
    alloc = table_allocator(machine, node)
    nr = pgmap.vmemmap_nr

    def under_leaf(addr):  # vmemmap_{pud,pmd}_alloc, then pmd_leaf()
        table = pt.walk(addr, pmd_depth, alloc)
        if table is None:
            raise BadRequest(f"vmemmap address {addr:#x} is already mapped by a leaf above the PMD level")
        return table.is_leaf(table.index(addr))

    def pte(addr):  # vmemmap_pte_alloc + pte_offset_kernel
        table = pt.walk(addr, pte_depth, alloc)
        return table, table.index(addr)

    def own_page(addr):  # radix__vmemmap_pte_populate without reuse: a new frame for a none PTE
        table, i = pte(addr)
        if not table.flags[i] & PRESENT:
            _set_ptes(machine, table, np.array([i]), alloc_blocks(machine, 1, 1, node, None), node, "compound devmap")
        return table, i

    def populate_address(addr):  # radix__vmemmap_populate_address
        return None if under_leaf(addr) else own_page(addr)

    def tail_page(addr, offset):  # vmemmap_compound_tail_page
        map_addr = addr - offset * struct_page + page
        if under_leaf(map_addr):
            return None
        table, i = pte(map_addr)
        if table.flags[i] & PRESENT:
            return table, i
        if populate_address(map_addr - page) is None:
            return None
        return own_page(map_addr)

    addr, addr_pfn = start, start_pfn
    while addr < end:
        if under_leaf(addr):
            addr_pfn += pmd_span >> shift
            addr = min((addr // pmd_span + 1) * pmd_span, end)
            continue
        table, i = pte(addr)
        if table.flags[i] & PRESENT:
            addr_pfn, addr = addr_pfn + 1, addr + page
            continue
        offset = addr_pfn % nr
        if offset == 0:
            own_page(addr)
            if populate_address(addr + page) is None:
                raise OutOfMemory(f"the first tail page of the compound page at vmemmap address {addr:#x} lies under a "
                                  "PMD leaf (radix__vmemmap_populate_address: -ENOMEM)")
            addr_pfn, addr = addr_pfn + 2, addr + 2 * page
            continue
        found = tail_page(addr, offset)
        if found is None:
            own_page(addr)
        else:
            source, j = found
            frame = int(source.pfns[j])
            table, i = pte(addr)
            if not table.flags[i] & PRESENT:  # the tail page may be this very page
                if frame not in machine.structpages.contents:  # shared from now on: its contents matter
                    machine.structpages.describe(frame, CopyOf(machine.sparse_geometry.page_to_pfn(source.va(j))))
                frames = np.array([frame], dtype=np.int64)
                _map_reused(machine, table, np.array([i]), frames, node)
                machine.vmemmap_refs.get(frames)
        addr_pfn, addr = addr_pfn + 1, addr + page
