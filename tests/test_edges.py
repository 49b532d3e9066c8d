"""The edges of issue 12: bad input through the Python API is refused by the scenario's own rules,
files that are no scenario are refused, a node without memory goes, the journal undoes only what
was done, check() sees orphan HugeTLB frames, and an absurd pool size stops where memory does."""

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmemcore import BadRequest, Machine, SimulatorLimit, VmemcoreError
from vmemcore.cli import main
from vmemcore.physmem import Use
from vmemcore.scenario import parse_scenario
from vmemcore.scenario.validate import MAX_SCENARIO_BYTES
from vmemcore.zone_device import add_devdax_step
from vmemcore.units import GiB, MiB

from scenario_helpers import EXAMPLES, HEAD, cli, scenario_error


def small(**keywords):
    return Machine("x86_64", memory=[{"size": 1 * GiB}], **keywords)


# ---------------------------------------------------------------------------- the API's arguments

@pytest.mark.parametrize("call, message", [
    (lambda m: m.add_memmap(-512, 512), "pfn: pfn -512 is negative"),
    (lambda m: m.add_memmap("x", 512), "pfn: must be a page frame number (integer), got string 'x'"),
    (lambda m: m.add_memmap(1 << 18, 512, node=-1), "node: node -1 is negative"),
    (lambda m: m.remove_memmap(1 << 18, -512), "nr_pages: count -512 is negative"),
    (lambda m: m.populate_section_memmap(1 << 18, 1.5), "nr_pages: must be a count (integer), got float 1.5"),
    (lambda m: m.depopulate_section_memmap(None, 512), "pfn: must be a page frame number (integer), got NoneType None"),
    (lambda m: m.hotplug.add_memory(-128 * MiB, 128 * MiB), "start: size -134217728 is negative"),
    (lambda m: m.hotplug.add_memory(4 * GiB, 128 * MiB, node=-1), "node: node -1 is negative"),
    (lambda m: m.hotplug.add_memory(4 * GiB, 128 * MiB, memmap_on_memory="no"),
     "memmap_on_memory: must be true or false, got string 'no'"),
    (lambda m: m.hotplug.remove_memory(4 * GiB, 1 << 70), "memory block 32 was never added"),
    (lambda m: m.hotplug.online("x"), "block: must be a memory block id (integer), got string 'x'"),
    (lambda m: m.hotplug.online(32, zone="fast"), "zone: must be 'normal' or 'movable', got string 'fast'"),
    (lambda m: m.hotplug.offline(-3), "block: memory block -3 is negative"),
    (lambda m: m.hugetlb.resize("2M", 1.5), "count: must be a count (integer), got float 1.5"),
    (lambda m: m.hugetlb.resize("3M", 1), "size: 3M cannot be a HugeTLB page size"),
    (lambda m: m.hugetlb.set_optimize_vmemmap("yes"), "enabled: must be true or false, got string 'yes'"),
    (lambda m: add_devdax_step(m, 8 * GiB, 1 * GiB, node=-1), "node: node -1 is negative"),
    (lambda m: add_devdax_step(m, 8 * GiB, 1 * GiB, align=[2]), "align: size [2] is neither an integer nor a string"),
    (lambda m: m.structpages.kpageflags_range(-1, 4), "pfn: pfn -1 is negative"),
])
def test_bad_api_arguments_are_bad_requests_that_change_nothing(call, message):
    m = small()
    before = m.snapshot()
    with pytest.raises(BadRequest, match="^" + re.escape(message)):
        call(m)
    assert m.snapshot() == before


@pytest.mark.parametrize("keywords, message", [
    ({"features": {"pse": "no"}}, "machine.features.pse: must be true or false, got string 'no'"),
    ({"memory": 5}, "memory: must be a non-empty array of tables"),
    ({"memory": [{"size": "1G", "node": -1}]}, "memory[0].node: node -1 is negative"),
    ({"arch": 5}, "machine.arch: must be a string, got integer 5"),
])
def test_bad_machine_keywords_are_bad_requests(keywords, message):
    with pytest.raises(BadRequest) as info:
        Machine(**({"memory": [{"size": "1G"}]} | keywords))
    assert str(info.value).startswith(message)


