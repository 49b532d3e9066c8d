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
print("numpy loaded" if "numpy" in sys.modules else "no numpy", file=sys.stderr)
"""


def _loads_numpy(*args):
    child = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True, check=True)
    return child.stdout, child.stderr.strip().splitlines()[-1]


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
