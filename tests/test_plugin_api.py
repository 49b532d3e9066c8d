"""The plugin API: hooks called through pluggy with one policy table, answers checked, capability
and lifecycle hooks, the engine's own checks of what plugins say, and plugin identity."""

import inspect
import re
import types
from pathlib import Path

import attrs
import pytest

import vmemcore_arm64
import vmemcore_x86_64
from vmemcore import GiB, HugePageSize, Level, MiB, PageTableGeometry, Support, TiB, hookimpl, hookspecs
from vmemcore.cli import main
from vmemcore.arch import preallocate_tables
from vmemcore.errors import BadRequest, PluginError, Veto
from vmemcore.machine import Machine
from vmemcore.plugins import HOOK_POLICIES, ArchHooks, Policy, Registry
from vmemcore.zone_device import DevicePagemap


def _module(name, base=vmemcore_x86_64, **hooks):
    """A plugin module: every hook of ``base`` (None: none), with ``hooks`` replacing or adding."""
    module = types.ModuleType(name)
    if base is not None:
        for key in dir(base):
            if key.startswith("vmemcore_"):
                setattr(module, key, getattr(base, key))
    for key, fn in hooks.items():
        setattr(module, key, hookimpl(fn) if not hasattr(fn, "vmemcore_impl") else fn)
    return module


def _machine(plugin, **kwargs):
    kwargs.setdefault("memory", [{"size": 4 * GiB}])
    return Machine("x86_64", registry=Registry(autoload=False, extra=[plugin]), **kwargs)


# -- pluggy semantics -------------------------------------------------------------------------------

class Observer:
    """A ``wrapper=True`` observer of populate and free: records every call and its result."""

    def __init__(self):
        self.calls = []

    @hookimpl(wrapper=True)
    def vmemcore_vmemmap_populate(self, machine, start, end, node, altmap):
        result = yield
        self.calls.append(("populate", start, end, result))
        return result

    @hookimpl(wrapper=True)
    def vmemcore_vmemmap_free(self, machine, start, end, altmap):
        result = yield
        self.calls.append(("free", start, end, result))
        return result


def _boot_add_remove(observers=()):
    m = Machine("x86_64", memory=[{"size": 4 * GiB}], observers=observers)
    m.hotplug.add_memory(64 * GiB, 256 * MiB)
    m.hotplug.remove_memory(64 * GiB + 128 * MiB, 128 * MiB)
    return m


def test_vmemmap_populate_and_vmemmap_free_calls_are_seen_by_a_wrapper_observer():
    observer = Observer()
    watched, plain = _boot_add_remove([observer]), _boot_add_remove()
    assert watched.snapshot() == plain.snapshot()
    base = watched.sparse_geometry.vmemmap_base
    section = watched.sparse_geometry.section_memmap_bytes  # 2 MiB of struct pages per 128 MiB section
    g64 = base + (64 * GiB >> 12) * 64
    assert observer.calls == [
        ("populate", base, base + 32 * section, True),  # boot: one call for the node's 32 sections
        # the hot-add: __add_pages calls sparse_add_section per section, but x86's section memmap
        # is one whole 2 MiB PMD leaf (Sparse.batches), so the run of 2 sections is one call
        ("populate", g64, g64 + 2 * section, True),
        ("free", g64 + section, g64 + 2 * section, True),  # the hot-remove of the second block
    ]


def test_tryfirst_plugin_is_asked_first_and_none_passes_on():
    order = []

    @hookimpl(tryfirst=True)
    def first(machine, start, end, node, altmap):
        order.append("first")

    watcher = _module("watcher", base=None, vmemcore_vmemmap_populate=first)
    Machine("x86_64", memory=[{"size": 1 * GiB}], observers=[watcher])
    assert order == ["first"]


def test_every_policy_row_matches_its_hookspec():
    specs = {name for name in dir(hookspecs) if name.startswith("vmemcore_")}
    assert specs == set(HOOK_POLICIES)
    for name, rule in HOOK_POLICIES.items():
        opts = getattr(hookspecs, name).vmemcore_spec
        assert opts["firstresult"] is (rule.policy is Policy.FIRST_TRUE), name
        assert rule.policy.value.split(":")[0] in getattr(hookspecs, name).__doc__, name


