"""Memory hotplug: blocks, memmap_on_memory (every condition and each design), zones, vetoes."""

import pytest

from vmemcore.errors import BadRequest, OutOfMemory, Veto
from vmemcore.machine import Machine
from vmemcore.physmem import Use
from vmemcore.units import GiB, MiB

G64 = 64 * GiB


def machine(arch="x86_64", kernel="6.12", mode="Y", size=16 * GiB, **kw):
    return Machine(arch, kernel=kernel, memory=[{"size": size}], hotplug={"memmap_on_memory": mode}, **kw)


def state(m):
    snap = m.snapshot()
    snap["counters"] = {k: v for k, v in snap["counters"].items() if not k.startswith("tlb_flush")}
    return snap


def test_nine_gib_self_hosts_36864_vmemmap_pages():
    m = machine()
    zones = m.hotplug.zone_pages()
    result = m.hotplug.add_memory(G64, 9 * GiB, memmap_on_memory=True)
    assert (result.memmap_on_memory, len(result.blocks), result.self_hosted_pages) == (True, 72, 36_864)
    assert m.counters()["nr_memmap_pages"] == 36_864  # counted like any hot-add
    for block in result.blocks:
        m.hotplug.online(block)
    present, managed = m.hotplug.zone_pages()[(0, "normal")]
    assert present - zones[(0, "normal")][0] == 2_359_296
    assert managed - zones[(0, "normal")][1] == 2_359_296 - 36_864
    assert m.physmem.pages_owned(Use.MEMMAP) - m.counters()["nr_memmap_boot_pages"] == 36_864
    m.check()


def test_each_block_hosts_its_memmap_in_its_first_pfns():
    m = machine()
    [block] = m.hotplug.add_memory(G64, 128 * MiB, memmap_on_memory=True).blocks
    first = G64 // 4096
    assert m.memmap_frame(first) == first  # the struct page of the first pfn lives in the first pfn
    assert m.memmap_frame(first + 32767) == first + 511
    assert not m.physmem.owner(first).self_hosted
    m.hotplug.online(block)
    assert m.physmem.owner(first).self_hosted and m.physmem.owner(first + 511).self_hosted
    assert m.physmem.owner(first + 512).use is Use.FREE
    m.check()


@pytest.mark.parametrize("variant, mode, reason", [
    ("16K-47", "Y", "not a multiple of a pageblock (2048 pages)"),
    ("16K-47", "force", "does not fill whole 32M PMD leaves"),
    ("64K-48", "force", "would fill the whole block"),
])
def test_arm64_large_pages_are_refused_as_the_kernel_decides(variant, mode, reason):
    m = Machine("arm64", variant=variant, memory=[{"size": 16 * GiB - 64 * 1024}], hotplug={"memmap_on_memory": mode})
    support = m.hotplug.supports_memmap_on_memory(m.hotplug.block_size)
    assert not support.supported and reason in support.reason
    result = m.hotplug.add_memory(G64, m.hotplug.block_size, memmap_on_memory=True)
    assert not result.memmap_on_memory and reason in result.note  # 6.6+: a silent fallback
    m.check()


def test_arm64_4k_is_accepted_and_force_rounds_to_pageblocks():
    m = Machine("arm64", memory=[{"size": 16 * GiB}], hotplug={"memmap_on_memory": "force"})
    assert m.hotplug.memmap_pages() == 512
    result = m.hotplug.add_memory(G64, 128 * MiB, memmap_on_memory=True)
    assert result.self_hosted_pages == 512


def test_before_66_a_refused_request_is_an_error_naming_the_reason():
    m = Machine("arm64", variant="16K-47", kernel="6.1", memory=[{"size": 16 * GiB}],
                hotplug={"memmap_on_memory": "Y"})
    before = state(m)
    with pytest.raises(Veto, match="pageblock"):
        m.hotplug.add_memory(G64, 128 * MiB, memmap_on_memory=True)
    assert state(m) == before
    with pytest.raises(BadRequest, match="force"):
        Machine("x86_64", kernel="6.1", memory=[{"size": 16 * GiB}], hotplug={"memmap_on_memory": "force"})


