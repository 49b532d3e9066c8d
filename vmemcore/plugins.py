"""Finding arch plugins and calling their hooks.

Plugins are found through the entry-point group ``vmemcore.arch``, exactly as a third party's
would be. As in pytest, ``VMEMCORE_DISABLE_PLUGIN_AUTOLOAD`` turns entry-point loading off,
``VMEMCORE_PLUGINS`` names modules to load anyway (comma-separated), and a plugin can be disabled
by its name (``-p no:NAME`` on the command line, ``disabled=`` in the API).
"""

import importlib
import os
import sys
from importlib.metadata import entry_points

import attrs
import pluggy

from . import hookspecs
from .errors import PluginError, VmemcoreError
from .geometry import ArchInfo, HugePageSize, PageTableGeometry, SparseGeometry, Support

ENTRY_POINT_GROUP = "vmemcore.arch"
AUTOLOAD_ENV = "VMEMCORE_DISABLE_PLUGIN_AUTOLOAD"
PLUGINS_ENV = "VMEMCORE_PLUGINS"
TRACE_ENV = "VMEMCORE_TRACE"


@attrs.frozen
class ArchPlugin:
    """A loaded plugin that provides an architecture."""

    name: str  # the plugin's name: its entry-point name, or its module name
    plugin: object
    info: ArchInfo


class Registry:
    """Every arch plugin found, loaded and checked; broken ones are kept as errors, by name."""

    def __init__(self, disabled=(), autoload=None, extra=()):
        self.disabled = set(disabled)
        if autoload is None:
            autoload = not os.environ.get(AUTOLOAD_ENV)
        self.arches = {}
        self.errors = []
        candidates = []
        if autoload:
            for ep in entry_points(group=ENTRY_POINT_GROUP):
                candidates.append((ep.name, ep.load))
        modules = [m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(",") if m.strip()]
        for module in modules:
            candidates.append((module, lambda module=module: importlib.import_module(module)))
        for plugin in extra:
            candidates.append((_plugin_name(plugin), lambda plugin=plugin: plugin))
        seen = set()
        for name, load in candidates:
            if name in self.disabled or name in seen:
                continue
            seen.add(name)
            try:
                self._add(name, load())
            except PluginError as error:
                self.errors.append(error)
            except Exception as error:  # a plugin that cannot even be imported
                self.errors.append(PluginError(name, None, f"failed to load: {type(error).__name__}: {error}"))

    def _add(self, name, plugin):
        info = ArchHooks(name, plugin).info
        if info.name in self.disabled:
            return
        if info.name in self.arches:
            other = self.arches[info.name].name
            raise PluginError(name, "vmemcore_arch_info", f"architecture {info.name!r} is already provided by plugin {other!r}")
        self.arches[info.name] = ArchPlugin(name, plugin, info)

    def get(self, arch) -> ArchPlugin:
        if arch in self.arches:
            return self.arches[arch]
        known = ", ".join(sorted(self.arches)) or "none"
        broken = "".join(f"\n  {error}" for error in self.errors)
        hint = f"; plugins that failed to load:{broken}" if broken else ""
        raise PluginError(arch, None, f"no plugin provides this architecture (found: {known}){hint}")


def _plugin_name(plugin):
    return getattr(plugin, "__name__", None) or type(plugin).__name__


def _trace_writer():
    target = os.environ.get(TRACE_ENV)
    if not target:
        return None
    if target in ("1", "stderr", "yes", "true"):
        return sys.stderr.write
    return open(target, "a", encoding="utf-8").write