def test_a_populate_that_forgets_to_return_true_is_told_so():
    def populate(machine, start, end, node, altmap):
        vmemcore_x86_64.vmemcore_vmemmap_populate(machine, start, end, node, altmap)

    with pytest.raises(PluginError, match=r"'forgetful', hook vmemcore_vmemmap_populate: returned None "
                                          r"\(return True when handled\)"):
        _machine(_module("forgetful", vmemcore_vmemmap_populate=populate))


def test_a_base_exception_in_a_hook_is_named():
    def sparse(variant, profile):
        raise SystemExit(7)

    with pytest.raises(PluginError, match="plugin 'quitter', hook vmemcore_sparse_geometry: raised SystemExit: 7"):
        _machine(_module("quitter", vmemcore_sparse_geometry=sparse))


def test_a_missing_owner_hook_is_named_and_optional_hooks_have_defaults():
    lean = _module("lean")
    for hook in ("vmemcore_hugepage_sizes", "vmemcore_hvo_support", "vmemcore_dax_vmemmap_support",
                 "vmemcore_memory_block_size", "vmemcore_hugetlb_vmemmap_preinit"):
        delattr(lean, hook)
    m = _machine(lean)
    assert m.hugetlb.hstates == {}
    assert m.hugetlb.support == Support(False, "the x86_64 plugin does not say whether it has HVO")
    assert m.hotplug.block_size == m.sparse_geometry.memory_block_size == 128 * MiB
    no_geometry = _module("no_geometry")
    delattr(no_geometry, "vmemcore_sparse_geometry")
    with pytest.raises(PluginError, match="vmemcore_sparse_geometry: no plugin answered this mandatory hook"):
        _machine(no_geometry)


def test_arch_info_is_asked_once_at_discovery():
    calls = []

    def info():
        calls.append(1)
        return vmemcore_x86_64.vmemcore_arch_info()

    registry = Registry(autoload=False, extra=[_module("counted", vmemcore_arch_info=info)])
    assert len(calls) == 1  # discovery
    Machine("x86_64", memory=[{"size": 1 * GiB}], registry=registry)
    assert len(calls) == 1  # validation and the machine reuse the answer


# -- the engine checks what plugins say -------------------------------------------------------------

@pytest.mark.parametrize("variant, size, limit", [("4K-48", 256 * TiB, "128T"), ("16K-47", 128 * TiB, "64T")])
def test_sparse_geometry_vmemmap_limit_refuses_memory_beyond_it(variant, size, limit):
    with pytest.raises(BadRequest, match=rf"outside the .*vmemmap.*{limit} of physical address space"):
        Machine("arm64", variant=variant, memory=[{"size": size}])


def test_a_hot_add_beyond_the_vmemmap_is_refused_before_anything_changes():
    m = Machine("arm64", variant="16K-47", memory=[{"size": 1 * GiB}])
    before = m.snapshot()
    with pytest.raises(BadRequest, match="-E2BIG|outside the vmemmap"):
        m.hotplug.add_memory(64 * TiB, m.hotplug.block_size)
    assert m.snapshot() == before


@pytest.mark.parametrize("answer, complaint", [
    (HugePageSize(2 * MiB, "pud"), "2M: 1 pud entries of 0x40000000 bytes map 0x40000000 bytes, not 0x200000"),
    # x86_64 has no contiguous bit: a contiguous size must match the level's spans (arm64: fine)
    (HugePageSize(32 * MiB, "pmd", 16), "32M: 16 contiguous pmd entries, but the geometry gives that level no contiguous bit"),
    (HugePageSize(4 * MiB, "p4d"), "level 'p4d' is not a level of this page table"),
])
def test_hugepage_sizes_are_checked_against_the_geometry(answer, complaint):
    plugin = _module("sizes", vmemcore_hugepage_sizes=lambda machine: (answer,))
    if complaint is None:
        assert list(_machine(plugin).hugetlb.hstates) == [answer.size]
        return
    with pytest.raises(PluginError, match=rf"plugin 'sizes', hook vmemcore_hugepage_sizes: .*{complaint}"):
        _machine(plugin)