def test_single_block_design_needs_exactly_one_block():
    m = machine(kernel="6.1")
    with pytest.raises(Veto, match="exactly one memory block"):
        m.hotplug.add_memory(G64, 256 * MiB, memmap_on_memory=True)
    assert m.hotplug.add_memory(G64, 128 * MiB, memmap_on_memory=True).self_hosted_pages == 512


def test_memmap_on_memory_and_hvo_exclude_each_other_in_514():
    m = machine(kernel="5.14", hugetlb={"optimize_vmemmap": True})
    with pytest.raises(Veto, match="hugetlb_free_vmemmap"):
        m.hotplug.add_memory(G64, 128 * MiB, memmap_on_memory=True)


def test_s390_vetoes_before_68_and_clears_the_flag_under_the_2019_design():
    m = Machine("s390", kernel="6.1", memory=[{"size": 16 * GiB}], hotplug={"memmap_on_memory": "Y"})
    with pytest.raises(Veto, match="s390: s390 does not select ARCH_MHP_MEMMAP_ON_MEMORY_ENABLE"):
        m.hotplug.add_memory(G64, m.hotplug.block_size, memmap_on_memory=True)
    m = Machine("s390", kernel="6.12", memory=[{"size": 16 * GiB}], hotplug={"memmap_on_memory": "Y"})
    assert m.hotplug.add_memory(G64, m.hotplug.block_size, memmap_on_memory=True).self_hosted_pages == 1024  # 256M
    m = Machine("s390", kernel="2019", memory=[{"size": 16 * GiB}])
    result = m.hotplug.add_memory(G64, 2 * m.hotplug.block_size)
    assert not result.memmap_on_memory and result.note == "s390 cleared memmap_on_memory"
    assert m.hotplug.add_memory(G64 + 2 * m.hotplug.block_size, m.hotplug.block_size).self_hosted_pages == 0


def test_the_2019_design_hosts_all_sections_at_the_start_of_the_range_and_frees_backwards():
    m = Machine("x86_64", kernel="2019", memory=[{"size": 16 * GiB}])
    before, managed = state(m), m.hotplug.zone_pages()[(0, "normal")][1]
    result = m.hotplug.add_memory(G64, 9 * GiB)  # on by default
    assert result.memmap_on_memory and result.self_hosted_pages == 36_864
    first = G64 // 4096
    last_section = first + 71 * 32768
    assert m.memmap_frame(last_section) == first + 71 * 512  # the 72nd section's memmap sits in the 2nd section
    blocks = result.blocks
    for block in blocks:
        m.hotplug.online(block)
    assert m.hotplug.zone_pages()[(0, "normal")][1] - managed == 9 * GiB // 4096 - 36_864
    for block in blocks:
        m.hotplug.offline(block)
    with pytest.raises(BadRequest, match="only as a whole"):
        m.hotplug.remove_memory(G64, 128 * MiB)
    m.hotplug.remove_memory(G64, 9 * GiB)
    assert state(m) == before
    m.check()


