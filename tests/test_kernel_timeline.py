"""Kernel versions as a timeline (vmemcore/timeline.py, vmemcore/profiles.py): any version of the
modelled span, dated changes with stable backports, the seven named profiles unchanged, a
third-party plugin's own dated change, and ``vmemcore profiles``
(docs/kernel-map.md#kernel-profiles, docs/plugins.md#dated-changes)."""

import json
import types
from pathlib import Path

import pytest

import vmemcore_arm64
import vmemcore_s390
import vmemcore_x86_64
from vmemcore import GiB, hookimpl
from vmemcore.arch import ArchInfo, Change, Support, selected
from vmemcore.cli import main
from vmemcore.errors import BadRequest, Veto
from vmemcore.machine import Machine
from vmemcore.plugins import Registry
from vmemcore.profiles import ENGINE_CHANGES, PROFILES, get_profile

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

# The table of vmemcore/profiles.py before kernel versions became a timeline, copied verbatim:
# name, version, boot free lowers counter, HVO (reserve, head page, tail page, base-page vmemmap,
# batched, reset), memmap_on_memory (design, fallback, excludes HVO).
FROZEN = {
    "2019": ((5, 0), False, (2, "keep", "reuse", False, False, 0), ("rfc2019", False, False)),
    "5.14": ((5, 14), False, (2, "keep", "reuse", True, False, 0), ("single-block", False, True)),
    "6.0": ((6, 0), False, (1, "keep", "reuse", False, False, 3), ("single-block", False, False)),
    "6.1": ((6, 1), False, (1, "keep", "reuse", False, False, 3), ("single-block", False, False)),
    "6.12": ((6, 12), False, (1, "try", "reuse", False, True, 3), ("per-block", True, False)),
    "6.19": ((6, 19), True, (1, "try", "reuse", False, True, 4), ("per-block", True, False)),
    "7.1": ((7, 1), True, (1, "always", "shared", False, True, 0), ("per-block", True, False)),
}
FIELDS = ("version", "boot_memmap_free_lowers_counter", "hvo_reserve_pages", "hvo_head_page", "hvo_tail_page",
          "hvo_needs_basepage_vmemmap", "hvo_batched", "nr_reset_struct_page", "mhp_design", "mhp_fallback",
          "mhp_excludes_hvo")


@pytest.mark.parametrize("name", list(FROZEN))
def test_the_seven_names_compute_exactly_the_old_table(name):
    version, boot_free, hvo, mhp = FROZEN[name]
    expected = dict(zip(FIELDS, (version, boot_free, *hvo, *mhp)))
    profile = get_profile(name)
    assert profile.name == name
    assert {f: getattr(profile, f) for f in FIELDS} == expected
    assert list(PROFILES) == list(FROZEN)


@pytest.mark.parametrize("name, arch, hook, answer", [
    # the plugin answers of the named profiles before the timeline (arm64 6.1 is 6.1.16: no HVO)
    ("6.0", "arm64", "hvo_support", True), ("6.1", "arm64", "hvo_support", False),
    ("6.1", "arm64", "dax_vmemmap_support", True), ("6.12", "arm64", "dax_vmemmap_support", False),
    ("6.1", "s390", "hvo_support", False), ("6.12", "s390", "hvo_support", True),
    ("6.19", "s390", "hvo_support", False), ("5.14", "x86_64", "hvo_support", True),
    ("6.12", "x86_64", "hugetlb_vmemmap_preinit", False), ("6.19", "x86_64", "hugetlb_vmemmap_preinit", True),
])
def test_the_seven_names_keep_their_plugin_answers(name, arch, hook, answer):
    m = Machine(arch, kernel=name, memory=[{"size": 4 * GiB}])
    got = getattr(m.hooks, hook)(m)
    assert (got.supported if isinstance(got, Support) else got) is answer


def _run_json(capsys, *argv):
    code = main([*argv, "--json"])
    return code, json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("kernel", ["6.8", "6.10"])
def test_versions_between_the_names_run_the_hvo_example(capsys, kernel):
    code, data = _run_json(capsys, "run", str(EXAMPLES / "x86_64-hvo-2M.toml"), "--kernel", kernel)
    assert code == 0 and data["machine"]["kernel"] == kernel
    # as the example's comment derives for 6.12: 512 pages x 7 vmemmap pages freed net, 10 PMDs split
    grow = data["steps"][0]["changes"]
    assert grow["memmap_frames"] == -3584 and grow["hvo_pmd_splits"] == 10
    # 6.8 and 6.10 have the new head page (6.2) and batching (6.7): one flush per pass
    assert grow["tlb_flush_all"] == 2


