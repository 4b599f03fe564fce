"""The CHILD_SA installer alone, on the fake kernel, driven by synthetic IKE events (no
IKE stack): installs go in before the datagrams that announce them, a rekey is
make-before-break on either side, and a failed install leaves nothing behind."""

from __future__ import annotations

import asyncio
import errno
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from xfrmctl.daemon import conf as cf
from xfrmctl.daemon.installer import INSTALL_RETRY_MAX, ChildInstaller, SendAfter
from xfrmctl.daemon.records import ChildRecord, ChildRecordState, InstallFailure
from xfrmctl.ike import ts
from xfrmctl.ike.config import Mode
from xfrmctl.ike.constants import EncrId, ProtocolId
from xfrmctl.ike.events import ChildSaNegotiated
from xfrmctl.ike.proposals import Suite
from xfrmctl.ike.sa import ChildState, Datagram
from xfrmctl.kernel.fake import FakeKernel, FaultPlan
from xfrmctl.kernel.interface import OpKind
from xfrmctl.kernel.types import REQID_MIN, Direction, PolicySpec

A, B = "192.0.2.1", "192.0.2.2"
CONF = cf.ChildConf(local_ts=["198.51.100.0/24"], remote_ts=["203.0.113.0/24"])
REQID = REQID_MIN + 7
LINGER = 0.05


def negotiated(spi_in: int, spi_out: int, **kw: object) -> ChildSaNegotiated:
    """A CHILD_SA as the IKE core reports it (AES-GCM-128, tunnel mode)."""
    values: dict[str, object] = dict(
        ike_sa=1, connection="site-b", child="lan", child_id=spi_in, protocol=ProtocolId.ESP,
        mode=Mode.TUNNEL, spi_in=spi_in, spi_out=spi_out, local=(A, 500), remote=(B, 500),
        local_ts=(ts.parse("198.51.100.0/24"),), remote_ts=(ts.parse("203.0.113.0/24"),),
        suite=Suite(ProtocolId.ESP, EncrId.AES_GCM_16, 128), encr_key_in=bytes(20),
        integ_key_in=b"", encr_key_out=bytes(range(20)), integ_key_out=b"", encap=False,
        rekey_time=3600.0, life_time=3960.0)
    values.update(kw)
    return ChildSaNegotiated(**values)  # type: ignore[arg-type]


@dataclass
class Host:
    """The IKE side as the installer sees it: records what it is told."""

    kernel: FakeKernel
    counters: dict[str, int] = field(default_factory=lambda: {"kernel_installs": 0})
    failures: dict[str, int] = field(default_factory=dict)
    sent: list[tuple[bytes, int]] = field(default_factory=list)  # datagram, SAs then
    failed: list[tuple[int, str]] = field(default_factory=list)
    routed: list[int] = field(default_factory=list)
    deleting: set[int] = field(default_factory=set)  # CHILD_SAs the core is deleting

    def send(self, datagram: Datagram) -> None:
        self.sent.append((datagram.data, len(self.kernel.sas)))

    def emit(self, kind: str, fields: dict[str, object]) -> None:
        pass

    def child_state(self, ike_sa: int, spi_in: int) -> ChildState | None:
        return ChildState.DELETING if spi_in in self.deleting else ChildState.INSTALLED

    def install_failed(self, child: ChildRecord, reason: str, delay: float) -> None:
        self.failed.append((child.event.spi_in, reason))

    def lost(self, child: ChildRecord) -> None:
        pass

    def soft_expired(self, child: ChildRecord) -> None:
        pass

    def trap_policies(self) -> list[PolicySpec]:
        return []

    async def in_kernel(self, child: ChildRecord) -> None:
        self.routed.append(child.event.spi_in)

    async def leaving(self, child: ChildRecord) -> None:
        pass

    async def left(self, child: ChildRecord) -> None:
        pass


@pytest.fixture
async def rig() -> AsyncIterator[tuple[ChildInstaller, Host, FakeKernel]]:
    kernel = FakeKernel()
    host = Host(kernel)
    installer = ChildInstaller(kernel, host, delete_rekeyed_delay=lambda: LINGER)
    installer.ready.set()
    task = asyncio.get_running_loop().create_task(installer.run())
    yield installer, host, kernel
    task.cancel()
    installer.cancel()


