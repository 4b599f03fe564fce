"""Make-before-break: at no moment of a CHILD_SA's setup or rekey does either gateway's
kernel send on an SA the other one lacks, whichever side rekeys, and whichever kernel is
the slower one (the race a real pair lost one ping to).

A watcher looks after every batch of kernel work on either side, once the first CHILD_SA
is up: for each outbound policy, the SA the kernel would pick (FakeKernel.outbound_sa, as
xfrm_state_find) must be installed inbound at the peer. (Until then IKEv2 itself allows
a loss: the IKE_AUTH responder sends on its SA before its response reached the initiator.)"""

from __future__ import annotations

import asyncio

import pytest

from tests.support.gateways import A, B, Gateways, make
from tests.support.slow_kernel import SlowKernel, settle_slow, unreachable
from xfrmctl.daemon.controller import Controller
from xfrmctl.kernel.types import Direction, Expire
from xfrmctl.port import Target

LINGER = 1.0  # delete_rekeyed_delay of both gateways


async def start_watched(slow: str) -> tuple[Gateways, list[str]]:
    ka, kb = SlowKernel(), SlowKernel()
    (ka if slow == "a" else kb).delay = 0.02
    losses: list[str] = []

    def check() -> None:
        losses.extend(unreachable(ka, kb) + unreachable(kb, ka))

    gw = await make(linger=LINGER, kernels=(ka, kb))
    await settle_slow(gw)
    assert len(ka.sas) == len(kb.sas) == 2  # the IKE_AUTH child
    ka.after = kb.after = check
    return gw, losses


def inbound_of(controller: Controller) -> int:
    (child,) = controller.children.values()
    return child.event.spi_in


@pytest.mark.parametrize("slow", ["a", "b"])
@pytest.mark.parametrize("rekeyer", ["a", "b", "both"])
async def test_rekey_never_sends_on_an_sa_the_peer_lacks(slow: str, rekeyer: str) -> None:
    gw, losses = await start_watched(slow)
    deleted: list[object] = []
    for controller in (gw.a, gw.b):
        controller.event_listeners.append(
            lambda kind, fields: deleted.append(fields["reason"])
            if kind == "ChildSaDeleted" else None)
    old = {"a": inbound_of(gw.a), "b": inbound_of(gw.b)}
    for side in ("a", "b") if rekeyer == "both" else (rekeyer,):  # both: a collision
        kernel = gw.ka if side == "a" else gw.kb
        sa = next(e.spec for e in kernel.sas.values() if e.spec.spi == old[side])
        kernel.inject(Expire(sa.id, hard=False))
    await settle_slow(gw)
    assert losses == []
    # one side deleted the old CHILD_SA, the other heard; in a collision the loser
    # deleted its own new one too
    expected = ["deleted by peer", "rekeyed"]
    if rekeyer == "both":
        expected += ["deleted by peer", "rekey collision lost"]
    assert sorted(map(str, deleted)) == sorted(expected)
    new = {"a": inbound_of(gw.a), "b": inbound_of(gw.b)}
    assert new["a"] != old["a"] and new["b"] != old["b"]
    # both kernels now send on the new CHILD_SA, the peer's inbound one
    for src, dst, spi in ((gw.ka, B, new["b"]), (gw.kb, A, new["a"])):
        (out,) = [p for p in src.policies.values() if p.direction is Direction.OUT]
        t = out.templates[0]
        picked = src.outbound_sa(t.src, t.dst, t.reqid)  # type: ignore[arg-type]
        assert picked is not None and (str(picked.dst), picked.spi) == (dst, spi)
    # the replaced inbound SAs linger for packets in flight, then go
    spis = {"a": {e.spec.spi for e in gw.ka.sas.values()},
            "b": {e.spec.spi for e in gw.kb.sas.values()}}
    assert old["a"] in spis["a"] and old["b"] in spis["b"]
    await asyncio.sleep(LINGER + 0.1)
    await settle_slow(gw)
    assert len(gw.ka.sas) == len(gw.kb.sas) == 2 and losses == []
    assert gw.a._rekeys == gw.b._rekeys == {}  # the finished rekeys are forgotten
    await gw.a.stop()
    await gw.b.stop()


async def test_rekey_from_the_api_loses_nothing_either_way() -> None:
    gw, losses = await start_watched("b")
    for controller in (gw.a, gw.b, gw.a):
        (child,) = await controller.list_child_sas()
        await controller.rekey(Target("child_sa", child.id))
        await settle_slow(gw)
    assert losses == []
    assert all(not c.outbound_pending for c in (*gw.a.children.values(),
                                                *gw.b.children.values()))
    assert gw.a._rekeys == gw.b._rekeys == {}
    await gw.a.stop()
    await gw.b.stop()
    assert not gw.ka.sas and not gw.kb.sas  # lingering inbound SAs go with the daemon
