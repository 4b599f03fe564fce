"""The KernelIPsec contract suite on the lab kernel, where the SA cases run for real."""

from tests.unit.kernel.contract import *  # noqa: F403
from tests.unit.kernel.test_contract import env  # noqa: F401
