"""Revocation in IKE_AUTH with two in-memory peers: CRLs and OCSP answers the core holds,
the fetch it asks the daemon for (RevocationFetch) only after the AUTH signature verified,
the parked exchange resumed with what came back, and our chain cut at the CA a CERTREQ
names."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from tests.support.ike_pair import NET_A, NET_B, Pair, cert_config, child, make_pair
from tests.support.pki import (
    Credential,
    make_ca,
    make_cert,
    make_crl,
    make_ocsp_response,
)
from xfrmctl.ike.certs import spki_sha1
from xfrmctl.ike.config import AuthMethodName, IkeConfig, LocalAuth
from xfrmctl.ike.events import IkeSaUp, NegotiationFailed, RevocationFetch
from xfrmctl.ike.revocation import RevocationPolicy, RevocationStore
from xfrmctl.ike.tasks.ike_auth import _intermediates_for

CRL_URL = "http://198.51.100.80/ca.crl"
OCSP_URL = "http://198.51.100.80/ocsp"


class Pki:
    def __init__(self) -> None:
        self.root = make_ca("Revocation Root CA")
        self.gw_a = make_cert(self.root, "gw-a.example", crl_url=CRL_URL)
        self.gw_a_plain = make_cert(self.root, "gw-a2.example")
        self.gw_b = make_cert(self.root, "gw-b.example", ocsp_url=OCSP_URL)


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki()


def conf(pki: Pki, cred: Credential, store: RevocationStore | None,
         policy: RevocationPolicy = RevocationPolicy.RELAXED, *, side: str) -> IkeConfig:
    local, remote = (NET_A, NET_B) if side == "a" else (NET_B, NET_A)
    base = cert_config(cred=cred, trust=[pki.root.cert], children=(child("lan", local, remote),))
    return replace(base, remote_auth=replace(base.remote_auth, revocation=policy, crls=store))


def pair_of(pki: Pki, *, store_a: RevocationStore | None = None,
            store_b: RevocationStore | None = None, cred_a: Credential | None = None,
            policy_b: RevocationPolicy = RevocationPolicy.RELAXED) -> Pair:
    """A side without a store does not check (policy none)."""
    if store_b is None:
        policy_b = RevocationPolicy.NONE
    policy_a = RevocationPolicy.RELAXED if store_a is not None else RevocationPolicy.NONE
    return make_pair(conf(pki, cred_a or pki.gw_a, store_a, policy_a, side="a"),
                     conf(pki, pki.gw_b, store_b, policy_b, side="b"), wall_clock=True)


def start(pair: Pair) -> None:
    pair.a.initiate("net", pair.endpoint("a"), pair.endpoint("b"), pair.now)
    pair.pump()


def now() -> datetime:
    return datetime.now(UTC)


def failure(pair: Pair, side: str) -> NegotiationFailed:
    (failed,) = pair.of(side, NegotiationFailed)
    return failed


def test_revoked_initiator_refused_with_a_held_crl(pki: Pki) -> None:
    store = RevocationStore()
    store.add_crl(make_crl(pki.root, [pki.gw_a.cert]), pki.root.cert)
    pair = pair_of(pki, store_b=store)
    start(pair)
    assert not pair.of("b", IkeSaUp) and not pair.of("a", IkeSaUp)
    assert "revoked" in failure(pair, "b").message
    assert not pair.of("b", RevocationFetch)  # the CRL held settled it


def test_unknown_status_parks_the_exchange_until_the_fetch_came(pki: Pki) -> None:
    store = RevocationStore()
    pair = pair_of(pki, store_b=store)
    start(pair)
    (fetch,) = pair.of("b", RevocationFetch)
    assert [q.url for q in fetch.crls] == [CRL_URL] and fetch.crls[0].issuer == pki.root.cert
    assert not pair.of("a", IkeSaUp) and not pair.of("b", IkeSaUp)
    pair.advance(10)  # the initiator retransmits: dropped, no answer yet, no second fetch
    assert len(pair.of("b", RevocationFetch)) == 1 and not pair.of("a", IkeSaUp)
    store.add_crl(make_crl(pki.root, [pki.gw_a.cert]), pki.root.cert, source=CRL_URL)
    pair.b.resume_auth(fetch.ike_sa, pair.now)
    pair.pump()
    assert "revoked" in failure(pair, "b").message
    assert not pair.of("a", IkeSaUp)


def test_resumed_exchange_with_a_good_crl_comes_up(pki: Pki) -> None:
    store = RevocationStore()
    pair = pair_of(pki, store_b=store, policy_b=RevocationPolicy.STRICT)
    start(pair)
    (fetch,) = pair.of("b", RevocationFetch)
    pair.advance(5)
    store.add_crl(make_crl(pki.root, []), pki.root.cert, source=CRL_URL)
    pair.b.resume_auth(fetch.ike_sa, pair.now)
    pair.pump()
    assert pair.of("a", IkeSaUp) and pair.of("b", IkeSaUp)
    assert not pair.of("a", NegotiationFailed) and not pair.of("b", NegotiationFailed)


@pytest.mark.parametrize(("policy", "comes_up"), [(RevocationPolicy.IFURI, False),
                                                  (RevocationPolicy.RELAXED, True)])
def test_fetch_that_brought_nothing(pki: Pki, policy: RevocationPolicy, comes_up: bool) -> None:
    pair = pair_of(pki, store_b=RevocationStore(), policy_b=policy)
    start(pair)
    (fetch,) = pair.of("b", RevocationFetch)
    pair.b.resume_auth(fetch.ike_sa, pair.now)  # the daemon gave up (time limit)
    pair.pump()
    assert bool(pair.of("b", IkeSaUp)) is comes_up
    if not comes_up:
        assert "unknown" in failure(pair, "b").message


def test_no_fetch_before_the_auth_signature_verified(pki: Pki) -> None:
    """A peer with a valid certificate but not its key cannot make us fetch anything."""
    impostor = Credential(pki.gw_a.cert, make_cert(pki.root, "other.example").key)
    pair = pair_of(pki, store_b=RevocationStore(), cred_a=impostor)
    start(pair)
    assert not pair.of("b", RevocationFetch)
    assert "AUTH" in failure(pair, "b").message or "signature" in failure(pair, "b").message


def test_no_fetch_without_uris_or_with_policy_none(pki: Pki) -> None:
    pair = pair_of(pki, store_b=RevocationStore(), cred_a=pki.gw_a_plain)
    start(pair)
    assert not pair.of("b", RevocationFetch) and pair.of("b", IkeSaUp)
    pair = pair_of(pki, store_b=RevocationStore(), policy_b=RevocationPolicy.NONE)
    start(pair)
    assert not pair.of("b", RevocationFetch) and pair.of("b", IkeSaUp)


def test_initiator_checks_the_responder_by_ocsp(pki: Pki) -> None:
    store = RevocationStore()
    pair = pair_of(pki, store_a=store)
    start(pair)
    (fetch,) = pair.of("a", RevocationFetch)
    (query,) = fetch.ocsp
    assert query.url == OCSP_URL and query.cert == pki.gw_b.cert
    response = make_ocsp_response(pki.gw_b.cert, pki.root, status="revoked", nonce=b"x" * 16)
    store.add_ocsp_response(response, query.cert, query.issuer, b"x" * 16, now())
    pair.a.resume_auth(fetch.ike_sa, pair.now)
    pair.pump()
    assert "revoked" in failure(pair, "a").message
    assert not pair.of("a", IkeSaUp)


def test_initiator_resumes_and_comes_up_with_a_good_ocsp_answer(pki: Pki) -> None:
    store = RevocationStore()
    pair = pair_of(pki, store_a=store)
    start(pair)
    (fetch,) = pair.of("a", RevocationFetch)
    (query,) = fetch.ocsp
    store.add_ocsp_response(make_ocsp_response(pki.gw_b.cert, pki.root), query.cert,
                            query.issuer, None, now())
    pair.a.resume_auth(fetch.ike_sa, pair.now)
    pair.pump()
    assert pair.of("a", IkeSaUp) and pair.of("b", IkeSaUp)


def test_resume_of_a_gone_sa_is_harmless(pki: Pki) -> None:
    pair = pair_of(pki, store_b=RevocationStore())
    start(pair)
    (fetch,) = pair.of("b", RevocationFetch)
    pair.advance(60)  # the half-open SA timed out meanwhile
    pair.b.resume_auth(fetch.ike_sa, pair.now)
    pair.pump()
    assert not pair.of("b", IkeSaUp)


def test_chain_is_cut_at_the_ca_the_certreq_names() -> None:
    root = make_ca("Chain Root")
    sub1 = make_ca("Chain Sub 1", issuer=root)
    sub2 = make_ca("Chain Sub 2", issuer=sub1)
    leaf = make_cert(sub2, "leaf.example")
    local = LocalAuth(AuthMethodName.PUBKEY, certificate=leaf.cert,
                      intermediates=(sub2.cert, sub1.cert))
    assert _intermediates_for(local, frozenset()) == [sub2.cert, sub1.cert]
    assert _intermediates_for(local, frozenset({spki_sha1(root.cert)})) == [sub2.cert, sub1.cert]
    assert _intermediates_for(local, frozenset({spki_sha1(sub1.cert)})) == [sub2.cert]
    assert _intermediates_for(local, frozenset({spki_sha1(sub2.cert)})) == []


def test_without_a_store_nothing_is_fetched(pki: Pki) -> None:
    """A configuration without a RevocationStore cannot take fetched answers: it decides
    with nothing known (relaxed passes, strict fails) instead of waiting forever."""
    pair = make_pair(conf(pki, pki.gw_a, None, RevocationPolicy.NONE, side="a"),
                     conf(pki, pki.gw_b, None, RevocationPolicy.RELAXED, side="b"),
                     wall_clock=True)
    start(pair)
    assert not pair.of("b", RevocationFetch) and pair.of("b", IkeSaUp)
    pair = make_pair(conf(pki, pki.gw_a, None, RevocationPolicy.NONE, side="a"),
                     conf(pki, pki.gw_b, None, RevocationPolicy.STRICT, side="b"),
                     wall_clock=True)
    start(pair)
    assert not pair.of("b", RevocationFetch) and "unknown" in failure(pair, "b").message