@pytest.mark.parametrize("change, what", [
    ({"size": 3 * 128 * MiB}, "changed size from 0x8000000 to 0x18000000"),
    ({"node": -1}, "changed node from 0 to -1"),
])
def test_arch_add_memory_may_not_change_the_range_or_node(change, what):
    m = _machine(_module("greedy", vmemcore_arch_add_memory=lambda machine, request: attrs.evolve(request, **change)))
    before = m.snapshot()
    with pytest.raises(PluginError, match=f"plugin 'greedy', hook vmemcore_arch_add_memory: {what}"):
        m.hotplug.add_memory(64 * GiB, 128 * MiB)
    assert m.snapshot() == before


def _pte_only(page_shift):
    return PageTableGeometry(page_shift=page_shift, va_bits=page_shift + 9,
                             levels=[Level("pte", page_shift, 9, 4096, 1 << max(page_shift, 12), leaf=True)])


def test_pagetable_geometry_accepts_any_power_of_two_page_size_from_4k():
    assert _pte_only(13).page_size == 8192 and _pte_only(20).page_size == 1 << 20
    with pytest.raises(ValueError, match=r"^page_shift must be an integer of at least 12 \(4 KiB pages\), got 11$"):
        _pte_only(11)


# -- capability and lifecycle hooks -----------------------------------------------------------------

def test_memory_hotplug_support_refusal_vetoes_every_hot_add_with_its_reason():
    plugin = _module("nohotplug", vmemcore_memory_hotplug_support=lambda machine: Support(False, "no ACPI memory devices"))
    m = _machine(plugin)
    with pytest.raises(Veto, match="has no memory hotplug: no ACPI memory devices"):
        m.hotplug.add_memory(64 * GiB, 128 * MiB)


@pytest.mark.parametrize("kernel, refused", [("6.12", True), ("6.19", False)])
def test_zone_device_support_s390_only_once_it_no_longer_needs_pte_devmap(kernel, refused):
    m = Machine("s390", kernel=kernel, memory=[{"size": 4 * GiB}])
    before = m.snapshot()
    request = DevicePagemap(ranges=[(64 * GiB, 256 * MiB)], vmemmap_shift=8)
    if refused:
        with pytest.raises(Veto, match="has no ZONE_DEVICE: ZONE_DEVICE depends on ARCH_HAS_PTE_DEVMAP"):
            m.zone_device.add(request)
        assert m.snapshot() == before
    else:
        assert m.zone_device.add(request).frames_used == 1024


def test_mappable_range_arm64_hot_add_must_fit_the_linear_map():
    """4K-39: the linear map is half of 39 bits of VA, 256 GiB, while 48 physical bits are allowed."""
    m = Machine("arm64", variant="4K-39", memory=[{"size": 1 * GiB}])
    before = m.snapshot()
    with pytest.raises(BadRequest, match=r"exceeds the range arm64 can map, bytes \[0x0, 0x4000000000\) \(-E2BIG\)"):
        m.hotplug.add_memory(256 * GiB, m.hotplug.block_size)
    assert m.snapshot() == before
    m.hotplug.add_memory(256 * GiB - m.hotplug.block_size, m.hotplug.block_size)


def test_pgtable_cache_init_runs_once_after_boot_and_may_preallocate_tables():
    """riscv's ``pgtable_cache_init`` pre-allocates the vmemmap's tables below the PGD; here every PUD
    table of x86_64's 1 TiB vmemmap: 2 PGD entries, one of them already made at boot."""
    seen = []

    def after_boot(machine):
        sparse = machine.sparse_geometry
        seen.append(machine.physmem.booting)
        seen.append(preallocate_tables(machine, sparse.vmemmap_base, sparse.vmemmap_base + sparse.vmemmap_size, "pud"))

    m = _machine(_module("riscvish", vmemcore_pgtable_cache_init=after_boot))
    assert seen == [False, 1]
    assert m.counters()["vmemmap_pagetable_pages_pud"] == 2
    m.check()


