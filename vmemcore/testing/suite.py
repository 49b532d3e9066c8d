"""The conformance checks. Collect them in a plugin's repository with::

    from vmemcore.testing.suite import *  # noqa: F401,F403

Every check takes the ``vmemcore_target`` the :mod:`vmemcore.testing` plugin parametrizes, applies
only where the target's capabilities say so (else it is skipped with the plugin's reason), and
fails with a message naming the plugin, the hook and the rule broken. Expected numbers are the
kernel's arithmetic, computed here from the geometry, never read back from the engine.
"""

import random

import numpy as np
import pytest

from ..errors import OutOfMemory, PluginError, Veto, VmemcoreError
from ..hotplug import MemmapOnMemory
from ..physmem import Use, Zone
from ..profiles import get_profile
from ..ptdump import ptdump_lines, vmemmap_runs
from ..report import check_folio_flags, kpageflags_runs
from . import remove_blocks, require

__all__ = [
    "test_geometry_covers_the_address_space", "test_vmemmap_holds_every_mappable_address",
    "test_hugepage_sizes_fit_the_page_table",
    "test_boot_maps_every_struct_page_once", "test_boot_counters_follow_the_kernel_arithmetic",
    "test_section_and_subsection_round_trips", "test_hvo_frees_what_the_kernel_frees",
    "test_hotplug_round_trips_in_random_orders", "test_memmap_on_memory_is_what_the_hooks_said",
    "test_fault_at_every_allocation_of_a_populate", "test_fault_at_every_allocation_of_a_hot_add",
    "test_fault_at_every_allocation_of_an_hvo_batch", "test_refusals_are_typed_and_say_why",
    "test_the_same_machine_twice", "test_random_operation_sequences", "test_ptdump_lists_every_mapped_byte_once",
]


def _where(target, hook, rule):
    return f"plugin {target.plugin!r}, hook {hook}: {rule}"


# counters of events (TLB flushes, HVO work, allocations that landed off-node), not of state
EVENT_COUNTERS = ("tlb_flush_", "hvo_", "hugetlb_restore_failures", "vmemmap_offnode_entries", "bbm_",
                  "cpu_pause_windows", "cont_spans_unfolded", "live_entry_violations")


def _state(m):
    """The machine's state for round trips: the snapshot, without event counters and zeros."""
    snap = m.snapshot()
    snap["counters"] = {k: v for k, v in snap["counters"].items() if v and not k.startswith(EVENT_COUNTERS)}
    return snap


def _check(m, target, hook, when):
    """``machine.check()``: every frame accounted for, every table and leaf owned as such; and no
    page freed to the buddy allocator was bad (``bad_page``)."""
    try:
        m.check()
    except AssertionError as error:
        pytest.fail(f"{_where(target, hook, 'every frame is accounted for ' + when)}: {error}")
    if m.bad_pages.reports:
        pytest.fail(f"{_where(target, hook, 'no page freed is in a bad state ' + when)}:\n{m.bad_pages.reports[0]}")


def _differences(before, after):
    return ", ".join(k for k in before if before[k] != after.get(k)) or "nothing"


