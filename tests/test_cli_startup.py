"""`vmemcore --help` and `vmemcore arches` load no numpy: the command line imports the engine's
numpy modules inside the commands that simulate, and plugin discovery reads only numpy-free types
(vmemcore.archtypes), the helpers that write page tables being loaded on first use (issue 10)."""

import subprocess
import sys
from pathlib import Path

import pytest

CHILD = """
import sys
from vmemcore.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print("modules:", *(m for m in ("importlib.metadata", "vmemcore.scenario", "vmemcore.config", "tomllib") if m in sys.modules),
      file=sys.stderr)
print("numpy loaded" if "numpy" in sys.modules else "no numpy", file=sys.stderr)
"""


def _loads_numpy(*args):
    child = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True, check=True)
    return child.stdout, child.stderr.strip().splitlines()[-1]


def _slow_modules(*args):
    """Which of importlib.metadata, the scenario layer (and the engine it brings) and tomllib
    ``vmemcore ARGS`` imported."""
    child = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True, check=True)
    return set(child.stderr.strip().splitlines()[-2].split()[1:])


@pytest.mark.parametrize("args", [("--help",), ("arches",), ("arches", "arm64"), ("run", "--help")])
def test_help_and_arches_load_no_numpy(args):
    stdout, verdict = _loads_numpy(*args)
    assert verdict == "no numpy"
    assert stdout  # the command printed its help or listing


def test_arches_still_lists_every_builtin_plugin():
    stdout, _ = _loads_numpy("arches")
    listed = {line.split()[0] for line in stdout.splitlines() if line and not line[0].isspace()}
    assert listed == {"x86_64", "arm64", "powerpc", "s390", "riscv64"}  # 4 built-in plugins and the example


def test_a_run_loads_numpy_when_it_simulates():
    _, verdict = _loads_numpy("run", str(Path(__file__).parent.parent / "examples" / "x86_64-16G.toml"))
    assert verdict == "numpy loaded"


def test_help_and_arches_load_neither_metadata_nor_the_scenario_layer():
    # --help only formats the top-level parser: the installed version is read for --version
    # alone, and run's ops table (vmemcore.scenario) when run's help is shown
    assert _slow_modules("--help") == set()
    # entry points are read from sys.path's plain directories without importlib.metadata
    assert _slow_modules("arches") == set()
    assert _slow_modules("run", "--help") == {"vmemcore.scenario", "vmemcore.config", "tomllib"}


def test_version_is_still_the_installed_one():
    from importlib.metadata import version

    child = subprocess.run([sys.executable, "-c", CHILD, "--version"], capture_output=True, text=True, check=True)
    assert child.stdout == f"vmemcore {version('vmemcore')}\n"
