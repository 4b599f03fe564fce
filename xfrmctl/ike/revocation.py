"""Certificate revocation (RFC 5280 CRLs, RFC 6960 OCSP) without I/O.

The core decides with what it holds: CRLs and OCSP responses in a `RevocationStore`,
verified against the issuing CA when they were added. What it lacks it asks the daemon
to fetch (the `RevocationFetch` event: the CRL distribution points and OCSP responders
named in certificates that already chained to a trusted CA and whose AUTH signature
verified), then decides again with what came back.

Policy when a status stays unknown, as strongSwan's `revocation`:
- strict: fail unless every certificate is known to be good;
- ifuri: fail if a certificate names a CRL/OCSP URI but no good answer was obtained;
- relaxed (strongSwan's default): fail only on a certificate known to be revoked;
- none: do not check (and fetch nothing).
Stale CRLs (past nextUpdate) still prove a revocation, never a good status.
Delta CRLs and indirect CRLs are not supported.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID

from .certs import issued_by

# An OCSP response without nextUpdate is fresh this long after its thisUpdate (as
# `openssl ocsp`'s default validity period); clocks may differ this much too.
OCSP_NO_NEXT_UPDATE: Final = timedelta(minutes=5)
CLOCK_SKEW: Final = timedelta(minutes=5)
MAX_URIS: Final = 4  # per certificate and kind: a certificate cannot make us fetch more


class RevocationPolicy(StrEnum):
    STRICT = "strict"
    IFURI = "ifuri"
    RELAXED = "relaxed"
    NONE = "none"


class CertStatus(StrEnum):
    GOOD = "good"
    REVOKED = "revoked"
    STALE = "stale"  # only a CRL past its nextUpdate that does not list it
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class OcspQuery:
    """Ask `url` about `cert` (issued by `issuer`)."""

    url: str
    cert: x509.Certificate = field(repr=False)
    issuer: x509.Certificate = field(repr=False)

    def __str__(self) -> str:
        return f"{self.url} serial {self.cert.serial_number:x}"


@dataclass(frozen=True, slots=True)
class CrlQuery:
    """Fetch the CRL at `url`, to be verified against `issuer`."""

    url: str
    issuer: x509.Certificate = field(repr=False)

    def __str__(self) -> str:
        return self.url


@dataclass(frozen=True, slots=True)
class Verdict:
    """`why` is None when the chain passes; `fetch` is what would help (when not yet asked)."""

    why: str | None
    crls: tuple[CrlQuery, ...] = ()
    ocsp: tuple[OcspQuery, ...] = ()

    @property
    def wants_fetch(self) -> bool:
        return bool(self.crls or self.ocsp)


@dataclass(frozen=True, slots=True)
class _Answer:
    status: CertStatus
    this_update: datetime
    next_update: datetime | None
    revoked_at: datetime | None = None
    reason: str = ""


def _who(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or f"serial {cert.serial_number:x}"


def verify_signature(key: object, signature: bytes, data: bytes,
                     algorithm: hashes.HashAlgorithm | None) -> bool:
    """A CRL's or OCSP response's signature with the signer's public key."""
    try:
        if isinstance(key, rsa.RSAPublicKey) and algorithm is not None:
            key.verify(signature, data, padding.PKCS1v15(), algorithm)
        elif isinstance(key, ec.EllipticCurvePublicKey) and algorithm is not None:
            key.verify(signature, data, ec.ECDSA(algorithm))
        elif isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
            key.verify(signature, data)
        else:
            return False
    except (InvalidSignature, UnsupportedAlgorithm, ValueError):
        return False
    return True


def _may_sign_crls(issuer: x509.Certificate) -> bool:
    try:
        usage = issuer.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return True
    return usage.crl_sign


def _cert_key(cert: x509.Certificate, issuer: x509.Certificate) -> tuple[bytes, int]:
    return issuer.subject.public_bytes() + _spki(issuer), cert.serial_number


def _spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def _uris(names: Sequence[x509.GeneralName]) -> list[str]:
    return [n.value for n in names if isinstance(n, x509.UniformResourceIdentifier)
            and n.value.lower().startswith("http://")]


def crl_uris(cert: x509.Certificate) -> tuple[str, ...]:
    """The HTTP CRL distribution points of a certificate (full names only)."""
    try:
        points = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    except x509.ExtensionNotFound:
        return ()
    found = [uri for p in points if p.full_name for uri in _uris(p.full_name)]
    return tuple(dict.fromkeys(found))[:MAX_URIS]


def ocsp_uris(cert: x509.Certificate) -> tuple[str, ...]:
    """The HTTP OCSP responders in a certificate's Authority Information Access."""
    try:
        aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    except x509.ExtensionNotFound:
        return ()
    found = _uris([d.access_location for d in aia
                   if d.access_method == AuthorityInformationAccessOID.OCSP])
    return tuple(dict.fromkeys(found))[:MAX_URIS]


