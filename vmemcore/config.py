"""What a machine is built from: :class:`MachineConfig`, validated once, at the boundary.

:func:`machine_config` makes one from :class:`~vmemcore.machine.Machine`'s keywords; the scenario
validator makes one from a scenario's ``[machine]``, ``[[memory]]``, ``[hugetlb]`` and ``[hotplug]``
tables. Both run :class:`ConfigValidator`, so a setting is checked the same way wherever it comes
from; the error names its key path (``memory[1].size``), a :class:`BadRequest` here and a
:class:`ScenarioError` with the line in a scenario. ``Machine.from_config`` boots from the result.
The same validator (``Machine.rules``) checks the arguments of the Python API's operations, so a
step's ``node`` or ``size`` and the API's are held to one set of rules.
"""

import reprlib
from types import MappingProxyType

import attrs
from attrs import frozen

from .errors import BadRequest, PluginError, did_you_mean
from .geometry import SUBSECTION_SHIFT
from .hotplug import MemmapOnMemory
from .archtypes import RemapStrategy
from .physmem import Zone
from .plugins import Registry
from .profiles import DEFAULT_PROFILE, get_profile, kernel_error
from .units import MiB, format_size, human_size, parse_size

REQUIRED = object()  # marks a key without a default
DEFAULT_KERNEL_IMAGE = 32 * MiB  # [machine] kernel_image: _text to _end of a typical distribution kernel


@frozen
class MemoryRange:
    """Present memory of one node at boot: ``[start, start + size)`` in bytes."""

    node: int = attrs.field(validator=attrs.validators.ge(0))
    start: int = attrs.field(converter=parse_size)
    size: int = attrs.field(converter=parse_size)

    @size.validator
    def _positive(self, attribute, value):
        if value <= 0:
            raise BadRequest("memory size must be positive")


@frozen
class BootPages:
    """One ``[hugetlb] boot`` entry: ``count`` HugeTLB pages of ``size`` bytes reserved at boot
    (``hugepages=``), on ``node`` or interleaved over the nodes when None."""

    size: int
    count: int
    node: int | None = None


@frozen
class HugetlbSpec:
    """The ``[hugetlb]`` settings: the boot-time HVO switch, the boot pages, and the what-if remap
    strategy (None: the kernel's, where the kernel has HVO; a strategy runs HVO even where the
    kernel vetoes it)."""

    optimize_vmemmap: bool = False
    boot: tuple = attrs.field(default=(), converter=tuple)
    vmemmap_remap: RemapStrategy | None = attrs.field(default=None, converter=attrs.converters.optional(RemapStrategy))


@frozen
class HotplugSpec:
    """The ``[hotplug]`` settings: the boot parameter ``memory_hotplug.memmap_on_memory``."""

    memmap_on_memory: MemmapOnMemory = attrs.field(default=MemmapOnMemory.N, converter=MemmapOnMemory)


@frozen
class MachineConfig:
    """A validated machine: arch, variant and kernel profile by name, the features asked for (the
    arch's defaults fill the rest), boot memory, and the hugetlb and hotplug settings (None: not
    given, the defaults). Make it with :func:`machine_config` or a scenario: :class:`Machine` trusts it."""

    arch: str
    variant: str
    kernel: str
    memory: tuple = attrs.field(converter=tuple)
    features: MappingProxyType = attrs.field(factory=dict, converter=lambda d: MappingProxyType(dict(d)))
    hugetlb: HugetlbSpec | None = None
    hotplug: HotplugSpec | None = None
    # the firmware's sizes asked for (the arch's defaults fill the rest): name -> bytes, or None
    firmware: MappingProxyType = attrs.field(factory=dict, converter=lambda d: MappingProxyType(dict(d)))
    kernel_image: int = DEFAULT_KERNEL_IMAGE  # bytes memblock reserves for the kernel image (0: none)


