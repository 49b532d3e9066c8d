"""powerpc book3s64 radix vmemmap populate and free (arch/powerpc/mm/book3s64/radix_pgtable.c), HugeTLB
sizes, HVO and memmap_on_memory (arch/powerpc/mm/book3s64/radix_pgtable.c, arch/powerpc/include/asm/pgtable.h);
numbers in docs/kernel-map.md#worked-numbers."""

from types import SimpleNamespace

import pytest

import vmemcore_powerpc
from vmemcore import GiB, KiB, MiB, TiB
from vmemcore.altmap import VmemAltmap
from vmemcore.errors import OutOfMemory, Veto
from vmemcore.machine import Machine
from vmemcore.plugins import ArchHooks
from vmemcore.profiles import get_profile

PMD_FRAMES = {"radix-4K": 512, "radix-64K": 32}  # one 2 MiB PMD block in pages
KERNELS = ["6.12", "7.1"]  # 6.12.0 takes start as given; 6.17+ aligns it (f5164797284d)


def machine(variant="radix-64K", kernel="6.12", size=16 * GiB, **kwargs):
    return Machine("powerpc", variant=variant, kernel=kernel, memory=[{"start": 0, "size": size}], **kwargs)


def pfn(m, addr):
    return addr >> m.geometry.page_shift


def delta(m, before, *keys):
    c = m.counters()
    return {k: c.get(k, 0) - before.get(k, 0) for k in keys}


HOOKS = ArchHooks("powerpc", vmemcore_powerpc)


def stub(variant, kernel):
    """What the hooks read of a machine, for machines that cannot boot (hash, radix before 6.6)."""
    chosen = HOOKS.info.variant(variant)
    profile = get_profile(kernel)
    return SimpleNamespace(variant=chosen, profile=profile, geometry=HOOKS.pagetable_geometry(chosen, profile))


# ------------------------------------------------- boot (docs/kernel-map.md#boot-populate-shapes)

@pytest.mark.parametrize("kernel", KERNELS + ["6.19"])
def test_radix_64k_64g_boots_into_32_pmd_leaves(kernel):
    m = machine("radix-64K", kernel, 64 * GiB)
    c = m.counters()
    assert c["present_pages"] == 1_048_576
    assert c["vmemmap_leaves_2M"] == 32  # 64 MiB of struct pages
    assert [k for k in c if k.startswith("vmemmap_leaves_")] == ["vmemmap_leaves_2M"]
    # early_alloc_pgtable(PAGE_SIZE): the 4 KiB PMD and PUD tables each take a whole 64 KiB page
    assert [c[f"vmemmap_pagetable_pages_{level}"] for level in ("pud", "pmd", "pte")] == [1, 1, 0]
    assert c["pagetable_frames"] == 2
    assert c["memmap_frames"] == 32 * 32 == 1024
    # the counter adds DIV_ROUND_UP(16 KiB, 64 KiB) = 1 page per section, for 4096 sections: four times
    # the 1024 pages the struct pages fill
    assert c["nr_memmap_boot_pages"] == 4096
    assert m.memmap_frame(127 * 256) == m.memmap_frame(0) + 31  # a leaf covers 128 sections (2 GiB)
    assert m.memmap_frame(128 * 256) == m.memmap_frame(0) + 32  # the next block of the sparse buffer
    m.check()


@pytest.mark.parametrize("kernel", KERNELS)
def test_radix_4k_16g_boots_into_128_pmd_leaves(kernel):
    m = machine("radix-4K", kernel, 16 * GiB)
    c = m.counters()
    assert c["vmemmap_leaves_2M"] == 128  # 256 MiB of struct pages, 8 sections per leaf
    assert [k for k in c if k.startswith("vmemmap_leaves_")] == ["vmemmap_leaves_2M"]
    assert [c[f"vmemmap_pagetable_pages_{level}"] for level in ("pud", "pmd", "pte")] == [1, 1, 0]
    assert c["memmap_frames"] == c["nr_memmap_boot_pages"] == 1024 * 64 == 65_536  # 64 pages per section
    assert c["pagetable_frames"] == 2
    m.check()


# --------------------------------- sub-sections and pfn_valid (radix_pgtable.c vmemmap_populated)

