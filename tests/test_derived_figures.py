"""The report's derived figures, each derived by hand from the kernel's arithmetic: a struct page
is 64 bytes, a 4 KiB page holds 64 of them, an x86_64 PMD leaf of vmemmap (2 MiB) describes
2 MiB / 64 B = 32,768 pfns = 128 MiB (one section), and a page-table page is 4 KiB."""

import pytest

from vmemcore import Machine
from vmemcore.report import derived, format_report, report
from vmemcore.scenario import parse_scenario, run_scenario
from vmemcore.units import GiB, KiB, MiB

from scenario_helpers import EXAMPLES

PAGE = 4 * KiB


def test_memmap_share_of_x86_64_16G():
    # 16 GiB = 4 Mi pages x 64 B = 256 MiB of memmap = 1/64 of RAM = 1.5625 %; all of it at boot.
    # Page tables: the PGD pre-exists (swapper_pg_dir); one PUD and one PMD table: 8 KiB.
    d = derived(Machine("x86_64", memory=[{"size": 16 * GiB}]))
    assert d["memmap"]["total"] == d["memmap"]["boot"] == {"bytes": 256 * MiB, "percent_of_ram": 1.5625}
    assert d["memmap"]["runtime"] == d["memmap"]["self_hosted"] == {"bytes": 0, "percent_of_ram": 0.0}
    assert d["pagetables"] == {"pages": 2, "bytes": 2 * PAGE, "percent_of_ram": 100 * 2 * PAGE / (16 * GiB)}
    # nothing but the memmap, its tables and the 32 MiB kernel image is allocated: that is all that is used
    assert d["memory"] == {"present": 16 * GiB, "online": 16 * GiB, "offline": 0,
                           "used": 256 * MiB + 2 * PAGE + 32 * MiB, "free": 16 * GiB - 256 * MiB - 2 * PAGE - 32 * MiB}
    assert d["nodes"] == [{"node": 0, "memmap": {"on_node": 256 * MiB, "off_node": 0, "on_device": 0},
                           "pagetables": {"on_node": 2 * PAGE, "off_node": 0}}]


def test_self_hosted_memmap_of_the_9G_example():
    # 72 blocks of 128 MiB, each hosting its own memmap: 32,768 pfns x 64 B = 2 MiB = 512 pages.
    # 72 x 2 MiB = 144 MiB of 25 GiB = 0.5625 %; boot 256 MiB = 1 %; together 400 MiB = 1.5625 %.
    machine, steps = run_scenario(parse_scenario((EXAMPLES / "x86_64-hotplug-9G-memmap-on-memory.toml").read_text()))
    memmap = derived(machine)["memmap"]
    assert memmap["self_hosted"] == memmap["runtime"] == {"bytes": 144 * MiB, "percent_of_ram": 0.5625}
    assert memmap["boot"] == {"bytes": 256 * MiB, "percent_of_ram": 1.0}
    assert memmap["total"] == {"bytes": 400 * MiB, "percent_of_ram": 1.5625}


def hvo_machines(kernel):
    """16 GiB, 512 pages of 2 MiB, HVO on and off."""
    on = Machine("x86_64", kernel=kernel, memory=[{"size": 16 * GiB}], hugetlb={"optimize_vmemmap": True})
    off = Machine("x86_64", kernel=kernel, memory=[{"size": 16 * GiB}])
    for m in (on, off):
        m.hugetlb.resize("2M", 512)
    return on, off


def pmd_leaves_of(machine):
    """The vmemmap PMD leaves the pool's struct pages lie in: one per 32,768 pfns."""
    heads = machine.hugetlb.hstate("2M").folios
    return len({head >> 15 for head in heads} | {(head + 511) >> 15 for head in heads})


