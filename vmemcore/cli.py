"""The ``vmemcore`` command line: ``run``, ``blocks``, ``kpageflags`` and ``diagram`` of a scenario,
``compare`` and ``sweep`` of scenarios, ``arches``, ``capabilities`` and ``conformance``; ``--json``
output goes through :mod:`vmemcore.jsonout`."""

import argparse
import os
import sys

import attrs

from . import jsonout, progress
from .errors import BadRequest, PluginError, ScenarioError, VmemcoreError, did_you_mean
from .geometry import describe_geometry
from .plugins import TRACE_ENV, Registry
from .profiles import DEFAULT_PROFILE, PROFILES, SPAN, get_profile, kernel_error
from .stats import SWEEP_COUNTERS

# The commands that simulate import the engine's numpy modules (report, diagram, ptdump) inside
# their functions: ``vmemcore --help`` and ``vmemcore arches`` load no numpy. The scenario layer
# (vmemcore.scenario, .overrides and the engine they bring: config, physmem, hotplug, tomllib) and
# importlib.metadata are imported where they are used too, so that neither command loads them.

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
    from .scenario import REQUIRED

    return ", ".join(key if default is REQUIRED else f"[{key}]" if default is None else f"{key}={default}"
                     for key, (_, default) in op.keys.items())


def _run_epilog():
    """The epilog of ``vmemcore run --help``: the scenario format and the table of ops."""
    from .scenario import OPS

    return RUN_EPILOG + "".join(f"  {op.name:<{max(map(len, OPS))}}  {_op_keys(op)}: {op.help}\n"
                                for op in OPS.values()) + "\n" + EXIT_CODES


RUN_EPILOG = f"""\
scenario format (TOML; full reference in docs/scenarios.md):

  [machine]
  arch = "x86_64"                  # required: see `vmemcore arches`
  variant = "4-level"              # a variant name or {{ paging = "4-level" }}; default: the arch's
  kernel = "6.12"                  # any version {SPAN} ("6.8", "6.12.42") or 2019 (default {DEFAULT_PROFILE})
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
"""


