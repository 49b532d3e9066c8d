"""s390 2 KiB page tables as fragments of 4 KiB pages (vmemcore/pgalloc.py): page_table_alloc()
before d08d4e7cd6bf (6.7) and the boot-time vmem_pte_alloc() before daa8af80d283 (6.17; stable
6.12.42, 6.15.10, 6.16.1) put two page tables in one page; a page goes with its last table."""

import pytest

from vmemcore import GiB
from vmemcore.errors import OutOfMemory
from vmemcore.machine import Machine

PAGE = 4096
STRUCT_PAGE = 64
PTES_PER_TABLE = 256  # _PAGE_ENTRIES: 256 x 8 B = 2 KiB, half a page
PFNS_PER_TABLE = PTES_PER_TABLE * PAGE // STRUCT_PAGE  # 16,384 pfns (64 MiB) of struct pages per table
SUB = 512  # pfns per 2 MiB sub-section
PFN_64G = 64 * GiB // PAGE


def machine(kernel, size=64 * GiB):
    # without EDAT1 the vmemmap is mapped with 4 KiB pages, so every 1 MiB of it needs a page table
    return Machine("s390", kernel=kernel, memory=[{"start": 0, "size": size}], features={"edat1": False})


# 64 GiB: 16 Mi pfns x 64 B = 1 GiB of struct pages = 262,144 4 KiB pages, 256 per table
BOOT_TABLES = 64 * GiB // PAGE * STRUCT_PAGE // PAGE // PTES_PER_TABLE


@pytest.mark.parametrize("kernel, pages", [
    ("6.12.41", BOOT_TABLES // 2),  # memblock_alloc(2 KiB, 2 KiB): two tables to a page
    ("6.12.42", BOOT_TABLES),  # daa8af80d283 backported: memblock_alloc(PAGE_SIZE, PAGE_SIZE)
    ("6.6", BOOT_TABLES // 2),
    ("6.16.1", BOOT_TABLES),
    ("6.17", BOOT_TABLES),
])
def test_boot_page_tables_share_pages_until_the_fix(kernel, pages):
    assert BOOT_TABLES == 1024
    m = machine(kernel)
    c = m.counters()
    assert m.pagetable.tables["pte"] == BOOT_TABLES
    assert c["vmemmap_pagetable_pages_pte"] == pages
    assert c["pagetable_frames"] == 4 + pages  # and one 16 KiB segment table
    m.check()


@pytest.mark.parametrize("kernel, pages", [("6.6", 2), ("6.7", 4), ("6.12.41", 4)])
def test_hot_added_page_tables_share_pages_before_6_7(kernel, pages):
    # a 256 MiB section (SECTION_SIZE_BITS 28 before 6.13): 4 MiB of struct pages = 4 page tables;
    # page_table_alloc() pairs them before d08d4e7cd6bf, gives each a page since
    m = machine(kernel)
    before = m.snapshot()
    booted = m.counters()["vmemmap_pagetable_pages_pte"]
    section = m.sparse_geometry.pages_per_section
    assert section == 4 * PFNS_PER_TABLE
    m.add_memmap(PFN_64G, section)
    assert m.counters()["vmemmap_pagetable_pages_pte"] - booted == pages
    m.check()
    m.remove_memmap(PFN_64G, section)
    after = m.snapshot()
    for key in ("physmem", "tables", "table_frames"):  # every page-table page back: no fragment leaked
        assert after[key] == before[key], key
    m.check()


def test_a_page_goes_with_its_last_table_and_its_free_half_is_reused_first():
    m = machine("6.6")
    booted = m.counters()
    first, second, third = PFN_64G, PFN_64G + PFNS_PER_TABLE, PFN_64G + 2 * PFNS_PER_TABLE
    m.add_memmap(first, SUB)  # a new page: its first half is this table, the second half is free
    page = m.pagetable.lookup(m.pfn_to_page(first))[0].pfn
    m.add_memmap(second, SUB)  # the next 1 MiB of vmemmap: its table takes the free half
    assert m.pagetable.lookup(m.pfn_to_page(second))[0].pfn == page
    assert m.counters()["vmemmap_pagetable_pages_pte"] - booted["vmemmap_pagetable_pages_pte"] == 1
    m.remove_memmap(first, SUB)  # its table is freed, the page stays: the second table lives in it
    c = m.counters()
    assert c["vmemmap_pagetable_pages_pte"] - booted["vmemmap_pagetable_pages_pte"] == 1
    assert c["free_frames"] - booted["free_frames"] == -1 - 8  # the page, and the second range's 8 pages
    m.add_memmap(third, SUB)  # page_table_free put the page at the head of pgtable_list
    assert m.pagetable.lookup(m.pfn_to_page(third))[0].pfn == page
    m.remove_memmap(second, SUB)
    m.remove_memmap(third, SUB)
    c = m.counters()
    assert (c["vmemmap_pagetable_pages_pte"], c["free_frames"]) == (booted["vmemmap_pagetable_pages_pte"],
                                                                   booted["free_frames"])
    m.check()


def test_removing_all_boot_memory_frees_every_shared_page():
    m = machine("6.12.41")
    m.remove_memmap(0, 64 * GiB // PAGE)
    c = m.counters()
    assert (c["memmap_frames"], c["pagetable_frames"], c["vmemmap_pagetable_pages_pte"]) == (0, 0, 0)
    assert c["free_frames"] == c["present_pages"] - c["kernel_image_frames"]  # the kernel image is never freed
    m.check()


def test_hvo_split_takes_a_fragment_before_6_7():
    # s390 HVO (6.2-6.17): vmemmap_split_pmd's pte_alloc_one_kernel is page_table_alloc(); with
    # EDAT1 the boot vmemmap has no page tables. 128 pages of 1 MiB span the struct pages of at
    # least two 1 MiB segments (64 MiB of memory each): one split per segment, and a page per two
    # splits before 6.7, a page per split since
    for kernel, tables_per_page in (("6.6", 2), ("6.7", 1)):
        m = Machine("s390", kernel=kernel, memory=[{"size": 4 * GiB}], hugetlb={"optimize_vmemmap": True})
        m.hugetlb.resize("1M", 128)
        c = m.counters()
        splits = c["hvo_pmd_splits"]
        # the free lists hand out the lone 1 MiB block left below the boot memmap first (segment 62),
        # then the lowest: 127 MiB from the end of the 32 MiB kernel image at the start of RAM, [32 MiB,
        # 159 MiB), segments 0-2: 4 segments
        assert splits == 4
        assert c["vmemmap_pagetable_pages_pte"] == -(-splits // tables_per_page)
        m.check()


def test_fault_at_every_allocation_of_a_section_add_with_fragments():
    # 6.6: the 4 page tables of a section come from 2 pages (the 2nd and 4th reuse a free half and
    # cannot fail), then 1,024 vmemmap pages in one batch
    def op(m):
        m.add_memmap(PFN_64G, m.sparse_geometry.pages_per_section)

    probe = machine("6.6", size=4 * GiB)
    probe.physmem.faults.arm()
    op(probe)
    attempts = probe.physmem.faults.attempts
    for index in range(1, attempts + 1):
        m = machine("6.6", size=4 * GiB)
        before = m.snapshot()
        m.physmem.faults.arm(nth=index)
        with pytest.raises(OutOfMemory):
            op(m)
        assert m.snapshot() == before, f"fault at allocation {index} left changes behind"
        m.check()
