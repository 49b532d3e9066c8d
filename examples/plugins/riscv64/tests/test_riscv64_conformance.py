"""The conformance suite (vmemcore.testing) on this plugin, as a third-party plugin's CI runs it."""

from vmemcore.testing.suite import *  # noqa: F401,F403

VMEMCORE_ARCHES = ["riscv64"]
