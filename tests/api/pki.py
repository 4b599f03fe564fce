"""PEM objects for API tests: a CA, a certificate with its key, and broken variants."""

from __future__ import annotations

import httpx
from cryptography import x509
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
)

from tests.support.pki import Credential, make_ca, make_cert


def cert_pem(cred: Credential) -> str:
    return cred.cert.public_bytes(Encoding.PEM).decode()


def key_pem(cred: Credential) -> str:
    return cred.key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()).decode()


def duplicated_extension_ca() -> str:
    """A CA certificate with basicConstraints twice (RFC 5280 4.2: "MUST NOT include
    more than one instance of a particular extension"): the KeyUsage OID (2.5.29.15) is
    rewritten into the basicConstraints OID (2.5.29.19); the signature no longer
    matters, parsing the extensions fails."""
    der = make_ca("Duplicated").cert.public_bytes(Encoding.DER)
    key_usage, basic = bytes.fromhex("0603551d0f"), bytes.fromhex("0603551d13")
    assert der.count(key_usage) == 1
    broken = x509.load_der_x509_certificate(der.replace(key_usage, basic))
    return broken.public_bytes(Encoding.PEM).decode()


async def pubkey_objects(client: httpx.AsyncClient, prefix: str = "gw") -> dict[str, int]:
    """A CA, a certificate and its private key stored through the API; their ids."""
    ca = make_ca(f"{prefix} root")
    gw = make_cert(ca, f"{prefix}.example")
    r = await client.post("/cas", json={"name": f"{prefix}-ca", "pem": cert_pem(ca)})
    assert r.status_code == 201, r.text
    ca_id = r.json()["id"]
    r = await client.post("/secrets", json={"name": f"{prefix}-key", "kind": "private_key",
                                            "value": key_pem(gw)})
    assert r.status_code == 201, r.text
    key_id = r.json()["id"]
    r = await client.post("/certificates", json={
        "name": f"{prefix}-cert", "pem": cert_pem(gw), "ca_id": ca_id, "key_secret_id": key_id})
    assert r.status_code == 201, r.text
    return {"ca": ca_id, "key": key_id, "cert": r.json()["id"]}
