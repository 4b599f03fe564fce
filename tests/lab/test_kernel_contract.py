"""The KernelIPsec contract suite on the lab kernel, where the SA cases run for real."""

from tests.support.kernel_contract import *  # noqa: F403
