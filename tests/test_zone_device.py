"""ZONE_DEVICE compound devmap (device-dax) vmemmap dedup (mm/sparse-vmemmap.c vmemmap_populate_compound_pages,
merged as 4917f55b4ef9 in v5.19; docs/kernel-map.md#device-dax-vmemmap-dedup and #worked-numbers)."""

import types

import attrs
import numpy as np
import pytest

import vmemcore_arm64
import vmemcore_powerpc
import vmemcore_s390
import vmemcore_x86_64
from vmemcore import GiB, MiB, Support, get_profile, hookimpl
from vmemcore.altmap import VmemAltmap
from vmemcore.errors import BadRequest, OutOfMemory
from vmemcore.machine import Machine
from vmemcore.pagetable import RDONLY
from vmemcore.plugins import ArchHooks, Registry
from vmemcore.sparse import SectionState
from vmemcore.structpage import HEAD, KPF_NOPAGE, PG_FOLIO_META, TAIL, CopyOf, StructPage
from vmemcore.zone_device import DevicePagemap, add_devdax_step, pmem_altmap, remove_devdax_step

BASE = 64 * GiB // 4096  # first pfn of the device memory in most tests (far above RAM)
PER_PAGE = 64  # struct pages per 4 KiB vmemmap page


def machine(arch="x86_64", kernel=None, memory="4G", **kwargs):
    return Machine(arch, kernel=kernel, memory=[{"size": memory}], **kwargs)


def state(m):
    """The machine's state without the event counters a removal bumps (TLB flushes)."""
    snap = m.snapshot()
    snap["counters"] = {k: v for k, v in snap["counters"].items() if not k.startswith("tlb_flush")}
    return snap


def vmemmap_frames(m, pfn, nr_pages):
    """The frame behind each vmemmap page of the memmap of ``[pfn, pfn + nr_pages)``, in order."""
    start, end = m.pfn_to_page(pfn), m.pfn_to_page(pfn + nr_pages)
    runs = list(m.pagetable.leaf_runs(start, end))
    assert all(level.name == "pte" for _, level, _ in runs)
    frames = np.concatenate([pfns for _, _, pfns in runs])
    assert len(frames) == (end - start) // 4096
    return frames


def pgmap(start, size, shift, **kwargs):
    return DevicePagemap(ranges=[(start, size)], vmemmap_shift=shift, **kwargs)


# -- the savings -----------------------------------------------------------------------------------

def test_2m_compound_pages_use_2_of_8_vmemmap_pages():
    m = machine()
    before = m.counters()
    pm = m.zone_device.add(pgmap("64G", "1G", 9))
    after = m.counters()
    assert pm.dedup == Support(True)
    assert (pm.pages_mapped, pm.frames_used, pm.pages_saved) == (4096, 1024, 3072)
    assert (after["devdax_vmemmap_pages_mapped"], after["devdax_vmemmap_frames_used"],
            after["devdax_vmemmap_pages_saved"]) == (4096, 1024, 3072)
    assert after["nr_memmap_pages"] - before["nr_memmap_pages"] == 4096  # the full size is counted (docs/kernel-map.md#memmap-counters)
    assert after["memmap_frames"] - before["memmap_frames"] == 1024
    assert after["vmemmap_leaves_4K"] == 4096 and after["vmemmap_leaves_2M"] == before["vmemmap_leaves_2M"]
    frames = vmemmap_frames(m, BASE, 262144).reshape(512, 8)  # one row per compound page
    assert len(np.unique(frames[:, :2])) == 1024  # head and first tail page: frames of their own
    assert (frames[:, 2:] == frames[:, 1:2]).all()  # the 6 other PTEs map the first tail page
    assert m.vmemmap_refs.extra == {tail: 6 for tail in frames[:, 1].tolist()}  # 7 references each
    table, _ = m.pagetable.lookup(m.pfn_to_page(BASE + 3 * PER_PAGE))
    assert not (table.flags & RDONLY).any()  # PAGE_KERNEL: device-dax tails stay writable
    m.check()