@pytest.mark.parametrize("kernel", KERNELS)
def test_a_subsection_pmd_leaf_lives_until_no_subsection_it_serves_is_valid(kernel):
    m = machine(kernel=kernel)
    before, booted = m.snapshot(), m.counters()
    first = pfn(m, 2 * TiB)  # a new PMD table (1 TiB of RAM per table with 64K pages)
    second = first + 256  # the next section: its struct pages sit in the same 2 MiB leaf
    m.add_memmap(first, 32)
    assert delta(m, booted, "vmemmap_leaves_2M", "memmap_frames", "pagetable_frames", "nr_memmap_pages") == {
        "vmemmap_leaves_2M": 1, "memmap_frames": 32, "pagetable_frames": 1, "nr_memmap_pages": 1}
    m.add_memmap(second, 32)  # vmemmap_check_pmd: the leaf is there, nothing allocated
    assert delta(m, booted, "vmemmap_leaves_2M", "memmap_frames", "nr_memmap_pages") == {
        "vmemmap_leaves_2M": 1, "memmap_frames": 32, "nr_memmap_pages": 2}
    leaf = m.memmap_frame(first)
    assert m.memmap_frame(second) == leaf  # 16 KiB further, in the same 64 KiB frame
    m.remove_memmap(first, 32)  # vmemmap_pmd_is_unused: the second sub-section is still pfn_valid
    assert delta(m, booted, "vmemmap_leaves_2M", "memmap_frames") == {"vmemmap_leaves_2M": 1, "memmap_frames": 32}
    assert m.memmap_frame(second) == leaf
    m.remove_memmap(second, 32)  # nothing valid is left in the leaf's 2 GiB: leaf and PMD table go
    after = m.snapshot()
    assert after["physmem"] == before["physmem"]
    assert after["tables"] == before["tables"]
    assert m.counters()["tlb_flush_kernel_range"] == 2  # one radix__flush_tlb_kernel_range per vmemmap_free
    m.check()


def test_a_leaf_shared_by_boot_sections_and_a_subsection_goes_with_the_last_of_them():
    # 1 GiB of boot memory fills half of the first leaf; a sub-section hot-added at 1.5 GiB lands in
    # that leaf, so adding it allocates nothing, and the leaf outlives every boot section
    m = machine(size=1 * GiB)
    booted = m.counters()
    hot = pfn(m, 1536 * MiB)
    m.add_memmap(hot, 32)
    assert delta(m, booted, "memmap_frames", "free_frames", "nr_memmap_pages") == {
        "memmap_frames": 0, "free_frames": 0, "nr_memmap_pages": 1}
    m.remove_memmap(0, pfn(m, 1 * GiB))  # every boot section (free_map_bootmem): the sub-section is valid
    c = m.counters()
    assert (c["vmemmap_leaves_2M"], c["memmap_frames"], c["pagetable_frames"]) == (1, 32, 2)
    m.remove_memmap(hot, 32)  # the last valid sub-section: leaf, PMD and PUD tables go, the PGD stays
    c = m.counters()
    assert (c.get("vmemmap_leaves_2M", 0), c["memmap_frames"], c["pagetable_frames"]) == (0, 0, 0)
    assert c["free_frames"] == c["present_pages"] - c["kernel_image_frames"]  # the kernel image is never freed
    assert c["tlb_flush_kernel_range"] == 64 + 1
    m.check()


# ------------------------------------ altmaps (radix_pgtable.c altmap_cross_boundary, hand-computed)

@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("offset, size, free, leaves_2m, leaves_4k", [
    (0, 256 * MiB, 1024, 2, 0),          # PMD-aligned, each leaf's 128 MiB of pfns inside: 2 blocks from it
    (0, 64 * MiB, 256, 0, 256),          # PMD-aligned, but the leaf would describe 128 MiB: base pages
    (16 * MiB, 128 * MiB, 512, 0, 512),  # starts 256 KiB into a PMD, and the next PMD crosses the end
])
def test_radix_4k_altmap_pmd_only_when_aligned_and_inside(kernel, offset, size, free, leaves_2m, leaves_4k):
    m = machine("radix-4K", kernel)
    base, count = pfn(m, 64 * GiB + offset), pfn(m, size)
    m.physmem.hot_add(0, base, base + count)  # the memory being added hosts its memmap
    altmap = VmemAltmap(base_pfn=base, end_pfn=base + count - 1, free=free, journal=m.journal)
    before, booted = m.snapshot(), m.counters()
    m.add_memmap(base, count, altmap=altmap)
    assert delta(m, booted, "vmemmap_leaves_2M", "vmemmap_leaves_4K", "memmap_frames") == {
        "vmemmap_leaves_2M": leaves_2m, "vmemmap_leaves_4K": leaves_4k, "memmap_frames": free}
    assert (altmap.alloc, altmap.align) == (free, 0)  # every frame from the altmap, none from RAM
    assert m.memmap_frame(base) == base
    assert m.memmap_frame(base + count - 1) == base + free - 1
    m.check()
    m.remove_memmap(base, count, altmap=altmap)
    assert altmap.alloc == 0
    assert m.snapshot()["physmem"] == before["physmem"]
    m.check()


