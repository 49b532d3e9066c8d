"""Live-entry rules, break-before-make, the contiguous bit, and HVO's remap strategies
(docs/live-entries.md)."""

import numpy as np
import pytest

from vmemcore import Machine
from vmemcore.errors import BadRequest, ScenarioError, Veto
from vmemcore.hvo import optimizable_pages
from vmemcore.arch import ANY_CHANGE
from vmemcore.live_entries import BrokenContiguousSpan, RemapStrategy
from vmemcore.pagetable import CONT, RDONLY
from vmemcore.units import GiB, MiB, parse_size

STRUCT_PAGE = 64


def _hvo(arch, variant=None, kernel="6.12", strategy=None, size="4G", features=None):
    hugetlb = {"optimize_vmemmap": True}
    if strategy:
        hugetlb["vmemmap_remap"] = strategy
    return Machine(arch, variant, kernel=kernel, memory=[{"size": size}], hugetlb=hugetlb, features=features,
                   check_live_entries=True)


def _delta(machine, before):
    after = machine.counters()
    return {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}


def _by_function(machine):
    out = {}
    for v in machine.live_entries.violations:
        out[v.function] = out.get(v.function, 0) + 1
    return out


# -- the rule each arch states ------------------------------------------------------------------

def test_live_entry_rule_per_arch():
    x86 = Machine("x86_64", memory=[{"size": 1 * GiB}])
    assert x86.live_entry_rule == ANY_CHANGE and not ANY_CHANGE.strict
    arm = Machine("arm64", memory=[{"size": 1 * GiB}])
    rule = arm.live_entry_rule
    assert (rule.output, rule.flags, rule.contiguous, rule.bbml2) == (False, RDONLY, False, True)
    assert "pgattr_change_is_safe" in rule.reason
    s390 = Machine("s390", memory=[{"size": 1 * GiB}])
    assert (s390.live_entry_rule.output, s390.live_entry_rule.flags) == (False, 0)
    riscv = Machine("riscv64", memory=[{"size": 1 * GiB}])
    assert riscv.live_entry_rule == ANY_CHANGE  # the stated default: the example plugin does not answer


# -- HVO against the rule -------------------------------------------------------------------------

def test_x86_64_hvo_of_512_2m_pages_breaks_no_rule():
    m = _hvo("x86_64", size="16G")
    assert m.hugetlb.resize("2M", 512).optimized == 512
    m.hugetlb.resize("2M", 0)
    assert m.live_entries.count == 0 and m.counters()["live_entry_violations"] == 0
    m.check()


def test_arm64_6_0_hvo_of_one_2m_page_makes_the_kernels_violations():
    """``vmemmap_remap_pte`` over a 2 MiB page's vmemmap: 512 struct pages x 64 B = 8 PTEs of 4 KiB.
    6.0 keeps the head page (PTE 0 is the reuse page, untouched) and points the 7 tail PTEs at it
    read-only: 7 output addresses change. The boot vmemmap is mapped with a 2 MiB PMD block, which
    ``vmemmap_split_pmd`` replaces by a PTE table in place: 1 more. 8 in all."""
    m = _hvo("arm64", "4K-48", kernel="6.0")
    folio = m.hugetlb.resize("2M", 1)
    assert folio.optimized == 1
    assert _by_function(m) == {"vmemmap_split_pmd": 1, "vmemmap_remap_pte": 7}
    head = next(iter(m.hugetlb.hstate("2M").folios))
    start = m.pfn_to_page(head)
    reuse = m.pagetable.translate(start) >> 12
    ptes = [v for v in m.live_entries.violations if v.function == "vmemmap_remap_pte"]
    assert [v.vaddr for v in ptes] == [start + k * 4096 for k in range(1, 8)]
    assert all(v.new == (reuse, v.new[1]) and v.new[1] & RDONLY and v.old[0] != reuse for v in ptes)
    assert all("output address" in v.why for v in ptes)
    split = next(v for v in m.live_entries.violations if v.function == "vmemmap_split_pmd")
    assert split.level == "pmd" and split.vaddr == start // (2 * MiB) * (2 * MiB)
    assert m.hugetlb.support.supported and "060a2c92d1b6" in m.hugetlb.support.reason  # the caveat


