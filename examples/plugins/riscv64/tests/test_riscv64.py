"""The riscv64 example plugin against numbers derived by hand from arch/riscv.

Every machine has one node of 16 GiB unless said otherwise: 16 GiB / 128 MiB = 128 present
sections, each with 32,768 struct pages x 64 B = 2 MiB of memmap, 256 MiB (65,536 pages) in all.
"""

from importlib.metadata import entry_points

import pytest

import vmemcore
from vmemcore.arch import GiB, MiB, BadRequest, Veto

import vmemcore_riscv64 as riscv


def machine(variant="Sv48", kernel="6.12", **kw):
    return vmemcore.Machine("riscv64", variant=variant, kernel=kernel, memory=[{"size": "16G"}], **kw)


def state(m):
    """The snapshot without the TLB flush counters, which only grow."""
    snap = m.snapshot()
    snap["counters"] = {k: v for k, v in snap["counters"].items() if not k.startswith("tlb_flush")}
    return snap


def test_the_distribution_publishes_the_entry_point_and_machines_find_it():
    [ep] = [ep for ep in entry_points(group="vmemcore.arch") if ep.name == "riscv64"]
    assert ep.value == "vmemcore_riscv64"
    assert machine().arch.name == "riscv64"  # a Machine given no registry loads entry points


@pytest.mark.parametrize("variant, start, size", [
    # VMEMMAP_SHIFT = VA_BITS - 12 - 1 + 6; KERN_VIRT_SIZE = 256 PGD entries / 2;
    # VMEMMAP_START = PAGE_OFFSET - KERN_VIRT_SIZE / 2 - VMEMMAP_SIZE.
    # Sv39: 2^32 = 4 GiB; PGDIR 1 GiB, KERN_VIRT_SIZE 128 GiB: 0xffffffd600000000 - 64 GiB - 4 GiB
    ("Sv39", 0xFFFFFFC500000000, 4 * GiB),
    # Sv48: 2^41 = 2 TiB; PGDIR 512 GiB, KERN_VIRT_SIZE 64 TiB: 0xffffaf8000000000 - 32 TiB - 2 TiB
    ("Sv48", 0xFFFF8D8000000000, 2048 * GiB),
    # Sv57: 2^50 = 1 PiB; PGDIR 256 TiB, KERN_VIRT_SIZE 32 PiB: 0xff60000000000000 - 16 PiB - 1 PiB
    ("Sv57", 0xFF1C000000000000, 1 << 50),
])
def test_vmemmap_region_is_where_vm_layout_rst_puts_it(variant, start, size):
    m = machine(variant)
    assert (m.sparse_geometry.vmemmap_base, m.sparse_geometry.vmemmap_size) == (start, size)
    assert m.pfn_to_page(0) == start  # DRAM from physical 0: vmemmap = VMEMMAP_START


@pytest.mark.parametrize("variant, tables", [
    # 256 MiB of memmap from VMEMMAP_START (PGDIR-aligned) = 128 PMD leaves in one PMD table (1 GiB span),
    # under one entry of the table below the PGD. pgtable_cache_init then creates that level's table for
    # every PGD entry of the vmemmap: VMEMMAP_SIZE / PGDIR_SIZE = 2^(VA_BITS-7) / 2^(VA_BITS-9) = 4.
    ("Sv39", {"pmd": 4, "pte": 0}),                     # the PMD hangs off the PGD: 1 at boot + 3
    ("Sv48", {"pud": 4, "pmd": 1, "pte": 0}),           # 1 PUD at boot + 3; 1 PMD
    ("Sv57", {"p4d": 4, "pud": 1, "pmd": 1, "pte": 0}),  # 1 P4D at boot + 3; 1 PUD, 1 PMD
])
def test_16g_boot_maps_128_pmd_leaves_and_preallocates_below_the_pgd(variant, tables):
    m = machine(variant)
    c = m.counters()
    assert c["nr_memmap_boot_pages"] == 65_536
    assert c["vmemmap_leaves_2M"] == 128 and "vmemmap_leaves_4K" not in c
    assert {k.removeprefix("vmemmap_pagetable_pages_"): v for k, v in c.items()
            if k.startswith("vmemmap_pagetable_pages_")} == tables
    assert c["pagetable_frames"] == sum(tables.values())
    m.check()


def test_before_68_the_vmemmap_is_base_pages_and_nothing_is_preallocated():
    # 6.1, Sv39: 65,536 base pages, 512 per PTE table -> 128 PTE tables under 1 PMD table;
    # pgtable_cache_init pre-allocates the vmemmap's tables only from 6.11 (with memory hotplug).
    m = machine("Sv39", kernel="6.1")
    c = m.counters()
    assert (c["vmemmap_leaves_4K"], c["vmemmap_pagetable_pages_pte"], c["vmemmap_pagetable_pages_pmd"]) == (65_536, 128, 1)
    assert "vmemmap_leaves_2M" not in c
    m.check()