def parse_crl(data: bytes) -> x509.CertificateRevocationList:
    """A CRL in DER or PEM; ValueError saying why not."""
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_crl(data)
        return x509.load_der_x509_crl(data)
    except ValueError as exc:
        raise ValueError(f"not a CRL (DER or PEM): {exc}") from None


def crl_issued_by(crl: x509.CertificateRevocationList, issuer: x509.Certificate) -> bool:
    """Is this CRL signed by `issuer` (name, cRLSign, signature)?"""
    if crl.issuer != issuer.subject or not _may_sign_crls(issuer):
        return False
    try:
        return crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
    except (TypeError, UnsupportedAlgorithm):
        return False


def ocsp_nonce(response: ocsp.OCSPResponse) -> bytes | None:
    try:
        return response.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
    except x509.ExtensionNotFound:
        return None


class RevocationStore:
    """CRLs and OCSP answers the core decides with; every entry was verified when added.

    One store serves every connection of a daemon (they share CAs). CRLs come from files,
    the API and distribution points; OCSP answers are kept until their nextUpdate."""

    def __init__(self) -> None:
        # by issuer (name + key), then by source (a file, an API object, a URL)
        self._crls: dict[bytes, dict[str, x509.CertificateRevocationList]] = {}
        self._ocsp: dict[tuple[bytes, int], _Answer] = {}

    # ----------------------------------------------------------------- adding

    def add_crl(self, crl: x509.CertificateRevocationList, issuer: x509.Certificate,
                source: str = "") -> bool:
        """Keep `crl` (for `source`) if it verifies against `issuer` and is not older than
        the one that source gave. ValueError when it does not verify."""
        if not crl_issued_by(crl, issuer):
            raise ValueError(f"CRL of {crl.issuer.rfc4514_string()} is not signed by "
                             f"the CA {_who(issuer)}")
        held = self._crls.setdefault(issuer.subject.public_bytes() + _spki(issuer), {})
        old = held.get(source)
        if old is not None and old.last_update_utc > crl.last_update_utc:
            return False
        held[source] = crl
        return True

    def remove_crls(self, source: str) -> None:
        """Forget the CRLs added with this source (a file or API object that went)."""
        for held in self._crls.values():
            held.pop(source, None)

    def crls(self) -> list[tuple[str, x509.CertificateRevocationList]]:
        return [item for held in self._crls.values() for item in held.items()]

    def _newest_crl(self, issuer: x509.Certificate) -> x509.CertificateRevocationList | None:
        held = self._crls.get(issuer.subject.public_bytes() + _spki(issuer))
        return max(held.values(), key=lambda c: c.last_update_utc) if held else None

    def add_ocsp_response(self, data: bytes, cert: x509.Certificate,
                          issuer: x509.Certificate, nonce: bytes | None,
                          now: datetime) -> CertStatus:
        """Verify an OCSP response about `cert` and keep its answer; ValueError if bad."""
        answer = _verify_ocsp(data, cert, issuer, nonce, now)
        self._ocsp[_cert_key(cert, issuer)] = answer
        return answer.status

    def prune(self, now: datetime) -> None:
        """Drop OCSP answers that went stale."""
        self._ocsp = {k: a for k, a in self._ocsp.items() if _fresh(a, now)}

    # ----------------------------------------------------------------- deciding

    def status(self, cert: x509.Certificate, issuer: x509.Certificate,
               now: datetime) -> tuple[CertStatus, str]:
        """What we know of `cert` at `now`, and how we know it."""
        answer = self._ocsp.get(_cert_key(cert, issuer))
        if answer is not None and _fresh(answer, now) and answer.status is not CertStatus.UNKNOWN:
            return answer.status, _describe(answer, "OCSP")
        crl = self._newest_crl(issuer)
        if crl is None:
            return CertStatus.UNKNOWN, "no CRL or OCSP answer"
        entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
        if entry is not None:
            return CertStatus.REVOKED, _describe(_revoked(entry, crl), "CRL")
        next_update = crl.next_update_utc
        if next_update is not None and now > next_update + CLOCK_SKEW:
            return CertStatus.STALE, f"CRL stale since {next_update.isoformat()}"
        return CertStatus.GOOD, "CRL"

    def check(self, path: Sequence[tuple[x509.Certificate, x509.Certificate]],
              policy: RevocationPolicy, now: datetime, *, fetched: bool) -> Verdict:
        """Judge a verified chain, given as (certificate, its issuer) pairs from the end
        entity up. Before a fetch (`fetched` False) an unknown status that a URI could
        settle asks for the fetch instead of failing."""
        if policy is RevocationPolicy.NONE:
            return Verdict(None)
        crls: list[CrlQuery] = []
        queries: list[OcspQuery] = []
        unsettled: list[str] = []
        for cert, issuer in path:
            status, how = self.status(cert, issuer, now)
            if status is CertStatus.REVOKED:
                return Verdict(f"certificate {_who(cert)} is revoked ({how})")
            ocsp_at, crl_at = ocsp_uris(cert), crl_uris(cert)
            if not fetched and not how.startswith("OCSP"):
                # OCSP first, as strongSwan: fresher than a CRL that says good
                queries += [OcspQuery(u, cert, issuer) for u in ocsp_at]
                if status is not CertStatus.GOOD:
                    crls += [CrlQuery(u, issuer) for u in crl_at]
            if status is CertStatus.GOOD:
                continue
            if policy is RevocationPolicy.STRICT or (
                    policy is RevocationPolicy.IFURI and (ocsp_at or crl_at)):
                unsettled.append(f"revocation status of {_who(cert)} unknown ({how})")
        if crls or queries:
            return Verdict("revocation status not yet fetched", tuple(crls), tuple(queries))
        return Verdict("; ".join(unsettled) if unsettled else None)


