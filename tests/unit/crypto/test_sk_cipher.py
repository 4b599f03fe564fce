"""SK payload ciphers: RFC vectors, round trips, tampering, IV uniqueness."""

import itertools

import pytest

from xfrmctl.ike.algorithms import ENCR, encr_key_size, integ_key_size
from xfrmctl.ike.constants import EncrId, IntegId
from xfrmctl.ike.crypto import new_sk_cipher
from xfrmctl.ike.errors import IntegrityError, LocalError
from xfrmctl.ike.sk import SkCipher

h = bytes.fromhex

AEAD_SUITES = [
    (encr, bits, None)
    for encr in (
        EncrId.AES_GCM_8,
        EncrId.AES_GCM_12,
        EncrId.AES_GCM_16,
        EncrId.AES_CCM_8,
        EncrId.AES_CCM_12,
        EncrId.AES_CCM_16,
    )
    for bits in (128, 192, 256)
] + [(EncrId.CHACHA20_POLY1305, None, None)]
CBC_SUITES = [
    (EncrId.AES_CBC, bits, integ)
    for bits, integ in itertools.product(
        (128, 192, 256),
        (
            IntegId.HMAC_SHA2_256_128,
            IntegId.HMAC_SHA2_384_192,
            IntegId.HMAC_SHA2_512_256,
            IntegId.HMAC_SHA1_96,
        ),
    )
] + [(EncrId.TRIPLE_DES, None, IntegId.HMAC_SHA1_96)]
SUITES = AEAD_SUITES + CBC_SUITES


def _pair(encr: int, bits: int | None, integ: int | None) -> tuple[SkCipher, SkCipher]:
    ek = bytes(range(encr_key_size(encr, bits)))
    ik = bytes(range(100, 100 + integ_key_size(integ)))
    return new_sk_cipher(encr, bits, integ, ek, ik), new_sk_cipher(encr, bits, integ, ek, ik)


@pytest.mark.parametrize(("encr", "bits", "integ"), SUITES)
def test_round_trip_and_tamper(encr: int, bits: int | None, integ: int | None) -> None:
    sender, receiver = _pair(encr, bits, integ)
    aad = b"\x11" * 28 + b"\x2e\x00\x00\x50"
    plaintext = b"\x00" * (sender.block_size * 4)
    body = sender.seal(aad, plaintext)
    assert len(body) == sender.iv_size + len(plaintext) + sender.icv_size
    assert receiver.open(aad, body) == plaintext
    for pos in (0, sender.iv_size, len(body) - 1):  # IV, ciphertext, ICV
        bad = bytearray(body)
        bad[pos] ^= 0x01
        with pytest.raises(IntegrityError):
            receiver.open(aad, bytes(bad))
    with pytest.raises(IntegrityError):
        receiver.open(aad[:-1] + b"\x51", body)  # the header is authenticated
    with pytest.raises(IntegrityError):
        receiver.open(aad, body[: sender.iv_size + sender.icv_size - 1])


@pytest.mark.parametrize(("encr", "bits", "integ"), SUITES)
def test_iv_never_repeats(encr: int, bits: int | None, integ: int | None) -> None:
    sender, _ = _pair(encr, bits, integ)
    plaintext = b"\x00" * sender.block_size
    ivs = {sender.seal(b"", plaintext)[: sender.iv_size] for _ in range(200)}
    assert len(ivs) == 200


def test_sizes_come_from_the_table() -> None:
    for encr, bits, integ in AEAD_SUITES:
        cipher, _ = _pair(encr, bits, integ)
        assert cipher.icv_size == ENCR[EncrId(encr)].icv_size
        assert cipher.iv_size == 8
    cbc, _ = _pair(EncrId.AES_CBC, 256, IntegId.HMAC_SHA2_384_192)
    assert (cbc.iv_size, cbc.block_size, cbc.icv_size) == (16, 16, 24)