def place_kernel_image(nr_pages, memory, page_size, kernel_start=None):
    """Where the kernel image of ``nr_pages`` pages lies, ``(first pfn, node)``, or None when no
    ``memory`` range holds it: at ``kernel_start`` (the arch's load address without KASLR, e.g.
    x86_64's ``CONFIG_PHYSICAL_START``; None: the start of RAM), or, in the lowest range that
    holds it above that address, at the range's start (x86's decompressor runs a kernel loaded
    higher where it was loaded, never below ``LOAD_PHYSICAL_ADDR``)."""
    for item in sorted(memory, key=lambda m: m.start):
        start = max(item.start, kernel_start or 0) // page_size
        if start + nr_pages <= (item.start + item.size) // page_size:
            return start, item.node
    return None


def machine_config(arch="x86_64", variant=None, kernel=None, memory=({"size": "16G"},), features=None,
                   hugetlb=None, hotplug=None, registry=None, firmware=None, kernel_image=None) -> MachineConfig:
    """The :class:`MachineConfig` of :class:`Machine`'s keywords (they take what the scenario
    tables take, and :class:`MemoryRange` items in ``memory``); ``registry`` finds the arch."""
    registry = registry or Registry()
    if isinstance(arch, str):
        registry.get(arch)  # an unknown arch is a PluginError, as the registry reports it
    table = {"arch": arch}
    for key, value in (("variant", variant), ("kernel", kernel), ("features", features), ("firmware", firmware),
                       ("kernel_image", kernel_image)):
        if value is not None:
            table[key] = value
    if isinstance(memory, (list, tuple)):
        memory = [attrs.asdict(m) if isinstance(m, MemoryRange) else m for m in memory]
    doc = {"machine": table, "memory": memory}
    for key, value in (("hugetlb", hugetlb), ("hotplug", hotplug)):
        if value is not None:
            doc[key] = value
    return ConfigValidator(registry).config(doc)


def type_name(value):
    """The TOML name of a value's type."""
    return {bool: "boolean", int: "integer", float: "float", str: "string", dict: "table", list: "array"}.get(
        type(value), type(value).__name__
    )


_SHOW = reprlib.Repr()
_SHOW.maxlevel, _SHOW.maxstring, _SHOW.maxother, _SHOW.maxlong = 3, 60, 60, 40


def show(value) -> str:
    """``repr(value)`` cut short: deep nesting and huge values stay readable (and never recurse)."""
    return _SHOW.repr(value)


MAX_MEMORY_RANGES = 4096
_MACHINE_KEYS = ("arch", "variant", "kernel", "features", "firmware", "kernel_image")
_MEMORY_KEYS = ("node", "start", "size")
_HUGETLB_KEYS = {"optimize_vmemmap": ("bool", False), "vmemmap_remap": ("remap", None), "boot": ("boot", ())}
_BOOT_KEYS = {"size": ("hugepage", REQUIRED), "count": ("count", REQUIRED), "node": ("node", None)}
_HOTPLUG_KEYS = {"memmap_on_memory": ("mode", MemmapOnMemory.N)}


