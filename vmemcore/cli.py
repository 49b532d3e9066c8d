"""The ``vmemcore`` command line: ``run``, ``blocks``, ``kpageflags`` and ``diagram`` of a scenario, ``arches``."""

import argparse
import json
import os
import sys

import attrs

from .diagram import diagram, folio_title
from .errors import BadRequest, PluginError, ScenarioError
from .geometry import describe_geometry
from .plugins import TRACE_ENV, Registry
from .profiles import DEFAULT_PROFILE, PROFILES, get_profile
from .report import (check_folio_flags, format_blocks, format_kpageflags, format_report, hotplug_report,
                     kpageflags_lines, kpageflags_report, kpageflags_runs, report)
from .scenario import OPS, REQUIRED, RunError, load_scenario, run_scenario

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_PLUGIN = 0, 1, 2, 3

EXIT_CODES = """\
exit codes:
  0  success
  1  the simulation failed (an error at boot or in a step, e.g. a hot-add refused or an offline
     that hits -EBUSY; the message names the step), or kpageflags --check found a pfn that
     breaks the rule
  2  invalid scenario or command line (the message names the key and line; nothing was simulated),
     or a HugeTLB size or folio index the simulated machine does not have
  3  a plugin failed to load or gave a bad answer (the message names the plugin and hook)
"""

def _op_keys(op):
    """``start, size, node=0``; optional keys without a default in brackets: ``[block]``."""
    return ", ".join(key if default is REQUIRED else f"[{key}]" if default is None else f"{key}={default}"
                     for key, (_, default) in op.keys.items())


RUN_EPILOG = f"""\
scenario format (TOML; full reference in docs/scenarios.md):

  [machine]
  arch = "x86_64"                  # required: see `vmemcore arches`
  variant = "4-level"              # a variant name or {{ paging = "4-level" }}; default: the arch's
  kernel = "6.12"                  # kernel profile: {", ".join(PROFILES)} (default {DEFAULT_PROFILE})
  features = {{ pse = true }}        # machine features of the arch

  [[memory]]                       # one or more ranges
  node = 0                         # default 0
  start = "0"                      # default: right after the previous range
  size = "16G"                     # required; sizes are bytes or "4K", "2M", "16G", "1T", ...

  [hugetlb]                        # optional
  optimize_vmemmap = true          # hugetlb_free_vmemmap=on (default false)
  boot = [{{ size = "1G", count = 2, node = 0 }}]   # hugepages= boot pages; node optional

  [hotplug]                        # optional
  memmap_on_memory = "Y"           # memory_hotplug.memmap_on_memory: "N" (default), "Y", "force"

  [[steps]]                        # optional, run in order after boot
  op = "memmap.add"
  start = "64G"                    # start and size: whole 2M sub-sections
  size = "2M"

ops (hotplug.online and .offline take block = ID, or start and size):
""" + "".join(f"  {op.name:<{max(map(len, OPS))}}  {_op_keys(op)}: {op.help}\n" for op in OPS.values()) + "\n" + EXIT_CODES


def _plugin_option(value):
    if not value.startswith("no:") or len(value) == 3:
        raise argparse.ArgumentTypeError(f"expected no:NAME (disable plugin NAME), got {value!r}")
    return value[3:]


