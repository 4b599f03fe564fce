"""Known IKE payloads and messages, and SK ciphers with test keys, for the wire tests."""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable
from hashlib import sha256
from ipaddress import IPv4Address, IPv6Address

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from xfrmctl.ike.constants import (
    DhId,
    EncrId,
    ExchangeType,
    IntegId,
    NotifyType,
    PrfId,
    ProtocolId,
    TransformType,
    TsType,
)
from xfrmctl.ike.errors import IntegrityError
from xfrmctl.ike.message import Message
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
)
from xfrmctl.ike.sk import SkCipher

H = bytes.fromhex


# RFC 7296 3.3: one IKE proposal, AES-CBC-128 / HMAC-SHA2-256 PRF / SHA2-256-128 / ECP-256.
SA_BODY = H(
    "0000002c"  # last proposal, reserved, length 44
    "01010004"  # proposal 1, IKE, SPI size 0, 4 transforms
    "0300000c"
    "0100000c"
    "800e0080"  # ENCR AES_CBC, key length 128 (TV attribute)
    "03000008"
    "02000005"  # PRF HMAC_SHA2_256
    "03000008"
    "0300000c"  # INTEG HMAC_SHA2_256_128
    "00000008"
    "04000013"  # last transform: DH 19
)


SA = SaPayload((
    Proposal(1, ProtocolId.IKE, b"", (
        Transform(TransformType.ENCR, EncrId.AES_CBC, 128),
        Transform(TransformType.PRF, PrfId.HMAC_SHA2_256),
        Transform(TransformType.INTEG, IntegId.HMAC_SHA2_256_128),
        Transform(TransformType.DH, DhId.ECP_256),
    )),
))  # fmt: skip


# Each case: (payload, its body as RFC 7296 section 3 lays it out).
KNOWN: list[tuple[Payload, bytes]] = [
    (SA, SA_BODY),
    (KePayload(31, b"\xaa" * 32), H("001f0000") + b"\xaa" * 32),
    (IdiPayload(2, b"gw.example"), H("02000000") + b"gw.example"),
    (IdrPayload(1, bytes([192, 0, 2, 1])), H("01000000c0000201")),
    (CertPayload(4, b"DER"), H("04") + b"DER"),
    (CertReqPayload(4, b"\x11" * 20), H("04") + b"\x11" * 20),
    (AuthPayload(2, b"\x22" * 32), H("02000000") + b"\x22" * 32),
    (NoncePayload(b"\x33" * 32), b"\x33" * 32),
    (NotifyPayload(NotifyType.COOKIE, data=b"c" * 8), H("00004006") + b"c" * 8),
    (NotifyPayload(NotifyType.REKEY_SA, 3, H("01020304")), H("0304400901020304")),
    (DeletePayload(ProtocolId.IKE), H("01000000")),
    (DeletePayload(ProtocolId.ESP, (H("01020304"), H("a0b0c0d0"))), H("0304000201020304a0b0c0d0")),
    (VendorPayload(b"strongSwan"), b"strongSwan"),
    (
        TsiPayload((
            TrafficSelector(TsType.IPV4_ADDR_RANGE, 0, 0, 65535,
                            IPv4Address("198.51.100.0"), IPv4Address("198.51.100.255")),
        )),
        H("01000000" "07000010" "0000ffff" "c6336400" "c63364ff"),
    ),
    (
        TsrPayload((
            TrafficSelector(TsType.IPV6_ADDR_RANGE, 17, 500, 500,
                            IPv6Address("2001:db8::"), IPv6Address("2001:db8::ffff")),
            TrafficSelector(TsType.IPV4_ADDR_RANGE, 6, 80, 443,
                            IPv4Address("203.0.113.1"), IPv4Address("203.0.113.1")),
        )),
        H("02000000" "08110028" "01f401f4" "20010db8000000000000000000000000"
          "20010db800000000000000000000ffff" "07060010" "005001bb" "cb007101" "cb007101"),
    ),
    (
        CpPayload(1, (CfgAttribute(1, b""), CfgAttribute(3, bytes([192, 0, 2, 53])))),
        H("01000000" "00010000" "00030004c0000235"),
    ),
    (EapPayload(H("0201000501")), H("0201000501")),
    (UnknownPayload(200, False, b"xyz"), b"xyz"),
]  # fmt: skip


