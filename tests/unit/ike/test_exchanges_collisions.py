"""Rekey collisions (RFC 7296 2.8.1, 2.8.2, 2.25), one message batch at a time.

Nonces decide who wins a simultaneous IKE SA rekey, so the tests hand sa.py chosen nonces
(every other random value stays random) and check both outcomes.
"""

from __future__ import annotations

import os

import pytest

from tests.support.ike_pair import (
    Pair,
    assert_child_pair,
    child,
    make_pair,
    mirrored,
    psk_config,
    up,
)
from xfrmctl.ike import keys as keys_module
from xfrmctl.ike.constants import ExchangeType
from xfrmctl.ike.events import (
    ChildSaDeleted,
    ChildSaNegotiated,
    IkeSaDown,
    IkeSaRekeyed,
    NegotiationFailed,
)
from xfrmctl.ike.message import parse_header
from xfrmctl.ike.sa import NONCE_SIZE, ChildState, IkeSa, IkeState


class ChosenNonces:
    """Stands in for `os` in keys.py: the queued nonces come first, all else is random."""

    def __init__(self) -> None:
        self.queue: list[bytes] = []

    def urandom(self, size: int) -> bytes:
        if size == NONCE_SIZE and self.queue:
            return self.queue.pop(0)
        return os.urandom(size)


@pytest.fixture
def nonces(monkeypatch: pytest.MonkeyPatch) -> ChosenNonces:
    chosen = ChosenNonces()
    monkeypatch.setattr(keys_module, "os", chosen)
    return chosen


@pytest.fixture
def pair() -> Pair:
    lan = child()
    return make_pair(psk_config(children=(lan,)), psk_config(children=(mirrored(lan),)))


def nonce(first: int) -> bytes:
    return bytes([first]) + os.urandom(NONCE_SIZE - 1)


def states(sas: list[IkeSa]) -> list[IkeState]:
    return sorted((s.state for s in sas), key=lambda s: s.value)


def exchanges(pair: Pair, side: str) -> list[ExchangeType]:
    return [ExchangeType(parse_header(d.data).exchange) for s, d in pair.wire if s == side]


@pytest.mark.parametrize("winner", ["a", "b"])
def test_simultaneous_ike_rekey_keeps_exactly_one_new_sa(pair: Pair, nonces: ChosenNonces,
                                                         winner: str) -> None:
    up(pair)
    old_a, old_b = pair.a.all()[0], pair.b.all()[0]
    (child_a,) = pair.of("a", ChildSaNegotiated)
    # Nonces are made in this order: A's Ni, B's Ni, B's Nr (answering A), A's Nr.
    # The exchange holding the lowest of the four makes the redundant SA.
    low, high = 0x01, 0xF0
    a_exchange = [nonce(low if winner == "b" else high), nonce(high)]
    b_exchange = [nonce(low if winner == "a" else high + 1), nonce(high + 2)]
    nonces.queue = [a_exchange[0], b_exchange[0], a_exchange[1], b_exchange[1]]
    pair.a.act(old_a, lambda sa: sa.rekey(pair.now))
    pair.b.act(old_b, lambda sa: sa.rekey(pair.now))

    pair.step("a")  # A's rekey request reaches B, which answers it: a collision, undecided
    assert old_b.state is IkeState.ESTABLISHED and len(old_b.children) == 1
    assert states(pair.b.all()) == [IkeState.ESTABLISHED] * 2  # old + A's new (silent)
    assert not pair.of("b", IkeSaRekeyed)

    pair.step("b")  # B's request and B's answer reach A: A answers, then decides
    assert old_a.state is IkeState.REKEYED and not old_a.children
    (rekeyed_a,) = pair.of("a", IkeSaRekeyed)
    survivor_a = pair.a.get(rekeyed_a.new_ike_sa)
    assert survivor_a is not None and survivor_a.is_initiator == (winner == "a")
    assert [c.spi_in for c in survivor_a.children.values()] == [child_a.spi_in]
    if winner == "b":  # A's own new SA is redundant: A is deleting it
        assert states(pair.a.all()) == [IkeState.DELETING, IkeState.ESTABLISHED,
                                        IkeState.REKEYED]
    else:  # A's new SA won: A deletes the old one; B will delete its redundant SA
        assert states(pair.a.all()) == [IkeState.ESTABLISHED] * 2 + [IkeState.REKEYED]

    pair.pump()
    (new_a,), (new_b,) = pair.a.all(), pair.b.all()
    (rekeyed_b,) = pair.of("b", IkeSaRekeyed)
    assert new_a is survivor_a and new_b.id == rekeyed_b.new_ike_sa
    assert (new_a.spi_i, new_a.spi_r) == (new_b.spi_i, new_b.spi_r)
    assert (rekeyed_a.new_spi_i, rekeyed_a.new_spi_r) == (rekeyed_b.new_spi_i,
                                                          rekeyed_b.new_spi_r)
    assert new_b.is_initiator == (winner == "b")
    assert states([old_a, old_b]) == [IkeState.CLOSED] * 2
    assert new_a.state is IkeState.ESTABLISHED and new_b.state is IkeState.ESTABLISHED
    assert len(new_a.children) == 1 and len(new_b.children) == 1
    # Only the old SAs went down (and silently for the daemon's tunnels: no child deleted).
    assert [e.reason for e in pair.of("a", IkeSaDown)] == ["rekeyed"]
    assert [e.reason for e in pair.of("b", IkeSaDown)] == ["rekeyed"]
    assert not pair.of("a", ChildSaDeleted) and not pair.of("b", ChildSaDeleted)
    # The survivor's keys agree on both sides: a CHILD_SA rekey over it works.
    pair.a.act(new_a, lambda sa: sa.rekey_child(child_a.spi_in, pair.now))
    pair.pump()
    assert_child_pair(pair.of("a", ChildSaNegotiated)[-1], pair.of("b", ChildSaNegotiated)[-1])
    pair.advance(120)
    assert pair.a.all() == [new_a] and pair.b.all() == [new_b]


