"""Hostile input: an IkeManager never raises on any datagram, an established SA survives
garbage and keeps working, and authentic but malformed requests get the notify the RFC
asks for (RFC 7296 2.21.2, 3.2)."""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from functools import cache

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.ike_pair import (
    Pair,
    assert_child_pair,
    child,
    make_pair,
    mirrored,
    psk_config,
    up,
)
from xfrmctl.ike.config import ChildConfig
from xfrmctl.ike.constants import ExchangeType, NotifyType, PayloadType, ProtocolId
from xfrmctl.ike.errors import ProtocolError
from xfrmctl.ike.events import ChildSaNegotiated
from xfrmctl.ike.manager import IkeManager
from xfrmctl.ike.message import Message, decode, encode, seal
from xfrmctl.ike.payloads import (
    DeletePayload,
    NoncePayload,
    NotifyPayload,
    Payload,
    UnknownPayload,
    push_chain,
)
from xfrmctl.ike.proposals import parse_proposals
from xfrmctl.ike.sa import IkeSa, IkeState

# Longer runs are a command, not CI: XFRMCTL_FUZZ_EXAMPLES=20000 pytest tests/unit/ike/...
EXAMPLES = int(os.environ.get("XFRMCTL_FUZZ_EXAMPLES", "250"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


@cache
def established() -> tuple[Pair, list[bytes]]:
    """One PSK tunnel kept up for the whole module, and every datagram it exchanged
    (IKE_SA_INIT, IKE_AUTH, CREATE_CHILD_SA, INFORMATIONAL, both directions)."""
    lan = child()
    pair = make_pair(psk_config(children=(lan,), dpd_delay=0),
                     psk_config(children=(mirrored(lan),), dpd_delay=0))
    up(pair)
    (ca,) = pair.of("a", ChildSaNegotiated)
    pair.a.act(pair.a.all()[0], lambda sa: sa.rekey_child(ca.spi_in, pair.now))
    pair.pump()
    pair.a.act(pair.a.all()[0], lambda sa: sa.create_child("lan", pair.now))
    pair.pump()
    pair.a.act(pair.a.all()[0], lambda sa: sa.delete_child(
        pair.of("a", ChildSaNegotiated)[-1].spi_in, pair.now))
    pair.pump()
    pair.a.act(pair.a.all()[0], lambda sa: sa.liveness_check(pair.now))
    pair.pump()
    return pair, [d.data for _, d in pair.wire]


def fresh_manager() -> IkeManager:
    return IkeManager([psk_config(children=(child(),))])


def feed(manager: IkeManager, data: bytes, now: float = 1_700_000_000.0) -> None:
    manager.receive_datagram(data, ("192.0.2.2", 500), ("192.0.2.1", 500), now)
    manager.datagrams_to_send()
    while manager.next_event() is not None:
        pass


def mutate(data: bytes, source: st.DataObject) -> bytes:
    out = bytearray(data)
    for _ in range(source.draw(st.integers(1, 4))):
        kind = source.draw(st.sampled_from(["flip", "set", "cut", "insert", "header"]))
        at = source.draw(st.integers(0, max(len(out) - 1, 0)))
        if kind == "flip" and out:
            out[at] ^= 1 << source.draw(st.integers(0, 7))
        elif kind == "set" and out:
            out[at] = source.draw(st.integers(0, 255))
        elif kind == "cut":
            del out[at:]
        elif kind == "insert":
            out[at:at] = source.draw(st.binary(min_size=1, max_size=16))
        elif len(out) >= 28:  # a header field: next payload, exchange, flags, ID, length
            out[source.draw(st.sampled_from([16, 18, 19, 20, 24]))] = \
                source.draw(st.integers(0, 255))
    return bytes(out)


@FUZZ
@given(st.binary(max_size=600))
def test_arbitrary_bytes_to_a_fresh_manager(data: bytes) -> None:
    feed(fresh_manager(), data)


@FUZZ
@given(st.binary(min_size=28, max_size=600), st.sampled_from(list(ExchangeType)))
def test_arbitrary_bodies_behind_a_plausible_header(body: bytes, exchange: int) -> None:
    """Past the header check: every payload parser and the responder see the garbage."""
    data = bytearray(body)
    data[17], data[18], data[19] = 0x20, exchange, 0x08  # version 2.0, initiator
    data[8:16] = bytes(8)
    struct.pack_into("!II", data, 20, 0, len(data))
    feed(fresh_manager(), bytes(data))


@FUZZ
@given(st.data())
def test_mutated_datagrams_of_a_real_exchange(data: st.DataObject) -> None:
    pair, datagrams = established()
    original = data.draw(st.sampled_from(datagrams))
    garbage = mutate(original, data)
    feed(fresh_manager(), garbage)
    feed(pair.a, garbage, pair.now)
    feed(pair.b, garbage, pair.now)
    sa_a, sa_b = the_sas(pair)
    assert sa_a.state is IkeState.ESTABLISHED and sa_b.state is IkeState.ESTABLISHED


@FUZZ
@given(st.binary(max_size=300), st.booleans())
def test_garbage_with_the_sas_own_spis(body: bytes, to_responder: bool) -> None:
    """Datagrams that reach the established SA by its SPIs (plain or with a forged SK)."""
    pair, _ = established()
    sa_a, sa_b = the_sas(pair)
    message = Message(ExchangeType.INFORMATIONAL, sa_a.spi_i, sa_a.spi_r,
                      sa_b.window.expected_peer_id if to_responder else 0, to_responder,
                      not to_responder, [UnknownPayload(200, False, body)])
    plain = encode(message)
    forged = plain[:16] + bytes([PayloadType.SK]) + plain[17:]
    for data in (plain, forged):
        feed(pair.b if to_responder else pair.a, data, pair.now)
    assert sa_a.state is IkeState.ESTABLISHED and sa_b.state is IkeState.ESTABLISHED


def the_sas(pair: Pair) -> tuple[IkeSa, IkeSa]:
    """The established pair's IKE SAs (half-open ones made by fuzzing are ignored)."""
    (sa_a,) = [s for s in pair.a.all() if s.state is IkeState.ESTABLISHED]
    sa_b = pair.b.sas[sa_a.spi_r]
    return sa_a, sa_b


def test_established_sa_still_works_after_the_fuzzing() -> None:
    pair, datagrams = established()
    for data in datagrams:  # replays of everything, too
        feed(pair.b, data, pair.now)
        feed(pair.a, data, pair.now)
    sa_a, sa_b = the_sas(pair)
    spi = next(iter(sa_a.children.values())).spi_in
    before = len(pair.of("a", ChildSaNegotiated))
    pair.a.act(sa_a, lambda sa: sa.rekey_child(spi, pair.now))
    pair.pump()
    assert len(pair.of("a", ChildSaNegotiated)) == before + 1
    assert_child_pair(pair.of("a", ChildSaNegotiated)[-1], pair.of("b", ChildSaNegotiated)[-1])
    assert sa_a.state is IkeState.ESTABLISHED and sa_b.state is IkeState.ESTABLISHED


# --- authentic but malformed requests ------------------------------------------------------


def fresh_tunnel() -> tuple[Pair, IkeSa, IkeSa]:
    lan = child()
    pair = make_pair(psk_config(children=(lan,)), psk_config(children=(mirrored(lan),)))
    up(pair)
    return pair, pair.a.all()[0], pair.b.all()[0]


def forge_request(sa: IkeSa, inner: bytes, first: int,
                  exchange: ExchangeType = ExchangeType.INFORMATIONAL) -> bytes:
    """A request under the SA's real keys whose decrypted contents are `inner`: what a
    broken (not a malicious) peer would send."""
    message = Message(exchange, sa.spi_i, sa.spi_r, sa.window.next_request_id, sa.is_initiator,
                      False, [], [])
    sa.window.next_request_id += 1  # the peer's next request uses the next ID
    assert sa.keys is not None
    return seal(message, [], inner, sa.keys.cipher_out, enc_type=PayloadType.SK, enc_next=first)


def answer_to(pair: Pair, sa_a: IkeSa, data: bytes) -> list[NotifyPayload]:
    pair.b.receive_datagram(data, pair.endpoint("b"), pair.endpoint("a"), pair.now)
    (reply,) = pair.b.datagrams_to_send()
    response = decode(reply.data, sa_a.keys.cipher_in)
    assert response.is_response and response.protected is not None
    return response.notifies()


def assert_still_working(pair: Pair, sa_a: IkeSa, sa_b: IkeSa) -> None:
    assert sa_b.state is IkeState.ESTABLISHED
    pair.a.act(sa_a, lambda sa: sa.create_child("lan", pair.now))
    pair.pump()
    assert_child_pair(pair.of("a", ChildSaNegotiated)[-1], pair.of("b", ChildSaNegotiated)[-1])


def test_malformed_payload_chain_inside_sk_gets_invalid_syntax() -> None:
    pair, sa_a, sa_b = fresh_tunnel()
    # A Delete payload whose length field claims more than there is.
    inner = struct.pack("!BBH", 0, 0, 60) + bytes([ProtocolId.ESP, 4, 0, 1]) + b"\x01\x02"
    (notify,) = answer_to(pair, sa_a, forge_request(sa_a, inner, PayloadType.DELETE))
    assert notify.notify_type == NotifyType.INVALID_SYNTAX
    assert_still_working(pair, sa_a, sa_b)


def test_payload_not_allowed_in_the_exchange_gets_invalid_syntax() -> None:
    pair, sa_a, sa_b = fresh_tunnel()
    inner = push_chain([NoncePayload(b"\x01" * 32)])  # no Nonce in INFORMATIONAL
    (notify,) = answer_to(pair, sa_a, forge_request(sa_a, inner, PayloadType.NONCE))
    assert notify.notify_type == NotifyType.INVALID_SYNTAX
    assert_still_working(pair, sa_a, sa_b)


def test_unknown_critical_payload_gets_unsupported_critical_payload() -> None:
    pair, sa_a, sa_b = fresh_tunnel()
    payloads: list[Payload] = [UnknownPayload(201, True, b"future")]
    (notify,) = answer_to(pair, sa_a, forge_request(sa_a, push_chain(payloads), 201))
    assert notify.notify_type == NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD
    assert notify.data == bytes([201])  # RFC 7296 3.10.1: the payload type
    assert_still_working(pair, sa_a, sa_b)


def test_unknown_non_critical_payload_is_skipped() -> None:
    pair, sa_a, sa_b = fresh_tunnel()
    (cb,) = pair.of("b", ChildSaNegotiated)
    payloads: list[Payload] = [UnknownPayload(201, False, b"future"),
                               DeletePayload(ProtocolId.ESP, (cb.spi_out.to_bytes(4, "big"),))]
    inner = push_chain(payloads)
    assert answer_to(pair, sa_a, forge_request(sa_a, inner, 201)) == []
    assert not sa_b.children  # the Delete after it was processed


def test_forged_sk_request_is_dropped_without_using_up_a_message_id() -> None:
    pair, sa_a, sa_b = fresh_tunnel()
    good = forge_request(sa_a, push_chain([UnknownPayload(201, True, b"x")]), 201)
    broken_icv = good[:-1] + bytes([good[-1] ^ 1])
    sk_length = struct.unpack_from("!H", good, 30)[0]
    bad_length = good[:30] + struct.pack("!H", sk_length - 4) + good[32:]  # not the rest
    for bad in (broken_icv, bad_length):
        pair.b.receive_datagram(bad, pair.endpoint("b"), pair.endpoint("a"), pair.now)
        assert not pair.b.datagrams_to_send()
    sa_a.window.next_request_id -= 1  # nothing was consumed: the ID is still free
    assert_still_working(pair, sa_a, sa_b)


def test_plaintext_request_on_an_established_sa_is_ignored() -> None:
    pair, sa_a, sa_b = fresh_tunnel()
    for exchange in (ExchangeType.IKE_SA_INIT, ExchangeType.INFORMATIONAL):
        message = Message(exchange, sa_a.spi_i, sa_a.spi_r, sa_b.window.expected_peer_id, True,
                          False, [NotifyPayload(NotifyType.COOKIE, 0, b"", b"x" * 8)])
        pair.b.receive_datagram(encode(message), pair.endpoint("b"), pair.endpoint("a"),
                                pair.now)
        assert not pair.b.datagrams_to_send()
    assert_still_working(pair, sa_a, sa_b)


# --- authentic requests with mutated contents ----------------------------------------------


@cache
def protected_requests() -> list[tuple[ExchangeType, bytes, int]]:
    """(exchange, decrypted payload chain, first payload type) of every request A sent in
    a run with IKE_AUTH, a PFS CHILD_SA rekey, a new CHILD_SA, an IKE rekey and deletes."""
    pair, _ = established()
    _, sa_b = the_sas(pair)
    assert sa_b.keys is not None
    found: list[tuple[ExchangeType, bytes, int]] = []
    for side, d in pair.wire:
        if side != "a":
            continue
        try:
            msg = decode(d.data, sa_b.keys.cipher_in)
        except ProtocolError:
            continue
        if msg.protected is not None and not msg.is_response and msg.protected:
            found.append((ExchangeType(msg.exchange), push_chain(msg.protected),
                          msg.protected[0].payload_type))
    assert {e for e, _, _ in found} >= {ExchangeType.CREATE_CHILD_SA,
                                        ExchangeType.INFORMATIONAL}
    return found


@FUZZ
@given(st.data())
def test_every_authentic_request_is_answered_once(data: st.DataObject) -> None:
    """Integrity-valid requests with garbled contents, under the next message ID: the
    responder never raises and answers each exactly once (RFC 7296 2.21.2)."""
    exchange, inner, first = data.draw(st.sampled_from(protected_requests()))
    garbled = mutate(inner, data) if data.draw(st.booleans()) else inner
    pair, sa_a, sa_b = fresh_tunnel()
    request = forge_request(sa_a, garbled, first, exchange)
    pair.b.receive_datagram(request, pair.endpoint("b"), pair.endpoint("a"), pair.now)
    replies = pair.b.datagrams_to_send()
    assert len(replies) >= 1
    for reply in replies:
        response = decode(reply.data, sa_a.keys.cipher_in)
        assert response.is_response and response.message_id == sa_a.window.next_request_id - 1
    while pair.b.next_event() is not None:
        pass
    assert sa_b.state in (IkeState.ESTABLISHED, IkeState.REKEYED, IkeState.CLOSED)


# --- responses: forged IKE_SA_INIT answers and authentic garbled ones ----------------------


@FUZZ
@given(st.data())
def test_mutated_ike_sa_init_response_to_a_waiting_initiator(data: st.DataObject) -> None:
    """IKE_SA_INIT responses are not protected: anyone on the path can send one."""
    pair = make_pair(psk_config(children=(child(),)), psk_config(children=(child(),)))
    pair.a.initiate("net", pair.endpoint("a"), pair.endpoint("b"), pair.now)
    pair.step("a")
    (answer,) = pair.b.datagrams_to_send()
    garbled = mutate(answer.data, data)
    if data.draw(st.booleans()):
        garbled = answer.data[:8] + garbled[8:]  # keep the SPI: it reaches the SA
    feed(pair.a, garbled, pair.now)
    for sa in pair.a.all():
        assert sa.state in (IkeState.INIT_SENT, IkeState.AUTH_SENT)


def reseal(response: bytes, sa_a: IkeSa, sa_b: IkeSa, data: st.DataObject) -> bytes:
    """B's real response, its decrypted contents garbled, sealed again with B's keys."""
    msg = decode(response, sa_a.keys.cipher_in)
    assert msg.protected is not None and sa_b.keys.cipher_out is not None
    inner = push_chain(msg.protected)
    first = msg.protected[0].payload_type if msg.protected else PayloadType.NONE
    garbled = mutate(inner, data) if inner else inner
    msg.protected = []
    return seal(msg, [], garbled, sa_b.keys.cipher_out, enc_type=PayloadType.SK, enc_next=first)


ACTIONS: dict[str, Callable[[IkeSa, int, float], None]] = {
    "create child": lambda sa, spi, now: sa.create_child("lan", now),
    "rekey child": lambda sa, spi, now: sa.rekey_child(spi, now),
    "delete child": lambda sa, spi, now: sa.delete_child(spi, now),
    "rekey IKE": lambda sa, spi, now: sa.rekey(now),
    "liveness": lambda sa, spi, now: sa.liveness_check(now),
    "delete IKE": lambda sa, spi, now: sa.delete(now),
}


@FUZZ
@given(st.data(), st.sampled_from(sorted(ACTIONS)))
def test_authentic_garbled_responses_never_raise(data: st.DataObject, action: str) -> None:
    pfs = ChildConfig("lan", child().local_ts, child().remote_ts,
                      proposals=parse_proposals("aes128gcm16-x25519", ProtocolId.ESP))
    pair = make_pair(psk_config(children=(pfs,)), psk_config(children=(mirrored(pfs),)))
    up(pair)
    sa_a, sa_b = pair.a.all()[0], pair.b.all()[0]
    spi = next(iter(sa_a.children.values())).spi_in
    pair.a.act(sa_a, lambda sa: ACTIONS[action](sa, spi, pair.now))
    pair.step("a")
    (answer,) = pair.b.datagrams_to_send()
    feed(pair.a, reseal(answer.data, sa_a, sa_b, data), pair.now)
    pair.advance(300)  # whatever it did, timers run to the end without raising
    for sa in pair.a.all():
        assert sa.state is not IkeState.CLOSED  # closed ones are forgotten


@FUZZ
@given(st.data())
def test_authentic_garbled_ike_auth_response(data: st.DataObject) -> None:
    lan = child()
    pair = make_pair(psk_config(children=(lan,)), psk_config(children=(mirrored(lan),)))
    pair.a.initiate("net", pair.endpoint("a"), pair.endpoint("b"), pair.now)
    pair.step("a")
    pair.step("b")
    pair.step("a")
    (answer,) = pair.b.datagrams_to_send()
    sa_a, sa_b = pair.a.all()[0], pair.b.all()[0]
    feed(pair.a, reseal(answer.data, sa_a, sa_b, data), pair.now)
    assert sa_a.state in (IkeState.AUTH_SENT, IkeState.ESTABLISHED, IkeState.CLOSED)