def _hot_region(m, size):
    """A physical start for ``size`` bytes of hot-added memory: above boot memory, aligned to the
    memory block size, inside the arch's mappable range and vmemmap."""
    block = max(m.hotplug.block_size, m.sparse_geometry.section_size)
    boot_end = max(r.start + r.size for r in m.memory)
    start = -(-boot_end // block) * block + block
    allowed = m.hooks.mappable_range(m)
    start = max(start, -(-allowed.start // block) * block)
    limit = min(allowed.end, m.sparse_geometry.vmemmap_max_pfn << m.geometry.page_shift,
                1 << m.sparse_geometry.max_physmem_bits)
    if start + size > limit:
        pytest.skip(f"no room for {size:#x} bytes of hot-added memory below {limit:#x}")
    return start


# -- geometry ---------------------------------------------------------------------------------------

def test_geometry_covers_the_address_space(vmemcore_target, vmemcore_registry):
    """The geometry hooks answer with valid values (the value types refuse levels that do not cover
    the VA size, tables that do not fit their pages, a last level that is not the PTE), and the
    vmemmap lies inside what the page table maps."""
    t = vmemcore_target
    plugin = vmemcore_registry.get(t.arch)
    hooks = plugin.hooks()
    variant, profile = plugin.info.variant(t.variant), get_profile(t.kernel)
    try:
        pt = hooks.pagetable_geometry(variant, profile)
        sparse = hooks.sparse_geometry(variant, profile)
    except PluginError:
        raise
    except VmemcoreError as error:  # this kernel has no such variant: the plugin says why
        pytest.skip(f"no such machine: {error}")
    assert pt.maps(sparse.vmemmap_base, sparse.vmemmap_size), \
        _where(t, "vmemcore_sparse_geometry", "the vmemmap lies inside what the page table maps")


def test_vmemmap_holds_every_mappable_address(vmemcore_target, boot):
    """The struct pages of every physical address the arch can map (``arch_get_mappable_range``,
    within ``MAX_PHYSMEM_BITS``) lie inside the vmemmap."""
    m = boot()
    sparse = m.sparse_geometry
    end = min(m.hooks.mappable_range(m).end, 1 << sparse.max_physmem_bits)
    assert sparse.vmemmap_max_pfn << sparse.page_shift >= end, _where(
        vmemcore_target, "vmemcore_sparse_geometry",
        f"the vmemmap holds the struct pages of every mappable address (up to {end:#x})")


def test_hugepage_sizes_fit_the_page_table(vmemcore_target, boot):
    """Each HugeTLB size is ``contiguous`` entries of a level that may hold leaves (or a hugepd):
    the hook's answer passes the engine's check, and the machine has exactly those hstates."""
    m = boot()
    sizes = m.hooks.hugepage_sizes(m)  # checked against the geometry (vmemcore.plugins.HOOK_POLICIES)
    assert sorted(h.size for h in sizes) == sorted(m.hugetlb.hstates), \
        _where(vmemcore_target, "vmemcore_hugepage_sizes", "the machine's hstates are the sizes the hook gave")
    _check(m, vmemcore_target, "vmemcore_hugepage_sizes", "after boot")


# -- boot -------------------------------------------------------------------------------------------

def _leaves(m, start, end):
    """Every present leaf mapping part of ``[start, end)``: (offset from the vmemmap base, span,
    frame) arrays (offsets, since kernel addresses do not fit an int64)."""
    base = m.sparse_geometry.vmemmap_base
    va, span, frames = [], [], []
    for addr, leaf_span, pfns in m.vmemmap.leaf_extents(start, end):
        n = len(pfns)
        va.append((addr - base) + np.arange(n, dtype=np.int64) * leaf_span)
        span.append(np.full(n, leaf_span, dtype=np.int64))
        frames.append(np.asarray(pfns, dtype=np.int64))
    if not va:
        return (np.empty(0, np.int64),) * 3
    return np.concatenate(va), np.concatenate(span), np.concatenate(frames)


def test_boot_maps_every_struct_page_once(vmemcore_target, boot):
    """Every present pfn's struct page is mapped, by a frame owned as memmap on its node (or
    counted off-node), and no two boot leaves share a frame."""
    m = boot()
    t = vmemcore_target
    rule = _where(t, "vmemcore_vmemmap_populate", "every present pfn's struct page is mapped exactly once")
    page = m.geometry.page_size
    pps = m.sparse_geometry.pages_per_section
    for r in m.memory:
        first = r.start // page // pps * pps
        last = -(-(r.start + r.size) // page // pps) * pps
        start, end = m.pfn_to_page(first), m.pfn_to_page(last)
        va, span, frames = _leaves(m, start, end)
        lo, hi = start - m.sparse_geometry.vmemmap_base, end - m.sparse_geometry.vmemmap_base
        covered = int(np.minimum(va + span, hi).sum() - np.maximum(va, lo).sum()) if len(va) else 0
        assert covered == end - start, f"{rule}: {covered:#x} of {end - start:#x} bytes of struct pages mapped"
        assert len(np.unique(frames)) == len(frames), f"{rule}: a frame backs two boot leaves"
        for frame in frames.tolist():
            owner = m.physmem.owner(frame)
            assert owner is not None and owner.use is Use.MEMMAP, f"{rule}: frame {frame:#x} is not owned as memmap"
        offnode = sum(m.physmem.node_of(f) != r.node for f in frames.tolist())
        assert offnode <= m.counters().get("vmemmap_offnode_entries", 0), \
            f"{rule}: {offnode} leaves off node {r.node} but not counted (vmemmap_verify)"
    _check(m, t, "vmemcore_vmemmap_populate", "after boot")


def test_boot_counters_follow_the_kernel_arithmetic(vmemcore_target, boot):
    """``nr_memmap_boot_pages`` is DIV_ROUND_UP(PAGES_PER_SECTION * sizeof(struct page), PAGE_SIZE)
    per present section; page-table pages per level are the tables the mapped leaves need."""
    m = boot()
    t = vmemcore_target
    sparse, geometry = m.sparse_geometry, m.geometry
    page = geometry.page_size
    sections = set()
    for r in m.memory:
        sections.update(range(r.start // sparse.section_size, -(-(r.start + r.size) // sparse.section_size)))
    per_section = -(-sparse.pages_per_section * sparse.struct_page_size // page)
    counters = m.counters()
    assert counters["nr_memmap_boot_pages"] == len(sections) * per_section, _where(
        t, "vmemcore_vmemmap_populate", f"nr_memmap_boot_pages is {per_section} per present section")
    va, span, _ = _leaves(m, sparse.vmemmap_base, sparse.vmemmap_base + sparse.vmemmap_size)
    if m.vmemmap is not m.pagetable:  # the plugin's own mapping (vmemcore_vmemmap_mapping): no vmemmap tables
        va = va[:0]
    preallocates = m.hooks.provides("vmemcore_pgtable_cache_init")
    for depth, level in enumerate(geometry.levels[1:], 1):
        table_span = level.table_span
        needed = len(np.unique(va[span <= level.entry_span] // table_span)) if len(va) else 0
        have = m.pagetable.tables[level.name]
        rule = _where(t, "vmemcore_vmemmap_populate", f"{level.name} tables are those the leaves need")
        assert have >= needed if preallocates else have == needed, f"{rule}: {have} tables, {needed} needed"
    _check(m, t, "vmemcore_vmemmap_populate", "after boot")


# -- populate / free round trips ----------------------------------------------------------------------

def test_section_and_subsection_round_trips(vmemcore_target, boot):
    """Adding then removing a section's memmap, and a sub-section's, leaves nothing behind."""
    m = boot()
    t = vmemcore_target
    pps, sub = m.sparse_geometry.pages_per_section, m.sparse_geometry.pages_per_subsection
    start = _hot_region(m, 2 * m.sparse_geometry.section_size) >> m.geometry.page_shift
    before = _state(m)
    for pfn, count in ((start, pps), (start + pps + sub, sub)):
        try:
            m.add_memmap(pfn, count)
        except VmemcoreError as error:
            pytest.fail(_where(t, "vmemcore_vmemmap_populate", f"a hot-added memmap of {count} pages: {error}"))
        _check(m, t, "vmemcore_vmemmap_populate", "after a populate")
        m.remove_memmap(pfn, count)
        _check(m, t, "vmemcore_vmemmap_free", "after a free")
        after = _state(m)
        assert after == before, _where(t, "vmemcore_vmemmap_populate/free", "a populate/free round trip leaves nothing "
                                          f"behind ({count} pages at pfn {pfn:#x}; differs: {_differences(before, after)})")


def test_ptdump_lists_every_mapped_byte_once(vmemcore_target, capabilities, boot):
    """The page-table dump (``vmemcore_ptdump_format``) runs through the vmemmap region without
    a gap or an overlap, its present runs map exactly the bytes the leaves map, and every run the
    format prints gives a line; after HVO too, where tails are read-only."""
    hvo = capabilities.hvo.supported
    m = boot(hugetlb={"optimize_vmemmap": True}) if hvo else boot()
    if m.vmemmap is not m.pagetable:
        pytest.skip("the vmemmap is mapped outside the kernel page table (the plugin's mapping backend: "
                    "powerpc hash bolts it into the hash table), so a page-table dump does not show it")
    t = vmemcore_target
    if hvo:
        sizes = [h for h in m.hugetlb.hstates.values() if not m.hugetlb.is_gigantic(h.size.size)]
        if sizes:
            m.hugetlb.resize(sizes[0].size.size, 2)
    rule = _where(t, "vmemcore_ptdump_format", "the dump covers the vmemmap region once")
    fmt = m.hooks.ptdump_format(m)
    for phys in (False, True):
        runs = vmemmap_runs(m, phys, fmt)
        sparse = m.sparse_geometry
        assert runs and runs[0].start == sparse.vmemmap_base, f"{rule}: the first run starts elsewhere"
        assert runs[-1].end == sparse.vmemmap_base + sparse.vmemmap_size, f"{rule}: the last run ends elsewhere"
        assert all(a.end == b.start for a, b in zip(runs, runs[1:])), f"{rule}: runs leave a gap or overlap"
        mapped = sum(v for k, v in m.counters().items() if k.startswith("vmemmap_mapped_bytes_"))
        assert sum(r.end - r.start for r in runs if r.present) == mapped, f"{rule}: present runs map other bytes"
        lines = ptdump_lines(m, phys, fmt)
        printed = sum(1 for r in runs if r.present or fmt.hole is not None)
        markers = 1 + (fmt.markers[1] is not None)
        assert len(lines) == printed + markers, f"{rule}: {len(lines)} lines for {printed} runs"


# -- HVO --------------------------------------------------------------------------------------------

def test_hvo_frees_what_the_kernel_frees(vmemcore_target, capabilities, boot):
    """HVO of each non-gigantic size frees (vmemmap pages per folio - the pages the profile keeps),
    every folio passes the selftest's kpageflags rule, and freeing the pool gives it all back."""
    require(capabilities.hvo, "no HugeTLB Vmemmap Optimization")
    m = boot(hugetlb={"optimize_vmemmap": True})
    t = vmemcore_target
    sizes = [h for h in m.hugetlb.hstates.values() if not m.hugetlb.is_gigantic(h.size.size)]
    if not sizes:
        pytest.skip("no HugeTLB size below the buddy allocator's largest block")
    sparse = m.sparse_geometry
    memory = sum(r.size for r in m.memory)
    for h in sizes:
        vmemmap_pages = (1 << h.order) * sparse.struct_page_size // sparse.page_size
        per_folio = max(vmemmap_pages - m.profile.hvo_reserve_pages, 0)
        count = min(4, memory // 4 // h.size.size)
        if per_folio == 0 or count == 0:
            continue
        before, tails = m.counters(), len(m.hugetlb.hvo.tail_pages)
        m.hugetlb.resize(h.size.size, count)
        assert len(h.folios) == count
        new_tails = len(m.hugetlb.hvo.tail_pages) - tails  # 7.1: one shared tail page per node and order
        saved = before["memmap_frames"] - m.counters()["memmap_frames"] + new_tails
        assert saved == count * per_folio, _where(
            t, "vmemcore_hvo_support", f"HVO of {h.size.name} saves {per_folio} vmemmap pages per folio "
                                       f"(saved {saved} over {count} folios)")
        for folio in list(h.folios.values()):
            broken = check_folio_flags(folio.head, kpageflags_runs(m, folio.head, 1 << folio.order))
            assert broken is None, _where(t, "vmemcore_hvo_support", f"selftest kpageflags rule: {broken}")
        m.hugetlb.resize(h.size.size, 0)
        assert m.counters()["memmap_frames"] == before["memmap_frames"] + new_tails, _where(
            t, "vmemcore_hvo_support", f"restoring {h.size.name} gives back every vmemmap page")
        _check(m, t, "vmemcore_hvo_support", f"after HVO of {h.size.name} and its restore")


def test_hvo_keeps_the_live_entry_rule(vmemcore_target, capabilities, boot):
    """HVO and its restore, as the kernel does them, change no live entry against the arch's own
    rule (``vmemcore_live_entry_rule``), unless the arch's HVO answer carries a caveat saying the
    kernel's HVO breaks it (then the check expects violations and reports the caveat)."""
    require(capabilities.hvo, "no HugeTLB Vmemmap Optimization")
    m = boot(hugetlb={"optimize_vmemmap": True}, check_live_entries=True)
    t = vmemcore_target
    sizes = [h for h in m.hugetlb.hstates.values() if not m.hugetlb.is_gigantic(h.size.size)]
    memory = sum(r.size for r in m.memory)
    for h in sizes:
        count = min(4, memory // 4 // h.size.size)
        if count:
            m.hugetlb.resize(h.size.size, count)
            m.hugetlb.resize(h.size.size, 0)
    _check(m, t, "vmemcore_live_entry_rule", "after HVO and its restore")
    caveat = m.hugetlb.support.reason
    violations = m.live_entries.violations
    if caveat:
        assert violations, _where(t, "vmemcore_hvo_support", f"the caveat says HVO breaks the live-entry rule "
                                                              f"({caveat}), but no write broke it")
        pytest.xfail(f"the kernel's own HVO breaks the live-entry rule ({m.live_entries.count} writes, first: "
                     f"{violations[0]}): {caveat}")
    assert not violations, _where(t, "vmemcore_live_entry_rule", f"{m.live_entries.count} writes broke the rule "
                                                                  f"({m.live_entry_rule.reason}); first: {violations[0]}")


# -- hotplug ----------------------------------------------------------------------------------------

def _hot_add(m, start, size, **kwargs):
    """``add_memory``; a typed refusal must leave the machine unchanged, and skips the check with
    its reason (the 2019 design's memmap_on_memory on x86_64 without PSE refuses every hot-add)."""
    before = _state(m)
    try:
        return m.hotplug.add_memory(start, size, **kwargs)
    except VmemcoreError as error:
        assert _state(m) == before, f"a refused hot-add ({error}) left changes behind"
        pytest.skip(f"the hot-add is refused: {error}")


def _online(m, block, zone):
    """``online``; a typed refusal (say, memory that is not pageblock-aligned after its memmap)
    must leave the machine unchanged, and the block stays offline."""
    before = _state(m)
    try:
        m.hotplug.online(block, zone)
    except VmemcoreError as error:
        assert _state(m) == before, f"a refused online ({error}) left changes behind"


@pytest.mark.parametrize("seed", [0, 1])
def test_hotplug_round_trips_in_random_orders(vmemcore_target, capabilities, boot, seed):
    """Blocks added, onlined to random zones, offlined and removed in random orders give back the
    booted machine."""
    require(capabilities.memory_hotplug, "no memory hotplug")
    m = boot()
    t = vmemcore_target
    block = m.hotplug.block_size
    start = _hot_region(m, 3 * block)
    before, kept_at_boot = _state(m), _kept_frames(m)

    def round_trip():
        rng = random.Random(seed)
        blocks = []
        for k in rng.sample(range(3), 3):
            blocks += _hot_add(m, start + k * block, block).blocks
        for b in rng.sample(blocks, len(blocks)):
            _online(m, b, rng.choice([Zone.NORMAL, Zone.MOVABLE]))
        _check(m, t, "vmemcore_vmemmap_populate", "after hot-adds")
        remove_blocks(m, rng.sample(blocks, len(blocks)))
        return _state(m)

    after = round_trip()
    rule = "a hotplug round trip gives back the booted machine"
    if after != before and _kept_frames(m) - kept_at_boot:
        # bookkeeping the kernel keeps for reuse (powerpc's vmemmap_list pages are never freed): allowed
        # once, if a plugin state owns it and the next round trip reuses it, giving back this machine
        differs = _differences(before, after)
        assert set(differs.split(", ")) <= {"physmem", "plugin_state", "counters"}, _where(
            t, "vmemcore_vmemmap_populate/free", f"{rule}, but for what a plugin keeps (differs: {differs})")
        before, after, rule = after, round_trip(), "a second hotplug round trip gives back the machine the first left"
    assert after == before, _where(t, "vmemcore_vmemmap_populate/free", f"{rule} (differs: {_differences(before, after)})")


def _kept_frames(m):
    """Frames the plugins' states keep as their mapping's bookkeeping (``pagetable_frames()``)."""
    return {pfn for state in m.plugin_states.values() for pfn, _ in getattr(state, "pagetable_frames", list)()}


def test_memmap_on_memory_is_what_the_hooks_said(vmemcore_target, capabilities, boot):
    """A hot-add asking for memmap_on_memory gets it exactly when the hooks allow it, else it is
    refused or falls back with the reason."""
    require(capabilities.memory_hotplug, "no memory hotplug")
    m = boot(hotplug={"memmap_on_memory": MemmapOnMemory.Y})
    t = vmemcore_target
    block = m.hotplug.block_size
    start = _hot_region(m, block)
    said = m.hotplug.supports_memmap_on_memory(block)
    rule = _where(t, "vmemcore_supports_memmap_on_memory", "memmap_on_memory is what the hooks said")
    before = _state(m)
    try:
        result = m.hotplug.add_memory(start, block, memmap_on_memory=True)
    except VmemcoreError as error:  # refused (a Veto), or the arch's populate could not use the altmap
        assert str(error) and (said.supported or (isinstance(error, Veto) and error.reasons)), \
            f"{rule}: refused without a reason ({error!r})"
        assert _state(m) == before, f"{rule}: a refused hot-add left changes behind"
        return
    if said.supported:  # used, or an arch_add_memory hook declined it and the note says so
        assert (result.memmap_on_memory and result.self_hosted_pages > 0) or result.note, \
            f"{rule}: allowed but silently not used"
    else:
        assert not result.memmap_on_memory and result.note, f"{rule}: not allowed ({said.reason}) but used"
    _check(m, t, "vmemcore_vmemmap_populate", "after a memmap_on_memory hot-add")


# -- fault injection --------------------------------------------------------------------------------

def _every_fault(target, boot, setup, op, rule):
    """Fail each allocation ``op`` makes, one at a time, on a fresh machine: it raises
    :class:`OutOfMemory` and leaves the machine as it was, or completes (a fallback)."""
    probe = boot()
    arg = setup(probe)
    probe.physmem.faults.arm()
    try:
        op(probe, arg)
    except VmemcoreError as error:
        pytest.skip(f"the operation is refused without any injected failure: {error}")
    attempts = probe.physmem.faults.attempts
    for index in range(1, attempts + 1):
        m = boot()
        arg = setup(m)
        before = _state(m)
        m.physmem.faults.arm(nth=index)
        try:
            op(m, arg)
        except OutOfMemory:
            after = _state(m)
            assert after == before, f"{rule}: a failure at allocation {index} of {attempts} left changes behind " \
                                    f"({_differences(before, after)})"
        finally:
            m.physmem.faults.disarm()
        _check(m, target, "vmemcore_vmemmap_populate", f"after a failure at allocation {index}")


def test_fault_at_every_allocation_of_a_populate(vmemcore_target, boot):
    _every_fault(vmemcore_target, boot, lambda m: _hot_region(m, m.sparse_geometry.section_size) >> m.geometry.page_shift,
                 lambda m, pfn: m.add_memmap(pfn, m.sparse_geometry.pages_per_section),
                 _where(vmemcore_target, "vmemcore_vmemmap_populate", "a failed populate rolls back"))


def test_fault_at_every_allocation_of_a_hot_add(vmemcore_target, capabilities, boot):
    require(capabilities.memory_hotplug, "no memory hotplug")
    _every_fault(vmemcore_target, boot, lambda m: _hot_region(m, m.hotplug.block_size),
                 lambda m, start: m.hotplug.add_memory(start, m.hotplug.block_size),
                 _where(vmemcore_target, "vmemcore_vmemmap_populate", "a failed hot-add rolls back"))


def test_fault_at_every_allocation_of_an_hvo_batch(vmemcore_target, capabilities, boot):
    """A failed HVO leaves folios unoptimized (as ``vmemmap_remap_free``'s rollback does): the
    pool grows anyway, and every folio, optimized or not, passes the kpageflags rule."""
    require(capabilities.hvo, "no HugeTLB Vmemmap Optimization")
    probe = boot(hugetlb={"optimize_vmemmap": True})
    sizes = [h for h in probe.hugetlb.hstates.values() if not probe.hugetlb.is_gigantic(h.size.size)]
    if not sizes:
        pytest.skip("no HugeTLB size below the buddy allocator's largest block")
    size = sizes[0].size.size
    probe.physmem.faults.arm()
    probe.hugetlb.resize(size, 2)
    for index in range(1, probe.physmem.faults.attempts + 1):
        m = boot(hugetlb={"optimize_vmemmap": True})
        m.physmem.faults.arm(nth=index)
        try:
            m.hugetlb.resize(size, 2)
        finally:
            m.physmem.faults.disarm()
        for folio in m.hugetlb.hstate(size).folios.values():
            broken = check_folio_flags(folio.head, kpageflags_runs(m, folio.head, 1 << folio.order))
            assert broken is None, _where(vmemcore_target, "vmemcore_hvo_support",
                                          f"after a failure at allocation {index}: {broken}")
        _check(m, vmemcore_target, "vmemcore_hvo_support", f"after a failure at allocation {index}")


# -- refusals, hook answers, determinism -----------------------------------------------------------

def test_refusals_are_typed_and_say_why(vmemcore_target, capabilities, vmemcore_registry):
    """A capability the arch lacks is a typed error (a Veto carrying the reason) when asked for, and
    every hook answers with the type its policy asks."""
    t = vmemcore_target
    require(capabilities.boots, "does not boot")
    for name, support in (("hvo", capabilities.hvo), ("memory_hotplug", capabilities.memory_hotplug),
                          ("zone_device", capabilities.zone_device), ("dax_dedup", capabilities.dax_dedup)):
        assert support.supported or support.reason, _where(t, f"vmemcore_{name}_support", "a refusal says why")
    if not capabilities.hvo.supported:
        with pytest.raises(Veto) as refused:
            t.machine(vmemcore_registry, hugetlb={"optimize_vmemmap": True})
        assert refused.value.reasons, _where(t, "vmemcore_hvo_support", "a Veto carries the reason")
    m = t.machine(vmemcore_registry)
    try:
        m.hooks.hugepage_sizes(m)
        m.hooks.memory_block_size(m)
        m.hooks.mappable_range(m)
        m.hooks.supports_memmap_on_memory(m, m.hotplug.memmap_pages() << m.geometry.page_shift)
    except PluginError as error:
        pytest.fail(str(error))


def test_the_same_machine_twice(vmemcore_target, boot):
    """The same target and operations give the same machine."""
    def run():
        m = boot()
        if m.hotplug.support.supported:
            try:
                m.hotplug.add_memory(_hot_region(m, m.hotplug.block_size), m.hotplug.block_size)
            except VmemcoreError:
                pass  # refused the same way both times
        sizes = sorted(h.size.size for h in m.hugetlb.hstates.values() if not m.hugetlb.is_gigantic(h.size.size))
        if sizes:
            m.hugetlb.resize(sizes[0], 3)
        return m.snapshot()

    assert run() == run(), _where(vmemcore_target, "vmemcore_vmemmap_populate", "the same machine twice")


def test_random_operation_sequences(vmemcore_target, vmemcore_registry, capabilities, sequences):
    """Hypothesis interleaves every operation the target offers, checks the machine after each
    step, undoes everything and compares with a fresh boot (``vmemcore.testing.stateful``)."""
    require(capabilities.boots, "does not boot")
    from .stateful import run

    run(vmemcore_target, vmemcore_registry, sequences)
