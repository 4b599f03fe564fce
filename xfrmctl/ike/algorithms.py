"""What each IKEv2/ESP transform is: sizes and flags as data, keyed by IANA id.

`legacy` marks transforms refused unless a connection names them explicitly
(3DES, HMAC-MD5-96, HMAC-SHA1-96, MODP-1024/1536; RFC 8221/8247 status).
PRF-HMAC-SHA1 stays allowed for old peers.

Sizes are octets unless named `..._bits`. For AEAD ciphers the keying material
is key || salt (RFC 4106/4309/5282/7634), so `encr_key_size` includes the salt.
"""

from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes

from .constants import DhId, EncrId, IntegId, PrfId
from .errors import LocalError


@dataclass(frozen=True, slots=True)
class EncrInfo:
    key_bits: tuple[int, ...]  # allowed key lengths
    default_key_bits: int  # used when the proposal has no Key Length attribute
    iv_size: int
    block_size: int  # the codec pads the SK plaintext to a multiple of this
    aead: bool = False
    salt_size: int = 0
    icv_size: int = 0  # AEAD only; CBC suites take it from INTEG
    legacy: bool = False
    needs_key_length: bool = True  # Key Length attribute sent in proposals


@dataclass(frozen=True, slots=True)
class IntegInfo:
    key_size: int
    icv_size: int  # truncated output
    hash: type[hashes.HashAlgorithm]
    legacy: bool = False


@dataclass(frozen=True, slots=True)
class PrfInfo:
    hash: type[hashes.HashAlgorithm]
    output_size: int
    key_size: int  # preferred key size (SK_d, SK_pi, SK_pr length)
    legacy: bool = False


@dataclass(frozen=True, slots=True)
class DhInfo:
    public_size: int  # length of the KE payload's key exchange data (the initiator's)
    legacy: bool = False
    # A KEM (ML-KEM): the responder sends a ciphertext of this length, not a public value.
    responder_size: int | None = None

    def size(self, responder: bool) -> int:
        """Octets of the KE data the initiator (False) or responder (True) sends."""
        return self.responder_size if responder and self.responder_size else self.public_size


_AES = (128, 192, 256)

ENCR: dict[EncrId, EncrInfo] = {
    EncrId.AES_CBC: EncrInfo(_AES, 128, iv_size=16, block_size=16),
    EncrId.AES_CTR: EncrInfo(_AES, 128, iv_size=8, block_size=1, salt_size=4),
    EncrId.AES_CCM_8: EncrInfo(_AES, 128, 8, 1, aead=True, salt_size=3, icv_size=8),
    EncrId.AES_CCM_12: EncrInfo(_AES, 128, 8, 1, aead=True, salt_size=3, icv_size=12),
    EncrId.AES_CCM_16: EncrInfo(_AES, 128, 8, 1, aead=True, salt_size=3, icv_size=16),
    EncrId.AES_GCM_8: EncrInfo(_AES, 128, 8, 1, aead=True, salt_size=4, icv_size=8),
    EncrId.AES_GCM_12: EncrInfo(_AES, 128, 8, 1, aead=True, salt_size=4, icv_size=12),
    EncrId.AES_GCM_16: EncrInfo(_AES, 128, 8, 1, aead=True, salt_size=4, icv_size=16),
    EncrId.NULL_AUTH_AES_GMAC: EncrInfo(_AES, 128, 8, 1, aead=True, salt_size=4, icv_size=16),
    EncrId.CHACHA20_POLY1305: EncrInfo(
        (256,), 256, 8, 1, aead=True, salt_size=4, icv_size=16, needs_key_length=False
    ),
    EncrId.TRIPLE_DES: EncrInfo(
        (192,), 192, iv_size=8, block_size=8, legacy=True, needs_key_length=False
    ),
}

INTEG: dict[IntegId, IntegInfo] = {
    IntegId.HMAC_MD5_96: IntegInfo(16, 12, hashes.MD5, legacy=True),
    IntegId.HMAC_SHA1_96: IntegInfo(20, 12, hashes.SHA1, legacy=True),
    IntegId.HMAC_SHA2_256_128: IntegInfo(32, 16, hashes.SHA256),
    IntegId.HMAC_SHA2_384_192: IntegInfo(48, 24, hashes.SHA384),
    IntegId.HMAC_SHA2_512_256: IntegInfo(64, 32, hashes.SHA512),
}

PRF: dict[PrfId, PrfInfo] = {
    PrfId.HMAC_MD5: PrfInfo(hashes.MD5, 16, 16, legacy=True),
    PrfId.HMAC_SHA1: PrfInfo(hashes.SHA1, 20, 20),
    PrfId.HMAC_SHA2_256: PrfInfo(hashes.SHA256, 32, 32),
    PrfId.HMAC_SHA2_384: PrfInfo(hashes.SHA384, 48, 48),
    PrfId.HMAC_SHA2_512: PrfInfo(hashes.SHA512, 64, 64),
}

DH: dict[DhId, DhInfo] = {
    DhId.MODP_1024: DhInfo(128, legacy=True),
    DhId.MODP_1536: DhInfo(192, legacy=True),
    DhId.MODP_2048: DhInfo(256),
    DhId.MODP_3072: DhInfo(384),
    DhId.MODP_4096: DhInfo(512),
    DhId.ECP_256: DhInfo(64),
    DhId.ECP_384: DhInfo(96),
    DhId.ECP_521: DhInfo(132),
    DhId.CURVE25519: DhInfo(32),
    DhId.CURVE448: DhInfo(56),
    # FIPS 203 ML-KEM (draft-ietf-ipsecme-ikev2-mlkem): encapsulation key / ciphertext.
    # ML-KEM-512 is missing: the cryptography library has no ML-KEM-512.
    DhId.ML_KEM_512: DhInfo(800, responder_size=768),
    DhId.ML_KEM_768: DhInfo(1184, responder_size=1088),
    DhId.ML_KEM_1024: DhInfo(1568, responder_size=1568),
}


def encr_info(encr_id: int) -> EncrInfo:
    try:
        return ENCR[EncrId(encr_id)]
    except (ValueError, KeyError):
        raise LocalError(f"unsupported encryption transform {encr_id}") from None


def encr_key_bits(encr_id: int, key_bits: int | None) -> int:
    """The key length in bits to use: the given one if allowed, else the default."""
    info = encr_info(encr_id)
    bits = info.default_key_bits if key_bits is None else key_bits
    if bits not in info.key_bits:
        raise LocalError(f"key length {bits} not allowed for {EncrId(encr_id).name}")
    return bits


def encr_key_size(encr_id: int, key_bits: int | None) -> int:
    """Octets of keying material for one direction, salt included."""
    info = encr_info(encr_id)
    return encr_key_bits(encr_id, key_bits) // 8 + info.salt_size


def integ_info(integ_id: int) -> IntegInfo:
    try:
        return INTEG[IntegId(integ_id)]
    except (ValueError, KeyError):
        raise LocalError(f"unsupported integrity transform {integ_id}") from None


def integ_key_size(integ_id: int | None) -> int:
    """Octets of integrity key; 0 for no integrity transform (AEAD)."""
    if not integ_id:
        return 0
    return integ_info(integ_id).key_size


def prf_info(prf_id: int) -> PrfInfo:
    try:
        return PRF[PrfId(prf_id)]
    except (ValueError, KeyError):
        raise LocalError(f"unsupported PRF {prf_id}") from None