def test_offline_fails_when_another_blocks_memmap_lives_in_it():
    m = machine(mode="N")
    [a] = m.hotplug.add_memory(G64, 128 * MiB).blocks
    m.hotplug.online(a)
    # since 5.10 a hot-added block's memmap comes from boot memory, ahead of onlined blocks on the free
    # lists: use it up first. Boot memory [0, 0x3efffe) holds 0x3efc00 / 512 + 1 = 8063 order-9
    # blocks (the order-10 runs from pfn 0 and the order-9 block left at its top), less the 16 the
    # 32 MiB kernel image at 16 MiB (pfns [0x1000, 0x3000)) takes: 8047; a's memmap took one, so
    # 8046 2 MiB HugeTLB pages take the rest, and the next block's memmap comes from the lowest
    # block of a, now the lists' head
    m.hugetlb.resize("2M", 8046)
    [b] = m.hotplug.add_memory(G64 + 128 * MiB, 128 * MiB).blocks
    assert m.memmap_frame((G64 + 128 * MiB) // 4096) == G64 // 4096
    before = state(m)
    with pytest.raises(BadRequest, match="EBUSY.*memmap"):
        m.hotplug.offline(a)
    assert state(m) == before


def test_movable_zone_keeps_kernel_allocations_out():
    m = machine(mode="N")
    [a] = m.hotplug.add_memory(G64, 128 * MiB).blocks
    m.hotplug.online(a, "movable")
    [b] = m.hotplug.add_memory(G64 + 128 * MiB, 128 * MiB).blocks
    assert m.memmap_frame((G64 + 128 * MiB) // 4096) < G64 // 4096  # not from ZONE_MOVABLE
    m.hotplug.offline(a)
    present, managed = m.hotplug.zone_pages().get((0, "movable"), (0, 0))
    assert present == 0


def test_free_hugetlb_pages_are_dissolved_by_offline():
    m = machine(mode="N", hugetlb={"optimize_vmemmap": True})
    [a] = m.hotplug.add_memory(G64, 128 * MiB).blocks
    m.hotplug.online(a, "movable")
    m.hugetlb.resize("2M", 64)  # movable allocations take ZONE_MOVABLE first: all in block a
    assert all(f.head >= G64 // 4096 for f in m.hugetlb.hstate("2M").folios.values())
    flushes = m.stats["tlb_flush_all"], m.stats["tlb_flush_kernel_range"]
    m.hotplug.offline(a)
    assert m.hugetlb.hstate("2M").nr_huge_pages == 0
    # dissolve_free_hugetlb_folio restores each folio on its own (hugetlb_vmemmap_restore_folio, no
    # batch): one TLB flush of its vmemmap range each, no full flush
    assert (m.stats["tlb_flush_all"], m.stats["tlb_flush_kernel_range"]) == (flushes[0], flushes[1] + 64)
    m.check()


def test_hugetlb_pages_on_self_hosted_memory_are_not_optimized():
    m = machine(hugetlb={"optimize_vmemmap": True})
    [a] = m.hotplug.add_memory(G64, 128 * MiB, memmap_on_memory=True).blocks
    m.hotplug.online(a, "movable")
    result = m.hugetlb.resize("2M", 10)
    assert result.not_optimized == {"ENOTSUPP": 10}


@pytest.mark.parametrize("size, mode, zone", [
    (128 * MiB, "Y", "normal"), (1 * GiB, "Y", "movable"), (1 * GiB, "N", "normal"), (384 * MiB, "force", "movable"),
])
def test_add_online_offline_remove_leaves_the_machine_as_it_was(size, mode, zone):
    m = machine(mode=mode)
    before = state(m)
    result = m.hotplug.add_memory(G64, size, memmap_on_memory=True)
    for block in reversed(result.blocks):
        m.hotplug.online(block, zone)
    m.check()
    for block in result.blocks:
        m.hotplug.offline(block)
    m.hotplug.remove_memory(G64, size)
    assert state(m) == before
    m.check()


@pytest.mark.parametrize("mode", ["Y", "N"])
def test_fault_at_every_allocation_of_an_add_leaves_the_machine_unchanged(mode):
    m = machine(mode=mode)
    m.physmem.faults.arm()
    m.hotplug.add_memory(G64, 1 * GiB, memmap_on_memory=True)
    attempts = m.physmem.faults.attempts
    assert attempts == (1 if mode == "Y" else 9)  # a PMD table (+ 8 memmap blocks from buddy without altmap)
    for nth in range(1, attempts + 1):
        m = machine(mode=mode)
        before = state(m)
        m.physmem.faults.arm(nth=nth)
        try:
            m.hotplug.add_memory(G64, 1 * GiB, memmap_on_memory=True)
        except OutOfMemory:
            assert state(m) == before
        m.check()


def test_bad_requests_say_which_rule_they_break_and_change_nothing():
    m = machine()
    m.hotplug.add_memory(G64, 128 * MiB)
    before = state(m)
    for call, pattern in [
        (lambda: m.hotplug.add_memory(G64, 128 * MiB), "EEXIST"),
        (lambda: m.hotplug.add_memory(8 * GiB, 128 * MiB), "EEXIST"),
        (lambda: m.hotplug.add_memory(G64 + 1 * MiB, 128 * MiB), "EINVAL"),
        (lambda: m.hotplug.add_memory(G64, 0), "EINVAL"),
        (lambda: m.hotplug.add_memory(1 << 46, 128 * MiB), "E2BIG"),
        (lambda: m.hotplug.remove_memory(G64 + 128 * MiB, 128 * MiB), "never added"),
        (lambda: m.hotplug.offline(G64 // (128 * MiB)), "not online"),
        (lambda: m.hotplug.online(G64 // (128 * MiB), "dma"), "zone"),
    ]:
        with pytest.raises(BadRequest, match=pattern):
            call()
    m.hotplug.online(G64 // (128 * MiB))
    with pytest.raises(BadRequest, match="still online"):
        m.hotplug.remove_memory(G64, 128 * MiB)
    assert state(m)["physmem"][0] != before["physmem"][0]


@pytest.mark.parametrize("boot, hypervisor, block", [
    (16 * GiB, False, 128 * MiB), (64 * GiB, False, 2 * GiB), (65 * GiB, True, 1 * GiB), (96 * GiB, True, 2 * GiB),
])
def test_x86_memory_block_size_is_probed_from_boot_memory(boot, hypervisor, block):
    m = Machine("x86_64", memory=[{"size": boot}], features={"hypervisor": hypervisor})
    assert m.hotplug.block_size == block


@pytest.mark.parametrize("seed", range(12))
def test_random_add_online_offline_remove_sequences_return_to_the_start(seed):
    """Random operations on up to four hot-added ranges (some refused, as the kernel would refuse
    them); when everything is offlined and removed, the machine equals the booted one."""
    import random

    rng = random.Random(seed)
    kernel = rng.choice(["6.1", "6.12", "7.1", "2019"])
    mode = rng.choice(["N", "Y"] + (["force"] if kernel != "6.1" and kernel != "2019" else []))
    m = machine(kernel=kernel, mode=mode)
    before = state(m)
    ranges = {}  # start -> size
    refused = 0
    for _ in range(30):
        op = rng.choice(["add", "add", "online", "offline", "remove"])
        try:
            if op == "add":
                start = G64 + rng.randrange(4) * GiB
                size = 128 * MiB * rng.choice([1, 2, 4]) if kernel != "6.1" else 128 * MiB
                m.hotplug.add_memory(start, size, memmap_on_memory=rng.random() < 0.7)
                ranges[start] = size
            elif op in ("online", "offline") and m.hotplug.blocks:
                block = rng.choice(sorted(m.hotplug.blocks))
                (m.hotplug.online(block, rng.choice(["normal", "movable"])) if op == "online" else m.hotplug.offline(block))
            elif op == "remove" and ranges:
                start = rng.choice(sorted(ranges))
                m.hotplug.remove_memory(start, ranges[start])
                del ranges[start]
        except (BadRequest, Veto):
            refused += 1  # nothing changed: the invariants below and the final state check it
        m.check()
    for _ in range(3):  # offline newest first: a block's memmap may live in an older block
        for block in sorted(m.hotplug.blocks, reverse=True):
            if m.hotplug.blocks[block].state == "online":
                try:
                    m.hotplug.offline(block)
                except BadRequest:
                    pass
        for start in sorted(ranges, reverse=True):
            try:
                m.hotplug.remove_memory(start, ranges.pop(start))
            except BadRequest:
                ranges[start] = ranges.get(start) or 0
        ranges = {s: z for s, z in ranges.items() if z}
    assert not m.hotplug.blocks
    assert state(m) == before
    assert refused < 30
