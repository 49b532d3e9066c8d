"""Tearing down a range of the vmemmap: one walk, the arch's policy as arguments.

The kernel writes this walk once per architecture, because C cannot take a policy as an argument:
x86 ``remove_pagetable`` (``arch/x86/mm/init_64.c``), s390 ``remove_pagetable``
(``arch/s390/mm/vmem.c``), powerpc ``remove_pagetable`` (``arch/powerpc/mm/book3s64/radix_pgtable.c``)
and arm64 ``unmap_hotplug_range`` + ``free_empty_tables`` (``arch/arm64/mm/mmu.c``). They differ in
a few answers, which :class:`TeardownPolicy` holds: whether a leaf the range covers only in part is
still used (never asked: freed whole, as arm64; the sub-PMD ``PAGE_UNUSED`` marks, as x86 and s390;
``pfn_valid`` of the sub-sections it serves, as powerpc's ``vmemmap_populated``), which empty
tables are freed (by level, and inside which floor and ceiling), and how the TLB is flushed.
Frames go back where they came from: to the altmap when it holds them (``vmem_altmap_free``),
else to memblock (boot frames, ``free_reserved_page``) or the buddy allocator.
"""

import numpy as np

from .archtypes import Flush, InUse, TeardownPolicy
from .errors import BadRequest
from .live_entries import unfold_contiguous
from .pagetable import LEAF, PRESENT, table_index_range
from .populate import give_back_frames


def vmemmap_teardown(machine, start, end, altmap, policy: TeardownPolicy):
    """Unmap ``[start, end)`` of the vmemmap and free what is no longer used, as ``policy`` says.
    The kernel's ``vmemmap_free`` frees one section's memmap at most (``section_deactivate``); a
    range of several stands for one call per section (:meth:`vmemcore.sparse.Sparse.batches`),
    so the closing flush is one per section. The walk frees and never allocates, so its frees
    reach the allocator gathered (:meth:`vmemcore.physmem.PhysMem.releases_gathered`)."""
    with machine.physmem.releases_gathered():
        _teardown(machine, machine.pagetable.top, start, end, altmap, policy)
    step, base = machine.sparse_geometry.section_memmap_bytes, machine.sparse_geometry.vmemmap_base
    sections = (end - 1 - base) // step - (start - base) // step + 1
    _flush(machine, policy.flush_end, start, end, times=sections)


def vmemmap_boot_frame(machine, start, end):
    """The first vmemmap address in ``[start, end)`` whose leaf is backed by boot (reserved)
    frames, or None: arm64's ``prevent_bootmem_remove_notifier`` refuses to remove such memory."""
    for table, lo, hi in machine.pagetable.tables_in(start, end):
        leaves = np.flatnonzero(table.flags[lo:hi] & LEAF) + lo
        for i, pfn in zip(leaves.tolist(), table.pfns[leaves].tolist()):
            owner = machine.physmem.owner(pfn)  # None: device memory (a ZONE_DEVICE altmap)
            if owner is not None and owner.reserved:
                return table.va(i)
    return None


def _flush(machine, flush, start, end, times=1):
    if flush is Flush.ALL:
        machine.flush_tlb_all(times)
    elif flush is Flush.RANGE:
        machine.flush_tlb_kernel_range(start, end, times)


def _teardown(machine, table, start, end, altmap, policy):
    lo, hi = table_index_range(table, start, end)
    if table.depth == len(machine.geometry.levels) - 1:  # a PTE table: leaves only
        _teardown_ptes(machine, None, [(None, table, start, end)], altmap, policy)
        return
    children = []
    leaves = []
    flags = table.flags[lo:hi].tolist()  # few entries above the PTE level: Python beats numpy here
    for i, flag in enumerate(flags, lo):
        if flag & PRESENT:
            (leaves if flag & LEAF else children).append(i)
    if leaves:
        pfns = _clear_leaves(machine, table, np.array(leaves, dtype=np.int64), start, end, policy)
        if pfns is not None:
            give_back_frames(machine, machine.vmemmap_refs.put_tables([pfns])[0],
                             table.level.entry_span >> machine.geometry.page_shift, altmap)
    spans = [(i, table.children[i], max(table.va(i), start), min(table.va(i + 1), end)) for i in children]
    if table.depth + 1 == len(machine.geometry.levels) - 1:
        if spans:
            _teardown_ptes(machine, table, spans, altmap, policy)
        return
    for i, child, first, last in spans:
        _teardown(machine, child, first, last, altmap, policy)
        if child.empty and _frees_table(table, i, first, last, policy):
            free_table(machine, table, i)


