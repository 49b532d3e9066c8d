"""vmemcore: the Linux kernel's sparse-vmemmap machinery, simulated on several architectures."""

import pluggy

from .errors import BadRequest, OutOfMemory, PluginError, ScenarioError, SimulatorLimit, Veto, VmemcoreError
from .geometry import (
    ArchInfo, Feature, Firmware, HugePageSize, Level, PageTableGeometry, PhysRange, SparseGeometry, Support, Variant,
)
from .profiles import KernelProfile, get_profile
from .units import GiB, KiB, MiB, PiB, TiB, format_size, parse_size

hookimpl = pluggy.HookimplMarker("vmemcore")

from .config import MachineConfig, MemoryRange  # noqa: E402  (plugins import the names above first)
from .machine import Machine  # noqa: E402

__all__ = [
    "ArchInfo", "BadRequest", "Machine", "MachineConfig", "MemoryRange", "Feature", "Firmware", "GiB", "HugePageSize", "Support", "KernelProfile", "KiB", "Level", "MiB", "OutOfMemory",
    "PageTableGeometry", "PhysRange", "PiB", "PluginError", "ScenarioError", "SimulatorLimit", "SparseGeometry", "TiB", "Variant", "Veto",
    "VmemcoreError", "format_size", "get_profile", "hookimpl", "parse_size",
]