def test_rekey_asked_for_after_answering_the_peers_rekey_does_nothing(pair: Pair) -> None:
    up(pair)
    old_a, old_b = pair.a.all()[0], pair.b.all()[0]
    pair.a.act(old_a, lambda sa: sa.rekey(pair.now))
    pair.step("a")  # B answers A's rekey and adopts the new SA (no own rekey yet)
    assert old_b.state is IkeState.REKEYED and len(pair.of("b", IkeSaRekeyed)) == 1
    pair.b.act(old_b, lambda sa: sa.rekey(pair.now))  # too late: nothing more is sent
    (answer,) = pair.step("b")
    assert parse_header(answer.data).is_response
    assert old_a.state is IkeState.REKEYED
    pair.pump()
    assert len(pair.a.all()) == 1 and len(pair.b.all()) == 1
    assert pair.a.all()[0].spi_i == pair.b.all()[0].spi_i


def test_child_rekey_during_ike_rekey_gets_temporary_failure_then_retries(pair: Pair) -> None:
    up(pair)
    old_a, old_b = pair.a.all()[0], pair.b.all()[0]
    (child_b,) = pair.of("b", ChildSaNegotiated)
    pair.a.act(old_a, lambda sa: sa.rekey(pair.now))
    pair.b.act(old_b, lambda sa: sa.rekey_child(child_b.spi_in, pair.now))

    pair.step("a")  # A's IKE rekey reaches B while B's CHILD_SA rekey is out: refused
    assert old_b.state is IkeState.ESTABLISHED and len(pair.b.all()) == 1
    pair.step("b")  # B's CHILD_SA rekey reaches A while A rekeys the IKE SA: refused
    assert old_a.state is IkeState.ESTABLISHED and len(pair.a.all()) == 1
    assert len(old_a.children) == 1 and len(pair.of("a", ChildSaNegotiated)) == 1
    pair.step("a")  # B learns of the TEMPORARY_FAILURE: its child is installed again
    (child,) = old_b.children.values()
    assert child.state is ChildState.INSTALLED and child.spi_in == child_b.spi_in
    assert not pair.of("a", NegotiationFailed) and not pair.of("b", NegotiationFailed)

    pair.advance(10)  # both retry after a short random delay
    (new_a,), (new_b,) = pair.a.all(), pair.b.all()
    assert new_a is not old_a and new_b is not old_b
    assert (new_a.spi_i, new_a.spi_r) == (new_b.spi_i, new_b.spi_r)
    (ca,), (cb,) = new_a.children.values(), new_b.children.values()
    assert (ca.spi_in, ca.spi_out) == (cb.spi_out, cb.spi_in)
    assert cb.spi_in != child_b.spi_in  # the CHILD_SA was rekeyed after all
    new_b_child = pair.of("b", ChildSaNegotiated)[-1]
    assert new_b_child.rekey_of == child_b.spi_in
    assert_child_pair(pair.of("a", ChildSaNegotiated)[-1], new_b_child)
    assert [e.spi_in for e in pair.of("b", ChildSaDeleted)] == [child_b.spi_in]


