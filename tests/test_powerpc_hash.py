"""powerpc ``init_64.c``'s ``vmemmap_list`` populate and free: the hash MMU's bolted vmemmap (every
kernel) and radix before 6.6 (368a0590d954 gave radix its own populate). Expected numbers are derived in
the comments from the kernel's arithmetic."""

import numpy as np
import pytest

from vmemcore import GiB, MiB
from vmemcore.errors import OutOfMemory
from vmemcore.machine import Machine
from vmemcore.mapping import VmemmapMapping
from vmemcore.physmem import Use
from vmemcore.zone_device import add_devdax_step, remove_devdax_step

STRUCT_PAGE = 64
BACKING = 24  # sizeof(struct vmemmap_backing)
SECTION = 16 * MiB


def machine(variant="hash-64K", kernel="6.12", size=64 * GiB, **kwargs):
    return Machine("powerpc", variant=variant, kernel=kernel, memory=[{"start": 0, "size": size}], **kwargs)


def state(m):
    snap = m.snapshot()
    snap["counters"] = {k: v for k, v in snap["counters"].items() if not k.startswith("tlb_flush")}
    return snap


def ceil(a, b):
    return -(-a // b)


@pytest.mark.parametrize("variant, page", [("hash-64K", 64 << 10), ("hash-4K", 4 << 10)])
def test_hash_64g_boot_bolts_16m_blocks_as_the_kernel_computes(variant, page):
    m = machine(variant)
    ram = 64 * GiB
    pages = ram // page
    memmap = pages * STRUCT_PAGE  # 64 MiB (64K pages) or 1 GiB (4K pages) of struct pages
    block = 16 * MiB  # mmu_vmemmap_psize: the MMU has 16M pages and boot RAM >= 1 GiB
    blocks = memmap // block  # 4 or 64 bolted blocks, one vmemmap_list entry each
    list_pages = ceil(blocks, page // BACKING)  # 2730 (64K) or 170 (4K) entries a page: 1 page
    sections = ram // SECTION  # 4096
    per_section = ceil(SECTION // page * STRUCT_PAGE, page)  # 16 KiB -> 1 page (64K); 256 KiB -> 64 pages (4K)
    c = m.counters()
    assert (c["vmemmap_leaves_16M"], c["vmemmap_mapped_bytes_16M"]) == (blocks, memmap)
    assert (c["vmemmap_list_entries"], c["vmemmap_list_pages"]) == (blocks, list_pages)
    assert c["nr_memmap_boot_pages"] == sections * per_section
    assert c["memmap_frames"] == memmap // page and c["pagetable_frames"] == list_pages
    assert not any(v for k, v in c.items() if k.startswith("vmemmap_pagetable_pages_"))  # no Linux page table
    assert not m.pagetable.top.nr_present
    m.check()
    # every present pfn's struct page: one translation per vmemmap page, each in its own frame,
    # owned as boot memmap, at the struct page's offset inside the page
    per_page = page // STRUCT_PAGE
    frames = [m.memmap_frame(pfn) for pfn in range(0, pages, per_page)]
    assert None not in frames and len(set(frames)) == len(frames) == memmap // page
    assert all(m.physmem.owner(f).use is Use.MEMMAP and m.physmem.owner(f).reserved for f in frames[::97])
    # inside a block, frames follow the addresses
    per_block = block // page
    runs = np.array(frames).reshape(blocks, per_block)
    assert (np.diff(runs, axis=1) == 1).all() and (runs[:, 0] % per_block == 0).all()
    assert m.vmemmap.translate(m.pfn_to_page(12345)) & (page - 1) == 12345 * STRUCT_PAGE % page
    assert m.structpages.read(pages - 1) is not None and m.structpages.read(pages) is None


def test_small_boot_ram_bolts_base_pages():
    """Below 1 GiB of boot RAM (or without 16M pages) mmu_vmemmap_psize is the base page: 512 MiB of
    hash-64K is 8,192 pages, 512 KiB of struct pages, 8 blocks of 64 KiB."""
    m = machine(size=512 * MiB)
    assert m.counters()["vmemmap_leaves_64K"] == 8
    no16m = machine(size=2 * GiB, features={"mmu_16M": False})
    assert no16m.counters()["vmemmap_leaves_64K"] == 2 * GiB // (64 << 10) * STRUCT_PAGE // (64 << 10)
    no16m.check()


@pytest.mark.parametrize("variant", ["hash-64K", "hash-4K", "radix-64K", "radix-4K"])
def test_list_populate_and_free_round_trip(variant):
    """A section hot-added above boot memory gets a new block (64 GiB's struct pages end on a block
    boundary), a sub-section of the next section shares it, and the block goes only with the last."""
    kernel = "6.1" if variant.startswith("radix") else "6.12"
    m = machine(variant, kernel)
    page = m.geometry.page_size
    before = state(m)
    first = 64 * GiB // page
    pps = SECTION // page
    sub = 2 * MiB // page
    m.add_memmap(first, pps)
    m.add_memmap(first + pps, sub)
    added = m.counters()["vmemmap_list_entries"] - before["counters"].get("vmemmap_list_entries", 0) \
        if "vmemmap_list_entries" in before["counters"] else None
    block = 2 * MiB if variant.startswith("radix") else 16 * MiB
    assert m.counters()["vmemmap_list_entries"] == 64 * GiB // page * STRUCT_PAGE // block + ceil(
        (pps + sub) * STRUCT_PAGE, block)
    m.check()
    frame = m.memmap_frame(first)
    m.remove_memmap(first, pps)
    assert m.memmap_frame(first + pps) is not None  # still pfn_valid: the block stays
    if (pps + sub) * STRUCT_PAGE <= block:
        assert m.physmem.owner(frame).use is Use.MEMMAP
    m.remove_memmap(first + pps, sub)
    m.check()
    assert state(m) == before, added


@pytest.mark.parametrize("variant", ["hash-64K", "radix-4K"])
def test_fault_at_every_allocation_of_a_list_populate(variant):
    kernel = "6.1" if variant.startswith("radix") else "6.12"
    m = machine(variant, kernel, size=4 * GiB)
    page = m.geometry.page_size
    first, count = 64 * GiB // page, 4 * SECTION // page
    before = state(m)
    m.physmem.faults.arm()
    m.add_memmap(first, count)
    attempts = m.physmem.faults.attempts
    # hash: one 16 MiB block; radix 4K: 1 MiB of struct pages in one 2 MiB block, and a PMD table
    # (the PUD table exists since boot)
    assert attempts == {"hash-64K": 1, "radix-4K": 2}[variant]
    m.remove_memmap(first, count)
    assert state(m) == before
    for index in range(1, attempts + 1):
        m.physmem.faults.arm(nth=index)
        with pytest.raises(OutOfMemory):
            m.add_memmap(first, count)
        assert state(m) == before, f"fault at allocation {index} left changes behind"
        m.check()
    m.physmem.faults.disarm()


def test_a_full_vmemmap_list_page_takes_a_new_one_and_its_failure_undoes_the_block():
    """hash-4K without 16M pages bolts 4 KiB blocks: 170 entries a page; 16 GiB of boot RAM is 4,194,304
    pages, 65,536 blocks, 386 list pages (65,536 - 385 * 170 = 86 entries in the last: 84 left). Adding sections until the
    list needs a page: the block is taken first, then the page; failing the page gives the block back."""
    m = machine("hash-4K", size=16 * GiB, features={"mmu_16M": False})
    c = m.counters()
    assert (c["vmemmap_list_entries"], c["vmemmap_list_pages"]) == (65536, 386)
    page = 4096
    pps = SECTION // page  # 4096 pfns: 64 blocks a section
    first = 64 * GiB // page
    m.add_memmap(first, pps)  # 64 of the 84 entries left: 20 remain
    m.add_memmap(first + pps, pps)  # 20 entries, a new page, 44 more
    assert m.counters()["vmemmap_list_pages"] == 387
    m.remove_memmap(first + pps, pps)
    assert m.counters()["vmemmap_list_pages"] == 387  # never given back
    m.check()
    fresh = machine("hash-4K", size=16 * GiB, features={"mmu_16M": False})
    fresh.add_memmap(first, pps)
    snap = state(fresh)
    fresh.physmem.faults.arm(predicate=lambda request: request.purpose is Use.PAGETABLE)  # the list page
    with pytest.raises(OutOfMemory, match="no page for vmemmap_list entries"):
        fresh.add_memmap(first + pps, pps)
    assert fresh.physmem.faults.attempts == 20 + 1 + 1  # 20 blocks, the 21st block, then its list page
    assert state(fresh) == snap
    fresh.check()


@pytest.mark.parametrize("kernel, list_entries", [("5.14", 32), ("6.1", 32), ("6.12", None), ("7.1", None)])
def test_radix_before_6_6_boots_with_the_vmemmap_list_populate(kernel, list_entries):
    """64 GiB of radix 64K: 64 MiB of struct pages in 32 PMD leaves of 2 MiB either way; before 6.6 each
    is a vmemmap_list entry too (radix__vmemmap_create_mapping), from 6.6 radix__vmemmap_populate keeps
    no list."""
    m = machine("radix-64K", kernel)
    c = m.counters()
    assert c["vmemmap_leaves_2M"] == 32 and c.get("vmemmap_list_entries") == list_entries
    assert (c["vmemmap_pagetable_pages_pud"], c["vmemmap_pagetable_pages_pmd"]) == (1, 1)
    m.check()


def test_vmemmap_mapping_is_bolted_on_hash_and_the_page_table_elsewhere():
    hashed, radix, x86 = machine(size=GiB), machine("radix-64K", size=GiB), Machine("x86_64", memory=[{"size": "1G"}])
    assert isinstance(hashed.vmemmap, VmemmapMapping) and hashed.vmemmap is not hashed.pagetable
    assert hashed.hooks.vmemmap_mapping(hashed) is not None
    assert radix.vmemmap is radix.pagetable and x86.hooks.vmemmap_mapping(x86) is None
    assert hashed.vmemmap.entry(hashed.pfn_to_page(0))[0] == "bolted"


def test_hash_refuses_hvo_dedup_and_memmap_on_memory_but_maps_device_dax():
    m = machine(size=4 * GiB)
    report = add_devdax_step(m, start=64 * GiB, size=GiB, align="16M")
    assert report["dedup"] is False and "hash MMU" in report["dedup_refused"]
    # 1 GiB = 16,384 pfns, 1 MiB of struct pages inside one new 16 MiB block: 256 pages mapped and used
    assert (report["vmemmap_pages_mapped"], report["vmemmap_frames_used"], report["vmemmap_pages_saved"]) == (256, 256, 0)
    m.check()
    remove_devdax_step(m, 64 * GiB)
    m.check()
    assert not m.hooks.hvo_support(m).supported
    assert not m.hooks.supports_memmap_on_memory(m, 16 << 10)[0].supported


def test_capabilities_say_per_variant_and_profile_how_the_vmemmap_is_mapped(capsys):
    from vmemcore.cli import main

    assert main(["capabilities", "powerpc", "--kernel", "6.1", "--json"]) == 0
    import json
    rows = {row["variant"]: row for row in json.loads(capsys.readouterr().out)["capabilities"]}
    assert rows["hash-64K"]["boots"]["supported"] and rows["hash-64K"]["vmemmap"] == "bolted 16M (vmemmap_list)"
    assert rows["radix-64K"]["vmemmap"] == "page table 2M (vmemmap_list)"
    assert "hash MMU" in rows["hash-4K"]["dax_dedup"]["reason"]
    assert main(["capabilities", "powerpc", "--kernel", "6.12", "--variant", "radix-64K"]) == 0
    assert "page table 2M\n" in capsys.readouterr().out + "\n"


# -- the fragmentation story: a 16 MiB block or nothing --------------------------------------------

def fragmented(kernel):
    from vmemcore.scenario.ops import OPS

    m = machine("hash-64K", kernel, size=16 * GiB)
    result = OPS["memory.fragment"].run(m, {"every": 16 * MiB})
    # 16 GiB = 1,024 stretches of 16 MiB; the top one starts with the boot memmap block (memblock is
    # top-down), the two lowest hold the 32 MiB kernel image (at the start of RAM), every other one
    # gets a pinned 64 KiB page at its start
    assert result["pinned_pages"] == 1021
    assert m.physmem.alloc(256, 0, Use.MEMMAP) is None  # no order-8 block left
    assert m.physmem.pages_owned(Use.PINNED) == 1021
    return m


def test_a_fragmented_hash_64k_hot_add_fails_with_enomem_and_leaves_the_machine_unchanged():
    m = fragmented("6.12")
    before = state(m)
    with pytest.raises(OutOfMemory, match="no 16M block for the vmemmap") as failed:
        m.hotplug.add_memory(64 * GiB, 16 * GiB, 0, True)  # memmap_on_memory asked: refused on hash, falls back
    assert failed.value.errno_name == "ENOMEM"
    assert state(m) == before
    m.check()


def test_the_2019_design_self_hosts_the_block_and_the_same_hot_add_succeeds():
    m = fragmented("2019")
    result = m.hotplug.add_memory(64 * GiB, 16 * GiB, 0, False)
    assert result.memmap_on_memory and result.self_hosted_pages == 256  # one 16 MiB block from the range
    assert m.memmap_frame(64 * GiB // (64 << 10)) == 64 * GiB // (64 << 10)
    m.check()
    small = fragmented("2019")  # 256 MiB: its block describes 16 GiB, crosses the altmap, comes from RAM
    before = state(small)
    with pytest.raises(OutOfMemory):
        small.hotplug.add_memory(64 * GiB, 256 * MiB, 0, False)
    assert state(small) == before


def test_memory_fragment_is_generic_and_a_scenario_can_expect_a_failure(tmp_path, capsys):
    """x86_64, 4 GiB: a page pinned in every 4 MiB (MAX_PAGE_ORDER 10) leaves no order-10 block; the
    step is the same on every arch. A step with expect_error must fail with that errno."""
    from pathlib import Path

    from vmemcore.cli import main
    from vmemcore.scenario.ops import OPS

    m = Machine("x86_64", memory=[{"size": "4G"}])
    free = m.physmem.free_pages()
    # 1,024 stretches of 4 MiB; the top 64 MiB hold the boot memmap (4 GiB: 64 MiB of struct pages),
    # the 8 from 16 MiB to 48 MiB the kernel image
    assert OPS["memory.fragment"].run(m, {})["pinned_pages"] == 1024 - 16 - 8
    assert m.physmem.free_pages() == free - 1000 and m.physmem.alloc(1024, 0, Use.HUGETLB) is None
    m.check()
    example = Path(__file__).parent.parent / "examples" / "powerpc-hash-64K-fragmented-hot-add.toml"
    text = example.read_text()
    assert main(["run", str(example), "--json"]) == 0
    assert '"errno": "ENOMEM"' in capsys.readouterr().out
    for change, code in ((('expect_error = "ENOMEM"', 'expect_error = "EBUSY"'), 1),  # another errno: a failure
                         (('expect_error = "ENOMEM"', 'expect_error = "NOPE"'), 2),  # not an errno: invalid
                         (('size = "16G"\nexpect_error', 'size = "256M"\nkernel_note = 1\nexpect_error'), 2),
                         (('op = "memory.fragment"\nevery = "16M"', 'op = "memory.fragment"\nevery = "1G"'), 1)):
        path = tmp_path / "s.toml"
        path.write_text(text.replace(*change))
        assert main(["run", str(path)]) == code, change  # a 1G stretch leaves 16M blocks: the add succeeds
        capsys.readouterr()


def test_memory_fragment_beyond_the_record_limit_is_refused_before_pinning_anything():
    """x86_64, 8 TiB: a page in every 4 MiB would be 2,097,152 stretches (8 TiB / 4 MiB) less the
    32,768 that the 128 GiB boot memmap fills (64 B per 4 KiB page) and the 8 of the 32 MiB kernel
    image at 16 MiB, over SimulatorLimit.MAX_RECORDS
    (1,048,576): refused, nothing pinned."""
    from vmemcore.errors import SimulatorLimit
    from vmemcore.scenario.ops import OPS

    m = Machine("x86_64", memory=[{"size": "8T"}])
    free = m.physmem.free_pages()
    with pytest.raises(SimulatorLimit, match="memory.fragment of node 0: 2,064,376 pinned stretches, more than the 1,048,576"):
        OPS["memory.fragment"].run(m, {})
    assert m.physmem.free_pages() == free
    m.check()
    # 1 TiB: 262,144 stretches of 4 MiB less the 4,096 that hold the 16 GiB boot memmap: within the limit
    small = Machine("x86_64", memory=[{"size": "1T"}])
    assert OPS["memory.fragment"].run(small, {"every": 64 * MiB})["pinned_pages"] == 16384 - 256
