"""MOBIKE through two controllers on fake kernels: the initiator's kernel reports its
address change (address and route events), the daemon asks the IKE core to move, both
ends move their CHILD_SAs in place (same SPIs, sequence numbers kept) and routes follow;
a failed move on the responder leaves the old CHILD_SA whole."""

from __future__ import annotations

import asyncio
import errno
from ipaddress import ip_address

import pytest

from tests.support.fake_links import FakeLinks
from tests.support.gateways import NET_A, NET_B, Gateways, connection, pair_with_links
from xfrmctl.daemon import mobility
from xfrmctl.kernel.fake import FakeKernel
from xfrmctl.kernel.interface import OSEQ_MARGIN
from xfrmctl.kernel.types import Direction, ReplayState, SaSpec

A, B, A_NEW = "192.0.2.1", "192.0.2.2", "192.0.2.70"


def _sa(k: FakeKernel, **where: str) -> SaSpec:
    (spec,) = [e.spec for e in k.sas.values()
               if all(str(getattr(e.spec, f)) == v for f, v in where.items())]
    return spec


async def _pair(monkeypatch: pytest.MonkeyPatch, links_b: FakeLinks | None = None,
                **a_options: object) -> tuple[Gateways, list[object], list[object]]:
    monkeypatch.setattr(mobility, "ROAM_DELAY", 0.01)
    gw = await pair_with_links(connection(A, B, NET_A, NET_B, "start", **a_options),
                               connection(B, A, NET_B, NET_A), FakeLinks(), links_b)
    events_a: list[object] = []
    events_b: list[object] = []
    gw.a.event_listeners.append(lambda kind, fields: events_a.append((kind, fields)))
    gw.b.event_listeners.append(lambda kind, fields: events_b.append((kind, fields)))
    gw.ka.add_address(ip_address(A), 24)
    await _roamed(gw)
    return gw, events_a, events_b


async def _roamed(gw: Gateways) -> None:
    for _ in range(5):
        await asyncio.sleep(0.03)
        await gw.settle()


def _move_a(gw: Gateways) -> None:
    """A's address moves to another interface: the new one comes, the old one goes."""
    gw.ka.add_address(ip_address(A_NEW), 26, ifindex=3)
    gw.ka.delete_address(ip_address(A))
    gw.ka.add_route("192.0.2.0/24", ip_address(A_NEW))  # the peer, via the new interface


def _kinds(events: list[object]) -> list[str]:
    return [e[0] for e in events]  # type: ignore[index]


async def test_address_change_moves_both_ends_in_place(monkeypatch: pytest.MonkeyPatch) -> None:
    links_b = FakeLinks(addresses=(B, "203.0.113.1"))
    gw, events_a, events_b = await _pair(monkeypatch, links_b)
    (ike_a,), (ike_b,) = gw.a.manager.all(), gw.b.manager.all()
    assert ike_a.mobike and ike_b.mobike and ike_a.local == (A, 4500)
    out_a = _sa(gw.ka, src=A)
    spis = {e.spec.spi for e in gw.ka.sas.values()}
    gw.ka.account(out_a.id, 1000, 10)  # A sent 10 packets, B received them
    in_b = _sa(gw.kb, dst=B)
    await gw.kb.set_ae(in_b.id, ReplayState(seq=10, bitmap=(0x3FF,)))
    _move_a(gw)
    await _roamed(gw)

    assert ike_a.local == (A_NEW, 4500) and ike_b.remote == (A_NEW, 4500)
    assert "IkeSaMoved" in _kinds(events_a) and "IkeSaMoved" in _kinds(events_b)
    # A: the same SPIs from the new address, its sequence numbers carried on
    assert {e.spec.spi for e in gw.ka.sas.values()} == spis and len(gw.ka.sas) == 2
    out = _sa(gw.ka, src=A_NEW)
    assert out.spi == out_a.spi and out.encap is None
    assert (await gw.ka.get_ae(out.id)).replay.oseq == 10 + OSEQ_MARGIN
    assert _sa(gw.ka, dst=A_NEW).spi != out.spi
    templates = {p.direction: p.templates[0] for p in gw.ka.policies.values()}
    assert str(templates[Direction.OUT].src) == A_NEW
    assert str(templates[Direction.IN].dst) == A_NEW
    # B: to A's new address, its replay window kept
    assert {e.spec.spi for e in gw.kb.sas.values()} == spis and len(gw.kb.sas) == 2
    assert _sa(gw.kb, dst=A_NEW).spi == _sa(gw.kb, src=B).spi
    moved_in = _sa(gw.kb, src=A_NEW)
    assert (await gw.kb.get_ae(moved_in.id)).replay.seq == 10
    templates = {p.direction: p.templates[0] for p in gw.kb.policies.values()}
    assert str(templates[Direction.OUT].dst) == A_NEW
    assert str(templates[Direction.FWD].src) == A_NEW
    (route,) = links_b.table.values()  # B's route to A's subnet follows
    assert route.gateway == A_NEW
    # no new IKE_SA or CHILD_SA was negotiated for it
    assert _kinds(events_b).count("IkeSaUp") == 0
    assert "ChildSaNegotiated" not in _kinds(events_b)
    await gw.a.stop()
    await gw.b.stop()
    assert not gw.ka.sas and not gw.kb.sas and not gw.kb.policies


