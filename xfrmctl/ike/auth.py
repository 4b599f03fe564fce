"""IKEv2 authentication: signed octets, PSK MIC and signatures (RFC 7296 2.15, RFC 7427).

Signatures use AUTH method 14 (Digital Signature, RFC 7427): one octet giving the
length of the DER AlgorithmIdentifier, the AlgorithmIdentifier, then the signature.
The AlgorithmIdentifiers we send and accept are a table built below from OIDs;
`verify` also accepts the older methods RSA_SIG (1, PKCS#1 v1.5 with SHA-1) and
ECDSA_SHA*_P* (9-11, RFC 4754: raw r || s).
"""

from dataclasses import dataclass
from enum import Enum
from typing import Final

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from .constants import AuthMethod, HashAlgorithm, NotifyType
from .crypto import Prf
from .errors import LocalError, ProtocolError

KEY_PAD: Final = b"Key Pad for IKEv2"

# What we announce in SIGNATURE_HASH_ALGORITHMS (RFC 7427 4, RFC 8420 for IDENTITY).
SUPPORTED_HASHES: Final[frozenset[int]] = frozenset(
    {HashAlgorithm.SHA2_256, HashAlgorithm.SHA2_384, HashAlgorithm.SHA2_512, HashAlgorithm.IDENTITY}
)


def signed_octets(
    message: bytes, peer_nonce: bytes, prf: Prf, sk_p: bytes, id_body: bytes,
    int_auth: bytes = b"",
) -> bytes:
    """RealMessage | NonceOfPeer | prf(SK_p, RestOfIDPayload) (RFC 7296 2.15)
    [| IntAuth_iN | IntAuth_rN | IKE_AUTH message ID, after IKE_INTERMEDIATE: RFC 9242].

    `id_body` is the ID payload after its generic header: ID type, 3 reserved
    octets, identification data.
    """
    return message + peer_nonce + prf(sk_p, id_body) + int_auth


def psk_auth(prf: Prf, psk: bytes, octets: bytes) -> bytes:
    """AUTH = prf(prf(Shared Secret, "Key Pad for IKEv2"), <signed octets>)."""
    return prf(prf(psk, KEY_PAD), octets)


# --- AlgorithmIdentifier table --------------------------------------------------------------


def _tlv(tag: int, content: bytes) -> bytes:
    assert len(content) < 128  # every structure here is short-form DER
    return bytes((tag, len(content))) + content


def _oid(hex_body: str) -> bytes:
    return _tlv(0x06, bytes.fromhex(hex_body))


def _seq(*parts: bytes) -> bytes:
    return _tlv(0x30, b"".join(parts))


_NULL: Final = b"\x05\x00"
_HASH_OIDS: Final[dict[int, str]] = {  # id-sha256/384/512 (RFC 5754)
    HashAlgorithm.SHA2_256: "608648016503040201",
    HashAlgorithm.SHA2_384: "608648016503040202",
    HashAlgorithm.SHA2_512: "608648016503040203",
}
_ECDSA_OIDS: Final[dict[int, str]] = {  # ecdsa-with-SHA256/384/512 (RFC 5758)
    HashAlgorithm.SHA2_256: "2a8648ce3d040302",
    HashAlgorithm.SHA2_384: "2a8648ce3d040303",
    HashAlgorithm.SHA2_512: "2a8648ce3d040304",
}
_RSA_PKCS1_OIDS: Final[dict[int, str]] = {  # sha256/384/512WithRSAEncryption (RFC 4055)
    HashAlgorithm.SHA2_256: "2a864886f70d01010b",
    HashAlgorithm.SHA2_384: "2a864886f70d01010c",
    HashAlgorithm.SHA2_512: "2a864886f70d01010d",
}
_RSASSA_PSS: Final = "2a864886f70d01010a"
_MGF1: Final = "2a864886f70d010108"
_HASH_CLASSES: Final[dict[int, type[hashes.HashAlgorithm]]] = {
    HashAlgorithm.SHA1: hashes.SHA1,
    HashAlgorithm.SHA2_256: hashes.SHA256,
    HashAlgorithm.SHA2_384: hashes.SHA384,
    HashAlgorithm.SHA2_512: hashes.SHA512,
}


