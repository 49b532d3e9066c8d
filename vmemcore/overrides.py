"""Scenario keys set from the command line: ``--set KEY=VALUE`` and the ``--arch``, ``--variant``
and ``--kernel`` shortcuts, applied to the parsed TOML document before it is validated, so a bad
key or value is refused exactly as in a scenario file (docs/sweeps.md).

A key is a path into the document: ``machine.kernel``, ``memory[0].size``, ``steps[2].count``,
``hugetlb.boot[0].count``; ``arch``, ``variant`` and ``kernel`` alone stand for ``machine.*``.
A value is read as a TOML value (``8``, ``true``, ``"16G"``, ``{ paging = "5-level" }``); text
that is not one (``16G``, ``x86_64``, ``6.12.42``) is taken as a string, and so is a number
given to a key that takes a string (``machine.kernel=6.10`` is ``"6.10"``, not the float 6.1)
or any decimal number (no scenario key takes a float).
"""

import re
import tomllib

from attrs import frozen

from .config import type_name
from .errors import BadRequest, ScenarioError

ALIASES = {"arch": "machine.arch", "variant": "machine.variant", "kernel": "machine.kernel"}
_TEXT_KEYS = ("machine.arch", "machine.variant", "machine.kernel")
_PART = r"[A-Za-z_][A-Za-z0-9_-]*(?:\[\d+\])?"
_KEY = re.compile(rf"{_PART}(?:\.{_PART})*")


@frozen
class Override:
    """One scenario key set from the command line: the key path, its value and the option that
    set it as the user wrote it (``--set memory[0].size=16G``), which errors quote."""

    key: str
    value: object
    origin: str


def parse_value(key, text):
    """The value of ``text`` for ``key``, as the module docstring says."""
    text = text.strip()
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text
    if isinstance(value, float) or (key in _TEXT_KEYS and not isinstance(value, (str, dict))):
        return text
    return value


def split_values(text):
    """``V1,V2,...`` split at the commas outside quotes, ``[...]`` and ``{...}``."""
    parts, depth, quote, start = [], 0, None, 0
    for i, char in enumerate(text):
        if quote:
            quote = None if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    return parts + [text[start:]]


def parse_assignment(text, option="--set"):
    """``(key, value text)`` of ``KEY=VALUE``; a bad key is a :class:`BadRequest`."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not _KEY.fullmatch(key):
        raise BadRequest(f"{option} {text!r}: expected KEY=VALUE with KEY a scenario key such as "
                         "machine.kernel, memory[0].size or steps[1].count")
    return ALIASES.get(key, key), value


def override(text, option="--set"):
    """The :class:`Override` of one ``KEY=VALUE``."""
    key, value = parse_assignment(text, option)
    return Override(key, parse_value(key, value), f"{option} {text}")


def command_line(sets=(), arch=None, variant=None, kernel=None):
    """The overrides of ``run``'s options: the shortcuts first, then every ``--set`` in order."""
    shortcuts = [override(f"{name}={value}", f"--{name}") for name, value in
                 (("arch", arch), ("variant", variant), ("kernel", kernel)) if value is not None]
    return shortcuts + [override(text) for text in sets]


def _parts(key):
    """``memory[0].size`` -> ``[("memory", 0), ("size", None)]``."""
    return [(name, None if index == "" else int(index)) for name, index in re.findall(r"([^.\[\]]+)(?:\[(\d+)\])?", key)]


def origin_of(overrides, key):
    """The option that set ``key``, a key inside it or a table holding it; None if none did."""
    def steps(path):
        return [str(p) for pair in _parts(path) for p in pair if p is not None]
    wanted = steps(key)
    for item in reversed(overrides):
        mine = steps(item.key)
        if wanted[: len(mine)] == mine or mine[: len(wanted)] == wanted:
            return item.origin
    return None


def apply_overrides(doc, overrides, path=None):
    """Set every override in the parsed scenario ``doc``. Changing ``machine.arch`` drops the
    file's ``machine.variant``, ``machine.features`` and ``machine.firmware`` (they name the old arch's), unless an
    override sets them too. A path through something that is not a table, or past the end of an
    array, is a :class:`ScenarioError`."""
    machine = doc.get("machine")
    if isinstance(machine, dict) and any(o.key == "machine.arch" and o.value != machine.get("arch") for o in overrides):
        machine.pop("variant", None)
        machine.pop("features", None)
        machine.pop("firmware", None)
    for item in overrides:
        _apply(doc, item, path)


def _apply(doc, item, path):
    parts = _parts(item.key)
    table, where = doc, ""
    for i, (name, index) in enumerate(parts):
        last = i == len(parts) - 1
        where = f"{where}.{name}" if where else name
        if index is None and last:
            table[name] = item.value
            return
        if index is None:
            if name not in table:
                table[name] = {}
            child = table[name]
            if isinstance(child, list):
                raise _error(item, where, f"is an array: name an entry, e.g. {where}[0]", path)
        else:
            items = table.get(name)
            if not isinstance(items, list):
                raise _error(item, where, f"is not an array in the scenario (write {where}.KEY)", path)
            if index >= len(items):
                raise _error(item, f"{where}[{index}]", f"no such entry: the scenario has {len(items)}", path)
            where = f"{where}[{index}]"
            if last:
                items[index] = item.value
                return
            child = items[index]
        if not isinstance(child, dict):
            raise _error(item, where, f"is {type_name(child)} {child!r} in the scenario, not a table", path)
        table = child


def _error(item, key, message, path):
    return ScenarioError(key, f"{message} ({item.origin})", None, path)