def test_encr_key_size_includes_salt() -> None:
    assert encr_key_size(EncrId.AES_GCM_16, 256) == 36
    assert encr_key_size(EncrId.AES_CCM_8, 128) == 19
    assert encr_key_size(EncrId.CHACHA20_POLY1305, None) == 36
    assert encr_key_size(EncrId.AES_CBC, 192) == 24
    assert encr_key_size(EncrId.AES_CBC, None) == 16
    with pytest.raises(LocalError):
        encr_key_size(EncrId.AES_CBC, 100)


def test_misuse_is_a_local_error() -> None:
    with pytest.raises(LocalError):
        new_sk_cipher(EncrId.AES_GCM_16, 128, IntegId.HMAC_SHA2_256_128, b"k" * 20, b"i" * 32)
    with pytest.raises(LocalError):
        new_sk_cipher(EncrId.AES_CBC, 128, None, b"k" * 16, b"")
    with pytest.raises(LocalError):
        new_sk_cipher(EncrId.AES_GCM_16, 128, None, b"k" * 16, b"")  # salt missing
    with pytest.raises(LocalError):
        new_sk_cipher(EncrId.AES_CTR, 128, None, b"k" * 20, b"")
    cbc, _ = _pair(EncrId.AES_CBC, 128, IntegId.HMAC_SHA2_256_128)
    with pytest.raises(LocalError):
        cbc.seal(b"", b"not a block multiple")


# RFC 8439 2.8.2: the ChaCha20-Poly1305 AEAD example. Its nonce is
# 07000000 || 4041424344454647, which is RFC 7634's salt || IV layout: the
# salt (last 4 octets of the keying material) is 07000000, the IV 4041424344454647.
RFC8439_KEY = h("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f")
RFC8439_AAD = h("50515253c0c1c2c3c4c5c6c7")
RFC8439_PT = (
    b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip "
    b"for the future, sunscreen would be it."
)
RFC8439_CT = h(
    "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d63dbea45e8ca9671282fafb69"
    "da92728b1a71de0a9e060b2905d6a5b67ecd3b3692ddbd7f2d778b8c9803aee328091b58fab324e4fad675"
    "945585808b4831d7bc3ff4def08e4b7a9de576d26586cec64b6116"
)
RFC8439_TAG = h("1ae10b594f09e26a7e902ecbd0600691")


def test_chacha20_poly1305_rfc8439_vector_through_the_rfc7634_layout() -> None:
    keymat = RFC8439_KEY + h("07000000")
    cipher = new_sk_cipher(EncrId.CHACHA20_POLY1305, None, None, keymat, b"")
    body = h("4041424344454647") + RFC8439_CT + RFC8439_TAG
    assert cipher.open(RFC8439_AAD, body) == RFC8439_PT
    with pytest.raises(IntegrityError):
        cipher.open(RFC8439_AAD, body[:-1] + b"\x00")


# The GCM specification (McGrew & Viega), test case 3: AES-128, 96-bit IV
# cafebabefacedbaddecaf888 = RFC 4106/5282 salt cafebabe || IV facedbaddecaf888.
GCM_KEY = h("feffe9928665731c6d6a8f9467308308")
GCM_PT = h(
    "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
    "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255"
)
GCM_CT = h(
    "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e"
    "21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091473f5985"
)
GCM_TAG = h("4d5c2af327cd64a62cf35abd2ba6fab4")


@pytest.mark.parametrize(
    ("encr", "icv"), [(EncrId.AES_GCM_16, 16), (EncrId.AES_GCM_12, 12), (EncrId.AES_GCM_8, 8)]
)
def test_aes_gcm_spec_vector_through_the_rfc5282_layout(encr: EncrId, icv: int) -> None:
    cipher = new_sk_cipher(encr, 128, None, GCM_KEY + h("cafebabe"), b"")
    body = h("facedbaddecaf888") + GCM_CT + GCM_TAG[:icv]
    assert cipher.open(b"", body) == GCM_PT
    with pytest.raises(IntegrityError):
        cipher.open(b"\x00", body)