def spis(kernel: FakeKernel) -> set[int]:
    return {e.spec.spi for e in kernel.sas.values()}


def sends_on(kernel: FakeKernel) -> int | None:
    """The SPI the kernel sends 198.51.100.0/24 -> 203.0.113.0/24 traffic on."""
    (out,) = [p for p in kernel.policies.values() if p.direction is Direction.OUT]
    t = out.templates[0]
    sa = kernel.outbound_sa(t.src, t.dst, t.reqid)  # type: ignore[arg-type]
    return sa.spi if sa is not None else None


async def test_install_puts_both_sas_and_policies_in_before_the_response(
        rig: tuple[ChildInstaller, Host, FakeKernel]) -> None:
    installer, host, kernel = rig
    child = installer.add(negotiated(0x1001, 0x2001), CONF, REQID)
    installer.queue(SendAfter((Datagram(b"IKE_AUTH response", (A, 500), (B, 500)),)))
    await installer.drain()
    assert spis(kernel) == {0x1001, 0x2001}
    assert {(p.direction, str(p.selector.src)) for p in kernel.policies.values()} == {
        (Direction.OUT, "198.51.100.0/24"), (Direction.IN, "203.0.113.0/24"),
        (Direction.FWD, "203.0.113.0/24")}
    assert {sa.spec.reqid for sa in kernel.sas.values()} == {REQID}
    assert host.sent == [(b"IKE_AUTH response", 2)]  # sent once both SAs were in
    assert child.in_kernel and installer.installed == {0x1001: child}
    assert host.counters["kernel_installs"] == 1 and host.routed == [0x1001]
    assert sends_on(kernel) == 0x2001


@pytest.mark.parametrize("initiator", [True, False], ids=["initiator", "responder"])
async def test_a_rekey_is_make_before_break(
        rig: tuple[ChildInstaller, Host, FakeKernel], initiator: bool) -> None:
    installer, _, kernel = rig
    installer.add(negotiated(0x1001, 0x2001), CONF, REQID)
    await installer.drain()
    new = installer.add(negotiated(0x1002, 0x2002, rekey_of=0x1001, initiator=initiator),
                        CONF, REQID)
    await installer.drain()
    assert {0x1001, 0x2001, 0x1002} <= spis(kernel)  # new inbound in, old still there
    if initiator:  # sends on the new SA at once (the responder has it inbound)
        assert sends_on(kernel) == 0x2002 and not new.outbound_pending
    else:  # keeps sending on the old one until the initiator deletes it
        assert 0x2002 not in spis(kernel) and new.outbound_pending
        assert sends_on(kernel) == 0x2001
    assert installer.rekeys == {0x1001: [new]}
    installer.deleted(0x1001)
    await installer.drain()
    assert sends_on(kernel) == 0x2002 and not new.outbound_pending
    assert spis(kernel) == {0x1001, 0x1002, 0x2002}  # the old inbound SA lingers
    await asyncio.sleep(LINGER * 2)
    await installer.drain()
    assert spis(kernel) == {0x1002, 0x2002}
    assert installer.rekeys == {} and set(installer.children) == {0x1002}


async def test_a_rekey_collision_loser_never_sends(
        rig: tuple[ChildInstaller, Host, FakeKernel]) -> None:
    """Both ends rekeyed at once: two new CHILD_SAs; the one the core deletes (the
    loser) never gets an outbound SA, the winner gets it once the old one is gone."""
    installer, host, kernel = rig
    installer.add(negotiated(0x1001, 0x2001), CONF, REQID)
    await installer.drain()
    ours = installer.add(negotiated(0x1002, 0x2002, rekey_of=0x1001), CONF, REQID)
    theirs = installer.add(negotiated(0x1003, 0x2003, rekey_of=0x1001, initiator=False),
                           CONF, REQID)
    await installer.drain()
    assert not ours.outbound_pending and theirs.outbound_pending
    host.deleting.add(0x1002)  # ours lost the collision: the core deletes it
    installer.deleted(0x1002)
    installer.deleted(0x1001)
    await installer.drain()
    assert 0x2002 not in spis(kernel) and sends_on(kernel) == 0x2003