def build_parser():
    """The argument parser of ``vmemcore``."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-p", dest="disabled", metavar="no:NAME", action="append", type=_plugin_option, default=[],
                        help="disable the plugin NAME (its entry-point name, or module name for "
                             "VMEMCORE_PLUGINS); repeatable. When two plugins provide one arch (a fork "
                             "beside the original), both are refused until one is disabled: "
                             "-p no:NAME picks the other")
    parser = argparse.ArgumentParser(
        prog="vmemcore",
        description="Simulate the Linux kernel's sparse-vmemmap machinery on several architectures.",
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    scenario = argparse.ArgumentParser(add_help=False, parents=[common])
    scenario.add_argument("scenario", metavar="SCENARIO", help="a scenario TOML file (see examples/)")
    scenario.add_argument("--trace", action="store_true",
                          help=f"trace every plugin hook call on stderr (same as {TRACE_ENV}=1)")

    run = sub.add_parser(
        "run", parents=[scenario], help="validate and simulate a scenario file, print the counters",
        description="Validate SCENARIO (nothing runs if it has an error), boot its machine, run its\n"
                    "steps and print the kernel-named counters and what each step changed.",
        epilog=RUN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    run.set_defaults(func=_run)

    blocks = sub.add_parser(
        "blocks", parents=[scenario], help="run a scenario, print its memory blocks",
        description="Run SCENARIO, then print its hot-added memory blocks as /sys/devices/system/memory\n"
                    "shows them: id, start, size, node, state, zone and the pages each hosts its\n"
                    "memmap in (memmap_on_memory); more than 16 blocks are collapsed into runs of\n"
                    "consecutive blocks that look the same.",
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    blocks.add_argument("--json", action="store_true",
                        help="print JSON: memmap_on_memory, block_size, blocks and zones")
    blocks.set_defaults(func=_blocks)

    kpageflags = sub.add_parser(
        "kpageflags", parents=[scenario], help="run a scenario, print the /proc/kpageflags of pfns",
        description="Run SCENARIO, then print the flags /proc/kpageflags reports for the pfns\n"
                    "[PFN, PFN+N), or for every pfn of a HugeTLB folio with runs of identical flags\n"
                    "collapsed (page-types style: pfn, flags in hex, symbolic names).",
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    pick = kpageflags.add_mutually_exclusive_group(required=True)
    pick.add_argument("--pfn", type=_number, help="the first pfn (decimal or 0x hex)")
    pick.add_argument("--hugetlb", metavar="SIZE", help="a folio of this HugeTLB size (e.g. 2M, 1G)")
    kpageflags.add_argument("--count", type=_number, default=1, help="with --pfn: how many pfns (default 1)")
    kpageflags.add_argument("--index", type=_number, default=0,
                            help="with --hugetlb: the folio's position by head pfn (default 0)")
    kpageflags.add_argument("--check", action="store_true",
                            help="with --hugetlb: verify the selftest rule (mm/hugepage-vmemmap.c); exit 1 if it fails")
    kpageflags.add_argument("--json", action="store_true", help="print JSON instead of lines")
    kpageflags.set_defaults(func=_kpageflags)

    draw = sub.add_parser(
        "diagram", parents=[scenario], help="run a scenario, draw a HugeTLB folio's vmemmap before and after HVO",
        description="Run SCENARIO, pick a HugeTLB folio and draw its vmemmap mapping before and\n"
                    "after HugeTLB Vmemmap Optimization, read from the simulated page tables. The side\n"
                    "that is not the current state is computed in a rolled-back transaction.",
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    draw.add_argument("--size", help="the HugeTLB size (default: the smallest size that has folios)")
    draw.add_argument("--index", type=_number, default=0, help="the folio's position by head pfn (default 0)")
    draw.set_defaults(func=_diagram)

    selection = argparse.ArgumentParser(add_help=False, parents=[common])
    selection.add_argument("--variant", action="append", default=[], metavar="V", help="only this variant (repeatable)")
    selection.add_argument("--kernel", action="append", default=[], metavar="K",
                           help=f"only this kernel profile (repeatable; {', '.join(PROFILES)})")
    selection.add_argument("--json", action="store_true", help="print JSON instead of a table")

    conformance = sub.add_parser(
        "conformance", parents=[selection], help="run the conformance suite, print the matrix",
        description="Run the conformance suite (vmemcore.testing) over installed arches and print a\n"
                    "matrix: a row per target (arch, variant, kernel profile, feature flips), a column\n"
                    "per check: P passed, F failed, s skipped (the plugin's reason is listed below).\n"
                    "By default every variant at the default profile, the default variant at every\n"
                    "profile and each machine feature flipped once; --full crosses them all.\n"
                    "Exit 1 when a check fails. In a plugin's own repository, run the same checks\n"
                    "with pytest: a test module holding 'from vmemcore.testing.suite import *' and\n"
                    "'pytest --vmemcore-arch ARCH' (see docs/writing-a-plugin.md).",
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    conformance.add_argument("--arch", action="append", default=[], metavar="A", help="only this arch (repeatable)")
    conformance.add_argument("--full", action="store_true", help="every variant x profile x feature flip")
    conformance.set_defaults(func=_conformance)

    capabilities = sub.add_parser(
        "capabilities", parents=[selection], help="what each arch offers per variant and kernel profile",
        description="For every variant and kernel profile of ARCH (default: every installed arch), what\n"
                    "the arch offers, from its own hook answers on a small booted machine: HugeTLB\n"
                    "sizes (xN: N contiguous entries), HVO, device-dax vmemmap dedup, memory hotplug,\n"
                    "ZONE_DEVICE and memmap_on_memory; each no carries the kernel's reason.",
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    capabilities.add_argument("arch", nargs="?", metavar="ARCH", help="only this arch")
    capabilities.set_defaults(func=_capabilities)

    arches = sub.add_parser(
        "arches", parents=[common], help="list arch plugins, or show one arch's geometry",
        description="Without ARCH, list every arch plugin found (broken ones are named on stderr).\n"
                    "With ARCH, show its page-table and sparse geometry for a variant.",
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    arches.add_argument("arch", nargs="?", metavar="ARCH", help="show this arch's geometry")
    arches.add_argument("--variant", metavar="V",
                        help="a variant name, or options as KEY=VALUE[,KEY=VALUE] (default: the arch's default)")
    arches.add_argument("--kernel", metavar="K", default=DEFAULT_PROFILE,
                        help=f"kernel profile ({', '.join(PROFILES)}; default {DEFAULT_PROFILE})")
    arches.set_defaults(func=_arches)
    return parser


def main(argv=None):
    """Run the ``vmemcore`` command; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:  # the reader went away (``vmemcore ... | head``): not an error
        sys.stderr.close()
        return 0
    except (ScenarioError, BadRequest) as error:
        _error(error)
        return EXIT_INVALID
    except RunError as error:
        _error(error)
        return EXIT_PLUGIN if isinstance(error.cause, PluginError) else EXIT_FAILED
    except PluginError as error:
        _error(error)
        return EXIT_PLUGIN
    except MemoryError:  # this computer's memory, not the simulated machine's (that is OutOfMemory)
        _error("the simulator itself ran out of memory; the operation was rolled back")
        return EXIT_FAILED


