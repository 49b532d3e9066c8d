"""Memory hotplug in scenarios, the report and ``vmemcore blocks``.

Expected numbers: x86_64 with 16 GiB at boot has 128 MiB memory blocks (32,768 pages of 4 KiB);
a block's memmap is 32,768 x 64 bytes = 2 MiB = 512 pages, so 9 GiB (72 blocks) self-hosts
72 x 512 = 36,864 pages (the figure of the 2019 RFC too: docs/kernel-map.md#memmap_on_memory-designs)
and leaves 2,359,296 - 36,864 = 2,322,432 managed. At boot 4,194,304 pages are present, of which
the boot memmap (65,536), its two page tables and the 32 MiB kernel image (8,192) are not managed:
4,120,574.
"""

import json

import attrs
import pytest

from vmemcore.cli import main
from vmemcore.report import format_blocks, hotplug_report
from vmemcore.scenario import HotplugSpec, RunError, load_scenario, parse_scenario, run_scenario

from scenario_helpers import EXAMPLES, HEAD, cli, scenario_error

BOOT_NORMAL = {"node": 0, "zone": "normal", "present_pages": 4_194_304, "managed_pages": 4_120_574}



def steps(*tables):
    """``[[steps]]`` tables from dicts of TOML values written as text."""
    return "".join("[[steps]]\n" + "".join(f"{k} = {v}\n" for k, v in t.items()) for t in tables)



def run_example(name, keep_steps=None):
    scenario = load_scenario(EXAMPLES / name)
    if keep_steps is not None:
        scenario = attrs.evolve(scenario, steps=scenario.steps[:keep_steps])
    return run_scenario(scenario)


# ------------------------------------------------------------------------------------ parsing

@pytest.mark.parametrize("value, mode", [('"Y"', "Y"), ('"N"', "N"), ('"force"', "force"), ("true", "Y"), ("false", "N")])
def test_hotplug_table_modes(value, mode):
    assert parse_scenario(HEAD + f"[hotplug]\nmemmap_on_memory = {value}\n").hotplug == HotplugSpec(mode)


def test_hotplug_table_is_optional_and_defaults_to_n():
    assert parse_scenario(HEAD).hotplug is None
    assert parse_scenario(HEAD + "[hotplug]\n").hotplug == HotplugSpec("N")


def test_hotplug_steps_parse_with_defaults():
    scenario = parse_scenario(HEAD + steps(
        {"op": '"hotplug.add"', "start": '"64G"', "size": '"9G"'},
        {"op": '"hotplug.online"', "block": 512},
        {"op": '"hotplug.online"', "start": '"64G"', "size": '"1G"', "zone": '"movable"'},
        {"op": '"hotplug.offline"', "start": '"64G"', "size": '"1G"'},
        {"op": '"hotplug.remove"', "start": '"64G"', "size": '"9G"'},
    ))
    assert [(s.op, dict(s.args), s.line) for s in scenario.steps] == [
        ("hotplug.add", {"start": 64 << 30, "size": 9 << 30, "node": 0, "memmap_on_memory": False}, 5),
        ("hotplug.online", {"block": 512, "zone": "normal"}, 9),
        ("hotplug.online", {"start": 64 << 30, "size": 1 << 30, "zone": "movable"}, 12),
        ("hotplug.offline", {"start": 64 << 30, "size": 1 << 30}, 17),
        ("hotplug.remove", {"start": 64 << 30, "size": 9 << 30}, 21),
    ]


