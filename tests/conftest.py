import pytest

from vmemcore.machine import Machine
from vmemcore.units import GiB


@pytest.fixture
def x86_16g():
    """x86_64 4-level, one node of 16 GiB from pfn 0."""
    return Machine("x86_64", memory=[{"node": 0, "start": 0, "size": 16 * GiB}])


pytest_plugins = ["pytester"]