def _error(message):
    print(f"vmemcore: error: {message}", file=sys.stderr)


def _number(text):
    """A non-negative integer, decimal or ``0x`` hex."""
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number (decimal or 0x hex), got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative number, got {text!r}")
    return value


def _simulate(args):
    """Validate and run the scenario of ``args``: ``(machine, step results)``."""
    registry = Registry(disabled=args.disabled)
    try:
        scenario = load_scenario(args.scenario, registry)
    except OSError as error:
        raise BadRequest(f"cannot read {args.scenario}: {error.strerror}") from None
    for error in registry.errors:
        print(f"vmemcore: warning: {error}", file=sys.stderr)
    if args.trace:
        os.environ[TRACE_ENV] = "1"
    return run_scenario(scenario, _announce if args.trace else None, registry)


def _run(args):
    data = report(*_simulate(args))
    print(json.dumps(data, indent=2) if args.json else format_report(data))
    return EXIT_OK


def _blocks(args):
    machine, _ = _simulate(args)
    data = hotplug_report(machine)
    print(json.dumps(data, indent=2) if args.json else format_blocks(data, machine.geometry.page_size))
    return EXIT_OK


def _folio(machine, size, index):
    """The hstate of ``size`` (None: the smallest size that has folios) and its ``index``-th folio
    by head pfn."""
    hstates = machine.hugetlb.hstates
    if size is None:
        pools = [h for _, h in sorted(hstates.items()) if h.folios]
        if not pools:
            raise BadRequest("the scenario leaves no HugeTLB folios: add [hugetlb] boot pages or a hugetlb.resize step")
        hstate = pools[0]
    else:
        hstate = machine.hugetlb.hstate(size)
    heads = sorted(hstate.folios)
    if index >= len(heads):
        raise BadRequest(f"no {hstate.name} folio #{index}: the pool holds {len(heads)} (nr_hugepages)")
    return hstate, hstate.folios[heads[index]]