@pytest.mark.parametrize("arch, before, after, commit", [
    ("s390", "6.12.57", "6.12.58", "64e2f60f355e"),  # s390 HVO disabled, backported to 6.12.58
    ("s390", "6.6.116", "6.6.117", "64e2f60f355e"),
    ("s390", "6.17.7", "6.17.8", "64e2f60f355e"),
    ("arm64", "6.1.15", "6.1.16", "060a2c92d1b6"),  # arm64 HVO disabled, backported to 6.1.16, 6.2.3
    ("arm64", "6.2.2", "6.2.3", "060a2c92d1b6"),
])
def test_a_stable_backport_switches_hvo_off_at_its_point_release(arch, before, after, commit):
    def pool(kernel):
        m = Machine(arch, kernel=kernel, memory=[{"size": 4 * GiB}], hugetlb={"optimize_vmemmap": True})
        size = "1M" if arch == "s390" else "2M"
        start = m.counters()["memmap_frames"]
        m.hugetlb.resize(size, 8)
        m.check()
        return start - m.counters()["memmap_frames"]

    # s390 1 MiB: 4 vmemmap pages, 3 freed each; arm64 2 MiB: 8 pages, 7 freed each
    assert pool(before) == 8 * (3 if arch == "s390" else 7)
    with pytest.raises(Veto, match=commit):
        pool(after)


def test_the_mainline_release_has_the_change_and_later_series_keep_it():
    off = vmemcore_s390.HVO_OFF
    assert [off.in_effect(v) for v in ("6.12", "6.12.57", "6.12.58", "6.12.95", "6.13", "6.17.7", "6.18", "7.1")] == [
        False, False, True, True, False, False, True, True]  # 6.13-6.16 never received it
    assert [off.in_effect(v) for v in ("6.6.116", "6.6.117")] == [False, True]


@pytest.mark.parametrize("kernel, leaves_4k", [("6.12.19", 0), ("6.12.20", 8), ("6.6.84", 8), ("6.13", 0),
                                               ("6.14", 8), ("6.1.131", 0), ("6.1.132", 8)])
