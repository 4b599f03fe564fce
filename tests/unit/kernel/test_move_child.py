"""A failed CHILD_SA move puts the old CHILD_SA back whole (the fake kernel, failing the
last step on purpose; the success path runs in the kernel contract)."""

from __future__ import annotations

import errno
from ipaddress import ip_address

import pytest

from tests.support.kernel_contract import LEFT, RIGHT, child, natted_child, roamed_child
from xfrmctl.kernel.fake import FakeKernel
from xfrmctl.kernel.types import Direction, KernelError, ReplayState, SaSpec


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


class RefusesRoamedInbound(FakeKernel):
    """Refuses the inbound SA at our new address (the move's last step)."""

    def _add_sa(self, sa: SaSpec) -> int:
        if sa.dst == ip_address("192.0.2.12"):
            return errno.ENOMEM
        return super()._add_sa(sa)


async def test_failed_move_of_our_address_restores_the_old_child_and_its_counters() -> None:
    """The outbound SA (same destination and SPI) was already replaced when the inbound
    one fails: it is put back with its sequence number, nothing of the new one stays."""
    kernel = RefusesRoamedInbound()
    old = child(0xC0000091, 0xC0000092)
    await kernel.install_child(old)
    await kernel.set_ae(old.outbound.id, ReplayState(oseq=700, bitmap=(0,)))
    with pytest.raises(KernelError):
        await kernel.move_child(old, roamed_child(old, ip_address("192.0.2.12"), True))
    assert {(s.spec.src, s.spec.dst, s.spec.encap) for s in await kernel.dump_sas()} == {
        (RIGHT, LEFT, None), (LEFT, RIGHT, None)}
    assert (await kernel.get_ae(old.outbound.id)).replay.oseq == 700
    policies = {p.spec.direction: p.spec for p in await kernel.dump_policies()}
    assert policies[Direction.OUT].templates == old.policies[0].templates
    await kernel.remove_child(old)
    assert not kernel.sas and not kernel.policies


async def test_update_in_place_cannot_change_an_sa_address() -> None:
    """As the kernel's UPDSA: only encap ports and lifetimes change on a valid SA (so a
    move of addresses must re-add, which move_child does)."""
    kernel = FakeKernel()
    old = child(0xC00000A1, 0xC00000A2)
    await kernel.install_child(old)
    moved = roamed_child(old, ip_address("192.0.2.12"), False)
    await kernel.update_sa(moved.outbound)
    (spec,) = [s.spec for s in await kernel.dump_sas() if s.spec.spi == 0xC00000A2]
    assert spec.src == LEFT
