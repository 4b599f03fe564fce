"""Postquantum preshared keys (RFC 8784) between two in-memory peers: USE_PPK,
PPK_IDENTITY, NO_PPK_AUTH, and SK_d/SK_pi/SK_pr re-derived with the PPK."""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes, hmac

from tests.support.ike_pair import (
    ADDR_A,
    ADDR_B,
    assert_child_pair,
    cert_config,
    child,
    make_pair,
    mirrored,
    psk_config,
    up,
)
from tests.support.pki import make_ca, make_cert
from xfrmctl.ike.constants import ExchangeType, NotifyType, PrfId
from xfrmctl.ike.crypto import IkeKeys, Prf
from xfrmctl.ike.events import ChildSaNegotiated, FailureReason, IkeSaUp, NegotiationFailed
from xfrmctl.ike.message import decode, parse_header
from xfrmctl.ike.ppk import derive_ppk_keys, encode_ppk_identity, parse_ppk_identity

PPK = b"test-only postquantum preshared key, 32+ octets long ...."
OTHER = b"another test-only postquantum preshared key ............."


def _prf_plus(key: bytes, seed: bytes, length: int) -> bytes:
    """prf+ with HMAC-SHA-256, written out here (RFC 7296 2.13)."""
    out, t, n = b"", b"", 1
    while len(out) < length:
        mac = hmac.HMAC(key, hashes.SHA256())
        mac.update(t + seed + bytes([n]))
        t = mac.finalize()
        out, n = out + t, n + 1
    return out[:length]


def test_derivation_follows_rfc8784_section_3() -> None:
    keys = IkeKeys(b"s" * 32, b"d" * 32, b"ai", b"ar", b"ei", b"er", b"i" * 32, b"r" * 32)
    new = derive_ppk_keys(Prf(PrfId.HMAC_SHA2_256), PPK, keys)
    assert new.sk_d == _prf_plus(PPK, b"d" * 32, 32)
    assert new.sk_pi == _prf_plus(PPK, b"i" * 32, 32)
    assert new.sk_pr == _prf_plus(PPK, b"r" * 32, 32)
    assert (new.sk_ei, new.sk_er, new.sk_ai, new.sk_ar) == (b"ei", b"er", b"ai", b"ar")


def test_ppk_identity_encoding() -> None:
    assert encode_ppk_identity(b"pq1") == b"\x02pq1"
    assert parse_ppk_identity(b"\x02pq1") == b"pq1"
    assert parse_ppk_identity(b"") is None and parse_ppk_identity(b"\x09pq") is None


def _pair(a: dict[str, object], b: dict[str, object]):  # type: ignore[no-untyped-def]
    lan = child()
    pair = make_pair(psk_config(children=(lan,), **a), psk_config(children=(mirrored(lan),), **b))
    up(pair)
    return pair


def _notifies(pair, exchange: ExchangeType) -> set[int]:  # type: ignore[no-untyped-def]
    """Notify types seen in plain IKE_SA_INIT messages."""
    seen: set[int] = set()
    for _, d in pair.wire:
        if parse_header(d.data).exchange == exchange:
            seen |= {n.notify_type for n in decode(d.data).notifies()}
    return seen


def test_both_with_the_ppk_use_it_and_agree() -> None:
    pair = _pair({"ppk": PPK, "ppk_id": b"pq1", "ppk_required": True},
                 {"ppk": PPK, "ppk_id": b"pq1", "ppk_required": True})
    ((up_a,), (up_b,)) = pair.of("a", IkeSaUp), pair.of("b", IkeSaUp)
    assert up_a.ppk and up_b.ppk
    assert NotifyType.USE_PPK in _notifies(pair, ExchangeType.IKE_SA_INIT)
    (ca,), (cb,) = pair.of("a", ChildSaNegotiated), pair.of("b", ChildSaNegotiated)
    assert_child_pair(ca, cb)  # the CHILD_SA's KEYMAT from the same new SK_d
    (sa_a,), (sa_b,) = pair.a.all(), pair.b.all()
    assert sa_a.keys.keys.sk_d == sa_b.keys.keys.sk_d