@pytest.mark.parametrize("first", ["a", "b"])
def test_child_rekey_collides_with_the_peers_delete(pair: Pair, first: str) -> None:
    """A rekeys a CHILD_SA that B deletes at the same time: it ends deleted on both
    sides, with no failure reported and no retry (RFC 7296 2.25.1)."""
    up(pair)
    sa_a, sa_b = pair.a.all()[0], pair.b.all()[0]
    (ca,), (cb,) = pair.of("a", ChildSaNegotiated), pair.of("b", ChildSaNegotiated)
    pair.a.act(sa_a, lambda sa: sa.rekey_child(ca.spi_in, pair.now))
    pair.b.act(sa_b, lambda sa: sa.delete_child(cb.spi_in, pair.now))
    assert sa_b.children[cb.child_id].state is ChildState.DELETING
    pair.step(first)
    if first == "a":  # B is closing that CHILD_SA: TEMPORARY_FAILURE
        assert cb.child_id in sa_b.children
    else:  # A answers the delete although it is rekeying the CHILD_SA
        assert not sa_a.children
        assert pair.of("a", ChildSaDeleted)[0].reason == "deleted by peer"
    pair.pump()
    assert not sa_a.children and not sa_b.children
    assert len(pair.of("a", ChildSaDeleted)) == 1 and len(pair.of("b", ChildSaDeleted)) == 1
    assert len(pair.of("a", ChildSaNegotiated)) == 1  # no new CHILD_SA was made
    assert not pair.of("a", NegotiationFailed) and not pair.of("b", NegotiationFailed)
    before = len(pair.wire)
    pair.advance(10)
    assert len(pair.wire) == before  # nothing retried
    assert sa_a.state is IkeState.ESTABLISHED and sa_b.state is IkeState.ESTABLISHED


def test_ike_rekey_collides_with_the_peers_ike_delete(pair: Pair) -> None:
    up(pair)
    sa_a, sa_b = pair.a.all()[0], pair.b.all()[0]
    pair.a.act(sa_a, lambda sa: sa.rekey(pair.now))
    pair.b.act(sa_b, lambda sa: sa.delete(pair.now))
    pair.step("a")  # B is deleting the IKE SA: TEMPORARY_FAILURE to the rekey
    assert sa_b.state is IkeState.DELETING and len(pair.b.all()) == 1
    pair.pump()
    assert not pair.a.all() and not pair.b.all()
    assert pair.of("a", IkeSaDown)[0].reason == "deleted by peer"
    assert not pair.of("a", IkeSaRekeyed) and not pair.of("b", IkeSaRekeyed)
    assert len(pair.of("a", ChildSaDeleted)) == 1


def test_create_child_refused_during_ike_rekey_is_retried_on_the_new_sa() -> None:
    lan, dmz = child(), child("dmz", "198.51.100.128/25", "203.0.113.128/25")
    pair = make_pair(psk_config(children=(lan, dmz)),
                     psk_config(children=(mirrored(lan), mirrored(dmz))))
    up(pair, ["lan"])
    old_a, old_b = pair.a.all()[0], pair.b.all()[0]
    pair.a.act(old_a, lambda sa: sa.rekey(pair.now))
    pair.b.act(old_b, lambda sa: sa.create_child("dmz", pair.now))
    pair.pump()  # B's request is refused (A is rekeying), A's rekey goes through
    (new_b,) = pair.b.all()
    assert new_b is not old_b and len(new_b.children) == 1
    pair.advance(10)
    (new_a,) = pair.a.all()
    assert sorted(c.config.name for c in new_b.children.values()) == ["dmz", "lan"]
    assert sorted(c.config.name for c in new_a.children.values()) == ["dmz", "lan"]
    dmz_a = [e for e in pair.of("a", ChildSaNegotiated) if e.child == "dmz"]
    dmz_b = [e for e in pair.of("b", ChildSaNegotiated) if e.child == "dmz"]
    assert len(dmz_a) == 1 and len(dmz_b) == 1
    assert_child_pair(dmz_a[0], dmz_b[0])
    assert dmz_b[0].ike_sa == new_b.id