@pytest.mark.parametrize("tail, key, line, message", [
    ('[hotplug]\nmemmap_on_memory = "yes"\n', "hotplug.memmap_on_memory", 6,
     "must be 'N', 'Y', 'force' or true/false, got string 'yes'"),
    ('[hotplug]\nmemmap_on_memroy = true\n', "hotplug.memmap_on_memroy", 6, "did you mean 'memmap_on_memory'?"),
    ('[hotplug]\nmemmap_on_memory = 1\n', "hotplug.memmap_on_memory", 6, "got integer 1"),
    ('[[steps]]\nop = "hotplug.ad"\n', "steps[0].op", 6, "did you mean 'hotplug.add'?"),
    ('[[steps]]\nop = "hotplug.add"\nstart = "64G"\n', "steps[0].size", 5,
     "missing required key of hotplug.add (keys: start, size, node, memmap_on_memory)"),
    ('[[steps]]\nop = "hotplug.add"\nsize = "1G"\n', "steps[0].start", 5, "missing required key of hotplug.add"),
    ('[[steps]]\nop = "hotplug.add"\nstart = "64G"\nsize = "1G"\nzone = "movable"\n', "steps[0].zone", 9,
     "unknown key (expected one of: start, size, node, memmap_on_memory)"),
    ('[[steps]]\nop = "hotplug.add"\nstart = "64G"\nsize = "64M"\n', "steps[0].size", 8,
     "0x4000000 is not a multiple of the 128M section"),
    ('[[steps]]\nop = "hotplug.add"\nstart = "64G"\nsize = 0\n', "steps[0].size", 8, "must be positive"),
    ('[[steps]]\nop = "hotplug.add"\nstart = "64G"\nsize = "1G"\nmemmap_on_memory = "Y"\n',
     "steps[0].memmap_on_memory", 9, "must be true or false, got string 'Y'"),
    ('[[steps]]\nop = "hotplug.add"\nstart = "64G"\nsize = "1G"\nnode = -1\n', "steps[0].node", 9, "node -1 is negative"),
    ('[[steps]]\nop = "hotplug.online"\nblock = 512\nzone = "dma"\n', "steps[0].zone", 8,
     "must be 'normal' or 'movable', got string 'dma'"),
    ('[[steps]]\nop = "hotplug.online"\nblock = 512\nzone = 1\n', "steps[0].zone", 8, "got integer 1"),
    ('[[steps]]\nop = "hotplug.online"\nblock = 512\nstart = "64G"\nsize = "1G"\n', "steps[0].block", 7,
     "hotplug.online takes block, or start and size, not both"),
    ('[[steps]]\nop = "hotplug.offline"\nsize = "1G"\nblock = 3\n', "steps[0].block", 8,
     "hotplug.offline takes block, or start and size, not both"),
    ('[[steps]]\nop = "hotplug.offline"\n', "steps[0].block", 5,
     "missing required key of hotplug.offline (block, or start and size)"),
    ('[[steps]]\nop = "hotplug.online"\nstart = "64G"\n', "steps[0].size", 5, "(block, or start and size)"),
    ('[[steps]]\nop = "hotplug.online"\nsize = "1G"\nzone = "movable"\n', "steps[0].start", 5,
     "missing required key of hotplug.online"),
    ('[[steps]]\nop = "hotplug.online"\nblock = -1\n', "steps[0].block", 7, "memory block -1 is negative"),
    ('[[steps]]\nop = "hotplug.online"\nblock = "512"\n', "steps[0].block", 7,
     "must be a memory block id (integer), got string '512'"),
    ('[[steps]]\nop = "hotplug.offline"\nstart = "64G"\nsize = "100M"\n', "steps[0].size", 8, "of the 128M section"),
    ('[[steps]]\nop = "hotplug.remove"\nblock = 512\n', "steps[0].block", 7, "unknown key (expected one of: start, size)"),
])
def test_errors_name_key_and_line(tail, key, line, message):
    error = scenario_error(HEAD + tail)
    assert (error.key, error.line) == (key, line)
    assert message in str(error)
    assert str(error).startswith(f"s.toml:{line}: {key}: ")


def test_hotplug_must_be_a_table():
    error = scenario_error('hotplug = "Y"\n' + HEAD)
    assert (error.key, error.line) == ("hotplug", 1) and "must be a table ([hotplug])" in str(error)


def test_invalid_hotplug_scenario_exits_2_before_simulating(tmp_path, capsys):
    code, out, err = cli(tmp_path, capsys, HEAD + '[[steps]]\nop = "hotplug.online"\nblock = 512\nzone = "dma"\n', "blocks")
    assert (code, out) == (2, "")
    assert f"{tmp_path / 's.toml'}:8: steps[0].zone: must be 'normal' or 'movable'" in err


