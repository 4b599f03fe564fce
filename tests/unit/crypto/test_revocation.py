"""Revocation decisions without I/O (xfrmctl/ike/revocation.py): CRLs and OCSP responses
verified against the issuing CA, and strongSwan's policies when a status stays unknown."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp

from tests.support.pki import (
    Credential,
    make_ca,
    make_cert,
    make_crl,
    make_ocsp_response,
    make_ocsp_signer,
)
from xfrmctl.ike.revocation import (
    CertStatus,
    RevocationPolicy,
    RevocationStore,
    crl_uris,
    ocsp_uris,
    parse_crl,
)

CRL_URL = "http://198.51.100.80/ca.crl"
OCSP_URL = "http://198.51.100.80/ocsp"


class Pki:
    def __init__(self) -> None:
        self.ca = make_ca("Revocation Test CA")
        self.other = make_ca("Another CA")
        self.plain = make_cert(self.ca, "plain.example")
        self.with_crl = make_cert(self.ca, "crl.example", crl_url=CRL_URL)
        self.with_ocsp = make_cert(self.ca, "ocsp.example", ocsp_url=OCSP_URL)


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki()


def now() -> datetime:
    return datetime.now(UTC)


def path(cred: Credential, ca: Credential) -> list[tuple[x509.Certificate, x509.Certificate]]:
    return [(cred.cert, ca.cert)]


# ----------------------------------------------------------------- CRLs


def test_crl_lists_revoked_certificate(pki: Pki) -> None:
    store = RevocationStore()
    store.add_crl(make_crl(pki.ca, [pki.plain.cert]), pki.ca.cert)
    status, how = store.status(pki.plain.cert, pki.ca.cert, now())
    assert status is CertStatus.REVOKED
    assert "CRL" in how and "key_compromise" in how.replace("keyCompromise", "key_compromise")
    assert store.status(pki.with_crl.cert, pki.ca.cert, now())[0] is CertStatus.GOOD


def test_crl_not_signed_by_the_ca_is_refused(pki: Pki) -> None:
    store = RevocationStore()
    forged = make_crl(pki.ca, [pki.plain.cert], signer=pki.other)  # the CA's name, wrong key
    with pytest.raises(ValueError, match="not signed by"):
        store.add_crl(forged, pki.ca.cert)
    with pytest.raises(ValueError, match="not signed by"):
        store.add_crl(make_crl(pki.other), pki.ca.cert)
    assert store.status(pki.plain.cert, pki.ca.cert, now())[0] is CertStatus.UNKNOWN


def test_stale_crl_proves_revocation_but_not_good_status(pki: Pki) -> None:
    store = RevocationStore()
    old = now() - timedelta(days=3)
    store.add_crl(make_crl(pki.ca, [pki.plain.cert], last_update=old,
                           next_update=old + timedelta(days=1)), pki.ca.cert)
    assert store.status(pki.plain.cert, pki.ca.cert, now())[0] is CertStatus.REVOKED
    assert store.status(pki.with_crl.cert, pki.ca.cert, now())[0] is CertStatus.STALE


def test_newest_crl_wins_and_sources_are_removed(pki: Pki) -> None:
    store = RevocationStore()
    store.add_crl(make_crl(pki.ca, [pki.plain.cert], last_update=now() - timedelta(hours=5)),
                  pki.ca.cert, source="file")
    store.add_crl(make_crl(pki.ca, []), pki.ca.cert, source="http")  # newer: not listed
    assert store.status(pki.plain.cert, pki.ca.cert, now())[0] is CertStatus.GOOD
    store.remove_crls("http")
    assert store.status(pki.plain.cert, pki.ca.cert, now())[0] is CertStatus.REVOKED


def test_parse_crl_der_and_pem(pki: Pki) -> None:
    crl = make_crl(pki.ca, [pki.plain.cert])
    assert parse_crl(crl.public_bytes(Encoding.DER)) == crl
    assert parse_crl(crl.public_bytes(Encoding.PEM)) == crl
    with pytest.raises(ValueError, match="not a CRL"):
        parse_crl(b"garbage")


def test_uris_from_extensions(pki: Pki) -> None:
    assert crl_uris(pki.with_crl.cert) == (CRL_URL,)
    assert ocsp_uris(pki.with_ocsp.cert) == (OCSP_URL,)
    assert crl_uris(pki.plain.cert) == () and ocsp_uris(pki.plain.cert) == ()
    ldap = make_cert(pki.ca, "ldap.example", crl_url="ldap://198.51.100.80/cn=crl")
    assert crl_uris(ldap.cert) == ()  # only HTTP is fetched


# ----------------------------------------------------------------- OCSP


def test_ocsp_signed_by_the_ca(pki: Pki) -> None:
    store = RevocationStore()
    nonce = b"n" * 16
    good = make_ocsp_response(pki.with_ocsp.cert, pki.ca, nonce=nonce)
    assert store.add_ocsp_response(good, pki.with_ocsp.cert, pki.ca.cert, nonce,
                                   now()) is CertStatus.GOOD
    assert store.status(pki.with_ocsp.cert, pki.ca.cert, now())[0] is CertStatus.GOOD
    revoked = make_ocsp_response(pki.with_ocsp.cert, pki.ca, status="revoked", nonce=nonce)
    store.add_ocsp_response(revoked, pki.with_ocsp.cert, pki.ca.cert, nonce, now())
    status, how = store.status(pki.with_ocsp.cert, pki.ca.cert, now())
    assert status is CertStatus.REVOKED and how.startswith("OCSP")


def test_ocsp_delegated_signer(pki: Pki) -> None:
    store = RevocationStore()
    signer = make_ocsp_signer(pki.ca)
    data = make_ocsp_response(pki.with_ocsp.cert, pki.ca, status="revoked", responder=signer)
    assert store.add_ocsp_response(data, pki.with_ocsp.cert, pki.ca.cert, None,
                                   now()) is CertStatus.REVOKED


@pytest.mark.parametrize("signer", ["no-eku", "other-ca", "other-ca-eku"])
def test_ocsp_signer_not_delegated_by_the_ca_is_refused(pki: Pki, signer: str) -> None:
    responder = {"no-eku": lambda: make_ocsp_signer(pki.ca, eku=False),
                 "other-ca": lambda: pki.other,
                 "other-ca-eku": lambda: make_ocsp_signer(pki.other)}[signer]()
    data = make_ocsp_response(pki.with_ocsp.cert, pki.ca, responder=responder)
    with pytest.raises(ValueError, match="not signed by the CA"):
        RevocationStore().add_ocsp_response(data, pki.with_ocsp.cert, pki.ca.cert, None, now())


def test_ocsp_nonce_mismatch_is_refused(pki: Pki) -> None:
    data = make_ocsp_response(pki.with_ocsp.cert, pki.ca, nonce=b"a" * 16)
    with pytest.raises(ValueError, match="nonce"):
        RevocationStore().add_ocsp_response(data, pki.with_ocsp.cert, pki.ca.cert,
                                            b"b" * 16, now())


def test_ocsp_answer_about_another_certificate_is_refused(pki: Pki) -> None:
    data = make_ocsp_response(pki.plain.cert, pki.ca)
    with pytest.raises(ValueError, match="says nothing"):
        RevocationStore().add_ocsp_response(data, pki.with_ocsp.cert, pki.ca.cert, None, now())


def test_ocsp_stale_answer_is_refused_and_cached_until_next_update(pki: Pki) -> None:
    old = now() - timedelta(days=2)
    stale = make_ocsp_response(pki.with_ocsp.cert, pki.ca, this_update=old,
                               next_update=old + timedelta(hours=1))
    with pytest.raises(ValueError, match="not current"):
        RevocationStore().add_ocsp_response(stale, pki.with_ocsp.cert, pki.ca.cert, None, now())
    store = RevocationStore()
    fresh = make_ocsp_response(pki.with_ocsp.cert, pki.ca,
                               next_update=now() + timedelta(minutes=30))
    store.add_ocsp_response(fresh, pki.with_ocsp.cert, pki.ca.cert, None, now())
    assert store.status(pki.with_ocsp.cert, pki.ca.cert, now())[0] is CertStatus.GOOD
    later = now() + timedelta(hours=1)
    assert store.status(pki.with_ocsp.cert, pki.ca.cert, later)[0] is CertStatus.UNKNOWN


def test_ocsp_error_status_is_refused(pki: Pki) -> None:
    data = ocsp.OCSPResponseBuilder.build_unsuccessful(
        ocsp.OCSPResponseStatus.TRY_LATER).public_bytes(Encoding.DER)
    with pytest.raises(ValueError, match="TRY_LATER"):
        RevocationStore().add_ocsp_response(data, pki.with_ocsp.cert, pki.ca.cert, None, now())


# ----------------------------------------------------------------- policies


@pytest.mark.parametrize(("policy", "cert", "fails"), [
    (RevocationPolicy.STRICT, "plain", True),  # nothing known: strict fails
    (RevocationPolicy.IFURI, "plain", False),  # no URI: nothing could be known
    (RevocationPolicy.IFURI, "with_crl", True),  # a URI, but no answer came
    (RevocationPolicy.RELAXED, "with_crl", False),
    (RevocationPolicy.NONE, "with_crl", False),
])
def test_policy_when_status_unknown(pki: Pki, policy: RevocationPolicy, cert: str,
                                    fails: bool) -> None:
    verdict = RevocationStore().check(path(getattr(pki, cert), pki.ca), policy, now(),
                                      fetched=True)
    assert (verdict.why is not None) is fails
    assert not verdict.wants_fetch


@pytest.mark.parametrize("policy", [RevocationPolicy.STRICT, RevocationPolicy.IFURI,
                                    RevocationPolicy.RELAXED])
def test_revoked_fails_under_every_checking_policy(pki: Pki, policy: RevocationPolicy) -> None:
    store = RevocationStore()
    store.add_crl(make_crl(pki.ca, [pki.with_crl.cert]), pki.ca.cert)
    verdict = store.check(path(pki.with_crl, pki.ca), policy, now(), fetched=False)
    assert verdict.why is not None and "revoked" in verdict.why
    assert not verdict.wants_fetch
    assert store.check(path(pki.with_crl, pki.ca), RevocationPolicy.NONE, now(),
                       fetched=False).why is None


def test_unknown_with_uris_asks_for_a_fetch_once(pki: Pki) -> None:
    store = RevocationStore()
    both = make_cert(pki.ca, "both.example", crl_url=CRL_URL, ocsp_url=OCSP_URL)
    verdict = store.check(path(both, pki.ca), RevocationPolicy.RELAXED, now(), fetched=False)
    assert [q.url for q in verdict.crls] == [CRL_URL]
    assert [(q.url, q.cert) for q in verdict.ocsp] == [(OCSP_URL, both.cert)]
    assert verdict.crls[0].issuer == pki.ca.cert
    # a fresh CRL held: nothing to fetch (the cache until nextUpdate)
    store.add_crl(make_crl(pki.ca), pki.ca.cert, source=CRL_URL)
    verdict = store.check(path(pki.with_crl, pki.ca), RevocationPolicy.STRICT, now(),
                          fetched=False)
    assert verdict.why is None and not verdict.wants_fetch


def test_intermediate_revoked_by_the_root(pki: Pki) -> None:
    sub = make_ca("Revoked Sub CA", issuer=pki.ca)
    leaf = make_cert(sub, "leaf.example")
    store = RevocationStore()
    store.add_crl(make_crl(pki.ca, [sub.cert]), pki.ca.cert)
    store.add_crl(make_crl(sub), sub.cert)
    chain = [(leaf.cert, sub.cert), (sub.cert, pki.ca.cert)]
    verdict = store.check(chain, RevocationPolicy.STRICT, now(), fetched=True)
    assert verdict.why is not None and "Revoked Sub CA" in verdict.why


def test_ocsp_asked_even_when_a_crl_says_good(pki: Pki) -> None:
    """As strongSwan: OCSP (fresher) first; a held CRL that does not list the certificate
    does not stop the query, and the responder's "revoked" wins."""
    both = make_cert(pki.ca, "both2.example", crl_url=CRL_URL, ocsp_url=OCSP_URL)
    store = RevocationStore()
    store.add_crl(make_crl(pki.ca), pki.ca.cert)
    verdict = store.check(path(both, pki.ca), RevocationPolicy.RELAXED, now(), fetched=False)
    assert [q.url for q in verdict.ocsp] == [OCSP_URL] and not verdict.crls
    store.add_ocsp_response(make_ocsp_response(both.cert, pki.ca, status="revoked"),
                            both.cert, pki.ca.cert, None, now())
    verdict = store.check(path(both, pki.ca), RevocationPolicy.RELAXED, now(), fetched=True)
    assert verdict.why is not None and "revoked (OCSP" in verdict.why
    # a fresh "good" answer held: nothing to fetch
    store.add_ocsp_response(make_ocsp_response(both.cert, pki.ca), both.cert, pki.ca.cert,
                            None, now())
    verdict = store.check(path(both, pki.ca), RevocationPolicy.STRICT, now(), fetched=False)
    assert verdict.why is None and not verdict.wants_fetch