@pytest.mark.parametrize("kernel, from_altmap, first_frame_in_altmap", [
    ("6.12", 4, True),   # steps from the unaligned start: page 0 judged by the device's first pfn
    ("7.1", 3, False),   # start aligned to PAGE_SIZE: page 0 also describes 16 MiB before the device
])
def test_radix_64k_altmap_base_page_boundary_is_judged_from_the_step(kernel, from_altmap, first_frame_in_altmap):
    # a 256 MiB device at 64 GiB + 16 MiB: its 256 KiB of struct pages start 16 KiB into a 64 KiB page
    # and touch 5 pages. Page 4 describes [+3840, +4864) pfns, past the end: RAM on both kernels.
    m = machine("radix-64K", kernel)
    base, count = pfn(m, 64 * GiB + 16 * MiB), pfn(m, 256 * MiB)
    m.physmem.hot_add(0, base, base + count)
    altmap = VmemAltmap(base_pfn=base, end_pfn=base + count - 1, free=8, journal=m.journal)
    before, booted = m.snapshot(), m.counters()
    m.add_memmap(base, count, altmap=altmap)
    assert delta(m, booted, "vmemmap_leaves_64K", "vmemmap_pagetable_pages_pte", "memmap_frames") == {
        "vmemmap_leaves_64K": 5, "vmemmap_pagetable_pages_pte": 1, "memmap_frames": 5}
    assert altmap.alloc == from_altmap
    assert altmap.holds(m.memmap_frame(base)) is first_frame_in_altmap
    assert not altmap.holds(m.memmap_frame(base + count - 1))
    m.check()
    page0 = m.memmap_frame(base)
    m.remove_memmap(base, 256, altmap=altmap)  # vmemmap_page_is_unused: sections 1 and 2 share page 0
    assert (m.memmap_frame(base + 256), altmap.alloc) == (page0, from_altmap)
    m.remove_memmap(base + 256, count - 256, altmap=altmap)  # RAM frames go to buddy, not the altmap
    assert altmap.alloc == 0
    assert m.snapshot()["physmem"] == before["physmem"]
    m.check()


@pytest.mark.parametrize("kernel", KERNELS)
def test_an_exhausted_altmap_falls_back_a_block_to_base_pages_and_pages_to_ram(kernel):
    # 600 altmap pages for 256 MiB (2 leaves' worth, 1024): the first leaf takes 512; the second block
    # fails (88 left), so section 8 takes 64 base pages from the altmap, section 9 the last 24 and 40
    # from RAM, sections 10-15 all 384 from RAM
    m = machine("radix-4K", kernel)
    base, count = pfn(m, 64 * GiB), pfn(m, 256 * MiB)
    m.physmem.hot_add(0, base, base + count)
    altmap = VmemAltmap(base_pfn=base, end_pfn=base + count - 1, free=600, journal=m.journal)
    booted = m.counters()
    m.add_memmap(base, count, altmap=altmap)
    assert delta(m, booted, "vmemmap_leaves_2M", "vmemmap_leaves_4K", "memmap_frames", "free_frames") == {
        "vmemmap_leaves_2M": 1, "vmemmap_leaves_4K": 512, "memmap_frames": 1024,
        "free_frames": -(424 + 2)}  # 424 RAM pages, a PMD and a PTE table
    assert altmap.alloc == 600
    section9 = base + 9 * 4096
    assert m.memmap_frame(section9 + 23 * 64) == base + 599  # struct pages of page 23: the altmap's last
    assert not altmap.holds(m.memmap_frame(section9 + 24 * 64))
    m.check()


