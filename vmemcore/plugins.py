"""Finding arch plugins and calling their hooks through pluggy.

Plugins are found through the entry-point group ``vmemcore.arch``, exactly as a third party's
would be. As in pytest, ``VMEMCORE_DISABLE_PLUGIN_AUTOLOAD`` turns entry-point loading off,
``VMEMCORE_PLUGINS`` names modules to load anyway (comma-separated), and a plugin is disabled by
its plugin name (its entry-point name, or its module name): ``-p no:NAME`` on the command line,
``disabled=`` in the API. Two plugins providing one architecture are refused, both named, until
one of them is disabled.

Every hook is called as ``pm.hook.NAME(...)`` (or, for a chained hook, through a pluggy subset
caller), so ``firstresult``, ``tryfirst``/``trylast`` and ``wrapper=True`` observers behave as
pluggy documents. :data:`HOOK_POLICIES` gives each hook its policy and is the only place that
enforces it; every answer is checked after the call, and a bad one names the plugin and the hook.
"""

import enum
import functools
import importlib
import importlib.machinery
import inspect
import os
import re
import sys

import attrs
import pluggy

from . import hookspecs
from .errors import PluginError, VmemcoreError, did_you_mean
from .geometry import ArchInfo, HugePageSize, PageTableGeometry, PhysRange, SparseGeometry, Support
from .archtypes import ANY_CHANGE, GENERIC, LiveEntryRule, PtdumpFormat
from .mapping import VmemmapMapping

ENTRY_POINT_GROUP = "vmemcore.arch"
AUTOLOAD_ENV = "VMEMCORE_DISABLE_PLUGIN_AUTOLOAD"
PLUGINS_ENV = "VMEMCORE_PLUGINS"
TRACE_ENV = "VMEMCORE_TRACE"


class Policy(enum.Enum):
    """How the answers of the plugins that implement a hook combine."""

    OWNER = "owner: exactly one plugin answers; two answers are refused, both named"
    OPTIONAL = "optional: at most one plugin answers; none means the stated default"
    FIRST_TRUE = "first true: the first plugin that returns True has handled it; None means not mine"
    ALL = "all count: every answer is collected; any refusal wins and every reason is reported"
    CHAINED = "chained: each plugin in turn sees the previous plugin's answer"


@attrs.frozen
class HookPolicy:
    """One row of :data:`HOOK_POLICIES`: the policy, the type of an answer, the default when
    nobody answers (a callable of the hook's arguments), and an extra check of an answer
    (a callable of (answer, arguments) returning a complaint, or None)."""

    policy: Policy
    answer: type | None
    default: object = None
    check: object = None


def _hugepage_sizes_fit(sizes, kwargs):
    if not all(isinstance(size, HugePageSize) for size in sizes):
        return "returned a tuple holding something other than HugePageSize"
    geometry = kwargs["machine"].geometry
    for size in sizes:
        names = [level.name for level in geometry.levels]
        if size.level not in names:
            return f"{size.name}: level {size.level!r} is not a level of this page table ({', '.join(names)})"
        level = geometry.level(size.level)
        if size.directory:
            if size.contiguous != 1 or size.size >= level.entry_span:
                return f"{size.name}: a hugepd off a {size.level} entry maps pages smaller than the entry's span"
            continue
        if not level.leaf:
            return f"{size.name}: level {size.level} cannot hold leaves on this page table"
        if size.contiguous * level.entry_span != size.size:
            return (f"{size.name}: {size.contiguous} {size.level} entries of {level.entry_span:#x} bytes map "
                    f"{size.contiguous * level.entry_span:#x} bytes, not {size.size:#x}")
        if size.contiguous > level.entries:
            return f"{size.name}: {size.contiguous} contiguous entries do not fit a {level.entries}-entry table"
        if size.contiguous != 1 and size.contiguous != level.contiguous:
            have = f"spans of {level.contiguous}" if level.contiguous > 1 else "no contiguous bit"
            return f"{size.name}: {size.contiguous} contiguous {size.level} entries, but the geometry gives that level {have}"
    return None


def _power_of_two(value, kwargs):
    if isinstance(value, bool) or value <= 0 or value & (value - 1):
        return f"returned {value!r}, expected a power of two"
    return None