@pytest.mark.parametrize("step, call", [
    ('op = "memmap.add"\nstart = "64G"\nsize = "2M"\nnode = -1', lambda m: m.add_memmap(64 * GiB >> 12, 512, node=-1)),
    ('op = "hugetlb.resize"\nsize = "2M"\ncount = -4', lambda m: m.hugetlb.resize("2M", -4)),
    ('op = "hugetlb.resize"\nsize = "3M"\ncount = 1', lambda m: m.hugetlb.resize("3M", 1)),
    ('op = "hotplug.online"\nblock = 512\nzone = "fast"', lambda m: m.hotplug.online(512, "fast")),
    ('op = "hugetlb.optimize_vmemmap"\nenabled = "on"', lambda m: m.hugetlb.set_optimize_vmemmap("on")),
])
def test_the_api_and_the_scenario_give_one_message(step, call):
    """One set of rules: the scenario's error is the API's, with the step's key path and line."""
    scenario = scenario_error(HEAD + "[[steps]]\n" + step + "\n")
    with pytest.raises(BadRequest) as api:
        call(Machine("x86_64", memory=[{"size": "16G"}]))
    key, _, message = str(api.value).partition(": ")
    assert str(scenario).endswith(f"steps[0].{key}: {message}")


# ---------------------------------------------------------------------------------- files

def test_a_device_is_not_a_scenario(capsys):
    assert main(["run", "/dev/zero"]) == 2  # was a MemoryError: read() of an endless file
    assert capsys.readouterr().err == "vmemcore: error: /dev/zero: file: not a regular file or a pipe\n"


def test_an_oversized_file_is_not_a_scenario(tmp_path, capsys):
    path = tmp_path / "big.toml"
    path.write_text((EXAMPLES / "x86_64-16G.toml").read_text() + "#" * MAX_SCENARIO_BYTES)
    assert main(["run", str(path)]) == 2
    assert capsys.readouterr().err == f"vmemcore: error: {path}: file: longer than 4 MiB: not a scenario\n"


# ---------------------------------------------------------------------------------- nodes

def test_removing_the_memory_of_a_new_node_removes_the_node():
    """try_offline_node: a node left with no present pages goes offline (mm/memory_hotplug.c)."""
    m = Machine("x86_64", memory=[{"size": 16 * GiB}])
    m.hotplug.add_memory(64 * GiB, 256 * MiB, node=1)
    assert m.physmem.node_ids == [0, 1]
    m.check()
    m.hotplug.remove_memory(64 * GiB, 256 * MiB)
    assert m.physmem.node_ids == [0]  # was [0, 1]
    m.check()
    m.hotplug.add_memory(64 * GiB, 256 * MiB, node=1)  # and it can come back
    assert m.physmem.node_ids == [0, 1]


def test_a_failed_remove_keeps_the_node():
    m = Machine("x86_64", memory=[{"size": 16 * GiB}])
    m.hotplug.add_memory(64 * GiB, 128 * MiB, node=1)
    before = m.snapshot()
    with pytest.raises(ZeroDivisionError):
        with m.transaction():
            m.physmem.hot_remove(64 * GiB >> 12, (64 * GiB + 128 * MiB) >> 12)
            assert m.physmem.node_ids == [0]
            1 / 0
    assert m.snapshot() == before and m.physmem.node_ids == [0, 1]


def test_check_compares_nodes_with_memory_present():
    m = small()
    m.physmem._free_map(3)  # a node without memory
    with pytest.raises(AssertionError, match=r"nodes \[0, 3\] but memory present on nodes \[0\]"):
        m.check()


# ---------------------------------------------------------------------------------- check()

def test_check_finds_hugetlb_frames_outside_the_pools():
    m = small()
    m.hugetlb.resize("2M", 4)
    m.check()
    m.physmem.alloc(2048, 0, Use.HUGETLB)  # 2,048 frames owned by HugeTLB, in no pool
    with pytest.raises(AssertionError, match="hugetlb frames mapped"):
        m.check()


def test_check_finds_a_folio_whose_frames_are_not_hugetlb():
    m = small()
    m.hugetlb.resize("2M", 4)
    head = next(iter(m.hugetlb.hstate("2M").folios))
    m.physmem.release(head, 512)
    with pytest.raises(AssertionError, match="hugetlb frames mapped"):
        m.check()


# ---------------------------------------------------------------------------------- journal

POOL_CHANGES = ("add", "add_one", "remove", "set_flags")


class FailingPool:
    """Makes the n-th change of a HugeTLB pool raise MemoryError before it changes anything."""

    def __init__(self, pool, fail_at):
        self.pool, self.changes, self.fail_at = pool, 0, fail_at
        for name in POOL_CHANGES:
            setattr(pool, name, self._failing(getattr(pool, name)))

    def _failing(self, change):
        def call(*args, **keywords):
            self.changes += 1
            if self.changes == self.fail_at:
                raise MemoryError
            return change(*args, **keywords)
        return call

    def remove(self):
        for name in POOL_CHANGES:
            delattr(self.pool, name)