def _kpageflags(args):
    if args.hugetlb is None and (args.check or args.index):
        raise BadRequest("--check and --index go with --hugetlb SIZE")
    if args.count != 1 and (args.hugetlb is not None or args.count == 0):
        raise BadRequest("--count N (at least 1) goes with --pfn; --hugetlb covers the whole folio")
    machine, _ = _simulate(args)
    folio = failure = None
    if args.hugetlb is None:
        end = machine.structpages.max_dump_pfn()
        if args.pfn >= end:
            raise BadRequest(f"--pfn {args.pfn:#x}: /proc/kpageflags ends at pfn {end:#x} (max_pfn rounded up to a section)")
        if args.pfn + args.count > end:
            print(f"vmemcore: note: /proc/kpageflags ends at pfn {end:#x}: {end - args.pfn:,} pfns shown", file=sys.stderr)
        if not args.json:
            for line in kpageflags_lines(machine, args.pfn, args.count):
                print(line)
            return EXIT_OK
        runs = kpageflags_runs(machine, args.pfn, args.count)
    else:
        hstate, folio = _folio(machine, args.hugetlb, args.index)
        runs = kpageflags_runs(machine, folio.head, 1 << folio.order)
        failure = check_folio_flags(folio.head, runs) if args.check else None
    if args.json:
        data = {"folio": None, "ranges": kpageflags_report(runs)}
        if folio is not None:
            data["folio"] = {"size": hstate.name, "index": args.index, **attrs.asdict(folio),
                             "optimized": machine.hugetlb.hvo.is_optimized(folio.head)}
        if args.check:
            data["check"] = {"passed": failure is None, "failure": failure}
        print(json.dumps(data, indent=2))
    else:
        if folio is not None:
            print(folio_title(machine, folio, f"#{args.index} of {hstate.nr_huge_pages}"))
        print(format_kpageflags(runs))
        if args.check:
            print(f"check failed: {failure}" if failure else
                  f"check passed: head pfn {folio.head:#x} has compound_head,huge; the {(1 << folio.order) - 1:,} other pfns "
                  "have compound_tail,huge and no compound_head (tools/testing/selftests/mm/hugepage-vmemmap.c)")
    return EXIT_FAILED if failure else EXIT_OK


def _diagram(args):
    machine, _ = _simulate(args)
    hstate, folio = _folio(machine, args.size, args.index)
    print(diagram(machine, folio, f"#{args.index} of {hstate.nr_huge_pages}"))
    return EXIT_OK


def _announce(step):
    print(f"[vmemcore] steps[{step.index}] {step.op}", file=sys.stderr)


def _selected(registry, arches, variants, kernels):
    """Check ``--arch``/``ARCH``, ``--variant`` and ``--kernel`` against what is installed."""
    for arch in arches:
        if arch not in registry.arches:
            raise PluginError(arch, None, registry.why_missing(arch)) if registry.broken else \
                BadRequest(registry.why_missing(arch))
    known = {v.name for a in (arches or registry.arches) for v in registry.get(a).info.variants}
    for variant in variants:
        if variant not in known:
            raise BadRequest(f"--variant {variant!r}: no such variant (variants: {', '.join(sorted(known))})")
    for kernel in kernels:
        if kernel not in PROFILES:
            raise BadRequest(f"--kernel {kernel!r}: no such profile (profiles: {', '.join(PROFILES)})")
    return arches