def test_a_leaf_the_altmap_did_not_give_goes_back_to_ram():
    # radix's free_vmemmap_pages: "even though altmap is specified we never used altmap" -- a section
    # added with an altmap into a PMD that RAM already backs takes nothing from it
    m = machine("radix-4K")
    before = m.snapshot()
    ram, dev = pfn(m, 64 * GiB), pfn(m, 64 * GiB + 16 * MiB)
    m.add_memmap(ram, 4096)
    m.physmem.hot_add(0, dev, dev + 4096)
    altmap = VmemAltmap(base_pfn=dev, end_pfn=dev + 4095, free=64, journal=m.journal)
    m.add_memmap(dev, 4096, altmap=altmap)
    assert altmap.alloc == 0 and m.memmap_frame(dev) == m.memmap_frame(ram) + 64
    m.remove_memmap(ram, 4096)
    m.remove_memmap(dev, 4096, altmap=altmap)  # the last user: the 2 MiB leaf goes to the buddy allocator
    assert altmap.alloc == 0
    m.physmem.hot_remove(dev, dev + 4096)
    assert m.snapshot()["physmem"] == before["physmem"]
    m.check()


# --------------------------------------------------------------------- fallbacks and fault injection

@pytest.mark.parametrize("kernel, base_pages, left_mapped", [
    ("6.12", 64, 0),    # the section's own 256 KiB of struct pages
    ("7.1", 256, 192),  # from the PMD's start: sections 0-2 too, which remove_pagetable never reaches
])
def test_radix_4k_failed_pmd_block_falls_back_to_base_pages(kernel, base_pages, left_mapped):
    m = machine("radix-4K", kernel)
    booted = m.counters()
    section = pfn(m, 2 * TiB + 3 * 16 * MiB)  # the 4th of the 8 sections of a 2 MiB leaf
    m.physmem.faults.arm(predicate=lambda r: r.nr_pages == PMD_FRAMES["radix-4K"])
    m.add_memmap(section, 4096)
    m.physmem.faults.disarm()
    assert delta(m, booted, "vmemmap_leaves_4K", "vmemmap_pagetable_pages_pte", "nr_memmap_pages") == {
        "vmemmap_leaves_4K": base_pages, "vmemmap_pagetable_pages_pte": 1, "nr_memmap_pages": 64}
    m.remove_memmap(section, 4096)
    assert delta(m, booted, "vmemmap_leaves_4K", "memmap_frames") == {
        "vmemmap_leaves_4K": left_mapped, "memmap_frames": left_mapped}
    m.check()


@pytest.mark.parametrize("variant", ["radix-4K", "radix-64K"])
@pytest.mark.parametrize("kernel", KERNELS)
def test_fault_at_every_allocation_of_a_section_add(variant, kernel):
    # at 2 TiB the memmap needs a new PMD table, then a PMD block; without the block, a PTE table and
    # the section's pages (64 of 4 KiB, or the one 64 KiB page holding its 16 KiB)
    def op(m):
        m.add_memmap(pfn(m, 2 * TiB), m.sparse_geometry.pages_per_section)

    block = PMD_FRAMES[variant]
    pages = 64 if variant == "radix-4K" else 1
    probe = machine(variant, kernel)
    probe.physmem.faults.arm()
    op(probe)
    assert probe.physmem.faults.attempts == 2
    fallback = machine(variant, kernel)
    fallback.physmem.faults.arm(predicate=lambda r: r.nr_pages == block)
    op(fallback)
    assert fallback.physmem.faults.attempts == 2 + 1 + pages
    def base_pages_mapped(no_block, index):
        """What the add ends with: None for -ENOMEM (the PMD table, or any allocation of the fallback
        failing), else the number of base pages (0: the PMD block was had)."""
        if index == 1 or (no_block and index > 2):
            return None
        return pages if no_block or index == 2 else 0

    for no_block in (False, True):  # also fail every PMD block, to reach each allocation of the fallback
        for index in range(1, 2 + 1 + pages + 1):
            m = machine(variant, kernel)
            before = m.snapshot()
            m.physmem.faults.arm(nth=index, predicate=(lambda r: r.nr_pages == block) if no_block else None)
            expected = base_pages_mapped(no_block, index)
            if expected is None:
                with pytest.raises(OutOfMemory):
                    op(m)
                assert m.snapshot() == before, f"fault at allocation {index} left changes behind"
            else:
                op(m)
                assert m.counters().get(f"vmemmap_leaves_{variant[len('radix-'):]}", 0) == expected
            m.check()


