"""The devdax.add / devdax.remove scenario steps and their report."""

import json
from pathlib import Path

import pytest

from vmemcore.cli import main
from vmemcore.errors import ScenarioError
from vmemcore.scenario import load_scenario, parse_scenario, run_scenario

EXAMPLE = Path(__file__).parent.parent / "examples" / "x86_64-devdax-1G.toml"
HEAD = '[machine]\narch = "x86_64"\n\n[[memory]]\nsize = "16G"\n\n'


def test_the_example_dedups_1g_and_2m_pages_and_not_with_an_altmap():
    machine, steps = run_scenario(load_scenario(EXAMPLE))
    one_g, two_m, altmap, removed = (step.result for step in steps)
    assert (one_g["vmemmap_pages_mapped"], one_g["vmemmap_frames_used"], one_g["vmemmap_pages_saved"]) == (4096, 2, 4094)
    assert one_g["pagetable_pages"] == 9  # 8 PTE tables + 1 PMD table
    assert (two_m["vmemmap_frames_used"], two_m["vmemmap_pages_saved"]) == (1024, 3072)
    assert not altmap["dedup"] and "altmap" in altmap["dedup_refused"]
    assert removed["start"] == 1 << 40
    c = machine.counters()
    assert c["nr_memmap_pages"] == 2 * 4096  # two pagemaps left, counted at full size
    assert c["devdax_vmemmap_pages_saved"] == 3072
    machine.check()


def test_json_report_carries_the_step_results(capsys):
    assert main(["run", str(EXAMPLE), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["steps"][0]["result"]["vmemmap_frames_used"] == 2
    assert data["counters"]["devdax_vmemmap_frames_used"] == 1024 + 4096


def test_unknown_key_in_a_devdax_step_names_key_and_line():
    with pytest.raises(ScenarioError, match=r"^11: steps\[0\]\.alignment: unknown key.*did you mean .align."):
        parse_scenario(HEAD + '[[steps]]\nop = "devdax.add"\nstart = "1T"\nsize = "1G"\nalignment = "2M"\n')


def test_removing_a_pagemap_with_the_wrong_size_fails_naming_the_step(tmp_path, capsys):
    path = tmp_path / "s.toml"
    path.write_text(HEAD + '[[steps]]\nop = "devdax.add"\nstart = "1T"\nsize = "1G"\n\n'
                    '[[steps]]\nop = "devdax.remove"\nstart = "1T"\nsize = "2G"\n')
    assert main(["run", str(path)]) == 1
    err = capsys.readouterr().err
    assert "steps[1] (devdax.remove)" in err and "not 2G long" in err
