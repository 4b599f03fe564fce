"""NAT rebinding: when the kernel reports that a NATed peer's ESP-in-UDP now comes from a
new address or port (XFRM MAPPING), the IKE SA and its CHILD_SAs follow it, keeping the
SPIs, keys, sequence numbers and counters; a peer not behind a NAT is not moved."""

from __future__ import annotations

from ipaddress import ip_address

from tests.support.fake_links import FakeLinks
from tests.support.gateways import NET_A, NET_B, Gateways, connection, pair_with_links
from xfrmctl.kernel.fake import FakeKernel
from xfrmctl.kernel.interface import OSEQ_MARGIN
from xfrmctl.kernel.types import Direction, Mapping, ReplayState, SaSpec

A, B, A_REBOUND = "192.0.2.1", "192.0.2.2", "192.0.2.11"


def _sa(k: FakeKernel, dst: str) -> SaSpec:
    (spec,) = [e.spec for e in k.sas.values() if str(e.spec.dst) == dst]
    return spec


def _mapping(k: FakeKernel, peer: str, new_src: str, new_port: int) -> Mapping:
    inbound = next(e.spec for e in k.sas.values() if str(e.spec.src) == peer)
    assert inbound.encap is not None
    return Mapping(inbound.id, inbound.reqid, inbound.src, ip_address(new_src),
                   inbound.encap.sport, new_port)


async def _encapsulated(links_b: FakeLinks | None = None) -> Gateways:
    # A forces UDP encapsulation (a faked NAT-D): B sees A behind a NAT, A sees itself so
    return await pair_with_links(connection(A, B, NET_A, NET_B, "start", encap=True),
                                 connection(B, A, NET_B, NET_A), FakeLinks(), links_b)


async def test_natted_peer_moves_and_its_sas_follow() -> None:
    links = FakeLinks(addresses=(B, "203.0.113.1"))
    gw = await _encapsulated(links)
    (ike,) = gw.b.manager.all()
    assert ike.nat_remote and not ike.nat_local
    out_before = _sa(gw.kb, A)
    await gw.kb.set_ae(out_before.id, ReplayState(oseq=500))
    gw.kb.inject(_mapping(gw.kb, A, A_REBOUND, 40000))
    await gw.settle()

    assert ike.remote == (A_REBOUND, 40000)
    out = _sa(gw.kb, A_REBOUND)  # the outbound SA, re-addressed
    inbound = next(e.spec for e in gw.kb.sas.values() if str(e.spec.dst) == B)
    assert len(gw.kb.sas) == 2 and out.spi == out_before.spi
    assert out.encap is not None and out.encap.dport == 40000
    assert str(inbound.src) == A_REBOUND and inbound.encap is not None
    assert inbound.encap.sport == 40000
    assert (await gw.kb.get_ae(out.id)).replay.oseq == 500 + OSEQ_MARGIN
    templates = {p.direction: p.templates[0] for p in gw.kb.policies.values()}
    assert str(templates[Direction.OUT].dst) == A_REBOUND
    assert str(templates[Direction.IN].src) == A_REBOUND
    assert str(templates[Direction.FWD].src) == A_REBOUND
    (child,) = await gw.b.list_child_sas()
    assert child.spi_out == out.spi
    (route,) = links.table.values()  # the route to A's subnet now goes via the new address
    assert route.gateway == A_REBOUND

    await gw.a.stop()
    await gw.b.stop()
    assert not gw.kb.sas and not gw.kb.policies  # the moved CHILD_SA is removed whole


async def test_only_the_port_moved_updates_in_place() -> None:
    gw = await _encapsulated()
    gw.kb.inject(_mapping(gw.kb, A, A, 40001))
    await gw.settle()
    out = _sa(gw.kb, A)
    assert out.encap is not None and out.encap.dport == 40001
    assert len(gw.kb.sas) == 2
    await gw.a.stop()
    await gw.b.stop()


async def test_a_peer_not_behind_a_nat_is_not_moved() -> None:
    gw = await _encapsulated()
    (ike,) = gw.a.manager.all()
    assert ike.nat_local  # A believes itself NATed: a MAPPING on A changes nothing
    before = {k: e.spec for k, e in gw.ka.sas.items()}
    gw.ka.inject(_mapping(gw.ka, B, "192.0.2.12", 40002))
    await gw.settle()
    assert ike.remote[0] == B
    assert {k: e.spec for k, e in gw.ka.sas.items()} == before
    await gw.a.stop()
    await gw.b.stop()