# ----------------------------------------------------------------------------------- examples

def test_example_9G_memmap_on_memory():
    machine, results = run_example("x86_64-hotplug-9G-memmap-on-memory.toml")
    add, online = results
    assert add.result == {"blocks": list(range(512, 584)), "memmap_on_memory": True, "self_hosted_pages": 36_864, "note": ""}
    assert add.changes == {
        "nr_memmap_pages": 36_864, "memmap_frames": 36_864, "present_pages": 2_359_296, "vmemmap_leaves_2M": 72,
        "vmemmap_mapped_bytes_2M": 72 << 21, "vmemmap_pagetable_pages_pmd": 1, "pagetable_frames": 1, "free_frames": -1,
        "offline_frames": 2_359_296 - 36_864,  # hot-added memory is offline, less the memmap it hosts
    }
    assert online.result == {"blocks": list(range(512, 584))}
    assert online.changes == {"free_frames": 2_322_432, "offline_frames": -2_322_432}
    data = hotplug_report(machine)
    assert data["zones"] == [{**BOOT_NORMAL, "present_pages": 4_194_304 + 2_359_296, "managed_pages": 4_120_574 + 2_322_432}]
    assert (data["memmap_on_memory"], data["block_size"], len(data["blocks"])) == ("Y", 128 << 20, 72)
    assert data["blocks"][0] == {"id": 512, "start": 64 << 30, "size": 128 << 20, "node": 0, "state": "online",
                                 "zone": "normal", "self_hosted_pages": 512}
    assert {b["self_hosted_pages"] for b in data["blocks"]} == {512}
    assert data["blocks"][-1]["start"] == (64 << 30) + 71 * (128 << 20)


def test_example_zones_at_boot_before_any_step():
    machine, _ = run_example("x86_64-hotplug-9G-memmap-on-memory.toml", keep_steps=0)
    assert hotplug_report(machine)["zones"] == [BOOT_NORMAL]
    assert hotplug_report(machine)["blocks"] == []


def test_example_2019_one_altmap_for_the_whole_range():
    machine, (add, online) = run_example("x86_64-hotplug-2019.toml")
    assert add.args["memmap_on_memory"] is False  # not asked for: the 2019 design is on for every hot-add
    assert add.result == {"blocks": list(range(512, 584)), "memmap_on_memory": True, "self_hosted_pages": 36_864, "note": ""}
    assert online.changes == {"free_frames": 2_322_432, "offline_frames": -2_322_432}
    first = (64 << 30) >> 12
    assert [machine.memmap_frame(first + k * 32_768) for k in (0, 1, 63, 64, 71)] == [
        first, first + 512, first + 63 * 512, first + 64 * 512, first + 71 * 512]  # all in the first 36,864 pfns
    data = hotplug_report(machine)
    assert [b["self_hosted_pages"] for b in data["blocks"][:3]] == [32_768, 4_096, 0]
    assert sum(b["self_hosted_pages"] for b in data["blocks"]) == 36_864
    assert data["zones"] == [{**BOOT_NORMAL, "present_pages": 6_553_600, "managed_pages": 6_443_006}]


def test_example_roundtrip_comes_back_to_boot():
    boot, _ = run_example("x86_64-hotplug-roundtrip.toml", keep_steps=0)
    online, _ = run_example("x86_64-hotplug-roundtrip.toml", keep_steps=2)
    machine, results = run_example("x86_64-hotplug-roundtrip.toml")
    assert [(r.op, r.result["blocks"]) for r in results] == [
        ("hotplug.add", list(range(512, 520))), ("hotplug.online", list(range(512, 520))),
        ("hotplug.offline", list(range(512, 520))), ("hotplug.remove", list(range(512, 520)))]
    assert results[0].result["self_hosted_pages"] == 4_096
    assert (results[1].changes, results[2].changes) == ({"free_frames": 258_048, "offline_frames": -258_048},
                                                        {"free_frames": -258_048, "offline_frames": 258_048})
    assert hotplug_report(online)["zones"] == [
        BOOT_NORMAL, {"node": 0, "zone": "movable", "present_pages": 262_144, "managed_pages": 258_048}]
    assert {b["zone"] for b in hotplug_report(online)["blocks"]} == {"movable"}
    after, before = machine.counters(), boot.counters()
    assert after.pop("tlb_flush_all") == 8 and "tlb_flush_all" not in before
    assert after == before
    assert hotplug_report(machine) == hotplug_report(boot) == {
        "memmap_on_memory": "Y", "block_size": 128 << 20, "blocks": [], "zones": [BOOT_NORMAL]}
    assert machine.snapshot()["physmem"] == boot.snapshot()["physmem"]


