"""Checks for keys and certificates when they are written, so that a stored object the
daemon cannot load is refused up front. Error messages never quote the key."""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_private_key,
)

# What IKE_AUTH can sign with (RFC 7427 digital signatures, RSA and ECDSA, EdDSA).
PrivateKey = (rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
              | ed448.Ed448PrivateKey)


def load_private_key(value: bytes) -> PrivateKey:
    """The private key in a PEM value; ValueError saying why it is not usable."""
    try:
        key = load_pem_private_key(value, password=None)
    except TypeError:
        raise ValueError("the private key is encrypted: store it without a passphrase"
                         ) from None
    except (ValueError, x509.UnsupportedGeneralNameType):
        raise ValueError("not a PEM private key (PKCS#8, PKCS#1 or SEC1, unencrypted)"
                         ) from None
    if not isinstance(key, PrivateKey):
        raise ValueError(f"{type(key).__name__} keys cannot sign IKE_AUTH: use RSA, "
                         "ECDSA, Ed25519 or Ed448")
    return key


def _spki(key: object) -> bytes:
    return key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)  # type: ignore[attr-defined, no-any-return]


def key_matches(key: PrivateKey, cert_pem: str) -> bool:
    """True if the certificate carries this key's public half."""
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    return _spki(cert.public_key()) == _spki(key.public_key())