def test_1g_compound_page_saves_4094_of_4096_across_its_8_sections():
    m = machine()
    tables = dict(m.pagetable.tables)
    bytes_4k = m.counters().get("vmemmap_mapped_bytes_4K", 0)
    pm = m.zone_device.add(pgmap("64G", "1G", 18))
    assert (pm.pages_mapped, pm.frames_used, pm.pages_saved) == (4096, 2, 4094)
    frames = vmemmap_frames(m, BASE, 262144)
    head, tail = frames[0], frames[1]
    assert head != tail and (frames[1:] == tail).all()
    # sections 1..7 start mid-compound: each maps the previous section's last frame (reuse_compound_section)
    assert [int(frames[512 * s - 1]) for s in range(1, 8)] == [tail] * 7
    assert m.vmemmap_refs.extra == {int(tail): 4094}
    # docs/kernel-map.md#boot-populate-shapes: 16 MiB of vmemmap VA, 2 frames, 8 PTE tables (4096 PTEs);
    # and one new PMD table above them
    assert m.counters()["vmemmap_mapped_bytes_4K"] - bytes_4k == 16 * MiB
    assert m.pagetable.tables["pte"] - tables["pte"] == 8 and m.pagetable.tables["pmd"] - tables["pmd"] == 1
    assert pm.pagetable_pages == 9
    assert pm.struct_pages_initialized == 128  # compound_nr_pages: 2 vmemmap pages of struct pages
    full = (1 << 64) - 1  # 64 sub-sections of 2 MiB per 128 MiB section
    assert [m.sparse.sections.get(BASE // 32768 + s) for s in range(8)] == [SectionState(0, False, full)] * 8
    m.check()


def test_a_shared_frame_is_freed_with_its_last_mapping():
    m = machine()
    m.zone_device.add(pgmap("64G", "1G", 18))
    head, tail = (m.memmap_frame(BASE + k * PER_PAGE) for k in (0, 1))
    m.remove_memmap(BASE, 32768)  # section 0 only: the head page goes, 511 references to the tail page
    assert m.physmem.owner(head).use.value == "free" and m.physmem.owner(tail).use.value == "memmap"
    assert m.vmemmap_refs.extra == {tail: 3583}  # 7 sections x 512 PTEs still map it
    assert m.memmap_frame(BASE + 32768) == tail and tail in m.structpages.contents
    m.check()
    m.remove_memmap(BASE + 32768, 7 * 32768)
    assert m.physmem.owner(tail).use.value == "free" and m.vmemmap_refs.extra == {}
    assert tail not in m.structpages.contents  # a freed frame's contents no longer matter


def test_two_1g_compound_pages_keep_two_frames_each():
    m = machine()
    pm = m.zone_device.add(pgmap("64G", "2G", 18))
    frames = vmemmap_frames(m, BASE, 2 * 262144).reshape(2, 4096)
    assert (pm.frames_used, pm.pages_saved) == (4, 8188)
    assert len(np.unique(frames)) == 4 and (frames[:, 1:] == frames[:, 1:2]).all()
    assert m.vmemmap_refs.extra == {int(frames[0, 1]): 4094, int(frames[1, 1]): 4094}
    m.check()


def test_first_tail_pages_are_described_and_unmapped_vmemmap_holds_none():
    """Each 2 MiB compound page's first tail frame reads as a plain copy of its own struct pages
    (kept in the descriptor store's arrays); a range with no vmemmap materialises nothing."""
    m = machine()
    m.zone_device.add(pgmap("64G", "2G", 9))
    firsts = [BASE + k * 512 + PER_PAGE for k in range(1024)]
    assert [m.structpages.contents.get(m.memmap_frame(p)) for p in firsts] == [CopyOf(p) for p in firsts]
    assert len(m.structpages.contents) == 1024
    hole = 100 * GiB // 4096
    assert m.structpages.materialised(hole, hole + 8 * PER_PAGE) == []


@pytest.mark.parametrize("kernel", ["6.12", "7.1"])
def test_every_pfn_reads_its_compound_head_through_the_vmemmap(kernel):
    m = machine(kernel=kernel)
    m.zone_device.add(pgmap("64G", "2G", 18))
    m.zone_device.add(pgmap("68G", "256M", 9))
    for start, count, order in ((BASE, 2 * 262144, 18), (68 * GiB // 4096, 65536, 9)):
        expected = start + (np.arange(count) >> order << order)
        assert m.structpages.compound_heads(start, count) == expected.tolist()
    # a tail far from its head reads through the shared first tail page, which knows its head
    far = BASE + 200_000
    assert m.memmap_frame(far) == m.memmap_frame(BASE + PER_PAGE) != m.memmap_frame(BASE)
    assert m.structpages.contents[m.memmap_frame(far)] == CopyOf(BASE + PER_PAGE)
    tail = StructPage(TAIL, head=BASE) if kernel == "6.12" else StructPage(TAIL, order=18)
    assert m.structpages.read(far) == tail
    assert m.structpages.read(BASE) == StructPage(HEAD, order=18)
    assert [m.structpages.read(BASE + k).flags for k in (1, 2, 3)] == [PG_FOLIO_META, PG_FOLIO_META, 0]
    # pfn_to_online_page() is NULL for ZONE_DEVICE pages: /proc/kpageflags says "no page"
    assert set(m.structpages.kpageflags_range(68 * GiB // 4096, 65536)) == {1 << KPF_NOPAGE}


# -- the altmap ------------------------------------------------------------------------------------

def test_an_altmap_means_no_dedup_and_the_memmap_on_the_device():
    m = machine()
    before, counters = state(m), m.counters()
    altmap = pmem_altmap(m, 64 * GiB, 1 * GiB, 2 * MiB)
    assert (altmap.reserve, altmap.free) == (2, 4606)  # 8 KiB info block, data from 18 MiB
    pm = m.zone_device.add(pgmap("64G", "1G", 9, altmap=altmap))
    assert pm.dedup == Support(False, "the memmap comes from the device (altmap), which is never deduplicated")
    assert (pm.altmap.alloc, pm.altmap.align) == (4096, 510)  # 8 PMD blocks, padded to 2 MiB
    assert altmap.alloc == 0  # the caller's altmap is not the one used
    assert m.memmap_frame(BASE) == BASE + 512
    runs = list(m.pagetable.leaf_runs(m.pfn_to_page(BASE), m.pfn_to_page(BASE + 262144)))
    assert [(level.name, pfns.tolist()) for _, level, pfns in runs] == [("pmd", [BASE + 512 * k for k in range(1, 9)])]
    after = m.counters()
    assert after["memmap_frames"] == counters["memmap_frames"]  # no System RAM for the memmap
    assert after["vmemmap_leaves_2M"] - counters["vmemmap_leaves_2M"] == 8
    assert (pm.frames_used, pm.pages_saved, pm.struct_pages_initialized) == (4096, 0, 262144 - 4608)
    data = BASE + 4608  # pfn_first: compound pages start after the altmap's pfns
    heads = np.arange(BASE, BASE + 262144)
    heads[4608:] = data + ((heads[4608:] - data) >> 9 << 9)
    assert m.structpages.compound_heads(BASE, 262144) == heads.tolist()
    m.check()
    m.zone_device.remove("64G")
    assert pm.altmap.alloc == 0
    assert state(m) == before
    m.check()


def test_x86_never_takes_sub_section_base_pages_from_the_altmap():
    m = machine()
    altmap = pmem_altmap(m, 64 * GiB, 2 * MiB, 2 * MiB)
    pm = m.zone_device.add(pgmap("64G", "2M", 9, altmap=altmap))
    assert (altmap.reserve, altmap.free) == (2, 510)  # the whole 2 MiB is info block and memmap
    assert pm.altmap.alloc == 0 and pm.frames_used == 8 and m.physmem.owner(m.memmap_frame(BASE)).use.value == "memmap"
    m.check()


# -- add and remove, all or nothing ----------------------------------------------------------------

@pytest.mark.parametrize("ranges, shift, altmap", [
    ([(64 * GiB, 2 * MiB)], 0, False),
    ([(64 * GiB, 128 * MiB)], 9, False),
    ([(64 * GiB + 96 * MiB, 64 * MiB)], 9, False),  # crosses a section border
    ([(64 * GiB, 1 * GiB)], 9, False),
    ([(64 * GiB, 2 * GiB)], 18, False),
    ([(64 * GiB, 1 * GiB), (80 * GiB, 1 * GiB)], 18, False),
    ([(64 * GiB, 1 * GiB)], 9, True),
    ([(64 * GiB, 2 * GiB)], 18, True),
])
def test_add_then_remove_leaves_the_machine_as_it_was(ranges, shift, altmap):
    m = machine()
    before = state(m)
    device = pmem_altmap(m, *ranges[0], 1 << (12 + shift)) if altmap else None
    pm = m.zone_device.add(DevicePagemap(ranges=ranges, vmemmap_shift=shift, altmap=device))
    m.check()
    assert m.counters()["nr_memmap_pages"] == sum(size // 4096 // PER_PAGE for _, size in ranges) == pm.pages_mapped
    assert m.zone_device.remove(ranges[0][0]) is pm
    assert state(m) == before
    assert "devdax_vmemmap_pages_mapped" not in m.counters()
    m.check()


@pytest.mark.parametrize("ranges, shift, attempts", [
    ([(64 * GiB, 1 * GiB)], 18, 11),  # PMD table, 8 PTE tables, head and first tail page
    ([(64 * GiB + 96 * MiB, 64 * MiB)], 9, 67),  # PMD table, then per section a PTE table and 16 x 2 frames
    ([(64 * GiB, 1 * GiB), (80 * GiB, 1 * GiB)], 18, 21),  # both ranges' memmap under one PMD table
    ([(64 * GiB, 32 * MiB)], 0, 130),  # base pages, no dedup: PMD table, PTE table, 128 frames
])
def test_fault_injection_at_every_allocation_of_an_add(ranges, shift, attempts):
    m = machine()
    request = DevicePagemap(ranges=ranges, vmemmap_shift=shift)
    before = state(m)
    m.physmem.faults.arm()
    m.zone_device.add(request)
    assert m.physmem.faults.attempts == attempts
    m.zone_device.remove(ranges[0][0])
    for index in range(1, attempts + 1):
        m.physmem.faults.arm(nth=index)
        with pytest.raises(OutOfMemory):
            m.zone_device.add(request)
        assert state(m) == before, f"fault at allocation {index} left changes behind"
        m.check()
    m.physmem.faults.disarm()
    m.zone_device.add(request)
    m.check()


def test_an_exhausted_device_altmap_fails_the_add_and_leaves_nothing_behind():
    m = machine()
    before = state(m)
    short = VmemAltmap(base_pfn=BASE, end_pfn=BASE + 262143, reserve=2, free=4096)  # no room for the padding
    with pytest.raises(OutOfMemory, match="altmap exhausted"):
        m.zone_device.add(pgmap("64G", "1G", 0, altmap=short))  # the 8th 2 MiB block does not fit
    assert state(m) == before and short.alloc == 0
    m.check()


def test_memmap_on_the_pagemaps_node():
    m = Machine("x86_64", memory=[{"node": 0, "size": "4G"}, {"node": 1, "size": "4G"}])
    m.zone_device.add(pgmap("64G", "1G", 18, node=1))
    frames = np.unique(vmemmap_frames(m, BASE, 262144))
    assert [m.physmem.node_of(int(f)) for f in frames] == [1, 1]
    assert m.sparse.sections.get(BASE // 32768).node == 1


def test_bad_requests_are_refused():
    m = machine()
    m.zone_device.add(pgmap("64G", "1G", 9))
    before = state(m)
    for request, message in [
        (pgmap(0, "2M", 0), "overlaps System RAM"),
        (pgmap("64G", "2M", 0), "overlaps another device pagemap"),
        (pgmap("66G", "1G", 18), None),
        (pgmap(65 * GiB + 2 * MiB, "1G", 18), "does not start on a multiple of the 1G compound page size"),
        (pgmap(65 * GiB + 4096, "2M", 0), "2M sub-sections"),
        (DevicePagemap(ranges=[(70 * GiB, GiB), (72 * GiB, GiB)], vmemmap_shift=9,
                       altmap=pmem_altmap(m, 70 * GiB, GiB, 2 * MiB)), "altmap not supported for multiple ranges"),
        (pgmap("70G", "1G", 9, altmap=pmem_altmap(m, 71 * GiB, GiB, 2 * MiB)), "invalid altmap"),
        (pgmap("70G", "1G", 18, altmap=pmem_altmap(m, 70 * GiB, GiB, 2 * MiB)), "1G compound page boundary"),
    ]:
        if message is None:  # a good one, to show the others fail for their own reason
            m.zone_device.remove(m.zone_device.add(request).pgmap.ranges[0].start)
            continue
        with pytest.raises(BadRequest, match=message):
            m.zone_device.add(request)
        assert state(m) == before
    with pytest.raises(BadRequest, match="no device pagemap starts at physical address 0x1040000000"):
        m.zone_device.remove("65G")


# -- when dedup is refused -------------------------------------------------------------------------

def _x86_with_struct_page(size):
    """x86_64 with a struct page of ``size`` bytes (56 without MEMCG on some configs)."""
    plugin = types.ModuleType("vmemcore_x86_64_struct_page")
    for name in dir(vmemcore_x86_64):
        if name.startswith("vmemcore_"):
            setattr(plugin, name, getattr(vmemcore_x86_64, name))

    def vmemcore_sparse_geometry(variant, profile):
        return attrs.evolve(vmemcore_x86_64.vmemcore_sparse_geometry(variant, profile), struct_page_size=size)

    plugin.vmemcore_sparse_geometry = hookimpl(vmemcore_sparse_geometry)
    return Registry(autoload=False, extra=[plugin])


@pytest.mark.parametrize("arch, kernel, shift, altmap, reason, leaves", [
    ("x86_64", "5.14", 9, False, "compound devmap vmemmap dedup was merged in 5.19 (5.18/5.19 UNCONFIRMED)", {"2M": 1}),
    ("x86_64", "6.12", 0, False, "base pages (vmemmap_shift 0): no compound pages", {"2M": 1}),
    ("x86_64", "6.12", 7, False, "a compound page of 128 pages has 8K of struct pages: not more than "
                                 "VMEMMAP_RESERVE_NR (2) vmemmap pages", {"2M": 1}),
    ("x86_64", "6.12", 9, True, "the memmap comes from the device (altmap), which is never deduplicated", {"2M": 1}),
    ("arm64", "6.12", 9, False, "arm64 does not select ARCH_WANT_OPTIMIZE_DAX_VMEMMAP (dedup is an arch opt-in "
                                "since 6.4/6.6)", {"2M": 1}),
    ("s390", "6.19", 8, False, "s390 does not select ARCH_WANT_OPTIMIZE_DAX_VMEMMAP", {"1M": 2}),  # ZONE_DEVICE: 6.17+
    # 1,792 KiB of struct pages take a whole 2 MiB leaf: 64 pages more than the memmap spans
    ("x86_64-56", "6.12", 9, False, "struct page is 56 bytes, not a power of two", {"2M": 1}),
])
def test_dedup_refused_says_why_and_takes_the_plain_populate(arch, kernel, shift, altmap, reason, leaves):
    registry = _x86_with_struct_page(56) if arch == "x86_64-56" else None
    m = Machine(arch.split("-")[0], kernel=kernel, memory=[{"size": "4G"}], registry=registry)
    before = m.counters()
    device = pmem_altmap(m, 64 * GiB, 128 * MiB, 1 << (12 + shift)) if altmap else None
    pm = m.zone_device.add(pgmap("64G", "128M", shift, altmap=device))
    assert pm.dedup == Support(False, reason)
    assert (pm.frames_used, pm.pages_saved) == (512, 0)  # no dedup: nothing saved (56-byte pages overhang: 512 frames for 448 pages)
    grown = {k.removeprefix("vmemmap_leaves_"): v - before.get(k, 0) for k, v in m.counters().items()
             if k.startswith("vmemmap_leaves_") and v != before.get(k, 0)}
    assert grown == leaves  # the arch's own vmemmap_populate: PMD (s390: segment) leaves
    m.check()


def test_before_6_4_any_compound_page_took_the_compound_path():
    # x86_64 4 KiB, 512 KiB compound pages: 2 vmemmap pages each — not more than VMEMMAP_RESERVE_NR
    old, new = machine(kernel="6.1"), machine(kernel="6.12")
    old_pm, new_pm = (m.zone_device.add(pgmap("64G", "128M", 7)) for m in (old, new))
    assert old_pm.dedup.supported and not new_pm.dedup.supported
    assert old.counters()["vmemmap_leaves_4K"] == 512 and old_pm.frames_used == 512  # PTE-mapped, nothing saved
    assert new.counters()["vmemmap_leaves_2M"] - old.counters()["vmemmap_leaves_2M"] == 1
    # below 2 vmemmap pages those kernels mapped past the range (the crash VMEMMAP_RESERVE_NR fixed)
    with pytest.raises(BadRequest, match="not simulated"):
        old.zone_device.add(pgmap("66G", "128M", 6))


def test_arm64_before_the_opt_in_dedups_and_frees_each_frame_once():
    m = machine("arm64", kernel="6.1")
    before = state(m)
    pm = m.zone_device.add(pgmap("64G", "1G", 18))
    assert (pm.frames_used, pm.pages_saved) == (2, 4094)
    m.check()
    m.zone_device.remove("64G")  # unmap_hotplug_range frees every PTE's frame: refcounted
    assert state(m) == before


def test_arm64_base_pages_from_a_device_altmap():
    m = machine("arm64", variant="16K-47", kernel="6.12")
    before = state(m)
    altmap = pmem_altmap(m, 64 * GiB, 128 * MiB, 32 * MiB)
    assert (altmap.reserve, altmap.free) == (0, 2048)  # 8 KiB is no 16 KiB page; data from 32 MiB
    pm = m.zone_device.add(pgmap("64G", "128M", 11, altmap=altmap))
    assert pm.altmap.alloc == pm.frames_used == 32  # 512 KiB of struct pages in 16 KiB pages, on the device
    assert m.memmap_frame(64 * GiB // 16384) == 64 * GiB // 16384
    m.check()
    m.zone_device.remove("64G")
    assert state(m) == before


# -- the arch hook and the scenario steps ----------------------------------------------------------

def test_dax_vmemmap_support_hook_per_arch_and_kernel():
    def answers(module, variant=None):
        hooks = ArchHooks(module.__name__, module)
        out = {}
        for kernel in ("2019", "5.14", "6.0", "6.1", "6.12", "6.19", "7.1"):
            stand_in = types.SimpleNamespace(profile=get_profile(kernel), variant=hooks.info.variant(variant))
            out[kernel] = hooks.dax_vmemmap_support(stand_in).supported
        return out

    no, yes = False, True
    old = {"2019": no, "5.14": no}
    assert answers(vmemcore_x86_64) == {**old, "6.0": yes, "6.1": yes, "6.12": yes, "6.19": yes, "7.1": yes}
    assert answers(vmemcore_arm64) == {**old, "6.0": yes, "6.1": yes, "6.12": no, "6.19": no, "7.1": no}
    assert answers(vmemcore_s390) == dict.fromkeys(answers(vmemcore_s390), no)
    # radix 5.19-6.3: generic dedup in the kernel, refused here as not simulated (vmemmap_list-only free)
    assert answers(vmemcore_powerpc, "radix-64K") == {**answers(vmemcore_x86_64), "6.0": no, "6.1": no}
    assert set(answers(vmemcore_powerpc, "hash-4K").values()) == {no}
    m = machine(kernel="5.14")
    assert m.hooks.dax_vmemmap_support(m).reason.startswith("compound devmap vmemmap dedup was merged in 5.19")


def test_devdax_scenario_steps():
    m = machine()
    report = add_devdax_step(m, start="64G", size="1G", align="1G")
    used = report["vmemmap_pages_mapped"], report["vmemmap_frames_used"], report["vmemmap_pages_saved"]
    assert used == (4096, 2, 4094)
    assert report["dedup"] and report["vmemmap_shift"] == 18
    report = add_devdax_step(m, start="66G", size="1G", align="2M", altmap=True, node=0)
    assert (report["altmap"], report["dedup"], report["vmemmap_frames_used"]) == (True, False, 4096)
    assert m.counters()["devdax_vmemmap_pages_saved"] == 4094
    with pytest.raises(BadRequest, match="the device pagemap at physical address 0x1000000000 is not 2G long"):
        remove_devdax_step(m, "64G", "2G")
    assert remove_devdax_step(m, "64G", "1G")["vmemmap_pages_saved"] == 4094
    assert m.counters()["devdax_vmemmap_pages_saved"] == 0
    with pytest.raises(BadRequest, match="align 0x3000 is not a power of two"):
        add_devdax_step(m, start="64G", size="1G", align=3 * 4096)
