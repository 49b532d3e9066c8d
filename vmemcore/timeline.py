"""Kernel versions as a timeline: every behaviour that varies by kernel is a dated :class:`Change`,
the mainline release that first carried it and the stable point releases that received it.

A version is ``X.Y`` (the mainline release, ``X.Y.0``) or ``X.Y.Z`` (a stable point release). A
change is in effect in ``X.Y.Z`` when ``X.Y`` is its mainline release or later, or when the stable
series ``X.Y`` received it at ``X.Y.W`` with ``W <= Z``. The engine's changes are in
``vmemcore/profiles.py``; a plugin declares its own in ``ArchInfo.changes`` and tests them with
``profile.has(change)`` or ``selected(profile, since=change, until=change)`` (docs/plugins.md).
Every change modelled is listed, with its sources, in docs/kernel-map.md#behaviour-timeline.
"""

import re

import attrs
from attrs import field, frozen

_VERSION = re.compile(r"^(\d+)\.(\d+)(?:\.(\d+))?$")


def parse_version(text) -> tuple:
    """``"6.12"`` → ``(6, 12, 0)``, ``"6.12.42"`` → ``(6, 12, 42)``; a tuple of two or three ints
    is taken as it is. Raises ValueError for anything else."""
    if isinstance(text, tuple):
        if len(text) in (2, 3) and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in text):
            return tuple(text) + (0,) * (3 - len(text))
        raise ValueError(f"a kernel version is (major, minor) or (major, minor, patch), got {text!r}")
    found = _VERSION.match(str(text).strip())
    if not found:
        raise ValueError(f"{text!r} is no kernel version (X.Y or X.Y.Z, such as \"6.12\" or \"6.12.42\")")
    major, minor, patch = found.groups()
    return int(major), int(minor), int(patch or 0)


def format_version(version) -> str:
    """``(6, 12, 0)`` → ``"6.12"``, ``(6, 12, 42)`` → ``"6.12.42"``."""
    major, minor, patch = parse_version(version)
    return f"{major}.{minor}" + (f".{patch}" if patch else "")


def _mainline(value) -> tuple:
    version = parse_version(value.removeprefix("v") if isinstance(value, str) else value)
    if version[2]:
        raise ValueError(f"a mainline release is X.Y, not a point release ({format_version(version)})")
    return version[:2]


def _stable(values) -> tuple:
    if isinstance(values, str):
        values = (values,)
    out = tuple(parse_version(v) for v in values)
    for version in out:
        if not version[2]:
            raise ValueError(f"a stable backport is a point release X.Y.Z with Z > 0, got {format_version(version)}")
    return tuple(sorted(out))


@frozen
class Change:
    """One dated kernel change: ``name`` (a short unique key, such as ``"arm64-hvo-off"``), what it
    changes, the ``mainline`` release that first carried it (``"6.3"`` or ``(6, 3)``) and the
    ``stable`` point releases that received it (``("6.1.16", "6.2.3")``: one per stable series,
    the first release of that series to carry it), the ``commit`` (12 hex digits of the mainline
    id, or "" when unknown) and a ``status`` saying how the dating was established."""

    name: str = field(validator=attrs.validators.matches_re(r"^[a-z0-9][a-z0-9_.-]*$"))
    what: str
    mainline: tuple = field(converter=_mainline)
    stable: tuple = field(default=(), converter=_stable)
    commit: str = field(default="", validator=attrs.validators.matches_re(r"^([0-9a-f]{12})?$"))
    status: str = ""

    def __attrs_post_init__(self):
        series = [v[:2] for v in self.stable]
        if len(set(series)) != len(series):
            raise ValueError(f"change {self.name}: one backport per stable series, got {self.stable_names()}")
        later = [format_version(v) for v in self.stable if v[:2] >= self.mainline]
        if later:
            raise ValueError(f"change {self.name}: a backport goes to a series older than the mainline release "
                             f"{format_version(self.mainline)}, not {', '.join(later)}")

    def in_effect(self, version) -> bool:
        """Whether a kernel of ``version`` (``"6.12.42"``, ``(6, 12, 42)``) carries this change."""
        version = parse_version(version)
        if version[:2] >= self.mainline:
            return True
        return any(version[:2] == v[:2] and version[2] >= v[2] for v in self.stable)

    def stable_names(self) -> list:
        return [format_version(v) for v in self.stable]

    def data(self) -> dict:
        """The change as JSON-ready data."""
        return {"name": self.name, "what": self.what, "commit": self.commit or None,
                "mainline": format_version(self.mainline), "stable": self.stable_names(), "status": self.status}


def reaches(version, when) -> bool:
    """Whether ``version`` is at or after ``when``: a :class:`Change` (its mainline release or a
    stable backport) or a ``(major, minor)`` mainline release."""
    if isinstance(when, Change):
        return when.in_effect(version)
    return parse_version(version)[:2] >= parse_version(when)[:2]