def _teardown_ptes(machine, parent, spans, altmap, policy):
    """Tear down the PTE tables ``spans`` (``(index in parent, table, first, last)`` each, in
    walk order), freeing each one the policy frees once empty: the PTEs of all are cleared first
    and their references dropped together, then each table's frames are given back and the table
    freed in turn, so that the frees come in the order of a walk a table at a time."""
    cleared = []
    for _, table, first, last in spans:
        lo, hi = table_index_range(table, first, last)
        present = np.flatnonzero(table.flags[lo:hi] & PRESENT) + lo
        pfns = _clear_leaves(machine, table, present, first, last, policy) if len(present) else None
        cleared.append(pfns if pfns is not None else np.empty(0, dtype=np.int64))
        _flush(machine, policy.flush_pte_table, first, last)
    freed = machine.vmemmap_refs.put_tables(cleared)
    machine.structpages.forget_many(np.concatenate(freed))
    for (i, table, first, last), frames in zip(spans, freed):
        give_back_frames(machine, frames, 1, altmap, forget=False)
        if parent is not None and table.empty and _frees_table(parent, i, first, last, policy):
            free_table(machine, parent, i)


def _clear_leaves(machine, table, leaves, start, end, policy):
    """Clear the leaves ``leaves`` of ``table`` that are no longer used; returns their frames
    (None when none is cleared). Only the first and the last leaf can be partly covered by
    ``[start, end)``."""
    first, last = int(leaves[0]), int(leaves[-1])
    freed = leaves
    if table.va(first) < start or table.va(last + 1) > end:
        kept = [i for i in {first, last} if not (start <= table.va(i) and table.va(i + 1) <= end)
                and _still_used(machine, table, i, max(table.va(i), start), min(table.va(i + 1), end), policy.in_use)]
        freed = np.setdiff1d(leaves, kept) if kept else leaves
        if not len(freed):
            return None
    if table in machine.pagetable.cont_tables:
        unfold_contiguous(machine, table, freed, keep=freed)
    pfns = table.pfns[freed]
    machine.pagetable.clear_leaves(table, freed, function="vmemmap_free")
    if policy.flush_leaf is not Flush.NONE:
        for i in freed.tolist():
            _flush(machine, policy.flush_leaf, table.va(i), table.va(i) + machine.geometry.page_size)
    return pfns


def _still_used(machine, table, index, first, last, in_use):
    if in_use is InUse.SUB_PMD:
        return table.depth == machine.geometry.pmd_depth and not machine.sub_pmd.pmd_is_unused(first, last)
    if in_use is InUse.PFN_VALID:
        return vmemmap_populated(machine, table.va(index), table.level.entry_span)
    return False


def _frees_table(parent, index, first, last, policy):
    """Is the empty child table at ``parent[index]`` freed? (its level, then floor and ceiling)"""
    child = parent.children[index]
    if policy.free_tables is not None and child.level.name not in policy.free_tables:
        return False
    span = parent.level.entry_span
    if policy.floor is not None and first // span * span < policy.floor:
        return False
    return policy.ceiling is None or last <= policy.ceiling // span * span


def free_table(machine, parent, index):
    """Detach the table under ``parent[index]`` and free it (``free_pagetable``; its frame goes with
    the last table in it)."""
    table = machine.pagetable.detach(parent, index)
    machine.table_frames.free(table.pfn)
    return table


def vmemmap_populated(machine, vaddr, size) -> bool:
    """Is any pfn whose struct page lies in ``[vaddr, vaddr + size)`` still ``pfn_valid``?
    (powerpc's ``vmemmap_populated``, which looks a sub-section apart from the first pfn: a leaf or
    page starts on a sub-section or lies inside one, so every present section is on its walk.)"""
    sparse, geometry = machine.sparse, machine.sparse_geometry
    lo, hi = geometry.page_to_pfn(vaddr), geometry.page_to_pfn(vaddr + size)
    for s, e, _ in sparse.sections.items(sparse.section_nr(lo), sparse.section_nr(hi - 1) + 1):
        pfn, last = max(lo, sparse.section_pfn(s)), min(hi, sparse.section_pfn(e))
        while pfn < last:
            if sparse.valid(pfn):
                return True
            pfn += geometry.pages_per_subsection
    return False



def vmemmap_unmap_leaf(machine, addr, function="remove_pagetable"):
    """``remove_pagetable(addr, addr + span, direct=true)`` of the one leaf mapping ``addr`` (powerpc
    ``radix__vmemmap_remove_mapping``): the leaf is cleared and its frames left to the caller, every
    table it leaves empty is freed bottom up (the top table stays), and the range is flushed once."""
    pt = machine.pagetable
    hit = pt.lookup(addr)
    if hit is None:
        raise BadRequest(f"vmemmap address {addr:#x} is not mapped")
    table, index = hit
    start = table.va(index)
    span = table.level.entry_span
    pt.clear_leaves(table, np.array([index]), function=function)
    while table.depth > 0 and table.empty:
        parent = pt.walk(start, table.depth - 1)
        free_table(machine, parent, parent.index(start))
        table = parent
    machine.flush_tlb_kernel_range(start, start + span)
