"""The conformance suite as a pytest plugin: what an architecture port runs to prove it behaves.

Registered through the ``pytest11`` entry point (or ``pytest -p vmemcore.testing``). A plugin's
repository collects the checks with one line in a test module::

    from vmemcore.testing.suite import *  # noqa: F401,F403

and runs ``pytest --vmemcore-arch riscv64`` (or sets ``VMEMCORE_ARCHES = ["riscv64"]`` in that
module). Without either, every installed arch is checked. Each check is parametrized over targets, arch × variant × kernel profile × machine
features: by default every variant at the default profile, the default variant at every profile,
and each feature flipped once (``--vmemcore-full``: every combination). ``--vmemcore-variant`` and
``--vmemcore-kernel`` narrow the set. A check that does not apply to a target's capabilities (from
the plugin's own hook answers) is skipped with the plugin's reason; ``vmemcore conformance`` runs
the suite and prints the matrix.
"""

import itertools

import attrs
import pytest

from ..errors import VmemcoreError
from ..machine import Machine
from ..plugins import Registry
from ..profiles import DEFAULT_PROFILE, PROFILES, SPAN, get_profile, select_kernels
from .capabilities import Capabilities, boot_memory, probe


@attrs.frozen
class Target:
    """One machine the suite checks: an arch's variant under a kernel profile, with features."""

    plugin: str
    arch: str
    variant: str
    kernel: str
    features: tuple = ()  # (name, value) pairs that differ from the arch's defaults

    @property
    def id(self) -> str:
        flips = "".join(f"-{name}={'on' if value else 'off'}" for name, value in self.features)
        return f"{self.arch}-{self.variant}-{self.kernel}{flips}"

    def machine(self, registry, memory=None, **kwargs) -> Machine:
        """Boot this target with ``memory`` bytes on node 0 (default: :func:`boot_memory`), with the
        bad page checks of the free path on (vmemcore/badpage.py)."""
        kwargs.setdefault("check_bad_pages", True)
        if memory is None:
            sparse = registry.get(self.arch).hooks().sparse_geometry(
                registry.get(self.arch).info.variant(self.variant), get_profile(self.kernel))
            memory = boot_memory(sparse)
        return Machine(self.arch, variant=self.variant, kernel=self.kernel, memory=[{"size": memory}],
                       features=dict(self.features), registry=registry, **kwargs)


def targets(registry, arches=(), variants=(), kernels=(), full=False) -> list:
    """The targets of the installed arches ``arches`` (all when empty), narrowed to ``variants`` and
    ``kernels``; ``full`` crosses every variant, profile and single feature flip."""
    out = []
    for arch in sorted(arches or registry.arches):
        plugin = registry.get(arch)
        info = plugin.info
        names = [v.name for v in info.variants if not variants or v.name in variants]
        profiles = select_kernels(kernels)
        flips = [()] + [((f.name, not f.default),) for f in info.features]
        if full:
            combos = itertools.product(names, profiles, flips)
        else:
            variant = info.default_variant if info.default_variant in names else names[0] if names else None
            kernel = DEFAULT_PROFILE if DEFAULT_PROFILE in profiles else profiles[0] if profiles else None
            combos = [(v, kernel, ()) for v in names] + [(variant, k, ()) for k in profiles if k != kernel]
            combos += [(variant, kernel, flip) for flip in flips[1:]]
            combos = [c for c in combos if c[0] is not None and c[1] is not None]
        out += [Target(plugin.name, arch, v, k, f) for v, k, f in combos]
    return out


# -- the pytest plugin ------------------------------------------------------------------------------

