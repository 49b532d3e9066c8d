"""Typed errors. Every failed operation raises one of these and leaves the machine unchanged.

Each error carries ``errno``, the negative value the kernel would return for it (``-EINVAL``
unless the failure is known to return another), and ``errno_name`` (``"EINVAL"``).
"""

import difflib
from errno import EINVAL, ENOMEM, errorcode


class VmemcoreError(Exception):
    """Base class of every error vmemcore raises on purpose."""

    errno = -EINVAL  # the default of the class; an instance may carry another

    def __init__(self, *args, errno=None):
        super().__init__(*args)
        if errno is not None:
            if -errno not in errorcode:
                raise ValueError(f"errno must be a negative error number such as -errno.EEXIST, got {errno!r}")
            self.errno = errno

    @property
    def errno_name(self) -> str:
        """The symbolic name of ``errno``: ``"EINVAL"``, ``"EEXIST"``, ..."""
        return errorcode[-self.errno]


class BadRequest(VmemcoreError):
    """The request itself is invalid: -EINVAL, or the ``errno`` given (-EEXIST, -E2BIG, -EBUSY, ...)."""


class OutOfMemory(VmemcoreError):
    """A simulated allocation failed (-ENOMEM)."""

    errno = -ENOMEM


class SimulatorLimit(VmemcoreError):
    """The simulator would need more of its own memory than it allows: it keeps a record of some
    kilobytes per HugeTLB page HVO optimizes and per memory block, so an operation that would
    create more than ``MAX_RECORDS`` of them (``MAX_FOLIOS`` HugeTLB pages a grow allocates on one
    node without HVO, a few dozen bytes each) is refused, as is one over more than ``MAX_SECTIONS`` sections (each
    leaves journal records), and ``MAX_TABLES`` page tables (up to 18 KiB each while an
    operation's journal holds their old entries) are all a machine may have; the machine is left
    as it was (-ENOMEM). The kernel has no such limit."""

    errno = -ENOMEM
    MAX_RECORDS = 1 << 20  # about 5 GiB of the simulator's memory at worst
    MAX_FOLIOS = 1 << 26  # HugeTLB folios one grow allocates on one node without HVO: under 100 bytes each
    MAX_TABLES = 1 << 18  # a 1 PiB x86_64 machine has 16,417; an HVO'd 1 TiB pool adds 8,192
    MAX_SECTIONS = 1 << 18  # sections one memmap operation adds or removes (32 TiB of x86_64's)


class Veto(VmemcoreError):
    """An architecture plugin refused the request; ``reasons`` lists each plugin's reason."""

    def __init__(self, message, reasons=(), errno=None):
        super().__init__(message, errno=errno)
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
        self.path = path


def did_you_mean(word, choices) -> str:
    """``"; did you mean 'x86_64'?"`` when one of ``choices`` is close to ``word``, else ``""``."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1)
    return f"; did you mean {close[0]!r}?" if close else ""