@pytest.mark.parametrize("kernel, kept, tail_pages", [("6.12", 1, 0), ("7.1", 1, 1)])
def test_hvo_net_saving(kernel, kept, tail_pages):
    # A 2 MiB page has 512 struct pages = 32 KiB = 8 vmemmap pages; HVO keeps one (6.2+: a new
    # head page) and frees 7. Each PMD leaf the pool's struct pages touch is split into a PTE
    # table (vmemmap_split_pmd): one 4 KiB page each. 7.1 adds one shared tail page per node and order.
    on, off = hvo_machines(kernel)
    splits = pmd_leaves_of(on)
    # the pool's pages: the lone order-9 free block below the boot memmap (section 125), 8 below the
    # 32 MiB kernel image at 16 MiB and 503 from 48 MiB up to 1,054 MiB (sections 0-8): 10 sections
    assert splits == 10
    net = 512 * (8 - kept) * PAGE - splits * PAGE - tail_pages * PAGE
    hvo = derived(on)["hvo"]
    assert hvo == {"optimized_folios": {"2M": 512}, "vmemmap_bytes_freed": 512 * 7 * PAGE, "split_pmds": 10,
                   "pte_tables_added": 10, "pte_table_bytes_added": 10 * PAGE, "shared_tail_bytes": tail_pages * PAGE,
                   "net_saved_bytes": net}
    # the same figure as the frames two twins hold, HVO off minus HVO on
    c_on, c_off = on.counters(), off.counters()
    held = (c_off["memmap_frames"] + c_off["pagetable_frames"]) - (c_on["memmap_frames"] + c_on["pagetable_frames"])
    assert held * PAGE == net == (3_584 - 10 - tail_pages) * PAGE


def test_hvo_net_saving_with_the_v17_base_page_vmemmap():
    # 5.14: two vmemmap pages kept per 2 MiB page (6 freed), and the whole vmemmap mapped with base
    # pages while HVO is on: 16 GiB / 128 MiB = 128 PTE tables where PMD leaves would need none.
    on, off = hvo_machines("5.14")
    hvo = derived(on)["hvo"]
    assert (hvo["vmemmap_bytes_freed"], hvo["split_pmds"], hvo["pte_tables_added"]) == (512 * 6 * PAGE, 0, 128)
    assert hvo["net_saved_bytes"] == (512 * 6 - 128) * PAGE
    c_on, c_off = on.counters(), off.counters()
    assert ((c_off["memmap_frames"] + c_off["pagetable_frames"]) - (c_on["memmap_frames"] + c_on["pagetable_frames"])) \
        * PAGE == hvo["net_saved_bytes"]


def test_hvo_costs_once_the_pool_is_gone():
    # restoring the vmemmap gives back every page, but a split PMD is never merged back
    on, _ = hvo_machines("6.12")
    on.hugetlb.resize("2M", 0)
    hvo = derived(on)["hvo"]
    assert (hvo["optimized_folios"], hvo["vmemmap_bytes_freed"]) == ({}, 0)
    assert hvo["net_saved_bytes"] == -10 * PAGE  # the 10 split PMDs of test_hvo_net_saving


HOT_ADD = """\
[machine]
arch = "x86_64"
[[memory]]
size = "16G"
[hotplug]
memmap_on_memory = "{mode}"
[[steps]]
op = "hotplug.add"
start = "64G"
size = "1G"
node = {node}
memmap_on_memory = {hosted}
"""


