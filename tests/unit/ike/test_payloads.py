"""Payload codecs: hand-built RFC 7296 section 3 byte strings, round trips, malformations."""

from ipaddress import IPv6Address

import pytest

from tests.support.ike_messages import KNOWN, SA, SA_BODY, H
from xfrmctl.ike.constants import (
    NotifyType,
    PayloadType,
    ProtocolId,
    TsType,
)
from xfrmctl.ike.errors import LocalError, ProtocolError
from xfrmctl.ike.payloads import (
    CfgAttribute,
    CpPayload,
    DeletePayload,
    EapPayload,
    IdiPayload,
    IdrPayload,
    KePayload,
    NoncePayload,
    Payload,
    SaPayload,
    TrafficSelector,
    TsiPayload,
    UnknownPayload,
    VendorPayload,
    id_body,
    payload_type_of,
    pull_chain,
    pull_payload,
    push_chain,
    push_payload,
)


@pytest.mark.parametrize(("payload", "body"), KNOWN, ids=lambda x: type(x).__name__)
def test_known_bodies(payload: Payload, body: bytes) -> None:
    assert push_payload(payload) == body
    parsed = pull_payload(payload_type_of(payload), False, body, 0, len(body))
    assert parsed == payload
    assert push_payload(parsed) == body


@pytest.mark.parametrize(("payload", "body"), KNOWN, ids=lambda x: type(x).__name__)
def test_bodies_parse_at_an_offset(payload: Payload, body: bytes) -> None:
    buffer = b"\xee" * 7 + body + b"\xee" * 5
    parsed = pull_payload(payload_type_of(payload), False, buffer, 7, 7 + len(body))
    assert parsed == payload


def test_chain_round_trip_with_generic_headers() -> None:
    payloads = [p for p, _ in KNOWN]
    data = push_chain(payloads)
    parsed, end_type, end = pull_chain(data, 0, len(data), payloads[0].payload_type)
    assert parsed == payloads
    assert (end_type, end) == (PayloadType.NONE, len(data))
    # First generic header: next = KE, not critical, length = 4 + SA body.
    assert data[:4] == bytes([PayloadType.KE, 0]) + (4 + len(SA_BODY)).to_bytes(2, "big")


def test_payload_types() -> None:
    assert [payload_type_of(p) for p, _ in KNOWN[:4]] == [33, 34, 35, 36]
    assert payload_type_of(UnknownPayload(99, True, b"")) == 99


def test_id_body_is_rest_of_id_payload() -> None:
    assert id_body(IdiPayload(2, b"a.example")) == H("02000000") + b"a.example"
    assert id_body(IdrPayload(1, H("c0000201"))) == H("01000000c0000201")


def test_reserved_fields_are_ignored_on_receipt() -> None:
    body = H("02ffffff") + b"host"  # ID with reserved octets set
    assert pull_payload(PayloadType.IDI, False, body, 0, len(body)) == IdiPayload(2, b"host")
    sa = bytearray(SA_BODY)
    sa[1] = 0x77  # proposal reserved
    sa[13] = 0x55  # transform reserved
    assert pull_payload(PayloadType.SA, False, bytes(sa), 0, len(sa)) == SA
    cp = H("01abcdef80010000")  # CP reserved octets and the R bit of an attribute
    assert pull_payload(PayloadType.CP, False, cp, 0, len(cp)) == CpPayload(
        1, (CfgAttribute(1, b""),)
    )


def test_known_payload_with_critical_bit_parses() -> None:
    data = bytes([0, 0x80, 0, 8]) + b"vend"
    assert pull_chain(data, 0, 8, PayloadType.VENDOR)[0] == [VendorPayload(b"vend")]


def test_unknown_critical_payload_is_rejected_with_notify() -> None:
    data = bytes([0, 0x80, 0, 6]) + b"zz"
    with pytest.raises(ProtocolError) as err:
        pull_chain(data, 0, len(data), 222)
    assert err.value.notify == NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD
    assert err.value.notify_data == bytes([222])
    assert err.value.offset == 0


