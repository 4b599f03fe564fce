"""AUTH payload crypto: signed octets, PSK MIC, RFC 7427 signatures."""

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from tests.support.pki import KEY_TYPES, new_key
from xfrmctl.ike.auth import (
    ALGORITHM_IDENTIFIERS,
    SUPPORTED_HASHES,
    KeyKind,
    SignatureAlgorithm,
    psk_auth,
    sign,
    signed_octets,
    verify,
)
from xfrmctl.ike.constants import AuthMethod, HashAlgorithm, NotifyType, PrfId
from xfrmctl.ike.crypto import Prf
from xfrmctl.ike.errors import ProtocolError

ALL_HASHES = set(SUPPORTED_HASHES)
OCTETS = b"IKE_SA_INIT message" + b"\x01" * 32 + b"prf(SK_p, ID)"


def test_signed_octets_and_psk_follow_rfc7296() -> None:
    prf = Prf(PrfId.HMAC_SHA2_256)
    id_body = b"\x02\x00\x00\x00gw.example.com"
    octets = signed_octets(b"MSG", b"NONCE", prf, b"skp", id_body)
    assert octets == b"MSG" + b"NONCE" + prf(b"skp", id_body)
    assert psk_auth(prf, b"secret", octets) == prf(prf(b"secret", b"Key Pad for IKEv2"), octets)
    assert psk_auth(prf, b"secret", octets) != psk_auth(prf, b"secreT", octets)


def test_rfc7427_algorithm_identifiers() -> None:
    # The DER of RFC 7427 appendix A for the common cases.
    ids = ALGORITHM_IDENTIFIERS
    assert ids[SignatureAlgorithm(KeyKind.ECDSA, HashAlgorithm.SHA2_256)].hex() == (
        "300a06082a8648ce3d040302"
    )
    assert ids[SignatureAlgorithm(KeyKind.RSA_PKCS1, HashAlgorithm.SHA2_256)].hex() == (
        "300d06092a864886f70d01010b0500"
    )
    assert ids[SignatureAlgorithm(KeyKind.ED25519, HashAlgorithm.IDENTITY)].hex() == (
        "300506032b6570"
    )
    assert ids[SignatureAlgorithm(KeyKind.RSA_PSS, HashAlgorithm.SHA2_256)].hex() == (
        "304106092a864886f70d01010a3034a00f300d06096086480165030402010500a11c301a06092a86"
        "4886f70d010108300d06096086480165030402010500a203020120"
    )


@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_sign_verify_round_trip(key_type: str) -> None:
    key = new_key(key_type)
    method, data = sign(key, OCTETS, ALL_HASHES)
    assert method == AuthMethod.DIGITAL_SIGNATURE
    verify(key.public_key(), method, data, OCTETS)
    with pytest.raises(ProtocolError) as err:
        verify(key.public_key(), method, data, OCTETS + b"x")
    assert err.value.notify == NotifyType.AUTHENTICATION_FAILED
    other = new_key(key_type)
    with pytest.raises(ProtocolError):
        verify(other.public_key(), method, data, OCTETS)


@pytest.mark.parametrize(
    ("key_type", "expected"),
    [
        ("ecdsa-p256", "2a8648ce3d040302"),
        ("ecdsa-p384", "2a8648ce3d040303"),
        ("ecdsa-p521", "2a8648ce3d040304"),
        ("ed25519", "2b6570"),
        ("rsa2048", "2a864886f70d01010a"),
    ],
)
def test_hash_follows_the_key_and_the_peer(key_type: str, expected: str) -> None:
    _, data = sign(new_key(key_type), OCTETS, ALL_HASHES)
    assert expected in data[1 : 1 + data[0]].hex()


def test_hash_restricted_by_peer_set() -> None:
    key = new_key("ecdsa-p384")
    _, data = sign(key, OCTETS, {HashAlgorithm.SHA2_256})
    identifier = data[1 : 1 + data[0]]
    assert identifier == ALGORITHM_IDENTIFIERS[SignatureAlgorithm(KeyKind.ECDSA, 2)]
    verify(key.public_key(), AuthMethod.DIGITAL_SIGNATURE, data, OCTETS)


def test_without_rfc7427_legacy_methods_are_used() -> None:
    for key_type, method in [
        ("ecdsa-p256", AuthMethod.ECDSA_SHA256_P256),
        ("ecdsa-p384", AuthMethod.ECDSA_SHA384_P384),
        ("ecdsa-p521", AuthMethod.ECDSA_SHA512_P521),
        ("rsa2048", AuthMethod.RSA_SIG),
    ]:
        key = new_key(key_type)
        got, data = sign(key, OCTETS, set())
        assert got == method
        verify(key.public_key(), got, data, OCTETS)


def test_legacy_ecdsa_is_raw_r_s_rfc4754() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    method, data = sign(key, OCTETS, set())
    assert method == AuthMethod.ECDSA_SHA256_P256 and len(data) == 64
    # A P-384 key cannot verify a method-9 (P-256) signature.
    with pytest.raises(ProtocolError):
        verify(ec.generate_private_key(ec.SECP384R1()).public_key(), method, data, OCTETS)
    with pytest.raises(ProtocolError):
        verify(key.public_key(), method, data[:-1], OCTETS)


def test_legacy_rsa_sig_is_pkcs1_sha1() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    data = key.sign(OCTETS, padding.PKCS1v15(), hashes.SHA1())
    verify(key.public_key(), AuthMethod.RSA_SIG, data, OCTETS)


def test_small_rsa_key_falls_back_to_pkcs1() -> None:
    key = new_key("rsa1024")
    _, data = sign(key, OCTETS, {HashAlgorithm.SHA2_512})
    identifier = data[1 : 1 + data[0]]
    assert identifier == ALGORITHM_IDENTIFIERS[SignatureAlgorithm(KeyKind.RSA_PKCS1, 4)]
    verify(key.public_key(), AuthMethod.DIGITAL_SIGNATURE, data, OCTETS)


def test_key_type_mismatch_and_garbage_fail_authentication() -> None:
    ec_key, ed_key = new_key("ecdsa-p256"), new_key("ed25519")
    method, data = sign(ec_key, OCTETS, ALL_HASHES)
    bad_inputs = [
        (ed_key.public_key(), method, data),  # ECDSA signature, Ed25519 key
        (ec_key.public_key(), method, b""),
        (ec_key.public_key(), method, b"\x40" + data[1:]),  # length beyond the data
        (ec_key.public_key(), method, b"\x05\x30\x03\x06\x01\x00sig"),  # unknown identifier
        (ec_key.public_key(), AuthMethod.PSK, data),
        (ec_key.public_key(), method, data[: 1 + data[0]]),  # no signature
    ]
    for public_key, m, d in bad_inputs:
        with pytest.raises(ProtocolError) as err:
            verify(public_key, m, d, OCTETS)
        assert err.value.notify == NotifyType.AUTHENTICATION_FAILED
