"""A small test PKI: CAs and end-entity certificates made at test time.

    ca = make_ca("Test Root")
    gw = make_cert(ca, "gw1.example.com", sans=["gw1.example.com", "192.0.2.1"])
    gw.key, gw.cert          # private key and x509.Certificate
    gw.cert_der              # DER bytes, as a CERT payload carries them

Key types: "ecdsa-p256" (default), "ecdsa-p384", "ecdsa-p521", "ed25519", "ed448",
"rsa2048", "rsa3072". SANs: "dns:..", "email:..", "ip:.." or a bare value (an
address is an IP SAN, a value with "@" an email, anything else a DNS name).
Every key and certificate is for tests only.
"""

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

KEY_TYPES = ("ecdsa-p256", "ecdsa-p384", "ecdsa-p521", "ed25519", "ed448", "rsa2048")

_CURVES = {"ecdsa-p256": ec.SECP256R1, "ecdsa-p384": ec.SECP384R1, "ecdsa-p521": ec.SECP521R1}


@dataclass(frozen=True)
class Credential:
    cert: x509.Certificate
    key: CertificateIssuerPrivateKeyTypes = field(repr=False)

    @property
    def cert_der(self) -> bytes:
        return self.cert.public_bytes(Encoding.DER)

    @property
    def subject_der(self) -> bytes:
        return self.cert.subject.public_bytes()


def new_key(key_type: str = "ecdsa-p256") -> CertificateIssuerPrivateKeyTypes:
    if key_type in _CURVES:
        return ec.generate_private_key(_CURVES[key_type]())
    if key_type == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if key_type == "ed448":
        return ed448.Ed448PrivateKey.generate()
    if key_type.startswith("rsa"):
        return rsa.generate_private_key(public_exponent=65537, key_size=int(key_type[3:]))
    raise ValueError(f"unknown key type {key_type!r}; one of {KEY_TYPES}")


def name(common_name: str, organization: str = "xfrmctl test") -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def general_name(value: str) -> x509.GeneralName:
    kind, _, rest = value.partition(":")
    if kind == "dns":
        return x509.DNSName(rest)
    if kind == "email":
        return x509.RFC822Name(rest)
    if kind == "ip":
        return x509.IPAddress(ipaddress.ip_address(rest))
    try:
        return x509.IPAddress(ipaddress.ip_address(value))
    except ValueError:
        return x509.RFC822Name(value) if "@" in value else x509.DNSName(value)


def _hash_for(key: CertificateIssuerPrivateKeyTypes) -> hashes.SHA256 | None:
    is_eddsa = isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey)
    return None if is_eddsa else hashes.SHA256()


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def make_cert(
    issuer: Credential | None,
    common_name: str,
    *,
    key_type: str = "ecdsa-p256",
    sans: Sequence[str] = (),
    is_ca: bool = False,
    path_length: int | None = None,
    basic_constraints: bool = True,
    key_usage: x509.KeyUsage | bool | None = True,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    subject: x509.Name | None = None,
    key: CertificateIssuerPrivateKeyTypes | None = None,
    crl_url: str | None = None,
    ocsp_url: str | None = None,
    extensions: Sequence[x509.ExtensionType] = (),
) -> Credential:
    """A certificate for `common_name`, signed by `issuer` (self-signed if None).

    `crl_url` adds a CRL distribution point, `ocsp_url` an AIA OCSP responder;
    `extensions` are added as they are (not critical).

    `key_usage=True` adds the usual one for the role, `False`/`None` omits it, an
    `x509.KeyUsage` is used as given. Validity defaults to now-1d .. now+30d.
    """
    key = key or new_key(key_type)
    now = datetime.now(UTC)
    subject = subject or name(common_name)
    signer_key = issuer.key if issuer else key
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - timedelta(days=1))
        .not_valid_after(not_after or now + timedelta(days=30))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
    )
    if basic_constraints:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=is_ca, path_length=path_length if is_ca else None), True
        )
    if key_usage is True:
        builder = builder.add_extension(_key_usage(ca=is_ca), True)
    elif isinstance(key_usage, x509.KeyUsage):
        builder = builder.add_extension(key_usage, True)
    if sans:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([general_name(s) for s in sans]), False
        )
    if crl_url:
        point = x509.DistributionPoint([x509.UniformResourceIdentifier(crl_url)],
                                       None, None, None)
        builder = builder.add_extension(x509.CRLDistributionPoints([point]), False)
    if ocsp_url:
        aia = x509.AccessDescription(AuthorityInformationAccessOID.OCSP,
                                     x509.UniformResourceIdentifier(ocsp_url))
        builder = builder.add_extension(x509.AuthorityInformationAccess([aia]), False)
    for extension in extensions:
        builder = builder.add_extension(extension, False)
    if issuer:
        ski = issuer.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
        builder = builder.add_extension(aki, False)
    return Credential(builder.sign(signer_key, _hash_for(signer_key)), key)