def test_example_arm64_16K_falls_back_with_the_pageblock_reason():
    machine, (add, online) = run_example("arm64-16K-memmap-on-memory-refused.toml")
    assert add.result["blocks"] == [512] and add.result["memmap_on_memory"] is False
    assert add.result["self_hosted_pages"] == 0
    assert add.result["note"] == (
        "memmap_on_memory refused, memmap from RAM instead: the memmap of a block (32 pages) is not a multiple of "
        "a pageblock (2048 pages); arm64: the memmap of a block (512K) does not fill whole 32M PMD leaves")
    assert add.changes["nr_memmap_pages"] == 32 and add.changes["vmemmap_leaves_16K"] == 32
    assert online.changes == {"free_frames": 8_192, "offline_frames": -8_192}
    assert hotplug_report(machine)["blocks"][0]["self_hosted_pages"] == 0


# ------------------------------------------------------------------------------------ report

NINE_G_BLOCKS = """\
memory blocks  128M each, memory_hotplug.memmap_on_memory=Y
  block                 start         size  node  state   zone    self-hosted pages
  512-583  (72 blocks)  0x1000000000    9G     0  online  normal           512 each
  72 blocks (9G): 72 online, 0 offline; 36,864 self-hosted pages (144M)"""


def test_blocks_command_text(capsys):
    assert main(["blocks", str(EXAMPLES / "x86_64-hotplug-9G-memmap-on-memory.toml")]) == 0
    assert capsys.readouterr().out == NINE_G_BLOCKS + "\n"


