"""Boot-time gigantic HugeTLB pages in the zone's managed pages: memblock takes them before the
buddy allocator exists, and gather_bootmem_prealloc (mm/hugetlb.c) gives them back to
totalram_pages and managed_pages with adjust_managed_page_count(page, pages_per_huge_page(h)) when
they join the pool, in every kernel modelled."""

import pytest

from vmemcore import GiB
from vmemcore.machine import Machine

PAGE = 4096
GIGANTIC = 1 * GiB // PAGE  # 262,144 pages per 1 GiB folio


@pytest.mark.parametrize("kernel", ["5.14.0", "6.12", "7.1"])
def test_boot_gigantic_pages_are_managed_once_in_the_pool(kernel):
    m = Machine("x86_64", kernel=kernel, memory=[{"size": 16 * GiB}],
                hugetlb={"optimize_vmemmap": False, "boot": [{"size": "1G", "count": 2}]})
    present, managed = m.hotplug.zone_pages()[(0, "normal")]
    c = m.counters()
    assert c["hugetlb_frames"] == 2 * GIGANTIC
    # what stays reserved is the boot memmap, the boot page tables and the kernel image, nothing else
    assert managed == present - c["nr_memmap_boot_pages"] - c["pagetable_frames"] - c["kernel_image_frames"]
    # 16 GiB: 4 Mi pages, 64 B of struct page each = 65,536 memmap pages
    assert c["nr_memmap_boot_pages"] == 16 * GiB // PAGE * 64 // PAGE
    # the same machine without the pages manages as many pages: the folios count as managed
    plain = Machine("x86_64", kernel=kernel, memory=[{"size": 16 * GiB}])
    assert plain.hotplug.zone_pages()[(0, "normal")] == (present, managed)
    m.check()


def test_a_freed_boot_gigantic_page_goes_to_the_buddy_allocator():
    m = Machine("x86_64", memory=[{"size": 16 * GiB}], hugetlb={"boot": [{"size": "1G", "count": 2}]})
    before = m.hotplug.zone_pages()[(0, "normal")]
    free = m.counters()["free_frames"]
    m.hugetlb.resize("1G", 1)  # update_and_free_hugetlb_folio: the folio's pages are free pages
    assert m.counters()["free_frames"] - free == GIGANTIC
    assert m.hotplug.zone_pages()[(0, "normal")] == before  # managed before, managed after
    m.check()