@pytest.mark.parametrize("kernel, fail_at", [("5.14", 1), ("5.14", 2), ("5.14", 100), ("5.14", 256),
                                             ("6.12", 1), ("6.12", 2)])
def test_a_memory_error_while_growing_a_pool_is_undone_completely(kernel, fail_at):
    """A MemoryError at any change of the pool (folios joining it, HVO setting their flag) undoes
    the whole grow, the folios allocated and optimized before it included. (Before 6.7 each folio
    joins and is optimized in turn: two changes a folio.)"""
    m = small(kernel=kernel, hugetlb={"optimize_vmemmap": True})
    m.hugetlb.resize("2M", 8)
    h = m.hugetlb.hstate("2M")
    before = m.snapshot()
    failing = FailingPool(h.folios, fail_at)
    with pytest.raises(MemoryError):
        m.hugetlb.resize("2M", 300)
    assert failing.changes == fail_at
    failing.remove()
    assert m.snapshot() == before
    m.check()


def grow_pool(m):
    m.hugetlb.resize("2M", 16)


def hot_add_and_online(m):
    m.hotplug.add_memory(4 * GiB, 256 * MiB, memmap_on_memory=True)
    m.hotplug.online(32)


@pytest.mark.parametrize("operation", [grow_pool, hot_add_and_online])
def test_a_record_that_cannot_be_kept_is_undone_at_once(operation):
    """Records come after their change: if keeping the n-th one fails (a MemoryError growing the
    list), that change is undone at once and the rest by the rollback, for every n."""
    def fresh():
        return small(hugetlb={"optimize_vmemmap": True}, hotplug={"memmap_on_memory": "Y"})

    probe = fresh()
    with probe.transaction():
        operation(probe)
        records = len(probe.journal._records)
    assert records > 10
    for nth in range(1, records + 1):
        m = fresh()
        before = m.snapshot()
        calls = [0]

        class Records(list):
            def append(self, undo):
                calls[0] += 1
                if calls[0] == nth:
                    raise MemoryError
                super().append(undo)

        with pytest.raises(MemoryError):
            with m.transaction():
                m.journal._records = Records()
                operation(m)
        assert m.snapshot() == before, nth
        m.check()


# ---------------------------------------------------------------------------------- hugetlb.resize

