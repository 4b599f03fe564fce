"""Property tests: generated payloads and messages round-trip; garbage raises ProtocolError."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.ike_messages import CIPHERS, ManualCipher
from xfrmctl.ike import rules
from xfrmctl.ike.constants import PayloadType, ProtocolId, TransformType, TsType
from xfrmctl.ike.errors import ProtocolError
from xfrmctl.ike.fragment import Reassembler, encode_fragments
from xfrmctl.ike.message import Message, decode, encode
from xfrmctl.ike.payloads import (
    AuthPayload,
    CertPayload,
    CertReqPayload,
    CfgAttribute,
    CpPayload,
    DeletePayload,
    EapPayload,
    IdiPayload,
    IdrPayload,
    KePayload,
    NoncePayload,
    NotifyPayload,
    Payload,
    Proposal,
    SaPayload,
    TrafficSelector,
    Transform,
    TsiPayload,
    TsrPayload,
    UnknownPayload,
    VendorPayload,
    pull_chain,
    push_chain,
)
from xfrmctl.ike.sk import SkCipher

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
blob = st.binary(max_size=40)


def _tv_or_tlv(attr_type: int, value: bytes, tv: bool) -> bytes:
    if tv:
        return (0x8000 | attr_type).to_bytes(2, "big") + value[:2].ljust(2, b"\0")
    return attr_type.to_bytes(2, "big") + len(value).to_bytes(2, "big") + value


unknown_attribute = st.builds(
    _tv_or_tlv, st.integers(0, 0x7FFF).filter(lambda t: t != 14), st.binary(max_size=6),
    st.booleans(),
)  # fmt: skip
transforms = st.builds(
    Transform,
    st.sampled_from(TransformType) | st.integers(6, 255),
    u16,
    st.none() | u16,
    st.lists(unknown_attribute, max_size=2).map(b"".join),
)
proposals = st.builds(
    Proposal, u8, st.sampled_from(ProtocolId), st.binary(max_size=8),
    st.lists(transforms, max_size=5).map(tuple),
)  # fmt: skip
v4 = st.builds(IPv4Address, st.integers(0, 2**32 - 1))
v6 = st.builds(IPv6Address, st.integers(0, 2**128 - 1))
selectors = st.builds(TrafficSelector, st.just(TsType.IPV4_ADDR_RANGE), u8, u16, u16, v4, v4) | (
    st.builds(TrafficSelector, st.just(TsType.IPV6_ADDR_RANGE), u8, u16, u16, v6, v6)
)
selector_tuples = st.lists(selectors, max_size=4).map(tuple)
spi4 = st.binary(min_size=4, max_size=4)
deletes = st.builds(DeletePayload, st.just(ProtocolId.IKE)) | st.builds(
    DeletePayload, st.sampled_from([ProtocolId.AH, ProtocolId.ESP]),
    st.lists(spi4, max_size=4).map(tuple),
)  # fmt: skip
eap_bodies = st.builds(
    lambda head, data: head + (4 + len(data)).to_bytes(2, "big") + data,
    st.binary(min_size=2, max_size=2), blob,
)  # fmt: skip
# an address identity is exactly the address (RFC 7296 3.5): anything else is malformed
identities = st.one_of(
    st.tuples(u8.filter(lambda t: t not in (1, 5)), blob),
    st.tuples(st.just(1), st.binary(min_size=4, max_size=4)),
    st.tuples(st.just(5), st.binary(min_size=16, max_size=16)),
)
unknown_types = st.integers(1, 255).filter(lambda t: t not in {*PayloadType} - {PayloadType.NONE})

BY_TYPE: dict[int, st.SearchStrategy[Payload]] = {
    PayloadType.SA: st.builds(SaPayload, st.lists(proposals, min_size=1, max_size=3).map(tuple)),
    PayloadType.KE: st.builds(KePayload, u16, blob),
    PayloadType.IDI: identities.map(lambda t: IdiPayload(*t)),
    PayloadType.IDR: identities.map(lambda t: IdrPayload(*t)),
    PayloadType.CERT: st.builds(CertPayload, u8, blob),
    PayloadType.CERTREQ: st.builds(CertReqPayload, u8, blob),
    PayloadType.AUTH: st.builds(AuthPayload, u8, blob),
    PayloadType.NONCE: st.builds(NoncePayload, st.binary(min_size=16, max_size=256)),
    PayloadType.NOTIFY: st.builds(NotifyPayload, u16, u8, st.binary(max_size=8), blob),
    PayloadType.DELETE: deletes,
    PayloadType.VENDOR: st.builds(VendorPayload, blob),
    PayloadType.TSI: st.builds(TsiPayload, selector_tuples),
    PayloadType.TSR: st.builds(TsrPayload, selector_tuples),
    PayloadType.CP: st.builds(
        CpPayload, u8, st.lists(st.builds(CfgAttribute, st.integers(0, 0x7FFF), blob),
                                max_size=4).map(tuple),
    ),
    PayloadType.EAP: st.builds(EapPayload, eap_bodies),
}  # fmt: skip
any_payload = st.one_of(
    *BY_TYPE.values(), st.builds(UnknownPayload, unknown_types, st.just(False), blob)
)


@given(st.lists(any_payload, max_size=8))
def test_payload_chains_round_trip(payloads: list[Payload]) -> None:
    data = push_chain(payloads)
    first = payloads[0].payload_type if payloads else PayloadType.NONE
    parsed = pull_chain(data, 0, len(data), first)[0]
    assert parsed == payloads
    assert push_chain(parsed) == data


@st.composite
def valid_messages(draw: st.DrawFn) -> Message:
    """A message that satisfies the rule table for its exchange and role."""
    exchange, response = draw(st.sampled_from(sorted(rules.RULES)))
    rule = rules.RULES[(exchange, response)]
    payloads: list[Payload] = []
    for ptype, (least, most) in rule.counts.items():
        count = draw(st.integers(least, min(most, 2)))
        payloads += draw(st.lists(BY_TYPE[ptype], min_size=count, max_size=count))
    ordered = draw(st.permutations(payloads))
    spis = st.binary(min_size=8, max_size=8)
    header = (draw(spis), draw(spis), draw(st.integers(0, 2**32 - 1)), draw(st.booleans()))
    if rule.encrypted:
        return Message(exchange, *header, response, [], list(ordered))
    return Message(exchange, *header, response, list(ordered))


def _passes_rules(m: Message) -> bool:
    try:
        rules.check(m)
    except ProtocolError:
        return False
    return True


cipher_makers = st.sampled_from([*CIPHERS, ManualCipher])


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(valid_messages(), cipher_makers)
def test_messages_round_trip(m: Message, make_cipher: Callable[[], SkCipher]) -> None:
    cipher = make_cipher()
    data = encode(m, cipher)
    assert decode(data, cipher) == m
    if m.protected is None:
        assert encode(decode(data)) == data


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(valid_messages(), cipher_makers, st.integers(200, 1500), st.randoms())
def test_fragments_reassemble_in_any_order(
    m: Message, make_cipher: Callable[[], SkCipher], max_size: int, rnd: random.Random
) -> None:
    if m.protected is None:
        return
    cipher = make_cipher()
    fragments = [decode(d, cipher) for d in encode_fragments(m, cipher, max_size)]
    rnd.shuffle(fragments)
    r = Reassembler(max_fragments=1000)
    results = [r.add(f) for f in fragments]
    assert results[-1] == m
    assert all(x is None for x in results[:-1])


@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_protocol_error(data: bytes) -> None:
    for cipher in (None, ManualCipher()):
        with contextlib.suppress(ProtocolError):
            decode(data, cipher)


@given(st.binary(max_size=120), st.sampled_from([33, 34, 41, 42, 44, 46, 47, 48, 53]))
def test_arbitrary_bytes_behind_valid_header_raise_only_protocol_error(
    body: bytes, first: int
) -> None:
    header = bytes(8) + b"\x01" * 8 + bytes([first, 0x20, 37, 0x08, 0, 0, 0, 1])
    data = header + (28 + len(body)).to_bytes(4, "big") + body
    with contextlib.suppress(ProtocolError):
        decode(data, ManualCipher())


def _mutate(data: bytes, ops: list[tuple[int, int, int]]) -> bytes:
    buf = bytearray(data)
    for kind, position, value in ops:
        at = position % (len(buf) + 1)
        if kind == 0 and at < len(buf):
            buf[at] ^= 1 << (value % 8)  # flip one bit
        elif kind == 1:
            del buf[at:]  # truncate
        elif kind == 2:
            buf[at:at] = bytes([value])  # insert
        elif at < len(buf):
            buf[at] = value  # overwrite
    return bytes(buf)


mutations = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 4000), u8), min_size=1,
                     max_size=4)  # fmt: skip


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(valid_messages(), mutations, st.booleans())
def test_mutated_messages_raise_only_protocol_error(
    m: Message, ops: list[tuple[int, int, int]], fix_length: bool
) -> None:
    # The null cipher lets mutations inside SK reach the payload parsers.
    cipher = ManualCipher()
    data = _mutate(encode(m, cipher), ops)
    if fix_length and len(data) >= 28:
        data = data[:24] + len(data).to_bytes(4, "big") + data[28:]
    with contextlib.suppress(ProtocolError):
        decode(data, cipher)


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(valid_messages(), mutations)
def test_mutated_fragments_raise_only_protocol_error(
    m: Message, ops: list[tuple[int, int, int]]
) -> None:
    if m.protected is None:
        return
    cipher = ManualCipher()
    r = Reassembler()
    for datagram in encode_fragments(m, cipher, 300):
        with contextlib.suppress(ProtocolError):
            r.add(decode(_mutate(datagram, ops), cipher))


def test_generated_messages_obey_rules() -> None:
    @given(valid_messages())
    def check(m: Message) -> None:
        assert _passes_rules(m)

    check()