SPI_I, SPI_R = H("0102030405060708"), H("a1a2a3a4a5a6a7a8")


class GcmTestCipher:
    """RFC 5282 AES-GCM with a 16-octet ICV: key || 4-octet salt, 8-octet explicit IV."""

    iv_size, icv_size, block_size = 8, 16, 1

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key[:-4])
        self._salt = key[-4:]

    def seal(self, aad: bytes, plaintext: bytes) -> bytes:
        iv = os.urandom(8)
        return iv + self._aead.encrypt(self._salt + iv, plaintext, aad)

    def open(self, aad: bytes, body: bytes) -> bytes:
        iv = body[:8]
        try:
            return self._aead.decrypt(self._salt + iv, body[8:], aad)
        except InvalidTag:
            raise IntegrityError() from None


class CbcHmacTestCipher:
    """AES-CBC with HMAC-SHA2-256-128 over aad || IV || ciphertext (RFC 7296 3.14)."""

    iv_size, icv_size, block_size = 16, 16, 16

    def __init__(self, enc_key: bytes, integ_key: bytes) -> None:
        self._algorithm = algorithms.AES(enc_key)
        self._integ_key = integ_key

    def _icv(self, data: bytes) -> bytes:
        mac = crypto_hmac.HMAC(self._integ_key, hashes.SHA256())
        mac.update(data)
        return mac.finalize()[:16]

    def seal(self, aad: bytes, plaintext: bytes) -> bytes:
        iv = os.urandom(16)
        encryptor = Cipher(self._algorithm, modes.CBC(iv)).encryptor()
        ct = encryptor.update(plaintext) + encryptor.finalize()
        return iv + ct + self._icv(aad + iv + ct)

    def open(self, aad: bytes, body: bytes) -> bytes:
        iv, ct, icv = body[:16], body[16:-16], body[-16:]
        if not hmac.compare_digest(icv, self._icv(aad + iv + ct)):
            raise IntegrityError()
        decryptor = Cipher(self._algorithm, modes.CBC(iv)).decryptor()
        return decryptor.update(ct) + decryptor.finalize()


def gcm() -> SkCipher:
    return GcmTestCipher(sha256(b"gcm key").digest()[:20])


def cbc() -> SkCipher:
    return CbcHmacTestCipher(sha256(b"enc").digest()[:16], sha256(b"integ").digest())


CIPHERS: list[Callable[[], SkCipher]] = [gcm, cbc]


def nonce() -> NoncePayload:
    return NoncePayload(b"N" * 32)


def sa_init_request() -> Message:
    return Message(
        ExchangeType.IKE_SA_INIT, SPI_I, bytes(8), 0, True, False,
        [SA, KePayload(19, b"k" * 64), nonce(),
         NotifyPayload(NotifyType.NAT_DETECTION_SOURCE_IP, data=b"s" * 20),
         VendorPayload(b"xfrmctl")],
    )  # fmt: skip


def auth_request() -> Message:
    payloads: list[Payload] = [
        IdiPayload(2, b"left.example"),
        NotifyPayload(NotifyType.INITIAL_CONTACT),
        IdrPayload(2, b"right.example"),
        AuthPayload(2, b"a" * 32),
        SA,
        KNOWN[13][0],  # TSi
        KNOWN[14][0],  # TSr
        CertReqPayload(4, b"\x11" * 20),
    ]
    return Message(ExchangeType.IKE_AUTH, SPI_I, SPI_R, 1, True, False, [], payloads)


class ManualCipher:
    """Null cipher (identity, zero ICV): lets a test write the decrypted bytes itself."""

    iv_size, icv_size, block_size = 4, 0, 4

    def seal(self, aad: bytes, plaintext: bytes) -> bytes:
        return b"IVIV" + plaintext

    def open(self, aad: bytes, body: bytes) -> bytes:
        return body[4:]