def _only_none(value, kwargs):
    return None if value is None else f"returned {value!r}: this hook answers nothing (return None)"


def _no_hvo(kwargs):
    return Support(False, f"the {kwargs['machine'].arch.name} plugin does not say whether it has HVO")


def _no_dax_dedup(kwargs):
    machine = kwargs["machine"]
    return Support(False, f"the {machine.arch.name} plugin does not say whether it can dedup device-dax vmemmap")


def _whole_physical_range(kwargs):
    return PhysRange(0, 1 << kwargs["machine"].sparse_geometry.max_physmem_bits)


#: Every hook's policy: the only place that says how answers combine and what an answer must be.
HOOK_POLICIES = {
    "vmemcore_arch_info": HookPolicy(Policy.OWNER, ArchInfo),
    "vmemcore_pagetable_geometry": HookPolicy(Policy.OWNER, PageTableGeometry),
    "vmemcore_sparse_geometry": HookPolicy(Policy.OWNER, SparseGeometry),
    "vmemcore_vmemmap_populate": HookPolicy(Policy.FIRST_TRUE, bool),
    "vmemcore_vmemmap_free": HookPolicy(Policy.FIRST_TRUE, bool),
    "vmemcore_vmemmap_populate_compound_pages": HookPolicy(Policy.FIRST_TRUE, bool, lambda kwargs: False),
    "vmemcore_vmemmap_mapping": HookPolicy(Policy.OPTIONAL, VmemmapMapping, lambda kwargs: None),
    "vmemcore_pgtable_cache_init": HookPolicy(Policy.ALL, None, check=_only_none),
    "vmemcore_hugepage_sizes": HookPolicy(Policy.OPTIONAL, tuple, lambda kwargs: (), _hugepage_sizes_fit),
    "vmemcore_hvo_support": HookPolicy(Policy.OPTIONAL, Support, _no_hvo),
    "vmemcore_live_entry_rule": HookPolicy(Policy.OPTIONAL, LiveEntryRule, lambda kwargs: ANY_CHANGE),
    "vmemcore_hugetlb_vmemmap_preinit": HookPolicy(Policy.OPTIONAL, Support, lambda kwargs: Support(False, "no pre-HVO")),
    "vmemcore_dax_vmemmap_support": HookPolicy(Policy.OPTIONAL, Support, _no_dax_dedup),
    "vmemcore_memory_hotplug_support": HookPolicy(Policy.ALL, Support),
    "vmemcore_zone_device_support": HookPolicy(Policy.ALL, Support),
    "vmemcore_mappable_range": HookPolicy(Policy.OPTIONAL, PhysRange, _whole_physical_range),
    "vmemcore_memory_block_size": HookPolicy(
        Policy.OPTIONAL, int, lambda kwargs: kwargs["machine"].sparse_geometry.memory_block_size, _power_of_two),
    "vmemcore_supports_memmap_on_memory": HookPolicy(Policy.ALL, Support),
    "vmemcore_arch_add_memory": HookPolicy(Policy.CHAINED, None),
    "vmemcore_ptdump_format": HookPolicy(Policy.OPTIONAL, PtdumpFormat, lambda kwargs: GENERIC),
}


@attrs.frozen
class ArchPlugin:
    """A loaded plugin that provides an architecture."""

    name: str  # the plugin's name: its entry-point name, or its module name
    plugin: object
    info: ArchInfo

    def hooks(self, observers=()) -> "ArchHooks":
        """A fresh hook façade over this plugin (and ``observers``)."""
        return ArchHooks(self.name, self.plugin, observers=observers, info=self.info)


#: ``module[:attr]`` with optional ``[extras]``: importlib.metadata's ``EntryPoint.pattern``
_ENTRY_POINT_VALUE = re.compile(r"(?P<module>[\w.]+)\s*(:\s*(?P<attr>[\w.]+)\s*)?((?P<extras>\[.*\])\s*)?$")


