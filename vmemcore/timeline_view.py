"""``vmemcore profiles``: the kernel timeline (every dated change of the engine and of the arch
plugins, docs/kernel-map.md#behaviour-timeline), or what one kernel version has."""

import enum

import attrs

from .profiles import ENGINE_CHANGES, NAMED, NEWEST, OLDEST, PROFILES, KernelProfile
from .timeline import format_version

ENGINE = "engine"
_NOT_FIELDS = ("name", "version", "release")


def _owned(plugins) -> list:
    """(owner, plugin name, change) for the engine's changes and every plugin's, oldest first."""
    rows = [(ENGINE, None, change) for change in ENGINE_CHANGES]
    for plugin in plugins:
        rows += [(plugin.info.name, plugin.name, change) for change in plugin.info.changes]
    return sorted(rows, key=lambda row: (row[2].mainline, row[0] != ENGINE, row[0]))


def _value(value):
    return value.value if isinstance(value, enum.Enum) else value


def _fields(profile: KernelProfile) -> dict:
    return {f.name: _value(getattr(profile, f.name)) for f in attrs.fields(KernelProfile) if f.name not in _NOT_FIELDS}


def timeline_data(plugins) -> dict:
    """The span, the named profiles and every dated change (engine first within a release)."""
    return {
        "span": {"oldest": format_version(OLDEST), "newest": format_version(NEWEST), "named": list(PROFILES)},
        "profiles": [{"name": n.name, "release": format_version(n.release), "models": n.models,
                      "overrides": {k: _value(v) for k, v in n.overrides.items()}} for n in NAMED],
        "changes": [{"owner": owner, "plugin": plugin, **change.data()} for owner, plugin, change in _owned(plugins)],
    }


def _via(change, release):
    """How a kernel of ``release`` got ``change``: "v6.3", "6.1.16", or None when it lacks it."""
    if release[:2] >= change.mainline:
        return f"v{format_version(change.mainline)}"
    for version in change.stable:
        if version[:2] == release[:2] and release[2] >= version[2]:
            return format_version(version)
    return None


def version_data(profile: KernelProfile, plugins) -> dict:
    """Which dated changes kernel ``profile`` has (and through which release), and its fields."""
    named = next((n for n in NAMED if n.name == profile.name), None)
    changes = []
    for owner, plugin, change in _owned(plugins):
        via = _via(change, profile.release)
        changes.append({"owner": owner, "plugin": plugin, "has": via is not None, "via": via, **change.data()})
    return {
        "kernel": profile.name,
        "release": format_version(profile.release),
        "models": named.models if named else f"{format_version(profile.release)}, from the timeline",
        "overrides": {k: _value(v) for k, v in named.overrides.items()} if named else {},
        "fields": _fields(profile),
        "changes": changes,
    }


def _stable(change) -> str:
    return ", ".join(change["stable"]) or "-"


def format_timeline(data) -> str:
    span = data["span"]
    lines = [f"kernel versions modelled: {span['oldest']} to {span['newest']}.y (X.Y or X.Y.Z); named profiles: "
             f"{', '.join(span['named'])}", "",
             f"{'mainline':<9} {'owner':<8} {'change':<28} {'commit':<12}  {'stable':<26} what"]
    for c in data["changes"]:
        lines.append(f"v{c['mainline']:<8} {c['owner']:<8} {c['name']:<28} {c['commit'] or '-':<12}  "
                     f"{_stable(c):<26} {c['what']}")
    lines += ["", "named profiles:"]
    for p in data["profiles"]:
        overrides = "".join(f"; {k} = {v!r}" for k, v in p["overrides"].items())
        lines.append(f"  {p['name']:<5} release {p['release']:<8} {p['models']}{overrides}")
    return "\n".join(lines)


def format_version_view(data) -> str:
    lines = [f"kernel {data['kernel']}: {data['models']}"]
    lines += [f"  override {k} = {v!r}" for k, v in data["overrides"].items()]
    lines += ["", f"{'':<6} {'through':<9} {'owner':<8} {'change':<28} what"]
    for c in data["changes"]:
        mark, through = ("has", c["via"]) if c["has"] else ("lacks", f"v{c['mainline']}")
        stable = f" [stable: {_stable(c)}]" if c["stable"] and not c["has"] else ""
        lines.append(f"{mark:<6} {through:<9} {c['owner']:<8} {c['name']:<28} {c['what']}{stable}")
    lines += ["", "profile fields:"]
    wide = max(len(k) for k in data["fields"])
    lines += [f"  {k:<{wide}}  {v}" for k, v in data["fields"].items()]
    return "\n".join(lines)
