"""Two controllers with in-memory kernels: what IKE negotiates lands in the kernel, kernel
events drive rekeys and traps, and API actions reach both ends."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterator

import pytest

from tests.support.gateways import A, B, Gateways, connection, make
from xfrmctl.daemon import conf as cf
from xfrmctl.daemon.controller import Controller
from xfrmctl.ike.events import FailureReason
from xfrmctl.kernel.fake import FakeKernel
from xfrmctl.kernel.interface import OpKind
from xfrmctl.kernel.types import Direction, Expire
from xfrmctl.port import ConnectionState, Target


@pytest.fixture
async def gw() -> AsyncIterator[Gateways]:
    gateways = await make()
    yield gateways
    await gateways.a.stop()
    await gateways.b.stop()


def _policies(k: FakeKernel, direction: Direction) -> int:
    return sum(1 for p in k.policies.values() if p.direction is direction)


async def test_tunnel_is_installed_in_both_kernels(gw: Gateways) -> None:
    assert len(gw.ka.sas) == 2 and len(gw.kb.sas) == 2
    for k in (gw.ka, gw.kb):
        assert [_policies(k, d) for d in Direction] == [1, 1, 1]
    (child_a,) = await gw.a.list_child_sas()
    (child_b,) = await gw.b.list_child_sas()
    assert child_a.spi_out == child_b.spi_in and child_a.spi_in == child_b.spi_out
    out_a = next(e.spec for e in gw.ka.sas.values() if e.spec.spi == child_a.spi_out)
    in_b = next(e.spec for e in gw.kb.sas.values() if e.spec.spi == child_b.spi_in)
    assert out_a.aead is not None and in_b.aead is not None
    assert out_a.aead.key == in_b.aead.key and out_a.aead.name == "rfc4106(gcm(aes))"
    assert str(out_a.src) == A and str(out_a.dst) == B
    assert child_a.local_ts == ("198.51.100.0/24",)
    (ike,) = await gw.a.list_ike_sas()
    assert ike.state == "ESTABLISHED" and ike.encryption.startswith("AES_GCM_16")  # type: ignore[union-attr]
    status = await gw.a.status()
    assert status.connections[0].state is ConnectionState.UP
    assert status.counters.kernel_installs == 1


async def test_soft_expire_rekeys_and_replaces_the_sas() -> None:
    gw = await make(linger=0.5)
    (old,) = await gw.a.list_child_sas()
    gw.ka.inject(Expire(next(iter(gw.ka.sas.values())).spec.id, hard=False))
    await gw.settle()
    (new,) = await gw.a.list_child_sas()
    assert new.spi_in != old.spi_in
    # the old outbound SAs are gone at once, the old inbound ones linger a while
    assert {e.spec.spi for e in gw.ka.sas.values()} == {new.spi_in, new.spi_out, old.spi_in}
    assert {e.spec.spi for e in gw.kb.sas.values()} == {new.spi_in, new.spi_out, old.spi_out}
    assert [_policies(gw.ka, d) for d in Direction] == [1, 1, 1]  # kept across the rekey
    assert gw.ka.policy_refcount(next(iter(gw.ka.policies))) == 1
    await asyncio.sleep(0.6)
    await gw.settle()
    assert {e.spec.spi for e in gw.ka.sas.values()} == {new.spi_in, new.spi_out}
    assert {e.spec.spi for e in gw.kb.sas.values()} == {new.spi_in, new.spi_out}
    await gw.a.stop()
    await gw.b.stop()


async def test_hard_expire_deletes_the_child_on_both_sides(gw: Gateways) -> None:
    spec = next(iter(gw.ka.sas.values())).spec
    gw.ka.inject(Expire(spec.id, hard=True))
    await gw.settle()
    assert not gw.kb.sas and not await gw.b.list_child_sas()
    assert not gw.ka.policies and not gw.kb.policies


async def test_terminate_from_the_api_tears_down_both_ends(gw: Gateways) -> None:
    await gw.a.terminate(Target("connection", "1"))
    await gw.settle()
    assert not gw.ka.sas and not gw.kb.sas
    assert not await gw.a.list_ike_sas() and not await gw.b.list_ike_sas()
    status = await gw.a.status()
    assert status.connections[0].state is ConnectionState.DOWN


async def test_wrong_psk_shows_why_the_connection_is_down() -> None:
    gw = await make(psk_b="a different test-only psk")
    status = (await gw.a.status()).connections[0]
    assert status.state is ConnectionState.DOWN
    assert status.reason == "AUTHENTICATION_FAILED"
    assert not gw.ka.sas
    b_status = (await gw.b.status()).connections[0]
    assert b_status.reason == "AUTHENTICATION_FAILED"
    assert "pre-shared key" in str(b_status.detail["message"])
    await gw.a.stop()
    await gw.b.stop()


async def test_trap_policy_acquire_brings_the_tunnel_up() -> None:
    gw = await make(start_a="trap")
    assert not gw.ka.sas and _policies(gw.ka, Direction.OUT) == 1
    assert (await gw.a.status()).connections[0].state is ConnectionState.TRAPPED
    assert gw.ka.trigger(ipaddress.ip_address("198.51.100.7"),
                         ipaddress.ip_address("203.0.113.9")) is not None
    await gw.settle()
    assert len(gw.ka.sas) == 2 and len(gw.kb.sas) == 2
    assert [_policies(gw.ka, d) for d in Direction] == [1, 1, 1]
    await gw.a.stop()
    await gw.b.stop()
    assert not gw.ka.policies and not gw.ka.sas


async def test_failed_kernel_install_leaves_nothing_behind() -> None:
    gw = await make(kernels=(FakeKernel(fail_on={OpKind.ADD_POLICY}), FakeKernel()))
    a, b, ka, kb = gw.a, gw.b, gw.ka, gw.kb
    assert not ka.sas and not ka.policies  # rolled back
    assert not kb.sas and not await b.list_child_sas()  # and the peer was told
    assert (await a.status()).counters.failures["KERNEL_INSTALL"] == 1
    await a.stop()
    await b.stop()


async def test_reload_touches_only_changed_connections(gw: Gateways) -> None:
    (ike_before,) = await gw.a.list_ike_sas()
    same = cf.DaemonConf(connections=dict(gw.a.conf.connections))
    assert await gw.a.reload(same) == []
    assert [s.id for s in await gw.a.list_ike_sas()] == [ike_before.id]
    changed = dict(gw.a.conf.connections)
    changed["site-b"] = changed["site-b"].model_copy(update={"dpd_delay": 5})
    assert await gw.a.reload(cf.DaemonConf(connections=changed)) == ["site-b"]
    await gw.settle()
    # a local setting: the running IKE SA stays (and reads it), nothing is renegotiated
    (ike_after,) = await gw.a.list_ike_sas()
    assert ike_after.id == ike_before.id and ike_after.state == "ESTABLISHED"
    assert gw.a.manager.get(int(ike_after.id)).config.dpd_delay == 5  # type: ignore[union-attr]


async def test_children_follow_an_ike_rekey_and_still_rekey_on_expiry(gw: Gateways) -> None:
    (ike,) = await gw.a.list_ike_sas()
    await gw.a.rekey(Target("ike_sa", ike.id))
    await gw.settle()
    (new_ike,) = await gw.a.list_ike_sas()
    (child,) = await gw.a.list_child_sas()
    assert new_ike.id != ike.id and child.ike_sa_id == new_ike.id
    gw.ka.inject(Expire(next(iter(gw.ka.sas.values())).spec.id, hard=False))
    await gw.settle()
    (rekeyed,) = await gw.a.list_child_sas()
    assert rekeyed.spi_in != child.spi_in and rekeyed.ike_sa_id == new_ike.id


async def test_peer_delete_leaves_the_connection_down_unless_close_action_says() -> None:
    for close_action, expected in (("none", ConnectionState.DOWN),
                                   ("trap", ConnectionState.TRAPPED)):
        gw = await make(close_action=close_action)
        await gw.b.terminate(Target("connection", "1"))
        await gw.settle()
        record = gw.a.connections["site-b"]
        assert record.state is expected and not record.wanted
        assert not gw.ka.sas
        await gw.a.stop()
        await gw.b.stop()


async def test_dead_peer_follows_dpd_action() -> None:
    for action, expected, wanted in (("clear", ConnectionState.DOWN, False),
                                     ("trap", ConnectionState.TRAPPED, False),
                                     ("restart", ConnectionState.DOWN, True)):
        gw = await make(dpd_action=action)
        record = gw.a.connections["site-b"]
        (sa,) = gw.a.manager.all()
        gw.a.manager.act(sa, lambda s: s.fail(FailureReason.PEER_UNREACHABLE, "test"))
        gw.a._flush()
        await gw.settle()
        assert (record.state, record.wanted) == (expected, wanted), action
        await gw.a.stop()
        await gw.b.stop()


def test_new_connections_never_reuse_an_id() -> None:
    conf = cf.DaemonConf(connections={"m": connection(A, B, "198.51.100.0/24",
                                                      "203.0.113.0/24")})
    controller = Controller(conf, FakeKernel())
    grown = cf.DaemonConf(connections={**conf.connections, "a": conf.connections["m"]})
    controller.load(grown)
    assert {r.name: r.id for r in controller.connections.values()} == {"m": 1, "a": 2}