async def test_a_failed_install_leaves_nothing_and_the_old_child_carries_on(
        rig: tuple[ChildInstaller, Host, FakeKernel]) -> None:
    installer, host, kernel = rig
    old = installer.add(negotiated(0x1001, 0x2001), CONF, REQID)
    await installer.drain()
    before = (set(kernel.sas), dict(kernel.policies))
    kernel.fail_on = {OpKind.ADD_POLICY}
    other = CONF.model_copy(update={"local_ts": ["198.51.100.0/25"]})
    new = installer.add(negotiated(0x1002, 0x2002, rekey_of=0x1001,
                                   local_ts=(ts.parse("198.51.100.0/25"),)), other, REQID)
    installer.queue(SendAfter((Datagram(b"CREATE_CHILD_SA response", (A, 500),
                                        (B, 500)),)))
    await installer.drain()
    assert (set(kernel.sas), dict(kernel.policies)) == before  # rolled back, old intact
    assert new.state is ChildRecordState.FAILED and not new.in_kernel
    assert set(installer.children) == {0x1001} and old.in_kernel
    assert host.failed and host.failed[0][0] == 0x1002 and "ENOMEM" in host.failed[0][1]
    assert host.failures == {"KERNEL_INSTALL": 1}
    (failure,) = installer.install_failures.values()
    assert failure.attempts == 1
    assert sends_on(kernel) == 0x2001
    assert host.sent[-1] == (b"CREATE_CHILD_SA response", 2)  # after the attempt


async def test_a_second_peer_of_one_connection_sends_at_once(
        rig: tuple[ChildInstaller, Host, FakeKernel]) -> None:
    """Remote access: many peers on one connection and child. A CHILD_SA the responder
    makes for another peer replaces nothing, so both its SAs go in at once; a new one
    from the same peer (a reauthentication) still waits for the old one's delete."""
    installer, _, kernel = rig
    first = installer.add(negotiated(0x1001, 0x2001, initiator=False), CONF, REQID)
    await installer.drain()
    other = installer.add(negotiated(0x1002, 0x2002, ike_sa=2, initiator=False,
                                     remote=("198.51.100.9", 500)), CONF, REQID)
    await installer.drain()
    assert not other.outbound_pending and other.predecessor is None
    assert {0x1001, 0x2001, 0x1002, 0x2002} <= spis(kernel)
    again = installer.add(negotiated(0x1003, 0x2003, ike_sa=3, initiator=False), CONF, REQID)
    await installer.drain()
    assert again.outbound_pending and again.predecessor == first.event.spi_in
    assert 0x2003 not in spis(kernel)
    installer.deleted(0x1001)
    await installer.drain()
    assert not again.outbound_pending and 0x2003 in spis(kernel)


async def test_the_back_off_stays_at_its_limit_after_a_thousand_failures(
        rig: tuple[ChildInstaller, Host, FakeKernel]) -> None:
    """A child failing for days (a kernel without its algorithm) is retried every
    INSTALL_RETRY_MAX seconds, and its failure is handled like the first: the peer told,
    the rest of the batch installed."""
    installer, host, kernel = rig
    installer.install_failures[("site-b", "lan")] = InstallFailure("ENOSYS", 2000, 0.0)
    kernel.faults = FaultPlan(at={0: errno.ENOSYS})  # the first write: the first child
    failing = installer.add(negotiated(0x1001, 0x2001), CONF, REQID)
    other_conf = CONF.model_copy(update={"local_ts": ["198.51.100.128/25"]})
    other = installer.add(negotiated(0x1002, 0x2002, child="other",
                                     local_ts=(ts.parse("198.51.100.128/25"),)),
                          other_conf, REQID + 1)
    await installer.drain()
    assert failing.state is ChildRecordState.FAILED and host.failed[0][0] == 0x1001
    failure = installer.install_failures[("site-b", "lan")]
    assert failure.attempts == 2001 and failure.retry_at == pytest.approx(
        installer.clock() + INSTALL_RETRY_MAX, abs=5)
    assert other.in_kernel and host.routed == [0x1002]
