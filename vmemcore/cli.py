"""The ``vmemcore`` command line: ``vmemcore run SCENARIO`` and ``vmemcore arches [ARCH]``."""

import argparse
import json
import os
import sys

from .errors import BadRequest, PluginError, ScenarioError
from .geometry import describe_geometry
from .plugins import TRACE_ENV, ArchHooks, Registry
from .profiles import DEFAULT_PROFILE, PROFILES, get_profile
from .report import format_report, report
from .scenario import OPS, REQUIRED, RunError, load_scenario, run_scenario

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_PLUGIN = 0, 1, 2, 3

EXIT_CODES = """\
exit codes:
  0  success
  1  the simulation failed (an error at boot or in a step; the message names it)
  2  invalid scenario or command line (the message names the key and line; nothing was simulated)
  3  a plugin failed to load or gave a bad answer (the message names the plugin and hook)
"""

def _op_keys(op):
    return ", ".join(key if default is REQUIRED else f"{key}={default}" for key, (_, default) in op.keys.items())


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

  [[steps]]                        # optional, run in order after boot
  op = "memmap.add"
  start = "64G"                    # start and size: whole 2M sub-sections
  size = "2M"

ops:
""" + "".join(f"  {op.name:<18} {_op_keys(op)}: {op.help}\n" for op in OPS.values()) + "\n" + EXIT_CODES


def _plugin_option(value):
    if not value.startswith("no:") or len(value) == 3:
        raise argparse.ArgumentTypeError(f"expected no:NAME (disable plugin NAME), got {value!r}")
    return value[3:]


def build_parser():
    """The argument parser of ``vmemcore``."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-p", dest="disabled", metavar="no:NAME", action="append", type=_plugin_option, default=[],
                        help="disable the plugin NAME (its entry-point or module name); repeatable")
    parser = argparse.ArgumentParser(
        prog="vmemcore",
        description="Simulate the Linux kernel's sparse-vmemmap machinery on several architectures.",
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run", parents=[common], help="validate and simulate a scenario file, print the counters",
        description="Validate SCENARIO (nothing runs if it has an error), boot its machine, run its\n"
                    "steps and print the kernel-named counters and what each step changed.",
        epilog=RUN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("scenario", metavar="SCENARIO", help="a scenario TOML file (see examples/)")
    run.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    run.add_argument("--trace", action="store_true",
                     help=f"trace every plugin hook call on stderr (same as {TRACE_ENV}=1)")
    run.set_defaults(func=_run)

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
    except (ScenarioError, BadRequest) as error:
        _error(error)
        return EXIT_INVALID
    except RunError as error:
        _error(error)
        return EXIT_PLUGIN if isinstance(error.cause, PluginError) else EXIT_FAILED
    except PluginError as error:
        _error(error)
        return EXIT_PLUGIN


def _error(message):
    print(f"vmemcore: error: {message}", file=sys.stderr)


def _run(args):
    registry = Registry(disabled=args.disabled)
    try:
        scenario = load_scenario(args.scenario, registry)
    except OSError as error:
        _error(f"cannot read {args.scenario}: {error.strerror}")
        return EXIT_INVALID
    for error in registry.errors:
        print(f"vmemcore: warning: {error}", file=sys.stderr)
    if args.trace:
        os.environ[TRACE_ENV] = "1"
    machine, results = run_scenario(scenario, _announce if args.trace else None, registry)
    data = report(machine, results)
    print(json.dumps(data, indent=2) if args.json else format_report(data))
    return EXIT_OK


def _announce(step):
    print(f"[vmemcore] steps[{step.index}] {step.op}", file=sys.stderr)


def _arches(args):
    registry = Registry(disabled=args.disabled)
    for error in registry.errors:
        print(f"vmemcore: {error}", file=sys.stderr)
    if args.arch is None:
        print(_listing(registry))
        return EXIT_OK
    if args.arch not in registry.arches:
        _error(f"no plugin provides architecture {args.arch!r} (found: {', '.join(registry.arches) or 'none'})")
        return EXIT_INVALID
    plugin = registry.get(args.arch)
    try:
        variant = plugin.info.variant(_variant_option(args.variant))
    except ValueError as error:
        raise BadRequest(str(error)) from None
    profile = get_profile(args.kernel)
    hooks = ArchHooks(plugin.name, plugin.plugin)
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
    return "\n\n".join(blocks) if blocks else "no arch plugins found"
