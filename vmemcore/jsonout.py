"""What ``vmemcore COMMAND --json`` prints: one object, ``schema`` first; a failure is an object too,
with the error and the report of the run up to the failed step (docs/scenarios.md#json-output)."""

import json

from .errors import PluginError, Veto

#: The version of the JSON layout: raised when a key is renamed or removed or changes meaning
#: (new keys keep it).
SCHEMA = 1


def dumps(data) -> str:
    """``data`` (a dict) as indented JSON with ``"schema"`` as its first key."""
    return json.dumps({"schema": SCHEMA, **data}, indent=2)


def error_data(error, path=None) -> dict:
    """The failure ``error`` (a :class:`~vmemcore.errors.VmemcoreError`) as ``{"error": {...},
    "report": ...}``: the error's type, errno, message (as the CLI prints it on stderr) and, where
    known (else null), the scenario ``path``, key path, line, failed step, plugin, hook and veto
    reasons; ``report`` is the run up to the failed step, null when nothing was simulated or boot
    failed."""
    from .scenario import RunError  # the scenario layer: loaded when there is an error to describe

    cause = error.cause if isinstance(error, RunError) else error
    step = getattr(error, "step", None)
    return {
        "error": {
            "type": type(cause).__name__,
            "errno": cause.errno,
            "errno_name": cause.errno_name,
            "message": str(error),
            "path": getattr(error, "path", None) or path,
            "key": f"steps[{step.index}]" if step is not None else getattr(error, "key", None),
            "line": step.line if step is not None else getattr(error, "line", None),
            "step": step.index if step is not None else None,
            "op": step.op if step is not None else None,
            "plugin": cause.plugin if isinstance(cause, PluginError) else None,
            "hook": cause.hook if isinstance(cause, PluginError) else None,
            "reasons": [list(r) for r in cause.reasons] if isinstance(cause, Veto) else [],
        },
        "report": _report(error.machine, error.results) if getattr(error, "machine", None) is not None else None,
    }


def _report(machine, results):
    from .report import report  # numpy: loaded when there is a machine to report on

    return report(machine, results)
