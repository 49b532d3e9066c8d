"""Plugin discovery without importing importlib.metadata (``vmemcore.plugins.entry_points``): the
entry points of a group, found in ``sys.path`` as ``importlib.metadata.entry_points(group=)``
finds them, for a third party's installed plugin as for the built-ins."""

import importlib.metadata
import sys
import zipfile

from vmemcore.plugins import ENTRY_POINT_GROUP, Registry, entry_points

PLUGIN = '''
import attrs
import vmemcore_x86_64
from vmemcore import hookimpl


@hookimpl
def vmemcore_arch_info():
    return attrs.evolve(vmemcore_x86_64.vmemcore_arch_info(), name="thirdparty")
'''


def _dist(where, dirname, text=None):
    folder = where / dirname
    folder.mkdir(parents=True)
    (folder / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dirname.split('-')[0]}\nVersion: 1\n")
    if text is not None:
        (folder / "entry_points.txt").write_text(text)


def _pairs(found):
    return [(name, load.args[0] if hasattr(load, "args") else None) for name, load in found]


def _expected(group):
    return [(ep.name, ep.value) for ep in importlib.metadata.entry_points(group=group)]


def test_the_scan_lists_what_importlib_metadata_lists(monkeypatch, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    _dist(first, "zeta_arch-1.0.dist-info", f"# a comment\n[console_scripts]\nzeta = zeta:main\n\n"
                                            f"[{ENTRY_POINT_GROUP}]\n zeta = zeta_arch : plugin \n")
    _dist(first, "Alpha.Arch-2.dist-info", f"[{ENTRY_POINT_GROUP}]\nalpha=alpha_arch\nalpha2 = alpha_arch.sub:obj.attr [extra]\n")
    _dist(first, "no_points-1.dist-info")  # no entry_points.txt
    _dist(first, "legacy_arch-0.1.egg-info", f"[{ENTRY_POINT_GROUP}]\nlegacy = legacy_arch\n")
    _dist(second, "zeta_arch-0.9.dist-info", f"[{ENTRY_POINT_GROUP}]\nold_zeta = zeta_arch_old\n")  # zeta_arch again: shadowed
    _dist(second, "beta_arch-1.dist-info", f"[{ENTRY_POINT_GROUP}]\nbeta = beta_arch\n")
    monkeypatch.syspath_prepend(str(second))
    monkeypatch.syspath_prepend(str(first))
    for group in (ENTRY_POINT_GROUP, "console_scripts", "pytest11"):
        assert _pairs(entry_points(group)) == _expected(group)
    ours = _pairs(entry_points(ENTRY_POINT_GROUP))
    # the first zeta_arch on sys.path wins: old_zeta is not listed; the egg-info is read too
    assert {"zeta", "alpha", "alpha2", "legacy", "beta"} <= {name for name, _ in ours}
    assert "old_zeta" not in {name for name, _ in ours}


def test_a_zip_on_sys_path_is_left_to_importlib_metadata(monkeypatch, tmp_path):
    archive = tmp_path / "plugins.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("gamma_arch-1.dist-info/METADATA", "Metadata-Version: 2.1\nName: gamma_arch\nVersion: 1\n")
        zipped.writestr("gamma_arch-1.dist-info/entry_points.txt", f"[{ENTRY_POINT_GROUP}]\ngamma = gamma_arch\n")
    monkeypatch.syspath_prepend(str(archive))
    found = entry_points(ENTRY_POINT_GROUP)
    assert [name for name, _ in found] == [name for name, _ in _expected(ENTRY_POINT_GROUP)]
    assert found[0][0] == "gamma"


def test_a_third_party_plugin_installed_beside_the_builtins_is_registered(monkeypatch, tmp_path):
    (tmp_path / "thirdparty_arch.py").write_text(PLUGIN)
    _dist(tmp_path, "thirdparty_arch-1.0.dist-info", f"[{ENTRY_POINT_GROUP}]\nthirdparty = thirdparty_arch\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "thirdparty_arch", raising=False)
    registry = Registry()
    # the four built-in plugins, the example riscv64 and the third party's, each by its entry-point name
    assert registry.arches["thirdparty"].name == "thirdparty"
    assert {"x86_64", "arm64", "powerpc", "s390", "riscv64", "thirdparty"} == set(registry.arches)
