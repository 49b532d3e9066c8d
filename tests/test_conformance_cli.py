"""``vmemcore conformance`` and ``vmemcore capabilities``: the matrix, JSON, exit codes."""

import json
import subprocess
import sys
import textwrap

from vmemcore.cli import main


def _vmemcore(*args, env=None):
    return subprocess.run([sys.executable, "-c", "from vmemcore.cli import main; raise SystemExit(main())", *args],
                          capture_output=True, text=True, env=env)


def test_conformance_json_passes_and_skips_with_the_plugins_reason():
    run = _vmemcore("conformance", "--arch", "s390", "--kernel", "7.1", "--json")
    assert run.returncode == 0, run.stderr
    data = json.loads(run.stdout)
    assert data["schema"] == 1 and data["failed"] == 0 and data["passed"] >= 10
    hvo = [r for r in data["results"] if r["check"] == "test_hvo_frees_what_the_kernel_frees"]
    # without the default profile, every variant and feature flip is checked at 7.1
    assert {r["target"] for r in hvo} == {"s390-3-level-7.1", "s390-4-level-7.1", "s390-3-level-7.1-edat1=off",
                                          "s390-3-level-7.1-edat2=off"}
    assert all(r["outcome"] == "skipped" and "64e2f60f355e" in r["message"] for r in hvo)


def test_conformance_fails_a_leaky_plugin_with_exit_1(tmp_path):
    (tmp_path / "leaky_x86.py").write_text(textwrap.dedent("""
        import vmemcore_x86_64 as x86
        from vmemcore_x86_64 import *
        from vmemcore.arch import hookimpl
        from vmemcore.physmem import Use

        @hookimpl
        def vmemcore_vmemmap_populate(machine, start, end, node, altmap):
            machine.physmem.alloc(1, 0, Use.MEMMAP)
            return x86.vmemcore_vmemmap_populate(machine, start, end, node, altmap)
        """))
    env = {**__import__("os").environ, "VMEMCORE_DISABLE_PLUGIN_AUTOLOAD": "1", "VMEMCORE_PLUGINS": "leaky_x86",
           "PYTHONPATH": str(tmp_path)}
    run = _vmemcore("conformance", "--variant", "4-level", "--kernel", "6.12", env=env)
    assert run.returncode == 1, run.stderr
    assert "plugin 'leaky_x86', hook vmemcore_vmemmap_populate: every frame is accounted for" in run.stdout
    assert "F" in run.stdout.split("target", 1)[1]


def test_capabilities_json_says_what_each_profile_offers(capsys):
    assert main(["capabilities", "arm64", "--variant", "4K-48", "--kernel", "6.0", "--kernel", "6.12", "--json"]) == 0
    rows = {r["kernel"]: r for r in json.loads(capsys.readouterr().out)["capabilities"]}
    assert rows["6.0"]["hvo"]["supported"] and not rows["6.12"]["hvo"]["supported"]
    assert "060a2c92d1b6" in rows["6.12"]["hvo"]["reason"]  # break-before-make
    assert [h["size"] for h in rows["6.12"]["hugepage_sizes"]] == ["64K", "2M", "32M", "1G"]
    assert rows["6.12"]["hugepage_sizes"][0]["contiguous"] == 16


def test_capabilities_table_lists_reasons_once(capsys):
    assert main(["capabilities", "powerpc", "--kernel", "6.12"]) == 0
    out = capsys.readouterr().out
    assert "does not boot[" not in out
    hashed = [line for line in out.splitlines() if line.startswith("powerpc hash-")]
    assert len(hashed) == 2 and len({line.split()[4] for line in hashed}) == 1  # dax dedup: one reason, no[N]
    assert out.count("the hash MMU keeps the vmemmap in bolted HPTEs") == 1