class _UsageError(SystemExit):
    """argparse's exit on a bad command line (code 2), keeping its message for ``--json``."""

    def __init__(self, message):
        super().__init__(EXIT_INVALID)
        self.message = message


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors keep their message (:class:`_UsageError`), and whose
    epilog may be a function, called when the help is shown (``run``'s lists the ops)."""

    def format_help(self):
        if callable(self.epilog):
            self.epilog = self.epilog()
        return super().format_help()

    def error(self, message):
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise _UsageError(f"{self.prog}: {message}")


class _Version(argparse.Action):
    """``--version``: argparse's version action, the installed version read only when asked."""

    def __call__(self, parser, namespace, values, option_string=None):
        from importlib.metadata import version

        print(f"{parser.prog} {version('vmemcore')}")
        parser.exit()


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
    parser = _Parser(
        prog="vmemcore",
        description="Simulate the Linux kernel's sparse-vmemmap machinery on several architectures.",
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action=_Version, nargs=0, default=argparse.SUPPRESS, help="show program's version number and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    running = argparse.ArgumentParser(add_help=False, parents=[common])
    running.add_argument("--trace", action="store_true",
                         help=f"trace every plugin hook call on stderr (same as {TRACE_ENV}=1)")
    running.add_argument("--quiet", action="store_true", help="no progress on stderr (shown only on a terminal)")
    scenario = argparse.ArgumentParser(add_help=False, parents=[running])
    scenario.add_argument("scenario", metavar="SCENARIO", help="a scenario TOML file (see examples/); - reads it from stdin")
    setting = argparse.ArgumentParser(add_help=False)
    setting.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="sets",
                         help="set a scenario key before validation (repeatable): machine.kernel=7.1, "
                              "memory[0].size=64G, steps[0].count=8; arch, variant, kernel alone mean "
                              "machine.*; a value is TOML (8, true, \"16G\", { paging = \"5-level\" }) or else "
                              "a string (16G, 6.10); a new arch drops the file's variant and features "
                              "(docs/sweeps.md)")
    for name in ("arch", "variant", "kernel"):
        setting.add_argument(f"--{name}", metavar=name[0].upper(), help=f"same as --set machine.{name}={name[0].upper()}")
    scenario_set = argparse.ArgumentParser(add_help=False, parents=[scenario, setting])

    run = sub.add_parser(
        "run", parents=[scenario_set], help="validate and simulate a scenario file, print the counters",
        description="Validate SCENARIO (nothing runs if it has an error), boot its machine, run its\n"
                    "steps and print the kernel-named counters and what each step changed.",
        epilog=_run_epilog, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    run.add_argument("--check-live-entries", action="store_true",
                     help="check every page-table write against the arch's live-entry rule (break-before-make) "
                          "and report the violations (docs/live-entries.md); they do not change the exit code")
    run.set_defaults(func=_run)

    blocks = _scenario_command(
        sub, scenario_set, "blocks", "run a scenario, print its memory blocks",
        "Run SCENARIO, then print its hot-added memory blocks as /sys/devices/system/memory\n"
        "shows them: id, start, size, node, state, zone and the pages each hosts its\n"
        "memmap in (memmap_on_memory); more than 16 blocks are collapsed into runs of\n"
        "consecutive blocks that look the same.")
    blocks.add_argument("--json", action="store_true",
                        help="print JSON: memmap_on_memory, block_size, blocks and zones")
    blocks.set_defaults(func=_blocks)

    kpageflags = _scenario_command(
        sub, scenario_set, "kpageflags", "run a scenario, print the /proc/kpageflags of pfns",
        "Run SCENARIO, then print the flags /proc/kpageflags reports for the pfns\n"
        "[PFN, PFN+N), or for every pfn of a HugeTLB folio with runs of identical flags\n"
        "collapsed (page-types style: pfn, flags in hex, symbolic names).")
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

    draw = _scenario_command(
        sub, scenario_set, "diagram", "run a scenario, draw a HugeTLB folio's vmemmap before and after HVO",
        "Run SCENARIO, pick a HugeTLB folio and draw its vmemmap mapping before and\n"
        "after HugeTLB Vmemmap Optimization, read from the simulated page tables. The side\n"
        "that is not the current state is computed in a rolled-back transaction.")
    draw.add_argument("--size", help="the HugeTLB size (default: the smallest size that has folios)")
    draw.add_argument("--index", type=_number, default=0, help="the folio's position by head pfn (default 0)")
    draw.add_argument("--json", action="store_true", help="print both mappings as JSON instead of a drawing")
    draw.set_defaults(func=_diagram)

    dump = _scenario_command(
        sub, scenario_set, "ptdump", "run a scenario, print the vmemmap's page tables as the arch's ptdump does",
        "Run SCENARIO and print the vmemmap region of the kernel page table in the arch's\n"
        "own debugfs format (kernel_page_tables: arch/x86/mm/dump_pagetables.c,\n"
        "arch/arm64/mm/ptdump.c, ...): runs of entries of one level with the same\n"
        "attributes merged, with their size (docs/ptdump.md).")
    dump.add_argument("--after-step", type=_step_number, metavar="N",
                      help="dump after steps[N] (boot: after boot; default: after the last step)")
    dump.add_argument("--phys", action="store_true",
                      help="show each run's physical address (a run then also ends where they stop following on)")
    dump.add_argument("--diff", nargs=2, type=_step_number, metavar=("A", "B"),
                      help="show what changed between the dump after steps[A] and after steps[B] (boot: after boot)")
    dump.add_argument("--json", action="store_true", help="print JSON (the runs and lines) instead of lines")
    dump.set_defaults(func=_ptdump)

    compare = sub.add_parser(
        "compare", parents=[running, setting], help="run two scenarios (or one, set two ways), print counters side by side",
        description="Run scenario A and scenario B (default: A again) and print every counter of both\n"
                    "with the difference B - A, then what each step changed on each side. --set and\n"
                    "the shortcuts apply to both sides, --a and --b to one, e.g.\n"
                    "  vmemcore compare examples/x86_64-hvo-2M.toml --a kernel=6.12 --b kernel=7.1\n"
                    "  vmemcore compare examples/x86_64-16G.toml examples/x86_64-2nodes-1T.toml",
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    compare.add_argument("scenario", metavar="A", help="a scenario TOML file")
    compare.add_argument("other", metavar="B", nargs="?", help="a second scenario TOML file (default: A)")
    for side in ("a", "b"):
        compare.add_argument(f"--{side}", action="append", default=[], metavar="KEY=VALUE", dest=f"sets_{side}",
                             help=f"set a scenario key on side {side.upper()} only (repeatable; as --set)")
    compare.add_argument("--json", action="store_true", help='print JSON ("schema": 1) instead of tables')
    compare.set_defaults(func=_compare)

    sweep = sub.add_parser(
        "sweep", parents=[common], help="run a scenario at every combination of values of some keys, on Dask",
        description="Run SCENARIO once per point of the product of the --set values, each point a full\n"
                    "run, in parallel on a Dask cluster: a local one (one worker process per CPU, or\n"
                    "--workers N) or the scheduler at --scheduler ADDRESS, whose workers must have\n"
                    "vmemcore and the same plugins installed. Print one row per point (a table, --csv\n"
                    "or --json lines), and with --plot a chart of counters against a swept key:\n"
                    "  vmemcore sweep examples/x86_64-16G.toml --set machine.arch=x86_64,arm64,s390,powerpc \\\n"
                    "      --set memory[0].size=16G,256G,4T --plot memmap.png\n"
                    "A point whose keys do not validate (a variant the arch lacks) is 'invalid', one whose\n"
                    "boot or a step fails is 'failed'; either is listed with its error and the sweep goes\n"
                    "on. Exit 1 if a point did not run to the end, 2 if none was valid (docs/sweeps.md).",
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sweep.add_argument("scenario", metavar="SCENARIO", help="a scenario TOML file (see examples/); - reads it from stdin")
    sweep.add_argument("--set", action="append", required=True, metavar="KEY=V1,V2,...", dest="sets",
                       help="a swept key and its values, split at commas outside quotes and braces (repeatable; "
                            "keys and values as in run --set)")
    sweep.add_argument("--y", metavar="COUNTER[,COUNTER]", help=f"the counters of the table and the plot (default {','.join(SWEEP_COUNTERS)})")
    sweep.add_argument("--bytes", action="store_true",
                       help="counters counted in pages (names with pages or frames) in bytes: x each point's page size")
    sweep.add_argument("--x", metavar="KEY", help="--plot: the key on the x axis (default: the first swept key of sizes or integers)")
    sweep.add_argument("--group", metavar="KEY[,KEY]", help="--plot: one line per value of these keys (default: every other swept key)")
    sweep.add_argument("--plot", metavar="FILE", help="draw the chart to FILE.png or FILE.svg")
    output = sweep.add_mutually_exclusive_group()
    output.add_argument("--csv", action="store_true", help="print CSV (every counter) instead of a table")
    output.add_argument("--json", action="store_true", help='print JSON lines, one object ("schema": 1) per point')
    sweep.add_argument("--scheduler", metavar="ADDRESS", help="run on this Dask scheduler (tcp://HOST:PORT) instead of a local cluster")
    sweep.add_argument("--workers", type=_number, metavar="N", help="local cluster: N worker processes (default: one per CPU)")
    sweep.add_argument("--quiet", action="store_true", help="no progress bar on stderr (shown only on a terminal)")
    sweep.set_defaults(func=_sweep)

    selection = argparse.ArgumentParser(add_help=False, parents=[common])
    selection.add_argument("--variant", action="append", default=[], metavar="V", help="only this variant (repeatable)")
    selection.add_argument("--kernel", action="append", default=[], metavar="K",
                           help=f"only this kernel (repeatable; a version {SPAN} or a profile: {', '.join(PROFILES)})")
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
                        help=f"kernel version ({SPAN}, or a profile: {', '.join(PROFILES)}; default {DEFAULT_PROFILE})")
    arches.add_argument("--json", action="store_true", help="print JSON instead of text")
    arches.set_defaults(func=_arches)

    profiles = sub.add_parser(
        "profiles", parents=[common], help="the kernel timeline, or what one kernel version has",
        description="Without VERSION, list every dated kernel change modelled (the engine's, and with\n"
                    "--arch one arch plugin's, else every installed plugin's): what it changes, the\n"
                    "commit, the mainline release and the stable point releases that received it,\n"
                    "and the named profiles. With VERSION (X.Y or X.Y.Z, "
                    f"{SPAN}, or a profile\nname), say which of those changes that version has "
                    "and the profile fields they\ngive.",
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    profiles.add_argument("version", nargs="?", metavar="VERSION", help="a kernel version such as 6.12.42, or a profile name")
    profiles.add_argument("--arch", metavar="A", help="this arch plugin's changes only (default: every installed arch)")
    profiles.add_argument("--json", action="store_true", help="print JSON instead of text")
    profiles.set_defaults(func=_profiles)
    return parser


def _scenario_command(sub, parent, name, help, description):
    """A command that runs a scenario, then shows something of the machine."""
    return sub.add_parser(name, parents=[parent], help=help, description=description, epilog=EXIT_CODES,
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def main(argv=None):
    """Run the ``vmemcore`` command; returns the exit code. A failure is printed on stderr, and
    with ``--json`` also as a JSON error object on stdout."""
    try:
        args = build_parser().parse_args(argv)
    except _UsageError as usage:
        if "--json" in (sys.argv[1:] if argv is None else argv):
            print(jsonout.dumps(jsonout.error_data(BadRequest(usage.message))))
        raise
    try:
        return args.func(args)
    except BrokenPipeError:  # the reader went away (``vmemcore ... | head``): not an error
        sys.stderr.close()
        return 0
    except VmemcoreError as error:
        print(f"vmemcore: error: {error}", file=sys.stderr)
        if getattr(args, "json", False):
            path = "<stdin>" if getattr(args, "scenario", None) == "-" else getattr(args, "scenario", None)
            print(jsonout.dumps(jsonout.error_data(error, path)))
        return _exit_code(error)
    except MemoryError:  # this computer's memory, not the simulated machine's (that is OutOfMemory)
        print("vmemcore: error: the simulator itself ran out of memory; the operation was rolled back", file=sys.stderr)
        return EXIT_FAILED


def _exit_code(error):
    """2 for bad input, 3 for a plugin's failure, 1 for a failed simulation."""
    from .scenario import RunError

    cause = error.cause if isinstance(error, RunError) else error
    if isinstance(cause, PluginError):
        return EXIT_PLUGIN
    if isinstance(error, (ScenarioError, BadRequest)):
        return EXIT_INVALID
    return EXIT_FAILED


def _number(text):
    """A non-negative integer, decimal or ``0x`` hex."""
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number (decimal or 0x hex), got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative number, got {text!r}")
    return value


def _simulate(args, path=None, settings=None, last_step=None, after_step=None):
    """Validate and run the scenario of ``args`` (or ``path``) with the keys its options set (or
    ``settings``): ``(machine, step results)``; ``last_step``: stop after that step (-1: after
    boot); ``after_step(machine, index)``: called after boot and each step."""
    from . import overrides
    from .scenario import load_scenario, run_scenario

    path = path or args.scenario
    if settings is None:
        settings = overrides.command_line(args.sets, args.arch, args.variant, args.kernel)
    registry = Registry(disabled=args.disabled)
    try:
        scenario = load_scenario(path, registry, settings)
    except OSError as error:
        raise BadRequest(f"cannot read {path}: {error.strerror}") from None
    for error in registry.errors:
        print(f"vmemcore: warning: {error}", file=sys.stderr)
    if last_step is not None:
        if last_step >= len(scenario.steps):
            raise BadRequest(f"{path} has {len(scenario.steps)} steps (steps[0] to steps[{len(scenario.steps) - 1}]): "
                             f"there is no step {last_step}")
        scenario = attrs.evolve(scenario, steps=scenario.steps[:last_step + 1])
    if args.trace:
        os.environ[TRACE_ENV] = "1"
    with progress.steps(scenario, progress.wanted(args.quiet)) as shown:
        return run_scenario(scenario, (lambda step: (shown(step), _announce(step))) if args.trace else shown, registry,
                            check_live_entries=getattr(args, "check_live_entries", False), after_step=after_step)


def _run(args):
    from .report import format_report, report

    data = report(*_simulate(args))
    print(jsonout.dumps(data) if args.json else format_report(data))
    return EXIT_OK


def _compare(args):
    from . import overrides
    from .compare import compare_reports, format_compare
    from .report import report

    if args.other is None and not (args.sets_a or args.sets_b):
        raise BadRequest("compare needs a second scenario B, or --a/--b keys that make the two sides differ")
    both = overrides.command_line(args.sets, args.arch, args.variant, args.kernel)
    sides = [(path, both + [overrides.override(text, f"--{side}") for text in sets])
             for side, path, sets in (("a", args.scenario, args.sets_a), ("b", args.other or args.scenario, args.sets_b))]
    data = compare_reports(*(report(*_simulate(args, path, settings)) for path, settings in sides), sides)
    print(jsonout.dumps(data) if args.json else format_compare(data))
    return EXIT_OK


def _sweep(args):
    from . import plot, sweep
    from .scenario import read_scenario

    axes = sweep.axes_of(args.sets)
    counters = args.y.split(",") if args.y else list(SWEEP_COUNTERS)
    if args.plot:
        plot.check_format(args.plot)
        x, group = plot.plot_axes(axes, args.x, args.group.split(",") if args.group else None)
    try:
        text, path = read_scenario(args.scenario)
    except OSError as error:
        raise BadRequest(f"cannot read {args.scenario}: {error.strerror}") from None
    records = sweep.run_sweep(path, text, axes, args.disabled, args.scheduler, args.workers,
                              progress.wanted(args.quiet))
    sweep.check_counters(records, counters)
    if args.bytes:
        records = sweep.in_bytes(records)
    print(sweep.format_json_lines(records) if args.json else sweep.format_csv(records) if args.csv
          else sweep.format_table(records, counters))
    if args.plot:
        plot.sweep_figure(records, x, group, counters, path, args.bytes).savefig(args.plot)
    bad = [r for r in records if r["status"] != "ok"]
    if bad:
        print(f"vmemcore: error: {len(bad)} of {len(records)} points did not run to the end (their errors are in "
              "the output)", file=sys.stderr)
    return EXIT_INVALID if all(r["status"] == "invalid" for r in records) else EXIT_FAILED if bad else EXIT_OK


def _blocks(args):
    from .report import format_blocks, hotplug_report

    machine, _ = _simulate(args)
    data = hotplug_report(machine)
    print(jsonout.dumps(data) if args.json else format_blocks(data, machine.geometry.page_size))
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
    heads = hstate.folios.heads()
    if index >= len(heads):
        raise BadRequest(f"no {hstate.name} folio #{index}: the pool holds {len(heads)} (nr_hugepages)")
    return hstate, hstate.folios[int(heads[index])]


def _kpageflags(args):
    from .diagram import folio_title
    from .report import check_folio_flags, format_kpageflags, kpageflags_lines, kpageflags_report, kpageflags_runs

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
            data["folio"] = {"size": hstate.name, "index": args.index, **folio._asdict(),
                             "optimized": machine.hugetlb.hvo.is_optimized(folio.head)}
        if args.check:
            data["check"] = {"passed": failure is None, "failure": failure}
        print(jsonout.dumps(data))
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
    from .diagram import diagram, diagram_data

    machine, _ = _simulate(args)
    hstate, folio = _folio(machine, args.size, args.index)
    if args.json:
        print(jsonout.dumps({"size": hstate.name, "index": args.index, **diagram_data(machine, folio)}))
    else:
        print(diagram(machine, folio, f"#{args.index} of {hstate.nr_huge_pages}"))
    return EXIT_OK


def _step_number(text):
    """A step index, or ``boot`` (-1)."""
    return -1 if text == "boot" else _number(text)


def _ptdump(args):
    from .ptdump import ptdump_data, ptdump_diff, ptdump_lines

    if args.diff is not None and args.after_step is not None:
        raise BadRequest("--after-step and --diff do not go together: --diff A B names both steps")
    wanted = tuple(args.diff) if args.diff is not None else (args.after_step,)
    dumps = {}

    def look(machine, index):
        if index in wanted:
            dumps[index] = (ptdump_data if args.json else ptdump_lines)(machine, args.phys)

    last = None if wanted == (None,) else max(wanted)
    machine, _ = _simulate(args, last_step=last, after_step=look if last is not None else None)
    if args.diff is None:
        dump = dumps[args.after_step] if last is not None else (ptdump_data if args.json else ptdump_lines)(machine, args.phys)
        print(jsonout.dumps({"after_step": _step_name(args.after_step), **dump}) if args.json else "\n".join(dump))
        return EXIT_OK
    a, b = (_step_name(index) for index in args.diff)
    before, after = (dumps[index] for index in args.diff)
    if args.json:
        changed = ptdump_diff(before["lines"], after["lines"], (a, b))
        print(jsonout.dumps({"arch": after["arch"], "format": after["format"], "a": a, "b": b,
                             "removed": [line[1:] for line in changed[2:] if line.startswith("-")],
                             "added": [line[1:] for line in changed[2:] if line.startswith("+")],
                             "before": before, "after": after}))
    else:
        print("\n".join(ptdump_diff(before, after, (f"after {a}", f"after {b}"))))
    return EXIT_OK


def _step_name(index):
    return "boot" if index == -1 else f"steps[{index}]" if index is not None else "last step"


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
            raise BadRequest(f"--variant {variant!r}: no such variant (variants: {', '.join(sorted(known))})"
                             + did_you_mean(variant, known))
    for kernel in kernels:
        if kernel_error(kernel):
            raise BadRequest(f"--kernel {kernel!r}: {kernel_error(kernel)}")
    return arches


def _conformance(args):
    from .testing.runner import format_matrix, run_conformance

    registry = Registry(disabled=args.disabled)
    arches = _selected(registry, args.arch, args.variant, args.kernel)
    data = run_conformance(arches, args.variant, args.kernel, args.full, args.disabled)
    print(jsonout.dumps(data) if args.json else format_matrix(data))
    return EXIT_FAILED if data["failed"] else EXIT_OK


def _capabilities(args):
    from .testing.runner import capability_matrix, format_capabilities

    registry = Registry(disabled=args.disabled)
    arches = _selected(registry, [args.arch] if args.arch else [], args.variant, args.kernel)
    data = capability_matrix(registry, arches, args.variant, args.kernel)
    print(jsonout.dumps(data) if args.json else format_capabilities(data))
    return EXIT_OK


def _arches(args):
    registry = Registry(disabled=args.disabled)
    for error in registry.errors:
        print(f"vmemcore: {error}", file=sys.stderr)
    if args.arch is None:
        print(jsonout.dumps(_listing_data(registry)) if args.json else _listing(registry))
        return EXIT_OK
    plugin = registry.get(_selected(registry, [args.arch], [], [])[0])
    try:
        variant = plugin.info.variant(_variant_option(args.variant))
    except ValueError as error:
        raise BadRequest(str(error)) from None
    profile = get_profile(args.kernel)
    hooks = plugin.hooks()
    pagetable, sparse = hooks.pagetable_geometry(variant, profile), hooks.sparse_geometry(variant, profile)
    if args.json:
        print(jsonout.dumps({"arch": plugin.info.name, "plugin": plugin.name, "variant": variant.name,
                             "variant_options": dict(variant.options), "kernel": profile.name,
                             **_geometry_data(pagetable, sparse)}))
        return EXIT_OK
    rows = describe_geometry(pagetable, sparse)
    options = ", ".join(f"{k}={v}" for k, v in variant.options.items())
    print(f"{plugin.info.name} {variant.name} ({options}), kernel {profile.name}, plugin {plugin.name}")
    wide = max(len(label) for label, _ in rows)
    print("\n".join(f"  {label:<{wide}}  {value}" for label, value in rows))
    return EXIT_OK


def _profiles(args):
    from .timeline_view import format_timeline, format_version_view, timeline_data, version_data

    registry = Registry(disabled=args.disabled)
    for error in registry.errors:
        print(f"vmemcore: {error}", file=sys.stderr)
    arches = _selected(registry, [args.arch] if args.arch else [], [], [])
    plugins = [registry.get(arch) for arch in (arches or sorted(registry.arches))]
    if args.version is None:
        data = timeline_data(plugins)
        print(jsonout.dumps(data) if args.json else format_timeline(data))
        return EXIT_OK
    data = version_data(get_profile(args.version), plugins)
    print(jsonout.dumps(data) if args.json else format_version_view(data))
    return EXIT_OK


def _variant_option(value):
    """``--variant``: a name, or ``KEY=VALUE[,KEY=VALUE]`` options as a dict."""
    if not value or "=" not in value:
        return value
    pairs = [item.partition("=") for item in value.split(",")]
    if not all(key and sep for key, sep, _ in pairs):
        raise BadRequest(f"--variant {value!r}: write a variant name or KEY=VALUE[,KEY=VALUE]")
    return {key: val for key, _, val in pairs}


def _geometry_data(pagetable, sparse):
    """``pagetable`` (levels top down) and ``sparse`` geometry as plain data, sizes in bytes."""
    levels = [{"name": lv.name, "hw_name": lv.hw_name or None, "shift": lv.shift, "entries": lv.entries,
               "table_bytes": lv.table_bytes, "alloc_bytes": lv.alloc_bytes,
               "boot_alloc_bytes": lv.boot_alloc_bytes, "entry_span": lv.entry_span,
               "leaf": lv.leaf} for lv in pagetable.levels]
    return {
        "pagetable": {"page_size": pagetable.page_size, "va_bits": pagetable.va_bits, "levels": levels},
        "sparse": {**attrs.asdict(sparse), "section_size": sparse.section_size,
                   "section_memmap_bytes": sparse.section_memmap_bytes},
    }


def _listing_data(registry):
    """Every arch as plain data (what :func:`_listing` prints), arches refused for having two
    plugins, and plugins that failed to load."""
    arches = [{"arch": p.info.name, "description": p.info.description, "plugin": p.name,
               "default_variant": p.info.default_variant,
               "variants": [{"name": v.name, "options": dict(v.options), "description": v.description}
                            for v in p.info.variants],
               "features": [{"name": f.name, "description": f.description, "default": f.default}
                            for f in p.info.features]}
              for _, p in sorted(registry.arches.items())]
    return {"arches": arches,
            "refused": [{"arch": arch, "plugins": names} for arch, names in sorted(registry.conflicts.items())],
            "errors": [str(error) for error in registry.errors]}


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
