"""Malformed IKE headers, wrong versions, unknown exchanges and SPIs (RFC 7296 2.5,
2.21, 3.1). Each case ends with the daemon healthy (`healthy` fixture)."""

from __future__ import annotations

import os
import random
import struct

import pytest

from tests.hostile.conftest import HostileLab
from tests.hostile.peer import Peer, assert_error, is_init_accept
from xfrmctl.ike.constants import ExchangeType, NotifyType
from xfrmctl.ike.message import Message, encode, parse_header
from xfrmctl.ike.payloads import NotifyPayload, pull_chain

pytestmark = [pytest.mark.netns, pytest.mark.hostile]
NT = NotifyType
VERSION_AT, FLAGS_AT, LENGTH_AT = 17, 19, 24


def init_bytes(peer: Peer) -> bytearray:
    _, request = peer.init_request()
    return bytearray(encode(request))


def patched(data: bytearray, at: int, value: int) -> bytes:
    out = bytearray(data)
    out[at] = value
    return bytes(out)


@pytest.mark.parametrize("size", [0, 1, 27])
def test_datagram_shorter_than_header_is_dropped(healthy: HostileLab, size: int) -> None:
    peer = healthy.peer()
    assert peer.silent(bytes(init_bytes(peer)[:size]))


@pytest.mark.parametrize("delta", [-1, 1, 1000])
def test_length_field_not_the_datagram_size_is_dropped(healthy: HostileLab, delta: int) -> None:
    """RFC 7296 3.1: Length is the total message size; a mismatch is malformed."""
    peer = healthy.peer()
    data = init_bytes(peer)
    struct.pack_into("!I", data, LENGTH_AT, len(data) + delta)
    assert peer.silent(bytes(data))


def test_truncated_datagram_is_dropped(healthy: HostileLab) -> None:
    peer = healthy.peer()
    data = init_bytes(peer)
    cut = data[:-10]
    struct.pack_into("!I", cut, LENGTH_AT, len(cut))
    assert peer.silent(bytes(cut))


def test_payload_length_beyond_the_message_is_dropped_or_invalid_syntax(
        healthy: HostileLab) -> None:
    peer = healthy.peer()
    data = init_bytes(peer)
    struct.pack_into("!H", data, 28 + 2, 0xFFF0)  # first payload's length
    reply = peer.ask(bytes(data), timeout=1.0)
    assert reply is None or NT.INVALID_SYNTAX in reply.notify_types()


def test_payload_length_below_its_header_is_dropped_or_invalid_syntax(
        healthy: HostileLab) -> None:
    peer = healthy.peer()
    data = init_bytes(peer)
    struct.pack_into("!H", data, 28 + 2, 3)
    reply = peer.ask(bytes(data), timeout=1.0)
    assert reply is None or NT.INVALID_SYNTAX in reply.notify_types()


def test_next_payload_none_with_payloads_following_is_refused(healthy: HostileLab) -> None:
    """Header says no payloads but the body has them: no SA may come of it."""
    peer = healthy.peer()
    data = init_bytes(peer)
    reply = peer.ask(patched(data, 16, 0), timeout=1.0)
    assert not is_init_accept(reply)


def test_response_flag_on_a_request_is_never_answered(healthy: HostileLab) -> None:
    """RFC 7296 2.21: a response is never answered (an IKE_SA_INIT with R set)."""
    peer = healthy.peer()
    data = init_bytes(peer)
    assert peer.silent(patched(data, FLAGS_AT, 0x08 | 0x20))


def test_initiator_flag_clear_on_ike_sa_init_is_not_taken_as_ours(healthy: HostileLab) -> None:
    """RFC 7296 3.1: the I bit tells whose SPI is whose. A request claiming to come
    from a responder may be dropped; if answered, the answer must be a proper responder's
    (R set, I clear)."""
    peer = healthy.peer()
    data = init_bytes(peer)
    reply = peer.ask(patched(data, FLAGS_AT, 0), timeout=1.0)
    if reply is not None:
        assert reply.message is not None
        assert reply.message.is_response and not reply.message.is_initiator


@pytest.mark.parametrize("version", [0x30, 0xF0])
def test_higher_major_version_gets_invalid_major_version(healthy: HostileLab,
                                                         version: int) -> None:
    """RFC 7296 2.5: drop it and SHOULD send INVALID_MAJOR_VERSION carrying the highest
    version we support; the answer itself is an IKEv2 (2.0) message."""
    peer = healthy.peer()
    data = init_bytes(peer)
    reply = peer.ask(patched(data, VERSION_AT, version))
    notify = assert_error(reply, NT.INVALID_MAJOR_VERSION)
    assert reply is not None and reply.data[VERSION_AT] == 0x20
    assert notify.data in (b"", b"\x20")