def _fresh(answer: _Answer, now: datetime) -> bool:
    if answer.this_update > now + CLOCK_SKEW:
        return False
    until = answer.next_update or answer.this_update + OCSP_NO_NEXT_UPDATE
    return now <= until + CLOCK_SKEW


def _describe(answer: _Answer, how: str) -> str:
    if answer.status is not CertStatus.REVOKED:
        return how
    when = answer.revoked_at.isoformat() if answer.revoked_at else "?"
    return f"{how}: revoked {when}" + (f", {answer.reason}" if answer.reason else "")


def _revoked(entry: x509.RevokedCertificate, crl: x509.CertificateRevocationList) -> _Answer:
    try:
        reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason.value
    except x509.ExtensionNotFound:
        reason = ""
    return _Answer(CertStatus.REVOKED, crl.last_update_utc, crl.next_update_utc,
                   entry.revocation_date_utc, reason)


def _verify_ocsp(data: bytes, cert: x509.Certificate, issuer: x509.Certificate,
                 nonce: bytes | None, now: datetime) -> _Answer:
    try:
        response = ocsp.load_der_ocsp_response(data)
    except ValueError as exc:
        raise ValueError(f"OCSP response does not parse: {exc}") from None
    if response.response_status is not ocsp.OCSPResponseStatus.SUCCESSFUL:
        raise ValueError(f"OCSP responder said {response.response_status.name}")
    got = ocsp_nonce(response)
    if nonce is not None and got is not None and got != nonce:
        raise ValueError("OCSP response nonce does not match our request (replayed?)")
    single = _single_response(response, cert, issuer)
    if not _signed_for(response, issuer, now):
        raise ValueError("OCSP response is not signed by the CA or a responder it delegated")
    status = {ocsp.OCSPCertStatus.GOOD: CertStatus.GOOD,
              ocsp.OCSPCertStatus.REVOKED: CertStatus.REVOKED}.get(single.certificate_status,
                                                                    CertStatus.UNKNOWN)
    reason = single.revocation_reason.value if single.revocation_reason else ""
    answer = _Answer(status, single.this_update_utc, single.next_update_utc,
                     single.revocation_time_utc, reason)
    if not _fresh(answer, now):
        raise ValueError("OCSP response is not current (thisUpdate/nextUpdate)")
    return answer


def _single_response(response: ocsp.OCSPResponse, cert: x509.Certificate,
                     issuer: x509.Certificate) -> ocsp.OCSPSingleResponse:
    for single in response.responses:
        algorithm = single.hash_algorithm
        wanted = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, algorithm).build()
        if (single.serial_number == cert.serial_number
                and single.issuer_key_hash == wanted.issuer_key_hash
                and single.issuer_name_hash == wanted.issuer_name_hash):
            return single
    raise ValueError(f"OCSP response says nothing about {_who(cert)}")


def _signed_for(response: ocsp.OCSPResponse, issuer: x509.Certificate, now: datetime) -> bool:
    """Signed by the CA itself, or by a certificate it issued for OCSPSigning."""
    signers = [issuer] + [c for c in response.certificates if _delegated(c, issuer, now)]
    return any(verify_signature(s.public_key(), response.signature,
                                response.tbs_response_bytes, response.signature_hash_algorithm)
               for s in signers)


def _delegated(cert: x509.Certificate, issuer: x509.Certificate, now: datetime) -> bool:
    try:
        usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return False
    return (ExtendedKeyUsageOID.OCSP_SIGNING in usage and issued_by(cert, issuer)
            and cert.not_valid_before_utc <= now <= cert.not_valid_after_utc)
