"""Memory hotplug: memory blocks added, onlined, offlined and removed, and memmap_on_memory.

Mirrors ``mm/memory_hotplug.c`` (``add_memory_resource``, ``check_hotplug_memory_range``,
``mhp_supports_memmap_on_memory``, ``create_altmaps_and_memory_blocks``, ``memory_block_online`` /
``memory_block_offline`` with ``mhp_init_memmap_on_memory``, ``online_pages``/``offline_pages``,
``try_remove_memory`` / ``remove_memory_blocks_and_altmaps``) and ``drivers/base/memory.c``. The
kernel profile picks the design (docs/kernel-map.md#memmap_on_memory-designs): the 2019 RFC
"mm, memory_hotplug: allocate memmap from the added memory range for sparse-vmemmap" (one altmap
over the whole added range, on by default, the memmap freed last and backwards), one block only
(5.12-6.7), or one altmap per memory block (6.8+); before 6.6 a refused request fails, since then
it falls back to a normal memmap.

Every operation is a transaction: a refusal or a failure leaves the machine as it was.
"""

from enum import StrEnum
from errno import E2BIG, EBUSY

import attrs

from .altmap import VmemAltmap
from .errors import BadRequest, PluginError, SimulatorLimit, Veto
from .geometry import Support
from .physmem import Owner, Use, Zone
from .profiles import MhpDesign
from .units import byte_range, format_size


class MemmapOnMemory(StrEnum):
    """The boot parameter ``memory_hotplug.memmap_on_memory``."""

    N = "N"  # off
    Y = "Y"  # on, where the memmap fills whole pageblocks
    FORCE = "force"  # 6.6+: on, the memmap rounded up to whole pageblocks


class BlockState(StrEnum):
    """A memory block's ``state`` in sysfs."""

    ONLINE = "online"
    OFFLINE = "offline"


SELF_HOSTED = Owner(Use.MEMMAP, self_hosted=True)
# force mode: altmap pages the memmap does not use, marked PageVmemmapSelfHosted all the same
ALTMAP_SPARE = Owner(Use.OFFLINE, reserved=True, self_hosted=True)


@attrs.frozen
class HotAddRequest:
    """What ``add_memory`` is asked to do; an arch plugin may return a changed copy."""

    start: int
    size: int
    node: int
    memmap_on_memory: bool


@attrs.define
class MemoryBlock:
    """``struct memory_block``: ``memoryN`` in sysfs."""

    id: int
    start_pfn: int
    nr_pages: int
    node: int
    state: BlockState = BlockState.OFFLINE
    zone: Zone = None
    altmap: VmemAltmap = None  # its own altmap (6.8+, and 5.12-6.7's single block)
    group: int = 0  # the start pfn of the hot-add it came from

    @property
    def end_pfn(self):
        return self.start_pfn + self.nr_pages


@attrs.frozen
class AddResult:
    blocks: tuple
    memmap_on_memory: bool
    self_hosted_pages: int
    note: str = ""  # why the memmap was not taken from the range, when it was asked for


def check_mappable(machine, start, end, what):
    """``mhp_range_allowed``: ``[start, end)`` lies inside the arch's mappable range
    (``arch_get_mappable_range``), else -E2BIG."""
    allowed = machine.hooks.mappable_range(machine)
    if not allowed.holds(start, end):
        raise BadRequest(f"{what} {byte_range(start, end)} exceeds the range {machine.arch.name} can map, "
                         f"{byte_range(allowed.start, allowed.end)} (-E2BIG)", errno=-E2BIG)