def _conformance(args):
    from .testing.runner import format_matrix, run_conformance

    registry = Registry(disabled=args.disabled)
    arches = _selected(registry, args.arch, args.variant, args.kernel)
    data = run_conformance(arches, args.variant, args.kernel, args.full, args.disabled)
    print(json.dumps(data, indent=2) if args.json else format_matrix(data))
    return EXIT_FAILED if data["failed"] else EXIT_OK


def _capabilities(args):
    from .testing.runner import capability_matrix, format_capabilities

    registry = Registry(disabled=args.disabled)
    arches = _selected(registry, [args.arch] if args.arch else [], args.variant, args.kernel)
    data = capability_matrix(registry, arches, args.variant, args.kernel)
    print(json.dumps(data, indent=2) if args.json else format_capabilities(data))
    return EXIT_OK


def _arches(args):
    registry = Registry(disabled=args.disabled)
    for error in registry.errors:
        print(f"vmemcore: {error}", file=sys.stderr)
    if args.arch is None:
        print(_listing(registry))
        return EXIT_OK
    if args.arch not in registry.arches:
        _error(registry.why_missing(args.arch))
        return EXIT_PLUGIN if registry.broken else EXIT_INVALID
    plugin = registry.get(args.arch)
    try:
        variant = plugin.info.variant(_variant_option(args.variant))
    except ValueError as error:
        raise BadRequest(str(error)) from None
    profile = get_profile(args.kernel)
    hooks = plugin.hooks()
    rows = describe_geometry(hooks.pagetable_geometry(variant, profile), hooks.sparse_geometry(variant, profile))
    options = ", ".join(f"{k}={v}" for k, v in variant.options.items())
    print(f"{plugin.info.name} {variant.name} ({options}), kernel {profile.name}, plugin {plugin.name}")
    wide = max(len(label) for label, _ in rows)
    print("\n".join(f"  {label:<{wide}}  {value}" for label, value in rows))
    return EXIT_OK


def _variant_option(value):
    """``--variant``: a name, or ``KEY=VALUE[,KEY=VALUE]`` options as a dict."""
    if not value or "=" not in value:
        return value
    pairs = [item.partition("=") for item in value.split(",")]
    if not all(key and sep for key, sep, _ in pairs):
        raise BadRequest(f"--variant {value!r}: write a variant name or KEY=VALUE[,KEY=VALUE]")
    return {key: val for key, _, val in pairs}


def _listing(registry):
    """Every arch: description, plugin, variants (default marked) and features."""
    blocks = []
    for plugin in registry.arches.values():
        info = plugin.info
        lines = [f"{info.name}  {info.description}  [plugin {plugin.name}]", "  variants:"]
        options = {v.name: ", ".join(f"{k}={val}" for k, val in v.options.items()) for v in info.variants}
        wide = max(len(name) for name in options)
        wopt = max(len(text) for text in options.values())
        for v in info.variants:
            mark = "  (default)" if v.name == info.default_variant else ""
            lines.append(f"    {v.name:<{wide}}  {options[v.name]:<{wopt}}  {v.description}{mark}")
        if info.features:
            lines.append("  features:")
            wide = max(len(f.name) for f in info.features)
            for f in info.features:
                lines.append(f"    {f.name:<{wide}}  {f.description} (default {'on' if f.default else 'off'})")
        else:
            lines.append("  features: none")
        blocks.append("\n".join(lines))
    for arch, names in sorted(registry.conflicts.items()):
        blocks.append(f"{arch}  refused: provided by {' and '.join(names)}; disable all but one with -p no:NAME")
    return "\n\n".join(blocks) if blocks else "no arch plugins found"