def test_different_ppks_fail_authentication() -> None:
    pair = _pair({"ppk": PPK, "ppk_id": b"pq1", "ppk_required": True},
                 {"ppk": OTHER, "ppk_id": b"pq1", "ppk_required": True})
    assert not pair.of("a", IkeSaUp) and not pair.of("b", IkeSaUp)
    (fail_b,) = pair.of("b", NegotiationFailed)
    assert fail_b.reason is FailureReason.AUTHENTICATION_FAILED


def test_optional_ppk_falls_back_to_no_ppk_auth() -> None:
    """The responder lacks the PPK: it checks NO_PPK_AUTH, and neither end uses a PPK."""
    pair = _pair({"ppk": PPK, "ppk_id": b"pq1"}, {})
    ((up_a,), (up_b,)) = pair.of("a", IkeSaUp), pair.of("b", IkeSaUp)
    assert not up_a.ppk and not up_b.ppk
    assert_child_pair(pair.of("a", ChildSaNegotiated)[0], pair.of("b", ChildSaNegotiated)[0])
    # a responder with another PPK_ID falls back the same way
    pair = _pair({"ppk": PPK, "ppk_id": b"pq1"}, {"ppk": OTHER, "ppk_id": b"pq2"})
    assert [e.ppk for e in pair.of("a", IkeSaUp) + pair.of("b", IkeSaUp)] == [False, False]


def test_optional_ppk_with_certificates_falls_back_to_a_second_signature() -> None:
    """With certificates NO_PPK_AUTH carries a second signature, made with the original
    SK_pi: a responder without that PPK checks it; one with the PPK uses the PPK."""
    root = make_ca()
    cred_a = make_cert(root, "gw-a.example", sans=["gw-a.example", ADDR_A])
    cred_b = make_cert(root, "gw-b.example", sans=["gw-b.example", ADDR_B])
    lan = child()

    def pair(a: dict[str, object], b: dict[str, object]):  # type: ignore[no-untyped-def]
        made = make_pair(cert_config(cred=cred_a, trust=[root.cert], children=(lan,), **a),
                         cert_config(cred=cred_b, trust=[root.cert],
                                     children=(mirrored(lan),), **b), wall_clock=True)
        up(made)
        return made

    # the responder uses PPKs (USE_PPK) but not this one: it checks NO_PPK_AUTH
    without = pair({"ppk": PPK, "ppk_id": b"pq1"}, {"ppk": OTHER, "ppk_id": b"pq2"})
    assert [e.ppk for e in without.of("a", IkeSaUp) + without.of("b", IkeSaUp)] == [False,
                                                                                   False]
    assert_child_pair(without.of("a", ChildSaNegotiated)[0],
                      without.of("b", ChildSaNegotiated)[0])
    both = pair({"ppk": PPK, "ppk_id": b"pq1"}, {"ppk": PPK, "ppk_id": b"pq1"})
    assert [e.ppk for e in both.of("a", IkeSaUp) + both.of("b", IkeSaUp)] == [True, True]


def test_a_required_ppk_refuses_peers_without_it() -> None:
    pair = _pair({"ppk": PPK, "ppk_id": b"pq1", "ppk_required": True}, {})
    (fail_a,) = pair.of("a", NegotiationFailed)
    assert fail_a.reason is FailureReason.AUTHENTICATION_FAILED
    assert "USE_PPK" in fail_a.message and not pair.of("b", IkeSaUp)
    pair = _pair({}, {"ppk": PPK, "ppk_id": b"pq1", "ppk_required": True})
    (fail_b,) = pair.of("b", NegotiationFailed)
    assert fail_b.reason is FailureReason.AUTHENTICATION_FAILED and "PPK" in fail_b.message
    assert not pair.of("a", IkeSaUp)
    # the initiator's PPK_ID unknown to a responder that requires one
    pair = _pair({"ppk": PPK, "ppk_id": b"pq9"},
                 {"ppk": PPK, "ppk_id": b"pq1", "ppk_required": True})
    assert not pair.of("b", IkeSaUp)
