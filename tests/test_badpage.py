"""Bad page checks of the free path (mm/page_alloc.c free_pages_prepare, bad_page; mm/debug.c
dump_page): vmemcore/badpage.py."""

import pytest

from scenario_helpers import EXAMPLES
from vmemcore import GiB, Machine
from vmemcore.physmem import Use
from vmemcore.scenario import RunError, load_scenario, run_scenario
from vmemcore.structpage import StructPages


def _pool(**kwargs):
    m = Machine("x86_64", kernel="6.12", memory=[{"size": 16 * GiB}], hugetlb={"optimize_vmemmap": True}, **kwargs)
    m.hugetlb.resize("2M", 4)
    return m


@pytest.fixture
def no_reset(monkeypatch):
    """HVO's restore without reset_struct_pages: each restored tail page is a plain copy of the
    head's vmemmap page (struct pages 0..63: the head, and the folio fields of pages 1 and 2)."""
    monkeypatch.setattr(StructPages, "reset_struct_pages", lambda self, descriptor, count: descriptor)


def test_a_restore_without_reset_struct_pages_is_caught_and_the_folio_leaked(no_reset):
    m = _pool()
    h = m.hugetlb.hstate("2M")
    free_before, heads = m.counters()["free_frames"], set(h.folios)
    m.hugetlb.resize("2M", 3)
    (victim,) = heads - set(h.folios)
    # 7 restored vmemmap pages, each with 3 bad struct pages: the copy of the head (mapping is not
    # TAIL_MAPPING, and hugetlb's page type is still in _mapcount) and the copies of tails 1 and 2
    # (their folio fields sit where TAIL_MAPPING belongs): 7 x 4 reports
    reports = m.bad_pages.reports
    assert len(reports) == 28 and m.counters()["bad_page_reports"] == 28
    first = reports[0]
    assert first.pfn == victim + 64  # struct page 64: the first one of the second vmemmap page
    assert first.lines == (
        f"BUG: Bad page state in process vmemcore  pfn:{victim + 64:05x}",
        f"page: refcount:0 mapcount:0 mapping:0000000000000000 index:0x40 pfn:{victim + 64:#x}",
        "head: order:9 mapcount:0 entire_mapcount:0 nr_pages_mapped:0 pincount:0",
        "flags: 0x40(head|node=0)",
        "page_type: f4(hugetlb)",
        "page dumped because: corrupted mapping in tail page",
    )
    assert [r.reason for r in reports[:4]] == ["corrupted mapping in tail page", "nonzero mapcount",
                                                "corrupted mapping in tail page", "corrupted mapping in tail page"]
    assert str(reports[2]).splitlines()[1:4] == [
        f"page: refcount:0 mapcount:0 mapping:0000000000000000 index:0x41 pfn:{victim + 65:#x}",
        "head: order:9 mapcount:0 entire_mapcount:0 nr_pages_mapped:0 pincount:0",  # the folio of a tail: its head's
        "flags: 0x40(head|node=0)",
    ]
    # leaked, not freed: the 512 frames stay owned, as leaked; the 7 restored vmemmap pages came
    # from the free frames and stay mapped
    assert m.physmem.owner(victim).use is Use.LEAKED and m.physmem.owner(victim + 511).use is Use.LEAKED
    assert m.counters()["bad_page_leaked_frames"] == 512
    assert m.counters()["free_frames"] == free_before - 7
    m.check()


def test_the_check_can_be_switched_off(no_reset):
    m = _pool(check_bad_pages=False)
    free_before = m.counters()["free_frames"]
    m.hugetlb.resize("2M", 3)
    assert m.bad_pages.reports == [] and "bad_page_reports" not in m.counters()
    assert m.counters()["free_frames"] == free_before - 7 + 512  # freed, corrupt or not
    m.check()


def test_normal_restore_and_free_reports_nothing():
    m = _pool()
    m.hugetlb.resize("2M", 0)
    assert m.bad_pages.reports == [] and "bad_page_reports" not in m.counters()
    m.check()


def test_bad_pages_of_a_failed_operation_are_rolled_back(no_reset):
    m = _pool()
    before = m.snapshot()
    with pytest.raises(RuntimeError), m.transaction():
        m.hugetlb.resize("2M", 3)
        assert m.bad_pages.reports
        raise RuntimeError("the operation fails after the free")
    assert m.snapshot() == before


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.toml")), ids=lambda p: p.name)
def test_every_example_frees_no_bad_page(path):
    """The normal paths never trigger the check: boot, HVO and its restore, hotplug, device-dax,
    on every arch the examples use (a step an example expects to fail leaves the machine as it was)."""
    try:
        machine, _ = run_scenario(load_scenario(str(path)))
    except RunError as error:
        machine = error.machine
    if machine is None:
        pytest.skip("the example fails at boot")
    assert machine.bad_pages.enabled
    assert machine.bad_pages.reports == [], str(machine.bad_pages.reports[0])
    machine.check()


def test_freed_folios_are_scanned_in_clusters_not_across_the_memory_between():
    """Three adjacent 2 MiB folios, then two 200 folios away (more than CLUSTER_GAP = 64): two
    scans, so a pool with a folio at each end of memory is not scanned across all of it."""
    from vmemcore.hugetlb import CLUSTER_GAP, _clusters

    heads = [0, 512, 1024, 200 * 512, 201 * 512]
    assert list(_clusters(heads, 512)) == [(0, 3), (3, 5)]
    assert list(_clusters([0, CLUSTER_GAP * 512], 512)) == [(0, 2)]  # a gap of exactly 64 folios: one scan
