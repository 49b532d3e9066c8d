"""Running a scenario: boot its machine, run its steps, report what each one changed."""

import contextlib

import attrs
from attrs import frozen

from ..errors import BadRequest, VmemcoreError
from ..stats import counter_key
from .ops import OPS


@frozen
class StepResult:
    """What one step did: the counters it changed (name -> delta) and what the op reported
    (a hugetlb.resize's ResizeResult fields, the switch's new value, a hotplug.add's AddResult
    fields, the blocks a hotplug.online/offline/remove acted on; empty for memmap ops)."""

    index: int
    op: str
    args: dict
    line: int | None
    changes: dict
    result: dict = attrs.field(factory=dict)


class RunError(VmemcoreError):
    """A simulation failure at boot or in a step; ``cause`` is the engine's error, ``machine`` and
    ``results`` are the state before the failing operation (operations are transactional), ``step``
    the failing :class:`Step` (None at boot); its ``errno`` is the cause's."""

    def __init__(self, where, cause, machine=None, results=(), step=None):
        super().__init__(f"{where}: {type(cause).__name__}: {cause}", errno=cause.errno)
        self.where = where
        self.cause = cause
        self.machine = machine
        self.results = list(results)
        self.step = step


def run_scenario(scenario, progress=None, registry=None, check_live_entries=False, after_step=None):
    """Boot the scenario's machine and run its steps; returns ``(machine, [StepResult, ...])``.

    ``progress(step)`` is called before each step; ``after_step(machine, index)`` after boot
    (index -1) and after each step (``vmemcore ptdump --diff`` looks at the machine there). ``check_live_entries``: watch every page-table
    write against the arch's live-entry rule (``machine.live_entries``). A :class:`VmemcoreError` at boot or in a step
    is raised as :class:`RunError` naming where it happened.
    """
    try:
        from ..machine import Machine  # numpy: loaded when a scenario runs, not with the help

        machine = Machine.from_config(scenario.machine, registry=registry, check_live_entries=check_live_entries)
    except VmemcoreError as error:
        raise RunError(f"{scenario.path + ': ' if scenario.path else ''}boot", error) from error
    if after_step is not None:
        after_step(machine, -1)
    results = []
    for step in scenario.steps:
        if progress is not None:
            progress(step)
        before = machine.counters()
        where = ":".join(str(p) for p in (scenario.path, step.line) if p is not None)
        where = f"{where + ': ' if where else ''}steps[{step.index}] ({step.op})"
        try:
            with machine.transaction(), _attributed(machine, f"steps[{step.index}] {step.op}"):
                result = OPS[step.op].run(machine, step.args)
        except VmemcoreError as error:
            if step.expect_error is None or error.errno_name != step.expect_error:
                raise RunError(where, error, machine, results, step) from error
            result = {"error": str(error), "errno": error.errno_name}  # as expected; the machine is unchanged
        else:
            if step.expect_error is not None:
                error = BadRequest(f"expected to fail with {step.expect_error} (expect_error), but it succeeded")
                raise RunError(where, error, machine, results, step)
        after = machine.counters()
        changes = {k: after.get(k, 0) - before.get(k, 0) for k in sorted(set(before) | set(after), key=counter_key)}
        results.append(StepResult(step.index, step.op, dict(step.args), step.line,
                                  {k: d for k, d in changes.items() if d}, result or {}))
        if after_step is not None:
            after_step(machine, step.index)
    return machine, results


def _attributed(machine, operation):
    """Live-entry violations made inside are attributed to ``operation``."""
    return machine.live_entries.during(operation) if machine.live_entries else contextlib.nullcontext()
