"""A failed CHILD_SA move puts the old CHILD_SA back whole (the fake kernel, failing the
last step on purpose; the success path runs in the kernel contract)."""

from __future__ import annotations

import errno
from ipaddress import ip_address

import pytest

from tests.support.kernel_contract import LEFT, RIGHT, natted_child
from xfrmctl.kernel.fake import FakeKernel
from xfrmctl.kernel.types import Direction, KernelError, SaSpec


class RefusesMovedInbound(FakeKernel):
    """Refuses to add an inbound SA from anywhere but RIGHT (the move's last step)."""

    def _add_sa(self, sa: SaSpec) -> int:
        if sa.dst == LEFT and sa.src != RIGHT:
            return errno.ENOMEM
        return super()._add_sa(sa)


async def test_failed_move_restores_the_old_child() -> None:
    kernel = RefusesMovedInbound()
    old = natted_child(0xC0000071, 0xC0000072, RIGHT, 4500)
    await kernel.install_child(old)
    new = natted_child(0xC0000071, 0xC0000072, ip_address("192.0.2.12"), 40000)
    with pytest.raises(KernelError):
        await kernel.move_child(old, new)
    assert {(s.spec.src, s.spec.dst) for s in await kernel.dump_sas()} == {
        (old.inbound.src, old.inbound.dst), (old.outbound.src, old.outbound.dst)}
    policies = {p.spec.direction: p.spec for p in await kernel.dump_policies()}
    assert policies[Direction.OUT].templates == old.policies[0].templates
    await kernel.remove_child(old)  # the references are still the old CHILD_SA's
    assert not kernel.sas and not kernel.policies