def entry_points(group):
    """``(name, load)`` of each entry point of ``group``, in the order and with the targets of
    ``importlib.metadata.entry_points(group=group)``, ``load()`` importing its object.

    Importing importlib.metadata costs tens of milliseconds (its email and zip modules), a fifth of
    ``vmemcore arches``. Where the standard path finder is the only distribution finder and every
    ``sys.path`` entry is a plain directory (or missing), its search is read here directly: each
    entry's ``*.dist-info`` and ``*.egg-info`` directories in listing order, a distribution name
    (the directory's stem before its first ``-``) counting only where first found, and the
    ``[group]`` lines of its ``entry_points.txt``. Anywhere else (zip archives, eggs, other finders)
    importlib.metadata itself is asked. Either way a third party's plugin is found as a built-in is."""
    found = _scan_entry_points(group)
    if found is None:
        from importlib.metadata import entry_points as metadata_entry_points

        return [(ep.name, ep.load) for ep in metadata_entry_points(group=group)]
    return [(name, functools.partial(_load_entry_point, value)) for name, value in found]


def _scan_entry_points(group):
    """:func:`entry_points` read from ``sys.path`` as ``importlib.metadata``'s ``Lookup`` and
    ``_unique`` order it (a directory's metadata directories grouped by normalized name, in order
    of first appearance; a raw name counted once), as ``(name, value)`` pairs; None where that
    search is not the only one or meets something it would read differently."""
    finders = [finder for finder in sys.meta_path if getattr(finder, "find_distributions", None) is not None]
    if finders != [importlib.machinery.PathFinder]:
        return None
    found, seen = [], set()
    for entry in sys.path:
        if not isinstance(entry, str) or os.path.isfile(entry) or entry.lower().endswith(".egg"):
            return None
        try:
            children = os.listdir(entry or ".")
        except OSError:
            continue
        groups = {}
        for child in children:
            low = child.lower()
            if low.endswith((".dist-info", ".egg-info")):
                key = re.sub(r"[-_.]+", "_", low.rpartition(".")[0].partition("-")[0])
                groups.setdefault(key, []).append(child)
        for child in (child for same in groups.values() for child in same):
            stem, ext = os.path.splitext(child)
            if ext not in (".dist-info", ".egg-info"):
                return None  # named from its METADATA file instead
            name = stem.partition("-")[0]
            if name in seen:
                continue
            seen.add(name)
            try:
                with open(os.path.join(entry or ".", child, "entry_points.txt"), encoding="utf-8") as file:
                    text = file.read()
            except OSError:
                continue
            found.extend(_section(text, group))
    return found


def _section(text, group):
    """The ``(name, value)`` pairs of ``[group]`` in an ``entry_points.txt`` (importlib.metadata's
    ``Sectioned``: stripped lines, ``#`` comments, ``name = value`` split at the first ``=``)."""
    section = None
    for line in map(str.strip, text.splitlines()):
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line.strip("[]")
        elif section == group:
            name, value = map(str.strip, line.split("=", 1))
            yield name, value


def _load_entry_point(value):
    """``EntryPoint.load``: import the module, then follow the dotted attribute."""
    match = _ENTRY_POINT_VALUE.match(value)
    module = importlib.import_module(match.group("module"))
    return functools.reduce(getattr, filter(None, (match.group("attr") or "").split(".")), module)


