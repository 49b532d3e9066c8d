"""Kernel versions as data: where kernels differ, a profile says how.

Each field, and the kernel commit and release behind it, is listed in docs/kernel-map.md#kernel-profiles
and docs/kernel-map.md#behaviour-timeline.
"""

from enum import StrEnum

from attrs import field, frozen

from .errors import BadRequest, did_you_mean


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
    SINGLE_BLOCK = "single-block"  # 5.12-6.7: the range must be exactly one memory block
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
    # struct pages of a restored tail page rewritten from their neighbours (reset_struct_pages)
    nr_reset_struct_page: int
    # the memmap_on_memory design
    mhp_design: MhpDesign = field(converter=MhpDesign)
    # 6.6+: an unsupported request falls back to a normal memmap (before: -EINVAL); "force" mode exists
    mhp_fallback: bool
    # 5.14-5.19: memmap_on_memory and HVO exclude each other
    mhp_excludes_hvo: bool

    def at_least(self, major: int, minor: int) -> bool:
        return self.version >= (major, minor)


def _profile(name, version, boot_free, hvo, mhp):
    return KernelProfile(name, version, boot_free, *hvo, *mhp)


PROFILES = {
    p.name: p
    for p in (
        # name, version, boot free lowers counter,
        #   HVO (reserve, head page, tail page, base-page vmemmap, batched, reset), memmap_on_memory
        _profile("2019", (5, 0), False, (2, "keep", "reuse", False, False, 0), ("rfc2019", False, False)),
        _profile("5.14", (5, 14), False, (2, "keep", "reuse", True, False, 0), ("single-block", False, True)),
        _profile("6.0", (6, 0), False, (1, "keep", "reuse", False, False, 3), ("single-block", False, False)),
        _profile("6.1", (6, 1), False, (1, "keep", "reuse", False, False, 3), ("single-block", False, False)),
        _profile("6.12", (6, 12), False, (1, "try", "reuse", False, True, 3), ("per-block", True, False)),
        _profile("6.19", (6, 19), True, (1, "try", "reuse", False, True, 4), ("per-block", True, False)),
        _profile("7.1", (7, 1), True, (1, "always", "shared", False, True, 0), ("per-block", True, False)),
    )
}
DEFAULT_PROFILE = "6.12"


def get_profile(name=None) -> KernelProfile:
    """The profile called ``name`` (``"6.12"`` when None)."""
    name = DEFAULT_PROFILE if name is None else str(name)
    try:
        return PROFILES[name]
    except KeyError:
        raise BadRequest(unknown_profile(name)) from None


def unknown_profile(name) -> str:
    """Why ``name`` is no kernel profile: the known ones, and the closest."""
    return f"unknown kernel profile {name!r} (known: {', '.join(PROFILES)}){did_you_mean(name, PROFILES)}"
