"""The public API of vmemcore for architecture plugins: everything a plugin may use, and nothing
else (the built-in plugins import only this module). Documented in ``docs/plugins.md``.

- value types a plugin answers with (:class:`ArchInfo`, :class:`PageTableGeometry`, ...);
- errors a plugin raises on purpose (:class:`OutOfMemory`, :class:`BadRequest`, :class:`Veto`);
- the generic populate loops of ``mm/sparse-vmemmap.c`` with the arch's policy as arguments
  (:func:`vmemmap_populate_basepages`, :func:`vmemmap_populate_hugepages`);
- one teardown walk for ``vmemmap_free`` (:func:`vmemmap_teardown` with a :class:`TeardownPolicy`);
- the live-entry rule a plugin states (:class:`LiveEntryRule`, with the entry bits
  :data:`RDONLY` and :data:`CONT` it names);
- dated kernel changes (:class:`Change`) a plugin declares in ``ArchInfo.changes`` and tests with
  :func:`selected` or ``profile.has(change)``;
- the format of the arch's page-table dump (:class:`PtdumpFormat`, :class:`PtdumpColumn`);
- queries a policy needs (:func:`vmemmap_boot_frame`) and :func:`preallocate_tables` for
  ``vmemcore_pgtable_cache_init``.

A plugin never walks page tables itself: it answers narrow questions and, where the kernel truly
differs between architectures, passes a policy.
"""

import importlib

from . import hookimpl
from .archtypes import (
    ANY_CHANGE, CONT, NUMA_NO_NODE, RDONLY, Flush, InUse, LiveEntryRule, PtdumpColumn, PtdumpFormat, TeardownPolicy,
)
from .errors import BadRequest, OutOfMemory, PluginError, Veto, VmemcoreError
from .geometry import (
    ArchInfo, Feature, Firmware, HugePageSize, Level, PageTableGeometry, PhysRange, SparseGeometry, Support, Variant,
)
from .mapping import VmemmapMapping
from .profiles import KernelProfile, MhpDesign
from .timeline import Change
from .units import GiB, KiB, MiB, PiB, TiB, format_size

#: The helpers that write page tables (numpy arrays), by the module that holds them: loaded on first
#: use, so that discovering plugins loads no numpy; a plugin imports them inside its hooks.
_HELPERS = {
    "vmemmap_boot_frame": "depopulate", "vmemmap_populated": "depopulate", "vmemmap_teardown": "depopulate",
    "vmemmap_unmap_leaf": "depopulate", "free_vmemmap_frames": "populate",
    "vmemmap_alloc_block_buf": "populate", "vmemmap_alloc_blocks": "populate", "vmemmap_alloc_page": "populate",
    "vmemmap_map_leaf": "populate", "vmemmap_populate_basepages": "populate",
    "vmemmap_populate_compound_by_address": "populate", "vmemmap_populate_hugepages": "populate",
}


def __getattr__(name):
    """A helper of :data:`_HELPERS`, from its module (imported on first use)."""
    if name not in _HELPERS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"vmemcore.{_HELPERS[name]}"), name)


def selected(profile, since=None, until=None, *, before="", after="", caveat="") -> Support:
    """Whether kernel ``profile`` has a Kconfig select an arch gained with ``since`` and lost with
    ``until``: each a :class:`Change` (its mainline release or one of its stable backports), a
    ``(major, minor)`` mainline release, or None (always/never); a no carries ``before`` or
    ``after``, the kernel's reason; a yes carries ``caveat``."""
    if since is not None and not profile.has(since):
        return Support(False, before)
    if until is not None and profile.has(until):
        return Support(False, after)
    return Support(True, caveat)


def preallocate_tables(machine, start, end, level, node=NUMA_NO_NODE):
    """Create every missing table of ``level`` (a level name) under ``[start, end)`` of the
    vmemmap, as riscv's ``preallocate_pgd_pages_range`` does in ``pgtable_cache_init``; returns
    how many were created. Their pages are counted as page-table pages."""
    geometry = machine.geometry
    depth = geometry.index_of(level)
    if depth == 0:
        raise BadRequest(f"the top table ({level}) always exists")
    parent_span = geometry.levels[depth - 1].entry_span
    before = machine.pagetable.tables[level]
    from .populate import table_allocator  # numpy: loaded when a plugin first calls this

    alloc = table_allocator(machine, node)
    for addr in range(start // parent_span * parent_span, end, parent_span):
        machine.pagetable.walk(addr, depth, alloc)
    return machine.pagetable.tables[level] - before


__all__ = [
    "ANY_CHANGE", "ArchInfo", "BadRequest", "CONT", "Change", "Feature", "Firmware", "Flush", "format_size", "free_vmemmap_frames",
    "GiB", "hookimpl", "HugePageSize", "InUse", "KernelProfile", "KiB", "Level", "LiveEntryRule", "MhpDesign",
    "MiB", "NUMA_NO_NODE", "OutOfMemory", "PageTableGeometry", "PhysRange", "PiB", "PluginError",
    "preallocate_tables", "PtdumpColumn", "PtdumpFormat", "RDONLY", "selected", "SparseGeometry", "Support", "TeardownPolicy", "TiB",
    "Variant", "Veto", "VmemcoreError", "vmemmap_alloc_block_buf", "vmemmap_alloc_blocks", "vmemmap_alloc_page", "vmemmap_boot_frame",
    "vmemmap_map_leaf", "vmemmap_populate_basepages", "vmemmap_populate_compound_by_address",
    "vmemmap_populate_hugepages", "vmemmap_populated", "vmemmap_teardown", "vmemmap_unmap_leaf",
    "VmemmapMapping",
]
