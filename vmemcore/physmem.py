"""Simulated physical memory: nodes, the boot (memblock) and buddy allocators, frame owners.

Mirrors ``mm/memblock.c`` (top-down boot allocation, ``exact_nid``) and ``mm/page_alloc.c`` (order
allocations with the zonelist's node fallback), at the level of frames and owners. Every frame of
present memory has exactly one owner; ``check()`` proves that the totals add up.
"""

import enum

from attrs import frozen

from .errors import BadRequest
from .rangemap import RangeMap


class Use(enum.Enum):
    FREE = "free"
    MEMMAP = "memmap"
    PAGETABLE = "pagetable"
    HUGETLB = "hugetlb"


@frozen
class Owner:
    """Who holds a frame; ``reserved`` marks boot (memblock) memory, PageReserved in the kernel."""

    use: Use
    reserved: bool = False
    self_hosted: bool = False  # memmap carved from the memory it describes (PageVmemmapSelfHosted)

    def __str__(self):
        return self.use.value + (" (boot)" if self.reserved else "") + (" (self-hosted)" if self.self_hosted else "")


FREE = Owner(Use.FREE)


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


class PhysMem:
    """Present memory by node, who owns each frame, and the allocators that hand frames out."""

    def __init__(self, page_shift, max_pfn, journal=None):
        self.page_shift = page_shift
        self.max_pfn = max_pfn
        self.journal = journal
        self.nodes = RangeMap()  # pfn -> node id (fixed after construction)
        self.frames = RangeMap(journal)  # pfn -> Owner
        self._free = {}  # node -> RangeMap of free pfns (value True)
        self.booting = True  # memblock until boot ends, buddy afterwards
        self.faults = FaultInjector()

    # -- layout ---------------------------------------------------------------------------------
    def add_range(self, node, start_pfn, end_pfn):
        """Declare ``[start_pfn, end_pfn)`` as present memory of ``node`` (before boot)."""
        if not 0 <= start_pfn < end_pfn <= self.max_pfn:
            raise BadRequest(f"pfn range [{start_pfn:#x}, {end_pfn:#x}) is outside [0, {self.max_pfn:#x})")
        if self.nodes.covered(start_pfn, end_pfn):
            raise BadRequest(f"pfn range [{start_pfn:#x}, {end_pfn:#x}) overlaps memory already present")
        self.nodes.set(start_pfn, end_pfn, node)
        self.frames.set(start_pfn, end_pfn, FREE)
        self._free.setdefault(node, RangeMap(self.journal)).set(start_pfn, end_pfn, True)

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

    def free_pages(self, node=None) -> int:
        nodes = self._free if node is None else [node]
        return sum(self._free[n].totals.get(True, 0) for n in nodes if n in self._free)

    # -- allocation -----------------------------------------------------------------------------
    def alloc(self, nr_pages, node, purpose, align=None, exact_nid=False):
        """Allocate ``nr_pages`` frames for ``purpose``; the first pfn, or None when it fails.

        While booting this is memblock (top-down, aligned to ``align`` pages, other nodes tried
        unless ``exact_nid``), later the buddy allocator (a naturally aligned block of the order
        that holds ``nr_pages``, the node's zonelist fallback to other nodes).
        """
        allocator = "memblock" if self.booting else "buddy"
        if self.faults.should_fail(allocator, nr_pages, node, purpose):
            return None
        if self.booting:
            size, align = nr_pages, align or 1
        else:
            order = max(nr_pages - 1, 0).bit_length()
            size = align = 1 << order
        for candidate in self._node_order(node, exact_nid):
            pfn = self._find_top_down(candidate, size, align)
            if pfn is not None:
                self._take(pfn, size, Owner(purpose, reserved=self.booting))
                return pfn
        return None

    def alloc_pages(self, count, node, purpose, order=0, exact_nid=False):
        """``count`` successive buddy allocations of ``2**order`` pages, stopping at the first
        failure: the same blocks, in the same order, as ``count`` calls of ``alloc``, carved a free
        extent at a time. Returns the list of first pfns granted."""
        size = 1 << order
        before = self.faults.attempts, self.faults.failed
        granted = self.faults.successes_before_failure(count, "buddy", size, node, purpose)
        pfns = []
        owner = Owner(purpose)
        for candidate in self._node_order(node, exact_nid):
            free = self._free.get(candidate)
            extents = list(free.items_reversed())
            for start, end, _ in extents:
                if len(pfns) == granted:
                    break
                top = (end - size) // size * size
                if top < start:
                    continue
                take = min(granted - len(pfns), (top - start) // size + 1)
                low = top - (take - 1) * size
                self._take(low, top + size - low, owner)
                pfns.extend(range(top, low - 1, -size))
            if len(pfns) == granted:
                break
        if len(pfns) < granted:  # memory ran out before any injected failure: that attempt ends it
            self.faults.attempts = before[0] + len(pfns) + 1
            self.faults.failed = before[1]
        return pfns

    def _node_order(self, node, exact_nid):
        """The node, then (unless ``exact_nid``) the others: with the default distance table every
        remote node is equally far (20), and the zonelist breaks ties by the lowest node id."""
        nodes = self.node_ids
        if exact_nid:
            return [node] if node in nodes else []
        return ([node] if node in nodes else []) + [n for n in nodes if n != node]

    def _find_top_down(self, node, size, align):
        free = self._free.get(node)
        if free is None:
            return None
        for start, end, _ in free.items_reversed():
            pfn = (end - size) // align * align
            if pfn >= start:
                return pfn
        return None

    def _take(self, pfn, nr_pages, owner):
        self.frames.set(pfn, pfn + nr_pages, owner)
        for start, end, node in self.nodes.items(pfn, pfn + nr_pages):
            self._free[node].set(start, end, None)

    def claim(self, pfn, nr_pages, owner):
        """Take specific free frames (a range handed out by another allocator such as an altmap)."""
        for start, end, value in self.frames.items(pfn, pfn + nr_pages):
            if value != FREE:
                raise BadRequest(f"frames [{start:#x}, {end:#x}) are not free (owner: {value})")
        if self.frames.covered(pfn, pfn + nr_pages) != nr_pages:
            raise BadRequest(f"frames [{pfn:#x}, {pfn + nr_pages:#x}) are not all present memory")
        self._take(pfn, nr_pages, owner)

    def release(self, pfn, nr_pages):
        """Give frames back: they become free (``free_pages``, ``free_reserved_page``, memblock free)."""
        self.frames.set(pfn, pfn + nr_pages, FREE)
        for start, end, node in self.nodes.items(pfn, pfn + nr_pages):
            self._free[node].set(start, end, True)

    def retag(self, pfn, nr_pages, owner):
        """Change the owner of frames already allocated (memory handed from one user to another)."""
        self.frames.set(pfn, pfn + nr_pages, owner)

    def end_boot(self):
        """``memblock_free_all()``: what memblock still holds free goes to the buddy allocator."""
        self.booting = False

    def snapshot(self):
        return self.frames.items(), {node: free.items() for node, free in self._free.items()}

    # -- invariants -----------------------------------------------------------------------------
    def check(self):
        """Raise AssertionError unless every present frame has exactly one owner and totals agree."""
        present = self.present_pages()
        owned = sum(self.frames.totals.values())
        assert owned == present, f"{owned} frames owned but {present} present"
        free = sum(n for owner, n in self.frames.totals.items() if owner.use is Use.FREE)
        assert free == self.free_pages(), f"owner map says {free} free frames, free lists {self.free_pages()}"
        for start, end, node in self.nodes.items():
            for s, e, value in self.frames.items(start, end):
                in_free = self._free[node].covered(s, e)
                expected = (e - s) if value.use is Use.FREE else 0
                assert in_free == expected, f"frames [{s:#x}, {e:#x}) owned by {value} but {in_free} on free lists"