def test_arm64_6_0_hvo_with_paused_bbm_breaks_nothing():
    """Each write of live entries becomes break-before-make with the other CPUs paused: the PMD
    split is one sequence (1 entry), the 7 tail PTEs of the walk's one table another (7 entries);
    each adds one ``flush_tlb_kernel_range`` to the kernel's two (after the split, after the walk)."""
    m = _hvo("arm64", "4K-48", kernel="6.0", strategy="bbm-paused")
    before = m.counters()
    m.hugetlb.resize("2M", 1)
    d = _delta(m, before)
    assert m.live_entries.count == 0
    assert (d["bbm_sequences"], d["bbm_entries"], d["cpu_pause_windows"], d["tlb_flush_kernel_range"]) == (2, 8, 2, 4)
    assert d["hvo_vmemmap_pages_freed"] == 7  # the same saving as the kernel's remap
    m.hugetlb.resize("2M", 0)
    assert m.live_entries.count == 0
    m.check()


def test_s390_6_12_hvo_of_one_1m_page_and_a_correct_strategy():
    """1 MiB = 256 struct pages = 4 PTEs of vmemmap. 6.12 maps a new head page at PTE 0 and points
    the 3 tails at it: 4 valid entries replaced by valid ones; the EDAT1 segment leaf holding the
    boot vmemmap is split in place: 1. s390 forbids any valid-to-valid replacement."""
    m = _hvo("s390")
    m.hugetlb.resize("1M", 1)
    assert _by_function(m) == {"vmemmap_split_pmd": 1, "vmemmap_remap_pte": 4}
    assert "64e2f60f355e" in m.hugetlb.support.reason
    fixed = _hvo("s390", strategy="bbm-paused")
    before = fixed.counters()
    fixed.hugetlb.resize("1M", 1)
    assert fixed.live_entries.count == 0 and _delta(fixed, before)["bbm_entries"] == 5


def test_bbml2_allows_block_splits_and_identical_pages_only():
    """FEAT_BBM level 2: the PMD split (same memory, block to table) is allowed in place. Under 6.0
    the tails are pointed at page 0, which holds the head struct page: different contents, 7
    violations. Under 7.1 they point at the shared page of plain tail struct pages, and the new head
    page is a copy of the old: every change keeps the contents, none is a violation."""
    old = _hvo("arm64", "4K-48", kernel="6.0", strategy="bbml2")
    old.hugetlb.resize("2M", 1)
    assert _by_function(old) == {"vmemmap_remap_pte": 7}
    new = _hvo("arm64", "4K-48", kernel="7.1", strategy="bbml2")
    assert new.hugetlb.resize("2M", 4).optimized == 4
    new.hugetlb.resize("2M", 0)
    assert new.live_entries.count == 0
    new.check()
    with pytest.raises(BadRequest, match="no FEAT_BBM level 2"):
        _hvo("x86_64", strategy="bbml2")


def test_a_strategy_runs_hvo_where_the_kernel_vetoes_it():
    with pytest.raises(Veto, match="060a2c92d1b6"):
        _hvo("arm64", "4K-48", kernel="6.12")
    m = _hvo("arm64", "4K-48", kernel="6.12", strategy="bbm-paused")
    before = m.counters()
    assert m.hugetlb.resize("2M", 8).optimized == 8
    assert before["memmap_frames"] - m.counters()["memmap_frames"] == 8 * 7  # new head page: 7 of 8 net
    assert m.live_entries.count == 0


def test_the_remap_strategy_is_validated_in_scenarios(tmp_path):
    from vmemcore.scenario import load_scenario
    path = tmp_path / "s.toml"
    path.write_text('[machine]\narch = "arm64"\n[[memory]]\nsize = "1G"\n'
                    '[hugetlb]\noptimize_vmemmap = true\nvmemmap_remap = "stop-machine"\n')
    with pytest.raises(ScenarioError, match="hugetlb.vmemmap_remap: must be one of 'plain', 'bbm-paused', 'bbml2'"):
        load_scenario(path)
    assert [s.value for s in RemapStrategy] == ["plain", "bbm-paused", "bbml2"]


# -- break-before-make done wrong ----------------------------------------------------------------

def _pte(machine, vaddr):
    table, index = machine.pagetable.lookup(vaddr)
    assert table.level.name == "pte"
    return table, index


def test_a_make_before_the_break_is_flushed_is_caught():
    m = Machine("arm64", "16K-47", memory=[{"size": 1 * GiB}], check_live_entries=True)
    vaddr = m.pfn_to_page(0)
    table, i = _pte(m, vaddr)
    pfn = int(table.pfns[i])
    m.pagetable.clear_leaves(table, slice(i, i + 1))
    m.pagetable.set_leaves(table, slice(i, i + 1), pfn + 1, function="test")
    assert m.live_entries.count == 1 and "before the TLB was flushed" in m.live_entries.violations[0].why
    m.pagetable.clear_leaves(table, slice(i, i + 1))
    m.flush_tlb_kernel_range(vaddr, vaddr + m.geometry.page_size)
    m.pagetable.set_leaves(table, slice(i, i + 1), pfn, function="test")
    assert m.live_entries.count == 1  # done right: no new violation