def test_peers_rekey_completes_before_it_sees_ours(pair: Pair) -> None:
    """Both rekey; B's answer overtakes B's own request on the way to A. A completes its
    rekey (no collision seen) and deletes the old SA; B, which answered A's rekey, adopts
    that SA; B's own request meets an SA being replaced (TEMPORARY_FAILURE) and is dropped."""
    up(pair)
    old_a, old_b = pair.a.all()[0], pair.b.all()[0]
    pair.a.act(old_a, lambda sa: sa.rekey(pair.now))
    pair.b.act(old_b, lambda sa: sa.rekey(pair.now))
    pair.step("a")
    request_b, answer_b = pair.b.datagrams_to_send()
    for d in (answer_b, request_b):  # reordered on the way
        pair.a.receive_datagram(d.data, d.remote, d.local, pair.now)
    assert old_a.state is IkeState.REKEYED and len(pair.a.all()) == 2
    pair.pump()
    (new_a,), (new_b,) = pair.a.all(), pair.b.all()
    assert (new_a.spi_i, new_a.spi_r) == (new_b.spi_i, new_b.spi_r) and new_a.is_initiator
    assert len(new_a.children) == 1 and len(new_b.children) == 1
    assert len(pair.of("a", IkeSaRekeyed)) == 1 and len(pair.of("b", IkeSaRekeyed)) == 1
    assert not pair.of("b", ChildSaDeleted)
    (child_a,) = pair.of("a", ChildSaNegotiated)
    pair.b.act(new_b, lambda sa: sa.rekey_child(
        pair.of("b", ChildSaNegotiated)[0].spi_in, pair.now))
    pair.pump()
    assert_child_pair(pair.of("a", ChildSaNegotiated)[-1], pair.of("b", ChildSaNegotiated)[-1])
    assert pair.of("a", ChildSaDeleted)[0].spi_in == child_a.spi_in


def test_winner_deletes_the_redundant_sa_if_the_loser_does_not(pair: Pair,
                                                              nonces: ChosenNonces) -> None:
    up(pair)
    old_a, old_b = pair.a.all()[0], pair.b.all()[0]
    # A's exchange wins: B's holds the lowest nonce (B's Ni).
    nonces.queue = [nonce(0xF0), nonce(0x01), nonce(0xF1), nonce(0xF2)]
    pair.a.act(old_a, lambda sa: sa.rekey(pair.now))
    pair.b.act(old_b, lambda sa: sa.rekey(pair.now))
    pair.step("a")
    pair.step("b")
    (rekeyed_a,) = pair.of("a", IkeSaRekeyed)

    def loser_is_mute(side: str, d: object) -> bool:  # B never deletes its redundant SA
        header = parse_header(d.data)  # type: ignore[attr-defined]
        return side == "b" and not header.is_response and \
            header.spi_i not in (old_a.spi_i, rekeyed_a.new_spi_i)

    pair.drop = loser_is_mute
    pair.pump()
    assert len(pair.a.all()) == 2  # the survivor and B's redundant SA, silent
    pair.advance(31)
    (survivor,) = pair.a.all()
    assert survivor.id == rekeyed_a.new_ike_sa and len(survivor.children) == 1
    assert [e.reason for e in pair.of("a", IkeSaDown)] == ["rekeyed"]  # no other event


def test_unanswered_rekey_in_a_collision_takes_the_peers_new_sa_down_too(pair: Pair) -> None:
    up(pair)
    old_a, old_b = pair.a.all()[0], pair.b.all()[0]
    pair.a.act(old_a, lambda sa: sa.rekey(pair.now))
    pair.b.act(old_b, lambda sa: sa.rekey(pair.now))
    pair.step("a")  # B answers A's rekey: B now holds A's new SA, undecided
    assert len(pair.b.all()) == 2
    pair.drop = lambda side, d: True  # and then the link dies
    pair.advance(400)
    assert not pair.b.all() and not pair.a.all()
    assert not pair.of("b", IkeSaRekeyed)
