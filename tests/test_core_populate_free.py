"""Runtime populate and x86_64 vmemmap_free: sub-sections, sub-PMD tracking, free everything."""

import pytest

from vmemcore.errors import BadRequest, OutOfMemory
from vmemcore.machine import Machine
from vmemcore.units import GiB

SECTION = 32768  # pfns per 128 MiB section
SUB = 512  # pfns per 2 MiB sub-section


def test_a_subsection_is_mapped_with_eight_base_pages(x86_16g):
    m = x86_16g
    pfn = 64 * GiB // 4096
    m.populate_section_memmap(pfn, SUB)
    c = m.counters()
    assert c["vmemmap_leaves_4K"] == 8
    assert c["vmemmap_pagetable_pages_pte"] == 1
    assert c["nr_memmap_pages"] == 8
    table, index = m.pagetable.lookup(m.pfn_to_page(pfn))
    assert table.level.name == "pte"
    assert m.pagetable.lookup(m.pfn_to_page(pfn + SUB)) is None
    m.check()


def test_free_everything_after_boot_612_keeps_the_boot_counter_and_the_pud_table(x86_16g):
    m = x86_16g
    total = 16 * GiB // 4096
    m.remove_memmap(0, total)
    c = m.counters()
    assert c["memmap_frames"] == 0
    assert c["nr_memmap_boot_pages"] == 65_536  # 6.12's free_map_bootmem changes no counter
    assert c["vmemmap_pagetable_pages_pmd"] == 0
    assert c["vmemmap_pagetable_pages_pud"] == 1  # x86 never frees the PUD table under 4-level
    assert c["free_frames"] == total - 1 - 8_192  # the PUD table and the 32 MiB kernel image (8,192 pages) stay
    assert c["tlb_flush_all"] == 128  # one vmemmap_free per section
    assert len(m.sparse.sections) == 0
    m.check()