def test_an_absurd_pool_size_stops_when_memory_runs_out():
    """set_max_huge_pages allocates until an allocation fails: 10**12 pages of 2 MiB on 1 GiB give
    what the free memory holds, after as many attempts as it holds plus the one that fails."""
    m, twin = small(), small()
    free = m.physmem.free_pages()
    attempts = []
    m.physmem.faults.arm(predicate=lambda request: attempts.append(request) and False)
    result = m.hugetlb.resize("2M", 10**12)
    assert result.nr_hugepages == result.allocated == twin.hugetlb.resize("2M", free // 512).nr_hugepages > 400
    assert len(attempts) <= free // 512 + 1  # never 10**12 predicate calls
    m.physmem.faults.disarm()
    assert m.physmem.alloc(512, 0, Use.HUGETLB, exact_nid=True) is None  # memory did run out
    m.check()


def test_an_absurd_pool_size_in_a_scenario_runs(capsys, tmp_path):
    code, out, _ = cli(tmp_path, capsys, '[machine]\narch = "x86_64"\n[[memory]]\nsize = "1G"\n'
                       '[[steps]]\nop = "hugetlb.resize"\nsize = "2M"\ncount = 9223372036854775807\n', "run")
    assert code == 0 and "requested=9223372036854775807" in out


# ---------------------------------------------------------------------------------- the CLI

def test_the_simulators_own_memory_error_exits_1(monkeypatch, capsys):
    def exhausted(*args, **keywords):
        raise MemoryError

    monkeypatch.setattr("vmemcore.scenario.run_scenario", exhausted)
    assert main(["run", str(EXAMPLES / "x86_64-16G.toml")]) == 1
    assert capsys.readouterr().err == "vmemcore: error: the simulator itself ran out of memory; the operation was rolled back\n"


def test_an_unexpected_exception_is_still_a_bug(monkeypatch):
    """No catch-all: anything the CLI does not convert on purpose reaches the caller."""
    monkeypatch.setattr("vmemcore.scenario.run_scenario", lambda *args, **keywords: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        main(["run", str(EXAMPLES / "x86_64-16G.toml")])


# ---------------------------------------------------------------------------------- the simulator's own memory

@pytest.mark.parametrize("hvo, limit, other", [(False, "MAX_FOLIOS", "MAX_RECORDS"), (True, "MAX_RECORDS", "MAX_FOLIOS")])
def test_a_pool_larger_than_the_simulator_keeps_is_refused(monkeypatch, hvo, limit, other):
    # 1 GiB less the 32 MiB kernel image holds about 490 pages of 2 MiB: with the limit at 100, 10**12
    # (capped at what memory holds) is refused before anything changes, while 100 fit. A pool's
    # folios are arrays (MAX_FOLIOS); HVO keeps much more per folio (MAX_RECORDS), and the other
    # limit does not apply
    monkeypatch.setattr(SimulatorLimit, limit, 100)
    monkeypatch.setattr(SimulatorLimit, other, 10)
    m = small(hugetlb={"optimize_vmemmap": hvo})
    before = m.snapshot()
    with pytest.raises(SimulatorLimit, match="nr_hugepages 1,000,000,000,000 of 2M: up to 48[0-9] new HugeTLB pages, "
                                             "more than the 100 ") as info:
        m.hugetlb.resize("2M", 10**12)
    assert info.value.errno_name == "ENOMEM" and m.snapshot() == before
    assert m.hugetlb.resize("2M", 99).nr_hugepages == 99


def test_a_hot_add_of_more_blocks_than_the_simulator_keeps_is_refused(tmp_path, capsys):
    # x86_64 4-level maps 64 TiB; 60 TiB in 128 MiB blocks is 491,520 blocks, fine; on 5-level a
    # 2 PiB hot-add would be 16,777,216 blocks of 128 MiB: refused, a simulation failure (exit 1)
    code, out, err = cli(tmp_path, capsys, '[machine]\narch = "x86_64"\nvariant = "5-level"\n[[memory]]\nsize = "16G"\n'
                         '[[steps]]\nop = "hotplug.add"\nstart = "1P"\nsize = "2P"\n', "run")
    assert (code, out) == (1, "")
    assert "steps[0] (hotplug.add): SimulatorLimit: hot-add of 2P: 16,777,216 memory blocks, more than the 1,048,576" in err


def test_queries_past_the_vmemmap_find_nothing():
    """Addresses outside what the page table maps are unmapped, not an IndexError."""
    m = small()
    assert m.memmap_frame(1 << 60) is None and m.structpages.read(1 << 60) is None
    assert m.pagetable.translate((1 << 64) + 5) is None
    assert m.memmap_frame(0) is not None
    with pytest.raises(BadRequest, match="no HugeTLB folio has its head at pfn 5"):  # was KeyError
        m.hugetlb.folio(5)


def test_many_steps_validate_in_linear_time():
    """The locator scanned the whole text for each step's line: 4,000 steps took 13 s, 75,000
    (a 4 MiB file) would have taken over an hour."""
    steps = "".join(f'[[steps]]\nop = "hugetlb.resize"\nsize = "2M"\ncount = {i}\n' for i in range(20_000))
    scenario = parse_scenario(HEAD + steps)
    assert [s.line for s in scenario.steps[-2:]] == [5 + 4 * 19_998, 5 + 4 * 19_999]


def test_too_many_memory_ranges_are_refused():
    text = '[machine]\narch = "x86_64"\n' + '[[memory]]\nsize = "128M"\n' * 4097
    assert str(scenario_error(text)) == (
        "s.toml:3: memory: 4,097 ranges: at most 4,096 (a firmware memory map lists far fewer; merge adjacent "
        "ranges of one node)")


def test_kpageflags_are_read_a_chunk_at_a_time(monkeypatch):
    """--count 100000000 was killed at 4 GiB: every pfn was read before the first line printed."""
    from itertools import islice

    from vmemcore.report import KPAGEFLAGS_CHUNK, iter_kpageflags
    from vmemcore.structpage import StructPages

    m = small()
    asked, read = [], StructPages.kpageflags_range
    monkeypatch.setattr(StructPages, "kpageflags_range", lambda self, start, count: asked.append((start, count)) or read(self, start, count))
    assert [pfn for pfn, _ in islice(iter_kpageflags(m, 5, 10**8), 3)] == [5, 6, 7]
    assert asked == [(5, KPAGEFLAGS_CHUNK)]
    assert m.structpages.max_dump_pfn() == (1 * GiB) >> 12  # 1 GiB: 8 whole sections of 128 MiB
    assert len(read(m.structpages, 262_000, 10**8)) == 262_144 - 262_000


def test_quoted_table_names_have_their_line():
    error = scenario_error('["machine"]\n"arch" = "x86_64"\n[["memory"]]\n"size" = "16G"\n'
                           '[["steps"]]\n"op" = "hugetlb.resize"\n"size" = "2M"\n"count" = -1\n')
    assert str(error) == "s.toml:8: steps[0].count: count -1 is negative"


# ---------------------------------------------------------------------------------- the API, fuzzed

ARGS = st.sampled_from([0, 1, -1, 512, 1 << 18, 32, 33, 2**63, "2M", "1G", "4G", "x", None, 1.5, True, "movable", 4 * GiB,
                        128 * MiB, 256 * MiB])
CALLS = {
    "add_memmap": lambda m, a: m.add_memmap(a[0], a[1], node=a[2]),
    "remove_memmap": lambda m, a: m.remove_memmap(a[0], a[1]),
    "populate": lambda m, a: m.populate_section_memmap(a[0], a[1], node=a[2]),
    "depopulate": lambda m, a: m.depopulate_section_memmap(a[0], a[1]),
    "add_memory": lambda m, a: m.hotplug.add_memory(a[0], a[1], node=a[2], memmap_on_memory=a[3]),
    "remove_memory": lambda m, a: m.hotplug.remove_memory(a[0], a[1]),
    "online": lambda m, a: m.hotplug.online(a[0], a[1]),
    "offline": lambda m, a: m.hotplug.offline(a[0]),
    "resize": lambda m, a: m.hugetlb.resize(a[0], a[1]),
    "switch": lambda m, a: m.hugetlb.set_optimize_vmemmap(a[0]),
}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(calls=st.lists(st.tuples(st.sampled_from(sorted(CALLS)), st.lists(ARGS, min_size=4, max_size=4)), max_size=6))
def test_any_api_call_succeeds_or_is_a_typed_error_that_changes_nothing(calls):
    m = small(hotplug={"memmap_on_memory": "Y"})
    for name, args in calls:
        before = m.snapshot()
        try:
            CALLS[name](m, args)
        except VmemcoreError:
            assert m.snapshot() == before, (name, args)
        m.check()


def test_a_step_naming_petabytes_of_blocks_lists_none_of_them(tmp_path, capsys):
    """hotplug.offline of [0, 4P) on 5-level paging named 33,554,432 blocks: the list alone took
    over a gigabyte before the first block turned out not to be hot-added."""
    import tracemalloc

    tracemalloc.start()
    code, _, err = cli(tmp_path, capsys, '[machine]\narch = "x86_64"\nvariant = "5-level"\n[[memory]]\nsize = "16G"\n'
                       '[[steps]]\nop = "hotplug.offline"\nstart = "0"\nsize = "4P"\n', "run")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert code == 1 and "there is no memory block 0" in err
    assert peak < 64 << 20


def test_page_tables_beyond_what_the_simulator_keeps_are_refused(monkeypatch):
    # 16 GiB has a PUD and a PMD table; 64 GiB is in the next 1 GiB of vmemmap: a third table
    monkeypatch.setattr(SimulatorLimit, "MAX_TABLES", 2)
    m = Machine("x86_64", memory=[{"size": 16 * GiB}])
    before = m.snapshot()
    with pytest.raises(SimulatorLimit, match="a pmd table beyond the 2 page tables the simulator keeps"):
        m.hotplug.add_memory(64 * GiB, 128 * MiB)
    assert m.snapshot() == before
    monkeypatch.setattr(SimulatorLimit, "MAX_TABLES", 3)
    m.hotplug.add_memory(64 * GiB, 128 * MiB)
    assert sum(m.pagetable.tables.values()) == 3


def test_device_memory_of_petabytes_is_refused_before_it_starts(tmp_path, capsys):
    # 2 PiB of device-dax is 16,777,216 sections of 128 MiB: each section added leaves journal
    # records, and the run used 7.8 GB of the simulator's memory before it crashed
    code, out, err = cli(tmp_path, capsys, '[machine]\narch = "x86_64"\nvariant = "5-level"\n[[memory]]\nsize = "16G"\n'
                         '[[steps]]\nop = "devdax.add"\nstart = "1P"\nsize = "2P"\nalign = "1G"\naltmap = true\n', "run")
    assert (code, out) == (1, "")
    assert "SimulatorLimit: pfn range [0x4000000000, +0x8000000000) spans 16,777,216 sections, more than the 262,144" in err
