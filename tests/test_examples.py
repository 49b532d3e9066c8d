"""Every scenario in examples/ runs (the riscv64 twins need the example plugin, installed in CI)."""

import pytest

from scenario_helpers import EXAMPLES
from vmemcore.cli import main


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.toml")), ids=lambda p: p.name)
def test_example_runs(path, capsys):
    assert main(["run", str(path)]) == 0, capsys.readouterr().err
    assert "nr_memmap_boot_pages" in capsys.readouterr().out