async def test_route_change_alone_with_the_same_source_moves_nothing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    gw, events_a, _ = await _pair(monkeypatch)
    before = dict(gw.ka.sas)
    gw.ka.add_route("192.0.2.2/32", ip_address(A))
    await _roamed(gw)
    assert "IkeSaMoved" not in _kinds(events_a) and gw.ka.sas == before
    await gw.a.stop()
    await gw.b.stop()


async def test_without_mobike_nothing_moves(monkeypatch: pytest.MonkeyPatch) -> None:
    gw, events_a, _ = await _pair(monkeypatch, mobike=False)
    (ike_a,) = gw.a.manager.all()
    assert not ike_a.mobike and ike_a.local == (A, 500)
    _move_a(gw)
    await _roamed(gw)
    assert "IkeSaMoved" not in _kinds(events_a) and ike_a.local == (A, 500)
    assert {str(e.spec.src) for e in gw.ka.sas.values()} == {A, B}
    await gw.a.stop()
    await gw.b.stop()


async def test_failed_move_on_the_responder_leaves_the_old_child_whole(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel refuses the move: the old CHILD_SA is whole right after (nothing
    half-installed), then a rekey makes a new one at the new addresses."""
    gw, _, events_b = await _pair(monkeypatch)
    before = {k: e.spec for k, e in gw.kb.sas.items()}
    policies = dict(gw.kb.policies)
    spis = {e.spec.spi for e in gw.kb.sas.values()}
    add_sa, move = gw.kb._add_sa, gw.b.installer.move
    refused: list[SaSpec] = []
    after_move: list[tuple[bool, dict[object, SaSpec], dict[object, object]]] = []

    def refuse_once(sa: SaSpec) -> int:  # the inbound SA from A's new address
        if str(sa.src) == A_NEW and not refused:
            refused.append(sa)
            return errno.ENOMEM
        return add_sa(sa)

    async def recorded_move(*args: object) -> bool:
        done = await move(*args)  # type: ignore[arg-type]
        after_move.append((done, {k: e.spec for k, e in gw.kb.sas.items()},
                           dict(gw.kb.policies)))
        return done

    monkeypatch.setattr(gw.kb, "_add_sa", refuse_once)
    monkeypatch.setattr(gw.b.installer, "move", recorded_move)
    _move_a(gw)
    await _roamed(gw)
    assert refused and "IkeSaMoved" in _kinds(events_b)
    assert after_move[0] == (False, before, policies)
    assert "ChildSaNegotiated" in _kinds(events_b)  # the rekey
    for _ in range(3):  # the old inbound SA lingers delete_rekeyed_delay, then goes
        await _roamed(gw)
    current = {e.spec.spi: e.spec for e in gw.kb.sas.values() if e.spec.spi not in spis}
    assert {(str(s.src), str(s.dst)) for s in current.values()} == {(B, A_NEW), (A_NEW, B)}
    templates = {p.direction: p.templates[0] for p in gw.kb.policies.values()}
    assert str(templates[Direction.OUT].dst) == A_NEW
    await gw.a.stop()
    await gw.b.stop()
