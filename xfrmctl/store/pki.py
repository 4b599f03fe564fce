"""Checks for keys and certificates when they are written, so that a stored object the
daemon cannot load is refused up front. Error messages never quote the key."""

from __future__ import annotations

from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_private_key,
)

from xfrmctl.ike.revocation import crl_issued_by, parse_crl

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


def load_crl(value: str | bytes) -> x509.CertificateRevocationList:
    """A CRL in PEM (or DER); ValueError saying why not."""
    return parse_crl(value.encode() if isinstance(value, str) else value)


def crl_signed_by(crl: x509.CertificateRevocationList, ca_pem: str) -> bool:
    """Is the CRL signed by a certificate of this CA bundle?"""
    return any(crl_issued_by(crl, ca) for ca in x509.load_pem_x509_certificates(ca_pem.encode()))


def crl_fields(crl: x509.CertificateRevocationList) -> dict[str, Any]:
    """A CRL's stored columns: its PEM and what `list` shows."""
    return {"pem": crl.public_bytes(Encoding.PEM).decode(),
            "issuer": crl.issuer.rfc4514_string(), "this_update": crl.last_update_utc,
            "next_update": crl.next_update_utc, "revoked": len(crl)}
