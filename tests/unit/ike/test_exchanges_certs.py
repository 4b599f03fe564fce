"""Two in-memory peers authenticating with X.509 certificates (RFC 7296 2.15, RFC 7427).

Every end-entity certificate comes from an intermediate CA under a test root; peers trust
the root only, so the intermediate must travel in a CERT payload. Default identities are
the certificate subject DNs; FQDN and IP identities must be subjectAltNames.

Our CERT policy (IkeConfig.send_cert): "ifasked" by default, i.e. CERT payloads go out
when the peer sent a CERTREQ (we send one whenever we trust a CA); "always" and "never"
override it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from tests.support.ike_pair import ADDR_A, ADDR_B, Pair, cert_config, make_pair, psk_config
from tests.support.pki import Credential, make_ca, make_cert
from xfrmctl.ike import auth, ts
from xfrmctl.ike.config import ChildConfig, Identity, IkeConfig, SendCert
from xfrmctl.ike.constants import AuthMethod, HashAlgorithm, IdType
from xfrmctl.ike.events import (
    ChildSaNegotiated,
    FailureReason,
    IkeSaDown,
    IkeSaUp,
    NegotiationFailed,
)
from xfrmctl.ike.sa import IkeState

LAN_A = ChildConfig("lan", (ts.parse("198.51.100.0/24"),), (ts.parse("203.0.113.0/24"),))
LAN_B = ChildConfig("lan", (ts.parse("203.0.113.0/24"),), (ts.parse("198.51.100.0/24"),))


class Pki:
    def __init__(self) -> None:
        self.root = make_ca("xfrmctl Test Root CA")
        self.sub = make_ca("xfrmctl Test Sub CA", issuer=self.root)
        self.other_root = make_ca("Untrusted Root CA")
        self._cache: dict[tuple[str, str], Credential] = {}

    def gateway(self, side: str, key_type: str = "ecdsa-p256") -> Credential:
        """gw-a.example (192.0.2.1) or gw-b.example (192.0.2.2), issued by the sub CA."""
        key = (side, key_type)
        if key not in self._cache:
            addr = ADDR_A if side == "a" else ADDR_B
            self._cache[key] = make_cert(self.sub, f"gw-{side}.example", key_type=key_type,
                                         sans=[f"gw-{side}.example", addr])
        return self._cache[key]


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki()


def config(pki: Pki, side: str, cred: Credential | None = None, **kwargs: Any) -> IkeConfig:
    kwargs.setdefault("children", (LAN_A if side == "a" else LAN_B,))
    return cert_config(cred=cred or pki.gateway(side), trust=[pki.root.cert],
                       intermediates=[pki.sub.cert], **kwargs)


def up(pair: Pair) -> None:
    pair.a.initiate("net", pair.endpoint("a"), pair.endpoint("b"), pair.now)
    pair.pump()


def assert_up_with_matching_children(pair: Pair) -> tuple[IkeSaUp, IkeSaUp]:
    (up_a,), (up_b,) = pair.of("a", IkeSaUp), pair.of("b", IkeSaUp)
    (ca,), (cb,) = pair.of("a", ChildSaNegotiated), pair.of("b", ChildSaNegotiated)
    assert ca.spi_out == cb.spi_in and ca.spi_in == cb.spi_out
    assert ca.encr_key_out == cb.encr_key_in and ca.encr_key_in == cb.encr_key_out
    assert pair.a.all()[0].state is IkeState.ESTABLISHED
    assert pair.b.all()[0].state is IkeState.ESTABLISHED
    return up_a, up_b


Signed = list[tuple[int, bytes]]


@pytest.fixture
def signatures(monkeypatch: pytest.MonkeyPatch) -> Signed:
    """Every (AUTH method, AUTH data) produced by auth.sign during the test."""
    made: Signed = []
    real: Callable[[PrivateKeyTypes, bytes, set[int]], tuple[int, bytes]] = auth.sign

    def spy(key: PrivateKeyTypes, octets: bytes, hashes: set[int]) -> tuple[int, bytes]:
        result = real(key, octets, hashes)
        made.append(result)
        return result

    monkeypatch.setattr(auth, "sign", spy)
    return made


def algorithm_identifier(data: bytes) -> bytes:
    return data[1:1 + data[0]]


@pytest.mark.parametrize(("key_type", "kind", "hash_id"), [
    ("ecdsa-p256", auth.KeyKind.ECDSA, HashAlgorithm.SHA2_256),
    ("ecdsa-p384", auth.KeyKind.ECDSA, HashAlgorithm.SHA2_384),
    ("ed25519", auth.KeyKind.ED25519, HashAlgorithm.IDENTITY),
    ("rsa2048", auth.KeyKind.RSA_PSS, HashAlgorithm.SHA2_256),
])
def test_certificates_with_intermediate_ca(pki: Pki, signatures: Signed, key_type: str,
                                           kind: auth.KeyKind, hash_id: int) -> None:
    pair = make_pair(config(pki, "a", pki.gateway("a", key_type)),
                     config(pki, "b", pki.gateway("b", key_type)), wall_clock=True)
    up(pair)
    up_a, up_b = assert_up_with_matching_children(pair)
    # Default identities: the subject DNs, proven by the certificates.
    assert up_a.remote_id == Identity(IdType.DER_ASN1_DN,
                                      pki.gateway("b", key_type).subject_der)
    assert up_b.remote_id == Identity(IdType.DER_ASN1_DN,
                                      pki.gateway("a", key_type).subject_der)
    # RFC 7427 digital signatures with the algorithm the key type calls for.
    expected = auth.ALGORITHM_IDENTIFIERS[auth.SignatureAlgorithm(kind, hash_id)]
    assert [m for m, _ in signatures] == [AuthMethod.DIGITAL_SIGNATURE] * 2
    assert all(algorithm_identifier(data) == expected for _, data in signatures)


def test_fqdn_and_ip_identities_from_subject_alt_names(pki: Pki) -> None:
    a = config(pki, "a", local_id=Identity.parse("@gw-a.example"),
               remote_id=Identity.parse(ADDR_B))
    b = config(pki, "b", local_id=Identity.parse(ADDR_B),
               remote_id=Identity.parse("gw-a.example"))
    pair = make_pair(a, b, wall_clock=True)
    up(pair)
    up_a, up_b = assert_up_with_matching_children(pair)
    assert up_a.remote_id == Identity.parse(ADDR_B) and str(up_b.remote_id) == "gw-a.example"
    assert up_a.local_id == Identity(IdType.FQDN, b"gw-a.example")


def test_configured_dn_identity_matches_the_subject(pki: Pki) -> None:
    dn = Identity.parse("O=xfrmctl test, CN=gw-b.example")
    pair = make_pair(config(pki, "a", remote_id=dn), config(pki, "b"), wall_clock=True)
    up(pair)
    up_a, _ = assert_up_with_matching_children(pair)
    assert up_a.remote_id == dn


def assert_auth_failed(pair: Pair, side: str, why: str) -> NegotiationFailed:
    (fail,) = pair.of(side, NegotiationFailed)
    assert isinstance(fail, NegotiationFailed)
    assert fail.reason is FailureReason.AUTHENTICATION_FAILED
    assert why in fail.message, fail.message
    return fail


def assert_both_gone(pair: Pair) -> None:
    assert not pair.a.all() and not pair.b.all()
    assert not pair.of("a", ChildSaNegotiated)


def test_responder_certificate_from_an_untrusted_ca(pki: Pki) -> None:
    rogue = make_cert(pki.other_root, "gw-b.example", sans=["gw-b.example"])
    pair = make_pair(config(pki, "a"), config(pki, "b", rogue), wall_clock=True)
    up(pair)
    assert_auth_failed(pair, "a", "not issued by a trusted CA")
    # The responder had finished IKE_AUTH; the initiator's INFORMATIONAL tells it why.
    assert_auth_failed(pair, "b", "peer rejected our authentication")
    assert pair.of("b", IkeSaDown)[0].reason == FailureReason.AUTHENTICATION_FAILED.value
    assert not pair.a.all() and not pair.b.all()


def test_initiator_certificate_from_an_untrusted_ca(pki: Pki) -> None:
    rogue = make_cert(pki.other_root, "gw-a.example", sans=["gw-a.example"])
    pair = make_pair(config(pki, "a", rogue), config(pki, "b"), wall_clock=True)
    up(pair)
    assert_auth_failed(pair, "b", "not issued by a trusted CA")
    assert_auth_failed(pair, "a", "AUTHENTICATION_FAILED")
    assert_both_gone(pair)


def test_missing_intermediate_breaks_the_chain(pki: Pki) -> None:
    a = cert_config(cred=pki.gateway("a"), trust=[pki.root.cert], children=(LAN_A,))
    pair = make_pair(a, config(pki, "b"), wall_clock=True)
    up(pair)
    assert_auth_failed(pair, "b", "not issued by a trusted CA")
    assert_both_gone(pair)


def test_identity_not_in_the_certificate(pki: Pki) -> None:
    pair = make_pair(config(pki, "a", local_id=Identity.parse("@gw-x.example")),
                     config(pki, "b"), wall_clock=True)
    up(pair)
    fail = assert_auth_failed(pair, "b", "gw-x.example is not in the certificate")
    assert "gw-a.example" in fail.message
    assert_both_gone(pair)


def test_responder_identity_not_the_configured_one(pki: Pki) -> None:
    pair = make_pair(config(pki, "a", remote_id=Identity.parse("@gw-c.example")),
                     config(pki, "b"), wall_clock=True)
    up(pair)
    fail = assert_auth_failed(pair, "a", "is not the configured gw-c.example")
    assert fail.ours == ("gw-c.example",)
    assert_auth_failed(pair, "b", "peer rejected our authentication")
    assert not pair.a.all() and not pair.b.all()


def test_expired_certificate(pki: Pki) -> None:
    now = datetime.now(UTC)
    old = make_cert(pki.sub, "gw-a.example", sans=["gw-a.example"],
                    not_before=now - timedelta(days=60), not_after=now - timedelta(days=1))
    pair = make_pair(config(pki, "a", old), config(pki, "b"), wall_clock=True)
    up(pair)
    assert_auth_failed(pair, "b", "expired")
    assert_both_gone(pair)


def test_certificate_checked_at_the_virtual_clock(pki: Pki) -> None:
    """Validity is judged at `now` as passed in, never the host clock."""
    pair = make_pair(config(pki, "a"), config(pki, "b"), wall_clock=True)
    pair.now += 90 * 86400  # the test certificates are valid for 30 days
    up(pair)
    assert_auth_failed(pair, "b", "expired")


def test_no_certreq_means_no_cert_with_ifasked(pki: Pki) -> None:
    a = config(pki, "a", send_certreq=False)  # A never asks, B waits to be asked
    b = config(pki, "b", send_certreq=False)
    pair = make_pair(a, b, wall_clock=True)
    up(pair)
    assert_auth_failed(pair, "b", "peer sent no certificate")


def test_send_cert_always_without_certreq(pki: Pki) -> None:
    a = config(pki, "a", send_certreq=False, send_cert=SendCert.ALWAYS)
    b = config(pki, "b", send_certreq=False, send_cert=SendCert.ALWAYS)
    pair = make_pair(a, b, wall_clock=True)
    up(pair)
    assert_up_with_matching_children(pair)


def test_certreq_is_honoured_in_each_direction(pki: Pki) -> None:
    # Only B asks: A sends its CERT; B does not, so A (which did not ask) cannot verify B.
    pair = make_pair(config(pki, "a", send_certreq=False), config(pki, "b"),
                     wall_clock=True)
    up(pair)
    assert_auth_failed(pair, "a", "peer sent no certificate")
    assert_auth_failed(pair, "b", "peer rejected our authentication")


def test_send_cert_never(pki: Pki) -> None:
    pair = make_pair(config(pki, "a", send_cert=SendCert.NEVER), config(pki, "b"),
                     wall_clock=True)
    up(pair)
    assert_auth_failed(pair, "b", "peer sent no certificate")


@pytest.mark.parametrize(("key_type", "method"), [
    ("ecdsa-p256", AuthMethod.ECDSA_SHA256_P256),
    ("ecdsa-p384", AuthMethod.ECDSA_SHA384_P384),
    ("rsa2048", AuthMethod.RSA_SIG),
])
def test_peer_without_signature_hash_algorithms_gets_legacy_methods(
        pki: Pki, signatures: Signed, monkeypatch: pytest.MonkeyPatch, key_type: str,
        method: AuthMethod) -> None:
    monkeypatch.setattr(auth, "SUPPORTED_HASHES", frozenset())  # no RFC 7427 notify sent
    pair = make_pair(config(pki, "a", pki.gateway("a", key_type)),
                     config(pki, "b", pki.gateway("b", key_type)), wall_clock=True)
    up(pair)
    assert_up_with_matching_children(pair)
    assert [m for m, _ in signatures] == [method, method]


def test_psk_peer_and_certificate_peer_do_not_mix(pki: Pki) -> None:
    pair = make_pair(psk_config(children=(LAN_A,)), config(pki, "b"), wall_clock=True)
    up(pair)
    assert_auth_failed(pair, "b", "we require a certificate")
    assert_both_gone(pair)


def test_rekeys_and_delete_with_certificates(pki: Pki) -> None:
    """The certificate variant of the later exchanges: CHILD_SA and IKE SA rekeys (one of
    them simultaneous from both sides), then delete."""
    pair = make_pair(config(pki, "a", pki.gateway("a", "ed25519")),
                     config(pki, "b", pki.gateway("b", "ed25519")), wall_clock=True)
    up(pair)
    assert_up_with_matching_children(pair)
    sa_a, sa_b = pair.a.all()[0], pair.b.all()[0]
    (ca,) = pair.of("a", ChildSaNegotiated)
    pair.a.act(sa_a, lambda sa: sa.rekey_child(ca.spi_in, pair.now))
    pair.pump()
    new_a, new_b = pair.of("a", ChildSaNegotiated)[-1], pair.of("b", ChildSaNegotiated)[-1]
    assert new_a.rekey_of == ca.spi_in and new_a.spi_out == new_b.spi_in
    assert new_a.encr_key_out == new_b.encr_key_in
    pair.a.act(sa_a, lambda sa: sa.rekey(pair.now))
    pair.b.act(sa_b, lambda sa: sa.rekey(pair.now))
    pair.pump()
    (ike_a,), (ike_b,) = pair.a.all(), pair.b.all()
    assert (ike_a.spi_i, ike_a.spi_r) == (ike_b.spi_i, ike_b.spi_r)
    assert ike_a.remote_id == sa_a.remote_id and ike_a.peer_hashes == sa_a.peer_hashes
    assert [c.spi_in for c in ike_a.children.values()] == [new_a.spi_in]
    pair.b.act(ike_b, lambda sa: sa.delete(pair.now))
    pair.pump()
    assert not pair.a.all() and not pair.b.all()
    assert [e.reason for e in pair.of("a", IkeSaDown)] == ["rekeyed", "deleted by peer"]