def test_higher_minor_version_is_accepted(healthy: HostileLab) -> None:
    """RFC 7296 2.5: a higher minor version is ignored (processed as 2.0); the answer
    says 2.0."""
    peer = healthy.peer()
    data = init_bytes(peer)
    reply = peer.ask(patched(data, VERSION_AT, 0x21))
    assert is_init_accept(reply)
    assert reply is not None and reply.data[VERSION_AT] == 0x20


def test_ikev1_major_version_is_dropped(healthy: HostileLab) -> None:
    """A lower major version (IKEv1) is not ours to answer as IKEv2."""
    peer = healthy.peer()
    data = init_bytes(peer)
    reply = peer.ask(patched(data, VERSION_AT, 0x10), timeout=1.0)
    assert not is_init_accept(reply)


@pytest.mark.parametrize("exchange", [0, 33, 38, 200])
def test_unknown_exchange_type_is_dropped(healthy: HostileLab, exchange: int) -> None:
    peer = healthy.peer()
    data = init_bytes(peer)
    assert peer.silent(patched(data, 18, exchange))


def test_ike_auth_for_unknown_spi_is_dropped_or_rate_limited(healthy: HostileLab) -> None:
    """RFC 7296 2.21.4: a message for an unknown SPI MAY be answered with INVALID_IKE_SPI
    (rate-limited, unprotected) or dropped; 100 of them get at most a few answers."""
    peer = healthy.peer()
    answers: list[bytes] = []
    for _ in range(100):
        msg = Message(ExchangeType.IKE_AUTH, os.urandom(8), os.urandom(8), 1, True, False,
                      [], None)
        peer.send(encode(msg) + os.urandom(64))
    while (raw := peer.recv(0.5)) is not None:
        answers.append(raw)
    assert len(answers) <= 10, f"{len(answers)} answers to 100 unknown-SPI requests"


def test_informational_for_unknown_spi_is_dropped(healthy: HostileLab) -> None:
    peer = healthy.peer()
    msg = Message(ExchangeType.INFORMATIONAL, os.urandom(8), os.urandom(8), 0, True, False,
                  [], None)
    reply = peer.ask(encode(msg), timeout=1.0)
    assert reply is None or NT.INVALID_IKE_SPI in reply.notify_types()


def test_ike_auth_with_zero_responder_spi_is_dropped(healthy: HostileLab) -> None:
    peer = healthy.peer()
    msg = Message(ExchangeType.IKE_AUTH, os.urandom(8), bytes(8), 1, True, False, [], None)
    assert peer.silent(encode(msg))


def test_ike_sa_init_response_sent_to_the_responder_is_dropped(healthy: HostileLab) -> None:
    """A response nobody asked for (R set, I clear, both SPIs): never answered."""
    peer = healthy.peer()
    _, request = peer.init_request()
    request.spi_r, request.is_response, request.is_initiator = os.urandom(8), True, False
    assert peer.silent(encode(request))


def test_random_garbage_datagrams_are_dropped(healthy: HostileLab) -> None:
    """200 random datagrams: none answered, except that one whose version octet says a
    major version above 2 may get INVALID_MAJOR_VERSION (RFC 7296 2.5)."""
    peer = healthy.peer()
    rng = random.Random(7296)
    higher = 0
    for _ in range(200):
        data = rng.randbytes(rng.randrange(0, 1500))
        higher += len(data) >= 28 and data[VERSION_AT] >> 4 > 2
        peer.send(data)
    answers = []
    while (raw := peer.recv(0.5)) is not None:  # the exchange type is the request's (1.5)
        header = parse_header(raw)
        assert header.is_response and header.major == 2, header
        answers.append(pull_chain(raw, 28, len(raw), header.next_payload)[0])
    assert len(answers) <= higher
    assert all(p == [NotifyPayload(NT.INVALID_MAJOR_VERSION, 0, b"", p[0].data)]
               for p in answers), answers


def test_garbage_on_the_nat_port_without_marker_is_dropped(healthy: HostileLab) -> None:
    """Port 4500: a datagram without the non-ESP marker is ESP (not ours), one octet
    0xff a NAT keepalive; neither is answered."""
    peer = healthy.peer()
    for data in (b"\xff", b"\x00\x00\x00\x01" + os.urandom(60), os.urandom(3)):
        peer.send(data, port=4500)
    assert peer.recv(0.5) is None
