"""Scenario files: a TOML description of a machine and the steps to run on it.

``load_scenario``/``parse_scenario`` read and validate a scenario without simulating anything:
every unknown key, missing key, wrong type or impossible value is a :class:`ScenarioError` that
names the key path (``memory[1].size``) and its line in the file. ``run_scenario`` then boots the
:class:`Machine` and runs the steps. The format is documented in ``docs/scenarios.md``.
"""

import difflib
import re
import tomllib
from types import MappingProxyType

import attrs
from attrs import frozen

from .errors import BadRequest, ScenarioError, VmemcoreError
from .geometry import SUBSECTION_SHIFT
from .hotplug import MemmapOnMemory
from .machine import Machine
from .physmem import Zone
from .plugins import ArchHooks, Registry
from .profiles import DEFAULT_PROFILE, PROFILES
from .units import format_size, human_size, parse_size
from .zone_device import add_devdax_step, remove_devdax_step

REQUIRED = object()  # marks a step key without a default


@frozen
class MachineSpec:
    """The ``[machine]`` table, resolved: ``variant`` and ``kernel`` are names, never None."""

    arch: str
    variant: str
    kernel: str
    features: MappingProxyType = attrs.field(converter=lambda d: MappingProxyType(dict(d)))


@frozen
class MemorySpec:
    """One ``[[memory]]`` range with its start resolved to bytes."""

    node: int
    start: int
    size: int


@frozen
class BootPages:
    """One ``[hugetlb] boot`` entry: ``count`` HugeTLB pages of ``size`` bytes reserved at boot
    (``hugepages=``), on ``node`` or interleaved over the nodes when None."""

    size: int
    count: int
    node: int | None = None


@frozen
class HugetlbSpec:
    """The ``[hugetlb]`` table: the boot-time HVO switch and the boot pages."""

    optimize_vmemmap: bool = False
    boot: tuple = ()


@frozen
class HotplugSpec:
    """The ``[hotplug]`` table: the boot parameter ``memory_hotplug.memmap_on_memory``."""

    memmap_on_memory: MemmapOnMemory = attrs.field(default=MemmapOnMemory.N, converter=MemmapOnMemory)


@frozen
class Step:
    """One ``[[steps]]`` entry: its op and its arguments (sizes in bytes, defaults filled in)."""

    index: int
    op: str
    args: MappingProxyType = attrs.field(converter=lambda d: MappingProxyType(dict(d)))
    line: int | None = None


@frozen
class Scenario:
    """A validated scenario, ready for :func:`run_scenario`."""

    machine: MachineSpec
    memory: tuple
    steps: tuple = ()
    path: str | None = None
    hugetlb: HugetlbSpec | None = None
    hotplug: HotplugSpec | None = None


@frozen
class Op:
    """A step operation: ``keys`` maps each key to (kind, default), kind one of "size", "hugepage"
    (a HugeTLB page size), "node", "count", "block" (a memory block id), "zone" or "bool", default
    REQUIRED when the key must be given, None when it is optional (ops with a ``block`` key take it
    or ``start`` and ``size``); ``start`` and ``size`` must be whole sub-sections, or whole sections
    with ``sections``. ``run(machine, args)`` performs it and returns what it reports (a dict) or None."""

    name: str
    keys: dict
    run: object
    help: str
    sections: bool = False


def _pages(machine, args):
    """``(pfn, nr_pages)`` of a step's ``start`` and ``size``."""
    shift = machine.geometry.page_shift
    return args["start"] >> shift, args["size"] >> shift


def _switch(machine, args):
    machine.hugetlb.set_optimize_vmemmap(args["enabled"])
    return {"optimize_vmemmap": machine.hugetlb.optimize_vmemmap}


