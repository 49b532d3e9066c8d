"""Kernel versions as data: where kernels differ, a profile says how.

Each field, and the kernel commit and release behind it, is listed in docs/kernel-map.md#kernel-profiles
and docs/kernel-map.md#behaviour-timeline.
"""

import functools
from enum import StrEnum

from attrs import field, frozen

from .errors import BadRequest, did_you_mean
from .timeline import Change, format_version, parse_version, reaches


class HvoHeadPage(StrEnum):
    """The vmemmap page that holds an optimized HugeTLB page's head struct pages (mm/hugetlb_vmemmap.c)."""

    KEEP = "keep"  # the old frame is reused
    TRY = "try"  # 6.2+: a new page, falling back to the old one
    ALWAYS = "always"  # 7.1: a new page, failure aborts


class HvoTailPage(StrEnum):
    """Where the tail vmemmap PTEs of an optimized HugeTLB page point."""

    REUSE = "reuse"  # the kept head / first tail page
    SHARED = "shared"  # 7.1: a per-zone read-only tail page


class MhpDesign(StrEnum):
    """How memmap_on_memory places the memmap of hot-added memory (mm/memory_hotplug.c)."""

    # the 2019 RFC "mm, memory_hotplug: allocate memmap from the added memory range for sparse-vmemmap",
    # never merged: one altmap over the whole added range, on by default (docs/kernel-map.md#memmap_on_memory-designs)
    RFC2019 = "rfc2019"
    SINGLE_BLOCK = "single-block"  # 5.13-6.7: the range must be exactly one memory block
    PER_BLOCK = "per-block"  # 6.8+: one altmap per memory block


@frozen
class KernelProfile:
    """The behaviour of one kernel version that the engine and the plugins switch on."""

    name: str
    version: tuple
    # mm/sparse.c free_map_bootmem(): 6.12 leaves nr_memmap_boot_pages alone when a boot section's
    # memmap is freed; 6.19 and 7.1 subtract the whole section.
    boot_memmap_free_lowers_counter: bool
    # HVO (mm/hugetlb_vmemmap.c): vmemmap pages kept per HugeTLB page: 2 in the v17 design (5.14-5.17)
    hvo_reserve_pages: int
    # the head vmemmap page and where the tail PTEs point
    hvo_head_page: HvoHeadPage = field(converter=HvoHeadPage)
    hvo_tail_page: HvoTailPage = field(converter=HvoTailPage)
    # 5.14-5.17: the vmemmap must be base-page mapped while HVO is on (the walk BUG()s on PMD leaves)
    hvo_needs_basepage_vmemmap: bool
    # 6.7+: hugetlb_vmemmap_optimize_folios / _restore_folios batch with one TLB flush
    hvo_batched: bool
    # 6.7+: set_max_huge_pages gathers fresh folios on a list, newest first, and adds them together
    # (before: each optimized and enqueued as it is allocated)
    hugetlb_pool_list: bool
    # 6.7+: HVO's vmemmap pages (new head page, restore) may come from other nodes (before: __GFP_THISNODE)
    hvo_node_fallback: bool
    # struct pages of a restored tail page rewritten from their neighbours (reset_struct_pages)
    nr_reset_struct_page: int
    # the memmap_on_memory design
    mhp_design: MhpDesign = field(converter=MhpDesign)
    # 6.6+: an unsupported request falls back to a normal memmap (before: -EINVAL); "force" mode exists
    mhp_fallback: bool
    # 5.14-5.19: memmap_on_memory and HVO exclude each other
    mhp_excludes_hvo: bool

    # the release modelled, (major, minor, patch): stable backports are in effect from their point release
    release: tuple = field()

    @release.default
    def _release(self):
        return tuple(self.version) + (0,)

    def at_least(self, major: int, minor: int) -> bool:
        """Whether this is mainline release ``major.minor`` or later (a stable backport to an older
        series is not seen: test a :class:`~vmemcore.timeline.Change` with :meth:`has` for that)."""
        return self.version >= (major, minor)

    def has(self, change) -> bool:
        """Whether this kernel carries ``change``: a :class:`~vmemcore.timeline.Change` (its mainline
        release or one of its stable backports) or a ``(major, minor)`` mainline release."""
        return reaches(self.release, change)


