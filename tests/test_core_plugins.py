"""Plugin discovery, the typed hook facade, and how bad plugins are reported."""

import types

import pytest

import vmemcore_x86_64
from vmemcore import Level, PageTableGeometry, hookimpl
from vmemcore.errors import PluginError
from vmemcore.machine import Machine
from vmemcore.plugins import ArchHooks, Registry


def _module(name, **hooks):
    module = types.ModuleType(name)
    for key, fn in hooks.items():
        setattr(module, key, hookimpl(fn))
    return module


def test_entry_points_find_the_four_builtin_arches():
    assert {"x86_64", "arm64", "powerpc", "s390"} <= set(Registry().arches)


def test_a_plugin_can_be_disabled_by_name():
    registry = Registry(disabled={"arm64"})
    assert "arm64" not in registry.arches and "x86_64" in registry.arches
    with pytest.raises(PluginError, match="no plugin provides"):
        Machine("arm64", disabled={"arm64"})


def test_autoload_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("VMEMCORE_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert Registry().arches == {}
    monkeypatch.setenv("VMEMCORE_PLUGINS", "vmemcore_x86_64")
    assert list(Registry().arches) == ["x86_64"]


def test_a_plugin_that_fails_to_import_is_named(monkeypatch, tmp_path):
    (tmp_path / "broken_arch_plugin.py").write_text("raise RuntimeError('boom')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("VMEMCORE_PLUGINS", "broken_arch_plugin")
    registry = Registry()
    assert "x86_64" in registry.arches
    [error] = registry.errors
    assert error.plugin == "broken_arch_plugin" and "boom" in str(error)


def test_a_wrong_answer_names_plugin_and_hook():
    bad = _module("bad_geometry", vmemcore_arch_info=vmemcore_x86_64.vmemcore_arch_info,
                  vmemcore_pagetable_geometry=lambda variant, profile: {"levels": 4})
    hooks = ArchHooks("bad_geometry", bad)
    with pytest.raises(PluginError, match=r"plugin 'bad_geometry', hook vmemcore_pagetable_geometry: returned dict"):
        hooks.pagetable_geometry(hooks.info.variant(), None)


def test_two_owners_of_a_geometry_question_are_both_named():
    one_level = PageTableGeometry(page_shift=12, va_bits=21, levels=[Level("pte", 12, 9, 4096, 4096, leaf=True)])
    rival = _module("rival", vmemcore_pagetable_geometry=lambda variant, profile: one_level)
    hooks = ArchHooks("x86_64", vmemcore_x86_64, observers=[rival])
    with pytest.raises(PluginError, match="'rival' and 'x86_64'"):
        hooks.pagetable_geometry(hooks.info.variant(), None)


def test_a_plugin_exception_is_wrapped_with_its_name():
    def explode(variant, profile):
        raise ZeroDivisionError("oops")

    hooks = ArchHooks("x86_64", vmemcore_x86_64, observers=[_module("exploder", vmemcore_sparse_geometry=explode)])
    with pytest.raises(PluginError, match="plugin 'exploder', hook vmemcore_sparse_geometry: raised ZeroDivisionError"):
        hooks.sparse_geometry(hooks.info.variant(), None)


def test_an_unknown_hook_is_refused_at_registration():
    stray = _module("stray", vmemcore_no_such_hook=lambda: None)
    with pytest.raises(PluginError, match="vmemcore_no_such_hook"):
        ArchHooks("x86_64", vmemcore_x86_64, observers=[stray])


def test_arch_without_populate_cannot_boot_and_says_so():
    geometry_only = _module("geometry_only", vmemcore_arch_info=vmemcore_x86_64.vmemcore_arch_info,
                            vmemcore_pagetable_geometry=vmemcore_x86_64.vmemcore_pagetable_geometry,
                            vmemcore_sparse_geometry=vmemcore_x86_64.vmemcore_sparse_geometry)
    registry = Registry(autoload=False, extra=[geometry_only])
    with pytest.raises(PluginError, match="vmemcore_vmemmap_populate: no plugin implements it"):
        Machine("x86_64", memory=[{"size": "1G"}], registry=registry)


def test_trace_records_every_call_and_cannot_break_one():
    lines = []
    hooks = ArchHooks("x86_64", vmemcore_x86_64, trace=lines.append)
    hooks.sparse_geometry(hooks.info.variant("5-level"), None)
    assert any("x86_64: vmemcore_sparse_geometry(" in line for line in lines)

    def failing_writer(text):
        raise OSError("disk full")

    hooks = ArchHooks("x86_64", vmemcore_x86_64, trace=failing_writer)
    assert hooks.sparse_geometry(hooks.info.variant(), None).section_size_bits == 27
