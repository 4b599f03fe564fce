"""Message codec: header, chain, SK protection with AEAD and CBC+HMAC ciphers, rules."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.support.ike_messages import (
    CIPHERS,
    SA,
    SPI_I,
    SPI_R,
    GcmTestCipher,
    ManualCipher,
    auth_request,
    gcm,
    nonce,
    sa_init_request,
)
from xfrmctl.ike import message as message_module
from xfrmctl.ike.constants import (
    DhId,
    EncrId,
    ExchangeType,
    HeaderFlag,
    NotifyType,
    PayloadType,
    PrfId,
    ProtocolId,
    TransformType,
)
from xfrmctl.ike.errors import IntegrityError, LocalError, ProtocolError
from xfrmctl.ike.message import Message, decode, encode, parse_header
from xfrmctl.ike.payloads import (
    AuthPayload,
    CertReqPayload,
    CpPayload,
    DeletePayload,
    EapPayload,
    IdiPayload,
    IdrPayload,
    KePayload,
    NoncePayload,
    NotifyPayload,
    Payload,
    SaPayload,
    TsiPayload,
    TsrPayload,
    UnknownPayload,
    VendorPayload,
    push_chain,
)
from xfrmctl.ike.sk import SkCipher

H = bytes.fromhex


# --- test ciphers (the real ones live in xfrmctl/ike/crypto.py) ---------------------------


# --- messages ------------------------------------------------------------------------------


def test_ike_sa_init_known_bytes() -> None:
    m = Message(
        ExchangeType.IKE_SA_INIT,
        SPI_I,
        bytes(8),
        0,
        True,
        False,
        [SA, nonce()],
    )
    m.payloads.insert(1, KePayload(31, b"\xaa" * 32))
    data = encode(m)
    sa_body = push_chain([SA])[4:]
    expected = (
        SPI_I + bytes(8) + H("21" "20" "22" "08" "00000000")
        + (28 + 4 + len(sa_body) + 40 + 36).to_bytes(4, "big")
        + H("22") + H("00") + (4 + len(sa_body)).to_bytes(2, "big") + sa_body
        + H("2800" "0028" "001f0000") + b"\xaa" * 32
        + H("0000" "0024") + b"N" * 32
    )  # fmt: skip
    assert data == expected
    assert decode(data) == m


def test_header_fields() -> None:
    data = encode(sa_init_request())
    h = parse_header(data)
    assert (h.spi_i, h.spi_r, h.major, h.minor) == (SPI_I, bytes(8), 2, 0)
    assert (h.exchange, h.message_id, h.length) == (ExchangeType.IKE_SA_INIT, 0, len(data))
    assert h.next_payload == PayloadType.SA
    assert h.is_initiator and not h.is_response
    assert h.flags == HeaderFlag.INITIATOR


@pytest.mark.parametrize("make_cipher", CIPHERS, ids=["gcm", "cbc"])
def test_sk_round_trip(make_cipher: Callable[[], SkCipher]) -> None:
    cipher = make_cipher()
    m = auth_request()
    data = encode(m, cipher)
    assert parse_header(data).next_payload == PayloadType.SK
    assert b"left.example" not in data
    decoded = decode(data, cipher)
    assert decoded == m
    assert decoded.find(IdiPayload) == IdiPayload(2, b"left.example")
    assert decoded.notify(NotifyType.INITIAL_CONTACT) is not None
    # SK header: next = IDi, length = rest of datagram; padding fills whole blocks.
    assert data[28] == PayloadType.IDI
    sk_length = int.from_bytes(data[30:32], "big")
    assert 28 + sk_length == len(data)
    ct_size = sk_length - 4 - cipher.iv_size - cipher.icv_size
    assert ct_size % cipher.block_size == 0


@pytest.mark.parametrize("make_cipher", CIPHERS, ids=["gcm", "cbc"])
def test_sk_aad_covers_header_and_ciphertext(make_cipher: Callable[[], SkCipher]) -> None:
    cipher = make_cipher()
    data = encode(auth_request(), cipher)
    for position in (3, 20, 29, 40, len(data) - 20, len(data) - 1):
        tampered = bytearray(data)
        tampered[position] ^= 0x01
        with pytest.raises(IntegrityError):
            decode(bytes(tampered), cipher)


def test_sk_wrong_key_fails_integrity() -> None:
    data = encode(auth_request(), gcm())
    with pytest.raises(IntegrityError):
        decode(data, GcmTestCipher(bytes(20)))


def test_sk_without_cipher_is_protocol_error() -> None:
    data = encode(auth_request(), gcm())
    with pytest.raises(ProtocolError):
        decode(data)
    with pytest.raises(LocalError):
        encode(auth_request())


def _informational(inner_plaintext: bytes, first: int) -> bytes:
    sk_length = 4 + 4 + len(inner_plaintext)
    header = SPI_I + SPI_R + H("2e2025080000000a") + (28 + sk_length).to_bytes(4, "big")
    return header + bytes([first, 0]) + sk_length.to_bytes(2, "big") + b"IVIV" + inner_plaintext


def test_manual_sk_plaintext_parses() -> None:
    inner = push_chain([DeletePayload(ProtocolId.IKE)]) + H("00000003")  # 3 pad + pad length
    m = decode(_informational(inner, PayloadType.DELETE), ManualCipher())
    assert m.protected == [DeletePayload(ProtocolId.IKE)]
    assert (m.exchange, m.message_id, m.is_initiator, m.is_response) == (
        ExchangeType.INFORMATIONAL, 10, True, False,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("what", "plaintext", "first"),
    [
        ("pad length past start", H("000000ff"), PayloadType.DELETE),
        ("inner chain past pad", H("2a0000080100000000000003"), PayloadType.DELETE),
        ("SK inside SK", H("00000000"), PayloadType.SK),
        ("empty plaintext", b"", PayloadType.DELETE),
        ("bad block size", H("0100000000"), PayloadType.DELETE),
    ],
)
def test_malformed_sk_contents(what: str, plaintext: bytes, first: int) -> None:
    with pytest.raises(ProtocolError):
        decode(_informational(plaintext, first), ManualCipher())


def test_sk_must_be_last_payload() -> None:
    data = _informational(H("00000003"), PayloadType.NONE)
    longer = _mutate(data + b"xxxx", 24, (len(data) + 4).to_bytes(4, "big"))
    with pytest.raises(ProtocolError, match="not the rest"):
        decode(longer, ManualCipher())
    assert decode(data, ManualCipher()).protected == []


def test_critical_unknown_inside_sk_keeps_notify() -> None:
    inner = message_module.pad(H("00800008") + b"abcd", 4)
    with pytest.raises(ProtocolError) as err:
        decode(_informational(inner, 201), ManualCipher())
    assert err.value.notify == NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD
    assert err.value.notify_data == bytes([201])


# --- header and chain malformations -------------------------------------------------------


def _valid() -> bytes:
    return encode(sa_init_request())


def _mutate(data: bytes, at: int, value: bytes) -> bytes:
    return data[:at] + value + data[at + len(value) :]


HEADER_CASES: list[tuple[str, Callable[[bytes], bytes]]] = [
    ("empty", lambda d: b""),
    ("short header", lambda d: d[:27]),
    ("length too long", lambda d: _mutate(d, 24, (len(d) + 1).to_bytes(4, "big"))),
    ("length too short", lambda d: _mutate(d, 24, (len(d) - 1).to_bytes(4, "big"))),
    ("truncated datagram", lambda d: d[:-1]),
    ("unknown exchange", lambda d: _mutate(d, 18, b"\x63")),
    ("payload length past end", lambda d: _mutate(d, 30, b"\xff\xff")),
    ("chain past end", lambda d: _mutate(d, d.rindex(b"xfrmctl") - 4, b"\x2b")),
    ("SK not last", lambda d: _mutate(d, d.rindex(b"xfrmctl") - 4, b"\x2e")),
    ("SKF with no header", lambda d: _mutate(d, d.rindex(b"xfrmctl") - 4, b"\x35")),
]


@pytest.mark.parametrize(("what", "mutate"), HEADER_CASES, ids=[c[0] for c in HEADER_CASES])
def test_header_and_chain_malformations(what: str, mutate: Callable[[bytes], bytes]) -> None:
    with pytest.raises(ProtocolError):
        decode(mutate(_valid()), gcm())


def test_major_version_mismatch_answers_invalid_major_version() -> None:
    data = _mutate(_valid(), 17, b"\x30")
    with pytest.raises(ProtocolError) as err:
        decode(data)
    assert err.value.notify == NotifyType.INVALID_MAJOR_VERSION
    assert decode(_mutate(_valid(), 17, b"\x21")) == sa_init_request()  # minor is ignored


def test_reserved_header_flags_are_ignored() -> None:
    data = _mutate(_valid(), 19, bytes([0x08 | 0x01 | 0x40]))
    assert decode(data) == sa_init_request()


def test_encode_rejects_bad_header_values() -> None:
    for spi_i, mid in ((b"short", 0), (SPI_I, -1), (SPI_I, 1 << 32)):
        m = Message(ExchangeType.IKE_SA_INIT, spi_i, bytes(8), mid, True, False, [SA])
        with pytest.raises(LocalError):
            encode(m)


# --- rules ---------------------------------------------------------------------------------


def _sa_init(response: bool, *payloads: Payload) -> bytes:
    m = Message(ExchangeType.IKE_SA_INIT, SPI_I, SPI_R, 0, not response, response, list(payloads))
    return encode(m)


def test_sa_init_request_needs_sa_ke_nonce() -> None:
    with pytest.raises(ProtocolError, match="without KE"):
        decode(_sa_init(False, SA, nonce()))
    with pytest.raises(ProtocolError, match="2 SA"):
        decode(_sa_init(False, SA, SA, KePayload(19, b"k"), nonce()))
    with pytest.raises(ProtocolError, match="without"):  # error notifies don't excuse requests
        decode(_sa_init(False, NotifyPayload(NotifyType.INVALID_SYNTAX)))


@pytest.mark.parametrize(
    "notify",
    [
        NotifyPayload(NotifyType.COOKIE, data=b"c" * 16),
        NotifyPayload(NotifyType.INVALID_KE_PAYLOAD, data=H("001f")),
        NotifyPayload(NotifyType.NO_PROPOSAL_CHOSEN),
    ],
)
def test_sa_init_notify_only_responses_pass(notify: NotifyPayload) -> None:
    assert decode(_sa_init(True, notify)).notifies() == [notify]


def test_sa_init_response_status_notify_alone_fails() -> None:
    with pytest.raises(ProtocolError):
        decode(_sa_init(True, NotifyPayload(NotifyType.NAT_DETECTION_SOURCE_IP, data=b"x" * 20)))


def test_sa_init_response_with_certreq_passes_request_does_not() -> None:
    full = (SA, KePayload(19, b"k"), nonce(), CertReqPayload(4, b"h" * 20))
    assert decode(_sa_init(True, *full)).find(CertReqPayload) is not None
    with pytest.raises(ProtocolError, match="CERTREQ not allowed"):
        decode(_sa_init(False, *full))


def test_sa_init_must_not_be_encrypted() -> None:
    m = sa_init_request()
    m.protected = [VendorPayload(b"v")]
    with pytest.raises(ProtocolError, match="encrypted payload in IKE_SA_INIT"):
        decode(encode(m, gcm()), gcm())


def test_encrypted_exchange_rejects_payloads_outside_sk() -> None:
    m = auth_request()
    m.payloads = [VendorPayload(b"outside")]
    cipher = gcm()
    with pytest.raises(ProtocolError, match="VENDOR outside SK"):
        decode(encode(m, cipher), cipher)
    plain = Message(ExchangeType.INFORMATIONAL, SPI_I, SPI_R, 2, True, False,
                    [NotifyPayload(NotifyType.INVALID_IKE_SPI)])  # fmt: skip
    with pytest.raises(ProtocolError):
        decode(encode(plain))


def _protected(exchange: ExchangeType, response: bool, payloads: list[Payload]) -> Message:
    cipher = gcm()
    m = Message(exchange, SPI_I, SPI_R, 5, False, response, [], payloads)
    return decode(encode(m, cipher), cipher)


# What real peers (strongSwan) send: all of these must pass.
ACCEPTED: list[tuple[str, ExchangeType, bool, list[Payload]]] = [
    ("auth error only", ExchangeType.IKE_AUTH, True,
     [NotifyPayload(NotifyType.AUTHENTICATION_FAILED)]),
    ("auth EAP round", ExchangeType.IKE_AUTH, False, [EapPayload(H("0201000501"))]),
    ("auth with CP", ExchangeType.IKE_AUTH, False,
     [IdiPayload(2, b"x"), AuthPayload(2, b"a"), CpPayload(1, ())]),
    ("informational empty (DPD)", ExchangeType.INFORMATIONAL, False, []),
    ("informational CP", ExchangeType.INFORMATIONAL, True, [CpPayload(2, ())]),
    ("informational deletes", ExchangeType.INFORMATIONAL, False,
     [DeletePayload(ProtocolId.ESP, (b"\x01\x02\x03\x04",)), DeletePayload(ProtocolId.IKE)]),
    ("vendor in child", ExchangeType.CREATE_CHILD_SA, False,
     [SA, nonce(), VendorPayload(b"v")]),
    ("child error only", ExchangeType.CREATE_CHILD_SA, True,
     [NotifyPayload(NotifyType.NO_PROPOSAL_CHOSEN)]),
    ("child rekey IKE", ExchangeType.CREATE_CHILD_SA, True, [SA, nonce(), KePayload(31, b"k")]),
    ("unknown payload anywhere", ExchangeType.INFORMATIONAL, False,
     [UnknownPayload(200, False, b"?")]),
]  # fmt: skip

REJECTED: list[tuple[str, ExchangeType, bool, list[Payload]]] = [
    ("two IDi", ExchangeType.IKE_AUTH, False, [IdiPayload(2, b"x"), IdiPayload(2, b"y")]),
    ("IDi in response", ExchangeType.IKE_AUTH, True, [IdiPayload(2, b"x")]),
    ("KE in informational", ExchangeType.INFORMATIONAL, False, [KePayload(31, b"k")]),
    ("child without nonce", ExchangeType.CREATE_CHILD_SA, False, [SA]),
    ("child request error only", ExchangeType.CREATE_CHILD_SA, False,
     [NotifyPayload(NotifyType.NO_PROPOSAL_CHOSEN)]),
    ("TS in informational", ExchangeType.INFORMATIONAL, True, [TsiPayload(())]),
    ("two TSr", ExchangeType.CREATE_CHILD_SA, False, [SA, nonce(), TsrPayload(()), TsrPayload(())]),
    ("too many notifies", ExchangeType.INFORMATIONAL, False,
     [NotifyPayload(NotifyType.INITIAL_CONTACT)] * 33),
]  # fmt: skip


@pytest.mark.parametrize(("what", "exchange", "response", "payloads"), ACCEPTED,
                         ids=[c[0] for c in ACCEPTED])  # fmt: skip
def test_rules_accept(
    what: str, exchange: ExchangeType, response: bool, payloads: list[Payload]
) -> None:
    assert _protected(exchange, response, payloads).protected == payloads


@pytest.mark.parametrize(("what", "exchange", "response", "payloads"), REJECTED,
                         ids=[c[0] for c in REJECTED])  # fmt: skip
def test_rules_reject(
    what: str, exchange: ExchangeType, response: bool, payloads: list[Payload]
) -> None:
    with pytest.raises(ProtocolError):
        _protected(exchange, response, payloads)


def test_find_helpers_search_protected_first() -> None:
    m = Message(ExchangeType.IKE_AUTH, SPI_I, SPI_R, 1, True, False,
                [VendorPayload(b"outer")], [VendorPayload(b"inner"), nonce()])  # fmt: skip
    assert m.find(VendorPayload) == VendorPayload(b"inner")
    assert m.find_all(VendorPayload) == [VendorPayload(b"inner"), VendorPayload(b"outer")]
    assert m.find(SaPayload) is None
    assert m.notify(NotifyType.COOKIE) is None


def test_decode_accepts_memoryview_and_bytearray() -> None:
    data = _valid()
    assert decode(bytearray(data)) == decode(memoryview(data)) == sa_init_request()


def test_module_exposes_header_size() -> None:
    assert message_module.HEADER.size == 28


# --- golden datagrams from strongSwan 5.9.8 (two charons in netns, test PSK) ---------------
# proposals = aes128gcm16-prfsha256-x25519; captured with tcpdump, non-ESP marker removed.
# The SK keys below come from charon's ike=4 log of that throw-away IKE SA.

STRONGSWAN_SK_EI = H("15c42d0de7554956746ed1b2ec41201ea4a82892")
STRONGSWAN_SK_ER = H("9a8623a9633463080d04d1dab0cf6eb778b32caa")
STRONGSWAN_SA_INIT_REQUEST = H(
    "b7fb31f651ed997800000000000000002120220800000000000000e82200002800000024010100030300000c"
    "01000014800e00800300000802000005000000080400001f28000028001f000094aa38e482753423bc0033a0"
    "53bf60aabc75cc0e3eda718d04b0e0d18e4f082a290000249dbb149e5bf7df446bd3281b0917bfaa2da6cb53"
    "b9fece9d18e0904e185736542900001c0000400437c0cc497792d1c73893773a5face6f43ebaaf3b2900001c"
    "0000400556095eaf336e77460e13f70e453d1f36e2849d8d290000080000402e290000100000402f00020003"
    "000400050000000800004016"
)
STRONGSWAN_SA_INIT_RESPONSE = H(
    "b7fb31f651ed99789ff5fea2182878502120222000000000000000f02200002800000024010100030300000c"
    "01000014800e00800300000802000005000000080400001f28000028001f00004601300452e8385e26f6787d"
    "d83f624d91aad0895cbdd1c837af7488e7bee1352900002450a239dd58e115a013b7946835f66c111420e298"
    "8caf755e42e433c814289e0a2900001c00004004295fc3ce83213737b32ee83425131a693de39c322900001c"
    "00004005f9c8cbe9cefc5e26739c7236b7e9e3ef1c10d245290000080000402e290000100000402f00020003"
    "0004000529000008000040220000000800004014"
)
STRONGSWAN_AUTH_REQUEST = H(
    "b7fb31f651ed99789ff5fea2182878502e2023080000000100000107230000eb89b0fbcc64f7b134b2688552"
    "71dee132ee8c4c52466ffaa203de0b02efd8fec917f91ec78293451fb732e2821045af7fdb01775321208d53"
    "fde09d65ca568ab5ccc0880aef495b2a4902fe366049070ad632dc79a9ac7b5783c99e3a10847784ea2863b1"
    "8a60af6e4cf941743ac084522436fa42737d3acc6c166295d2876fba6e4fa86575c2aca01391314d6f390f8d"
    "baa33049902aa5515e5b677f1dbd517d7c550796e5bc990f43aa2ae8437e88938200ca91d101a9b75e4a7f4a"
    "820b415350fd7c698e2ee5ff2ce43cb55b14c4bc35da314af1ff6b84ea424d94553941fd1be9f4ee4397fe"
)
STRONGSWAN_AUTH_RESPONSE = H(
    "b7fb31f651ed99789ff5fea2182878502e202320000000010000008a2400006eafea4e538604f1dad76bd604"
    "1212ec2e95e80dd792428fb9f2095ba36897cf877d0cd56a4023f3b4ff191ebfb60a756f68256f64c934a2e2"
    "08470865437daa2560300b9838d7caddf901ce960deadbc8cd15431df48d19c1eccbdf9f180c213cecb7be66"
    "ede19b51c779"
)
STRONGSWAN_DELETE_REQUEST = H(
    "b7fb31f651ed99789ff5fea2182878502e20250800000002000000412a00002589b0fbcf64f7b1344b1c0d6d"
    "01993f8377a467ce5dc34c3510fed29650672a7e21"
)
STRONGSWAN_DELETE_RESPONSE = H(
    "b7fb31f651ed99789ff5fea2182878502e20252000000002000000390000001dafea4e508604f1dad6f67ce1"
    "467904a3039593e039011d6b9e"
)


def test_strongswan_ike_sa_init_parses_and_reencodes_identically() -> None:
    request, response = decode(STRONGSWAN_SA_INIT_REQUEST), decode(STRONGSWAN_SA_INIT_RESPONSE)
    assert encode(request) == STRONGSWAN_SA_INIT_REQUEST
    assert encode(response) == STRONGSWAN_SA_INIT_RESPONSE
    assert request.is_initiator and not request.is_response and response.is_response
    sa = request.find(SaPayload)
    assert sa is not None
    [proposal] = sa.proposals
    assert [(t.type, t.id, t.key_length) for t in proposal.transforms] == [
        (TransformType.ENCR, EncrId.AES_GCM_16, 128),
        (TransformType.PRF, PrfId.HMAC_SHA2_256, None),
        (TransformType.DH, DhId.CURVE25519, None),
    ]
    ke = response.find(KePayload)
    assert ke is not None and ke.group == DhId.CURVE25519 and len(ke.data) == 32
    nonce_payload = response.find(NoncePayload)
    assert nonce_payload is not None and len(nonce_payload.data) == 32
    for m in (request, response):
        assert m.notify(NotifyType.NAT_DETECTION_SOURCE_IP) is not None
        assert m.notify(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED) is not None


def test_strongswan_ike_auth_decrypts_with_rfc5282_gcm() -> None:
    cipher_i = GcmTestCipher(STRONGSWAN_SK_EI)
    cipher_r = GcmTestCipher(STRONGSWAN_SK_ER)
    request = decode(STRONGSWAN_AUTH_REQUEST, cipher_i)
    assert request.find(IdiPayload) == IdiPayload(2, b"a.example")
    assert request.find(IdrPayload) == IdrPayload(2, b"b.example")
    auth = request.find(AuthPayload)
    assert auth is not None and auth.method == 2 and len(auth.data) == 32
    tsi, tsr = request.find(TsiPayload), request.find(TsrPayload)
    assert tsi is not None and tsr is not None
    assert str(tsi.selectors[0].start_addr) == "198.51.100.0"
    assert str(tsr.selectors[0].end_addr) == "203.0.113.255"
    response = decode(STRONGSWAN_AUTH_RESPONSE, cipher_r)
    assert response.find(IdrPayload) == IdrPayload(2, b"b.example")
    assert response.notify(NotifyType.NO_PROPOSAL_CHOSEN) is not None  # host has no ESP
    with pytest.raises(IntegrityError):
        decode(STRONGSWAN_AUTH_REQUEST, cipher_r)  # wrong direction's key


def test_strongswan_informational_delete() -> None:
    request = decode(STRONGSWAN_DELETE_REQUEST, GcmTestCipher(STRONGSWAN_SK_EI))
    assert request.protected == [DeletePayload(ProtocolId.IKE)]
    response = decode(STRONGSWAN_DELETE_RESPONSE, GcmTestCipher(STRONGSWAN_SK_ER))
    assert response.protected == [] and response.message_id == 2


def test_reencrypted_strongswan_message_decodes_to_the_same() -> None:
    cipher = GcmTestCipher(STRONGSWAN_SK_EI)
    request = decode(STRONGSWAN_AUTH_REQUEST, cipher)
    again = encode(request, cipher)
    assert len(again) == len(STRONGSWAN_AUTH_REQUEST)
    assert decode(again, cipher) == request