# -- the engine's dated changes (docs/kernel-map.md#behaviour-timeline) ---------------------------

FREE_CORE_TO_TAIL = Change(
    "free-core-to-tail", "memory given to the buddy allocator at boot (memblock_free_all) and when onlined goes "
    "to the tail of the free lists (__free_pages_core frees with FPI_TO_TAIL), and undoing isolation moves pages "
    "to the tail: older memory is handed out first (the series \"mm: place pages to the freelist tail when "
    "onlining and undoing isolation\")", "5.10", commit="7fef431be9c9",
    status="CONFIRMED (in v5.10-rc1)")
HVO_MERGED = Change(
    "hvo", "HVO merged (x86_64 only): 2 vmemmap pages kept per HugeTLB page; memmap_on_memory refused while "
    "HVO is on", "5.14", commit="f41f2ed43ca5", status="CONFIRMED (in Linus's master during the 5.14 merge window)")
HVO_ONE_PAGE = Change(
    "hvo-one-reserved-page", "HVO keeps one vmemmap page: tails remapped read-only onto the head page (fake "
    "heads); reset_struct_pages with NR_RESET_STRUCT_PAGE 3", "5.18", commit="e7d324850bfc", status="CONFIRMED")
HVO_SYSCTL = Change(
    "hvo-sysctl", "the sysctl vm.hugetlb_optimize_vmemmap", "5.19", commit="78f39084b41d",
    status="CONFIRMED (MM pull for 5.19-rc1)")
HVO_MHP_COMPATIBLE = Change(
    "hvo-memmap-on-memory", "HVO and memmap_on_memory compatible (self-hosted vmemmap skipped)", "6.0",
    commit="66361095129b",
    status="CONFIRMED (stable/linux master push of 2022-08-06, tracking mainline: 6.0 merge window)")
HVO_NEW_HEAD = Change(
    "hvo-new-head-page", "HVO copies the head vmemmap page to a new page (the old one reused on failure)", "6.2",
    commit="11aad2631bf7", status="CONFIRMED (MM pull for 6.2-rc1)")
VMEMMAP_RESERVE_NR = Change(
    "dax-reserve-nr", "device-dax dedup needs more than VMEMMAP_RESERVE_NR (2) vmemmap pages per compound page",
    "6.6", commit="c1a6c536fb08", status="CONFIRMED (MM pull for 6.6-rc1)")
MHP_FALLBACK = Change(
    "memmap-on-memory-fallback", "an unsupported memmap_on_memory request falls back to a normal memmap; 'force' "
    "mode", "6.6", commit="e3c2bfdd33a3", status="CONFIRMED (MM pull for 6.6-rc1)")
HUGETLB_POOL_LIST = Change(
    "hugetlb-pool-list", "set_max_huge_pages gathers the fresh folios on a list (list_add: newest first) and adds "
    "them to the pool together (prep_and_add_allocated_folios)", "6.7", commit="d67e32f26713",
    status="CONFIRMED (MM pull for 6.7-rc1, the series of hvo-batched; in the torvalds/linux push of 2023-11-03, "
    "bc3012f4e3a9..8f6f76a6a29f)")
HVO_NODE_FALLBACK = Change(
    "hvo-node-fallback", "HVO's vmemmap page allocations (the new head page, a restore's pages) may fall back to "
    "other nodes: __GFP_THISNODE dropped", "6.7", commit="6a898c2757af",
    status="CONFIRMED (6a898c2757af and 2eaa6c2abb9d \"mm: hugetlb_vmemmap: fix hugetlb page number decrease failed "
    "on movable nodes\": MM pull for 6.7-rc1, both in the torvalds/linux push of 2023-11-03, bc3012f4e3a9..8f6f76a6a29f)")
HVO_BATCHED = Change(
    "hvo-batched", "HVO optimizes and restores lists of folios with one TLB flush per batch", "6.7",
    commit="79359d6d24df",
    status="CONFIRMED (release, MM pull for 6.7-rc1; id in the 2023-11-03 linux-block master push carrying mainline)")
