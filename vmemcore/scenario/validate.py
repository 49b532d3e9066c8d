"""Scenario validation: TOML text to a :class:`Scenario`, or a :class:`ScenarioError` naming the key
path and its line. The machine's tables are checked by :class:`ConfigValidator`, the steps here."""

from errno import errorcode
import re
import sys
import tomllib

from ..config import ConfigValidator, type_name
from ..errors import ScenarioError, did_you_mean
from ..geometry import SUBSECTION_SHIFT
from ..overrides import apply_overrides, origin_of
from ..physmem import Zone
from ..plugins import Registry
from ..units import format_size
from .locate import Locator
from .ops import OPS
from .spec import Scenario, Step

_TOP_KEYS = ("machine", "memory", "hugetlb", "hotplug", "steps")


def load_scenario(path, registry=None, overrides=()) -> Scenario:
    """Read and validate the scenario file at ``path``, standard input when ``"-"`` (its messages
    then say ``<stdin>``), with the keys ``overrides`` set (:mod:`vmemcore.overrides`); nothing is
    simulated."""
    if str(path) == "-":
        data, path = sys.stdin.buffer.read(), "<stdin>"
    else:
        with open(path, "rb") as f:
            data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ScenarioError("file", f"not UTF-8 text ({error.reason} at byte {error.start})", path=str(path)) from None
    return parse_scenario(text, path=str(path), registry=registry, overrides=overrides)


def parse_scenario(text, path=None, registry=None, overrides=()) -> Scenario:
    """Validate scenario ``text`` with the :class:`~vmemcore.overrides.Override` values set;
    ``registry`` (default: a fresh :class:`Registry`) finds the arch."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        message = str(error)
        found = re.search(r"\(at line (\d+), column (\d+)\)", message)
        line = int(found.group(1)) if found else None
        if found:
            message = message[: found.start()].strip() + f" (column {found.group(2)})"
        raise ScenarioError("syntax", message, line, path) from None
    apply_overrides(doc, overrides, path)
    return _Validator(text, path, registry or Registry(), overrides).scenario(doc)


class _Validator(ConfigValidator):
    """Turns the parsed TOML document into a :class:`Scenario`, raising at the first error."""

    def __init__(self, text, path, registry, overrides=()):
        super().__init__(registry)
        self.locator = Locator(text)
        self.path = path
        self.overrides = overrides

    def error(self, key, message):
        origin = origin_of(self.overrides, key)
        if origin:  # the value came from the command line: no line of the file to name
            return ScenarioError(key, f"{message} ({origin})", None, self.path)
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
            raise self.error(f"{key}.op", f"unknown op {name!r} (ops: {', '.join(OPS)}){did_you_mean(name, OPS)}")
        op = OPS[name]
        expect_error = None
        if "expect_error" in table:  # any op: the step must fail with this errno (the story of a failure)
            expect_error = self.expect(f"{key}.expect_error", table["expect_error"], str, "an errno name such as \"ENOMEM\"")
            if expect_error not in errorcode.values():
                raise self.error(f"{key}.expect_error", f"{expect_error!r} is not an errno name (such as \"ENOMEM\")")
        args = self.fields({k: v for k, v in table.items() if k not in ("op", "expect_error")}, op.keys, key,
                           f" of {name}")
        if "block" in args:
            self.block_or_range(key, args, name)
        args = {k: v for k, v in args.items() if v is not None}
        if "start" in args:
            self.range(key, args, op.sections)
        return Step(index, name, args, self.locator.line(key), expect_error)

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
