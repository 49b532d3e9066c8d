"""Scenario validation: TOML text to a :class:`Scenario`, or a :class:`ScenarioError` naming the key
path and its line. The machine's tables are checked by :class:`ConfigValidator`, the steps here."""

from errno import errorcode
import os
import re
import stat
import sys
import tomllib

from ..config import ConfigValidator
from ..errors import ScenarioError, did_you_mean
from ..overrides import apply_overrides, origin_of
from ..plugins import Registry
from .locate import Locator
from .ops import OPS
from .spec import Scenario, Step

_TOP_KEYS = ("machine", "memory", "hugetlb", "hotplug", "steps")


MAX_SCENARIO_BYTES = 4 << 20  # a scenario is a page of text; this is far beyond any real one


def load_scenario(path, registry=None, overrides=()) -> Scenario:
    """Read (:func:`read_scenario`) and validate the scenario at ``path`` with the keys
    ``overrides`` set (:mod:`vmemcore.overrides`). Nothing is simulated."""
    text, path = read_scenario(path)
    return parse_scenario(text, path=path, registry=registry, overrides=overrides)


def read_scenario(path) -> tuple:
    """``(text, name)`` of the scenario at ``path``: a file or a pipe of at most
    MAX_SCENARIO_BYTES, standard input when ``"-"`` (named ``<stdin>`` in messages); a device
    (``/dev/zero``), anything longer or text that is not UTF-8 is a :class:`ScenarioError`."""
    if str(path) == "-":
        data, path = sys.stdin.buffer.read(MAX_SCENARIO_BYTES + 1), "<stdin>"
    else:
        with open(path, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode)):
                raise ScenarioError("file", "not a regular file or a pipe", path=str(path))
            data = f.read(MAX_SCENARIO_BYTES + 1)
    if len(data) > MAX_SCENARIO_BYTES:
        raise ScenarioError("file", f"longer than {MAX_SCENARIO_BYTES >> 20} MiB: not a scenario", path=str(path))
    try:
        return data.decode("utf-8"), str(path)
    except UnicodeDecodeError as error:
        raise ScenarioError("file", f"not UTF-8 text ({error.reason} at byte {error.start})", path=str(path)) from None


def parse_scenario(text, path=None, registry=None, overrides=()) -> Scenario:
    """Validate scenario ``text`` with the :class:`~vmemcore.overrides.Override` values set;
    ``registry`` (default: a fresh :class:`Registry`) finds the arch."""
    try:
        doc = tomllib.loads(text)
    except RecursionError:  # tomllib parses nested arrays and inline tables recursively
        raise ScenarioError("syntax", "values nested too deeply", path=path) from None
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
