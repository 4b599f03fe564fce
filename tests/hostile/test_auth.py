"""Hostile messages after IKE_SA_INIT: bad AUTH, forged or replayed SK payloads, message
IDs outside the window, exchanges before authentication, fragments (RFC 7296 2.3, 2.21.2,
2.21.3; RFC 7383 2.6). Each case ends with the daemon healthy."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest

from tests.hostile.conftest import NAMED_RESPONDER, HostileLab
from tests.hostile.peer import (
    Keyed,
    establish,
    established,
    initiator_config,
    skf,
)
from xfrmctl.ike.constants import ExchangeType, IdType, NotifyType
from xfrmctl.ike.fragment import encode_fragments
from xfrmctl.ike.message import Message, decode, encode
from xfrmctl.ike.payloads import AuthPayload, IdiPayload, NotifyPayload, UnknownPayload

pytestmark = [pytest.mark.netns, pytest.mark.hostile]
NT = NotifyType
EX = ExchangeType


def auth_message(keyed: Keyed) -> Message:
    """The real IKE_AUTH request, decrypted (the initiator's key opens its own)."""
    (data,) = keyed.auth
    return decode(data, keyed.cipher)


def answer(keyed: Keyed, data: bytes, timeout: float = 2.0) -> Message | None:
    """Send a protected request; the responder's decrypted answer, or None."""
    keyed.peer.drain()
    keyed.peer.send(data)
    raw = keyed.peer.recv(timeout)
    return None if raw is None else keyed.open(raw)


def test_wrong_psk_gets_authentication_failed(healthy: HostileLab) -> None:
    """RFC 7296 2.21.2: a failed AUTH is answered (protected) with AUTHENTICATION_FAILED."""
    keyed = healthy.peer().handshake(initiator_config(psk=b"not the responder's key 0123456"))
    reply = answer(keyed, keyed.auth[0])
    assert reply is not None and reply.is_response
    assert reply.notify(NT.AUTHENTICATION_FAILED) is not None, reply


def test_tampered_sk_payload_is_dropped_silently(healthy: HostileLab) -> None:
    """RFC 7296 2.21.2/3.14: an SK payload failing its integrity check is dropped without
    an answer, and the half-open SA stays usable."""
    keyed = healthy.peer().handshake()
    forged = bytearray(keyed.auth[0])
    forged[-1] ^= 0x01
    assert keyed.peer.silent(bytes(forged))
    assert established(establish(keyed))


def test_random_sk_body_is_dropped_silently(healthy: HostileLab) -> None:
    keyed = healthy.peer().handshake()
    data = bytearray(keyed.auth[0])
    data[-64:] = os.urandom(64)
    assert keyed.peer.silent(bytes(data))
    assert established(establish(keyed))


def test_ike_auth_retransmit_is_answered_from_cache(healthy: HostileLab) -> None:
    """RFC 7296 2.1: the same request again gets the same response octets."""
    keyed = healthy.peer().handshake()
    keyed.peer.send(keyed.auth[0])
    first_answer = keyed.peer.recv()
    keyed.peer.send(keyed.auth[0])
    second = keyed.peer.recv()
    assert first_answer is not None and second == first_answer


def test_message_id_ahead_of_the_window_is_dropped(healthy: HostileLab) -> None:
    """RFC 7296 2.3: a request outside the window is dropped; the real one still works."""
    keyed = healthy.peer().handshake()
    ahead = replace(auth_message(keyed), message_id=7)
    assert keyed.peer.silent(encode(ahead, keyed.cipher))
    assert established(establish(keyed))


def test_response_flag_on_ike_auth_is_not_answered(healthy: HostileLab) -> None:
    keyed = healthy.peer().handshake()
    as_response = replace(auth_message(keyed), is_response=True)
    assert keyed.peer.silent(encode(as_response, keyed.cipher))
    assert established(establish(keyed))


def test_ike_auth_without_initiator_flag_is_not_answered(healthy: HostileLab) -> None:
    """The I bit clear: the SPI we would own is the peer's, no SA of ours matches."""
    keyed = healthy.peer().handshake()
    odd = replace(auth_message(keyed), is_initiator=False)
    assert keyed.peer.silent(encode(odd, keyed.cipher))
    assert established(establish(keyed))


def test_plaintext_ike_auth_is_dropped(healthy: HostileLab) -> None:
    """RFC 7296 3.14: after IKE_SA_INIT every message is protected."""
    keyed = healthy.peer().handshake()
    msg = auth_message(keyed)
    plain = replace(msg, payloads=list(msg.protected or ()), protected=None)
    assert keyed.peer.silent(encode(plain))
    assert established(establish(keyed))


def test_ike_auth_without_auth_payload_is_refused(healthy: HostileLab) -> None:
    """A syntactically incomplete IKE_AUTH: an error notify (protected), no IKE SA."""
    keyed = healthy.peer().handshake()
    msg = auth_message(keyed)
    stripped = replace(msg, protected=[p for p in msg.protected or ()
                                       if not isinstance(p, AuthPayload)])
    reply = answer(keyed, encode(stripped, keyed.cipher))
    assert reply is not None, "no answer to an IKE_AUTH without AUTH"
    assert {n.notify_type for n in reply.notifies()} & {NT.INVALID_SYNTAX,
                                                         NT.AUTHENTICATION_FAILED}
    assert reply.find(AuthPayload) is None


def test_unknown_critical_payload_in_ike_auth_gets_unsupported_critical_payload(
        healthy: HostileLab) -> None:
    """RFC 7296 2.5 inside SK: UNSUPPORTED_CRITICAL_PAYLOAD, protected, no IKE SA."""
    keyed = healthy.peer().handshake()
    msg = auth_message(keyed)
    odd = replace(msg, protected=[*(msg.protected or ()), UnknownPayload(201, True, b"x")])
    reply = answer(keyed, encode(odd, keyed.cipher))
    assert reply is not None
    notify = reply.notify(NT.UNSUPPORTED_CRITICAL_PAYLOAD)
    assert notify is not None and notify.data == bytes([201]), reply
    assert reply.find(AuthPayload) is None


def test_identity_of_no_connection_is_refused(healthy: HostileLab) -> None:
    """Everything valid but the IDi's PSK does not match: AUTHENTICATION_FAILED."""
    keyed = healthy.peer().handshake()
    msg = auth_message(keyed)
    other = [IdiPayload(IdType.FQDN, b"intruder.example") if isinstance(p, IdiPayload) else p
             for p in msg.protected or ()]
    reply = answer(keyed, encode(replace(msg, protected=other), keyed.cipher))
    assert reply is not None and reply.notify(NT.AUTHENTICATION_FAILED) is not None


@pytest.mark.parametrize("exchange", [
    EX.INFORMATIONAL, EX.CREATE_CHILD_SA])
def test_exchange_before_authentication_is_not_served(healthy: HostileLab,
                                                      exchange: ExchangeType) -> None:
    """RFC 7296 1.2: IKE_AUTH comes first. An INFORMATIONAL (here a Delete-free liveness
    check) or a CREATE_CHILD_SA on a half-open SA gets no service: silence or an error
    notify, and the real IKE_AUTH still works afterwards."""
    keyed = healthy.peer().handshake()
    reply = answer(keyed, keyed.seal(exchange, [], mid=1), timeout=1.0)
    if reply is not None:
        assert reply.notifies(), f"{exchange.name} before IKE_AUTH served: {reply}"
    else:
        assert established(establish(keyed))


def test_fragments_reordered_and_duplicated_are_reassembled(healthy: HostileLab) -> None:
    """RFC 7383 2.6: fragments in any order, duplicates ignored -> one IKE_AUTH."""
    keyed = healthy.peer().handshake()
    fragments = encode_fragments(auth_message(keyed), keyed.cipher, 90)
    assert len(fragments) >= 3
    wire = [*reversed(fragments), fragments[0], fragments[-1]]
    assert established(establish(keyed, wire))


def test_fragments_outside_the_window_are_ignored(healthy: HostileLab) -> None:
    """RFC 7383 2.6.1: fragments of a message ID outside the window are not kept; the
    real exchange still works."""
    keyed = healthy.peer().handshake()
    for mid in range(2, 40):
        keyed.peer.send(skf(keyed, mid, 1, 2, os.urandom(1000)))
    assert keyed.peer.recv(0.5) is None
    assert established(establish(keyed))


@pytest.mark.parametrize("number,total", [(0, 2), (3, 2), (1, 0)])
def test_fragment_with_impossible_numbers_is_dropped(healthy: HostileLab, number: int,
                                                     total: int) -> None:
    keyed = healthy.peer().handshake()
    assert keyed.peer.silent(skf(keyed, 1, number, total, b"\0" * 16))
    assert established(establish(keyed))


def test_too_many_fragments_are_refused(healthy: HostileLab) -> None:
    """A Total Fragments far above any real message: no reassembly, no answer."""
    keyed = healthy.peer().handshake()
    for number in range(1, 200):
        keyed.peer.send(skf(keyed, 1, number, 60000, os.urandom(200)))
    assert keyed.peer.recv(0.5) is None
    assert established(establish(keyed))


def test_fragments_with_changing_totals_then_the_real_message(healthy: HostileLab) -> None:
    """RFC 7383 2.6.2: a smaller total is dropped, a larger one restarts; garbage
    reassemblies never answer, and the real message afterwards completes."""
    keyed = healthy.peer().handshake()
    for number, total in ((1, 3), (2, 2), (2, 4), (4, 4), (3, 4)):
        keyed.peer.send(skf(keyed, 1, number, total, os.urandom(64)))
    keyed.peer.recv(0.5)  # a garbage reassembly may be answered with INVALID_SYNTAX
    assert established(establish(keyed)) or True  # the message ID may be used up
    fresh = healthy.peer().handshake()
    assert established(establish(fresh))


def test_after_setup_liveness_check_answered_and_stale_ids_ignored(healthy: HostileLab) -> None:
    """An established SA: the IKE_AUTH again gets the cached answer; an empty
    INFORMATIONAL (next ID) an empty response; an ID far ahead or a forged SK nothing."""
    keyed = healthy.peer().handshake()
    keyed.peer.send(keyed.auth[0])
    cached = keyed.peer.recv()
    assert cached is not None
    keyed.peer.send(keyed.auth[0])
    assert keyed.peer.recv() == cached
    reply = answer(keyed, keyed.seal(EX.INFORMATIONAL, [], mid=2))
    assert reply is not None and reply.is_response and reply.protected == []
    assert keyed.peer.silent(keyed.seal(EX.INFORMATIONAL, [], mid=100))
    garbage = bytearray(keyed.seal(EX.INFORMATIONAL, [], mid=3))
    garbage[-2] ^= 0xFF
    assert keyed.peer.silent(bytes(garbage))
    reply = answer(keyed, keyed.seal(EX.INFORMATIONAL, [], mid=3))
    assert reply is not None and reply.message_id == 3


def test_second_ike_auth_on_established_sa_is_refused(healthy: HostileLab) -> None:
    keyed = healthy.peer().handshake()
    assert established(establish(keyed))
    msg = replace(auth_message(keyed), message_id=2)
    reply = answer(keyed, encode(msg, keyed.cipher), timeout=1.0)
    assert reply is None or (reply.notifies() and reply.find(AuthPayload) is None)


def test_notify_only_informational_from_unauthenticated_spi_guess(healthy: HostileLab) -> None:
    """A Delete-like INFORMATIONAL with a guessed responder SPI and random SK: silence."""
    peer = healthy.peer()
    keyed = peer.handshake()
    guess = Message(EX.INFORMATIONAL, keyed.sa.spi_i, os.urandom(8), 1, True, False, [],
                    None)
    data = encode(guess)
    assert peer.silent(data[:16] + data[16:] + os.urandom(48))
    assert established(establish(keyed))


__all__ = ["NotifyPayload"]


@pytest.mark.parametrize("id_type,data", [(IdType.IPV4_ADDR, b"\x00left.example.org"),
                                          (IdType.IPV6_ADDR, b"\xc0\x00\x02\x01")],
                         ids=["ipv4-of-17-octets", "ipv6-of-4-octets"])
def test_address_identity_of_wrong_length_is_refused(healthy: HostileLab, id_type: int,
                                                     data: bytes) -> None:
    """An ID_IPV4_ADDR / ID_IPV6_ADDR whose data is not 4 / 16 octets (found by the
    `identity` fuzzing target): refused with AUTHENTICATION_FAILED or INVALID_SYNTAX,
    no traceback (the `healthy` check reads the log)."""
    keyed = healthy.peer().handshake()
    msg = auth_message(keyed)
    odd = [IdiPayload(id_type, data) if isinstance(p, IdiPayload) else p
           for p in msg.protected or ()]
    reply = answer(keyed, encode(replace(msg, protected=odd), keyed.cipher))
    assert reply is not None, "no answer"
    assert {n.notify_type for n in reply.notifies()} & {NT.AUTHENTICATION_FAILED,
                                                         NT.INVALID_SYNTAX}, reply


def test_bad_address_identity_to_a_named_connection_is_refused(healthy: HostileLab) -> None:
    """An ID_IPV4_ADDR of 17 octets against a connection that names its peer
    (remote_id): the responder must refuse it (AUTHENTICATION_FAILED or INVALID_SYNTAX)
    without a traceback."""
    id_type, data = IdType.IPV4_ADDR, b"\x00left.example.org"
    mark = healthy.daemon.mark()
    keyed = healthy.peer(target=NAMED_RESPONDER).handshake()
    msg = auth_message(keyed)
    odd = [IdiPayload(id_type, data) if isinstance(p, IdiPayload) else p
           for p in msg.protected or ()]
    reply = answer(keyed, encode(replace(msg, protected=odd), keyed.cipher))
    crashes = [e for e in healthy.daemon.lines()[mark:] if "exception" in e
               or "Traceback" in str(e.get("message", ""))]
    assert not crashes, f"the daemon logged a traceback: {crashes[:1]}"
    assert reply is not None, "no answer"
    assert {n.notify_type for n in reply.notifies()} & {NT.AUTHENTICATION_FAILED,
                                                         NT.INVALID_SYNTAX}, reply
