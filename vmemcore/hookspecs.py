"""The hooks an architecture plugin implements (pluggy specs, project name ``vmemcore``).

Every hook is named ``vmemcore_*`` and is called through pluggy (``pm.hook.NAME``), so
``tryfirst``/``trylast`` and ``wrapper=True`` observers work as pluggy documents. Each hook has
a policy, stated in its docstring and enforced in one place (``vmemcore.plugins.HOOK_POLICIES``):

- **owner**: exactly one plugin answers; two answers are refused and both plugins named;
- **optional**: at most one plugin answers; when none does, the stated default holds;
- **first true**: the first plugin returning True has handled the call; None means "not mine";
- **all count**: every plugin is asked; every answer counts (any refusal wins, all reasons kept);
- **chained**: each plugin in turn sees the previous plugin's answer.

Every answer is checked after the call; a bad one is a :class:`vmemcore.PluginError` naming the
plugin and the hook. A plugin may raise :class:`vmemcore.VmemcoreError` subclasses on purpose
(``OutOfMemory``, ``BadRequest``, ``Veto``); any other exception is reported as the plugin's fault.

The machine's life, and what of ``machine`` is valid in each phase:

1. *set-up*: ``arch``, ``variant``, ``profile``, ``features``; then ``geometry`` and
   ``sparse_geometry`` once the geometry hooks answered, and ``memory`` (the boot ranges).
2. *boot* (``sparse_init``): ``physmem`` holds memblock (``physmem.booting`` is True), the page
   table and the helpers of :mod:`vmemcore.arch` may be used.
3. *after boot*: the buddy allocator is up; ``hugetlb``, ``hotplug`` and ``zone_device`` exist
   once their set-up (which asks the hooks that concern them) has run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from .altmap import VmemAltmap
    from .config import MemoryRange
    from .geometry import ArchInfo, PageTableGeometry, PhysRange, SparseGeometry, Support, Variant
    from .hotplug import HotAddRequest
    from .archtypes import LiveEntryRule, PtdumpFormat
    from .machine import Machine
    from .mapping import VmemmapMapping
    from .profiles import KernelProfile
    from .zone_device import DevicePagemap

hookspec = pluggy.HookspecMarker("vmemcore")


@hookspec
def vmemcore_arch_info() -> ArchInfo | None:
    """Describe the architecture this plugin provides.

    Called once per plugin, when plugins are discovered (a ``Registry`` is made: by the CLI, a
    scenario's validation, or a ``Machine`` given no registry); machines reuse that answer, and
    nothing of a machine exists yet.

    Returns an :class:`vmemcore.ArchInfo` (name, variants, default variant, machine features, the
    dated kernel changes its hooks follow, the sizes its firmware may describe: ``machine.firmware``),
    or None from a plugin that provides no architecture (an observer).

    Policy: owner.
    """


@hookspec
def vmemcore_pagetable_geometry(variant: Variant, profile: KernelProfile) -> PageTableGeometry | None:
    """Give the geometry of the kernel page table that maps the vmemmap.

    Called once per machine during set-up, and by ``vmemcore arches ARCH``.

    :param variant: the selected variant of the arch.
    :param profile: the kernel profile (``profile.has(change)``, ``profile.at_least(6, 14)``).

    Returns a :class:`vmemcore.PageTableGeometry`: levels from the top table down to the PTE, their
    bits and table sizes, the bytes a table takes from the allocator after boot and at boot
    (``alloc_bytes``, ``boot_alloc_bytes``; less than a page makes tables share a frame as
    fragments, freed with the last of them), which levels may hold leaves.

    Policy: owner.
    """


@hookspec
def vmemcore_sparse_geometry(variant: Variant, profile: KernelProfile,
                             memory: tuple[MemoryRange, ...]) -> SparseGeometry | None:
    """Give the SPARSEMEM constants of the architecture.

    Called once per machine during set-up (after the page-table geometry), by scenario validation
    and by ``vmemcore arches ARCH``.

    :param variant: the selected variant of the arch.
    :param profile: the kernel profile.
    :param memory: the machine's memory at boot, :class:`vmemcore.config.MemoryRange` items (node,
        start, size), for an arch that places its vmemmap by where RAM starts or ends (arm64's
        ``memstart_addr``, s390's ``setup_kernel_memory_layout``); empty where no machine is built
        (``vmemcore arches``, the checks of ``[machine]``); the checks of ``[[memory]]`` ask again
        with the ranges read.

    Returns a :class:`vmemcore.SparseGeometry` (section size, max physical address bits, memory
    block size, vmemmap base and size, pageblock order). The engine refuses memory whose struct
    pages would fall outside ``[vmemmap_base, vmemmap_base + vmemmap_size)``.

    Policy: owner.
    """


@hookspec(firstresult=True)
def vmemcore_vmemmap_populate(machine: Machine, start: int, end: int, node: int, altmap: VmemAltmap | None) -> bool | None:
    """Map the struct pages in the virtual range ``[start, end)`` (the arch's ``vmemmap_populate``).

    Called by the engine's section populate (``__populate_section_memmap``) at boot and after it,
    with a range that is a whole number of sub-sections' memmap: at boot one call per run of
    consecutive present sections of one node, which on every built-in architecture maps exactly
    what one call per section would; after boot a section piece, or a run of whole sections when
    each section's memmap fills whole PMD leaves (``vmemcore.sparse.Sparse.batches``), standing
    for the kernel's one call per section.

    :param machine: the machine (boot or after boot).
    :param start: first vmemmap byte to map.
    :param end: one past the last byte.
    :param node: the node the memmap should live on.
    :param altmap: a :class:`vmemcore.VmemAltmap` the frames should come from, or None.

    The plugin maps with the helpers of :mod:`vmemcore.arch` and raises
    :class:`vmemcore.OutOfMemory` when an allocation fails; the engine rolls back what was changed.
    Returns True when handled (None: "not mine", the next plugin is asked).

    Policy: first true.
    """


@hookspec(firstresult=True)
def vmemcore_vmemmap_free(machine: Machine, start: int, end: int, altmap: VmemAltmap | None) -> bool | None:
    """Unmap and free the struct pages in ``[start, end)`` (the arch's ``vmemmap_free``).

    Called after boot when a section's or sub-section's memmap is depopulated (hot-remove, a
    device pagemap's removal, a boot section's removal), after the engine cleared the range's
    sub-section bits (as ``section_deactivate`` does), so ``pfn_valid`` is already false for it;
    a run of whole hot-added sections whose memmap fills whole PMD leaves is one call
    (``vmemcore.sparse.Sparse.batches``), standing for the kernel's one call per section (so
    :func:`vmemcore.arch.vmemmap_teardown` ends it with a flush per section).

    :param machine: the machine, after boot.
    :param start: first vmemmap byte to unmap.
    :param end: one past the last byte.
    :param altmap: the altmap the frames came from, or None.

    The plugin calls :func:`vmemcore.arch.vmemmap_teardown` with its policy (which leaves are
    freed whole or tracked, which empty tables go, where frames return, how the TLB is flushed).
    Returns True when handled (None: "not mine").

    Policy: first true.
    """


@hookspec(firstresult=True)
def vmemcore_vmemmap_populate_compound_pages(machine: Machine, start_pfn: int, start: int, end: int, node: int,
                                             pgmap: DevicePagemap) -> bool | None:
    """Map the deduplicated memmap of a device pagemap's section piece the arch's own way (an arch
    that defines ``vmemmap_populate_compound_pages``, as powerpc radix does since 6.6).

    Called after boot by the engine's section populate (``__populate_section_memmap``) for each
    section piece of a ZONE_DEVICE pagemap whose vmemmap can be deduplicated
    (``vmemmap_can_optimize``), in ascending order (a run of whole sections at once when
    ``vmemcore.sparse.Sparse.batches``), instead of the generic
    ``vmemmap_populate_compound_pages`` of ``mm/sparse-vmemmap.c``.

    :param machine: the machine, after boot.
    :param start_pfn: the first pfn of the section piece.
    :param start: first vmemmap byte to map (``pfn_to_page(start_pfn)``).
    :param end: one past the last byte.
    :param node: the node the memmap should live on.
    :param pgmap: the :class:`vmemcore.zone_device.DevicePagemap` (its ``vmemmap_nr`` pages per
        compound page).

    The plugin maps with :func:`vmemcore.arch.vmemmap_populate_compound_by_address` (or another
    helper) and raises :class:`vmemcore.OutOfMemory` when an allocation fails.
    Returns True when handled; None: "not mine".

    Policy: first true; default (no plugin handles it): the generic populate.
    """


@hookspec
def vmemcore_vmemmap_mapping(machine: Machine) -> VmemmapMapping | None:
    """Give the vmemmap's mapping when it is not the Linux page table (powerpc's hash MMU bolts
    each vmemmap block into the hash page table and records it in ``vmemmap_list``).

    Called once per machine during set-up, right after the page table is made and before boot;
    ``machine.geometry``, ``machine.sparse_geometry`` and ``machine.plugin_state`` may be used.

    :param machine: the machine being set up.

    Returns a :class:`vmemcore.arch.VmemmapMapping` the engine reads the vmemmap through
    (``pfn_to_page`` translation, leaves and their frames, read-only or not), which the plugin's
    ``vmemcore_vmemmap_populate`` and ``vmemcore_vmemmap_free`` keep up to date; None: the Linux
    page table (``machine.pagetable``).

    Policy: optional; default: the Linux page table.
    """


@hookspec
def vmemcore_pgtable_cache_init(machine: Machine) -> None:
    """Set up what the arch builds in its page tables once boot memory is handed over
    (the kernel's ``pgtable_cache_init``; riscv pre-allocates the vmemmap's upper tables there).

    Called once per machine, right after boot, when the buddy allocator is up and before HugeTLB
    and hotplug are set up.

    :param machine: the machine, after boot.

    Returns None; what the plugin allocates is accounted as page-table pages.

    Policy: all count (every plugin is called).
    """


@hookspec
def vmemcore_hugepage_sizes(machine: Machine) -> tuple | None:
    """List the HugeTLB page sizes the architecture offers on this machine
    (``arch_hugetlb_valid_size``).

    Called once per machine during set-up, before boot (boot-time gigantic pages are reserved from
    memblock before ``sparse_init``); ``machine.geometry`` and ``machine.features`` are valid
    (features such as x86_64 ``gbpages`` may remove a size).

    :param machine: the machine being set up.

    Returns a tuple of :class:`vmemcore.HugePageSize` (size, the page-table level that maps it,
    the count of contiguous entries for arm64-style contiguous sizes); the engine checks that the
    level exists, may hold leaves, and that ``contiguous`` of its entries span the size.

    Policy: optional; default: no HugeTLB sizes.
    """


@hookspec
def vmemcore_hvo_support(machine: Machine) -> Support | None:
    """Say whether this kernel (``machine.profile``) has HugeTLB Vmemmap Optimization on the arch
    (``ARCH_WANT_OPTIMIZE_HUGETLB_VMEMMAP``).

    Called once per machine during set-up, before boot.

    :param machine: the machine being set up.

    Returns a :class:`vmemcore.Support`: yes, or no with the kernel's reason (arm64 lost HVO in
    6.3 to break-before-make, for instance), which the engine reports when HVO is asked for.

    Policy: optional; default: no, "the plugin does not say whether it has HVO".
    """


@hookspec
def vmemcore_live_entry_rule(machine: Machine) -> LiveEntryRule | None:
    """Say what may change in a live (valid) page-table entry without break-before-make.

    Called once per machine during set-up, when live-entry checking is on (``vmemcore run
    --check-live-entries``, ``Machine(check_live_entries=True)``, the conformance suite).

    :param machine: the machine being set up.

    Returns a :class:`vmemcore.arch.LiveEntryRule`: whether the output address may change in
    place, which flag bits may, whether entries with the contiguous bit may change at all, whether
    the CPU may offer FEAT_BBM level 2, and the kernel's rule in words (arm64:
    ``pgattr_change_is_safe``). Every write of a live entry is checked against it, and HVO's
    remap strategies (``[hugetlb] vmemmap_remap``) are judged by it.

    Policy: optional; default: anything may change in place (x86's rule).
    """


@hookspec
def vmemcore_hugetlb_vmemmap_preinit(machine: Machine) -> Support | None:
    """Say whether the arch builds boot-time gigantic pages' vmemmap already optimized
    (``ARCH_WANT_HUGETLB_VMEMMAP_PREINIT``, x86_64 since 6.15).

    Called once per machine during set-up, before ``sparse_init``, when HVO is on and gigantic
    pages are reserved at boot.

    :param machine: the machine being set up.

    Returns a :class:`vmemcore.Support`.

    Policy: optional; default: no.
    """


@hookspec
def vmemcore_dax_vmemmap_support(machine: Machine) -> Support | None:
    """Say whether this kernel (``machine.profile``) lets the arch deduplicate the vmemmap of
    device compound pages (device-dax; the arch half of ``vmemmap_can_optimize``).

    Called after boot, when a ZONE_DEVICE pagemap is added and each time its memmap is populated,
    before the generic conditions (power-of-two struct page, no altmap, more than
    ``VMEMMAP_RESERVE_NR`` vmemmap pages per compound page).

    :param machine: the machine, after boot.

    Returns a :class:`vmemcore.Support`: yes when the arch selects
    ``ARCH_WANT_OPTIMIZE_DAX_VMEMMAP`` (6.6+; from the dedup's merge in 5.19 until the opt-in of
    6.4/6.6 the rule was generic on every arch), or no with the kernel's reason, reported as why
    a pagemap's vmemmap was not deduplicated.

    Policy: optional; default: no, "the plugin does not say whether it can dedup".
    """


@hookspec
def vmemcore_memory_hotplug_support(machine: Machine) -> Support | None:
    """Say whether this kernel has memory hotplug on the arch (``ARCH_ENABLE_MEMORY_HOTPLUG`` and
    ``ARCH_ENABLE_MEMORY_HOTREMOVE``).

    Called once per machine after boot, when hotplug is set up; a refusal makes every hot-add a
    :class:`vmemcore.Veto` carrying the reason.

    :param machine: the machine, after boot.

    Returns a :class:`vmemcore.Support`, or None for no opinion.

    Policy: all count; default: yes.
    """


@hookspec
def vmemcore_zone_device_support(machine: Machine) -> Support | None:
    """Say whether this kernel can build ``ZONE_DEVICE`` on the arch (``memremap_pages``;
    ``ZONE_DEVICE`` depends on the arch's memory hotplug and, before 6.16, ``ARCH_HAS_PTE_DEVMAP``).

    Called after boot, when a device pagemap is added; a refusal makes the add a
    :class:`vmemcore.Veto` carrying the reason.

    :param machine: the machine, after boot.

    Returns a :class:`vmemcore.Support`, or None for no opinion.

    Policy: all count; default: yes.
    """


@hookspec
def vmemcore_mappable_range(machine: Machine) -> PhysRange | None:
    """Give the physical range memory may be hot-added in (``arch_get_mappable_range``).

    Called after boot, for every hot-add and device pagemap (``mhp_range_allowed``); a range
    outside it is refused with -E2BIG, as the kernel does.

    :param machine: the machine, after boot.

    Returns a :class:`vmemcore.PhysRange` ``[start, end)``.

    Policy: optional; default: ``[0, 2**max_physmem_bits)``.
    """


@hookspec
def vmemcore_memory_block_size(machine: Machine) -> int | None:
    """Give the memory block size (``memory_block_size_bytes``) of this machine, in bytes.

    Called once per machine after boot, when memory hotplug is set up (x86_64 probes it from the
    end of boot memory).

    :param machine: the machine, after boot.

    Returns a power of two, at least a section.

    Policy: optional; default: the sparse geometry's ``memory_block_size``.
    """


@hookspec
def vmemcore_supports_memmap_on_memory(machine: Machine, vmemmap_size: int) -> Support | None:
    """Say whether the arch allows a memory block's memmap (``vmemmap_size`` bytes) on the block
    itself (``ARCH_MHP_MEMMAP_ON_MEMORY_ENABLE``, ``arch_supports_memmap_on_memory``).

    Called after boot for every hot-add that asks for memmap_on_memory, after the generic
    conditions of ``mhp_supports_memmap_on_memory``.

    :param machine: the machine, after boot.
    :param vmemmap_size: bytes of memmap one memory block needs.

    Returns a :class:`vmemcore.Support`, or None for the generic rule (the memmap fills whole
    PMD leaves).

    Policy: all count: any refusal wins, and every reason is reported.
    """


@hookspec
def vmemcore_arch_add_memory(machine: Machine, request: HotAddRequest) -> HotAddRequest | None:
    """Let the arch adjust a hot-add before anything is added (``arch_add_memory``).

    Called after boot, once per hot-add, with a :class:`vmemcore.hotplug.HotAddRequest`.

    :param machine: the machine, after boot.
    :param request: the request as the previous plugin left it.

    Returns a changed request, or None to leave it. The arch may change how the memmap is placed
    (the 2019 memmap-from-range design's s390 clears ``memmap_on_memory``: its standby memory only
    becomes accessible when it is onlined), never the range or the node: the engine refuses such an
    answer and names the plugin. A change is reported to the user with the plugin's name.

    Policy: chained.
    """


@hookspec
def vmemcore_ptdump_format(machine: Machine) -> PtdumpFormat | None:
    """Say how the arch's kernel page-table dump prints (``kernel_page_tables`` in debugfs: x86
    ``arch/x86/mm/dump_pagetables.c``, arm64 ``arch/arm64/mm/ptdump.c``, ...).

    Called when the vmemmap's page tables are dumped (``vmemcore ptdump``), after boot or after a
    step; the engine walks the tables and merges runs, the format only says how they print.

    :param machine: the machine whose tables are dumped (its geometry names the levels).

    Returns a :class:`vmemcore.arch.PtdumpFormat`: the line layout, the attribute columns, the
    printed level names, how an empty run prints (or that it does not), the marker lines, and
    whether physical addresses are printed and end runs.

    Policy: optional; default: a generic layout (address range, size, level, RW or ro).
    """