MHP_PER_BLOCK = Change(
    "memmap-on-memory-per-block", "memmap_on_memory requests split across memory blocks, one altmap per block",
    "6.8", commit="6b8f0798b85a", status="CONFIRMED (MM pull for 6.8-rc1)")
HVO_RESET_4 = Change(
    "hvo-reset-4", "NR_RESET_STRUCT_PAGE 3 -> 4 (\"mm, hugetlb: Increment the number of pages to be reset on "
    "HVO\")", "6.15",
    status="CONFIRMED (mainline 274fe92de2c4, mm-hotfixes-stable-2025-04-19-21-24, before 6.15-rc3)")
BOOT_MEMMAP_COUNTER = Change(
    "memmap-boot-counter", "removing a boot (early) section's memmap lowers nr_memmap_boot_pages (\"mm: fix "
    "accounting of memmap pages for early sections\", linux-next id 5c995bb51ee3)", "6.17",
    status="UNCONFIRMED (mainline id and release; Cc stable, backports UNCONFIRMED)")
HVO_SHARED_TAIL = Change(
    "hvo-shared-tail-page", "fake heads eliminated: one shared read-only tail page per zone and order, the head "
    "page always copied, no reset_struct_pages", "7.1",
    status="CONFIRMED (torvalds/linux push of 2026-04-15, mm-stable-2026-04-13-21-45, after Linux 7.0)")

#: Every dated change of the engine, oldest first.
ENGINE_CHANGES = (
    FREE_CORE_TO_TAIL, HVO_MERGED, HVO_ONE_PAGE, HVO_SYSCTL, HVO_MHP_COMPATIBLE, HVO_NEW_HEAD, VMEMMAP_RESERVE_NR, MHP_FALLBACK,
    HUGETLB_POOL_LIST, HVO_NODE_FALLBACK, HVO_BATCHED, MHP_PER_BLOCK, HVO_RESET_4, BOOT_MEMMAP_COUNTER, HVO_SHARED_TAIL,
)

#: Each profile field: its value before any change, then (change, value) pairs, oldest first; the
#: last change in effect gives the value.
FIELDS = {
    "boot_memmap_free_lowers_counter": (False, ((BOOT_MEMMAP_COUNTER, True),)),
    "hvo_reserve_pages": (2, ((HVO_ONE_PAGE, 1),)),
    "hvo_head_page": ("keep", ((HVO_NEW_HEAD, "try"), (HVO_SHARED_TAIL, "always"))),
    "hvo_tail_page": ("reuse", ((HVO_SHARED_TAIL, "shared"),)),
    "hvo_needs_basepage_vmemmap": (False, ()),  # never in mainline: only the "5.14" name (the v17 series)
    "hvo_batched": (False, ((HVO_BATCHED, True),)),
    "hugetlb_pool_list": (False, ((HUGETLB_POOL_LIST, True),)),
    "hvo_node_fallback": (False, ((HVO_NODE_FALLBACK, True),)),
    "nr_reset_struct_page": (0, ((HVO_ONE_PAGE, 3), (HVO_RESET_4, 4), (HVO_SHARED_TAIL, 0))),
    "mhp_design": ("single-block", ((MHP_PER_BLOCK, "per-block"),)),
    "mhp_fallback": (False, ((MHP_FALLBACK, True),)),
    "mhp_excludes_hvo": (False, ((HVO_MERGED, True), (HVO_MHP_COMPATIBLE, False))),
}

# The modelled span: every mainline release from OLDEST to NEWEST, each with any point release.
OLDEST, NEWEST = (5, 14), (7, 1)
LAST_MINOR = {5: 19, 6: 19}  # 5.19 was followed by 6.0, 6.19 by 7.0
MAINLINE_RELEASES = tuple(
    (major, minor) for major in range(OLDEST[0], NEWEST[0] + 1)
    for minor in range(LAST_MINOR.get(major, NEWEST[1]) + 1) if OLDEST <= (major, minor) <= NEWEST
)
SPAN = f"{format_version(OLDEST)} to {format_version(NEWEST)}.y"