class Registry:
    """Every arch plugin found, loaded and checked; broken ones are kept as errors, by name.

    ``arches`` maps an architecture to the one plugin providing it; ``conflicts`` maps an
    architecture that two or more plugins provide to their names (sorted): such an arch is
    refused until all but one are disabled, whatever order the plugins were found in."""

    def __init__(self, disabled=(), autoload=None, extra=()):
        self.disabled = set(disabled)
        if autoload is None:
            autoload = not os.environ.get(AUTOLOAD_ENV)
        self.arches = {}
        self.conflicts = {}
        self.errors = []
        candidates = []
        if autoload:
            candidates.extend(entry_points(ENTRY_POINT_GROUP))
        modules = [m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(",") if m.strip()]
        for module in modules:
            candidates.append((module, lambda module=module: importlib.import_module(module)))
        for plugin in extra:
            candidates.append((_plugin_name(plugin), lambda plugin=plugin: plugin))
        providers = {}
        seen = set()
        for name, load in candidates:
            if name in self.disabled or name in seen:
                continue
            seen.add(name)
            try:
                plugin = load()
                info = ArchHooks(name, plugin).info
            except PluginError as error:
                self.errors.append(error)
                continue
            except Exception as error:  # a plugin that cannot even be imported
                self.errors.append(PluginError(name, None, f"failed to load: {type(error).__name__}: {error}"))
                continue
            providers.setdefault(info.name, []).append(ArchPlugin(name, plugin, info))
        for arch, found in providers.items():
            if len(found) == 1:
                self.arches[arch] = found[0]
            else:
                self.conflicts[arch] = sorted(p.name for p in found)

    def get(self, arch) -> ArchPlugin:
        if arch in self.arches:
            return self.arches[arch]
        raise PluginError(arch, None, self.why_missing(arch))

    def why_missing(self, arch) -> str:
        """Why no plugin is at hand for ``arch``: none found, two found, or disabled or broken ones."""
        if arch in self.conflicts:
            names = " and ".join(repr(name) for name in self.conflicts[arch])
            return (f"architecture {arch!r} is provided by {names}: disable all but one with "
                    f"-p no:PLUGIN (or disabled= in the API)")
        known = ", ".join(sorted(self.arches)) or "none"
        text = f"no plugin provides architecture {arch!r} (found: {known})"
        if arch in self.disabled:
            text += f"; the plugin {arch!r} is disabled by -p no:{arch} (disabled= in the API)"
        else:
            text += did_you_mean(arch, [*self.arches, *self.conflicts])
            if self.disabled:
                text += "; disabled: " + ", ".join(f"-p no:{name}" for name in sorted(self.disabled))
        if self.errors:
            text += "; plugins that failed to load:" + "".join(f"\n  {error}" for error in self.errors)
        return text

    @property
    def broken(self) -> bool:
        """True when a plugin failed to load or two plugins claim one arch."""
        return bool(self.errors or self.conflicts)


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

    It registers the arch plugin (and optional observers) on a fresh ``PluginManager`` (``info``:
    the plugin's :class:`ArchInfo` when discovery already asked for it), checks the
    registration (unknown hooks, missing mandatory ones), calls every hook through ``pm.hook`` and
    applies the hook's :data:`HOOK_POLICIES` row to the answers. Each plugin is registered behind a
    recorder that notes which plugin gave which answer, names the plugin when one of its
    implementations raises (even a ``BaseException`` such as ``SystemExit``), and writes the trace.
    Wrappers (``wrapper=True``) are registered as they are and see every call.
    """

    def __init__(self, name, plugin, observers=(), trace=None, info=None):
        self.name = name
        self.pm = pluggy.PluginManager("vmemcore")
        self.pm.add_hookspecs(hookspecs)
        self.trace = trace if trace is not None else _trace_writer()
        self._answers = []  # one list of (plugin, answer) per hook call in progress
        try:
            self.pm.register(self._recorded(plugin, name), name=name)
            for observer in observers:
                observer_name = _plugin_name(observer)
                self.pm.register(self._recorded(observer, observer_name), name=observer_name)
            self.pm.check_pending()
        except pluggy.PluginValidationError as error:
            raise PluginError(getattr(error, "plugin_name", None) or name, None, str(error)) from error
        except ValueError as error:
            raise PluginError(name, None, str(error)) from error
        self.info = info if info is not None else self.call("vmemcore_arch_info")

    # -- calling --------------------------------------------------------------------------------
    def _recorded(self, plugin, name):
        """A stand-in for ``plugin`` whose hook implementations report to this façade."""
        proxy = _RecordedPlugin(name, plugin)
        for attr in dir(plugin):
            if not attr.startswith("vmemcore_"):
                continue
            opts = self.pm.parse_hookimpl_opts(plugin, attr)
            if opts is None:
                continue
            function = getattr(plugin, attr)
            wrapper = opts.get("wrapper") or opts.get("hookwrapper")
            setattr(proxy, attr, function if wrapper else self._recorder(name, attr, function))
        return proxy

    def _recorder(self, plugin, hook, function):
        @functools.wraps(function)
        def record(*args):
            try:
                answer = function(*args)
            except (VmemcoreError, KeyboardInterrupt, MemoryError):  # MemoryError: the simulator's own memory
                raise
            except BaseException as error:
                raise PluginError(plugin, hook, f"raised {type(error).__name__}: {error}") from error
            if self._answers:
                self._answers[-1].append((plugin, answer))
            self._trace(plugin, hook, args, function, answer)
            return answer

        return record

    def _trace(self, plugin, hook, args, function, answer):
        if self.trace is None:
            return
        try:
            names = inspect.signature(function).parameters
            shown = ", ".join(f"{key}={_short(value)}" for key, value in zip(names, args))
            self.trace(f"[vmemcore trace] {plugin}: {hook}({shown}) -> {_short(answer)}\n")
        except Exception:  # tracing must never make a good call fail
            pass

    def _implementers(self, hook):
        """Plugins with a (non-wrapper) implementation of ``hook``, in pluggy's call order."""
        impls = getattr(self.pm.hook, hook).get_hookimpls()
        return [impl.plugin_name for impl in reversed(impls) if not (impl.wrapper or impl.hookwrapper)]

    def _pluggy_call(self, caller, kwargs):
        self._answers.append([])
        try:
            result = caller(**kwargs)
        finally:
            answered = self._answers.pop()
        return result, answered

    def call(self, hook, **kwargs):
        """Call ``hook`` through pluggy and apply its policy; returns the combined answer:
        owner/optional: the answer (or the default); first true: True; all count: the list of
        answers; chained: ``[(plugin, answer after it)]`` for each plugin that changed it."""
        rule = HOOK_POLICIES[hook]
        if rule.policy is Policy.CHAINED:
            return self._chained(hook, rule, kwargs)
        result, answered = self._pluggy_call(getattr(self.pm.hook, hook), kwargs)
        if rule.policy is Policy.FIRST_TRUE:
            return self._first_true(hook, rule, result, answered, kwargs)
        for value in result:
            self._check(hook, rule, self._blame(value, answered), value, kwargs)
        if rule.policy is Policy.ALL:
            return result
        if len(result) > 1:
            names = " and ".join(repr(plugin) for plugin, answer in answered if answer is not None)
            raise PluginError(self._blame(result[0], answered), hook, f"answered by two plugins, {names}: exactly one may own it")
        if result:
            return result[0]
        if rule.policy is Policy.OWNER:
            raise PluginError(self.name, hook, "no plugin answered this mandatory hook")
        return rule.default(kwargs)

    def _chained(self, hook, rule, kwargs):
        (key,) = [name for name in getattr(self.pm.hook, hook).spec.argnames if name != "machine"]
        implementers = self._implementers(hook)
        steps = []
        for plugin in implementers:
            caller = self.pm.subset_hook_caller(hook, [self.pm.get_plugin(p) for p in implementers if p != plugin])
            result, answered = self._pluggy_call(caller, kwargs)
            if not result:
                continue
            (value,) = result
            if type(value) is not type(kwargs[key]):
                raise PluginError(plugin, hook, f"returned {type(value).__name__}, expected {type(kwargs[key]).__name__}")
            kwargs = dict(kwargs, **{key: value})
            steps.append((plugin, value))
        return steps

    def _first_true(self, hook, rule, result, answered, kwargs):
        if result is True:
            return True
        if result is not None:
            raise PluginError(self._blame(result, answered), hook, f"returned {result!r}, expected True or None")
        if rule.default is not None:  # nobody handled it: the engine's own way (False)
            return rule.default(kwargs)
        if answered:
            names = ", ".join(repr(plugin) for plugin, _ in answered)
            raise PluginError(answered[-1][0], hook, f"returned None (return True when handled); asked: {names}")
        raise PluginError(self.name, hook, "no plugin implements it: this architecture cannot do that yet")

    def _blame(self, value, answered):
        for plugin, answer in answered:
            if answer is value:
                return plugin
        return "a hook wrapper"

    def _check(self, hook, rule, plugin, value, kwargs):
        if rule.answer is not None and not isinstance(value, rule.answer):
            raise PluginError(plugin, hook, f"returned {type(value).__name__}, expected {rule.answer.__name__}")
        complaint = rule.check(value, kwargs) if rule.check is not None else None
        if complaint:
            raise PluginError(plugin, hook, complaint)

    def provides(self, hook) -> bool:
        """Does any registered plugin implement ``hook`` (wrappers aside)?"""
        return bool(self._implementers(hook))

    # -- the typed façade -------------------------------------------------------------------------
    def pagetable_geometry(self, variant, profile) -> PageTableGeometry:
        return self.call("vmemcore_pagetable_geometry", variant=variant, profile=profile)

    def sparse_geometry(self, variant, profile, memory=()) -> SparseGeometry:
        return self.call("vmemcore_sparse_geometry", variant=variant, profile=profile, memory=tuple(memory))

    def vmemmap_populate(self, machine, start, end, node, altmap) -> bool:
        return self.call("vmemcore_vmemmap_populate", machine=machine, start=start, end=end, node=node, altmap=altmap)

    def vmemmap_free(self, machine, start, end, altmap) -> bool:
        return self.call("vmemcore_vmemmap_free", machine=machine, start=start, end=end, altmap=altmap)

    def vmemmap_populate_compound_pages(self, machine, start_pfn, start, end, node, pgmap) -> bool:
        """True when a plugin mapped it; False: the engine's generic populate is to run."""
        return self.call("vmemcore_vmemmap_populate_compound_pages", machine=machine, start_pfn=start_pfn,
                         start=start, end=end, node=node, pgmap=pgmap)

    def vmemmap_mapping(self, machine) -> "VmemmapMapping | None":
        return self.call("vmemcore_vmemmap_mapping", machine=machine)

    def pgtable_cache_init(self, machine) -> None:
        self.call("vmemcore_pgtable_cache_init", machine=machine)

    def hugepage_sizes(self, machine) -> tuple:
        return self.call("vmemcore_hugepage_sizes", machine=machine)

    def hvo_support(self, machine) -> Support:
        return self.call("vmemcore_hvo_support", machine=machine)

    def live_entry_rule(self, machine) -> "LiveEntryRule":
        return self.call("vmemcore_live_entry_rule", machine=machine)

    def hugetlb_vmemmap_preinit(self, machine) -> bool:
        return self.call("vmemcore_hugetlb_vmemmap_preinit", machine=machine).supported

    def dax_vmemmap_support(self, machine) -> Support:
        return self.call("vmemcore_dax_vmemmap_support", machine=machine)

    def memory_hotplug_support(self, machine) -> Support:
        return _combined(self.call("vmemcore_memory_hotplug_support", machine=machine))

    def zone_device_support(self, machine) -> Support:
        return _combined(self.call("vmemcore_zone_device_support", machine=machine))

    def mappable_range(self, machine) -> "PhysRange":
        return self.call("vmemcore_mappable_range", machine=machine)

    def memory_block_size(self, machine) -> int:
        return self.call("vmemcore_memory_block_size", machine=machine)

    def supports_memmap_on_memory(self, machine, vmemmap_size) -> list:
        return self.call("vmemcore_supports_memmap_on_memory", machine=machine, vmemmap_size=vmemmap_size)

    def ptdump_format(self, machine) -> "PtdumpFormat":
        return self.call("vmemcore_ptdump_format", machine=machine)

    def arch_add_memory(self, machine, request) -> list:
        """Each plugin in turn may change the request; returns [(plugin, request after it)]."""
        return self.call("vmemcore_arch_add_memory", machine=machine, request=request)


class _RecordedPlugin:
    """What is registered on the plugin manager for ``plugin``: its hook implementations, each
    wrapped by :meth:`ArchHooks._recorder` (wrappers as they are)."""

    def __init__(self, name, plugin):
        self.__name__ = name
        self.wrapped = plugin

    def __repr__(self):
        return f"<plugin {self.__name__!r}: {self.wrapped!r}>"


def _combined(answers) -> Support:
    """All-count capability answers: yes when nobody refuses; else no with every reason."""
    reasons = [answer.reason for answer in answers if not answer.supported]
    return Support(False, "; ".join(reasons)) if reasons else Support(True)


def _short(value):
    if isinstance(value, int) and not isinstance(value, bool) and value > 0xFFFF:
        return hex(value)
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."
