"""IKE transform ids -> kernel (crypto API) algorithm names, as tables.

Key lengths handed to the kernel include the salt/nonce that RFC 4106/4309/7634 put
at the end of the keying material (4 bytes for GCM and ChaCha20, 3 for CCM), so the
KEYMAT split in the IKE core asks `keymat_bytes()` how much to take.
"""

from __future__ import annotations

from dataclasses import dataclass

from xfrmctl.ike.constants import EncrId, IntegId

from .types import Algorithm


@dataclass(frozen=True)
class EncrInfo:
    kernel_name: str
    aead: bool
    icv_bits: int = 0  # AEAD ICV length
    salt_bytes: int = 0
    fixed_key_bits: int = 0  # for ciphers without a Key Length attribute


@dataclass(frozen=True)
class IntegInfo:
    kernel_name: str
    key_bits: int
    trunc_bits: int


ENCR: dict[EncrId, EncrInfo] = {
    EncrId.AES_GCM_16: EncrInfo("rfc4106(gcm(aes))", True, 128, 4),
    EncrId.AES_GCM_12: EncrInfo("rfc4106(gcm(aes))", True, 96, 4),
    EncrId.AES_GCM_8: EncrInfo("rfc4106(gcm(aes))", True, 64, 4),
    EncrId.AES_CCM_16: EncrInfo("rfc4309(ccm(aes))", True, 128, 3),
    EncrId.AES_CCM_12: EncrInfo("rfc4309(ccm(aes))", True, 96, 3),
    EncrId.AES_CCM_8: EncrInfo("rfc4309(ccm(aes))", True, 64, 3),
    EncrId.NULL_AUTH_AES_GMAC: EncrInfo("rfc4543(gcm(aes))", True, 128, 4),
    EncrId.CHACHA20_POLY1305: EncrInfo("rfc7539esp(chacha20,poly1305)", True, 128, 4, 256),
    EncrId.AES_CBC: EncrInfo("cbc(aes)", False),
    EncrId.AES_CTR: EncrInfo("rfc3686(ctr(aes))", False, 0, 4),
    EncrId.TRIPLE_DES: EncrInfo("cbc(des3_ede)", False, 0, 0, 192),
    EncrId.DES: EncrInfo("cbc(des)", False, 0, 0, 64),
    EncrId.CAST: EncrInfo("cbc(cast5)", False, 0, 0, 128),
    EncrId.BLOWFISH: EncrInfo("cbc(blowfish)", False),
    EncrId.CAMELLIA_CBC: EncrInfo("cbc(camellia)", False),
    EncrId.CAMELLIA_CTR: EncrInfo("rfc3686(ctr(camellia))", False, 0, 4),
    EncrId.NULL: EncrInfo("ecb(cipher_null)", False, 0, 0, 0),
}

INTEG: dict[IntegId, IntegInfo] = {
    IntegId.HMAC_MD5_96: IntegInfo("hmac(md5)", 128, 96),
    IntegId.HMAC_SHA1_96: IntegInfo("hmac(sha1)", 160, 96),
    IntegId.AES_XCBC_96: IntegInfo("xcbc(aes)", 128, 96),
    IntegId.AES_CMAC_96: IntegInfo("cmac(aes)", 128, 96),
    IntegId.HMAC_MD5_128: IntegInfo("hmac(md5)", 128, 128),
    IntegId.HMAC_SHA1_160: IntegInfo("hmac(sha1)", 160, 160),
    IntegId.HMAC_SHA2_256_128: IntegInfo("hmac(sha256)", 256, 128),
    IntegId.HMAC_SHA2_384_192: IntegInfo("hmac(sha384)", 384, 192),
    IntegId.HMAC_SHA2_512_256: IntegInfo("hmac(sha512)", 512, 256),
}

KERNEL_ALGORITHM_NAMES: frozenset[str] = frozenset(
    [e.kernel_name for e in ENCR.values()] + [i.kernel_name for i in INTEG.values()]
)


class UnsupportedTransform(ValueError):
    pass


def _encr_info(encr: EncrId) -> EncrInfo:
    try:
        return ENCR[encr]
    except KeyError:
        raise UnsupportedTransform(f"no kernel algorithm for ENCR {encr.name}") from None


def _integ_info(integ: IntegId) -> IntegInfo:
    try:
        return INTEG[integ]
    except KeyError:
        raise UnsupportedTransform(f"no kernel algorithm for INTEG {integ.name}") from None


def encr_key_bytes(encr: EncrId, key_bits: int = 0) -> int:
    """Bytes of KEYMAT one direction's cipher takes (cipher key + salt)."""
    info = _encr_info(encr)
    bits = key_bits or info.fixed_key_bits
    return bits // 8 + info.salt_bytes


def integ_key_bytes(integ: IntegId) -> int:
    return 0 if integ == IntegId.NONE else _integ_info(integ).key_bits // 8


def encr_algorithm(encr: EncrId, key: bytes) -> Algorithm:
    """The kernel cipher for `encr` with `key` (salt included, as KEYMAT gives it)."""
    info = _encr_info(encr)
    return Algorithm(info.kernel_name, key, info.icv_bits)


def integ_algorithm(integ: IntegId, key: bytes) -> Algorithm:
    info = _integ_info(integ)
    if len(key) * 8 != info.key_bits:
        raise ValueError(f"{integ.name} takes a {info.key_bits}-bit key, got {len(key) * 8}")
    return Algorithm(info.kernel_name, key, info.trunc_bits)


def is_aead(encr: EncrId) -> bool:
    return _encr_info(encr).aead
