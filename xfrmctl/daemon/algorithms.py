"""IKE transform ids -> the XFRM algorithms a CHILD_SA is installed with.

The IKE core (xfrmctl.ike.algorithms) says what a transform is: its key, salt and ICV
sizes, whether it is AEAD. The kernel layer (xfrmctl.kernel.algorithms) says which
names XFRM knows. This module joins the two with one table of names and nothing else:
the key XFRM gets is the KEYMAT slice as the IKE core split it (key || salt for AEAD
and CTR, as RFC 3686/4106/4309/7634 and the kernel's rfc* templates expect).
"""

from __future__ import annotations

from xfrmctl.ike import algorithms as ike_alg
from xfrmctl.ike.constants import EncrId, IntegId
from xfrmctl.kernel.types import Algorithm

ENCR_NAMES: dict[EncrId, str] = {
    EncrId.AES_GCM_16: "rfc4106(gcm(aes))",
    EncrId.AES_GCM_12: "rfc4106(gcm(aes))",
    EncrId.AES_GCM_8: "rfc4106(gcm(aes))",
    EncrId.AES_CCM_16: "rfc4309(ccm(aes))",
    EncrId.AES_CCM_12: "rfc4309(ccm(aes))",
    EncrId.AES_CCM_8: "rfc4309(ccm(aes))",
    EncrId.NULL_AUTH_AES_GMAC: "rfc4543(gcm(aes))",
    EncrId.CHACHA20_POLY1305: "rfc7539esp(chacha20,poly1305)",
    EncrId.AES_CBC: "cbc(aes)",
    EncrId.AES_CTR: "rfc3686(ctr(aes))",
    EncrId.TRIPLE_DES: "cbc(des3_ede)",
    EncrId.NULL: "ecb(cipher_null)",  # ENCR_NULL (RFC 2410): no key, not AEAD
}

INTEG_NAMES: dict[IntegId, str] = {
    IntegId.HMAC_MD5_96: "hmac(md5)",
    IntegId.HMAC_SHA1_96: "hmac(sha1)",
    IntegId.HMAC_SHA2_256_128: "hmac(sha256)",
    IntegId.HMAC_SHA2_384_192: "hmac(sha384)",
    IntegId.HMAC_SHA2_512_256: "hmac(sha512)",
}


class UnsupportedTransform(ValueError):
    pass


def _encr_name(encr: EncrId) -> str:
    try:
        return ENCR_NAMES[encr]
    except KeyError:
        raise UnsupportedTransform(f"no kernel algorithm for ENCR {encr.name}") from None


def _integ_info(integ: IntegId) -> tuple[str, ike_alg.IntegInfo]:
    try:
        return INTEG_NAMES[integ], ike_alg.INTEG[integ]
    except KeyError:
        raise UnsupportedTransform(f"no kernel algorithm for INTEG {integ.name}") from None


def is_aead(encr: EncrId) -> bool:
    info = ike_alg.ENCR.get(encr)
    return info is not None and info.aead


def icv_bytes(encr: EncrId | None, integ: IntegId | None) -> int:
    """Octets of ICV an ESP (or, without `encr`, AH) packet of this suite carries."""
    if encr is not None and is_aead(encr):
        return ike_alg.ENCR[encr].icv_size
    return _integ_info(integ)[1].icv_size if integ else 0


def encr_algorithm(encr: EncrId, key: bytes) -> Algorithm:
    """The kernel cipher for `encr` with `key` (salt included, as KEYMAT gives it)."""
    name = _encr_name(encr)
    return Algorithm(name, key, ike_alg.ENCR[encr].icv_size * 8 if is_aead(encr) else 0)


def integ_algorithm(integ: IntegId, key: bytes) -> Algorithm:
    name, info = _integ_info(integ)
    if len(key) != info.key_size:
        raise ValueError(f"{integ.name} takes a {info.key_size * 8}-bit key, "
                         f"got {len(key) * 8}")
    return Algorithm(name, key, info.icv_size * 8)