def test_a_failed_pte_table_undoes_a_memmap_on_memory_add():
    m = machine(hotplug={"memmap_on_memory": "force"})
    before = m.snapshot()
    m.physmem.faults.arm(nth=1)  # the PTE table for the block's 4 altmap pages
    with pytest.raises(OutOfMemory, match="pte table"):
        m.hotplug.add_memory(64 * GiB, 256 * MiB, memmap_on_memory=True)
    assert m.snapshot() == before
    m.check()


# -------------------------- memmap_on_memory (docs/kernel-map.md#memmap_on_memory-per-memory-block)

def test_the_memory_block_is_the_256m_lmb():
    # the firmware's ibm,lmb-size (QEMU spapr's 256 MiB by default), through vmemcore_memory_block_size
    m = machine()
    assert m.firmware["lmb_size"] == 256 * MiB
    assert m.hotplug.block_size == m.sparse_geometry.memory_block_size == 256 * MiB


def test_radix_64k_mode_y_refuses_by_the_pageblock_rule_and_falls_back():
    m = machine(hotplug={"memmap_on_memory": "Y"})
    support = m.hotplug.supports_memmap_on_memory(256 * MiB)
    assert support.reason == "the memmap of a block (4 pages) is not a multiple of a pageblock (32 pages)"
    result = m.hotplug.add_memory(64 * GiB, 256 * MiB, memmap_on_memory=True)
    assert (result.memmap_on_memory, result.self_hosted_pages) == (False, 0)
    assert result.note == f"memmap_on_memory refused, memmap from RAM instead: {support.reason}"
    m.check()


def test_radix_64k_force_reserves_32_pages_and_uses_4():
    m = machine(hotplug={"memmap_on_memory": "force"})
    before = m.snapshot()
    assert m.hotplug.supports_memmap_on_memory(256 * MiB).supported
    start = pfn(m, 64 * GiB)
    result = m.hotplug.add_memory(64 * GiB, 256 * MiB, memmap_on_memory=True)
    altmap = m.hotplug.blocks[result.blocks[0]].altmap
    assert (result.memmap_on_memory, result.self_hosted_pages) == (True, 32)
    assert (altmap.free, altmap.alloc, altmap.free - altmap.alloc) == (32, 4, 28)  # 28 wasted
    assert [m.memmap_frame(start + 1024 * k) for k in range(4)] == [start, start + 1, start + 2, start + 3]
    present, managed = m.hotplug.zone_pages()[(0, "normal")]
    m.hotplug.online(result.blocks[0])  # the 32 altmap pages are present but never managed
    assert m.hotplug.zone_pages()[(0, "normal")] == (present + 4096, managed + 4096 - 32)
    m.hotplug.offline(result.blocks[0])
    m.hotplug.remove_memory(64 * GiB, 256 * MiB)
    assert m.counters().get("altmap_not_fully_unmapped", 0) == 0
    assert m.snapshot()["physmem"] == before["physmem"]
    m.check()


@pytest.mark.parametrize("mode", ["Y", "force"])
def test_radix_4k_block_memmap_is_two_pmd_leaves_from_the_block(mode):
    m = machine("radix-4K", hotplug={"memmap_on_memory": mode})
    start = pfn(m, 64 * GiB)
    booted = m.counters()
    result = m.hotplug.add_memory(64 * GiB, 256 * MiB, memmap_on_memory=True)
    altmap = m.hotplug.blocks[result.blocks[0]].altmap
    assert (result.self_hosted_pages, altmap.alloc, altmap.align) == (1024, 1024, 0)  # 4 MiB = 2 pageblocks
    assert delta(m, booted, "vmemmap_leaves_2M", "vmemmap_leaves_4K") == {
        "vmemmap_leaves_2M": 2, "vmemmap_leaves_4K": 0}
    assert (m.memmap_frame(start), m.memmap_frame(start + 32768)) == (start, start + 512)
    m.check()