def make_ca(
    common_name: str = "xfrmctl Test Root CA",
    *,
    issuer: Credential | None = None,
    key_type: str = "ecdsa-p256",
    path_length: int | None = None,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
) -> Credential:
    """A root CA (self-signed) or, with `issuer`, an intermediate CA."""
    return make_cert(
        issuer,
        common_name,
        key_type=key_type,
        is_ca=True,
        path_length=path_length,
        not_before=not_before,
        not_after=not_after,
    )


def simple_cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: str,
          issuer_key: ec.EllipticCurvePrivateKey, ca: bool) -> x509.Certificate:
    now = datetime.now(UTC)
    return (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .sign(issuer_key, hashes.SHA256()))


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def make_crl(
    ca: Credential,
    revoked: Sequence[x509.Certificate] = (),
    *,
    last_update: datetime | None = None,
    next_update: datetime | None = None,
    signer: Credential | None = None,
    issuer_name: x509.Name | None = None,
) -> x509.CertificateRevocationList:
    """A CRL of `ca` listing `revoked` (reason keyCompromise), signed by `signer` (default
    the CA). Valid from now-1h to now+1d unless told otherwise."""
    now = datetime.now(UTC)
    builder = (x509.CertificateRevocationListBuilder()
               .issuer_name(issuer_name or ca.cert.subject)
               .last_update(last_update or now - timedelta(hours=1))
               .next_update(next_update or now + timedelta(days=1)))
    for cert in revoked:
        entry = (x509.RevokedCertificateBuilder().serial_number(cert.serial_number)
                 .revocation_date(now - timedelta(hours=2))
                 .add_extension(x509.CRLReason(x509.ReasonFlags.key_compromise), False)
                 .build())
        builder = builder.add_revoked_certificate(entry)
    key = (signer or ca).key
    return builder.sign(key, _hash_for(key))


def make_ocsp_signer(ca: Credential, common_name: str = "OCSP responder", *,
                     eku: bool = True) -> Credential:
    """A delegated OCSP responder certificate issued by `ca` (EKU OCSPSigning)."""
    extensions = [x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING])] if eku else []
    return make_cert(ca, common_name, extensions=extensions)


def make_ocsp_response(
    cert: x509.Certificate,
    issuer: Credential,
    *,
    status: str = "good",
    responder: Credential | None = None,
    nonce: bytes | None = None,
    this_update: datetime | None = None,
    next_update: datetime | None = None,
) -> bytes:
    """DER OCSP response about `cert` ("good", "revoked" or "unknown"), signed by
    `responder` (default the issuer itself; a delegated one is included)."""
    now = datetime.now(UTC)
    cert_status = {"good": ocsp.OCSPCertStatus.GOOD, "revoked": ocsp.OCSPCertStatus.REVOKED,
                   "unknown": ocsp.OCSPCertStatus.UNKNOWN}[status]
    revoked = status == "revoked"
    signer = responder or issuer
    builder = ocsp.OCSPResponseBuilder().add_response(
        cert=cert, issuer=issuer.cert, algorithm=hashes.SHA1(), cert_status=cert_status,
        this_update=this_update or now - timedelta(minutes=1),
        next_update=next_update or now + timedelta(hours=1),
        revocation_time=now - timedelta(hours=2) if revoked else None,
        revocation_reason=x509.ReasonFlags.key_compromise if revoked else None,
    ).responder_id(ocsp.OCSPResponderEncoding.HASH, signer.cert)
    if responder is not None:
        builder = builder.certificates([responder.cert])
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), False)
    response = builder.sign(signer.key, _hash_for(signer.key))
    return response.public_bytes(serialization.Encoding.DER)
