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

from .config import REQUIRED, BootPages, ConfigValidator, HotplugSpec, HugetlbSpec, MachineConfig, type_name
from .errors import BadRequest, ScenarioError, VmemcoreError
from .geometry import SUBSECTION_SHIFT
from .machine import Machine
from .physmem import Zone
from .plugins import Registry
from .units import format_size
from .zone_device import add_devdax_step, remove_devdax_step


@frozen
class Step:
    """One ``[[steps]]`` entry: its op and its arguments (sizes in bytes, defaults filled in)."""

    index: int
    op: str
    args: MappingProxyType = attrs.field(converter=lambda d: MappingProxyType(dict(d)))
    line: int | None = None


@frozen
class Scenario:
    """A validated scenario, ready for :func:`run_scenario`: the machine to boot and the steps."""

    machine: MachineConfig
    steps: tuple = ()
    path: str | None = None

    @property
    def memory(self):
        return self.machine.memory

    @property
    def hugetlb(self):
        return self.machine.hugetlb

    @property
    def hotplug(self):
        return self.machine.hotplug


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


class _Validator(ConfigValidator):
    """Turns the parsed TOML document into a :class:`Scenario`, raising at the first error."""

    def __init__(self, text, path, registry):
        super().__init__(registry)
        self.locator = _Locator(text)
        self.path = path

    def error(self, key, message):
        return ScenarioError(key, message, self.locator.line(key), self.path)

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
            raise self.error(key, f"must be {names}, got {type_name(value)} {value!r}") from None

    def scenario(self, doc) -> Scenario:
        self.known_keys(doc, _TOP_KEYS, "")
        config = self.config(doc)
        raw_steps = doc.get("steps", [])
        if not isinstance(raw_steps, list) or not all(isinstance(s, dict) for s in raw_steps):
            raise self.error("steps", "must be an array of tables ([[steps]])")
        steps = tuple(self.step(i, raw) for i, raw in enumerate(raw_steps))
        return Scenario(config, steps, self.path)

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
    try:
        machine = Machine.from_config(scenario.machine, registry=registry)
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
