"""One simulated computer: an arch plugin and its variant, a kernel profile, physical memory.

Building a ``Machine`` boots it: memory is declared, ``sparse_init`` maps the memmap of every
present section through the arch plugin, and memblock hands over to the buddy allocator. Every
public operation afterwards is a transaction: if it fails, the machine is as it was.
"""

from contextlib import contextmanager

import numpy as np

from .badpage import BadPages
from .config import ConfigValidator, HotplugSpec, HugetlbSpec, MachineConfig, machine_config, place_kernel_image
from .errors import BadRequest, PluginError, SimulatorLimit
from .journal import Journal
from .pagetable import LEAF, PRESENT, PageTable
from .pgalloc import TableFrames
from .physmem import KERNEL_IMAGE, PhysMem, Use
from .populate import VmemmapRefs
from .plugins import Registry
from . import profiles
from .profiles import get_profile
from .sparse import Sparse
from .structpage import StructPages
from .subpmd import SubPmdTracker
from .hotplug import Hotplug
from .hugetlb import HugeTLB
from .live_entries import LiveEntryChecker, check_contiguous
from .stats import Counters, ordered
from .units import format_size
from .zone_device import ZoneDevice


class Machine:
    """A booted machine, built from a :class:`~vmemcore.config.MachineConfig`.

    ``Machine(arch, variant, kernel, memory, features, hugetlb, hotplug, firmware, kernel_image)`` validates its keywords
    into one with :func:`~vmemcore.config.machine_config` (a bad one is a :class:`BadRequest`
    naming the setting); ``memory`` is a list of :class:`~vmemcore.config.MemoryRange` or dicts with ``node``,
    ``start`` (default: right after the previous range) and ``size``. ``Machine.from_config(config)``
    boots from a config made before, e.g. by a scenario. ``observers`` watch every hook call;
    ``registry`` (default: the installed plugins, less ``disabled``) finds the arch plugin.
    """

    def __init__(self, arch="x86_64", variant=None, kernel=None, memory=({"size": "16G"},), features=None,
                 hugetlb=None, hotplug=None, observers=(), registry=None, disabled=(), check_live_entries=False,
                 check_bad_pages=True, firmware=None, kernel_image=None):
        registry = registry or Registry(disabled=disabled)
        config = machine_config(arch, variant, kernel, memory, features, hugetlb, hotplug, registry=registry,
                                firmware=firmware, kernel_image=kernel_image)
        self._boot(config, registry, observers, check_live_entries, check_bad_pages)

    @classmethod
    def from_config(cls, config: MachineConfig, observers=(), registry=None, disabled=(),
                    check_live_entries=False, check_bad_pages=True) -> "Machine":
        """Boot the machine ``config`` describes; ``check_live_entries``: watch every page-table
        write against the arch's live-entry rule (``machine.live_entries``); ``check_bad_pages``:
        check struct pages freed to the buddy allocator (``machine.bad_pages``, vmemcore/badpage.py)."""
        machine = cls.__new__(cls)
        machine._boot(config, registry or Registry(disabled=disabled), observers, check_live_entries, check_bad_pages)
        return machine

    def _boot(self, config, registry, observers, check_live_entries=False, check_bad_pages=True):
        self.config = config
        self.plugin = registry.get(config.arch)
        self.hooks = self.plugin.hooks(observers)
        self.arch = self.plugin.info
        self.variant = self.arch.variant(config.variant)
        self.profile = get_profile(config.kernel)
        self.features = {f.name: f.default for f in self.arch.features} | dict(config.features)
        self.firmware = {f.name: f.default for f in self.arch.firmware} | dict(config.firmware)
        self.geometry = self.hooks.pagetable_geometry(self.variant, self.profile)
        self.sparse_geometry = self.hooks.sparse_geometry(self.variant, self.profile, config.memory)
        self._check_geometry()
        self.rules = ConfigValidator(registry, self.sparse_geometry)  # the scenario's rules, for the API's arguments
        self.journal = Journal()
        self.stats = Counters(self.journal)
        self.physmem = PhysMem(self.geometry.page_shift, self.sparse_geometry.max_pfn, self.journal,
                               self.sparse_geometry.max_page_order, self.profile.has(profiles.FREE_CORE_TO_TAIL))
        self.pagetable = PageTable(self.geometry, self.journal, va_base=self.sparse_geometry.vmemmap_base)
        self.table_frames = TableFrames(self.physmem, self.geometry.page_shift, self.journal)
        self._plugin_state = {}
        # the vmemmap's mapping: the Linux page table, or the plugin's backend (powerpc hash)
        self.vmemmap = self.hooks.vmemmap_mapping(self) or self.pagetable
        self.live_entry_rule = self.hooks.live_entry_rule(self)
        self.live_entries = None  # the LiveEntryChecker, when checking is on
        if check_live_entries:
            self.live_entries = self.pagetable.observer = LiveEntryChecker(self.live_entry_rule)
        self.vmemmap_refs = VmemmapRefs(self.journal)  # frames several vmemmap PTEs map (get_page)
        self.sub_pmd = SubPmdTracker(self)  # PAGE_UNUSED parts of PMD leaves, for arches that track them
        self.sparse = Sparse(self)
        self.structpages = StructPages(self)
        self.bad_pages = BadPages(self, check_bad_pages)  # bad_page reports of the free path
        self.zone_device = ZoneDevice(self)  # device pagemaps (memremap_pages)
        self.sparse_buffer = None
        self.memory = config.memory  # the boot ranges (MemoryRange)
        page = self.geometry.page_size
        for item in self.memory:
            self.sparse.check_vmemmap(item.start // page, (item.start + item.size) // page)
            self.physmem.add_range(item.node, item.start // page, (item.start + item.size) // page)
        self.kernel_image = self._reserve_kernel_image()
        hugetlb = config.hugetlb or HugetlbSpec()
        self.hugetlb = HugeTLB(self, optimize_vmemmap=hugetlb.optimize_vmemmap, remap=hugetlb.vmemmap_remap)
        gigantic = [(entry, self.hugetlb.reserve_boot_pages(entry.size, entry.count, entry.node))
                    for entry in hugetlb.boot if self.hugetlb.is_gigantic(entry.size)]
        self.hugetlb.hvo.plan_preinit([folio for _, folios in gigantic for folio in folios])
        self.sparse.init()
        if self.pagetable.cont_tables:
            check_contiguous(self.pagetable)
        self.physmem.end_boot()
        self.hooks.pgtable_cache_init(self)
        for entry, folios in gigantic:
            self.hugetlb.gather_boot_pages(self.hugetlb.hstate(entry.size), folios)
        self.hotplug = Hotplug(self, (config.hotplug or HotplugSpec()).memmap_on_memory)
        for entry in hugetlb.boot:  # hugetlb_init: the smaller boot-time pages come from the buddy allocator
            if not self.hugetlb.is_gigantic(entry.size):
                self.hugetlb.boot_pages(entry.size, entry.count, entry.node)
        if self.live_entries is not None:
            self.live_entries.operation = "runtime"

    def _reserve_kernel_image(self):
        """The first memblock reservation of ``setup_arch``: the kernel image, ``_text`` to ``_end``
        (x86 ``early_reserve_memory``, arm64 ``arm64_memblock_init``), ``[machine] kernel_image``
        bytes rounded up to whole pages, where the arch loads it (``ArchInfo.kernel_start``).
        Returns its ``(first pfn, end pfn)``, or None without one."""
        page = self.geometry.page_size
        nr_pages = -(-self.config.kernel_image // page)
        if not nr_pages:
            return None
        pfn, _ = place_kernel_image(nr_pages, self.memory, page, self.arch.kernel_start)
        self.physmem.reserve(pfn, pfn + nr_pages, KERNEL_IMAGE)
        return pfn, pfn + nr_pages

    def __repr__(self):
        size = format_size(self.physmem.present_pages() << self.geometry.page_shift)
        return f"<Machine {self.arch.name} {self.variant.name} kernel {self.profile.name}, {size}>"

    def _check_geometry(self):
        """The two geometries agree, and the page table can map the whole vmemmap range."""
        hook = "vmemcore_sparse_geometry"
        sparse = self.sparse_geometry
        if self.geometry.page_shift != sparse.page_shift:
            raise PluginError(self.plugin.name, hook, "page_shift differs from the page-table geometry's")
        if not self.geometry.maps(sparse.vmemmap_base, sparse.vmemmap_size):
            top = self.geometry.levels[0]
            raise PluginError(self.plugin.name, hook,
                              f"the vmemmap at virtual addresses [{sparse.vmemmap_base:#x}, +{format_size(sparse.vmemmap_size)}) crosses the "
                              f"end of the {top.shift + top.bits}-bit range one page table maps")

    def plugin_state(self, key, factory):
        """Per-machine state a plugin keeps, created with ``factory(machine)`` on first use; it must
        journal its changes (as :class:`vmemcore.rangemap.RangeMap` does) and offer ``snapshot()``."""
        if key not in self._plugin_state:
            self._plugin_state[key] = factory(self)
            self.journal.record(lambda: self._plugin_state.pop(key))
        return self._plugin_state[key]

    @property
    def plugin_states(self) -> dict:
        """The states plugins keep on this machine, by key (a copy)."""
        return dict(self._plugin_state)

    @contextmanager
    def transaction(self):
        """All-or-nothing: a failure inside restores tables, owners, counters and altmaps."""
        with self.journal.transaction():
            yield
            if self.pagetable.cont_tables:
                check_contiguous(self.pagetable)

    # -- operations -----------------------------------------------------------------------------
    def _check_pages(self, pfn, nr_pages, node=0):
        """The arguments of the memmap operations, checked by the scenario's rules."""
        self.rules.pfn("pfn", pfn)
        self.rules.count("nr_pages", nr_pages)
        self.rules.node("node", node)
        self.sparse.check_span(pfn, nr_pages)
        sections = -(-nr_pages // self.sparse_geometry.pages_per_section)
        if sections > SimulatorLimit.MAX_SECTIONS:
            raise SimulatorLimit(f"pfn range [{pfn:#x}, +{nr_pages:#x}) spans {sections:,} sections, more than the "
                                 f"{SimulatorLimit.MAX_SECTIONS:,} the simulator takes in one operation")

    def populate_section_memmap(self, pfn, nr_pages, node=0, altmap=None):
        """Map the memmap of ``[pfn, pfn + nr_pages)`` (whole sub-sections) on ``node``."""
        self._check_pages(pfn, nr_pages, node)
        with self.transaction():
            self.sparse.populate(pfn, nr_pages, node, altmap)

    def _refuse_hugetlb(self, pfn, nr_pages, what):
        """Refuse to free the memmap of memory holding HugeTLB pages: the kernel frees memmap only
        of memory offlined first, which dissolves them (HVO may have remapped their memmap)."""
        for start, _, owner in self.physmem.frames.items(pfn, pfn + nr_pages):
            if owner.use is Use.HUGETLB:
                raise BadRequest(f"{what} of pfn range [{pfn:#x}, +{nr_pages:#x}): pfn {start:#x} is a HugeTLB page; "
                                 "the kernel frees the memmap only of offline memory (offlining dissolves HugeTLB "
                                 "pages): shrink the pool or offline the memory first")

    def depopulate_section_memmap(self, pfn, nr_pages, altmap=None):
        """Unmap and free the memmap of ``[pfn, pfn + nr_pages)`` through the arch's ``vmemmap_free``."""
        self._check_pages(pfn, nr_pages)
        self._refuse_hugetlb(pfn, nr_pages, "memmap.depopulate")
        with self.transaction():
            for start, count in self._section_pieces(pfn, nr_pages):
                state = self.sparse.sections.get(self.sparse.section_nr(start))
                if state is not None and state.early:
                    raise BadRequest(
                        f"pfn {start:#x} lies in a boot section: its memmap is freed only by removing the "
                        "section (free_map_bootmem), never by depopulate_section_memmap"
                    )
            self.sparse.depopulate(pfn, nr_pages, altmap)

    def add_memmap(self, pfn, nr_pages, node=0, altmap=None, pgmap=None):
        """``sparse_add_section`` for each section piece of the range (as ``__add_pages`` splits it),
        a run of whole sections at once where that maps the same (:meth:`Sparse.batches`);
        ``pgmap``: the device pagemap the range belongs to, if any."""
        self._check_pages(pfn, nr_pages, node)
        with self.transaction():
            for start, count in self._section_pieces(pfn, nr_pages, self.sparse.batches(pgmap)):
                self.sparse.add(node, start, count, altmap, pgmap)

    def remove_memmap(self, pfn, nr_pages, altmap=None):
        """``sparse_remove_section`` for each section piece of the range (as ``__remove_pages``), a
        run of whole sections at once where that frees the same (:meth:`Sparse.batches`)."""
        self._check_pages(pfn, nr_pages)
        self._refuse_hugetlb(pfn, nr_pages, "memmap.remove")
        with self.transaction():
            for start, count in self._section_pieces(pfn, nr_pages, self.sparse.batches()):
                self.sparse.remove(start, count, altmap)

    def _section_pieces(self, pfn, nr_pages, whole_runs=False):
        """The range cut at section boundaries; ``whole_runs``: consecutive whole sections as one piece."""
        pps = self.sparse_geometry.pages_per_section
        end = pfn + nr_pages
        while pfn < end:
            cut = min(end, (pfn // pps + 1) * pps)
            if whole_runs and pfn % pps == 0 and cut - pfn == pps:
                cut = end // pps * pps
            yield pfn, cut - pfn
            pfn = cut

    def flush_tlb_all(self, times=1):
        """``flush_tlb_all``, counted ``times`` times (a batch standing for as many kernel calls)."""
        self.stats.add("tlb_flush_all", times)
        if self.live_entries is not None:
            self.live_entries.flush()

    def flush_tlb_kernel_range(self, start, end, times=1):
        """``flush_tlb_kernel_range(start, end)``; ``times`` > 1: as many flushes of consecutive
        pieces that cover ``[start, end)``."""
        self.stats.add("tlb_flush_kernel_range", times)
        if self.live_entries is not None:
            self.live_entries.flush(start, end)

    # -- queries --------------------------------------------------------------------------------
    def pfn_to_page(self, pfn) -> int:
        return self.sparse_geometry.pfn_to_page(pfn)

    def memmap_frame(self, pfn):
        """The frame holding the struct page of ``pfn``, found through the vmemmap's mapping."""
        phys = self.vmemmap.translate(self.pfn_to_page(pfn))
        return None if phys is None else phys >> self.geometry.page_shift

    def leaf_counts(self):
        """Present leaf entries of the vmemmap per level name."""
        counts = {}
        for table in self.pagetable.all_tables():
            n = int(np.count_nonzero((table.flags & (PRESENT | LEAF)) == (PRESENT | LEAF)))
            if n:
                counts[table.level.name] = counts.get(table.level.name, 0) + n
        return counts

    def vmemmap_mapped_bytes(self) -> int:
        """Bytes of vmemmap the present leaves map (every leaf's span, summed)."""
        return sum(count * span for span, count in self.vmemmap.leaf_spans().items())

    def counters(self):
        """Kernel-named counters plus page-table pages per level, vmemmap bytes per leaf size, the
        HugeTLB pools (``nr_hugepages_2M``, when not empty) and the frames per owner, in
        :data:`~vmemcore.stats.COUNTER_ORDER`."""
        out = self.stats.as_dict()
        out.update(self.zone_device.counters())
        for name in self.pagetable.tables:
            out[f"vmemmap_pagetable_pages_{name}"] = self.table_frames.pages.get(name, 0)
        leaves = self.vmemmap.leaf_spans()
        for span, count in sorted(leaves.items(), reverse=True):
            out[f"vmemmap_leaves_{format_size(span)}"] = count
            out[f"vmemmap_mapped_bytes_{format_size(span)}"] = count * span
        for _, h in sorted(self.hugetlb.hstates.items()):  # the pools, as sysfs nr_hugepages shows them
            if h.nr_huge_pages:
                out[f"nr_hugepages_{h.name}"] = h.nr_huge_pages
            if h.surplus_huge_pages:
                out[f"surplus_hugepages_{h.name}"] = h.surplus_huge_pages
        for state in self._plugin_state.values():  # e.g. powerpc's vmemmap_list entries and pages
            out.update(getattr(state, "counters", dict)())
        out["memmap_frames"] = self.physmem.pages_owned(Use.MEMMAP)
        out["pagetable_frames"] = self.physmem.pages_owned(Use.PAGETABLE)
        out["hugetlb_frames"] = self.physmem.pages_owned(Use.HUGETLB)
        out["offline_frames"] = self.physmem.pages_owned(Use.OFFLINE)
        out["kernel_image_frames"] = self.physmem.pages_owned(Use.KERNEL_IMAGE)
        out["free_frames"] = self.physmem.free_pages()
        out["present_pages"] = self.physmem.present_pages()
        if self.live_entries is not None:
            out["live_entry_violations"] = self.live_entries.count
        if self.pagetable.cont_tables:
            spans = self.pagetable.contiguous_spans()
            out["vmemmap_cont_spans"] = sum(spans.values())
            out["vmemmap_tlb_entries"] = sum(leaves.values()) - sum(
                count * (self.geometry.level(name).contiguous - 1) for name, count in spans.items())
        return ordered(out)

    def snapshot(self):
        """Everything that defines the machine's state, comparable with ``==`` (for tests)."""
        tables = sorted(
            (t.depth, t.base, t.pfn, t.pfns.tobytes(), t.flags.tobytes(), t.nr_present)
            for t in self.pagetable.all_tables()
        )
        return {
            "tables": tables,
            "tables_per_level": dict(self.pagetable.tables),
            "table_frames": self.table_frames.snapshot(),
            "physmem": self.physmem.snapshot(),
            "free_blocks": self.physmem.buddy.blocks(),  # not the lists' order: a round trip may change it
            "sections": self.sparse.sections.items(),
            "counters": self.stats.as_dict(),
            "plugin_state": {key: state.snapshot() for key, state in self._plugin_state.items()},
            "structpages": self.structpages.snapshot(),
            "bad_pages": self.bad_pages.snapshot(),
            "hugetlb": self.hugetlb.snapshot(),
            "hotplug": self.hotplug.snapshot(),
            "vmemmap_refs": self.vmemmap_refs.snapshot(),
            "sub_pmd": self.sub_pmd.snapshot(),
            "zone_device": self.zone_device.snapshot(),
        }

    def check(self):
        """Assert the machine's invariants: owners add up, the nodes are those with memory present,
        every table frame and every mapped memmap frame is owned as such, nothing owned as memmap
        or page table is unmapped, and the frames owned by HugeTLB are exactly its pools' folios."""
        self.physmem.check()
        folios = [(h.folios.heads(), 1 << h.order) for h in self.hugetlb.hstates.values()]
        _assert_owned(self.physmem, Use.HUGETLB, folios, arrays=True)
        per_frame = {}
        for table in self.pagetable.all_tables():
            if table.pfn is not None:
                per_frame[table.pfn] = per_frame.get(table.pfn, 0) + 1
        assert per_frame == self.table_frames.tables_at(), "the page tables are not those their frames hold"
        table_frames = self.table_frames.blocks()
        for state in self._plugin_state.values():  # frames a plugin keeps for its mapping (vmemmap_list pages)
            table_frames.extend(getattr(state, "pagetable_frames", list)())
        leaf_frames = self.vmemmap.leaf_frames()
        _assert_owned(self.physmem, Use.PAGETABLE, [(p, n) for p, n in table_frames])
        self.vmemmap_refs.check(leaf_frames)
        leaf_frames = self.zone_device.check(leaf_frames)  # device memory is no frame of System RAM
        # HVO maps one frame many times, and 7.1 keeps shared tail pages even when unmapped
        held = np.array(sorted(self.hugetlb.hvo.tail_pages.values()), dtype=np.int64)
        _assert_owned(self.physmem, Use.MEMMAP, leaf_frames + [(held, 1)], arrays=True)
        self.bad_pages.check()


def _assert_owned(physmem, use, blocks, arrays=False):
    """The frames of ``blocks`` are exactly the frames owned by ``use``."""
    if arrays:
        starts = np.concatenate([p for p, _ in blocks]) if blocks else np.empty(0, np.int64)
        lengths = np.concatenate([np.full(len(p), n) for p, n in blocks]) if blocks else np.empty(0, np.int64)
    else:
        starts = np.array([p for p, _ in blocks], dtype=np.int64)
        lengths = np.array([n for _, n in blocks], dtype=np.int64)
    starts, first = np.unique(starts, return_index=True)  # a frame shared by many entries counts once
    lengths = lengths[first]
    merged = []
    for s, n in zip(starts.tolist(), lengths.tolist()):
        if merged and merged[-1][1] > s:
            raise AssertionError(f"{use.value} frame {s:#x} is inside another block")
        if merged and merged[-1][1] == s:
            merged[-1][1] = s + n
        else:
            merged.append([s, s + n])
    owned = []
    for s, e, owner in physmem.frames.items():
        if owner.use is use:
            if owned and owned[-1][1] == s:
                owned[-1][1] = e
            else:
                owned.append([s, e])
    assert merged == owned, f"{use.value} frames mapped {merged[:4]}... differ from frames owned {owned[:4]}..."
