"""Typed errors. Every failed operation raises one of these and leaves the machine unchanged."""


class VmemcoreError(Exception):
    """Base class of every error vmemcore raises on purpose."""


class BadRequest(VmemcoreError):
    """The request itself is invalid (the kernel would answer -EINVAL, -EEXIST, -E2BIG, ...)."""


class OutOfMemory(VmemcoreError):
    """A simulated allocation failed (the kernel would answer -ENOMEM)."""


class Veto(VmemcoreError):
    """An architecture plugin refused the request; ``reasons`` lists each plugin's reason."""

    def __init__(self, message, reasons=()):
        super().__init__(message)
        self.reasons = tuple(reasons)


class PluginError(VmemcoreError):
    """A plugin failed to load, or answered a hook with a value of the wrong type or shape."""

    def __init__(self, plugin, hook, message):
        where = f"plugin {plugin!r}" + (f", hook {hook}" if hook else "")
        super().__init__(f"{where}: {message}")
        self.plugin = plugin
        self.hook = hook


class ScenarioError(VmemcoreError):
    """A scenario file names an unknown key or an impossible value."""

    def __init__(self, key, message, line=None, path=None):
        where = ":".join(str(p) for p in (path, line) if p is not None)
        super().__init__(f"{where + ': ' if where else ''}{key}: {message}")
        self.key = key
        self.line = line