def test_arm64_subsection_base_pages_with_their_backports(kernel, leaves_4k):
    # d4234d131b0a: 32 KiB of memmap for one 2 MiB sub-section takes 8 base pages instead of a PMD block
    m = Machine("arm64", kernel=kernel, memory=[{"size": 16 * GiB}])
    m.add_memmap(64 * GiB // 4096, 512)
    assert m.counters().get("vmemmap_leaves_4K", 0) == leaves_4k
    m.check()


@pytest.mark.parametrize("kernel, section_bits", [("6.12", 28), ("6.12.95", 28), ("6.13", 27), ("6.19", 27)])
def test_s390_sections_shrink_in_613_the_mainline_release(kernel, section_bits):
    m = Machine("s390", kernel=kernel, memory=[{"size": 4 * GiB}])
    assert m.sparse_geometry.section_size_bits == section_bits


@pytest.mark.parametrize("kernel, refused", [("6.5", False), ("6.6", True)])
def test_dax_reserve_nr_from_66(kernel, refused):
    from vmemcore.populate import vmemmap_can_optimize

    m = Machine("x86_64", kernel=kernel, memory=[{"size": 4 * GiB}])
    pgmap = types.SimpleNamespace(vmemmap_nr=128)  # 128 x 64 B = 8 KiB: two vmemmap pages
    assert vmemmap_can_optimize(m, None, pgmap).supported is not refused


@pytest.mark.parametrize("kernel", ["5.13", "4.19", "7.2", "8.0", "5.0"])
def test_a_version_outside_the_span_is_refused_with_the_span(kernel):
    with pytest.raises(BadRequest, match=r"outside the modelled span, versions 5\.14 to 7\.1\.y"):
        Machine("x86_64", kernel=kernel, memory=[{"size": 1 * GiB}])


@pytest.mark.parametrize("kernel, message", [
    ("6.20", "there is no mainline release 6.20"),
    ("6.12.x", "did you mean '6.12'?"),
    ("v6.8", "did you mean '6.8'?"),
])
def test_near_misses_are_refused_with_a_hint(kernel, message):
    with pytest.raises(BadRequest, match=message.replace(".", r"\.").replace("?", r"\?")):
        get_profile(kernel)


def test_a_version_is_its_release_and_a_point_release_keeps_its_name():
    assert get_profile("6.12.42").release == (6, 12, 42) and get_profile("6.12.42").name == "6.12.42"
    assert get_profile("6.1").release == (6, 1, 16)  # the named 6.1 stands for 6.1.16
    assert get_profile("6.1.0").release == (6, 1, 0)
    six12 = {f: getattr(get_profile("6.12"), f) for f in FIELDS}
    assert {f: getattr(get_profile("6.12.0"), f) for f in FIELDS} == six12


@pytest.mark.parametrize("kwargs, message", [
    (dict(mainline="6.3", stable=("6.4.2",)), "older than the mainline release 6.3"),
    (dict(mainline="6.3", stable=("6.1.2", "6.1.5")), "one backport per stable series"),
    (dict(mainline="6.3", stable=("6.1",)), "point release"),
    (dict(mainline="6.3.1"), "not a point release"),
    (dict(mainline="6.3", commit="060a2c92"), "commit"),
])
def test_a_change_refuses_an_impossible_dating(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Change("x-change", "something", **kwargs)


def test_arch_info_changes_must_be_changes_with_distinct_names():
    variant = vmemcore_s390.vmemcore_arch_info().variants
    with pytest.raises(ValueError, match="Change values"):
        ArchInfo("toy", "toy", variant, "3-level", changes=((6, 3),))
    one = Change("a", "a", "6.3")
    with pytest.raises(ValueError, match="share a name: a"):
        ArchInfo("toy", "toy", variant, "3-level", changes=(one, one))


# -- a third-party plugin declares its own dated change ---------------------------------------------

# A made-up change of "myx86": HVO from mainline 6.9, backported to 6.6.30 and 6.8.5.
MYX86_HVO = Change("myx86-hvo", "myx86 selects ARCH_WANT_OPTIMIZE_HUGETLB_VMEMMAP", "6.9",
                   stable=("6.6.30", "6.8.5"), status="made up for the test")


def _third_party_registry():
    plugin = types.ModuleType("vmemcore_myx86")
    for name in dir(vmemcore_x86_64):
        if name.startswith("vmemcore_"):
            setattr(plugin, name, getattr(vmemcore_x86_64, name))

    def vmemcore_arch_info():
        info = vmemcore_x86_64.vmemcore_arch_info()
        return ArchInfo("myx86", "x86_64 as a third party dates it", info.variants, info.default_variant,
                        info.features, changes=(MYX86_HVO,))

    def vmemcore_hvo_support(machine):
        return selected(machine.profile, MYX86_HVO, before="myx86 has HVO from 6.9 (6.6.30, 6.8.5)")

    plugin.vmemcore_arch_info = hookimpl(vmemcore_arch_info)
    plugin.vmemcore_hvo_support = hookimpl(vmemcore_hvo_support)
    return Registry(autoload=False, extra=[plugin])


@pytest.mark.parametrize("kernel, hvo", [("6.6.29", False), ("6.6.30", True), ("6.7", False), ("6.8.4", False),
                                         ("6.8.5", True), ("6.9", True), ("6.12", True), ("6.1", False)])
def test_a_third_party_plugin_declares_a_dated_change_with_a_backport(kernel, hvo):
    registry = _third_party_registry()
    m = Machine("myx86", kernel=kernel, memory=[{"size": 4 * GiB}], registry=registry)
    assert m.hooks.hvo_support(m).supported is hvo
    if hvo:  # and HVO runs: 8 pages of 2 MiB, 7 vmemmap pages freed each
        m.hugetlb.set_optimize_vmemmap(True)
        start = m.counters()["memmap_frames"]
        m.hugetlb.resize("2M", 8)
        assert start - m.counters()["memmap_frames"] == 56
        m.check()


def test_profiles_lists_a_third_party_change_and_what_a_version_has(capsys, monkeypatch):
    registry = _third_party_registry()
    monkeypatch.setattr("vmemcore.cli.Registry", lambda disabled=(): registry)
    code, data = _run_json(capsys, "profiles")
    assert code == 0 and data["schema"] == 1
    mine = [c for c in data["changes"] if c["owner"] == "myx86"]
    assert mine == [{"owner": "myx86", "plugin": "vmemcore_myx86", **MYX86_HVO.data()}]
    assert mine[0]["stable"] == ["6.6.30", "6.8.5"]
    code, data = _run_json(capsys, "profiles", "6.8.5", "--arch", "myx86")
    assert {c["name"]: c["via"] for c in data["changes"] if c["owner"] == "myx86"} == {"myx86-hvo": "6.8.5"}


# -- vmemcore profiles ------------------------------------------------------------------------------

def test_profiles_lists_the_timeline(capsys):
    code, data = _run_json(capsys, "profiles")
    assert code == 0 and list(data)[0] == "schema" and data["schema"] == 1
    assert data["span"] == {"oldest": "5.14", "newest": "7.1", "named": list(PROFILES)}
    by_name = {c["name"]: c for c in data["changes"]}
    assert by_name["arm64-hvo-off"] == {
        "owner": "arm64", "plugin": "arm64", **vmemcore_arm64.HVO_OFF.data()}
    assert by_name["arm64-hvo-off"]["stable"] == ["6.1.16", "6.2.3"] and by_name["arm64-hvo-off"]["mainline"] == "6.3"
    assert by_name["s390-hvo-off"]["stable"] == ["6.6.117", "6.12.58", "6.17.8"]
    assert by_name["arm64-subsection-basepages"]["stable"] == ["6.1.132", "6.6.84", "6.12.20"]
    assert {c.name for c in ENGINE_CHANGES} <= set(by_name)
    mainlines = [tuple(map(int, c["mainline"].split("."))) for c in data["changes"]]
    assert mainlines == sorted(mainlines)  # a timeline: oldest first
    assert {p["name"]: p["release"] for p in data["profiles"]}["6.1"] == "6.1.16"

    assert main(["profiles"]) == 0
    out = capsys.readouterr().out
    assert "kernel versions modelled: 5.14 to 7.1.y" in out
    assert any(line.split()[:4] == ["v6.18", "s390", "s390-hvo-off", "64e2f60f355e"] and "6.12.58" in line
               for line in out.splitlines())


def test_profiles_of_one_version_and_arch(capsys):
    code, data = _run_json(capsys, "profiles", "6.12.58", "--arch", "s390")
    assert code == 0 and data["kernel"] == "6.12.58" and data["release"] == "6.12.58"
    owners = {c["owner"] for c in data["changes"]}
    assert owners == {"engine", "s390"}
    has = {c["name"]: c["via"] for c in data["changes"]}
    assert has["s390-hvo"] == "v6.2" and has["s390-hvo-off"] == "6.12.58" and has["s390-section-128m"] is None
    assert has["hvo-batched"] == "v6.7" and has["hvo-reset-4"] is None
    assert data["fields"]["mhp_design"] == "per-block" and data["fields"]["nr_reset_struct_page"] == 3

    code, data = _run_json(capsys, "profiles", "6.12.57", "--arch", "s390")
    assert {c["name"]: c["has"] for c in data["changes"]}["s390-hvo-off"] is False

    assert main(["profiles", "6.12.42", "--arch", "s390"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "kernel 6.12.42: 6.12.42, from the timeline"
    assert any(line.split()[:4] == ["has", "v6.2", "s390", "s390-hvo"] for line in out)
    assert any(line.split()[:4] == ["lacks", "v6.18", "s390", "s390-hvo-off"] and "[stable: 6.6.117, 6.12.58, 6.17.8]"
               in line for line in out)
    assert "  mhp_design                       per-block" in out


def test_profiles_refuses_a_version_outside_the_span(capsys):
    code, data = _run_json(capsys, "profiles", "7.2")
    assert code == 2 and "5.14 to 7.1.y" in data["error"]["message"]
    assert main(["profiles", "6.12", "--arch", "x86-64"]) == 2
    assert "no plugin provides architecture 'x86-64'" in capsys.readouterr().err


def test_a_scenario_names_a_point_release(tmp_path, capsys):
    source = (EXAMPLES / "x86_64-hvo-2M.toml").read_text().replace('kernel = "6.12"', 'kernel = "6.12.42"')
    path = tmp_path / "hvo.toml"
    path.write_text(source)
    code, data = _run_json(capsys, "run", str(path))
    assert code == 0 and data["machine"]["kernel"] == "6.12.42"
    path.write_text(source.replace('kernel = "6.12.42"', 'kernel = "5.4"'))
    code, data = _run_json(capsys, "run", str(path))
    assert code == 2 and data["error"]["key"] == "machine.kernel" and "5.14 to 7.1.y" in data["error"]["message"]