def test_checking_off_records_nothing():
    m = Machine("arm64", "4K-48", kernel="6.0", memory=[{"size": 4 * GiB}], hugetlb={"optimize_vmemmap": True})
    m.hugetlb.resize("2M", 1)
    assert m.live_entries is None and "live_entry_violations" not in m.counters()


# -- the contiguous bit -------------------------------------------------------------------------

@pytest.mark.parametrize("variant, pte, pmd", [("4K-48", 16, 16), ("16K-47", 128, 32), ("64K-48", 32, 32)])
def test_contiguous_spans_per_granule_and_hugetlb_sizes_match_them(variant, pte, pmd):
    m = Machine("arm64", variant, memory=[{"size": "4000M"}])
    assert (m.geometry.level("pte").contiguous, m.geometry.level("pmd").contiguous) == (pte, pmd)
    page, block = m.geometry.page_size, m.geometry.pmd.entry_span
    sizes = {h.size.size: (h.size.level, h.size.contiguous) for h in m.hugetlb.hstates.values()}
    assert sizes[pte * page] == ("pte", pte) and sizes[pmd * block] == ("pmd", pmd)


def test_hvo_savings_per_size_and_granule_from_the_plugins_answers():
    expected = {  # size -> vmemmap pages freed per folio (0: not optimizable)
        "4K-48": {"64K": 0, "2M": 7, "32M": 127, "1G": 4095},
        "16K-47": {"2M": 0, "32M": 7, "1G": 255},
        "64K-48": {"2M": 0, "512M": 7, "16G": 255},
    }
    for variant, sizes in expected.items():
        m = Machine("arm64", variant, kernel="6.0", memory=[{"size": "4000M"}])
        got = {h.name: optimizable_pages(m, h.order) for h in m.hugetlb.hstates.values()}
        assert got == sizes, variant
        for name, freed in sizes.items():  # the kernel's arithmetic: struct pages x 64 B, less the one kept
            vmemmap_pages = parse_size(name) // m.geometry.page_size * STRUCT_PAGE // m.geometry.page_size
            assert freed == max(vmemmap_pages - 1, 0)


def test_what_if_contiguous_vmemmap_saves_tlb_entries():
    """16K pages, 32000 MiB: 2,048,000 struct pages x 64 B = 8,000 vmemmap pages; spans of 128 PTEs:
    62 whole spans (the last 64 pages are no whole span): 8,000 - 62 x 127 = 126 TLB entries."""
    m = Machine("arm64", "16K-47", memory=[{"size": "32000M"}], features={"vmemmap_cont_pte": True})
    c = m.counters()
    assert c["vmemmap_leaves_16K"] == 8000
    assert (c["vmemmap_cont_spans"], c["vmemmap_tlb_entries"]) == (62, 126)
    plain = Machine("arm64", "16K-47", memory=[{"size": "32000M"}])
    assert "vmemmap_cont_spans" not in plain.counters()
    assert c["memmap_frames"] == plain.counters()["memmap_frames"]  # the same memory, mapped differently
    m.check()


