"""Chain validation, CERTREQ data and identity matching with a test PKI."""

from datetime import UTC, datetime, timedelta
from ipaddress import ip_address

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tests.support.pki import make_ca, make_cert
from xfrmctl.ike.certs import TrustStore, id_for_certificate, identity_matches
from xfrmctl.ike.constants import IdType, NotifyType
from xfrmctl.ike.errors import ProtocolError

NOW = datetime.now(UTC)


def _fails(
    store: TrustStore,
    ee: x509.Certificate,
    chain: list[x509.Certificate],
    why: str,
    now: datetime = NOW,
) -> None:
    with pytest.raises(ProtocolError, match=why) as err:
        store.verify(ee, chain, now)
    assert err.value.notify == NotifyType.AUTHENTICATION_FAILED


@pytest.mark.parametrize("key_type", ["ecdsa-p256", "ecdsa-p384", "ed25519", "rsa2048"])
def test_good_direct_chain(key_type: str) -> None:
    ca = make_ca(key_type=key_type)
    ee = make_cert(ca, "gw.example.com", key_type=key_type, sans=["gw.example.com"])
    TrustStore([ca.cert]).verify(ee.cert, [], NOW)


def test_chain_through_intermediates() -> None:
    root = make_ca("Root")
    mid = make_ca("Intermediate 1", issuer=root)
    mid2 = make_ca("Intermediate 2", issuer=mid, key_type="ed25519")
    ee = make_cert(mid2, "gw")
    store = TrustStore([root.cert])
    store.verify(ee.cert, [mid.cert, mid2.cert], NOW)  # order does not matter
    store.verify(ee.cert, [mid2.cert, mid.cert, make_ca("unrelated").cert], NOW)
    _fails(store, ee.cert, [mid2.cert], "not issued by a trusted CA")
    # An intermediate as trust anchor is enough.
    TrustStore([mid2.cert]).verify(ee.cert, [], NOW)


def test_wrong_ca() -> None:
    ca, other = make_ca("Our CA"), make_ca("Their CA")
    ee = make_cert(other, "gw")
    _fails(TrustStore([ca.cert]), ee.cert, [], "not issued by a trusted CA")
    # Same name, different key: the signature decides.
    impostor = make_ca("Our CA")
    _fails(TrustStore([ca.cert]), make_cert(impostor, "gw").cert, [], "not issued")


def test_expired_and_not_yet_valid() -> None:
    ca = make_ca()
    old = make_cert(
        ca, "gw", not_before=NOW - timedelta(days=10), not_after=NOW - timedelta(days=1)
    )
    _fails(TrustStore([ca.cert]), old.cert, [], "expired")
    future = make_cert(ca, "gw", not_before=NOW + timedelta(days=1))
    _fails(TrustStore([ca.cert]), future.cert, [], "not valid before")
    old_ca = make_ca(not_before=NOW - timedelta(days=10), not_after=NOW - timedelta(days=1))
    ee = make_cert(old_ca, "gw", not_before=NOW - timedelta(days=5))
    _fails(TrustStore([old_ca.cert]), ee.cert, [], "expired")
    TrustStore([old_ca.cert]).verify(ee.cert, [], NOW - timedelta(days=2))


def test_issuer_must_be_a_ca() -> None:
    root = make_ca()
    not_ca = make_cert(root, "leaf used as issuer")  # cA false, keyUsage digitalSignature
    ee = make_cert(not_ca, "gw")
    _fails(TrustStore([root.cert]), ee.cert, [not_ca.cert], "is not a CA")
    no_bc = make_cert(root, "no basicConstraints", basic_constraints=False, key_usage=False)
    _fails(TrustStore([root.cert]), make_cert(no_bc, "gw").cert, [no_bc.cert], "is not a CA")


def test_key_usage_where_present() -> None:
    root = make_ca()
    usage = x509.KeyUsage(False, False, False, False, False, False, True, False, False)  # crlSign
    mid = make_cert(root, "CA without keyCertSign", is_ca=True, key_usage=usage)
    _fails(TrustStore([root.cert]), make_cert(mid, "gw").cert, [mid.cert], "keyUsage")
    enc_only = x509.KeyUsage(False, False, True, False, False, False, False, False, False)
    ee = make_cert(root, "gw", key_usage=enc_only)
    _fails(TrustStore([root.cert]), ee.cert, [], "no digital signatures")
    TrustStore([root.cert]).verify(make_cert(root, "gw", key_usage=False).cert, [], NOW)


def test_path_length_constraint() -> None:
    root = make_ca(path_length=0)
    mid = make_ca("mid", issuer=root)
    ee = make_cert(mid, "gw")
    _fails(TrustStore([root.cert]), ee.cert, [mid.cert], "pathLenConstraint")
    TrustStore([root.cert]).verify(make_cert(root, "gw").cert, [], NOW)


def test_certreq_data_and_wants() -> None:
    ca1, ca2, other = make_ca("one"), make_ca("two"), make_ca("three")
    store = TrustStore([ca1.cert, ca2.cert])
    data = store.certreq_data()
    spki = ca2.cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    digest = hashes.Hash(hashes.SHA1())
    digest.update(spki)
    assert len(data) == 40 and data[20:] == digest.finalize()
    assert store.wants(data)
    assert store.wants(TrustStore([other.cert, ca2.cert]).certreq_data())
    assert not store.wants(TrustStore([other.cert]).certreq_data())
    assert not store.wants(b"")
    assert not store.wants(data[:-1])


def test_identity_matching() -> None:
    ca = make_ca()
    ee = make_cert(
        ca, "gw.example.com", sans=["gw.example.com", "vpn@example.com", "192.0.2.1", "2001:db8::1"]
    ).cert
    assert identity_matches(ee, IdType.FQDN, b"gw.example.com")
    assert identity_matches(ee, IdType.FQDN, b"GW.Example.COM")
    assert not identity_matches(ee, IdType.FQDN, b"other.example.com")
    assert identity_matches(ee, IdType.RFC822_ADDR, b"vpn@example.com")
    assert not identity_matches(ee, IdType.RFC822_ADDR, b"gw.example.com")
    assert identity_matches(ee, IdType.IPV4_ADDR, ip_address("192.0.2.1").packed)
    assert not identity_matches(ee, IdType.IPV4_ADDR, ip_address("192.0.2.2").packed)
    assert identity_matches(ee, IdType.IPV6_ADDR, ip_address("2001:db8::1").packed)
    assert not identity_matches(ee, IdType.IPV6_ADDR, ip_address("192.0.2.1").packed)
    assert identity_matches(ee, IdType.DER_ASN1_DN, ee.subject.public_bytes())
    assert not identity_matches(ee, IdType.DER_ASN1_DN, ca.cert.subject.public_bytes())
    assert not identity_matches(ee, IdType.KEY_ID, b"gw.example.com")
    bare = make_cert(ca, "no SANs").cert
    assert not identity_matches(bare, IdType.FQDN, b"no SANs")


def test_default_identity_is_subject_dn() -> None:
    ee = make_cert(make_ca(), "gw").cert
    assert id_for_certificate(ee) == (IdType.DER_ASN1_DN, ee.subject.public_bytes())
    assert identity_matches(ee, *id_for_certificate(ee))