def test_blocks_command_json_2019(capsys):
    assert main(["blocks", str(EXAMPLES / "x86_64-hotplug-2019.toml"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["memmap_on_memory"], data["block_size"]) == ("N", 134_217_728)
    assert [(b["id"], b["state"], b["zone"], b["self_hosted_pages"]) for b in data["blocks"][:3]] == [
        (512, "online", "normal", 32_768), (513, "online", "normal", 4_096), (514, "online", "normal", 0)]
    assert [b["id"] for b in data["blocks"]] == list(range(512, 584))
    assert data["zones"] == [{"node": 0, "zone": "normal", "present_pages": 6_553_600, "managed_pages": 6_443_006}]


def test_blocks_text_collapses_2019_by_self_hosted_count(capsys):
    assert main(["blocks", str(EXAMPLES / "x86_64-hotplug-2019.toml")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2:] == [
        "  512                   0x1000000000   128M     0  online  normal             32,768",
        "  513                   0x1008000000   128M     0  online  normal              4,096",
        "  514-583  (70 blocks)  0x1010000000  8.75G     0  online  normal                  0",
        "  72 blocks (9G): 72 online, 0 offline; 36,864 self-hosted pages (144M)",
    ]


MIXED = HEAD + '[hotplug]\nmemmap_on_memory = "Y"\n' + steps(
    {"op": '"hotplug.add"', "start": '"64G"', "size": '"1G"', "memmap_on_memory": "true"},
    {"op": '"hotplug.online"', "start": '"64G"', "size": '"512M"'},
    {"op": '"hotplug.online"', "block": 516, "zone": '"movable"'},
)


def test_few_blocks_get_a_row_each_with_state_zone_and_self_hosted_pages(tmp_path, capsys):
    code, out, _ = cli(tmp_path, capsys, MIXED, "blocks")
    assert code == 0
    assert out.splitlines() == [
        "memory blocks  128M each, memory_hotplug.memmap_on_memory=Y",
        "  block  start         size  node  state    zone     self-hosted pages",
        "  512    0x1000000000  128M     0  online   normal                 512",
        "  513    0x1008000000  128M     0  online   normal                 512",
        "  514    0x1010000000  128M     0  online   normal                 512",
        "  515    0x1018000000  128M     0  online   normal                 512",
        "  516    0x1020000000  128M     0  online   movable                512",
        "  517    0x1028000000  128M     0  offline  -                      512",
        "  518    0x1030000000  128M     0  offline  -                      512",
        "  519    0x1038000000  128M     0  offline  -                      512",
        "  8 blocks (1G): 5 online, 3 offline; 4,096 self-hosted pages (16M)",
    ]
    code, out, _ = cli(tmp_path, capsys, MIXED, "blocks", "--json")
    data = json.loads(out)
    assert [(b["id"], b["state"], b["zone"], b["self_hosted_pages"]) for b in data["blocks"]] == [
        (512, "online", "normal", 512), (513, "online", "normal", 512), (514, "online", "normal", 512),
        (515, "online", "normal", 512), (516, "online", "movable", 512), (517, "offline", None, 512),
        (518, "offline", None, 512), (519, "offline", None, 512)]
    assert data["zones"] == [
        {"node": 0, "zone": "normal", "present_pages": 4_194_304 + 4 * 32_768, "managed_pages": 4_120_574 + 4 * 32_256},
        {"node": 0, "zone": "movable", "present_pages": 32_768, "managed_pages": 32_256}]


def test_many_blocks_collapse_by_state_and_zone(tmp_path, capsys):
    source = HEAD + '[hotplug]\nmemmap_on_memory = "Y"\n' + steps(
        {"op": '"hotplug.add"', "start": '"64G"', "size": '"9G"', "memmap_on_memory": "true"},
        {"op": '"hotplug.online"', "start": '"64G"', "size": '"4G"', "zone": '"movable"'},
        {"op": '"hotplug.online"', "block": 560},
    )
    code, out, _ = cli(tmp_path, capsys, source, "blocks")
    assert code == 0
    assert out.splitlines()[2:] == [
        "  512-543  (32 blocks)  0x1000000000     4G     0  online   movable           512 each",
        "  544-559  (16 blocks)  0x1100000000     2G     0  offline  -                 512 each",
        "  560                   0x1180000000   128M     0  online   normal                 512",
        "  561-583  (23 blocks)  0x1188000000  2.88G     0  offline  -                 512 each",
        "  72 blocks (9G): 33 online, 39 offline; 36,864 self-hosted pages (144M)",
    ]


def test_run_prints_zones_always_and_blocks_when_there_are_some(capsys):
    assert main(["run", str(EXAMPLES / "x86_64-hotplug-9G-memmap-on-memory.toml")]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "zones     node  zone    present_pages         managed_pages" in lines
    assert "             0  normal      6,553,600  (25G)      6,443,006  (24.58G)" in lines
    assert "\n\n" + NINE_G_BLOCKS + "\n\nsteps\n" in out
    assert "  [0] hotplug.add start=64G size=9G node=0 memmap_on_memory=yes  (line 29)" in lines
    assert "        result: blocks=512-583 memmap_on_memory=yes self_hosted_pages=36864" in lines  # empty note left out
    assert "  [1] hotplug.online start=64G size=9G zone=normal  (line 35)" in lines
    assert "        result: blocks=512-583" in lines
    assert main(["run", str(EXAMPLES / "x86_64-hotplug-roundtrip.toml")]) == 0
    out = capsys.readouterr().out
    assert "memory blocks" not in out
    assert "             0  normal      4,194,304  (16G)      4,120,574  (15.72G)" in out.splitlines()


def test_run_json_has_the_hotplug_view(capsys):
    assert main(["run", str(EXAMPLES / "arm64-16K-memmap-on-memory-refused.toml"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["hotplug"] == {
        "memmap_on_memory": "Y", "block_size": 128 << 20,
        "blocks": [{"id": 512, "start": 64 << 30, "size": 128 << 20, "node": 0, "state": "online", "zone": "normal",
                    "self_hosted_pages": 0}],
        # the example's 1,052,669 less the 32 MiB kernel image: 2,048 pages of 16 KiB
        "zones": [{"node": 0, "zone": "normal", "present_pages": 1_056_768, "managed_pages": 1_050_621}],
    }
    assert data["steps"][0]["result"]["blocks"] == [512]
    assert data["steps"][1]["args"] == {"block": 512, "zone": "normal"}


def test_blocks_without_hot_added_memory(capsys):
    assert main(["blocks", str(EXAMPLES / "x86_64-16G.toml")]) == 0
    assert capsys.readouterr().out == ("memory blocks  128M each, memory_hotplug.memmap_on_memory=N\n"
                                       "  no hot-added memory blocks\n")


def test_format_blocks_marks_one_block_singular():
    data = {"memmap_on_memory": "N", "block_size": 2 << 30, "zones": [],
            "blocks": [{"id": 32, "start": 64 << 30, "size": 2 << 30, "node": 1, "state": "offline", "zone": None,
                        "self_hosted_pages": 0}]}
    assert format_blocks(data, 4096).splitlines()[1:] == [
        "  block  start         size  node  state    zone  self-hosted pages",
        "  32     0x1000000000    2G     1  offline  -                     0",
        "  1 block (2G): 0 online, 1 offline; 0 self-hosted pages",
    ]


def test_zones_per_node_with_two_nodes():
    machine, _ = run_scenario(parse_scenario(HEAD + '[[memory]]\nnode = 1\nsize = "16G"\n'))
    assert [(z["node"], z["present_pages"]) for z in hotplug_report(machine)["zones"]] == [(0, 4_194_304), (1, 4_194_304)]


# ------------------------------------------------------------------------------------ failures

def test_refused_offline_exits_1_naming_the_step(tmp_path, capsys):
    source = HEAD + steps(
        {"op": '"hotplug.add"', "start": '"64G"', "size": '"128M"'},
        {"op": '"hotplug.online"', "block": 512},
        # boot memory's 8063 order-9 blocks less the 16 of the 32 MiB kernel image and the one block
        # 512's memmap took (test_hotplug derives it): the next block's memmap then comes from block
        # 512's lowest, pfn 0x1000000
        {"op": '"hugetlb.resize"', "size": '"2M"', "count": 8046},
        {"op": '"hotplug.add"', "start": "0x1008000000", "size": '"128M"'},  # its memmap comes from block 512
        {"op": '"hotplug.offline"', "block": 512},
    )
    code, out, err = cli(tmp_path, capsys, source, "run")
    assert (code, out) == (1, "")
    assert err == (f"vmemcore: error: {tmp_path / 's.toml'}:20: steps[4] (hotplug.offline): BadRequest: offline of "
                   "memory block 512 failed (-EBUSY): pfn 0x1000000 holds an unmovable page (memmap)\n")


@pytest.mark.parametrize("source, message", [
    (HEAD.replace('"x86_64"', '"arm64"\nvariant = "16K-47"\nkernel = "6.1"') + '[hotplug]\nmemmap_on_memory = "Y"\n'
     + steps({"op": '"hotplug.add"', "start": '"64G"', "size": '"128M"', "memmap_on_memory": "true"}),
     ":9: steps[0] (hotplug.add): Veto: memmap_on_memory refused (-EINVAL): the memmap of a block (32 pages) "
     "is not a multiple of a pageblock (2048 pages)"),
    (HEAD.replace('"x86_64"', '"x86_64"\nkernel = "6.1"') + '[hotplug]\nmemmap_on_memory = "force"\n',
     ": boot: BadRequest: kernel 6.1 has no 'force' mode for memmap_on_memory (added in 6.6)"),
    (HEAD + steps({"op": '"hotplug.add"', "start": '"64G"', "size": '"1G"'},
                  {"op": '"hotplug.add"', "start": '"64G"', "size": '"128M"'}),
     ":9: steps[1] (hotplug.add): BadRequest: pfns [0x1000000, 0x1008000) (bytes [0x1000000000, 0x1008000000)) overlap memory already "
     "present (-EEXIST)"),
    (HEAD + steps({"op": '"hotplug.online"', "block": 600}),
     ":5: steps[0] (hotplug.online): BadRequest: there is no memory block 600"),
    (HEAD.replace('"16G"', '"64G"') + steps({"op": '"hotplug.add"', "start": '"64G"', "size": '"2G"'},
                                            {"op": '"hotplug.online"', "start": '"64G"', "size": '"1G"'}),
     ":9: steps[1] (hotplug.online): BadRequest: bytes [0x1000000000, 0x1040000000) are not aligned to the 2G memory block "
     "size (-EINVAL)"),
    (HEAD + steps({"op": '"hotplug.add"', "start": '"64G"', "size": '"1G"'},
                  {"op": '"hotplug.online"', "block": 515},
                  {"op": '"hotplug.remove"', "start": '"64G"', "size": '"1G"'}),
     ":12: steps[2] (hotplug.remove): BadRequest: memory block 515 is still online (-EBUSY)"),
])
def test_refused_operations_exit_1(tmp_path, capsys, source, message):
    code, out, err = cli(tmp_path, capsys, source, "run")
    assert (code, out) == (1, "")
    assert f"{tmp_path / 's.toml'}{message}" in err


def test_a_failed_range_online_is_all_or_nothing():
    source = HEAD + steps({"op": '"hotplug.add"', "start": '"64G"', "size": '"1G"'},
                          {"op": '"hotplug.online"', "block": 515},
                          {"op": '"hotplug.online"', "start": '"64G"', "size": '"1G"'})
    with pytest.raises(RunError, match="memory block 515 is already online") as info:
        run_scenario(parse_scenario(source))
    machine = info.value.machine
    assert [b["state"] for b in hotplug_report(machine)["blocks"]] == ["offline"] * 3 + ["online"] + ["offline"] * 4


def test_help_lists_the_hotplug_ops(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = capsys.readouterr().out
    assert "  hotplug.online            [block], [start], [size], zone=normal: online a memory block" in out
    assert 'memmap_on_memory = "Y"' in out


# ------------------------------------------------------------------------------------ enums

def test_modes_and_zones_from_toml_are_enums_and_print_as_written(tmp_path, capsys):
    from vmemcore.hotplug import BlockState, MemmapOnMemory
    from vmemcore.physmem import Zone

    source = HEAD + '[hotplug]\nmemmap_on_memory = "force"\n' + steps(
        {"op": '"hotplug.add"', "start": '"64G"', "size": '"256M"', "memmap_on_memory": "true"},
        {"op": '"hotplug.online"', "block": 512, "zone": '"movable"'},
    )
    scenario = parse_scenario(source)
    assert scenario.hotplug.memmap_on_memory is MemmapOnMemory.FORCE
    assert scenario.steps[1].args["zone"] is Zone.MOVABLE
    machine, _ = run_scenario(scenario)
    assert machine.hotplug.mode is MemmapOnMemory.FORCE
    assert (machine.hotplug.blocks[512].state, machine.hotplug.blocks[512].zone) == (BlockState.ONLINE, Zone.MOVABLE)
    assert machine.hotplug.blocks[513].state is BlockState.OFFLINE
    code, out, _ = cli(tmp_path, capsys, source, "blocks", "--json")
    data = json.loads(out)
    assert (code, data["memmap_on_memory"]) == (0, "force")
    assert [(b["state"], b["zone"]) for b in data["blocks"]] == [("online", "movable"), ("offline", None)]


def test_kernel_profiles_name_their_designs_with_enums():
    from vmemcore.profiles import PROFILES, HvoHeadPage, HvoTailPage, MhpDesign

    assert [PROFILES[k].mhp_design for k in ("2019", "6.1", "6.12")] == [
        MhpDesign.RFC2019, MhpDesign.SINGLE_BLOCK, MhpDesign.PER_BLOCK]
    assert (PROFILES["7.1"].hvo_head_page, PROFILES["7.1"].hvo_tail_page) == (HvoHeadPage.ALWAYS, HvoTailPage.SHARED)
    assert PROFILES["6.12"].mhp_design == "per-block"  # plugins may still compare with the string
