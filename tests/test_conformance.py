"""The conformance suite (vmemcore.testing) over every installed arch, as a plugin's CI runs it."""

from vmemcore.testing.suite import *  # noqa: F401,F403
