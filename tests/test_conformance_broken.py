"""Deliberately broken plugins: the conformance suite fails each, naming the plugin, the hook and
the rule broken. Each is the x86_64 plugin with one hook replaced, loaded alone (no entry points)."""

import textwrap

import pytest

BROKEN = {
    # a vmemmap too small for the physical addresses the arch accepts (46 bits: 64 TiB of pfns)
    "small_vmemmap": ("""
        import attrs
        @hookimpl
        def vmemcore_sparse_geometry(variant, profile):
            real = x86.vmemcore_sparse_geometry(variant, profile)
            return attrs.evolve(real, vmemmap_size=64 << 30)
        """, "vmemmap_holds",
        "plugin 'small_vmemmap', hook vmemcore_sparse_geometry: the vmemmap holds the struct pages of every "
        "mappable address"),
    # every populate takes one page more than it maps, and never gives it back
    "leaky_populate": ("""
        from vmemcore.physmem import Use
        @hookimpl
        def vmemcore_vmemmap_populate(machine, start, end, node, altmap):
            machine.physmem.alloc(1, 0, Use.MEMMAP)
            return x86.vmemcore_vmemmap_populate(machine, start, end, node, altmap)
        """, "section_and_subsection",
        "plugin 'leaky_populate', hook vmemcore_vmemmap_populate: every frame is accounted for after a populate"),
    # a free that clears the leaves but keeps every page table
    "table_keeper": ("""
        from vmemcore.arch import InUse, TeardownPolicy, vmemmap_teardown
        @hookimpl
        def vmemcore_vmemmap_free(machine, start, end, altmap):
            vmemmap_teardown(machine, start, end, altmap, TeardownPolicy(InUse.SUB_PMD, free_tables=()))
            return True
        """, "section_and_subsection",
        "plugin 'table_keeper', hook vmemcore_vmemmap_populate/free: a populate/free round trip leaves "
        "nothing behind"),
    # HVO claimed, but every second vmemmap page maps its neighbour's frame (base pages: kernel 5.14)
    "crossed_vmemmap": ("""
        @hookimpl
        def vmemcore_vmemmap_populate(machine, start, end, node, altmap):
            x86.vmemcore_vmemmap_populate(machine, start, end, node, altmap)
            for addr, level, pfns in list(machine.pagetable.leaf_runs(start, end)):
                if level.name == "pte" and len(pfns) > 1:
                    pfns[1::2] = pfns[0::2][:len(pfns[1::2])]
            return True
        """, "hvo_frees",
        "plugin 'crossed_vmemmap', hook vmemcore_hvo_support: HVO of 2M saves 6 vmemmap pages per folio"),
    # a refusal without a reason
    "mute_veto": ("""
        from vmemcore.arch import Support
        @hookimpl
        def vmemcore_supports_memmap_on_memory(machine, vmemmap_size):
            return Support(False, "")
        """, "memmap_on_memory",
        "plugin 'mute_veto', hook vmemcore_supports_memmap_on_memory: raised ValueError: a refusal must say why"),
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_the_suite_fails_a_broken_plugin_and_names_the_rule(name, pytester, monkeypatch):
    source, check, message = BROKEN[name]
    pytester.makepyfile(**{name: "import vmemcore_x86_64 as x86\nfrom vmemcore_x86_64 import *\n"
                                 "from vmemcore.arch import hookimpl\n" + textwrap.dedent(source)})
    pytester.makepyfile(test_port="from vmemcore.testing.suite import *  # noqa: F401,F403\n")
    monkeypatch.setenv("VMEMCORE_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.setenv("VMEMCORE_PLUGINS", name)
    monkeypatch.setenv("PYTHONPATH", str(pytester.path))
    kernel = "5.14" if name == "crossed_vmemmap" else "6.12"
    result = pytester.runpytest_subprocess("-q", "--vmemcore-arch", "x86_64", "--vmemcore-kernel", kernel,
                                           "--vmemcore-variant", "4-level", "-k", check)
    output = result.stdout.str()
    assert result.ret == 1, output
    assert message in " ".join(output.split()), output