class ArchHooks:
    """The typed façade over one machine's plugin manager: one method per hook.

    It registers the arch plugin (and optional observers) on a fresh ``PluginManager``, checks the
    registration, calls every hook implementation itself so each answer can be checked and any bad
    answer blamed on its plugin, and traces every call when asked to.
    """

    def __init__(self, name, plugin, observers=(), trace=None):
        self.name = name
        self.pm = pluggy.PluginManager("vmemcore")
        self.pm.add_hookspecs(hookspecs)
        self.trace = trace if trace is not None else _trace_writer()
        try:
            self.pm.register(plugin, name=name)
            for observer in observers:
                self.pm.register(observer, name=_plugin_name(observer))
            self.pm.check_pending()
        except pluggy.PluginValidationError as error:
            raise PluginError(error.plugin_name if hasattr(error, "plugin_name") else name, None, str(error)) from error
        except ValueError as error:
            raise PluginError(name, None, str(error)) from error
        self.info = self._one("vmemcore_arch_info", ArchInfo)

    def _impls(self, hook):
        # pluggy calls implementations last-registered first; so do we
        return reversed(getattr(self.pm.hook, hook).get_hookimpls())

    def _invoke(self, impl, hook, kwargs):
        try:
            result = impl.function(*(kwargs[arg] for arg in impl.argnames))
        except VmemcoreError:
            raise
        except Exception as error:
            raise PluginError(impl.plugin_name, hook, f"raised {type(error).__name__}: {error}") from error
        self._trace(impl.plugin_name, hook, kwargs, result)
        return result

    def _trace(self, plugin, hook, kwargs, result):
        if self.trace is None:
            return
        try:
            args = ", ".join(f"{key}={_short(value)}" for key, value in kwargs.items())
            self.trace(f"[vmemcore trace] {plugin}: {hook}({args}) -> {_short(result)}\n")
        except Exception:  # tracing must never make a good call fail
            pass

    def _one(self, hook, expected, **kwargs):
        """Exactly one plugin answers with an ``expected`` value; everyone else returns None."""
        answers = []
        for impl in self._impls(hook):
            result = self._invoke(impl, hook, kwargs)
            if result is None:
                continue
            if not isinstance(result, expected):
                raise PluginError(impl.plugin_name, hook, f"returned {type(result).__name__}, expected {expected.__name__}")
            answers.append((impl.plugin_name, result))
        if not answers:
            raise PluginError(self.name, hook, "no plugin answered this mandatory hook")
        if len(answers) > 1:
            names = " and ".join(repr(name) for name, _ in answers)
            raise PluginError(answers[0][0], hook, f"answered by two plugins, {names}: exactly one may own it")
        return answers[0][1]

    def _first_true(self, hook, **kwargs):
        for impl in self._impls(hook):
            result = self._invoke(impl, hook, kwargs)
            if result is None:
                continue
            if result is not True:
                raise PluginError(impl.plugin_name, hook, f"returned {result!r}, expected True or None")
            return True
        raise PluginError(self.name, hook, "no plugin implements it: this architecture cannot do that yet")

    def provides(self, hook) -> bool:
        return bool(getattr(self.pm.hook, hook).get_hookimpls())

    def pagetable_geometry(self, variant, profile) -> PageTableGeometry:
        return self._one("vmemcore_pagetable_geometry", PageTableGeometry, variant=variant, profile=profile)

    def sparse_geometry(self, variant, profile) -> SparseGeometry:
        return self._one("vmemcore_sparse_geometry", SparseGeometry, variant=variant, profile=profile)

    def hugepage_sizes(self, machine) -> tuple:
        sizes = self._one("vmemcore_hugepage_sizes", tuple, machine=machine)
        if not all(isinstance(size, HugePageSize) for size in sizes):
            raise PluginError(self.name, "vmemcore_hugepage_sizes", "returned a tuple holding something other than HugePageSize")
        return sizes

    def hvo_support(self, machine) -> Support:
        return self._one("vmemcore_hvo_support", Support, machine=machine)

    def dax_vmemmap_support(self, machine) -> Support:
        return self._one("vmemcore_dax_vmemmap_support", Support, machine=machine)

    def hugetlb_vmemmap_preinit(self, machine) -> bool:
        hook = "vmemcore_hugetlb_vmemmap_preinit"
        answers = [(name, a) for name, a in self._each(hook, machine=machine) if a is not None]
        for name, answer in answers:
            if not isinstance(answer, Support):
                raise PluginError(name, hook, f"returned {type(answer).__name__}, expected Support")
        if len(answers) > 1:
            raise PluginError(answers[0][0], hook, "answered by two plugins: at most one may own it")
        return bool(answers) and answers[0][1].supported

    def memory_block_size(self, machine):
        answers = [(name, size) for name, size in self._each("vmemcore_memory_block_size", machine=machine) if size is not None]
        if len(answers) > 1:
            raise PluginError(answers[0][0], "vmemcore_memory_block_size", "answered by two plugins: exactly one may own it")
        if answers and (not isinstance(answers[0][1], int) or answers[0][1] <= 0 or answers[0][1] & (answers[0][1] - 1)):
            raise PluginError(answers[0][0], "vmemcore_memory_block_size", f"returned {answers[0][1]!r}, expected a power of two")
        return answers[0][1] if answers else None

    def supports_memmap_on_memory(self, machine, vmemmap_size) -> list:
        answers = []
        for name, answer in self._each("vmemcore_supports_memmap_on_memory", machine=machine, vmemmap_size=vmemmap_size):
            if answer is not None and not isinstance(answer, Support):
                raise PluginError(name, "vmemcore_supports_memmap_on_memory", f"returned {type(answer).__name__}, expected Support")
            answers.append(answer)
        return answers

    def arch_add_memory(self, machine, request) -> list:
        """Each plugin in turn may change the request; returns [(plugin, request after it)]."""
        steps = []
        for impl in self._impls("vmemcore_arch_add_memory"):
            answer = self._invoke(impl, "vmemcore_arch_add_memory", {"machine": machine, "request": request})
            if answer is None:
                continue
            if type(answer) is not type(request):
                raise PluginError(impl.plugin_name, "vmemcore_arch_add_memory", f"returned {type(answer).__name__}, expected {type(request).__name__}")
            request = answer
            steps.append((impl.plugin_name, request))
        return steps

    def _each(self, hook, **kwargs):
        return [(impl.plugin_name, self._invoke(impl, hook, kwargs)) for impl in self._impls(hook)]

    def vmemmap_populate(self, machine, start, end, node, altmap):
        return self._first_true("vmemcore_vmemmap_populate", machine=machine, start=start, end=end, node=node, altmap=altmap)

    def vmemmap_free(self, machine, start, end, altmap):
        return self._first_true("vmemcore_vmemmap_free", machine=machine, start=start, end=end, altmap=altmap)


def _short(value):
    if isinstance(value, int) and not isinstance(value, bool) and value > 0xFFFF:
        return hex(value)
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."
