"""Simulated physical memory: nodes, the boot (memblock) and buddy allocators, frame owners.

Mirrors ``mm/memblock.c`` (top-down boot allocation, ``exact_nid``, ``memblock_free_all``) and
``mm/page_alloc.c`` (order allocations from the free lists of :mod:`vmemcore.buddy` with the
zonelist's node fallback, ``alloc_contig_pages`` for blocks above ``MAX_PAGE_ORDER``), at the level
of frames and owners. Every frame of present memory has exactly one owner; ``check()`` proves that
the totals add up.

numpy is imported inside the functions that use it: ``vmemcore --help`` loads this module (through
the scenario validator) and must not load numpy.
"""

import enum
import itertools
from contextlib import contextmanager
from errno import EEXIST

from attrs import frozen

from .buddy import FreeLists
from .errors import BadRequest, SimulatorLimit
from .rangemap import RangeMap
from .units import pfn_range


class Use(enum.Enum):
    FREE = "free"
    MEMMAP = "memmap"
    PAGETABLE = "pagetable"
    HUGETLB = "hugetlb"
    OFFLINE = "offline"  # present (hot-added) but not online: in no allocator
    LEAKED = "leaked"  # a bad page the free path refused (bad_page in mm/page_alloc.c): never freed
    PINNED = "pinned"  # unmovable pages a workload holds (memory.fragment)
    KERNEL_IMAGE = "kernel image"  # _text to _end, memblock_reserve'd in setup_arch: never freed


@frozen
class Owner:
    """Who holds a frame; ``reserved`` marks boot (memblock) memory, PageReserved in the kernel."""

    use: Use
    reserved: bool = False
    self_hosted: bool = False  # memmap carved from the memory it describes (PageVmemmapSelfHosted)

    def __str__(self):
        return self.use.value + (" (boot)" if self.reserved else "") + (" (self-hosted)" if self.self_hosted else "")


FREE = Owner(Use.FREE)
OFFLINE = Owner(Use.OFFLINE)
KERNEL_IMAGE = Owner(Use.KERNEL_IMAGE, reserved=True)
FEW_BLOCKS = 64  # release_blocks of fewer blocks goes the way of release_many


def block_runs(ordered, step):
    """The runs of the sorted array ``ordered`` of block starts ``step`` apart: lists of the
    runs' first pfns and of their ends (past their last block)."""
    import numpy as np

    breaks = np.flatnonzero(np.diff(ordered) != step) + 1
    return ordered[np.r_[0, breaks]].tolist(), (ordered[np.r_[breaks - 1, -1]] + step).tolist()


class Zone(enum.StrEnum):
    """The zone online memory is in; the value is the name users write and reports show."""

    NORMAL = "normal"  # ZONE_NORMAL
    MOVABLE = "movable"  # ZONE_MOVABLE


NORMAL, MOVABLE = Zone.NORMAL, Zone.MOVABLE


@frozen
class AllocRequest:
    """One allocation attempt, as fault-injection predicates see it."""

    allocator: str  # "memblock" or "buddy"
    nr_pages: int
    node: int
    purpose: Use
    index: int  # 1-based count of allocation attempts since the injector was armed


class FaultInjector:
    """Fails chosen allocations: the Nth attempt after arming, or those a predicate picks."""

    def __init__(self):
        self.attempts = 0
        self.failed = 0
        self._nth = None
        self._predicate = None

    def arm(self, nth=None, predicate=None):
        """Start counting attempts from zero; fail attempt ``nth`` (1-based) and/or those ``predicate`` picks."""
        self.attempts = 0
        self.failed = 0
        self._nth = nth
        self._predicate = predicate

    def disarm(self):
        self._nth = None
        self._predicate = None

    @property
    def asks_predicate(self) -> bool:
        """Does each attempt cost a predicate call (so a sweep should not ask past what memory holds)?"""
        return self._predicate is not None

    def should_fail(self, allocator, nr_pages, node, purpose) -> bool:
        return self.successes_before_failure(1, allocator, nr_pages, node, purpose) == 0

    def successes_before_failure(self, count, allocator, nr_pages, node, purpose) -> int:
        """Make up to ``count`` attempts; how many succeed before the first failure (which, if
        any, is consumed too)."""
        first = self.attempts + 1
        stop = first + count
        if self._nth is not None and first <= self._nth < stop:
            stop = self._nth
        if self._predicate is not None:
            for index in range(first, stop):
                if self._predicate(AllocRequest(allocator, nr_pages, node, purpose, index)):
                    stop = index
                    break
        granted = stop - first
        self.attempts += granted
        if granted < count:
            self.attempts += 1
            self.failed += 1
        return granted

    def ran_out(self, before, got):
        """The allocator ran out of memory after ``got`` successes counted from the state
        ``before`` (``(attempts, failed)``), ahead of any injected failure: the attempt that found
        nothing ends the sequence, and no injected failure happened."""
        self.attempts, self.failed = before[0] + got + 1, before[1]


