"""X.509 for IKEv2: trust anchors, chain checks, CERTREQ data, identities.

Chain validation here is the part IKE needs (RFC 4945 profile, RFC 5280 basics):
signatures up to a configured CA, validity at `now`, basicConstraints cA and
pathLenConstraint for issuers, keyUsage keyCertSign for issuers and
digitalSignature/nonRepudiation for the end entity where keyUsage is present.
Revocation (CRL/OCSP) is revocation.py's, on the path `verify` returns. Signature
checks use `cryptography`.
"""

import ipaddress
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Final, TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from .constants import IdType, NotifyType
from .errors import ProtocolError

_SHA1_SIZE: Final = 20
_MAX_CHAIN: Final = 8
_Ext = TypeVar("_Ext", bound=x509.ExtensionType)


def _failed(cert: x509.Certificate, why: str) -> ProtocolError:
    who = cert.subject.rfc4514_string() or "(empty subject)"
    return ProtocolError(f"certificate {who}: {why}", notify=NotifyType.AUTHENTICATION_FAILED)


def spki_sha1(cert: x509.Certificate) -> bytes:
    """SHA-1 of the DER SubjectPublicKeyInfo: the CA identifier of CERTREQ (RFC 7296 3.7)."""
    spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    digest = hashes.Hash(hashes.SHA1())
    digest.update(spki)
    return digest.finalize()


def _extension(cert: x509.Certificate, kind: type[_Ext]) -> _Ext | None:
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def _check_validity(cert: x509.Certificate, now: datetime) -> None:
    if now < cert.not_valid_before_utc:
        raise _failed(cert, f"not valid before {cert.not_valid_before_utc.isoformat()}")
    if now > cert.not_valid_after_utc:
        raise _failed(cert, f"expired {cert.not_valid_after_utc.isoformat()}")


def _check_end_entity(cert: x509.Certificate, now: datetime) -> None:
    _check_validity(cert, now)
    usage = _extension(cert, x509.KeyUsage)
    if usage is not None and not (usage.digital_signature or usage.content_commitment):
        raise _failed(cert, "keyUsage allows no digital signatures")


def _check_issuer(cert: x509.Certificate, now: datetime, below: int) -> None:
    """`below`: how many intermediate CAs sit between this issuer and the end entity."""
    _check_validity(cert, now)
    constraints = _extension(cert, x509.BasicConstraints)
    if constraints is None or not constraints.ca:
        raise _failed(cert, "is not a CA (basicConstraints cA is not set)")
    if constraints.path_length is not None and below > constraints.path_length:
        raise _failed(cert, f"pathLenConstraint {constraints.path_length} exceeded")
    usage = _extension(cert, x509.KeyUsage)
    if usage is not None and not usage.key_cert_sign:
        raise _failed(cert, "keyUsage does not allow signing certificates")


def issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """`issuer` signed `cert` (names match and the signature verifies)."""
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


class TrustStore:
    """The CAs we accept peer certificates from."""

    def __init__(self, cas: Sequence[x509.Certificate]) -> None:
        self._cas = list(cas)
        self._hashes = [spki_sha1(ca) for ca in self._cas]
        self._hash_set = frozenset(self._hashes)

    @property
    def cas(self) -> tuple[x509.Certificate, ...]:
        return tuple(self._cas)

    def certreq_data(self) -> bytes:
        """Certification Authority field of our CERTREQ: SHA-1 of each CA's SPKI."""
        return b"".join(self._hashes)

    def wants(self, certreq_data: bytes) -> bool:
        """Does a peer's CERTREQ name one of our CAs? (False for an empty CERTREQ.)"""
        if len(certreq_data) % _SHA1_SIZE:
            return False
        chunks = (certreq_data[i : i + _SHA1_SIZE] for i in range(0, len(certreq_data), _SHA1_SIZE))
        return any(chunk in self._hash_set for chunk in chunks)

    def _anchor_for(self, cert: x509.Certificate) -> x509.Certificate | None:
        return next((ca for ca in self._cas if issued_by(cert, ca)), None)

    def verify(
        self,
        end_entity: x509.Certificate,
        intermediates: Sequence[x509.Certificate],
        now: datetime,
    ) -> list[tuple[x509.Certificate, x509.Certificate]]:
        """Raise ProtocolError(AUTHENTICATION_FAILED) unless `end_entity` chains to a CA.
        Returns the path as (certificate, issuer) pairs from the end entity up."""
        _check_end_entity(end_entity, now)
        current, pool, below = end_entity, list(intermediates), 0
        path: list[tuple[x509.Certificate, x509.Certificate]] = []
        for _ in range(_MAX_CHAIN):
            anchor = self._anchor_for(current)
            if anchor is not None:
                _check_issuer(anchor, now, below)
                path.append((current, anchor))
                return path
            issuer = _find_issuer(current, pool)
            if issuer is None:
                raise _failed(current, "not issued by a trusted CA")
            _check_issuer(issuer, now, below)
            path.append((current, issuer))
            pool.remove(issuer)
            current, below = issuer, below + 1
        raise _failed(end_entity, f"chain longer than {_MAX_CHAIN}")


def _find_issuer(
    cert: x509.Certificate, candidates: Iterable[x509.Certificate]
) -> x509.Certificate | None:
    return next((c for c in candidates if issued_by(cert, c)), None)


def _san(cert: x509.Certificate) -> x509.SubjectAlternativeName | None:
    return _extension(cert, x509.SubjectAlternativeName)


def _text_in(values: Iterable[str], id_data: bytes) -> bool:
    try:
        wanted = id_data.decode("ascii").lower()
    except UnicodeDecodeError:
        return False
    return any(value.lower() == wanted for value in values)


def _ip_in(values: Iterable[object], id_data: bytes, size: int) -> bool:
    if len(id_data) != size:
        return False
    wanted = ipaddress.ip_address(id_data)
    return any(value == wanted for value in values)


def identity_matches(cert: x509.Certificate, id_type: int, id_data: bytes) -> bool:
    """Does the peer's ID payload name this certificate? DN = subject, others in SAN."""
    if id_type == IdType.DER_ASN1_DN:
        return cert.subject.public_bytes() == id_data
    san = _san(cert)
    if san is None:
        return False
    if id_type == IdType.FQDN:
        return _text_in(san.get_values_for_type(x509.DNSName), id_data)
    if id_type == IdType.RFC822_ADDR:
        return _text_in(san.get_values_for_type(x509.RFC822Name), id_data)
    if id_type in (IdType.IPV4_ADDR, IdType.IPV6_ADDR):
        size = 4 if id_type == IdType.IPV4_ADDR else 16
        return _ip_in(san.get_values_for_type(x509.IPAddress), id_data, size)
    return False


def id_for_certificate(cert: x509.Certificate) -> tuple[int, bytes]:
    """Our default identity with a certificate: its subject DN (ID_DER_ASN1_DN)."""
    return IdType.DER_ASN1_DN, cert.subject.public_bytes()