def test_unknown_noncritical_payload_is_kept() -> None:
    data = bytes([PayloadType.NONCE, 0x00, 0, 6]) + b"zz" + bytes([0, 0, 0, 20]) + b"n" * 16
    parsed, _, _ = pull_chain(data, 0, len(data), 222)
    assert parsed == [UnknownPayload(222, False, b"zz"), NoncePayload(b"n" * 16)]
    assert push_chain(parsed) == data


def test_unknown_transform_attribute_makes_transform_unusable() -> None:
    body = bytearray(SA_BODY)
    # Turn the key length attribute (type 14) into an unknown TV attribute type 99.
    body[16:18] = (0x8000 | 99).to_bytes(2, "big")
    sa = pull_payload(PayloadType.SA, False, bytes(body), 0, len(body))
    assert isinstance(sa, SaPayload)
    encr = sa.proposals[0].transforms[0]
    assert encr.key_length is None
    assert encr.unknown_attributes == H("80630080")
    assert not encr.usable
    assert sa.proposals[0].transforms[1].usable
    assert push_payload(sa) == bytes(body)


def test_tlv_transform_attribute_and_unknown_transform_type() -> None:
    transform = H("0000000e0700000900100002abcd")  # type 7, TLV attr 16 len 2
    proposal = H("0000001a01030401") + H("c0ffee00") + transform
    sa = pull_payload(PayloadType.SA, False, proposal, 0, len(proposal))
    assert isinstance(sa, SaPayload)
    t = sa.proposals[0].transforms[0]
    assert (t.type, t.id, t.key_length, t.unknown_attributes) == (7, 9, None, H("00100002abcd"))
    assert not t.usable
    assert sa.proposals[0].spi == H("c0ffee00")
    assert push_payload(sa) == proposal


def _pull(ptype: int, body: bytes) -> Payload:
    return pull_payload(ptype, False, body, 0, len(body))


MALFORMED: list[tuple[str, int, bytes]] = [
    ("proposal length too long", PayloadType.SA, SA_BODY[:2] + H("0031") + SA_BODY[4:]),
    ("proposal length too short", PayloadType.SA, SA_BODY[:2] + H("0007") + SA_BODY[4:]),
    ("transform count too high", PayloadType.SA, SA_BODY[:7] + H("05") + SA_BODY[8:]),
    ("transform count too low", PayloadType.SA, SA_BODY[:7] + H("03") + SA_BODY[8:]),
    ("transform length lies", PayloadType.SA, SA_BODY[:10] + H("0010") + SA_BODY[12:]),
    ("more transforms flagged", PayloadType.SA, SA_BODY[:36] + H("03") + SA_BODY[37:]),
    ("more proposals flagged", PayloadType.SA, H("02") + SA_BODY[1:]),
    ("bad substructure", PayloadType.SA, H("05") + SA_BODY[1:]),
    ("truncated SA", PayloadType.SA, SA_BODY[:-1]),
    ("trailing octets", PayloadType.SA, SA_BODY + H("00")),
    ("empty SA", PayloadType.SA, b""),
    ("attribute truncated", PayloadType.SA,
     H("00000014" "01010001" "0000000c" "01000014" "000e0008")),
    ("KE short", PayloadType.KE, H("001f00")),
    ("ID empty", PayloadType.IDI, H("0200")),
    ("AUTH empty", PayloadType.AUTH, b""),
    ("CERT empty", PayloadType.CERT, b""),
    ("nonce too short", PayloadType.NONCE, b"n" * 15),
    ("nonce too long", PayloadType.NONCE, b"n" * 257),
    ("notify spi truncated", PayloadType.NOTIFY, H("03044009" "0102")),
    ("notify short", PayloadType.NOTIFY, H("0300")),
    ("delete count too high", PayloadType.DELETE, H("0304000301020304")),
    ("delete count too low", PayloadType.DELETE, H("030400000102030405")),
    ("delete IKE with SPIs", PayloadType.DELETE, H("01000001")),
    ("delete ESP spi size 8", PayloadType.DELETE, H("030800010000000000000000")),
    ("delete unknown protocol", PayloadType.DELETE, H("09000000")),
    ("TS count too high", PayloadType.TSI, H("02000000" "07000010" "0000ffff" "c6336400c63364ff")),
    ("TS count too low", PayloadType.TSI, H("00000000" "07000010" "0000ffff" "c6336400c63364ff")),
    ("TS length wrong", PayloadType.TSI, H("01000000" "07000014" "0000ffff" "c6336400c63364ff")),
    ("TS truncated", PayloadType.TSI, H("01000000" "07000010" "0000ffff" "c6336400")),
    ("TS unknown type", PayloadType.TSR, H("01000000" "09000010" "0000ffff" "c6336400c63364ff")),
    ("CP attribute truncated", PayloadType.CP, H("01000000" "00010004" "c000")),
    ("CP short", PayloadType.CP, H("01")),
    ("EAP length lies", PayloadType.EAP, H("0201000601")),
    ("EAP short", PayloadType.EAP, H("0201")),
]  # fmt: skip