class PhysMem:
    """Present memory by node, who owns each frame, and the allocators that hand frames out."""

    def __init__(self, page_shift, max_pfn, journal=None, max_order=10, free_core_to_tail=True):
        self.page_shift = page_shift
        self.max_pfn = max_pfn
        self.journal = journal
        self.buddy = FreeLists(max_order, journal)  # the buddy allocator's free lists, filled at end_boot
        self.free_core_to_tail = free_core_to_tail  # 5.10+: __free_pages_core frees with FPI_TO_TAIL
        self.nodes = RangeMap(journal)  # pfn -> node id of present memory
        self.frames = RangeMap(journal)  # pfn -> Owner
        self.zones = RangeMap(journal)  # pfn -> zone of online memory (NORMAL or MOVABLE)
        self._free = {}  # node -> RangeMap of free pfns (value: their zone)
        self.booting = True  # memblock until boot ends, buddy afterwards
        self.faults = FaultInjector()
        self._gathered = None  # frees waiting for the end of releases_gathered(), in order

    def _pfns(self, start_pfn, end_pfn):
        """``[start_pfn, end_pfn)`` for a message, labelled, with its physical addresses."""
        return pfn_range(start_pfn, end_pfn, self.page_shift)

    # -- layout ---------------------------------------------------------------------------------
    def add_range(self, node, start_pfn, end_pfn):
        """Declare ``[start_pfn, end_pfn)`` as present memory of ``node`` (before boot)."""
        if not 0 <= start_pfn < end_pfn <= self.max_pfn:
            raise BadRequest(f"{self._pfns(start_pfn, end_pfn)} lie outside pfns [0, {self.max_pfn:#x})")
        if self.nodes.covered(start_pfn, end_pfn):
            raise BadRequest(f"{self._pfns(start_pfn, end_pfn)} overlap memory already present")
        self.nodes.set(start_pfn, end_pfn, node)
        self.frames.set(start_pfn, end_pfn, FREE)
        self.zones.set(start_pfn, end_pfn, NORMAL)
        self._free_map(node).set(start_pfn, end_pfn, NORMAL)

    def reserve(self, start_pfn, end_pfn, owner):
        """``memblock_reserve`` of free boot memory for ``owner`` (the kernel image): the frames
        leave memblock's free ranges, so ``memblock_free_all`` never hands them to the buddy
        allocator and they are never managed."""
        if not self.booting:
            raise BadRequest(f"{self._pfns(start_pfn, end_pfn)} cannot be reserved in memblock after boot")
        self._expect(start_pfn, end_pfn, FREE, "reserved")
        self._take(start_pfn, end_pfn - start_pfn, owner)

    def _free_map(self, node):
        if node not in self._free:
            self._free[node] = RangeMap(self.journal)
            if self.journal is not None and self.journal.active:
                self.journal.record(lambda: self._free.pop(node))
        return self._free[node]

    # -- memory hotplug -------------------------------------------------------------------------
    def hot_add(self, node, start_pfn, end_pfn):
        """Hot-added memory: present, every frame offline (in no allocator) until onlined."""
        if self.nodes.covered(start_pfn, end_pfn):
            raise BadRequest(f"{self._pfns(start_pfn, end_pfn)} overlap memory already present (-EEXIST)", errno=-EEXIST)
        self.nodes.set(start_pfn, end_pfn, node)
        self.frames.set(start_pfn, end_pfn, OFFLINE)
        self._free_map(node)

    def hot_remove(self, start_pfn, end_pfn):
        """Offline memory leaves: no longer present. A node left without memory goes too
        (``try_offline_node`` in ``mm/memory_hotplug.c``: no present pages, so ``node_set_offline``)."""
        self._expect(start_pfn, end_pfn, OFFLINE, "removed")
        nodes = {node for _, _, node in self.nodes.items(start_pfn, end_pfn)}
        self.frames.set(start_pfn, end_pfn, None)
        self.nodes.set(start_pfn, end_pfn, None)
        for node in nodes:
            if not self.present_pages(node):
                free = self._free.pop(node)
                if self.journal is not None and self.journal.active:
                    self.journal.record(lambda node=node, free=free: self._free.__setitem__(node, free))

    def online(self, start_pfn, end_pfn, zone):
        """``online_pages``: offline frames go to the buddy allocator, in ``zone``, through
        ``generic_online_page`` → ``__free_pages_core`` (at the lists' tails since 5.10)."""
        self._expect(start_pfn, end_pfn, OFFLINE, "onlined")
        self.zones.set(start_pfn, end_pfn, zone)
        self.release(start_pfn, end_pfn - start_pfn, to_tail=self.free_core_to_tail)

    def offline(self, start_pfn, end_pfn):
        """``offline_pages`` after isolation: free frames leave the buddy allocator."""
        self._expect(start_pfn, end_pfn, FREE, "offlined")
        for start, end, node in self.nodes.items(start_pfn, end_pfn):
            self._free[node].set(start, end, None)
        self.buddy.take(start_pfn, end_pfn)
        self.frames.set(start_pfn, end_pfn, OFFLINE)
        self.zones.set(start_pfn, end_pfn, None)

    def _expect(self, start_pfn, end_pfn, owner, what):
        for start, end, value in self.frames.items(start_pfn, end_pfn):
            if value != owner:
                raise BadRequest(f"the frames of {self._pfns(start, end)} are {value}, so they cannot be {what}")
        if self.frames.covered(start_pfn, end_pfn) != end_pfn - start_pfn:
            raise BadRequest(f"{self._pfns(start_pfn, end_pfn)} are not all present memory")

    @property
    def node_ids(self):
        return sorted(self._free)

    def node_of(self, pfn):
        return self.nodes.get(pfn)

    def present_pages(self, node=None) -> int:
        if node is None:
            return sum(self.nodes.totals.values())
        return self.nodes.totals.get(node, 0)

    def owner(self, pfn):
        return self.frames.get(pfn)

    def pages_owned(self, use, reserved=None) -> int:
        return sum(n for owner, n in self.frames.totals.items() if owner.use is use and reserved in (None, owner.reserved))

    def free_pages(self, node=None, zone=None) -> int:
        nodes = self._free if node is None else [node]
        return sum(count for n in nodes if n in self._free for z, count in self._free[n].totals.items() if zone in (None, z))

    # -- allocation -----------------------------------------------------------------------------
    def alloc(self, nr_pages, node, purpose, align=None, exact_nid=False, movable=False):
        """Allocate ``nr_pages`` frames for ``purpose``; the first pfn, or None when it fails.

        While booting this is memblock (top-down, aligned to ``align`` pages, other nodes tried
        unless ``exact_nid``), later the buddy allocator (a block of the order that holds
        ``nr_pages`` from the free lists, the node's zonelist fallback to other nodes; above
        ``MAX_PAGE_ORDER``, ``alloc_contig_pages``). Only ``movable`` allocations may come from
        ZONE_MOVABLE, and they try it first.
        """
        if self.booting:
            runs = self._memblock_runs(1, nr_pages, node, purpose, align or 1, exact_nid, movable)
            return runs[0][0] if runs else None
        if self.faults.should_fail("buddy", nr_pages, node, purpose):
            return None
        order = max(nr_pages - 1, 0).bit_length()
        pfns = self._alloc_buddy(1, order, node, exact_nid, movable)
        if not len(pfns):
            return None
        self._take(int(pfns[0]), 1 << order, Owner(purpose))
        return int(pfns[0])

    def memblock_alloc(self, count, nr_pages, node, purpose, align=1, exact_nid=False, movable=False):
        """``count`` successive boot allocations of ``nr_pages`` frames aligned to ``align`` pages,
        stopping at the first failure: an array of first pfns, in the order the calls get them.

        Each call is ``memblock_alloc_range_nid`` → ``memblock_find_in_range_node`` top down
        (``__memblock_find_range_top_down``, mm/memblock.c): the highest aligned block of the highest
        free range of the node that holds one, then (unless ``exact_nid``) of the other nodes.
        What a call leaves free above its block is less than ``align`` pages and holds no aligned
        block, so successive calls walk down each free range in steps of ``nr_pages`` rounded up to
        ``align``, and the next range only when the block no longer fits: a range's blocks are
        taken at once, with the same frames, owners and fault-injection attempts as one call each."""
        import numpy as np

        runs = self._memblock_runs(count, nr_pages, node, purpose, align, exact_nid, movable)
        return (np.concatenate([np.arange(r.start, r.stop, r.step, dtype=np.int64) for r in runs]) if runs
                else np.empty(0, dtype=np.int64))

    def _memblock_runs(self, count, nr_pages, node, purpose, align, exact_nid, movable):
        """:meth:`memblock_alloc`'s blocks as ranges of first pfns, one per free range walked down."""
        before = self.faults.attempts, self.faults.failed
        granted = self.faults.successes_before_failure(count, "memblock", nr_pages, node, purpose)
        owner = Owner(purpose, reserved=True)
        step = -(-nr_pages // align) * align
        runs, left = [], granted
        for candidate in self._node_order(node, exact_nid):
            for zone in self._zone_order(movable):
                for start, end, _ in self._free[candidate].items_reversed(zone) if left else ():
                    top = (end - nr_pages) // align * align
                    if top < start:
                        continue
                    n = min(left, (top - start) // step + 1)
                    pfns = range(top, top - n * step, -step)
                    if step == nr_pages:  # the blocks follow on: one run
                        self._take(pfns[-1], n * nr_pages, owner)
                    else:
                        for pfn in pfns:
                            self._take(pfn, nr_pages, owner)
                    runs.append(pfns)
                    left -= n
                    if not left:
                        break
        if left:
            self.faults.ran_out(before, granted - left)
        return runs

    def alloc_pages(self, count, node, purpose, order=0, exact_nid=False, movable=False):
        """``count`` successive buddy allocations of ``2**order`` pages, stopping at the first
        failure: the same blocks, in the same order, as ``count`` calls of ``alloc``, taken off
        the free lists a run at a time (fault injection sees the attempts up to the one that finds
        memory run out, not the ``count`` asked for). Returns the list of first pfns granted."""
        import numpy as np

        size = 1 << order
        before = self.faults.attempts, self.faults.failed
        if self.faults.asks_predicate:  # no attempt past the one that finds memory run out
            count = min(count, self._blocks_available(order, node, exact_nid, movable) + 1)
        granted = self.faults.successes_before_failure(count, "buddy", size, node, purpose)
        pfns = self._alloc_buddy(granted, order, node, exact_nid, movable)
        if len(pfns) < granted:
            self.faults.ran_out(before, len(pfns))
        self._take_runs(pfns, size, [Owner(purpose)], np.zeros(len(pfns), dtype=np.uint8))
        return pfns.tolist()

    def alloc_sequence(self, requests, node):
        """Successive single-page buddy allocations (``alloc(1, node, purpose)`` each) for the
        ``(purpose, count)`` pairs of ``requests`` in turn, stopping at the first failure: the same
        pages, in the same order, as those calls (or :meth:`alloc_pages` calls), taken off the free
        lists in one sweep. Fault injection sees each attempt with its purpose (up to the one
        that finds memory run out). Returns the array of pfns granted."""
        import numpy as np

        before, wanted = (self.faults.attempts, self.faults.failed), []
        possible = sum(count for _, count in requests)
        if self.faults.asks_predicate:  # no attempt past the one that finds memory run out
            possible = min(possible, self._blocks_available(0, node, False, False) + 1)
        for purpose, count in requests:
            granted = self.faults.successes_before_failure(min(count, possible), "buddy", 1, node, purpose)
            wanted.append(granted)
            possible -= granted
            if granted < count:
                break
        pfns = self._alloc_buddy(sum(wanted), 0, node, False, False)
        if len(pfns) < sum(wanted):
            self.faults.ran_out(before, len(pfns))
        owners = [Owner(purpose) for purpose, _ in requests[:len(wanted)]]
        which = np.repeat(np.arange(len(wanted), dtype=np.min_scalar_type(len(wanted))), wanted)[:len(pfns)]
        self._take_runs(pfns, 1, owners, which)
        return pfns

    def _take_runs(self, pfns, size, owners, which):
        """:meth:`_take` of the blocks of ``size`` pages at ``pfns``, block i for ``owners[which[i]]``,
        a run of adjacent blocks of one owner at a time (the free map a run of adjacent blocks)."""
        import numpy as np

        if not len(pfns):
            return
        if len(pfns) <= 64:  # a few pages (a folio's vmemmap): numpy's per-call cost would dominate
            blocks = sorted(zip(pfns.tolist(), which.tolist()))
            for owned in (True, False):
                start, end, whose = blocks[0][0], blocks[0][0] + size, blocks[0][1]
                for pfn, who in blocks[1:] + [(None, None)]:
                    if pfn == end and (who == whose or not owned):
                        end += size
                        continue
                    if owned:
                        self.frames.set(start, end, owners[whose])
                    else:
                        self._leave_free_map(start, end - start)
                    if pfn is not None:
                        start, end, whose = pfn, pfn + size, who
            return
        order = np.argsort(pfns, kind="stable")
        ordered, which = pfns[order], which[order]
        del order  # millions of pages: one temporary the size of the pfns at a time
        apart = np.diff(ordered) != size
        for cuts, owned in ((apart | (np.diff(which) != 0), True), (apart, False)):
            bounds = np.concatenate(([0], np.flatnonzero(cuts) + 1, [len(ordered)]))
            firsts, counts = ordered[bounds[:-1]].tolist(), (np.diff(bounds) * size).tolist()
            if owned:  # the runs of each owner, as one change of the frame map
                self.frames.set_many([(pfn, pfn + n, owners[k]) for pfn, n, k in
                                      zip(firsts, counts, which[bounds[:-1]].tolist())])
            else:
                for pfn, nr_pages in zip(firsts, counts):
                    self._leave_free_map(pfn, nr_pages)

    def _alloc_buddy(self, count, order, node, exact_nid, movable):
        """Up to ``count`` blocks of ``order`` off the free lists, zonelist order (each node's
        zones, then the next node): an array of first pfns."""
        import numpy as np

        if order > self.buddy.max_order:
            return self._alloc_contig(count, order, node, exact_nid, movable)
        parts, left = [], count
        for candidate in self._node_order(node, exact_nid):
            for zone in self._zone_order(movable):
                if left:
                    got = self.buddy.alloc_many(left, order, candidate, zone)
                    parts.append(got)
                    left -= len(got)
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)

    def _blocks_available(self, order, node, exact_nid, movable) -> int:
        """How many blocks of ``order`` successive allocations get before one finds nothing (for
        ``alloc_contig_pages`` sizes, at most the free pages over the block size)."""
        nodes, zones = self._node_order(node, exact_nid), self._zone_order(movable)
        if order > self.buddy.max_order:
            return sum(self.free_pages(n, z) for n in nodes for z in zones) >> order
        return sum(self.buddy.blocks_available(order, n, z) for n in nodes for z in zones)

    def _alloc_contig(self, count, order, node, exact_nid, movable):
        """``alloc_contig_pages``: each block the lowest naturally aligned range of the zone whose
        every page is free (``pfn_range_valid_contig``; nothing here could be migrated away), taken
        off the lists (``alloc_contig_range``)."""
        import numpy as np

        size, pfns = 1 << order, []
        for candidate in self._node_order(node, exact_nid):
            free = self._free.get(candidate)
            for zone in self._zone_order(movable):
                for start, end, value in free.items():
                    if len(pfns) == count:
                        break
                    first = -(-start // size) * size
                    if value != zone or first + size > end:
                        continue
                    take = min(count - len(pfns), (end - first) // size)
                    self.buddy.take(first, first + take * size)
                    pfns.extend(range(first, first + take * size, size))
        return np.array(pfns, dtype=np.int64)

    def _node_order(self, node, exact_nid):
        """The node, then (unless ``exact_nid``) the others: with the default distance table every
        remote node is equally far (20), and the zonelist breaks ties by the lowest node id."""
        nodes = self.node_ids
        if exact_nid:
            return [node] if node in nodes else []
        return ([node] if node in nodes else []) + [n for n in nodes if n != node]

    @staticmethod
    def _zone_order(movable):
        return (MOVABLE, NORMAL) if movable else (NORMAL,)

    def _take(self, pfn, nr_pages, owner):
        """Frames leave the free map (the free lists, if any, let them go already)."""
        self.frames.set(pfn, pfn + nr_pages, owner)
        self._leave_free_map(pfn, nr_pages)

    def _leave_free_map(self, pfn, nr_pages):
        for start, end, node in self.nodes.items(pfn, pfn + nr_pages):
            self._free[node].set(start, end, None)

    def pin_pattern(self, node, every, pin):
        """Fragment ``node``'s free ZONE_NORMAL memory as a workload's unmovable allocations would:
        pin ``pin`` pages at the start of every ``every``-aligned stretch whose first ``pin`` pages are
        free, so that no free block of ``every`` pages (buddy blocks are naturally aligned) is left.
        Returns the pages pinned. Cost: one change per stretch of free memory; more stretches than
        ``SimulatorLimit.MAX_RECORDS`` are refused before any is pinned."""
        free = self._free.get(node)
        if free is None:
            return 0
        stretches = [range(-(-start // every) * every, end - pin + 1, every)
                     for start, end, zone in free.items() if zone == NORMAL]
        count = sum(map(len, stretches))
        if count > SimulatorLimit.MAX_RECORDS:
            raise SimulatorLimit(f"memory.fragment of node {node}: {count:,} pinned stretches, more than the "
                                 f"{SimulatorLimit.MAX_RECORDS:,} the simulator keeps records of in one operation")
        for pfn in itertools.chain.from_iterable(stretches):
            self.buddy.take(pfn, pfn + pin)
            self._take(pfn, pin, Owner(Use.PINNED))
        return count * pin

    def claim(self, pfn, nr_pages, owner):
        """Take specific offline frames (handed out by an altmap from memory being added)."""
        self._expect(pfn, pfn + nr_pages, OFFLINE, "claimed")
        self.frames.set(pfn, pfn + nr_pages, owner)

    def unclaim(self, pfn, nr_pages):
        """Frames an altmap gets back: offline again."""
        self.frames.set(pfn, pfn + nr_pages, OFFLINE)

    def release(self, pfn, nr_pages, to_tail=False):
        """Give frames back: they become free (``free_pages``, ``free_reserved_page``, memblock free).
        After boot they go to the free lists as the largest aligned blocks, lowest first, each
        merged with its buddies (``__free_one_page``), at the tail with ``to_tail`` (``FPI_TO_TAIL``)."""
        self.release_many([(pfn, nr_pages)], to_tail)

    def release_many(self, blocks, to_tail=False):
        """:meth:`release` of each ``(pfn, nr_pages)`` of ``blocks`` in turn. The free lists take
        them one by one in the order given, as the kernel frees them; the frame and free-memory maps,
        whose end state does not depend on that order, are updated a run of adjacent blocks at a time
        (inside :meth:`releases_gathered`, runs of the whole block's frees)."""
        blocks = [(pfn, nr_pages, to_tail) for pfn, nr_pages in blocks]
        if self._gathered is not None:
            self._gathered.extend(blocks)
        else:
            self._release(blocks)

    def release_blocks(self, pfns, nr_pages):
        """:meth:`release_many` of ``nr_pages`` frames at each pfn of the array ``pfns`` (a pool of
        folios freed in turn), without a tuple per block: the maps take the runs of adjacent
        blocks, the free lists the blocks in the order given."""
        import numpy as np

        if self._gathered is not None or len(pfns) < FEW_BLOCKS:  # a few: numpy's per-call cost would dominate
            self.release_many([(pfn, nr_pages) for pfn in pfns.tolist()])
            return
        starts, ends = block_runs(np.sort(pfns), nr_pages)
        self._free_maps(zip(starts, ends))
        if self.booting:
            return
        lo, hi = starts[0], ends[-1]
        node, zone = self.nodes.extent(lo), self.zones.extent(lo)
        if node is None or zone is None or min(node[1], zone[1]) < hi:  # across nodes, zones or holes
            self._free_to_lists([(pfn, nr_pages) for pfn in pfns.tolist()], False)
            return
        self.buddy.free_blocks(pfns, nr_pages, node[2], zone[2])

    @contextmanager
    def releases_gathered(self):
        """Frees inside the ``with`` block are gathered and done at its end, in the order made:
        for a block that frees and allocates nothing else meanwhile (a vmemmap teardown), so the
        free lists end as the frees one by one leave them, and the frame maps take a run of
        adjacent frees (a section's frames and its PTE table) as one change."""
        if self._gathered is not None:
            yield
            return
        self._gathered = []
        try:
            yield
        finally:
            blocks, self._gathered = self._gathered, None
            self._release(blocks)

    def _release(self, blocks):
        runs = []
        for pfn, nr_pages, _ in sorted(blocks):
            if runs and runs[-1][1] == pfn:
                runs[-1][1] = pfn + nr_pages
            else:
                runs.append([pfn, pfn + nr_pages])
        self._free_maps(runs)
        if self.booting:
            return
        for to_tail, same in itertools.groupby(blocks, key=lambda block: block[2]):
            self._free_to_lists([block[:2] for block in same], to_tail)

    def _free_maps(self, runs):
        """The frame and free-memory maps of the ``(start, end)`` runs freed."""
        for start, end in runs:
            self.frames.set(start, end, FREE)
            for s, e, node in self.nodes.items(start, end):
                for zs, ze, zone in self.zones.items(s, e):
                    self._free[node].set(zs, ze, zone)

    def _free_to_lists(self, blocks, to_tail):
        """The buddy frees of :meth:`_release`: each ``(pfn, nr_pages)`` of ``blocks`` in turn."""
        ranges = {}  # (node, zone) -> its ranges in the order given: lists of other zones never meet
        lo = hi = 0  # the stretch of one node and zone that the last block lay in
        for pfn, nr_pages in blocks:
            if not lo <= pfn < pfn + nr_pages <= hi:
                node, zone = self.nodes.extent(pfn), self.zones.extent(pfn)
                lo = hi = 0
                if node is not None and zone is not None:
                    lo, hi = max(node[0], zone[0]), min(node[1], zone[1])
                    where = ranges.setdefault((node[2], zone[2]), [])
                if pfn + nr_pages > hi:  # across nodes or zones (or holes): piece by piece
                    for s, e, n in self.nodes.items(pfn, pfn + nr_pages):
                        for zs, ze, z in self.zones.items(s, e):
                            ranges.setdefault((n, z), []).append((zs, ze))
                    lo = hi = 0
                    continue
            where.append((pfn, pfn + nr_pages))
        for (node, zone), parts in ranges.items():
            self.buddy.free_ranges(parts, node, zone, to_tail)

    def retag(self, pfn, nr_pages, owner):
        """Change the owner of frames already allocated (memory handed from one user to another)."""
        self.frames.set(pfn, pfn + nr_pages, owner)

    def end_boot(self):
        """``memblock_free_all()``: what memblock still holds free goes to the buddy allocator,
        range by range from the lowest address (``free_low_memory_core_early``), each cut into the
        largest aligned blocks (``__free_pages_memory``) and freed by ``__free_pages_core``: at
        the lists' tails since 5.10 (``FPI_TO_TAIL``), so that the lowest block is handed out
        first; before, at the heads, so that the highest is."""
        self.booting = False
        for node, free in self._free.items():
            for start, end, zone in free.items():
                self.buddy.free_range(start, end, node, zone, self.free_core_to_tail)

    def snapshot(self):
        return (self.frames.items(), self.nodes.items(), self.zones.items(),
                {node: free.items() for node, free in self._free.items()})

    # -- invariants -----------------------------------------------------------------------------
    def check(self):
        """Raise AssertionError unless every present frame has exactly one owner and totals agree."""
        present = self.present_pages()
        assert self.node_ids == sorted(self.nodes.totals), \
            f"nodes {self.node_ids} but memory present on nodes {sorted(self.nodes.totals)}"
        owned = sum(self.frames.totals.values())
        assert owned == present, f"{owned} frames owned but {present} present"
        free = sum(n for owner, n in self.frames.totals.items() if owner.use is Use.FREE)
        assert free == self.free_pages(), f"owner map says {free} free frames, free lists {self.free_pages()}"
        if not self.booting:
            self.buddy.check(free)
        for start, end, node in self.nodes.items():
            for s, e, value in self.frames.items(start, end):
                in_free = self._free[node].covered(s, e)
                expected = (e - s) if value.use is Use.FREE else 0
                assert in_free == expected, f"frames [{s:#x}, {e:#x}) owned by {value} but {in_free} on free lists"