class Hotplug:
    """The machine's memory blocks and the hotplug operations on them."""

    def __init__(self, machine, mode=MemmapOnMemory.N):
        if mode is MemmapOnMemory.FORCE and not machine.profile.mhp_fallback:
            raise BadRequest(f"kernel {machine.profile.name} has no 'force' mode for memmap_on_memory (added in 6.6)")
        self.machine = machine
        self.mode = mode
        self.block_size = machine.hooks.memory_block_size(machine)
        if self.block_size < machine.sparse_geometry.section_size:
            raise PluginError(machine.plugin.name, "vmemcore_memory_block_size",
                              f"returned {self.block_size:#x}, less than a section ({machine.sparse_geometry.section_size:#x})")
        self.support = machine.hooks.memory_hotplug_support(machine)
        self.block_pages = self.block_size >> machine.geometry.page_shift
        self.blocks = {}  # id -> MemoryBlock
        self.range_altmaps = {}  # 2019 design: group start pfn -> the altmap of the whole range

    def snapshot(self):
        return ({i: attrs.asdict(b, recurse=False) | {"altmap": _altmap_state(b.altmap)} for i, b in self.blocks.items()},
                {k: _altmap_state(a) for k, a in self.range_altmaps.items()})

    # -- journaled state ------------------------------------------------------------------------
    def _record(self, undo):
        if self.machine.journal.active:
            self.machine.journal.record(undo)

    def _put_block(self, block):
        self.blocks[block.id] = block
        self._record(lambda: self.blocks.pop(block.id))

    def _drop_block(self, block):
        del self.blocks[block.id]
        self._record(lambda: self.blocks.__setitem__(block.id, block))

    def _set(self, block, **changes):
        old = {key: getattr(block, key) for key in changes}
        for key, value in changes.items():
            setattr(block, key, value)
        self._record(lambda: [setattr(block, k, v) for k, v in old.items()])

    # -- memmap_on_memory -----------------------------------------------------------------------
    def memmap_pages(self, force=None):
        """``memory_block_memmap_on_memory_pages``: the block's memmap in pages (pageblock-rounded in force mode)."""
        m = self.machine
        pages = -(-self.block_pages * m.sparse_geometry.struct_page_size // m.geometry.page_size)
        if self.mode is MemmapOnMemory.FORCE if force is None else force:
            pageblock = 1 << m.sparse_geometry.pageblock_order
            pages = -(-pages // pageblock) * pageblock
        return pages

    def supports_memmap_on_memory(self, size) -> Support:
        """``mhp_supports_memmap_on_memory`` for a hot-add of ``size`` bytes, with every reason."""
        m = self.machine
        profile = m.profile
        if profile.mhp_design is MhpDesign.RFC2019:
            return Support(True)
        if self.mode is MemmapOnMemory.N:
            return Support(False, "memory_hotplug.memmap_on_memory is off")
        reasons = []
        if profile.mhp_excludes_hvo and m.hugetlb.optimize_vmemmap:
            reasons.append("it is not compatible with hugetlb_free_vmemmap (5.14-5.19)")
        if profile.mhp_design is MhpDesign.SINGLE_BLOCK and size != self.block_size:
            reasons.append(f"the range must be exactly one memory block ({format_size(self.block_size)})")
        vmemmap_size = self.block_pages * m.sparse_geometry.struct_page_size
        pages = self.memmap_pages()
        pageblock = 1 << m.sparse_geometry.pageblock_order
        if vmemmap_size % m.geometry.page_size:
            reasons.append(f"the memmap of a block ({vmemmap_size} bytes) is not a whole number of pages")
        if pages % pageblock:
            reasons.append(f"the memmap of a block ({pages} pages) is not a multiple of a pageblock ({pageblock} pages)")
        if pages == self.block_pages:
            reasons.append("the memmap would fill the whole block")
        arch = [answer for answer in m.hooks.supports_memmap_on_memory(m, vmemmap_size) if answer is not None]
        if not arch and vmemmap_size % m.geometry.pmd.entry_span:
            arch = [Support(False, f"the memmap of a block ({format_size(vmemmap_size)}) does not fill whole "
                                   f"{format_size(m.geometry.pmd.entry_span)} PMD leaves")]
        reasons += [f"{m.arch.name}: {a.reason}" for a in arch if not a.supported]
        return Support(False, "; ".join(reasons)) if reasons else Support(True)

    # -- add ------------------------------------------------------------------------------------
    def add_memory(self, start, size, node=0, memmap_on_memory=False):
        """``add_memory``: present, offline memory blocks with their memmap populated."""
        m = self.machine
        start, size = m.rules.size("start", start), m.rules.size("size", size)
        m.rules.node("node", node)
        m.rules.flag("memmap_on_memory", memmap_on_memory)
        with m.transaction():
            page = m.geometry.page_size
            if size <= 0 or start % self.block_size or size % self.block_size:
                raise BadRequest(f"hot-add {byte_range(start, start + size)} is not aligned to the {format_size(self.block_size)} "
                                 "memory block size (-EINVAL)")
            if size // self.block_size > SimulatorLimit.MAX_RECORDS:
                raise SimulatorLimit(f"hot-add of {format_size(size)}: {size // self.block_size:,} memory blocks, more than "
                                     f"the {SimulatorLimit.MAX_RECORDS:,} the simulator keeps records of in one operation")
            if not self.support.supported:
                raise Veto(f"{m.arch.name} kernel {m.profile.name} has no memory hotplug: {self.support.reason}",
                           [(m.plugin.name, self.support.reason)])
            check_mappable(m, start, start + size, "hot-add")
            request = HotAddRequest(start, size, node, memmap_on_memory or m.profile.mhp_design is MhpDesign.RFC2019)
            note = ""
            for plugin, answer in m.hooks.arch_add_memory(m, request):
                changed = [f"{key} from {getattr(request, key):{form}} to {getattr(answer, key):{form}}"
                           for key, form in (("start", "#x"), ("size", "#x"), ("node", "d"))
                           if getattr(answer, key) != getattr(request, key)]
                if changed:
                    raise PluginError(plugin, "vmemcore_arch_add_memory",
                                      f"changed {', '.join(changed)}: arch_add_memory may change how the memmap is "
                                      "placed, never the range or the node")
                if request.memmap_on_memory and not answer.memmap_on_memory:
                    note = f"{plugin} cleared memmap_on_memory"
                request = answer
            use_altmap = False
            if request.memmap_on_memory:
                support = self.supports_memmap_on_memory(request.size)
                if support.supported:
                    use_altmap = True
                elif m.profile.mhp_fallback or m.profile.mhp_design is MhpDesign.RFC2019:
                    note = f"memmap_on_memory refused, memmap from RAM instead: {support.reason}"
                else:
                    raise Veto(f"memmap_on_memory refused (-EINVAL): {support.reason}", [(m.plugin.name, support.reason)])
            first, count = request.start // page, request.size // page
            m.physmem.hot_add(request.node, first, first + count)
            blocks = self._populate(first, count, request.node, use_altmap)
            hosted = sum(self.self_hosted_pages(b) for b in blocks) if use_altmap else 0
            return AddResult(tuple(b.id for b in blocks), use_altmap, hosted, note)

    def _populate(self, first, count, node, use_altmap):
        m = self.machine
        design = m.profile.mhp_design
        ids = range(first // self.block_pages, (first + count) // self.block_pages)
        blocks = [MemoryBlock(i, i * self.block_pages, self.block_pages, node, group=first) for i in ids]
        if use_altmap and design is MhpDesign.RFC2019:
            memmap = -(-count * m.sparse_geometry.struct_page_size // m.geometry.page_size)
            altmap = VmemAltmap(first, first + count - 1, free=memmap, journal=m.journal)
            self.range_altmaps[first] = altmap
            self._record(lambda: self.range_altmaps.pop(first))
            m.add_memmap(first, count, node, altmap)
        elif use_altmap:
            for block in blocks:  # create_altmaps_and_memory_blocks
                block.altmap = VmemAltmap(block.start_pfn, block.end_pfn - 1, free=self.memmap_pages(), journal=m.journal)
                m.add_memmap(block.start_pfn, block.nr_pages, node, block.altmap)
        else:
            m.add_memmap(first, count, node)
        for block in blocks:
            self._put_block(block)
        return blocks

    def self_hosted_pages(self, block):
        """The pfns at the start of ``block`` set aside for memmap (``altmap->free``), present but
        never managed."""
        if block.altmap is not None:
            return block.altmap.free
        altmap = self.range_altmaps.get(block.group)
        if altmap is None:
            return 0
        return max(0, min(block.end_pfn, altmap.base_pfn + altmap.free) - block.start_pfn)

    # -- online / offline -----------------------------------------------------------------------
    def block(self, block_id) -> MemoryBlock:
        self.machine.rules.block("block", block_id)
        if block_id not in self.blocks:
            raise BadRequest(f"there is no memory block {block_id}")
        return self.blocks[block_id]

    def online(self, block_id, zone=Zone.NORMAL):
        """``memory_block_online``: the memmap pages self-hosted, the rest to the buddy allocator."""
        m = self.machine
        zone = m.rules.zone("zone", zone)
        with m.transaction():
            block = self.block(block_id)
            if block.state is BlockState.ONLINE:
                raise BadRequest(f"memory block {block_id} is already online")
            hosted = self.self_hosted_pages(block)
            start = block.start_pfn + hosted
            pageblock = 1 << m.sparse_geometry.pageblock_order
            if start % pageblock:
                raise BadRequest(f"online_pages: pfn {start:#x} is not pageblock-aligned (-EINVAL)")
            self._init_memmap_on_memory(block, hosted, zone)
            if start < block.end_pfn:
                m.physmem.online(start, block.end_pfn, zone)
            self._set(block, state=BlockState.ONLINE, zone=zone)

    def _init_memmap_on_memory(self, block, hosted, zone):
        """``mhp_init_memmap_on_memory``: the altmap pages join the zone, marked self-hosted."""
        physmem = self.machine.physmem
        for start, end, owner in physmem.frames.items(block.start_pfn, block.start_pfn + hosted):
            physmem.retag(start, end - start, SELF_HOSTED if owner.use is Use.MEMMAP else ALTMAP_SPARE)
        if hosted:
            physmem.zones.set(block.start_pfn, block.start_pfn + hosted, zone)

    def offline(self, block_id):
        """``memory_block_offline``: free HugeTLB pages are dissolved, anything else in use fails.
        Returns how many HugeTLB pages were dissolved, per size name ({} if none)."""
        m = self.machine
        with m.transaction():
            block = self.block(block_id)
            if block.state is not BlockState.ONLINE:
                raise BadRequest(f"memory block {block_id} is not online")
            hosted = self.self_hosted_pages(block)
            start = block.start_pfn + hosted
            dissolved = self._dissolve_hugetlb(block, start)
            for s, e, owner in m.physmem.frames.items(start, block.end_pfn):
                if owner.use is not Use.FREE:
                    raise BadRequest(f"offline of memory block {block_id} failed (-EBUSY): pfn {s:#x} holds an unmovable "
                                     f"page ({owner})", errno=-EBUSY)
            m.physmem.offline(start, block.end_pfn)
            for s, e, owner in m.physmem.frames.items(block.start_pfn, start):  # mhp_deinit_memmap_on_memory
                m.physmem.retag(s, e - s, Owner(Use.MEMMAP) if owner.use is Use.MEMMAP else Owner(Use.OFFLINE))
            m.physmem.zones.set(block.start_pfn, start, None)
            self._set(block, state=BlockState.OFFLINE, zone=None)
            return dissolved

    def _dissolve_hugetlb(self, block, start):
        """``dissolve_free_hugetlb_folios``: the free HugeTLB folios in the range, lowest address
        first, each dissolved (vmemmap restored, memory freed) before the next; returns how many,
        per size name."""
        hugetlb = self.machine.hugetlb
        dissolved = {}
        victims = []
        for size, h in hugetlb.hstates.items():
            heads = h.folios.heads()
            victims.extend((head, size) for head in heads[heads.searchsorted(start):heads.searchsorted(block.end_pfn)].tolist())
        victims.sort()
        for head, size in victims:
            h = hugetlb.hstates[size]
            if hugetlb.dissolve(h, head):
                raise BadRequest(f"offline of memory block {block.id} failed (-EBUSY): a HugeTLB page's vmemmap "
                                 "could not be restored", errno=-EBUSY)
            dissolved[h.name] = dissolved.get(h.name, 0) + 1
        return dissolved

    # -- remove ---------------------------------------------------------------------------------
    def remove_memory(self, start, size):
        """``try_remove_memory``: every block offline; memmap freed with the arch's ``vmemmap_free``."""
        m = self.machine
        page = m.geometry.page_size
        start, size = m.rules.size("start", start), m.rules.size("size", size)
        with m.transaction():
            if size <= 0 or start % self.block_size or size % self.block_size:
                raise BadRequest(f"remove {byte_range(start, start + size)} is not aligned to the {format_size(self.block_size)} "
                                 "memory block size (-EINVAL)")
            first, count = start // page, size // page
            ids = range(first // self.block_pages, (first + count) // self.block_pages)
            missing = next((i for i in ids if i not in self.blocks), None)  # ids may be a huge range
            if missing is not None:
                raise BadRequest(f"memory block {missing} was never added (-EINVAL)")
            blocks = [self.blocks[i] for i in ids]
            online = [b.id for b in blocks if b.state is BlockState.ONLINE]
            if online:
                raise BadRequest(f"memory block {online[0]} is still online (-EBUSY)", errno=-EBUSY)
            with_altmap = [b for b in blocks if b.altmap is not None]
            if with_altmap and len(with_altmap) != len(blocks):
                raise BadRequest("some of these memory blocks have an altmap and some not (-EINVAL)")
            groups = {b.group for b in blocks}
            ranges = [g for g in groups if g in self.range_altmaps]
            if ranges:
                self._remove_rfc2019(ranges, blocks)
            elif with_altmap:
                for block in blocks:  # remove_memory_blocks_and_altmaps
                    m.remove_memmap(block.start_pfn, block.nr_pages, block.altmap)
                    if block.altmap.alloc:
                        m.stats.add("altmap_not_fully_unmapped", 1)
            else:
                m.remove_memmap(first, count)
            for block in blocks:
                self._drop_block(block)
            m.physmem.hot_remove(first, first + count)

    def _remove_rfc2019(self, groups, blocks):
        """The 2019 RFC (``MHP_MEMMAP_FROM_RANGE``): the whole added range goes at once, its sections'
        memmap freed backwards by ``free_deferred_vmemmap_range`` (the first pages hold the memmap of
        the later sections)."""
        m = self.machine
        for group in groups:
            altmap = self.range_altmaps[group]
            members = [b for b in self.blocks.values() if b.group == group]
            if {b.id for b in members} - {b.id for b in blocks}:
                raise BadRequest("the 2019 RFC's design (MHP_MEMMAP_FROM_RANGE) removes a hot-added range "
                                 "only as a whole (-EINVAL)")
            pps = m.sparse_geometry.pages_per_section
            for section_start in reversed(range(altmap.base_pfn, altmap.end_pfn + 1, pps)):
                m.remove_memmap(section_start, pps, altmap)
            del self.range_altmaps[group]
            self._record(lambda group=group, altmap=altmap: self.range_altmaps.__setitem__(group, altmap))

    # -- accounting -----------------------------------------------------------------------------
    def zone_pages(self):
        """{(node, zone): (present, managed)}: ``zone->present_pages`` and ``managed_pages``."""
        m = self.machine
        out = {}
        for zone_start, zone_end, zone in m.physmem.zones.items():
            for start, end, node in m.physmem.nodes.items(zone_start, zone_end):
                present, managed = out.get((node, zone), (0, 0))
                unmanaged = sum(e - s for s, e, owner in m.physmem.frames.items(start, end)
                                if owner.reserved or owner.self_hosted)
                out[(node, zone)] = (present + end - start, managed + end - start - unmanaged)
        return out


def _altmap_state(altmap):
    return None if altmap is None else (altmap.base_pfn, altmap.end_pfn, altmap.reserve, altmap.free, altmap.align, altmap.alloc)