def test_what_if_contiguous_vmemmap_costs_hvo_a_span_bbm():
    """HVO of a 32 MiB page (8 vmemmap PTEs) inside a contiguous span first breaks and remakes the
    whole 128-entry span without the bit (``contpte_convert``): 1 BBM sequence of 128 entries per
    contiguous span the pool's vmemmap touches; those entries then cost 128 TLB entries, not 1."""
    m = _hvo("arm64", "16K-47", kernel="6.0", size="32000M", features={"vmemmap_cont_pte": True})
    cont_before = {(t.base, s) for t in m.pagetable.cont_tables
                   for s in np.flatnonzero(t.flags.reshape(-1, 128)[:, 0] & CONT).tolist()}
    before = m.counters()
    m.hugetlb.resize("32M", 64)
    touched = set()
    for head in m.hugetlb.hstate("32M").folios:
        table, i = _pte(m, m.pfn_to_page(head))
        touched |= {(table.base, (i + k) // 128) for k in range(8)}
    d = _delta(m, before)
    # 32 MiB is order 11, MAX_PAGE_ORDER with 16K pages: the pool takes the order-11 blocks that
    # memblock_free_all put on the list lowest first, from pfn 0: 64 x 8 = 512 PTEs from the start
    # of the vmemmap, 4 whole spans of 128
    assert len(touched) == 4 and d["cont_spans_unfolded"] == len(touched & cont_before) == 4
    assert (d["bbm_sequences"], d["bbm_entries"]) == (4, 4 * 128)
    assert d["vmemmap_tlb_entries"] == 4 * 127 and d["vmemmap_cont_spans"] == -4
    assert _by_function(m) == {"vmemmap_remap_pte": 64 * 7}  # the unfold itself breaks no rule
    m.check()


def test_what_if_contiguous_vmemmap_costs_hot_remove_a_span_bbm():
    """A hot-added range populated in one call gets whole spans; removing one section's memmap
    (32 of a span's 128 PTEs with 16K pages) breaks and remakes the span first."""
    m = Machine("arm64", "16K-47", memory=[{"size": "32000M"}], features={"vmemmap_cont_pte": True},
                check_live_entries=True)
    pps = m.sparse_geometry.pages_per_section
    pfn = 64 * GiB // m.geometry.page_size
    m.populate_section_memmap(pfn, 4 * pps)
    before = m.counters()
    m.depopulate_section_memmap(pfn, pps)
    d = _delta(m, before)
    assert (d["cont_spans_unfolded"], d["bbm_entries"], d["vmemmap_cont_spans"]) == (1, 128, -1)
    assert d["vmemmap_tlb_entries"] == 96 - 1  # 96 single entries replace one span
    assert m.live_entries.count == 0
    m.check()


def test_a_contiguous_span_changed_without_bbm_is_named_and_rolled_back():
    m = Machine("arm64", "16K-47", memory=[{"size": "32000M"}], features={"vmemmap_cont_pte": True},
                check_live_entries=True)
    vaddr = m.pfn_to_page(0) + 5 * m.geometry.page_size
    table, i = _pte(m, vaddr)
    assert table.flags[i] & CONT
    before = m.snapshot()
    with pytest.raises(BrokenContiguousSpan, match=rf"span of 128 pte entries at {m.pfn_to_page(0):#x}: .*not map "
                                                   "physically contiguous"):
        with m.transaction():
            m.pagetable.set_leaves(table, slice(i, i + 1), int(table.pfns[i]) + 1000, CONT, function="test")
    assert m.snapshot() == before
    assert m.live_entries.violations[-1].why == "the output address changed; an entry with the contiguous bit changed"
    with pytest.raises(BrokenContiguousSpan, match="attributes differ"):
        with m.transaction():
            m.pagetable.set_flags(table, slice(i, i + 1), set_bits=RDONLY)
    assert "contiguous bit" in m.live_entries.violations[-1].why  # RDONLY alone is allowed, not on a CONT entry
    assert np.array_equal(table.flags[i:i + 1] & RDONLY, [0])


# -- the command line ---------------------------------------------------------------------------

def test_run_check_live_entries_reports_per_step_and_function(capsys):
    import json
    from pathlib import Path

    from vmemcore.cli import main
    example = str(Path(__file__).parent.parent / "examples" / "arm64-hvo-6.0-live-entries.toml")
    assert main(["run", "--check-live-entries", "--json", example]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["live_entries"]["violations"] == 15
    assert data["live_entries"]["by_operation"] == {
        "steps[0] hugetlb.resize: vmemmap_split_pmd": 1, "steps[0] hugetlb.resize: vmemmap_remap_pte": 7,
        "steps[1] hugetlb.resize: vmemmap_restore_pte": 7}
    assert [s["changes"]["live_entry_violations"] for s in data["steps"]] == [8, 7]
    assert main(["run", example]) == 0
    text = capsys.readouterr().out
    assert "live entries" not in text and "caveat: HVO changes the output address" in text
    assert main(["run", "--check-live-entries", example]) == 0
    assert "live entries  15 violation(s) of the rule: arm64 pgattr_change_is_safe()" in capsys.readouterr().out


def test_bbml2_suits_the_designs_whose_tails_share_a_page_of_tails():
    """5.14 kept two vmemmap pages and mapped the tails onto the second (plain tail struct pages):
    identical contents, so FEAT_BBM level 2 covers it; 6.12 maps them onto the head's page: not."""
    counts = {}
    for kernel in ("5.14", "6.12", "7.1"):
        m = _hvo("arm64", "4K-48", kernel=kernel, strategy="bbml2")
        m.hugetlb.resize("2M", 4)
        m.hugetlb.resize("2M", 0)
        counts[kernel] = m.live_entries.count
    # 6.12: 4 pages x 7 tails moved onto the head's page at optimize, and back at restore
    assert counts == {"5.14": 0, "6.12": 2 * 4 * 7, "7.1": 0}