@frozen
class NamedProfile:
    """A name that stands for a version, with the fields that deliberately differ from that
    version's timeline (docs/kernel-map.md#known-departures-from-mainline)."""

    name: str
    release: tuple = field(converter=parse_version)
    overrides: dict = field(factory=dict)
    models: str = ""


#: The named profiles: the versions they stand for and their departures from the timeline.
NAMED = (
    NamedProfile("2019", "5.0", {"mhp_design": "rfc2019"},
                 "the 2019 memmap-from-range RFC (never merged) on a kernel before HVO"),
    NamedProfile("5.14", "5.14", {"hvo_needs_basepage_vmemmap": True},
                 "v5.14 with HVO as the v17 series posted it: a base-page vmemmap while HVO is on"),
    NamedProfile("6.0", "6.0", models="v6.0"),
    NamedProfile("6.1", "6.1.16", models="6.1.16: the first 6.1.y without arm64 HVO (060a2c92d1b6)"),
    NamedProfile("6.12", "6.12", models="v6.12.0, without the 6.12.y backports"),
    NamedProfile("6.19", "6.19", models="v6.19"),
    NamedProfile("7.1", "7.1", models="v7.1"),
)


def compute_profile(name, release, overrides=None) -> KernelProfile:
    """The profile of kernel ``release`` (``(major, minor, patch)``) called ``name``: each field
    from the dated changes in effect, then ``overrides``."""
    release = parse_version(release)
    values = {}
    for key, (value, changes) in FIELDS.items():
        for change, changed in changes:
            if change.in_effect(release):
                value = changed
        values[key] = value
    values.update(overrides or {})
    return KernelProfile(name=name, version=release[:2], release=release, **values)


PROFILES = {n.name: compute_profile(n.name, n.release, n.overrides) for n in NAMED}
DEFAULT_PROFILE = "6.12"


def get_profile(name=None) -> KernelProfile:
    """The profile called ``name``: one of the named profiles, or any version ``X.Y``/``X.Y.Z`` of
    the modelled span (``"6.12"`` when None)."""
    name = DEFAULT_PROFILE if name is None else str(name)
    if name in PROFILES:
        return PROFILES[name]
    return _version_profile(name)


@functools.lru_cache(maxsize=256)
def _version_profile(name) -> KernelProfile:
    try:
        release = parse_version(name)
    except ValueError:
        raise BadRequest(unknown_profile(name)) from None
    if not OLDEST <= release[:2] <= NEWEST:
        raise BadRequest(f"unknown kernel profile {name!r}: outside the modelled span, versions {SPAN} "
                         f"(X.Y or X.Y.Z), or the profile 2019")
    if release[:2] not in MAINLINE_RELEASES:
        raise BadRequest(f"unknown kernel profile {name!r}: there is no mainline release {format_version(release[:2])} "
                         f"(the modelled span is {SPAN}){did_you_mean(name, _names())}")
    return compute_profile(name, release)


def select_kernels(kernels=()) -> list:
    """The named profiles (every one when ``kernels`` is empty, else those it names), then the
    other versions ``kernels`` names, in its order."""
    return [k for k in PROFILES if not kernels or k in kernels] + [k for k in kernels if k not in PROFILES]


def unknown_profile(name) -> str:
    """Why ``name`` is no kernel profile: what is accepted, and the closest named profile."""
    return (f"unknown kernel profile {name!r} (a version {SPAN} as X.Y or X.Y.Z, or a named profile: "
            f"{', '.join(PROFILES)}){did_you_mean(name, _names())}")


def _names() -> list:
    """The named profiles, then every mainline release of the span, for "did you mean"."""
    return list(PROFILES) + [format_version(r) for r in MAINLINE_RELEASES if format_version(r) not in PROFILES]


def kernel_error(name):
    """Why ``name`` is not a kernel this simulator models, or None when it is."""
    try:
        get_profile(name)
    except BadRequest as error:
        return str(error)
    return None
