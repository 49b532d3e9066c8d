"""vmemcore: the Linux kernel's sparse-vmemmap machinery, simulated on several architectures."""

import pluggy

from .errors import BadRequest, OutOfMemory, PluginError, ScenarioError, SimulatorLimit, Veto, VmemcoreError
from .geometry import (
    ArchInfo, Feature, Firmware, HugePageSize, Level, PageTableGeometry, PhysRange, SparseGeometry, Support, Variant,
)
from .profiles import KernelProfile, get_profile
from .units import GiB, KiB, MiB, PiB, TiB, format_size, parse_size

hookimpl = pluggy.HookimplMarker("vmemcore")

#: Loaded on first use (they bring numpy), so that discovering plugins and the command line's help
#: load none: ``vmemcore.Machine`` and ``from vmemcore import Machine`` work as ever.
_ENGINE = {"Machine": "machine", "MachineConfig": "config", "MemoryRange": "config"}


def __getattr__(name):
    if name not in _ENGINE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{_ENGINE[name]}"), name)


__all__ = [
    "ArchInfo", "BadRequest", "Machine", "MachineConfig", "MemoryRange", "Feature", "Firmware", "GiB", "HugePageSize", "Support", "KernelProfile", "KiB", "Level", "MiB", "OutOfMemory",
    "PageTableGeometry", "PhysRange", "PiB", "PluginError", "ScenarioError", "SimulatorLimit", "SparseGeometry", "TiB", "Variant", "Veto",
    "VmemcoreError", "format_size", "get_profile", "hookimpl", "parse_size",
]
