"""Run the KernelIPsec contract against the fake and (root) the real kernel in a netns."""

from tests.support.kernel_contract import *  # noqa: F403
