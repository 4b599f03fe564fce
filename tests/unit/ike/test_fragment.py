"""RFC 7383 fragmentation: split, shuffle, reassemble; duplicates; totals; limits."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import replace

import pytest

from tests.support.ike_messages import CIPHERS, SPI_I, SPI_R, auth_request, gcm
from xfrmctl.ike.constants import ExchangeType, NotifyType, PayloadType
from xfrmctl.ike.errors import IntegrityError, LocalError, ProtocolError
from xfrmctl.ike.fragment import Reassembler, encode_fragments, fragment_capacity
from xfrmctl.ike.message import Message, decode, encode, parse_header
from xfrmctl.ike.payloads import CertPayload, IdiPayload, NotifyPayload, Payload, VendorPayload
from xfrmctl.ike.sk import SkCipher

IDS = ["gcm", "cbc"]


def big_auth(mid: int = 1) -> Message:
    m = auth_request()
    m.message_id = mid
    assert m.protected is not None
    m.protected.insert(1, CertPayload(4, bytes(range(256)) * 12))  # a 3 KiB certificate
    return m


def _decode_all(datagrams: list[bytes], cipher: SkCipher) -> list[Message]:
    return [decode(d, cipher) for d in datagrams]


@pytest.mark.parametrize("make_cipher", CIPHERS, ids=IDS)
@pytest.mark.parametrize("max_size", [576, 1280, 1500])
def test_split_shuffle_reassemble(make_cipher: Callable[[], SkCipher], max_size: int) -> None:
    cipher = make_cipher()
    original = big_auth()
    datagrams = encode_fragments(original, cipher, max_size)
    assert len(datagrams) > 1
    assert all(len(d) <= max_size for d in datagrams)
    assert all(parse_header(d).next_payload == PayloadType.SKF for d in datagrams)
    fragments = _decode_all(datagrams, cipher)
    totals = {m.fragment.total for m in fragments if m.fragment}
    assert totals == {len(datagrams)}
    numbers = [m.fragment.number for m in fragments if m.fragment]
    assert numbers == list(range(1, len(datagrams) + 1))
    # First fragment names the first inner payload, the others carry 0.
    next_types = [m.fragment.next_payload for m in fragments if m.fragment]
    assert next_types == [PayloadType.IDI] + [0] * (len(datagrams) - 1)
    random.Random(max_size).shuffle(fragments)
    reassembler = Reassembler()
    results = [reassembler.add(m) for m in fragments]
    assert results[:-1] == [None] * (len(results) - 1)
    assert results[-1] == original
    assert reassembler.pending_message_id is None


def test_fragments_fill_max_size() -> None:
    cipher = gcm()
    datagrams = encode_fragments(big_auth(), cipher, 1000)
    assert [len(d) for d in datagrams[:-1]] == [1000] * (len(datagrams) - 1)
    assert fragment_capacity(cipher, 1000) == 1000 - 28 - 8 - 8 - 16 - 1


def test_small_message_gives_one_fragment() -> None:
    cipher = gcm()
    m = Message(ExchangeType.INFORMATIONAL, SPI_I, SPI_R, 3, True, False, [], [])
    [datagram] = encode_fragments(m, cipher, 1280)
    decoded = decode(datagram, cipher)
    assert decoded.fragment is not None and decoded.fragment.total == 1
    assert Reassembler().add(decoded) == m


def test_duplicates_are_ignored() -> None:
    cipher = gcm()
    fragments = _decode_all(encode_fragments(big_auth(), cipher, 576), cipher)
    r = Reassembler()
    assert r.add(fragments[0]) is None
    assert r.add(fragments[0]) is None
    for m in fragments[1:-1]:
        assert r.add(m) is None
        assert r.add(m) is None
    assert r.add(fragments[-1]) == big_auth()


def test_larger_total_restarts_smaller_total_is_dropped() -> None:
    cipher = gcm()
    coarse = _decode_all(encode_fragments(big_auth(), cipher, 1500), cipher)
    fine = _decode_all(encode_fragments(big_auth(), cipher, 576), cipher)
    assert len(fine) > len(coarse)
    r = Reassembler()
    assert r.add(coarse[0]) is None
    for m in fine[:-1]:  # the sender re-fragmented smaller: start anew
        assert r.add(m) is None
    assert r.add(coarse[1]) is None  # stale, smaller total: dropped
    assert r.add(fine[-1]) == big_auth()


def test_new_message_id_replaces_pending() -> None:
    cipher = gcm()
    first = _decode_all(encode_fragments(big_auth(1), cipher, 576), cipher)
    second = _decode_all(encode_fragments(big_auth(2), cipher, 576), cipher)
    r = Reassembler()
    r.add(first[0])
    assert r.pending_message_id == 1
    results = [r.add(m) for m in second]
    assert results[-1] == big_auth(2)
    assert r.add(first[1]) is None


def test_unfragmented_message_passes_through() -> None:
    cipher = gcm()
    m = decode(encode(auth_request(), cipher), cipher)
    assert Reassembler().add(m) is m


def test_limits() -> None:
    cipher = gcm()
    fragments = _decode_all(encode_fragments(big_auth(), cipher, 576), cipher)
    with pytest.raises(ProtocolError, match="limit"):
        Reassembler(max_fragments=len(fragments) - 1).add(fragments[0])
    r = Reassembler(max_bytes=1500)
    with pytest.raises(ProtocolError, match="octets"):
        for m in fragments:
            r.add(m)
    assert r.pending_message_id is None


def test_reassembled_message_is_checked_against_rules() -> None:
    cipher = gcm()
    m = Message(ExchangeType.INFORMATIONAL, SPI_I, SPI_R, 4, True, False, [],
                [IdiPayload(2, b"x" * 900)])  # fmt: skip
    fragments = _decode_all(encode_fragments(m, cipher, 576), cipher)
    r = Reassembler()
    with pytest.raises(ProtocolError, match="IDI not allowed"):
        for f in fragments:
            r.add(f)


def test_tampered_fragment_fails_integrity() -> None:
    cipher = gcm()
    datagrams = encode_fragments(big_auth(), cipher, 576)
    tampered = bytearray(datagrams[1])
    tampered[33] ^= 0x01  # Total Fragments low octet: part of the associated data
    with pytest.raises(IntegrityError):
        decode(bytes(tampered), cipher)


@pytest.mark.parametrize(("number", "total"), [(0, 3), (4, 3), (1, 0)])
def test_bad_fragment_numbers(number: int, total: int) -> None:
    cipher = gcm()
    datagram = bytearray(encode_fragments(big_auth(), cipher, 576)[0])
    datagram[32:36] = number.to_bytes(2, "big") + total.to_bytes(2, "big")
    with pytest.raises(ProtocolError) as err:
        decode(bytes(datagram), cipher)
    assert not isinstance(err.value, IntegrityError)  # rejected before the cipher


def test_skf_not_allowed_in_ike_sa_init() -> None:
    cipher = gcm()
    m = Message(ExchangeType.IKE_SA_INIT, SPI_I, SPI_R, 0, True, False, [],
                [VendorPayload(b"v")])  # fmt: skip
    [datagram] = encode_fragments(m, cipher, 1280)
    with pytest.raises(ProtocolError, match="fragment in IKE_SA_INIT"):
        decode(datagram, cipher)


def test_encode_fragments_misuse() -> None:
    cipher = gcm()
    with pytest.raises(LocalError):
        encode_fragments(big_auth(), cipher, 60)
    plain = Message(ExchangeType.IKE_SA_INIT, SPI_I, SPI_R, 0, True, False,
                    [NotifyPayload(NotifyType.COOKIE)])  # fmt: skip
    with pytest.raises(LocalError):
        encode_fragments(plain, cipher, 1280)


def test_malformed_reassembled_chain() -> None:
    cipher = gcm()
    inner: list[Payload] = [VendorPayload(b"v" * 1000)]
    m = Message(ExchangeType.INFORMATIONAL, SPI_I, SPI_R, 6, True, False, [], inner)
    fragments = _decode_all(encode_fragments(m, cipher, 576), cipher)
    r = Reassembler()
    with pytest.raises(ProtocolError, match="reassembled"):
        for f in fragments[:-1]:
            r.add(f)
        # Swap the last fragment's plaintext for a truncated one: the chain then lies.
        last = fragments[-1]
        assert last.fragment is not None
        last.fragment = replace(last.fragment, plaintext=last.fragment.plaintext[:-1])
        r.add(last)