class KeyKind(Enum):
    ECDSA = "ecdsa"
    RSA_PSS = "rsa-pss"
    RSA_PKCS1 = "rsa-pkcs1"
    ED25519 = "ed25519"
    ED448 = "ed448"


@dataclass(frozen=True, slots=True)
class SignatureAlgorithm:
    kind: KeyKind
    hash: int  # HashAlgorithm


def _pss_identifier(hash_id: int, with_null: bool) -> bytes:
    """RSASSA-PSS with MGF1 on the same hash and salt length = hash length (RFC 4055)."""
    params = _NULL if with_null else b""
    hash_alg = _seq(_oid(_HASH_OIDS[hash_id]), params)
    salt = _HASH_CLASSES[hash_id]().digest_size
    pss = _seq(
        _tlv(0xA0, hash_alg),
        _tlv(0xA1, _seq(_oid(_MGF1), hash_alg)),
        _tlv(0xA2, _tlv(0x02, bytes((salt,)))),
    )
    return _seq(_oid(_RSASSA_PSS), pss)


def _build_tables() -> tuple[dict[SignatureAlgorithm, bytes], dict[bytes, SignatureAlgorithm]]:
    send: dict[SignatureAlgorithm, bytes] = {}
    accept: dict[bytes, SignatureAlgorithm] = {}
    for hash_id in _HASH_OIDS:
        entries = [
            (SignatureAlgorithm(KeyKind.ECDSA, hash_id), [_seq(_oid(_ECDSA_OIDS[hash_id]))]),
            (
                SignatureAlgorithm(KeyKind.RSA_PKCS1, hash_id),
                [_seq(_oid(_RSA_PKCS1_OIDS[hash_id]), _NULL)],
            ),
            (
                SignatureAlgorithm(KeyKind.RSA_PSS, hash_id),
                [_pss_identifier(hash_id, True), _pss_identifier(hash_id, False)],
            ),
        ]
        for alg, encodings in entries:
            send[alg] = encodings[0]
            accept.update(dict.fromkeys(encodings, alg))
    for kind, oid in ((KeyKind.ED25519, "2b6570"), (KeyKind.ED448, "2b6571")):
        alg = SignatureAlgorithm(kind, HashAlgorithm.IDENTITY)
        send[alg] = _seq(_oid(oid))
        accept[send[alg]] = alg
    return send, accept


ALGORITHM_IDENTIFIERS, _ACCEPTED = _build_tables()

# Legacy AUTH methods: (key kind, hash, curve for ECDSA)
_LEGACY: Final[dict[int, tuple[KeyKind, int, type[ec.EllipticCurve] | None]]] = {
    AuthMethod.RSA_SIG: (KeyKind.RSA_PKCS1, HashAlgorithm.SHA1, None),
    AuthMethod.ECDSA_SHA256_P256: (KeyKind.ECDSA, HashAlgorithm.SHA2_256, ec.SECP256R1),
    AuthMethod.ECDSA_SHA384_P384: (KeyKind.ECDSA, HashAlgorithm.SHA2_384, ec.SECP384R1),
    AuthMethod.ECDSA_SHA512_P521: (KeyKind.ECDSA, HashAlgorithm.SHA2_512, ec.SECP521R1),
}
_CURVE_HASH: Final[dict[str, int]] = {
    "secp256r1": HashAlgorithm.SHA2_256,
    "secp384r1": HashAlgorithm.SHA2_384,
    "secp521r1": HashAlgorithm.SHA2_512,
}
_HASH_PREFERENCE: Final = (HashAlgorithm.SHA2_256, HashAlgorithm.SHA2_384, HashAlgorithm.SHA2_512)


# --- signing ---------------------------------------------------------------------------------


def _pss(hash_id: int) -> padding.PSS:
    hash_cls = _HASH_CLASSES[hash_id]
    return padding.PSS(mgf=padding.MGF1(hash_cls()), salt_length=hash_cls().digest_size)