class ConfigValidator:
    """Checks machine settings given as TOML-shaped tables, and the arguments of operations,
    raising at the first error :meth:`error` makes (a subclass adds where the key is)."""

    def __init__(self, registry, sparse=None):
        self.registry = registry
        self.sparse = sparse  # the arch's SparseGeometry, once [machine] is read
        self.geometry_of = lambda memory: self.sparse  # the SparseGeometry of a machine with that memory
        self.nodes = ()  # the nodes of [[memory]], once read

    def error(self, key, message):
        return BadRequest(f"{key}: {message}")

    def config(self, doc) -> MachineConfig:
        """The config of ``doc``'s ``machine``, ``memory``, ``hugetlb`` and ``hotplug`` tables."""
        arch, variant, kernel, features, firmware, kernel_image = self.machine(doc.get("machine"))
        memory = self.memory(doc.get("memory"))
        self.kernel_image(kernel_image, memory, self.registry.get(arch).info.kernel_start)
        self.nodes = sorted({m.node for m in memory})
        hugetlb = self.hugetlb(doc["hugetlb"]) if "hugetlb" in doc else None
        hotplug = self.hotplug(doc["hotplug"]) if "hotplug" in doc else None
        return MachineConfig(arch, variant, kernel, memory, features, hugetlb, hotplug, firmware, kernel_image)

    # -- values ---------------------------------------------------------------------------------
    def known_keys(self, table, known, where):
        for key in table:
            if key not in known:
                raise self.error(f"{where}.{key}" if where else key,
                                 f"unknown key (expected one of: {', '.join(known)}){did_you_mean(key, known)}")

    def expect(self, key, value, kind, what):
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.error(key, f"must be {what}, got {type_name(value)} {show(value)}")
        return value

    def flag(self, key, value):
        return self.expect(key, value, bool, "true or false")

    def size(self, key, value):
        try:
            return parse_size(value)
        except BadRequest as error:
            raise self.error(key, str(error)) from None

    def natural(self, key, value, what, noun):
        """A non-negative integer, ``what`` when it is not an integer, ``noun`` when negative."""
        self.expect(key, value, int, what)
        if value < 0:
            raise self.error(key, f"{noun} {value} is negative")
        return value

    def node(self, key, value):
        return self.natural(key, value, "a node number (integer)", "node")

    def hugepage(self, key, value):
        """A HugeTLB page size: a power of two above the page size (whether the arch offers it is
        known only once the machine is built)."""
        size = self.size(key, value)
        if size & (size - 1) or size <= self.sparse.page_size:
            raise self.error(key, f"{format_size(size)} cannot be a HugeTLB page size: a power of two above the "
                                  f"{format_size(self.sparse.page_size)} page size is needed (e.g. \"2M\", \"1G\")")
        return size

    def count(self, key, value):
        return self.natural(key, value, "a count (integer)", "count")

    def pfn(self, key, value):
        return self.natural(key, value, "a page frame number (integer)", "pfn")

    def block(self, key, value):
        return self.natural(key, value, "a memory block id (integer)", "memory block")

    def zone(self, key, value):
        try:
            return Zone(value)
        except (ValueError, TypeError):
            names = " or ".join(repr(zone.value) for zone in Zone)
            raise self.error(key, f"must be {names}, got {type_name(value)} {show(value)}") from None

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

    def mode(self, key, value):
        """``memory_hotplug.memmap_on_memory``: a :class:`MemmapOnMemory` value, or a boolean for Y/N."""
        if isinstance(value, bool):
            return MemmapOnMemory.Y if value else MemmapOnMemory.N
        try:
            return MemmapOnMemory(value)
        except (ValueError, TypeError):
            names = ", ".join(repr(mode.value) for mode in MemmapOnMemory)
            raise self.error(key, f"must be {names} or true/false, got {type_name(value)} {show(value)}") from None

    def remap(self, key, value):
        """``[hugetlb] vmemmap_remap``: a :class:`RemapStrategy` name (a what-if)."""
        try:
            return RemapStrategy(value)
        except ValueError:
            names = ", ".join(repr(strategy.value) for strategy in RemapStrategy)
            raise self.error(key, f"must be one of {names}, got {type_name(value)} {value!r}") from None

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
                values[name] = self.flag(key, table[name])
            else:
                values[name] = getattr(self, kind)(key, table[name])
        return values

    # -- tables ---------------------------------------------------------------------------------
    def machine(self, table):
        """``(arch, variant name, kernel name, features, firmware, kernel image bytes)`` of
        ``[machine]``; sets ``self.sparse``."""
        if table is None:
            raise self.error("machine", "a [machine] table with at least arch = \"...\" is required")
        self.expect("machine", table, dict, "a table ([machine])")
        self.known_keys(table, _MACHINE_KEYS, "machine")
        if "arch" not in table:
            raise self.error("machine.arch", "missing required key (e.g. arch = \"x86_64\")")
        arch = self.expect("machine.arch", table["arch"], str, "a string")
        if arch not in self.registry.arches:
            if self.registry.broken:  # the arch may be the broken or contested one: a plugin error
                raise PluginError(arch, None, self.registry.why_missing(arch))
            raise self.error("machine.arch", self.registry.why_missing(arch))
        plugin = self.registry.get(arch)
        info = plugin.info

        variant = self.variant(info, table.get("variant"))
        kernel = table.get("kernel", DEFAULT_PROFILE)
        if isinstance(kernel, float):
            raise self.error("machine.kernel", f"must be a quoted string such as \"6.12\", got the float {kernel} (unquoted, 6.10 reads as 6.1)")
        self.expect("machine.kernel", kernel, str, "a string such as \"6.12\"")
        if kernel_error(kernel):
            raise self.error("machine.kernel", kernel_error(kernel))

        features = table.get("features", {})
        self.expect("machine.features", features, dict, "a table such as { pse = true }")
        known = [f.name for f in info.features]
        for name, value in features.items():
            if name not in known:
                raise self.error(f"machine.features.{name}", f"{arch} has no such feature (features: {', '.join(known) or 'none'})")
            self.expect(f"machine.features.{name}", value, bool, "true or false")

        firmware = self.firmware(info, table.get("firmware", {}))
        kernel_image = self.size("machine.kernel_image", table.get("kernel_image", DEFAULT_KERNEL_IMAGE))
        self.geometry_of = lambda memory: plugin.hooks().sparse_geometry(variant, get_profile(kernel), memory)
        self.sparse = self.geometry_of(())
        return arch, variant.name, kernel, features, firmware, kernel_image

    def kernel_image(self, size, memory, kernel_start):
        """``[machine] kernel_image`` must fit in one ``[[memory]]`` range where the arch loads it."""
        page = self.sparse.page_size
        if size and place_kernel_image(-(-size // page), memory, page, kernel_start) is None:
            where = f"at or above {human_size(kernel_start)}, where this arch loads it" if kernel_start else "anywhere"
            raise self.error("machine.kernel_image", f"a kernel image of {human_size(size)} fits in no [[memory]] range {where}")

    def firmware(self, info, table):
        """``[machine] firmware``: each a size the arch's firmware describes, or "none" (absent)."""
        self.expect("machine.firmware", table, dict, "a table such as { lmb_size = \"256M\" }")
        known = [f.name for f in info.firmware]
        values = {}
        for name, value in table.items():
            key = f"machine.firmware.{name}"
            if name not in known:
                raise self.error(key, f"{info.name} has no such firmware value (values: {', '.join(known) or 'none'})")
            values[name] = None if value == "none" else self.size(key, value)
        return values

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
        if len(ranges) > MAX_MEMORY_RANGES:  # each is checked against the others: keep that bounded
            raise self.error("memory", f"{len(ranges):,} ranges: at most {MAX_MEMORY_RANGES:,} (a firmware memory map "
                                       "lists far fewer; merge adjacent ranges of one node)")
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
            out.append(MemoryRange(node, start, size))
            cursor = start + size
        # the vmemmap's place and size may follow the machine's memory (s390 setup_kernel_memory_layout())
        sparse = self.geometry_of(tuple(out))
        for i, item in enumerate(out):
            if (item.start + item.size) // page > sparse.vmemmap_max_pfn:
                raise self.error(
                    f"memory[{i}].size",
                    f"range [{human_size(item.start)}, {human_size(item.start + item.size)}) has struct pages outside "
                    f"the {format_size(sparse.vmemmap_size)} vmemmap of this arch and variant, which describes the "
                    f"first {format_size(sparse.vmemmap_max_pfn * page)} of physical address space",
                )
        return tuple(out)

    def hugetlb(self, table):
        self.expect("hugetlb", table, dict, "a table ([hugetlb])")
        return HugetlbSpec(**self.fields(table, _HUGETLB_KEYS, "hugetlb"))

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

    def hotplug(self, table):
        self.expect("hotplug", table, dict, "a table ([hotplug])")
        return HotplugSpec(**self.fields(table, _HOTPLUG_KEYS, "hotplug"))
