"""A validated scenario: the :class:`MachineConfig` to boot and the steps to run."""

from types import MappingProxyType

import attrs
from attrs import frozen

from ..config import MachineConfig


@frozen
class Step:
    """One ``[[steps]]`` entry: its op and its arguments (sizes in bytes, defaults filled in)."""

    index: int
    op: str
    args: MappingProxyType = attrs.field(converter=lambda d: MappingProxyType(dict(d)))
    line: int | None = None
    expect_error: str | None = None  # the step must fail with this errno name ("ENOMEM"); the run goes on


@frozen
class Scenario:
    """A validated scenario, ready for :func:`run_scenario`: the machine to boot and the steps."""

    machine: MachineConfig
    steps: tuple = ()
    path: str | None = None

    @property
    def memory(self):
        return self.machine.memory

    @property
    def hugetlb(self):
        return self.machine.hugetlb

    @property
    def hotplug(self):
        return self.machine.hotplug