@pytest.mark.parametrize("variant, new_tables", [
    # 1 GiB at 64 GiB: 8 sections, 8 x 512 memmap pages in 8 PMD leaves at VMEMMAP_START + 1 GiB
    # (64 GiB / 4 KiB x 64 B), the second 1 GiB of the vmemmap.
    ("Sv39", {}),                                 # that PMD table was pre-allocated by pgtable_cache_init
    ("Sv48", {"vmemmap_pagetable_pages_pmd": 1}),  # a new PMD table under PUD entry 1
    ("Sv57", {"vmemmap_pagetable_pages_pmd": 1}),
])
def test_hot_add_and_remove_round_trip_returns_to_the_booted_machine(variant, new_tables):
    m = machine(variant)
    booted = state(m)
    before = m.counters()
    result = m.hotplug.add_memory(64 * GiB, 1 * GiB)
    added = m.counters()
    diff = {k: added.get(k, 0) - before.get(k, 0) for k in added if k.startswith("vmemmap_pagetable_pages_")}
    assert {k: v for k, v in diff.items() if v} == new_tables
    assert added["nr_memmap_pages"] - before["nr_memmap_pages"] == 4_096
    assert added["vmemmap_leaves_2M"] - before["vmemmap_leaves_2M"] == 8
    for block in result.blocks:
        m.hotplug.online(block)
    for block in result.blocks:
        m.hotplug.offline(block)
    m.hotplug.remove_memory(64 * GiB, 1 * GiB)
    # remove_pgd_mapping frees the 8 leaves and, on Sv48/Sv57, the emptied PMD table; Sv39 keeps its
    # pre-allocated PMD table, which it never frees (free_pmd_table needs pgtable_l4_enabled)
    assert state(m) == booted
    assert m.counters()["tlb_flush_all"] - before.get("tlb_flush_all", 0) == 8  # one per section's vmemmap_free
    m.check()


def test_teardown_policy_never_frees_the_level_below_the_pgd():
    assert {v: riscv.teardown_policy(machine(v)).free_tables for v in ("Sv39", "Sv48", "Sv57")} == {
        "Sv39": frozenset({"pte"}), "Sv48": frozenset({"pte", "pmd"}), "Sv57": frozenset({"pte", "pmd", "pud"})}


def test_hvo_frees_7_of_the_8_vmemmap_pages_of_a_2m_page():
    # 512 struct pages x 64 B = 32 KiB = 8 vmemmap pages per 2 MiB page; 6.12 maps them onto one new
    # head page and frees the 8 old (boot) frames: -8 boot memmap pages, +1 buddy memmap page, 7 net.
    m = machine(hugetlb={"optimize_vmemmap": True})
    before = m.counters()
    result = m.hugetlb.resize("2M", 4)
    assert result.optimized == 4
    after = m.counters()
    assert before["nr_memmap_boot_pages"] - after["nr_memmap_boot_pages"] == 4 * 8
    assert after["nr_memmap_pages"] - before["nr_memmap_pages"] == 4
    assert before["memmap_frames"] - after["memmap_frames"] == 4 * 7
    m.hugetlb.resize("2M", 0)
    assert m.counters()["memmap_frames"] == before["memmap_frames"]
    m.check()


def test_hvo_before_63_is_refused_with_the_kernels_reason():
    with pytest.raises(Veto, match="only from 6.3"):
        machine(kernel="6.1", hugetlb={"optimize_vmemmap": True})


def test_hotplug_before_611_is_refused_and_memmap_on_memory_falls_back():
    with pytest.raises(Veto, match="only from 6.11"):
        machine(kernel="6.1").hotplug.add_memory(64 * GiB, 128 * MiB)
    m = machine(hotplug={"memmap_on_memory": "Y"})
    result = m.hotplug.add_memory(64 * GiB, 128 * MiB, memmap_on_memory=True)
    assert not result.memmap_on_memory and "ARCH_MHP_MEMMAP_ON_MEMORY_ENABLE" in result.note
    m.check()


def test_sv48_does_not_exist_before_517():
    with pytest.raises(BadRequest, match="Sv48"):
        machine("Sv48", kernel="5.14")


@pytest.mark.parametrize("variant, features, sizes", [
    # HPAGE_SIZE (PMD) and PUD_SIZE, whose level is the top one on Sv39 (PUD folded)
    ("Sv39", {}, [("2M", "pmd", 1), ("1G", "pgd", 1)]),
    ("Sv48", {}, [("2M", "pmd", 1), ("1G", "pud", 1)]),
    # Svnapot: one NAPOT order (4), 16 PTEs = 64 KiB
    ("Sv48", {"svnapot": True}, [("64K", "pte", 16), ("2M", "pmd", 1), ("1G", "pud", 1)]),
])
def test_hugetlb_sizes(variant, features, sizes):
    m = machine(variant, features=features)
    assert [(h.name, h.level, h.contiguous) for h in (hs.size for hs in m.hugetlb.hstates.values())] == sizes