def _choose_hash(preferred: int, offered: set[int]) -> int | None:
    order = (preferred, *(h for h in reversed(_HASH_PREFERENCE) if h != preferred))
    return next((h for h in order if h in offered), None)


def _legacy_ecdsa_method(curve: ec.EllipticCurve) -> int:
    for method, (_, _, curve_cls) in _LEGACY.items():
        if curve_cls is not None and isinstance(curve, curve_cls):
            return method
    raise LocalError(f"no signature method for curve {curve.name}")


def _raw_ecdsa(signature: bytes, curve: ec.EllipticCurve) -> bytes:
    size = (curve.key_size + 7) // 8
    r, s = decode_dss_signature(signature)
    return r.to_bytes(size, "big") + s.to_bytes(size, "big")


def _sign_ec(
    key: ec.EllipticCurvePrivateKey, octets: bytes, offered: set[int]
) -> tuple[int, bytes]:
    preferred = _CURVE_HASH.get(key.curve.name)
    if preferred is None:
        raise LocalError(f"unsupported ECDSA curve {key.curve.name}")
    chosen = _choose_hash(preferred, offered)
    if chosen is None:  # peer without RFC 7427: RFC 4754 method, raw r || s
        method = _legacy_ecdsa_method(key.curve)
        der = key.sign(octets, ec.ECDSA(_HASH_CLASSES[preferred]()))
        return method, _raw_ecdsa(der, key.curve)
    signature = key.sign(octets, ec.ECDSA(_HASH_CLASSES[chosen]()))
    return _rfc7427(SignatureAlgorithm(KeyKind.ECDSA, chosen), signature)


def _pss_fits(key: rsa.RSAPrivateKey, hash_id: int) -> bool:
    """EMSA-PSS needs emLen >= hLen + sLen + 2 with sLen = hLen (RFC 8017 9.1.1)."""
    em_len = (key.key_size - 1 + 7) // 8
    return em_len >= 2 * _HASH_CLASSES[hash_id]().digest_size + 2


def _sign_rsa(key: rsa.RSAPrivateKey, octets: bytes, offered: set[int]) -> tuple[int, bytes]:
    chosen = _choose_hash(HashAlgorithm.SHA2_256, offered)
    if chosen is None:  # peer without RFC 7427
        return AuthMethod.RSA_SIG, key.sign(octets, padding.PKCS1v15(), hashes.SHA1())
    if _pss_fits(key, chosen):
        signature = key.sign(octets, _pss(chosen), _HASH_CLASSES[chosen]())
        return _rfc7427(SignatureAlgorithm(KeyKind.RSA_PSS, chosen), signature)
    signature = key.sign(octets, padding.PKCS1v15(), _HASH_CLASSES[chosen]())
    return _rfc7427(SignatureAlgorithm(KeyKind.RSA_PKCS1, chosen), signature)


def _rfc7427(alg: SignatureAlgorithm, signature: bytes) -> tuple[int, bytes]:
    identifier = ALGORITHM_IDENTIFIERS[alg]
    return AuthMethod.DIGITAL_SIGNATURE, bytes((len(identifier),)) + identifier + signature


def sign(private_key: PrivateKeyTypes, octets: bytes, hash_algs: set[int]) -> tuple[int, bytes]:
    """Sign the AUTH octets; returns (AUTH method, AUTH data).

    The hash comes from the peer's SIGNATURE_HASH_ALGORITHMS (`hash_algs`); with
    an empty set the pre-RFC 7427 method for the key type is used. Ed25519/Ed448
    sign with the IDENTITY "hash" (RFC 8420) whatever the peer announced.
    """
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        return _sign_ec(private_key, octets, hash_algs)
    if isinstance(private_key, rsa.RSAPrivateKey):
        return _sign_rsa(private_key, octets, hash_algs)
    if isinstance(private_key, ed25519.Ed25519PrivateKey):
        alg = SignatureAlgorithm(KeyKind.ED25519, HashAlgorithm.IDENTITY)
        return _rfc7427(alg, private_key.sign(octets))
    if isinstance(private_key, ed448.Ed448PrivateKey):
        alg = SignatureAlgorithm(KeyKind.ED448, HashAlgorithm.IDENTITY)
        return _rfc7427(alg, private_key.sign(octets))
    raise LocalError(f"unsupported private key type {type(private_key).__name__}")