def pytest_addoption(parser):
    group = parser.getgroup("vmemcore", "vmemcore conformance suite")
    group.addoption("--vmemcore-arch", action="append", default=[], metavar="ARCH",
                    help="check this installed arch (repeatable; default: every installed arch)")
    group.addoption("--vmemcore-variant", action="append", default=[], metavar="VARIANT",
                    help="only this variant (repeatable)")
    group.addoption("--vmemcore-kernel", action="append", default=[], metavar="K",
                    help=f"only this kernel (repeatable; a version {SPAN} or a profile: {', '.join(PROFILES)})")
    group.addoption("--vmemcore-disable", action="append", default=[], metavar="PLUGIN",
                    help="disable this plugin by its plugin name (repeatable; as vmemcore's -p no:PLUGIN)")
    group.addoption("--vmemcore-sequences", type=int, default=3, metavar="N",
                    help="random operation sequences per target in the stateful check (default 3; "
                         "10000 for a long run)")
    group.addoption("--vmemcore-full", action="store_true",
                    help="every variant x profile x feature flip (default: each variant at the default "
                         "profile, the default variant at every profile, each feature flipped once)")


_registry = None
_disabled = ()
_capabilities = {}


def pytest_configure(config):
    """A new session discovers the plugins anew (pytester runs sessions inside one process)."""
    global _registry, _disabled
    _registry = None
    _disabled = tuple(config.getoption("vmemcore_disable", default=[]) or ())
    _capabilities.clear()


def session_registry() -> Registry:
    """The installed plugins (less ``--vmemcore-disable``), discovered once per test session."""
    global _registry
    if _registry is None:
        _registry = Registry(disabled=_disabled)
    return _registry


def pytest_generate_tests(metafunc):
    if "vmemcore_target" not in metafunc.fixturenames:
        return
    option = metafunc.config.getoption
    registry = session_registry()
    arches = option("vmemcore_arch") or getattr(metafunc.module, "VMEMCORE_ARCHES", ())
    unknown = [a for a in arches if a not in registry.arches]
    if unknown:
        raise pytest.UsageError(f"--vmemcore-arch: {registry.why_missing(unknown[0])}")
    found = targets(registry, arches, option("vmemcore_variant"), option("vmemcore_kernel"), option("vmemcore_full"))
    metafunc.parametrize("vmemcore_target", found, ids=[t.id for t in found])


@pytest.fixture
def vmemcore_registry():
    """The installed arch plugins (one discovery per session)."""
    return session_registry()


@pytest.fixture
def capabilities(vmemcore_target, vmemcore_registry) -> Capabilities:
    """What the target offers, from its plugin's hook answers (probed once per target)."""
    if vmemcore_target not in _capabilities:
        _capabilities[vmemcore_target] = probe(
            lambda: vmemcore_target.machine(vmemcore_registry, hotplug={"memmap_on_memory": "Y"}))
    return _capabilities[vmemcore_target]


@pytest.fixture
def boot(vmemcore_target, vmemcore_registry, capabilities):
    """``boot(**kwargs)``: a freshly booted machine of the target (skipped if it cannot boot)."""
    require(capabilities.boots, "does not boot")

    def make(memory=None, **kwargs):
        return vmemcore_target.machine(vmemcore_registry, memory, **kwargs)

    return make


def remove_blocks(m, pending):
    """Offline (where online) and remove the memory blocks ``pending`` in that order; a block whose
    offline fails (-EBUSY: it holds a newer block's memmap) is retried after the others, as an
    administrator would. A block that can never go is an error."""
    pending = list(pending)
    while pending:
        for block in pending:
            try:
                if m.hotplug.blocks[block].state != "offline":
                    m.hotplug.offline(block)
            except VmemcoreError:
                continue
            b = m.hotplug.blocks[block]
            m.hotplug.remove_memory(b.start_pfn << m.geometry.page_shift, b.nr_pages << m.geometry.page_shift)
            pending.remove(block)
            break
        else:
            raise AssertionError(f"no block of {pending} can be offlined")


def require(support, missing):
    """Skip the calling check unless ``support`` says yes; the skip says what is ``missing`` and
    carries the plugin's reason."""
    if not support.supported:
        pytest.skip(f"{missing}: {support.reason}")


@pytest.fixture
def sequences(request) -> int:
    """How many random operation sequences the stateful check runs per target."""
    return request.config.getoption("vmemcore_sequences", default=3)
