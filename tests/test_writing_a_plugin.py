"""docs/writing-a-plugin.md, followed literally: its ``File: PATH`` code blocks are written into an
empty folder in order (a later block replaces the file), the plugin is loaded from ``sys.path``
through ``VMEMCORE_PLUGINS`` (as the guide says works without installing), and the guide's commands
are run at the points where it runs them."""

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from vmemcore import Machine
from vmemcore.cli import main

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "writing-a-plugin.md"
BLOCK = re.compile(r"^File: `([^`]+)`\n\n```[a-z]*\n(.*?)^```$", re.MULTILINE | re.DOTALL)
MODULE = "vmemcore_myarch"


def guide_files():
    files = BLOCK.findall(GUIDE.read_text())
    assert files, "the guide has no File: blocks"
    return files


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path / "myarch-plugin"))
    monkeypatch.setenv("VMEMCORE_PLUGINS", MODULE)
    monkeypatch.delitem(sys.modules, MODULE, raising=False)
    yield tmp_path
    sys.modules.pop(MODULE, None)


def write(folder, path, text):
    target = folder / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)


def test_the_guide_builds_a_working_plugin_step_by_step(folder, capsys):
    files = guide_files()
    assert [path for path, _ in files] == [
        "myarch-plugin/pyproject.toml", "myarch-plugin/vmemcore_myarch.py", "myarch-16G.toml",
        "myarch-plugin/vmemcore_myarch.py", "myarch-hvo.toml", "myarch-plugin/tests/test_conformance.py",
    ]
    # steps 1-4: the distribution, the five hooks, a boot scenario
    for path, text in files[:3]:
        write(folder, path, text)
    project = tomllib.loads((folder / "myarch-plugin/pyproject.toml").read_text())
    assert project["project"]["entry-points"]["vmemcore.arch"] == {"myarch": MODULE}

    assert main(["arches"]) == 0
    assert "myarch" in capsys.readouterr().out
    assert main(["arches", "myarch"]) == 0
    assert "page-table levels          3" in capsys.readouterr().out
    assert main(["run", str(folder / "myarch-16G.toml")]) == 0
    out = capsys.readouterr().out
    # 16 GiB = 128 sections x 2 MiB of memmap: 128 PMD leaves, 65,536 pages, one PMD table (PGD static)
    assert re.search(r"vmemmap_leaves_2M\s+128\n", out) and re.search(r"nr_memmap_boot_pages\s+65,536 ", out)
    assert re.search(r"vmemmap_pagetable_pages_pmd\s+1 ", out)
    m = Machine("myarch", memory=[{"size": "16G"}])
    assert m.counters()["vmemmap_leaves_2M"] == 128
    m.check()

    # step 5: the optional hooks replace the module; a fresh import sees them
    sys.modules.pop(MODULE, None)
    for path, text in files[3:5]:
        write(folder, path, text)
    assert main(["run", str(folder / "myarch-hvo.toml")]) == 0
    out = capsys.readouterr().out
    # 4 pages x (8 vmemmap pages - 1 kept) = 28 frames freed: 65,536 - 28 = 65,508
    assert re.search(r"memmap_frames\s+65,508 ", out)
    m = Machine("myarch", memory=[{"size": "16G"}])
    # pgtable_cache_init: one PMD table per 1 GiB top-level entry of the 4 GiB vmemmap
    assert m.counters()["vmemmap_pagetable_pages_pmd"] == 4
    m.check()

    # the refusal the guide promises for kernel 6.1
    hvo_61 = folder / "myarch-hvo.toml"
    hvo_61.write_text(hvo_61.read_text().replace('kernel = "6.12"', 'kernel = "6.1"'))
    assert main(["run", str(hvo_61)]) != 0
    assert "myarch has HVO from 6.3" in capsys.readouterr().err


    # step 6: the conformance suite passes on the guide's plugin (at the default profile, to stay quick)
    path, text = files[5]
    write(folder, path, text)
    env = {**os.environ, "PYTHONPATH": str(folder / "myarch-plugin"), "VMEMCORE_PLUGINS": MODULE}
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(folder / path),
                          "--vmemcore-arch", "myarch", "--vmemcore-kernel", "6.12"],
                         cwd=folder, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:]
    assert re.search(r"\d+ passed", run.stdout)