# --- verification ----------------------------------------------------------------------------


def _auth_failed(why: str) -> ProtocolError:
    return ProtocolError(f"AUTH signature: {why}", notify=NotifyType.AUTHENTICATION_FAILED)


def _parse_rfc7427(data: bytes) -> tuple[SignatureAlgorithm, bytes]:
    if not data:
        raise _auth_failed("empty AUTH data")
    length = data[0]
    identifier, signature = data[1 : 1 + length], data[1 + length :]
    if len(identifier) != length or not signature:
        raise _auth_failed("truncated AlgorithmIdentifier")
    alg = _ACCEPTED.get(identifier)
    if alg is None:
        raise _auth_failed(f"unsupported AlgorithmIdentifier {identifier.hex()}")
    return alg, signature


def _check(
    public_key: PublicKeyTypes, kind: KeyKind, hash_id: int, sig: bytes, octets: bytes
) -> None:
    """Verify `sig` or raise InvalidSignature / TypeError for a mismatching key."""
    if kind is KeyKind.ECDSA:
        if not isinstance(public_key, ec.EllipticCurvePublicKey):
            raise TypeError("ECDSA signature but the certificate key is not EC")
        public_key.verify(sig, octets, ec.ECDSA(_HASH_CLASSES[hash_id]()))
    elif kind in (KeyKind.RSA_PSS, KeyKind.RSA_PKCS1):
        if not isinstance(public_key, rsa.RSAPublicKey):
            raise TypeError("RSA signature but the certificate key is not RSA")
        pad = _pss(hash_id) if kind is KeyKind.RSA_PSS else padding.PKCS1v15()
        public_key.verify(sig, octets, pad, _HASH_CLASSES[hash_id]())
    elif kind is KeyKind.ED25519:
        if not isinstance(public_key, ed25519.Ed25519PublicKey):
            raise TypeError("Ed25519 signature but the certificate key is not Ed25519")
        public_key.verify(sig, octets)
    else:
        if not isinstance(public_key, ed448.Ed448PublicKey):
            raise TypeError("Ed448 signature but the certificate key is not Ed448")
        public_key.verify(sig, octets)


def _legacy_signature(public_key: PublicKeyTypes, method: int, data: bytes) -> bytes:
    """The signature of a pre-RFC 7427 method, in the form `cryptography` verifies."""
    kind, _, curve_cls = _LEGACY[method]
    if kind is not KeyKind.ECDSA:
        return data
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(
        public_key.curve, curve_cls or ec.SECP256R1
    ):
        raise TypeError(f"{AuthMethod(method).name} needs a key on its curve")
    size = (public_key.curve.key_size + 7) // 8
    if len(data) != 2 * size:
        raise _auth_failed(f"{AuthMethod(method).name} signature must be {2 * size} octets")
    r, s = int.from_bytes(data[:size], "big"), int.from_bytes(data[size:], "big")
    return encode_dss_signature(r, s)


def verify(public_key: PublicKeyTypes, method: int, data: bytes, octets: bytes) -> None:
    """Check an AUTH payload made with a signature; raise AUTHENTICATION_FAILED if wrong."""
    if method == AuthMethod.DIGITAL_SIGNATURE:
        alg, signature = _parse_rfc7427(data)
        kind, hash_id = alg.kind, alg.hash
    elif method in _LEGACY:
        kind, hash_id, _ = _LEGACY[method]
        try:
            signature = _legacy_signature(public_key, method, data)
        except TypeError as exc:
            raise _auth_failed(str(exc)) from None
    else:
        raise _auth_failed(f"AUTH method {method} is not a signature method we accept")
    try:
        _check(public_key, kind, hash_id, signature, octets)
    except InvalidSignature:
        raise _auth_failed("signature does not verify") from None
    except (TypeError, ValueError, UnsupportedAlgorithm) as exc:
        raise _auth_failed(str(exc)) from None
