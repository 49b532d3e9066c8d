"""powerpc radix device-dax: ``vmemmap_populate_compound_pages`` of ``radix_pgtable.c`` (6.6+), the pagemap's
counters (mapped = used + saved) and rollback after a fault at every allocation."""

import warnings

import pytest

from vmemcore import GiB, MiB
from vmemcore.errors import OutOfMemory
from vmemcore.machine import Machine
from vmemcore.zone_device import DevicePagemap, add_devdax_step, remove_devdax_step

PAGE = 64 * 1024
STRUCT_PAGE = 64
DEVICE = 64 * GiB  # above the 16 GiB of boot memory; its struct pages start 64 MiB into the vmemmap


def machine(variant="radix-64K", kernel="6.12"):
    return Machine("powerpc", variant=variant, kernel=kernel, memory=[{"start": 0, "size": 16 * GiB}])


def state(m):
    snap = m.snapshot()
    snap["counters"] = {k: v for k, v in snap["counters"].items() if not k.startswith("tlb_flush")}
    return snap


def mapped_bytes(counters):
    return sum(v for k, v in counters.items() if k.startswith("vmemmap_mapped_bytes_"))


# 1 GiB of device memory = 16,384 pfns of 64 KiB, 64 sections of 16 MiB; each section's memmap is
# 256 * 64 B = 16 KiB, a quarter page, which nr_memmap_pages rounds up to 1 page: 64 pages counted.
# 2M (32 pfns: 2 KiB of struct pages) and 16M (256 pfns: 16 KiB) compound pages have no more than
# VMEMMAP_RESERVE_NR (2) vmemmap pages each: no dedup, radix__vmemmap_populate maps the 1 MiB of struct
# pages (64 MiB + [0, 1 MiB) of the vmemmap) with one new 2 MiB PMD leaf: 32 pages mapped, 32 frames.
# 1G: dedup; 1 MiB of struct pages = 16 vmemmap pages in one new PTE table (32 entries span 2 MiB);
# the head page and the first tail page have frames, the 14 others map the first tail page's frame.
@pytest.mark.parametrize("align, dedup, mapped, used, tables", [
    ("2M", False, 32, 32, 0),
    ("16M", False, 32, 32, 0),
    ("1G", True, 16, 2, 1),
])
def test_radix_64k_devdax_counters_are_consistent(align, dedup, mapped, used, tables):
    m = machine()
    before = m.counters()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no divide by zero anywhere on the way
        report = add_devdax_step(m, start=DEVICE, size=GiB, align=align)
    after = m.counters()
    assert report["dedup"] is dedup
    assert (report["vmemmap_pages_mapped"], report["vmemmap_frames_used"], report["vmemmap_pages_saved"]) == \
        (mapped, used, mapped - used)
    assert report["vmemmap_pages_mapped"] == report["vmemmap_frames_used"] + report["vmemmap_pages_saved"]
    assert report["pagetable_pages"] == tables
    assert report["memmap_pages_counted"] == after["nr_memmap_pages"] - before.get("nr_memmap_pages", 0) == 64
    assert after["devdax_vmemmap_pages_mapped"] * PAGE == mapped_bytes(after) - mapped_bytes(before)
    assert after["memmap_frames"] - before["memmap_frames"] == used
    m.check()  # frames owned as memmap, and each shared frame holds one reference per PTE
    first = DEVICE // PAGE

    size = {"2M": 2 * MiB, "16M": 16 * MiB, "1G": GiB}[align] // PAGE
    heads = m.structpages.compound_heads(first, GiB // PAGE)
    assert heads == [first + (i // size) * size for i in range(GiB // PAGE)]
    remove_devdax_step(m, DEVICE, GiB)
    m.check()
    assert mapped_bytes(m.counters()) == mapped_bytes(before)


@pytest.mark.parametrize("align", ["2M", "16M", "1G"])
def test_fault_at_every_allocation_of_a_radix_64k_devdax_add(align):
    m = machine()
    shift = (({"2M": 2 * MiB, "16M": 16 * MiB, "1G": GiB}[align]) // PAGE).bit_length() - 1
    request = DevicePagemap(ranges=[(DEVICE, GiB)], vmemmap_shift=shift)
    before = state(m)
    m.physmem.faults.arm()
    m.zone_device.add(request)
    attempts = m.physmem.faults.attempts
    # 2M/16M: one 2 MiB block (the PMD and PUD tables exist since boot); 1G: a PTE table, head, first tail
    assert attempts == {"2M": 1, "16M": 1, "1G": 3}[align]
    m.zone_device.remove(DEVICE)
    # a failed 2 MiB block (2M/16M, first allocation) falls back to 16 base pages and succeeds; any
    # other failure is -ENOMEM; either way, once removed or rolled back, the machine is as before
    falls_back = {1} if align != "1G" else set()
    outcomes = [_add_with_fault_at(m, request, index) for index in range(1, attempts + 1)]
    assert [index for index, pm in enumerate(outcomes, 1) if pm is not None] == sorted(falls_back)
    assert all((pm.pages_mapped, pm.frames_used, pm.pages_saved) == (16, 16, 0) for pm in outcomes if pm)
    assert state(m) == before
    m.zone_device.add(request)
    m.check()


def _add_with_fault_at(m, request, index):
    """Add ``request`` failing allocation ``index`` (no warning allowed); the pagemap if it still
    succeeded (then removed again), None if it failed; the machine must be as before either way."""
    before = state(m)
    m.physmem.faults.arm(nth=index)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            pm = m.zone_device.add(request)
    except OutOfMemory:
        pm = None
    finally:
        m.physmem.faults.disarm()
    m.check()
    if pm is not None:
        m.zone_device.remove(DEVICE)
    assert state(m) == before, f"fault at allocation {index} left changes behind"
    return pm


def test_vmemmap_populate_compound_pages_of_radix_4k_looks_for_the_tail_page_by_address():
    """Radix 4K, one 1 GiB compound page: 262,144 pfns, 16 MiB of struct pages = 4,096 vmemmap pages,
    64 per 128 MiB section. The kernel's addr_pfn grows by one per vmemmap page: in the first
    section, page 0 is the head and page 1 the first tail page, then page k (addr_pfn offset k)
    looks for its tail page at page k + 1 - k * 64 / 4096 = page k itself: a frame of its own, 64
    frames in all. In section s > 0, page 64 s + j looks at byte 4096 + 4032 j: one of pages 1..63
    of the first section, which it shares. 4,096 mapped, 64 used, 4,032 saved."""
    m = machine("radix-4K")
    pm = m.zone_device.add(DevicePagemap(ranges=[(DEVICE, GiB)], vmemmap_shift=18))
    assert (pm.pages_mapped, pm.frames_used, pm.pages_saved) == (4096, 64, 4032)
    m.check()
    first = DEVICE // 4096
    assert set(m.structpages.compound_heads(first, 1 << 18)) == {first}


def test_vmemmap_populate_compound_pages_is_left_to_the_engine_elsewhere():
    """x86_64 answers nothing: the generic populate runs (the hook's default, False)."""
    m = Machine("x86_64", memory=[{"size": "4G"}])
    request = DevicePagemap(ranges=[(DEVICE, GiB)], vmemmap_shift=18)
    assert m.hooks.vmemmap_populate_compound_pages(m, DEVICE // 4096, 0, 0, 0, request) is False
    assert m.zone_device.add(request).frames_used == 2
