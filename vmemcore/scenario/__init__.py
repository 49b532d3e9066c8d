"""Scenario files: a TOML description of a machine and the steps to run on it.

``load_scenario``/``parse_scenario`` read and validate a scenario without simulating anything:
every unknown key, missing key, wrong type or impossible value is a :class:`ScenarioError` that
names the key path (``memory[1].size``) and its line in the file. ``run_scenario`` then boots the
:class:`Machine` and runs the steps. The format is documented in ``docs/scenarios.md``.

The modules: ``spec`` (the validated scenario), ``locate`` (key path -> line), ``validate``,
``ops`` (the step table) and ``run``.
"""

from ..config import REQUIRED, BootPages, HotplugSpec, HugetlbSpec
from .ops import OPS, Op
from .run import RunError, StepResult, run_scenario
from .spec import Scenario, Step
from .validate import load_scenario, parse_scenario, read_scenario

__all__ = [
    "OPS", "REQUIRED", "BootPages", "HotplugSpec", "HugetlbSpec", "Op", "RunError", "Scenario", "Step", "StepResult",
    "load_scenario", "parse_scenario", "read_scenario", "run_scenario",
]