def _block_ids(machine, args):
    """The memory blocks a step names: its ``block``, or every block of its ``start`` + ``size``."""
    if "block" in args:
        return [args["block"]]
    first, count = _pages(machine, args)
    per_block = machine.hotplug.block_pages
    if first % per_block or count % per_block:
        raise BadRequest(f"[{args['start']:#x}, +{args['size']:#x}) is not aligned to the "
                         f"{format_size(machine.hotplug.block_size)} memory block size (-EINVAL)")
    return list(range(first // per_block, (first + count) // per_block))


def _each_block(machine, args, action):
    ids = _block_ids(machine, args)
    for block in ids:
        action(block)
    return {"blocks": ids}


def _hot_add(machine, args):
    result = machine.hotplug.add_memory(args["start"], args["size"], args["node"], args["memmap_on_memory"])
    return attrs.asdict(result) | {"blocks": list(result.blocks)}


def _hot_remove(machine, args):
    ids = _block_ids(machine, args)
    machine.hotplug.remove_memory(args["start"], args["size"])
    return {"blocks": ids}


_RANGE = {"start": ("size", REQUIRED), "size": ("size", REQUIRED)}
_NODE = {"node": ("node", 0)}
_BLOCKS = {"block": ("block", None), "start": ("size", None), "size": ("size", None)}
OPS = {
    op.name: op
    for op in (
        Op("memmap.populate", {**_RANGE, **_NODE},
           lambda m, a: m.populate_section_memmap(*_pages(m, a), a["node"]),
           "map the memmap of the range (__populate_section_memmap)"),
        Op("memmap.depopulate", dict(_RANGE),
           lambda m, a: m.depopulate_section_memmap(*_pages(m, a)),
           "unmap and free the memmap of the range (depopulate_section_memmap)"),
        Op("memmap.add", {**_RANGE, **_NODE},
           lambda m, a: m.add_memmap(*_pages(m, a), a["node"]),
           "sparse_add_section for each section piece of the range"),
        Op("memmap.remove", dict(_RANGE),
           lambda m, a: m.remove_memmap(*_pages(m, a)),
           "sparse_remove_section for each section piece of the range"),
        Op("hugetlb.resize", {"size": ("hugepage", REQUIRED), "count": ("count", REQUIRED)},
           lambda m, a: attrs.asdict(m.hugetlb.resize(a["size"], a["count"])),
           "write count to nr_hugepages of the HugeTLB size (set_max_huge_pages)"),
        Op("hugetlb.optimize_vmemmap", {"enabled": ("bool", REQUIRED)}, _switch,
           "the sysctl vm.hugetlb_optimize_vmemmap (5.19+): HVO for folios allocated afterwards"),
        Op("hotplug.add", {**_RANGE, **_NODE, "memmap_on_memory": ("bool", False)}, _hot_add,
           "add_memory: offline memory blocks with their memmap, from the range itself with memmap_on_memory",
           sections=True),
        Op("hotplug.online", {**_BLOCKS, "zone": ("zone", Zone.NORMAL)},
           lambda m, a: _each_block(m, a, lambda block: m.hotplug.online(block, a["zone"])),
           "online a memory block, or every block of start+size, into ZONE_NORMAL or ZONE_MOVABLE",
           sections=True),
        Op("hotplug.offline", dict(_BLOCKS),
           lambda m, a: _each_block(m, a, m.hotplug.offline),
           "offline a memory block, or every block of start+size (-EBUSY if pages in it are in use)",
           sections=True),
        Op("hotplug.remove", dict(_RANGE), _hot_remove,
           "remove_memory: offline blocks removed and their memmap freed", sections=True),
        Op("devdax.add", {**_RANGE, **_NODE, "align": ("size", None), "altmap": ("bool", False)},
           lambda m, a: add_devdax_step(m, **a),
           "memremap_pages of device-dax memory with compound pages of align bytes; vmemmap dedup where the kernel does it"),
        Op("devdax.remove", dict(_RANGE), lambda m, a: remove_devdax_step(m, **a),
           "memunmap_pages of the device pagemap that starts at start (size must match)"),
    )
}

_TOP_KEYS = ("machine", "memory", "hugetlb", "hotplug", "steps")
_MACHINE_KEYS = ("arch", "variant", "kernel", "features")
_MEMORY_KEYS = ("node", "start", "size")
_HUGETLB_KEYS = {"optimize_vmemmap": ("bool", False), "boot": ("boot", ())}
_BOOT_KEYS = {"size": ("hugepage", REQUIRED), "count": ("count", REQUIRED), "node": ("node", None)}
_HOTPLUG_KEYS = {"memmap_on_memory": ("mode", MemmapOnMemory.N)}


# -- locating keys in the text ------------------------------------------------------------------

class _Locator:
    """Finds the line of a key path such as ``memory[1].size`` by scanning the scenario text.

    Each part of the path is looked up as ``key =`` in the current table (deeper parts then sit
    in its inline value; ``boot[1]`` there is the line of the array's second inline table), or
    else as the header of a sub-table (``[machine.features]``, the n-th ``[[memory]]``). Falls
    back to the deepest header found.
    """

    _HEADER = re.compile(r"^\s*\[")

    def __init__(self, text):
        self.lines = text.splitlines()

    def line(self, path):
        scope, best, names = -1, None, []  # scope: the line index of the current table's header
        for key, index in re.findall(r"([^.\[\]]+)(?:\[(\d+)\])?", path):
            found = None if scope is None else self._key(scope, key)
            if found is not None:
                return found if index == "" else self._item(found - 1, int(index))
            names.append(key)
            headers = self._headers(names, array=True) if index else self._headers(names) or self._headers(names, array=True)
            headers = headers[int(index or 0):]
            scope = headers[0] if headers else None  # None: a table whose header is implicit
            best = best if scope is None else scope
        return None if best is None else best + 1

    def _item(self, start, index):
        """1-based line of inline table ``index`` of the array value that begins on line index ``start``."""
        seen = 0
        for i in range(start, len(self.lines)):
            if i > start and self._HEADER.match(self.lines[i]):
                break
            seen += self.lines[i].count("{")
            if seen > index:
                return i + 1
        return start + 1

    def _headers(self, names, array=False):
        """Line indexes of the ``[a.b]`` (or ``[[a]]``) headers of the dotted table ``names``."""
        dotted = r"\s*\.\s*".join(re.escape(n) for n in names)
        pattern = rf"^\s*\[\[\s*{dotted}\s*\]\]" if array else rf"^\s*\[\s*{dotted}\s*\](?!\])"
        regex = re.compile(pattern)
        return [i for i, text in enumerate(self.lines) if regex.match(text)]

    def _key(self, scope, key):
        """1-based line of ``key =`` after line index ``scope`` (-1: top) and before the next header."""
        regex = re.compile(rf"^\s*(\"?){re.escape(key)}\1\s*=")
        for i in range(scope + 1, len(self.lines)):
            if self._HEADER.match(self.lines[i]):
                return None
            if regex.match(self.lines[i]):
                return i + 1
        return None


# -- validation ---------------------------------------------------------------------------------

def load_scenario(path, registry=None) -> Scenario:
    """Read and validate the scenario file at ``path`` (nothing is simulated)."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ScenarioError("file", f"not UTF-8 text ({error.reason} at byte {error.start})", path=str(path)) from None
    return parse_scenario(text, path=str(path), registry=registry)


def parse_scenario(text, path=None, registry=None) -> Scenario:
    """Validate scenario ``text``; ``registry`` (default: a fresh :class:`Registry`) finds the arch."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        message = str(error)
        found = re.search(r"\(at line (\d+), column (\d+)\)", message)
        line = int(found.group(1)) if found else None
        if found:
            message = message[: found.start()].strip() + f" (column {found.group(2)})"
        raise ScenarioError("syntax", message, line, path) from None
    return _Validator(text, path, registry or Registry()).scenario(doc)


def _type_name(value):
    return {bool: "boolean", int: "integer", float: "float", str: "string", dict: "table", list: "array"}.get(
        type(value), type(value).__name__
    )


class _Validator:
    """Turns the parsed TOML document into a :class:`Scenario`, raising at the first error."""

    def __init__(self, text, path, registry):
        self.locator = _Locator(text)
        self.path = path
        self.registry = registry
        self.sparse = None  # the arch's SparseGeometry, once [machine] is read
        self.nodes = ()  # the nodes of [[memory]], once read

    def error(self, key, message):
        return ScenarioError(key, message, self.locator.line(key), self.path)

    def known_keys(self, table, known, where):
        for key in table:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise self.error(f"{where}.{key}" if where else key, f"unknown key (expected one of: {', '.join(known)}){hint}")

    def expect(self, key, value, kind, what):
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.error(key, f"must be {what}, got {_type_name(value)} {value!r}")
        return value

    def size(self, key, value):
        try:
            return parse_size(value)
        except BadRequest as error:
            raise self.error(key, str(error)) from None

    def node(self, key, value):
        self.expect(key, value, int, "a node number (integer)")
        if value < 0:
            raise self.error(key, f"node {value} is negative")
        return value

    def hugepage(self, key, value):
        """A HugeTLB page size: a power of two above the page size (whether the arch offers it is
        known only once the machine is built)."""
        size = self.size(key, value)
        if size & (size - 1) or size <= self.sparse.page_size:
            raise self.error(key, f"{format_size(size)} cannot be a HugeTLB page size: a power of two above the "
                                  f"{format_size(self.sparse.page_size)} page size is needed (e.g. \"2M\", \"1G\")")
        return size

    def count(self, key, value):
        self.expect(key, value, int, "a count (integer)")
        if value < 0:
            raise self.error(key, f"count {value} is negative")
        return value

    def block(self, key, value):
        self.expect(key, value, int, "a memory block id (integer)")
        if value < 0:
            raise self.error(key, f"memory block {value} is negative")
        return value

    def zone(self, key, value):
        try:
            return Zone(value)
        except ValueError:
            names = " or ".join(repr(zone.value) for zone in Zone)
            raise self.error(key, f"must be {names}, got {_type_name(value)} {value!r}") from None

    def mode(self, key, value):
        """``memory_hotplug.memmap_on_memory``: one of MODES, or a boolean for Y/N."""
        if isinstance(value, bool):
            return MemmapOnMemory.Y if value else MemmapOnMemory.N
        try:
            return MemmapOnMemory(value)
        except ValueError:
            names = ", ".join(repr(mode.value) for mode in MemmapOnMemory)
            raise self.error(key, f"must be {names} or true/false, got {_type_name(value)} {value!r}") from None

    def fields(self, table, keys, where, what=""):
        """The values of ``table`` checked against ``keys`` (name -> (kind, default)), defaults filled in."""
        self.known_keys(table, list(keys), where)
        values = {}
        for name, (kind, default) in keys.items():
            key = f"{where}.{name}"
            if name not in table:
                if default is REQUIRED:
                    raise self.error(key, f"missing required key{what} (keys: {', '.join(keys)})")
                values[name] = default
            elif kind == "bool":
                values[name] = self.expect(key, table[name], bool, "true or false")
            else:
                values[name] = getattr(self, kind)(key, table[name])
        return values

    def scenario(self, doc) -> Scenario:
        self.known_keys(doc, _TOP_KEYS, "")
        machine, self.sparse = self.machine(doc.get("machine"))
        memory = self.memory(doc.get("memory"))
        self.nodes = sorted({m.node for m in memory})
        hugetlb = self.hugetlb(doc["hugetlb"]) if "hugetlb" in doc else None
        hotplug = self.hotplug(doc["hotplug"]) if "hotplug" in doc else None
        raw_steps = doc.get("steps", [])
        if not isinstance(raw_steps, list) or not all(isinstance(s, dict) for s in raw_steps):
            raise self.error("steps", "must be an array of tables ([[steps]])")
        steps = tuple(self.step(i, raw) for i, raw in enumerate(raw_steps))
        return Scenario(machine, memory, steps, self.path, hugetlb, hotplug)

    def hugetlb(self, table):
        self.expect("hugetlb", table, dict, "a table ([hugetlb])")
        return HugetlbSpec(**self.fields(table, _HUGETLB_KEYS, "hugetlb"))

    def hotplug(self, table):
        self.expect("hotplug", table, dict, "a table ([hotplug])")
        return HotplugSpec(**self.fields(table, _HOTPLUG_KEYS, "hotplug"))

    def boot(self, key, entries):
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise self.error(key, 'must be an array of tables such as [{ size = "1G", count = 2 }]')
        boot = []
        for i, entry in enumerate(entries):
            pages = BootPages(**self.fields(entry, _BOOT_KEYS, f"{key}[{i}]"))
            if pages.node is not None and pages.node not in self.nodes:
                raise self.error(f"{key}[{i}].node", f"node {pages.node} has no [[memory]] (nodes: {', '.join(map(str, self.nodes))})")
            boot.append(pages)
        return tuple(boot)

    def machine(self, table):
        if table is None:
            raise self.error("machine", "a [machine] table with at least arch = \"...\" is required")
        self.expect("machine", table, dict, "a table ([machine])")
        self.known_keys(table, _MACHINE_KEYS, "machine")
        if "arch" not in table:
            raise self.error("machine.arch", "missing required key (e.g. arch = \"x86_64\")")
        arch = self.expect("machine.arch", table["arch"], str, "a string")
        if arch not in self.registry.arches:
            broken = "".join(f"\n  {error}" for error in self.registry.errors)
            raise self.error(
                "machine.arch",
                f"no plugin provides architecture {arch!r} (found: {', '.join(self.registry.arches) or 'none'})"
                + (f"; plugins that failed to load:{broken}" if broken else ""),
            )
        plugin = self.registry.get(arch)
        info = plugin.info

        variant = self.variant(info, table.get("variant"))
        kernel = table.get("kernel", DEFAULT_PROFILE)
        if isinstance(kernel, float):
            raise self.error("machine.kernel", f"must be a quoted string such as \"6.12\", got the float {kernel} (unquoted, 6.10 reads as 6.1)")
        self.expect("machine.kernel", kernel, str, "a string such as \"6.12\"")
        if kernel not in PROFILES:
            raise self.error("machine.kernel", f"unknown kernel profile {kernel!r} (known: {', '.join(PROFILES)})")

        features = table.get("features", {})
        self.expect("machine.features", features, dict, "a table such as { pse = true }")
        known = [f.name for f in info.features]
        for name, value in features.items():
            if name not in known:
                raise self.error(f"machine.features.{name}", f"{arch} has no such feature (features: {', '.join(known) or 'none'})")
            self.expect(f"machine.features.{name}", value, bool, "true or false")

        sparse = ArchHooks(plugin.name, plugin.plugin).sparse_geometry(variant, PROFILES[kernel])
        return MachineSpec(arch, variant.name, kernel, features), sparse

    def variant(self, info, wanted):
        if wanted is not None:
            if isinstance(wanted, dict):
                options = sorted({key for v in info.variants for key in v.options})
                for key, value in wanted.items():
                    if key not in options:
                        raise self.error(f"machine.variant.{key}", f"unknown variant option (options of {info.name}: {', '.join(options)})")
                    self.expect(f"machine.variant.{key}", value, (str, int), "a string or integer")
            else:
                self.expect("machine.variant", wanted, str, "a variant name or a table of options")
        try:
            return info.variant(wanted)
        except ValueError as error:
            raise self.error("machine.variant", str(error)) from None

    def memory(self, ranges):
        if ranges is None:
            raise self.error("memory", "at least one [[memory]] range is required")
        if not isinstance(ranges, list) or not all(isinstance(r, dict) for r in ranges) or not ranges:
            raise self.error("memory", "must be a non-empty array of tables ([[memory]])")
        sparse = self.sparse
        limit = 1 << sparse.max_physmem_bits
        page = sparse.page_size
        out, cursor = [], 0
        for i, table in enumerate(ranges):
            key = f"memory[{i}]"
            self.known_keys(table, _MEMORY_KEYS, key)
            if "size" not in table:
                raise self.error(f"{key}.size", "missing required key (e.g. size = \"16G\")")
            node = self.node(f"{key}.node", table.get("node", 0))
            start = self.size(f"{key}.start", table["start"]) if "start" in table else cursor
            size = self.size(f"{key}.size", table["size"])
            if size == 0:
                raise self.error(f"{key}.size", "must be positive")
            for name, value in (("start", start), ("size", size)):
                if value % page:
                    raise self.error(f"{key}.{name}", f"{value:#x} is not a multiple of the page size ({format_size(page)})")
            if start + size > limit:
                raise self.error(
                    f"{key}.start" if start >= limit else f"{key}.size",
                    f"range [{human_size(start)}, {human_size(start + size)}) ends past the {sparse.max_physmem_bits}-bit "
                    f"physical limit ({format_size(limit)}) of this arch and variant",
                )
            where = f"{key}.start" if "start" in table else key
            shift = sparse.section_size_bits
            for j, other in enumerate(out):
                if start < other.start + other.size and other.start < start + size:
                    raise self.error(
                        where,
                        f"range [{human_size(start)}, {human_size(start + size)}) overlaps memory[{j}] "
                        f"[{human_size(other.start)}, {human_size(other.start + other.size)})",
                    )
                if node != other.node and start >> shift <= (other.start + other.size - 1) >> shift \
                        and other.start >> shift <= (start + size - 1) >> shift:
                    raise self.error(
                        where,
                        f"node {node} shares a {format_size(sparse.section_size)} section with memory[{j}] of node "
                        f"{other.node}: node boundaries must be section-aligned",
                    )
            out.append(MemorySpec(node, start, size))
            cursor = start + size
        return tuple(out)

    def step(self, index, table):
        key = f"steps[{index}]"
        if "op" not in table:
            raise self.error(f"{key}.op", f"missing required key (ops: {', '.join(OPS)})")
        name = self.expect(f"{key}.op", table["op"], str, "a string")
        if name not in OPS:
            close = difflib.get_close_matches(name, OPS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise self.error(f"{key}.op", f"unknown op {name!r} (ops: {', '.join(OPS)}){hint}")
        op = OPS[name]
        args = self.fields({k: v for k, v in table.items() if k != "op"}, op.keys, key, f" of {name}")
        if "block" in args:
            self.block_or_range(key, args, name)
        args = {k: v for k, v in args.items() if v is not None}
        if "start" in args:
            self.range(key, args, op.sections)
        return Step(index, name, args, self.locator.line(key))

    def block_or_range(self, key, args, name):
        """``block``, or ``start`` and ``size``: exactly one of the two ways to name memory blocks."""
        given = [arg for arg in ("start", "size") if args[arg] is not None]
        if args["block"] is not None and given:
            raise self.error(f"{key}.block", f"{name} takes block, or start and size, not both")
        if args["block"] is None and len(given) < 2:
            missing = "start" if given == ["size"] else "size" if given else "block"
            raise self.error(f"{key}.{missing}", f"missing required key of {name} (block, or start and size)")

    def range(self, key, args, sections=False):
        """A step's ``start`` and ``size``: whole sub-sections (or sections) within the physical limit."""
        unit = self.sparse.section_size if sections else 1 << SUBSECTION_SHIFT
        what = "section" if sections else "sub-section"
        for arg in ("start", "size"):
            if args[arg] % unit:
                raise self.error(f"{key}.{arg}", f"{args[arg]:#x} is not a multiple of the {format_size(unit)} {what}")
        if args["size"] == 0:
            raise self.error(f"{key}.size", "must be positive")
        bits = self.sparse.max_physmem_bits
        if args["start"] + args["size"] > 1 << bits:
            raise self.error(f"{key}.size", f"range ends past the {bits}-bit physical limit")


# -- running ------------------------------------------------------------------------------------

@frozen
class StepResult:
    """What one step did: the counters it changed (name -> delta) and what the op reported
    (a hugetlb.resize's ResizeResult fields, the switch's new value, a hotplug.add's AddResult
    fields, the blocks a hotplug.online/offline/remove acted on; empty for memmap ops)."""

    index: int
    op: str
    args: dict
    line: int | None
    changes: dict
    result: dict = attrs.field(factory=dict)


class RunError(VmemcoreError):
    """A simulation failure at boot or in a step; ``cause`` is the engine's error, ``machine`` and
    ``results`` are the state before the failing operation (operations are transactional); its
    ``errno`` is the cause's."""

    def __init__(self, where, cause, machine=None, results=()):
        super().__init__(f"{where}: {type(cause).__name__}: {cause}", errno=cause.errno)
        self.where = where
        self.cause = cause
        self.machine = machine
        self.results = list(results)


def run_scenario(scenario, progress=None, registry=None):
    """Boot the scenario's machine and run its steps; returns ``(machine, [StepResult, ...])``.

    ``progress(step)`` is called before each step. A :class:`VmemcoreError` at boot or in a step
    is raised as :class:`RunError` naming where it happened.
    """
    spec = scenario.machine
    memory = [{"node": m.node, "start": m.start, "size": m.size} for m in scenario.memory]
    hugetlb = attrs.asdict(scenario.hugetlb) if scenario.hugetlb else None
    hotplug = attrs.asdict(scenario.hotplug) if scenario.hotplug else None
    try:
        machine = Machine(spec.arch, spec.variant, spec.kernel, memory, dict(spec.features), hugetlb, hotplug,
                          registry=registry)
    except VmemcoreError as error:
        raise RunError(f"{scenario.path + ': ' if scenario.path else ''}boot", error) from error
    results = []
    for step in scenario.steps:
        if progress is not None:
            progress(step)
        before = machine.counters()
        try:
            with machine.transaction():
                result = OPS[step.op].run(machine, step.args)
        except VmemcoreError as error:
            where = ":".join(str(p) for p in (scenario.path, step.line) if p is not None)
            raise RunError(f"{where + ': ' if where else ''}steps[{step.index}] ({step.op})", error, machine, results) from error
        after = machine.counters()
        changes = {k: after.get(k, 0) - before.get(k, 0) for k in sorted(set(before) | set(after))}
        results.append(StepResult(step.index, step.op, dict(step.args), step.line,
                                  {k: d for k, d in changes.items() if d}, result or {}))
    return machine, results