def test_free_everything_under_71_lowers_the_boot_counter():
    m = Machine("x86_64", kernel="7.1", memory=[{"size": 16 * GiB}])
    m.remove_memmap(0, 16 * GiB // 4096)
    assert m.counters()["nr_memmap_boot_pages"] == 0


def test_five_level_frees_pud_tables_but_never_the_p4d():
    m = Machine("x86_64", variant="5-level", memory=[{"size": 16 * GiB}])
    m.remove_memmap(0, 16 * GiB // 4096)
    c = m.counters()
    assert (c["vmemmap_pagetable_pages_p4d"], c["vmemmap_pagetable_pages_pud"], c["vmemmap_pagetable_pages_pmd"]) == (1, 0, 0)
    assert c["free_frames"] == 16 * GiB // 4096 - 1 - 8_192  # the P4D table and the 32 MiB kernel image stay
    m.check()


def test_hot_added_section_round_trip_restores_the_machine(x86_16g):
    m = x86_16g
    before = m.snapshot()
    pfn = 64 * GiB // 4096
    m.add_memmap(pfn, 4 * SECTION, node=0)
    c = m.counters()
    assert c["nr_memmap_pages"] == 4 * 512
    assert c["vmemmap_leaves_2M"] == 128 + 4
    m.remove_memmap(pfn, 4 * SECTION)
    after = m.snapshot()
    assert after["counters"]["nr_memmap_pages"] == 0
    assert after["physmem"] == before["physmem"]
    m.check()


def test_pmd_leaf_is_freed_only_when_its_last_subsection_goes(x86_16g):
    m = x86_16g
    pfn = 64 * GiB // 4096
    m.add_memmap(pfn, SECTION)
    frame = m.memmap_frame(pfn)
    for k in range(63):
        m.remove_memmap(pfn + k * SUB, SUB)
        assert m.memmap_frame(pfn + 63 * SUB) == frame + 63 * SUB * 64 // 4096
        assert m.counters()["vmemmap_leaves_2M"] == 129
    m.remove_memmap(pfn + 63 * SUB, SUB)
    assert m.counters()["vmemmap_leaves_2M"] == 128
    assert m.memmap_frame(pfn + 63 * SUB) is None
    assert m.counters()["nr_memmap_pages"] == 0
    m.check()


def test_partial_removal_of_a_boot_section_frees_nothing(x86_16g):
    m = x86_16g
    before = m.counters()
    m.remove_memmap(0, SUB)
    assert m.counters()["memmap_frames"] == before["memmap_frames"]
    assert m.sparse.valid(0)  # early sections stay valid over their whole span
    m.remove_memmap(SUB, SECTION - SUB)
    assert m.counters()["memmap_frames"] == before["memmap_frames"] - 512
    m.check()


def test_removing_what_has_no_memmap_is_refused_and_changes_nothing(x86_16g):
    m = x86_16g
    before = m.snapshot()
    with pytest.raises(BadRequest, match="no memmap"):
        m.remove_memmap(64 * GiB // 4096, SECTION)
    with pytest.raises(BadRequest, match="sub-section"):
        m.populate_section_memmap(100, SUB)
    with pytest.raises(BadRequest, match="EEXIST"):
        m.add_memmap(0, SUB)
    assert m.snapshot() == before


def _attempts(op):
    m = Machine("x86_64", memory=[{"size": 16 * GiB}])
    m.physmem.faults.arm()
    op(m)
    return m.physmem.faults.attempts


@pytest.mark.parametrize("name, op", [
    ("subsection", lambda m: m.populate_section_memmap(64 * GiB // 4096, SUB)),
    ("sections", lambda m: m.add_memmap(512 * GiB // 4096, 3 * SECTION)),
    ("two-subsections", lambda m: m.populate_section_memmap(64 * GiB // 4096, 2 * SUB)),
])
def test_fault_at_every_allocation_leaves_the_machine_unchanged_or_complete(name, op):
    n = _attempts(op)
    assert n >= 2
    outcomes = set()
    for index in range(1, n + 1):
        m = Machine("x86_64", memory=[{"size": 16 * GiB}])
        before = m.snapshot()
        m.physmem.faults.arm(nth=index)
        try:
            op(m)
        except OutOfMemory:
            outcomes.add("rolled back")
            assert m.snapshot() == before, f"fault at allocation {index} left changes behind"
        else:
            outcomes.add("completed")  # a failed PMD block falls back to base pages
        m.check()
    assert "rolled back" in outcomes


def test_failed_pmd_block_falls_back_to_base_pages(x86_16g):
    m = x86_16g
    m.physmem.faults.arm(predicate=lambda r: r.nr_pages == 512)
    m.populate_section_memmap(64 * GiB // 4096, SECTION)
    c = m.counters()
    assert c["vmemmap_leaves_2M"] == 128
    assert c["vmemmap_leaves_4K"] == 512
    m.check()


def test_depopulate_refuses_boot_sections(x86_16g):
    before = x86_16g.snapshot()
    with pytest.raises(BadRequest, match="boot section"):
        x86_16g.depopulate_section_memmap(0, SUB)
    assert x86_16g.snapshot() == before


def test_memmap_for_a_node_without_memory_falls_back_and_counts_offnode(x86_16g):
    # node 3 has no memory: buddy's zonelist falls back to node 0, vmemmap_verify warns per entry
    x86_16g.populate_section_memmap(64 * GiB // 4096, SUB, node=3)
    assert x86_16g.stats["vmemmap_offnode_entries"] == 0  # single-node machines never warn
    m = Machine("x86_64", memory=[{"node": 0, "size": 8 * GiB}, {"node": 1, "size": 8 * GiB}])
    m.populate_section_memmap(64 * GiB // 4096, SECTION, node=2)
    assert m.stats["vmemmap_offnode_entries"] == 1  # one PMD leaf, its block on another node
    assert m.physmem.node_of(m.memmap_frame(64 * GiB // 4096)) == 0  # remote nodes tie: lowest id


def test_split_leaf_keeps_every_translation(x86_16g):
    m = x86_16g
    table, index = m.pagetable.lookup(m.pfn_to_page(0))
    before = [m.pagetable.translate(m.pfn_to_page(p)) for p in range(0, 32768, 64)]
    with m.transaction():
        from vmemcore.populate import table_allocator
        child = m.pagetable.split_leaf(table, index, table_allocator(m, 0))
    assert child.level.name == "pte" and child.nr_present == 512
    assert [m.pagetable.translate(m.pfn_to_page(p)) for p in range(0, 32768, 64)] == before
    c = m.counters()
    assert (c["vmemmap_leaves_2M"], c["vmemmap_leaves_4K"], c["vmemmap_pagetable_pages_pte"]) == (127, 512, 1)
