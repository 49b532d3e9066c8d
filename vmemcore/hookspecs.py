"""The hooks an architecture plugin implements (pluggy specs, project name ``vmemcore``).

Every hook is named ``vmemcore_*``. The engine never calls ``pm.hook`` directly: it goes through
:class:`vmemcore.plugins.ArchHooks`, which checks each answer, names the plugin that gave a bad one,
and writes the trace. Geometry questions have exactly one owning plugin: if two plugins answer, the
engine refuses the machine and names both. Action hooks (populate, free) are first-result-wins.
"""

import pluggy

hookspec = pluggy.HookspecMarker("vmemcore")


@hookspec
def vmemcore_arch_info():
    """Describe the architecture this plugin provides.

    Called once when plugins are discovered (``vmemcore arches``) and when a machine is built.
    Returns a :class:`vmemcore.ArchInfo` (name, variants, default variant, machine features), or
    None from a plugin that provides no architecture (an observer). All results are collected; a
    machine's plugin manager must hold exactly one plugin that answers.
    """


@hookspec
def vmemcore_pagetable_geometry(variant, profile):
    """Give the geometry of the kernel page table that maps the vmemmap.

    Called once per machine, with the selected :class:`vmemcore.Variant` and
    :class:`vmemcore.KernelProfile`. Returns a :class:`vmemcore.PageTableGeometry` (levels from the
    top table down to the PTE, bits and table sizes, which levels may hold leaves). Exactly one
    plugin must answer; every other plugin returns None.
    """


@hookspec
def vmemcore_sparse_geometry(variant, profile):
    """Give the SPARSEMEM constants of the architecture.

    Called once per machine, with the selected variant and kernel profile. Returns a
    :class:`vmemcore.SparseGeometry` (section size, max physical address bits, memory block size,
    vmemmap base and size, pageblock order). Exactly one plugin must answer.
    """


@hookspec(firstresult=True)
def vmemcore_vmemmap_populate(machine, start, end, node, altmap):
    """Map the struct pages in the virtual range ``[start, end)`` (the arch's ``vmemmap_populate``).

    Called by the engine's section populate (``__populate_section_memmap``) with a range that is a
    whole number of sub-sections' memmap: one sub-section range for a hot-add, and at boot one call
    per run of consecutive present sections of one node, which on every built-in architecture maps
    exactly what one call per section would. ``node`` is the node the memmap should live on;
    ``altmap`` is a :class:`vmemcore.VmemAltmap` or None. The plugin uses the engine's helpers
    (``vmemcore.populate``) and raises :class:`vmemcore.OutOfMemory` when an allocation fails; the
    engine rolls back what was changed. Returns True when handled; the first True wins.
    """


@hookspec(firstresult=True)
def vmemcore_vmemmap_free(machine, start, end, altmap):
    """Unmap and free the struct pages in ``[start, end)`` (the arch's ``vmemmap_free``).

    Called when a section's or sub-section's memmap is depopulated. The plugin decides which frames
    go back where (boot memory, buddy, altmap), which page-table pages are freed when empty, and
    what partly used leaves keep. Returns True when handled; the first True wins.
    """


@hookspec
def vmemcore_hugepage_sizes(machine):
    """List the HugeTLB page sizes the architecture offers on this machine.

    Called once when the machine's hstates are set up, after boot (features such as x86_64
    ``gbpages`` may remove a size). Returns a tuple of :class:`vmemcore.HugePageSize` (size, the
    page-table level that maps it, the contiguous-entry count for arm64-style contiguous sizes).
    Exactly one plugin must answer.
    """


@hookspec
def vmemcore_hvo_support(machine):
    """Say whether this kernel (``machine.profile``) has HugeTLB Vmemmap Optimization on the arch.

    Called when the machine's hstates are set up. Returns a :class:`vmemcore.Support`: yes, or no
    with the kernel's reason (arm64 lost HVO in 6.3 to break-before-make, for instance), which the
    engine reports when HVO is asked for. Exactly one plugin must answer.
    """


@hookspec
def vmemcore_memory_block_size(machine):
    """Give the memory block size (``memory_block_size_bytes``) of this machine, in bytes.

    Called once after boot, when memory hotplug is set up (x86_64 probes it from the end of boot
    memory). Returns an int, or None to keep the sparse geometry's ``memory_block_size``. Exactly
    one plugin may answer.
    """


@hookspec
def vmemcore_supports_memmap_on_memory(machine, vmemmap_size):
    """Say whether the arch allows a memory block's memmap (``vmemmap_size`` bytes) on the block itself.

    Called for every hot-add that asks for memmap_on_memory, after the generic conditions of
    ``mhp_supports_memmap_on_memory``. Returns a :class:`vmemcore.Support` (no: the arch does not
    select ARCH_MHP_MEMMAP_ON_MEMORY_ENABLE in this kernel, or its ``arch_supports_memmap_on_memory``
    refuses), or None for the generic rule (the memmap fills whole PMD leaves). All answers count:
    any refusal wins, and every reason is reported.
    """


@hookspec
def vmemcore_arch_add_memory(machine, request):
    """Let the arch adjust a hot-add before anything is added (``arch_add_memory``).

    Called once per hot-add with a :class:`vmemcore.hotplug.HotAddRequest`. Returns a changed
    request (seed 004's s390 clears ``memmap_on_memory``: its standby memory only becomes
    accessible when it is onlined), or None to leave it. Every plugin is asked, each seeing the
    previous answer; a change is reported to the user with the plugin's name.
    """


@hookspec
def vmemcore_dax_vmemmap_support(machine):
    """Say whether this kernel (``machine.profile``) lets the arch deduplicate the vmemmap of
    device compound pages (device-dax; the arch half of ``vmemmap_can_optimize``).

    Called each time the memmap of a ZONE_DEVICE pagemap is populated, and when the pagemap is
    added, before the generic conditions (power-of-two struct page, no altmap, more than
    ``VMEMMAP_RESERVE_NR`` vmemmap pages per compound page). Returns a :class:`vmemcore.Support`:
    yes when the arch selects ``ARCH_WANT_OPTIMIZE_DAX_VMEMMAP`` (6.6+; from the dedup's merge in
    5.19 until the opt-in of 6.4/6.6 the rule was generic on every arch), or no with the kernel's
    reason, which the engine reports as why a pagemap's vmemmap was not deduplicated. Exactly one
    plugin must answer (a plugin that does not implement it gets no dedup).
    """


@hookspec
def vmemcore_hugetlb_vmemmap_preinit(machine):
    """Say whether the arch builds boot-time gigantic pages' vmemmap already optimized.

    Called at boot, before ``sparse_init``, when HVO is on and gigantic pages are reserved
    (ARCH_WANT_HUGETLB_VMEMMAP_PREINIT, x86_64 since 6.15). Returns a :class:`vmemcore.Support`,
    or None for no. At most one plugin answers; an arch without this hook has no pre-HVO.
    """