@pytest.mark.parametrize(("what", "ptype", "body"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_bodies_raise_protocol_error(what: str, ptype: int, body: bytes) -> None:
    with pytest.raises(ProtocolError) as err:
        _pull(ptype, body)
    assert err.value.notify == NotifyType.INVALID_SYNTAX
    assert err.value.offset is not None, what


CHAIN_MALFORMED: list[tuple[str, int, bytes]] = [
    ("header truncated", PayloadType.VENDOR, H("0000")),
    ("length below 4", PayloadType.VENDOR, H("00000003")),
    ("length past end", PayloadType.VENDOR, H("00000009") + b"abcd"),
    ("next chains past end", PayloadType.VENDOR, H("2b000005") + b"a"),
    ("octets after chain end", PayloadType.VENDOR, H("00000005") + b"ab"),
    ("SK inside chain", PayloadType.SK, H("00000004")),
    ("SKF inside chain", PayloadType.VENDOR, H("35000004")),
]


@pytest.mark.parametrize(
    ("what", "first", "data"), CHAIN_MALFORMED, ids=[m[0] for m in CHAIN_MALFORMED]
)
def test_malformed_chains(what: str, first: int, data: bytes) -> None:
    with pytest.raises(ProtocolError):
        pull_chain(data, 0, len(data), first)


def test_chain_stops_at_encrypted_payload_when_asked() -> None:
    data = H("2e000008") + b"vend" + H("21000004")
    parsed, ptype, at = pull_chain(data, 0, len(data), PayloadType.VENDOR, stop_at_encrypted=True)
    assert (parsed, ptype, at) == ([VendorPayload(b"vend")], PayloadType.SK, 8)


def test_push_rejects_what_the_wire_cannot_carry() -> None:
    with pytest.raises(LocalError):
        push_payload(DeletePayload(ProtocolId.ESP, (b"\x01\x02",)))
    with pytest.raises(LocalError):
        push_payload(DeletePayload(ProtocolId.IKE, (b"\x01\x02\x03\x04",)))
    with pytest.raises(LocalError):
        push_payload(KePayload(70000, b""))
    mixed = TrafficSelector(
        TsType.IPV4_ADDR_RANGE, 0, 0, 65535, IPv6Address("2001:db8::"), IPv6Address("2001:db8::1")
    )
    with pytest.raises(LocalError):
        push_payload(TsiPayload((mixed,)))
    with pytest.raises(LocalError):
        push_chain([VendorPayload(b"v" * 65532)])


def test_eap_data_not_in_repr() -> None:
    assert "secret" not in repr(EapPayload(b"\x02\x01\x00\x0asecret"))