def test_builtin_plugins_import_only_the_public_api():
    import ast
    from pathlib import Path

    root = Path(__file__).parent.parent / "plugins"
    for path in root.glob("*/vmemcore_*/*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module] if isinstance(node, ast.ImportFrom) else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            for name in names:
                assert not (name or "").startswith("vmemcore") or name == "vmemcore.arch", f"{path}: imports {name}"


# -- plugin identity --------------------------------------------------------------------------------

def _fork(name):
    return _module(name, base=vmemcore_arm64)


@pytest.mark.parametrize("order", [0, 1])
def test_two_plugins_for_one_arch_are_refused_whatever_the_order(order):
    plugins = [_fork("arm64_fork"), vmemcore_arm64][::1 if order else -1]
    registry = Registry(autoload=False, extra=plugins)
    assert "arm64" not in registry.arches and registry.conflicts == {"arm64": ["arm64_fork", "vmemcore_arm64"]}
    with pytest.raises(PluginError, match="provided by 'arm64_fork' and 'vmemcore_arm64': disable all but one"):
        Machine("arm64", registry=registry)
    chosen = Registry(autoload=False, extra=plugins, disabled={"vmemcore_arm64"})
    assert chosen.get("arm64").name == "arm64_fork"


def test_disabling_is_by_plugin_name_not_arch_name():
    registry = Registry(autoload=False, extra=[_fork("arm64_fork")], disabled={"arm64"})
    assert registry.get("arm64").name == "arm64_fork"  # "arm64" names no plugin here


def _run_with(tmp_path, monkeypatch, module, source, arch):
    """``vmemcore run`` of a 1G machine of ``arch`` with the plugin module ``module`` (``source``)
    loaded through VMEMCORE_PLUGINS and no entry points; returns the exit status."""
    (tmp_path / f"{module}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("VMEMCORE_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.setenv("VMEMCORE_PLUGINS", module)
    scenario = tmp_path / "machine.toml"
    scenario.write_text(f'[machine]\narch = "{arch}"\n\n[[memory]]\nsize = "1G"\n')
    return main(["run", str(scenario)])


def test_a_broken_plugin_makes_a_scenario_for_its_arch_exit_3(tmp_path, monkeypatch, capsys):
    assert _run_with(tmp_path, monkeypatch, "broken_riscv", "raise ImportError('no riscv_tables')\n", "riscv64") == 3
    assert "broken_riscv" in capsys.readouterr().err
    assert main(["arches", "riscv64"]) == 3


def test_hook_trace_names_each_plugin_and_argument():
    lines = []
    hooks = ArchHooks("x86_64", vmemcore_x86_64, trace=lines.append)
    hooks.sparse_geometry(hooks.info.variant("5-level"), None)
    assert any(line.startswith("[vmemcore trace] x86_64: vmemcore_sparse_geometry(variant=Variant(name='5-level'")
               for line in lines)


@pytest.mark.parametrize("arch, yes, no", [
    ("x86_64", ["5.14", "6.12", "7.1"], ["2019"]),
    ("arm64", ["6.0"], ["5.14", "6.1", "6.12"]),  # 5.19-6.0, then break-before-make (060a2c92d1b6)
    ("s390", ["6.12"], ["6.1", "6.19"]),  # 6.2-6.17 (64e2f60f355e)
    ("powerpc", [], ["6.12", "7.1"]),
])
def test_hvo_support_per_arch_and_kernel(arch, yes, no):
    for kernel in yes + no:
        m = Machine(arch, kernel=kernel, memory=[{"size": 1 * GiB}])
        assert m.hooks.hvo_support(m).supported is (kernel in yes), (arch, kernel)


def test_hugetlb_vmemmap_preinit_is_x86_64_from_6_15():
    answers = {kernel: Machine("x86_64", kernel=kernel, memory=[{"size": 1 * GiB}]) for kernel in ("6.12", "6.19")}
    assert {k: m.hooks.hugetlb_vmemmap_preinit(m) for k, m in answers.items()} == {"6.12": False, "6.19": True}
    arm = Machine("arm64", kernel="6.19", memory=[{"size": 1 * GiB}])
    assert arm.hooks.hugetlb_vmemmap_preinit(arm) is False  # no answer: the stated default


# -- the hooks are documented and tested (datasette-style meta-test) ------------------------------

DOCS = (Path(__file__).parent.parent / "docs" / "plugins.md").read_text()
TESTS = "".join(p.read_text() for p in Path(__file__).parent.glob("test_*.py"))


@pytest.mark.parametrize("hook", sorted(HOOK_POLICIES))
def test_hook_is_documented_with_signature_and_policy_and_has_a_test(hook):
    argnames = getattr(ArchHooks("x86_64", vmemcore_x86_64).pm.hook, hook).spec.argnames
    heading = f"### `{hook}({', '.join(argnames)})`"
    assert heading in DOCS, f"docs/plugins.md lacks {heading}"
    section = DOCS.split(heading, 1)[1].split("\n### ", 1)[0]
    policy = HOOK_POLICIES[hook].policy.value.split(":")[0]
    assert f"**Policy: {policy}" in section, f"docs/plugins.md: {hook} does not state its policy ({policy})"
    doc = getattr(hookspecs, hook).__doc__
    assert "Called" in doc and "Returns" in doc and f"Policy: {policy}" in doc
    called = next(p for p in inspect.getdoc(getattr(hookspecs, hook)).split("\n\n") if p.startswith("Called"))
    called = re.sub(r":(class|func|mod):`~?([^`]+)`", r"`\2`", " ".join(called.split())).replace("``", "`")
    assert called in section, f"docs/plugins.md: {hook}'s 'Called ...' is stale"
    short = hook.removeprefix("vmemcore_")
    assert re.search(rf"def test_\w*{short}", TESTS), f"no test is named for {hook} (def test_..{short}..)"


def test_hugepage_sizes_are_asked_before_boot():
    """The hookspec says: before ``sparse_init`` (boot gigantic pages come from memblock)."""
    seen = []

    def sizes(machine):
        seen.append(machine.physmem.booting)
        return vmemcore_x86_64.vmemcore_hugepage_sizes(machine)

    _machine(_module("early", vmemcore_hugepage_sizes=sizes))
    assert seen == [True]


def test_a_hook_calling_sys_exit_is_reported_by_the_cli_with_its_plugin(tmp_path, monkeypatch, capsys):
    source = ("import sys\nfrom vmemcore_x86_64 import *\nfrom vmemcore.arch import hookimpl\n\n"
              "@hookimpl\ndef vmemcore_memory_block_size(machine):\n    sys.exit(7)\n")
    assert _run_with(tmp_path, monkeypatch, "exiting_x86", source, "x86_64") == 3
    assert "plugin 'exiting_x86', hook vmemcore_memory_block_size: raised SystemExit: 7" in capsys.readouterr().err


def test_sparse_keeps_to_mm_layering():
    """The compound populate lives in populate.py (mm/sparse-vmemmap.c): sparse.py does not reach
    into zone_device.py, and hugetlb.py no longer holds HVO's pre-init."""
    import ast

    root = Path(__file__).parent.parent / "vmemcore"
    imports = {node.module for node in ast.walk(ast.parse((root / "sparse.py").read_text()))
               if isinstance(node, ast.ImportFrom)}
    assert "zone_device" not in imports
    assert "def vmemmap_init_early" not in (root / "hugetlb.py").read_text()


def test_plugin_state_is_per_machine_and_snapshotted():
    class Seen:
        def __init__(self, machine):
            self.ranges = []

        def snapshot(self):
            return list(self.ranges)

    def populate(machine, start, end, node, altmap):
        machine.plugin_state("counting.seen", Seen).ranges.append((start, end))

    m = Machine("x86_64", memory=[{"size": 1 * GiB}], observers=[_module("counting", base=None, vmemcore_vmemmap_populate=populate)])
    base = m.sparse_geometry.vmemmap_base
    assert m.snapshot()["plugin_state"] == {"counting.seen": [(base, base + 8 * m.sparse_geometry.section_memmap_bytes)]}
    assert m.plugin_state("counting.seen", Seen) is m.plugin_state("counting.seen", None)
