"""MOBIKE (RFC 4555) through the tasks: two IKE cores wired in memory."""

from __future__ import annotations

from tests.support.ike_pair import (
    ADDR_A,
    ADDR_B,
    Pair,
    child,
    make_pair,
    mirrored,
    psk_config,
    up,
)
from xfrmctl.ike.constants import ExchangeType, NotifyType
from xfrmctl.ike.events import ChildSaNegotiated, IkeSaDown, IkeSaMoved, NegotiationFailed
from xfrmctl.ike.message import Message, decode
from xfrmctl.ike.payloads import NotifyPayload
from xfrmctl.ike.sa import Datagram, IkeSa
from xfrmctl.ike.state import IkeState
from xfrmctl.ike.tasks.mobike import MobikeUpdate

NEW_A = "198.51.100.7"  # the initiator's second address
NAT_PUBLIC = ("203.0.113.9", 31000)  # what a NAT on the new path makes of it


def _pair(mobike_a: bool = True, mobike_b: bool = True) -> Pair:
    c = child()
    return make_pair(psk_config(children=(c,), mobike=mobike_a),
                     psk_config(children=(mirrored(c),), mobike=mobike_b))


def _sas(pair: Pair) -> tuple[IkeSa, IkeSa]:
    (a,), (b,) = pair.a.all(), pair.b.all()
    return a, b


def _decoded(pair: Pair, side: str, sa: IkeSa, exchange: ExchangeType) -> list[Message]:
    """The messages `side` sent in `exchange`, decrypted with the peer's keys."""
    peer = _sas(pair)[1 if side == "a" else 0]
    assert peer.keys is not None
    out = []
    for s, d in pair.wire:
        if s != side or d.data[18] != exchange:
            continue
        out.append(decode(d.data, peer.keys.cipher_in))
    return out


def test_negotiated_in_ike_auth_and_the_initiator_moves_to_4500() -> None:
    pair = _pair()
    up(pair)
    a, b = _sas(pair)
    assert a.mobike and b.mobike
    assert a.local == (ADDR_A, 4500) and a.remote == (ADDR_B, 4500)
    auth = _decoded(pair, "a", a, ExchangeType.IKE_AUTH)
    assert auth[0].notify(NotifyType.MOBIKE_SUPPORTED) is not None
    # The next request goes 4500 -> 4500, and the responder answers there.
    pair.a.act(a, lambda s: s.liveness_check(pair.now))
    pair.pump()
    assert pair.wire[-2][1].local == (ADDR_A, 4500)
    assert pair.wire[-1][1].remote == (ADDR_A, 4500)
    assert b.remote == (ADDR_A, 4500) and a.state is IkeState.ESTABLISHED


def test_not_negotiated_when_one_end_has_it_off() -> None:
    for flags in ((True, False), (False, True)):
        pair = _pair(*flags)
        up(pair)
        a, b = _sas(pair)
        assert not a.mobike and not b.mobike
        # an initiator wanting MOBIKE uses 4500 from IKE_AUTH on anyway (as strongSwan)
        port = 4500 if flags[0] else 500
        assert a.local == (ADDR_A, port) and a.remote == (ADDR_B, port)