@pytest.mark.parametrize("variant, kernel, vmemmap_size, reason", [
    ("radix-4K", "6.12", 256 * KiB, "with 4K pages the memmap of a block (256K) must be a multiple of PMD_SIZE (2M)"),
    ("radix-4K", "6.12", 4 * MiB, ""),
    ("radix-64K", "6.12", 256 * KiB, ""),  # always true: base pages serve any size
    ("radix-64K", "6.1", 256 * KiB, "powerpc selects ARCH_MHP_MEMMAP_ON_MEMORY_ENABLE (radix) only from 6.6"),
    ("hash-4K", "7.1", 4 * MiB, "arch_supports_memmap_on_memory is false on the hash MMU"),
    ("hash-64K", "6.12", 256 * KiB, "arch_supports_memmap_on_memory is false on the hash MMU"),
])
def test_arch_supports_memmap_on_memory(variant, kernel, vmemmap_size, reason):
    support = HOOKS.supports_memmap_on_memory(stub(variant, kernel), vmemmap_size)
    assert [(s.supported, s.reason) for s in support] == [(not reason, reason)]


# -------------------------------- HugeTLB sizes (docs/kernel-map.md#hugetlb-sizes-and-hvo) and HVO

@pytest.mark.parametrize("variant, gigantic", [("radix-4K", [1 * GiB]), ("radix-64K", [1 * GiB])])
def test_radix_hugepage_sizes_are_2m_and_1g(variant, gigantic):
    m = machine(variant, size=4 * GiB)
    got = m.hooks.hugepage_sizes(m)
    assert [(h.size, h.level, h.contiguous) for h in got] == [(2 * MiB, "pmd", 1), (1 * GiB, "pud", 1)]
    for h in got:
        assert m.geometry.level(h.level).entry_span == h.size
    assert [size for size in m.hugetlb.hstates if m.hugetlb.is_gigantic(size)] == gigantic


@pytest.mark.parametrize("variant, kernel, sizes", [
    ("hash-64K", "6.12", [(16 * MiB, "pmd", 1), (16 * GiB, "pud", 1)]),
    ("hash-4K", "6.12", [(16 * MiB, "pmd", 8), (16 * GiB, "pud", 64)]),  # contiguous PMD/PUD entries
    # 57fb15c32f4f reached mainline in the 6.11 merge window: 6.11 has the contiguous entries, 6.10 hugepd
    ("hash-4K", "6.11", [(16 * MiB, "pmd", 8), (16 * GiB, "pud", 64)]),
    ("hash-4K", "6.10", [(16 * MiB, "pud", 1), (16 * GiB, "pgd", 1)]),
    ("hash-4K", "6.1", [(16 * MiB, "pud", 1), (16 * GiB, "pgd", 1)]),    # hugepd off a PUD / PGD entry
])
def test_hash_hugepage_sizes_are_16m_and_16g(variant, kernel, sizes):
    s = stub(variant, kernel)
    got = HOOKS.hugepage_sizes(s)
    assert [(h.size, h.level, h.contiguous) for h in got] == sizes
    if kernel in ("6.11", "6.12"):
        for h in got:
            assert s.geometry.level(h.level).entry_span * h.contiguous == h.size


@pytest.mark.parametrize("variant", ["radix-4K", "radix-64K", "hash-4K", "hash-64K"])
@pytest.mark.parametrize("kernel", ["2019", "5.14", "6.0", "6.1", "6.12", "6.19", "7.1"])
def test_no_kernel_has_hvo(variant, kernel):
    support = HOOKS.hvo_support(stub(variant, kernel))
    assert support.supported is False
    assert support.reason.startswith("powerpc has never selected ARCH_WANT_OPTIMIZE_HUGETLB_VMEMMAP")
    assert ("bolted into the hash table" in support.reason) is variant.startswith("hash")


def test_asking_for_hvo_is_refused_with_the_reason():
    with pytest.raises(Veto, match="powerpc: HugeTLB Vmemmap Optimization is not available: powerpc has never"):
        machine(size=4 * GiB, hugetlb={"optimize_vmemmap": True})
    m = machine(size=4 * GiB)
    with pytest.raises(Veto, match="ARCH_WANT_HUGETLB_PAGE_OPTIMIZE_VMEMMAP before 6.6"):
        m.hugetlb.set_optimize_vmemmap(True)