def test_offline_memory_is_not_used():
    # 1 GiB hot-added and left offline: present 17 GiB, online 16 GiB; used grows only by its
    # memmap (1 GiB / 4 KiB x 64 B = 16 MiB, from online memory) and one PMD table (64 GiB needs
    # a second 1 GiB stretch of vmemmap).
    boot = derived(Machine("x86_64", memory=[{"size": 16 * GiB}]))
    machine, _ = run_scenario(parse_scenario(HOT_ADD.format(mode="N", node=0, hosted="false")))
    data = report(machine)
    mem = data["derived"]["memory"]
    assert (mem["present"], mem["online"], mem["offline"]) == (17 * GiB, 16 * GiB, 1 * GiB)
    assert mem["used"] == boot["memory"]["used"] + 16 * MiB + PAGE
    assert mem["used"] + mem["free"] + mem["offline"] == mem["present"]
    assert data["nodes"] == [{"node": 0, "present_pages": (17 * GiB) // PAGE, "free_pages": mem["free"] // PAGE,
                              "offline_pages": (1 * GiB) // PAGE}]
    assert "262,144 offline" in format_report(data)


@pytest.mark.parametrize("hosted, memmap_on, memmap_off", [("false", 0, 16 * MiB), ("true", 16 * MiB, 0)])
def test_memmap_of_a_new_node_is_off_node_unless_self_hosted(hosted, memmap_on, memmap_off):
    # Memory added to a new node 1 is offline, so the buddy allocator serves its memmap (16 MiB for
    # 1 GiB) from node 0; with memmap_on_memory it sits at the start of the range itself. Its PMD
    # table (4 KiB) comes from node 0 either way.
    machine, _ = run_scenario(parse_scenario(HOT_ADD.format(mode="Y", node=1, hosted=hosted)))
    nodes = {n["node"]: n for n in derived(machine)["nodes"]}
    assert nodes[1] == {"node": 1, "memmap": {"on_node": memmap_on, "off_node": memmap_off, "on_device": 0},
                        "pagetables": {"on_node": 0, "off_node": PAGE}}
    assert nodes[0]["memmap"] == {"on_node": 256 * MiB, "off_node": 0, "on_device": 0}


def test_two_nodes_keep_their_memmap_at_home():
    # sparse_init allocates each node's memmap on that node: 512 GiB each -> 8 GiB of memmap each
    machine, _ = run_scenario(parse_scenario((EXAMPLES / "x86_64-2nodes-1T.toml").read_text()))
    nodes = derived(machine)["nodes"]
    assert [(n["node"], n["memmap"]["on_node"], n["memmap"]["off_node"]) for n in nodes] == [(0, 8 * GiB, 0), (1, 8 * GiB, 0)]
    assert all(n["pagetables"]["off_node"] == 0 for n in nodes)


OFFLINE_DISSOLVES = """\
[machine]
arch = "x86_64"
[[memory]]
size = "16G"
[[steps]]
op = "hotplug.add"
start = "64G"
size = "1G"
[[steps]]
op = "hotplug.online"
start = "64G"
size = "1G"
zone = "movable"
[[steps]]
op = "hugetlb.resize"
size = "2M"
count = 8000
[[steps]]
op = "hotplug.offline"
start = "64G"
size = "1G"
"""


def test_offline_reports_the_hugetlb_pages_it_dissolved():
    # 2 MiB pages are movable: ZONE_MOVABLE first, so the 1 GiB block holds 1 GiB / 2 MiB = 512 of
    # the 8,000. Offlining it dissolves them (dissolve_free_hugetlb_folios): 8,000 -> 7,488.
    machine, steps = run_scenario(parse_scenario(OFFLINE_DISSOLVES))
    offline = steps[3]
    assert offline.result == {"blocks": list(range(512, 520)), "dissolved_hugepages_2M": 512}
    assert offline.changes == {"nr_hugepages_2M": -512, "hugetlb_frames": -512 * 512, "offline_frames": 512 * 512}
    assert machine.counters()["nr_hugepages_2M"] == 7_488
    text = format_report(report(machine, steps))
    assert "result: blocks=512-519 dissolved_hugepages_2M=512" in text
    assert ["nr_hugepages_2M", "-512"] in [line.split() for line in text.splitlines()]


def test_the_text_report_shows_the_derived_figures():
    machine, steps = run_scenario(parse_scenario((EXAMPLES / "x86_64-hvo-2M.toml").read_text()))
    text = format_report(report(machine, steps))
    assert "memmap    256M = 1.5625% of RAM: boot 240M (1.4648%), runtime 16M (0.0977%), self-hosted 0 (0%)" in text
    # 10 split PMDs, as test_hvo_net_saving derives
    assert "HVO       net saving -40K: 0 of vmemmap freed (no folios optimized), less 40K of PTE tables (10; 10 split PMDs)" in text
    assert "node 0    for its memory: memmap 256M on node, 0 off node; page tables 48K on node, 0 off node" in text
    assert "tables    12 pages (48K) of vmemmap page tables = 0.0003% of RAM" in text  # PUD, PMD and 10 split PTE tables


def test_placement_by_table_equals_placement_entry_by_entry(monkeypatch):
    """Tables of large leaves are summed whole when one node holds them and one is described; the
    same machine counted leaf by leaf gives the same figures."""
    from vmemcore import report as module

    machine, _ = run_scenario(parse_scenario(HOT_ADD.format(mode="Y", node=1, hosted="false")
                                             + '[[steps]]\nop = "devdax.add"\nstart = "68G"\nsize = "1G"\nalign = "2M"\n'))
    machine.hugetlb.set_optimize_vmemmap(True)
    machine.hugetlb.resize("2M", 64)
    by_table = module._placement(machine)
    monkeypatch.setattr(module, "_one_node", lambda extents, start, end: None)
    assert module._placement(machine) == by_table
    assert [n["node"] for n in by_table] == [0, 1]


def test_base_page_memmap_placement_summed_a_pte_table_at_a_time_as_leaf_by_leaf(monkeypatch):
    # arm64 64K-48, 3 GiB on node 0 and 4 GiB on node 1 at 8 GiB or at 512 GiB: no sparse buffer
    # (section_map_size() is a whole 512 MiB section), so memmap pages come from memblock top down,
    # each node's from its own memory. Each section's memmap is 512 KiB = 8 PTEs of 64 KiB: node 0
    # has 6 sections (48 pages = 3 MiB), node 1 has 8 (64 pages = 4 MiB), all on their own node.
    # A PTE table maps 8,192 x 64 KiB of vmemmap, the struct pages of 512 GiB: at 8 GiB both nodes
    # share one (counted leaf by leaf), at 512 GiB each node has its own (one sum each). No frame is
    # mapped twice; the leaf-by-leaf path everywhere (taken when a frame repeats) gives the same figures
    from vmemcore import report as report_module

    machines = [Machine("arm64", "64K-48", memory=[{"size": 3 * GiB}, {"node": 1, "start": start, "size": 4 * GiB}])
                for start in (8 * GiB, 512 * GiB)]
    figures = [derived(machine)["nodes"] for machine in machines]
    for nodes in figures:
        assert [(n["node"], n["memmap"]) for n in nodes] == [
            (0, {"on_node": 3 * MiB, "off_node": 0, "on_device": 0}), (1, {"on_node": 4 * MiB, "off_node": 0, "on_device": 0})]
    monkeypatch.setattr(report_module, "_repeats", lambda frames: True)
    assert [derived(machine)["nodes"] for machine in machines] == figures


def test_first_mappings_keeps_the_first_pte_of_each_frame():
    import numpy as np
    from vmemcore.report import _first_mappings

    leaves = np.arange(10, 14)
    assert _first_mappings(np.array([5, 6, 7, 8]), leaves).tolist() == [10, 11, 12, 13]  # one run: all
    assert _first_mappings(np.array([5, 6, 7, 6]), leaves).tolist() == [10, 11, 12]  # up, then down: 6 again
    assert _first_mappings(np.array([9, 4, 4, 4]), leaves).tolist() == [10, 11]


def test_placement_deduplicated_a_table_at_a_time_as_over_all_ptes(monkeypatch):
    """Device-dax dedup and HVO map frames several times inside a PTE table: each table is reduced
    to the first PTE of each frame and summed whole; counting every PTE and dropping repeats over
    all of them (the path taken when tables share frames) gives the same figures."""
    from vmemcore import report as module

    machine, _ = run_scenario(parse_scenario(HOT_ADD.format(mode="Y", node=1, hosted="false")
                                             + '[[steps]]\nop = "devdax.add"\nstart = "68G"\nsize = "1G"\nalign = "2M"\n'))
    machine.hugetlb.set_optimize_vmemmap(True)
    machine.hugetlb.resize("2M", 64)
    by_table = module._placement(machine)
    monkeypatch.setattr(module, "_first_mappings", lambda frames, leaves: leaves)
    monkeypatch.setattr(module, "_repeats", lambda frames: False)

    def memmap(nodes):
        return sum(n["memmap"]["on_node"] + n["memmap"]["off_node"] for n in nodes)
    # every PTE counted: 6 more pages per 2 MiB compound page (8 PTEs, 2 frames), 7 per HVO'd folio
    assert memmap(module._placement(machine)) - memmap(by_table) == (512 * 6 + 64 * 7) * PAGE
    monkeypatch.setattr(module, "_repeats", lambda frames: True)
    assert module._placement(machine) == by_table