def test_address_change_moves_the_ike_sa_and_its_child_sas() -> None:
    pair = _pair()
    up(pair)
    a, b = _sas(pair)
    spis = (a.spi_i, a.spi_r)
    (child_a,) = pair.of("a", ChildSaNegotiated)
    pair.a.act(a, lambda s: s.addresses_changed(NEW_A, [NEW_A, "192.0.2.77"], pair.now))
    pair.pump()
    request = _decoded(pair, "a", a, ExchangeType.INFORMATIONAL)[-1]
    assert request.notify(NotifyType.UPDATE_SA_ADDRESSES) is not None
    assert request.notify(NotifyType.NAT_DETECTION_SOURCE_IP) is not None
    assert request.notify(NotifyType.COOKIE2) is not None
    extra = request.notify(NotifyType.ADDITIONAL_IP4_ADDRESS)
    assert extra is not None and extra.data == bytes([192, 0, 2, 77])
    sent = [d for s, d in pair.wire if s == "a"][-1]
    assert sent.local == (NEW_A, 4500)  # the update leaves from the new address
    (moved_b,) = pair.of("b", IkeSaMoved)
    (moved_a,) = pair.of("a", IkeSaMoved)
    assert moved_b.remote == (NEW_A, 4500) and moved_b.old_remote == (ADDR_A, 4500)
    assert moved_a.local == (NEW_A, 4500) and not moved_a.nat_local
    assert b.remote == (NEW_A, 4500) and b.peer_addresses == ("192.0.2.77",)
    # the same IKE_SA and CHILD_SA: no new SPIs, no new negotiation
    assert (a.spi_i, a.spi_r) == spis and len(pair.a.all()) == 1
    assert [c.spi_in for c in a.children.values()] == [child_a.spi_in]
    assert len(pair.of("a", ChildSaNegotiated)) == 1
    # and it goes on working from there
    pair.a.act(a, lambda s: s.liveness_check(pair.now))
    pair.pump()
    assert pair.wire[-1][1].remote == (NEW_A, 4500) and a.state is IkeState.ESTABLISHED


def test_same_address_with_a_new_address_list_sends_only_the_list() -> None:
    pair = _pair()
    up(pair)
    a, b = _sas(pair)
    pair.a.act(a, lambda s: s.addresses_changed(ADDR_A, [], pair.now))
    pair.pump()
    assert not pair.of("b", IkeSaMoved)
    request = _decoded(pair, "a", a, ExchangeType.INFORMATIONAL)[-1]
    assert request.notify(NotifyType.UPDATE_SA_ADDRESSES) is None
    assert request.notify(NotifyType.NO_ADDITIONAL_ADDRESSES) is not None
    assert b.peer_addresses == ()


def test_nat_on_the_new_path_is_detected_by_both() -> None:
    pair = _pair()
    up(pair)
    a, b = _sas(pair)

    def nat(side: str, d: Datagram) -> bool:  # a NAT rewrites the new path's source
        if side == "a" and d.local[0] == NEW_A:
            pair.b.receive_datagram(d.data, d.remote, NAT_PUBLIC, pair.now)
            return True
        if side == "b" and d.remote == NAT_PUBLIC:
            pair.a.receive_datagram(d.data, (NEW_A, 4500), d.local, pair.now)
            return True
        return False

    pair.drop = nat
    pair.a.act(a, lambda s: s.addresses_changed(NEW_A, [], pair.now))
    pair.pump()
    (moved_b,) = pair.of("b", IkeSaMoved)
    (moved_a,) = pair.of("a", IkeSaMoved)
    assert moved_b.remote == NAT_PUBLIC and moved_b.nat_remote and not moved_b.nat_local
    assert moved_a.nat_local and not moved_a.nat_remote
    assert b.remote == NAT_PUBLIC and a.nat_local


def test_address_vanished_without_a_new_one_waits() -> None:
    pair = _pair()
    up(pair)
    a, _ = _sas(pair)
    assert not a.addresses_changed(None, [], pair.now)
    assert a.local == (ADDR_A, 4500) and not a.window.tasks


def test_a_request_from_a_new_address_alone_does_not_move_the_sa() -> None:
    pair = _pair()
    up(pair)
    a, b = _sas(pair)

    def spoof(side: str, d: Datagram) -> bool:  # a's DPD seen from another address
        if side == "a":
            pair.b.receive_datagram(d.data, d.remote, ("192.0.2.99", 4500), pair.now)
            return True
        return False

    pair.drop = spoof
    pair.a.act(a, lambda s: s.liveness_check(pair.now))
    pair.pump()
    assert b.remote == (ADDR_A, 4500) and not pair.of("b", IkeSaMoved)
    assert len([d for s, d in pair.wire if s == "b"]) >= 2
    # the answer went back where the request came from (RFC 7296 2.11)
    assert pair.wire[-1][0] == "b" and pair.wire[-1][1].remote == ("192.0.2.99", 4500)


def test_update_from_the_responder_is_refused() -> None:
    """RFC 4555 3.1: only the original initiator decides the addresses."""
    pair = _pair()
    up(pair)
    a, b = _sas(pair)
    assert not b.addresses_changed("192.0.2.50", [], pair.now)  # the API refuses too
    b.local = ("192.0.2.50", 4500)
    pair.b.act(b, lambda s: s.queue(MobikeUpdate(update=True), pair.now))
    pair.pump()
    assert a.remote == (ADDR_B, 4500) and not pair.of("a", IkeSaMoved)
    assert a.state is IkeState.ESTABLISHED


def test_update_without_mobike_negotiated_is_refused() -> None:
    pair = _pair(mobike_a=True, mobike_b=False)
    up(pair)
    a, b = _sas(pair)
    assert not a.addresses_changed(NEW_A, [], pair.now)  # not negotiated: nothing sent
    a.local = (NEW_A, 4500)
    pair.a.act(a, lambda s: s.queue(MobikeUpdate(update=True), pair.now))
    pair.pump()
    assert b.remote == (ADDR_A, 4500) and not pair.of("b", IkeSaMoved)
    assert b.state is IkeState.ESTABLISHED


def test_answer_without_our_cookie2_closes_the_ike_sa() -> None:
    pair = _pair()
    up(pair)
    a, _ = _sas(pair)
    # the responder "answers" without echoing COOKIE2: drop its real answer and forge one
    pair.drop = lambda side, d: side == "b"
    pair.a.act(a, lambda s: s.addresses_changed(NEW_A, [], pair.now))
    pair.pump()
    out = a.window.outstanding
    assert out is not None and isinstance(out.task, MobikeUpdate)
    answer = Message(ExchangeType.INFORMATIONAL, a.spi_i, a.spi_r, out.message_id,
                     False, True, [], [])
    task = out.task
    pair.a.act(a, lambda s: task.process(s, answer, pair.now))
    pair.pump()
    assert a.state is IkeState.CLOSED
    (failed,) = pair.of("a", NegotiationFailed)
    assert "COOKIE2" in failed.message


def test_cookie2_of_a_bad_size_is_answered_with_an_error() -> None:
    pair = _pair()
    up(pair)
    a, b = _sas(pair)
    task = MobikeUpdate(update=True)
    task.cookie2 = b"short"
    a.local = (NEW_A, 4500)
    pair.a.act(a, lambda s: s.queue(task, pair.now))
    pair.pump()
    assert not pair.of("b", IkeSaMoved) and b.remote == (ADDR_A, 4500)
    assert b.state is IkeState.ESTABLISHED


def test_rekeyed_ike_sa_keeps_mobike_and_the_initiator_role() -> None:
    pair = _pair()
    up(pair)
    _, b = _sas(pair)
    pair.b.act(b, lambda s: s.rekey(pair.now))  # the responder rekeys: it initiates that
    pair.pump()
    (a2,), (b2,) = pair.a.all(), pair.b.all()
    assert a2 is not b2 and a2.mobike and b2.mobike
    assert a2.original_initiator and not b2.original_initiator
    pair.a.act(a2, lambda s: s.addresses_changed(NEW_A, [], pair.now))
    pair.pump()
    assert b2.remote == (NEW_A, 4500)
    assert not any(isinstance(e, IkeSaDown) and e.ike_sa == b2.id for e in pair.events_b)



class _BadAddresses(MobikeUpdate):
    """An update whose address list has a malformed entry (3 octets) and a good one."""

    def build(self, sa: IkeSa, now: float) -> Message:
        msg = super().build(sa, now)
        assert msg.protected is not None
        msg.protected[:0] = [
            NotifyPayload(NotifyType.ADDITIONAL_IP4_ADDRESS, 0, b"", b"\xc0\x00\x02"),
            NotifyPayload(NotifyType.ADDITIONAL_IP6_ADDRESS, 0, b"",
                          bytes.fromhex("20010db8000000000000000000000009"))]
        return msg


def test_malformed_additional_address_is_skipped() -> None:
    pair = _pair()
    up(pair)
    a, b = _sas(pair)
    a.local = (NEW_A, 4500)
    pair.a.act(a, lambda s: s.queue(_BadAddresses(update=True), pair.now))
    pair.pump()
    assert b.peer_addresses == ("2001:db8::9",)
    assert b.remote == (NEW_A, 4500) and b.state is IkeState.ESTABLISHED
