"""Proposal keywords (strongSwan syntax), selection as responder, the initiator's check."""

from __future__ import annotations

import pytest

from xfrmctl.ike.constants import DhId, EncrId, EsnId, IntegId, PrfId, ProtocolId, TransformType
from xfrmctl.ike.payloads import Proposal, Transform
from xfrmctl.ike.proposals import (
    DEFAULT_ESP,
    DEFAULT_IKE,
    KEYWORDS,
    DhRule,
    Suite,
    accept_chosen,
    describe_offer,
    describe_spec,
    parse_proposals,
    select,
    suite_of,
    uses_legacy,
)

IKE, ESP, AH = ProtocolId.IKE, ProtocolId.ESP, ProtocolId.AH


def wire(text: str, protocol: ProtocolId = IKE, spi: bytes = b"", *,
         with_dh: bool = True) -> tuple[Proposal, ...]:
    return tuple(spec.to_wire(i + 1, spi, with_dh=with_dh)
                 for i, spec in enumerate(parse_proposals(text, protocol)))


Algorithms = dict[TransformType, tuple[tuple[int, int | None], ...]]


def one(text: str, protocol: ProtocolId = IKE) -> Algorithms:
    (spec,) = parse_proposals(text, protocol)
    return spec.algorithms


# --- parsing -------------------------------------------------------------------------------

AEAD_IDS = {EncrId.AES_GCM_8, EncrId.AES_GCM_12, EncrId.AES_GCM_16, EncrId.AES_CCM_8,
            EncrId.AES_CCM_12, EncrId.AES_CCM_16, EncrId.CHACHA20_POLY1305}


def proposal_around(keyword: str) -> tuple[str, ProtocolId]:
    """A valid proposal whose only algorithm of its type is `keyword`."""
    ttype, alg_id, _ = KEYWORDS[keyword]
    if ttype is TransformType.ENCR:
        rest = "prfsha256-x25519" if alg_id in AEAD_IDS else "sha256-x25519"
        return f"{keyword}-{rest}", IKE
    if ttype is TransformType.INTEG:
        return f"aes128-{keyword}-prfsha256-x25519", IKE
    if ttype is TransformType.PRF:
        return f"aes128gcm16-{keyword}-x25519", IKE
    if ttype is TransformType.DH:
        return f"aes128gcm16-prfsha256-{keyword}", IKE
    return f"aes128gcm16-{keyword}", ESP


@pytest.mark.parametrize("keyword", sorted(KEYWORDS))
def test_every_keyword_parses_to_its_transform(keyword: str) -> None:
    ttype, alg_id, bits = KEYWORDS[keyword]
    text, protocol = proposal_around(keyword)
    assert one(text, protocol)[ttype] == ((alg_id, bits),)
    assert one(text.upper(), protocol)[ttype] == ((alg_id, bits),)  # case does not matter


def test_keyword_families_carry_key_lengths() -> None:
    assert KEYWORDS["aes256ctr"] == (TransformType.ENCR, EncrId.AES_CTR, 256)
    assert KEYWORDS["aes192gcm12"] == (TransformType.ENCR, EncrId.AES_GCM_12, 192)
    assert KEYWORDS["aes128ccm8"] == (TransformType.ENCR, EncrId.AES_CCM_8, 128)
    assert KEYWORDS["aes256gcm"] == KEYWORDS["aes256gcm16"]
    assert KEYWORDS["aes"] == KEYWORDS["aes128"]
    assert KEYWORDS["curve25519"] == KEYWORDS["x25519"]


def test_order_is_kept_and_duplicates_dropped() -> None:
    algs = one("aes256-aes128-aes256-sha512-sha256-ecp384-x25519-ecp384")
    assert algs[TransformType.ENCR] == ((EncrId.AES_CBC, 256), (EncrId.AES_CBC, 128))
    assert algs[TransformType.DH] == ((DhId.ECP_384, None), (DhId.CURVE25519, None))
    # No PRF named: implied from the integrity algorithms, in their order.
    assert algs[TransformType.PRF] == ((PrfId.HMAC_SHA2_512, None),
                                       (PrfId.HMAC_SHA2_256, None))


def test_several_proposals_and_esp_defaults() -> None:
    specs = parse_proposals("aes128gcm16-x25519 , aes256-sha384", ESP)
    assert [s.text for s in specs] == ["aes128gcm16-x25519", "aes256-sha384"]
    assert specs[0].dh_groups == (DhId.CURVE25519,) and specs[1].dh_groups == ()
    assert specs[1].get(TransformType.ESN) == ((EsnId.NO_ESN, None),)  # implied
    assert one("aes128gcm16-esn-noesn", ESP)[TransformType.ESN] == (
        (EsnId.ESN, None), (EsnId.NO_ESN, None))
    assert one("sha256", AH) == {TransformType.INTEG: ((IntegId.HMAC_SHA2_256_128, None),),
                                 TransformType.ESN: ((EsnId.NO_ESN, None),)}


@pytest.mark.parametrize(("text", "protocol", "message"), [
    ("aes128-sha256-bogus", IKE, "'bogus'"),
    ("aes128-sha256-x25519, aes129-sha256-x25519", IKE, "'aes129'"),
    ("aes128gcm16-prfsha256-x25519-", IKE, "''"),
    ("", IKE, "empty proposal"),
    ("aes128-sha256-x25519,,", IKE, "empty proposal"),
    ("aes128gcm16-aes128-prfsha256-x25519", IKE, "mixes AEAD and non-AEAD"),
    ("aes128gcm16-sha256-x25519", IKE, "take no integrity"),
    ("aes128-prfsha256-x25519", IKE, "needs an integrity"),
    ("sha256-prfsha256-x25519", IKE, "needs an encryption"),
    ("aes128gcm16-prfsha256", IKE, "needs a key exchange"),
    ("aes128gcm16-x25519", IKE, "needs a PRF"),
    ("aes128gcm16-prfsha256-x25519-esn", IKE, "cannot have an ESN"),
    ("aes128gcm16-prfsha256", ESP, "cannot have a PRF"),
    ("aes128-sha256", AH, "cannot have an encryption"),
    ("x25519", AH, "needs an integrity"),
])
def test_errors_name_what_is_wrong(text: str, protocol: ProtocolId, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_proposals(text, protocol)


def test_describe_spec_round_trips() -> None:
    for spec in (*DEFAULT_IKE, *DEFAULT_ESP):
        again = parse_proposals(describe_spec(spec), spec.protocol)[0]
        assert again.algorithms == spec.algorithms
    assert str(parse_proposals("aes128-sha256-modp2048", IKE)[0]) == "aes128-sha256-modp2048"


def test_legacy_algorithms_are_recognised() -> None:
    assert not uses_legacy(DEFAULT_IKE + DEFAULT_ESP)
    assert uses_legacy(parse_proposals("3des-sha1-modp1024", IKE))
    assert uses_legacy(parse_proposals("aes128-md5", ESP))


# --- selection (responder) -----------------------------------------------------------------

def test_our_preference_wins_within_a_proposal() -> None:
    ours = parse_proposals("aes256gcm16-aes128gcm16-prfsha384-prfsha256-ecp256-x25519", IKE)
    chosen = select(ours, wire("aes128gcm16-aes256gcm16-prfsha256-prfsha384-x25519-ecp256"))
    assert chosen is not None
    suite = suite_of(chosen)
    assert (suite.encr, suite.encr_bits, suite.prf, suite.dh) == (
        EncrId.AES_GCM_16, 256, PrfId.HMAC_SHA2_384, DhId.ECP_256)


def test_our_proposal_order_wins_over_theirs_and_their_number_is_kept() -> None:
    ours = parse_proposals("aes128-sha256-x25519, aes128gcm16-prfsha256-x25519", IKE)
    offered = wire("aes128gcm16-prfsha256-x25519, aes128-sha256-x25519", spi=b"\x11" * 8)
    chosen = select(ours, offered)
    assert chosen is not None and chosen.number == 2 and chosen.spi == b"\x11" * 8
    assert [TransformType(t.type) for t in chosen.transforms] == [
        TransformType.ENCR, TransformType.PRF, TransformType.INTEG, TransformType.DH]
    assert suite_of(chosen).integ == IntegId.HMAC_SHA2_256_128


def test_key_lengths_must_match() -> None:
    ours = parse_proposals("aes256-sha256-x25519", IKE)
    assert select(ours, wire("aes128-sha256-x25519")) is None
    assert select(ours, wire("aes128-aes256-sha256-x25519")) is not None


def test_no_common_proposal_and_other_protocols() -> None:
    ours = parse_proposals("aes128gcm16-prfsha256-x25519", IKE)
    assert select(ours, wire("aes128gcm16-prfsha256-ecp256")) is None
    assert select(ours, wire("aes128gcm16-x25519", ESP, b"\0\0\0\1")) is None


def test_transform_with_unknown_attribute_is_unusable() -> None:
    (good,) = wire("aes128gcm16-prfsha256-x25519")
    odd = tuple(Transform(t.type, t.id, t.key_length,
                          b"\x80\x63\x00\x01" if t.type == TransformType.PRF else b"")
                for t in good.transforms)
    offered = Proposal(1, IKE, b"", odd)
    ours = parse_proposals("aes128gcm16-prfsha256-x25519", IKE)
    assert select(ours, [offered]) is None


def test_dh_rules_for_child_sas() -> None:
    pfs = parse_proposals("aes128gcm16-x25519", ESP)
    no_pfs = parse_proposals("aes128gcm16", ESP)
    spi = b"\0\0\1\0"
    with_ke = wire("aes128gcm16-x25519", ESP, spi)
    without_ke = wire("aes128gcm16", ESP, spi)
    # CREATE_CHILD_SA with KE: a common group is required.
    assert suite_of(select(pfs, with_ke) or Proposal(0, ESP, b"", ())).dh == DhId.CURVE25519
    assert select(no_pfs, with_ke, DhRule.REQUIRE) is None
    # Without KE: neither side may want PFS.
    assert select(no_pfs, without_ke, DhRule.NONE) is not None
    assert select(pfs, without_ke, DhRule.NONE) is None  # we insist on PFS
    assert select(no_pfs, with_ke, DhRule.NONE) is None  # they offer PFS, sent no KE
    none_offered = (Proposal(1, ESP, spi, (*without_ke[0].transforms,
                                           Transform(TransformType.DH, DhId.NONE))),)
    assert select(no_pfs, none_offered, DhRule.NONE) is not None  # "NONE" is no PFS
    # IKE_AUTH: key exchange transforms play no part, and none is chosen.
    chosen = select(pfs, with_ke, DhRule.IGNORE)
    assert chosen is not None and suite_of(chosen).dh is None
    assert select(pfs, without_ke, DhRule.IGNORE) is not None


# --- the initiator's check of the choice ---------------------------------------------------

def test_accept_chosen_takes_one_of_each_offered_type() -> None:
    sent = wire("aes128gcm16-aes256gcm16-prfsha256-x25519-ecp256, aes128-sha256-x25519")
    ok = Proposal(1, IKE, b"", (Transform(TransformType.ENCR, EncrId.AES_GCM_16, 256),
                                Transform(TransformType.PRF, PrfId.HMAC_SHA2_256),
                                Transform(TransformType.DH, DhId.ECP_256)))
    assert accept_chosen(sent, ok)


@pytest.mark.parametrize(("number", "transforms", "protocol"), [
    (1, ((TransformType.ENCR, EncrId.AES_GCM_16, 192), (TransformType.PRF, PrfId.HMAC_SHA2_256),
         (TransformType.DH, DhId.CURVE25519)), IKE),  # key length not offered
    (1, ((TransformType.ENCR, EncrId.AES_GCM_16, 128), (TransformType.PRF, PrfId.HMAC_SHA2_512),
         (TransformType.DH, DhId.CURVE25519)), IKE),  # PRF not offered
    (1, ((TransformType.ENCR, EncrId.AES_GCM_16, 128), (TransformType.ENCR, EncrId.AES_GCM_16,
                                                        256),
         (TransformType.PRF, PrfId.HMAC_SHA2_256), (TransformType.DH, DhId.CURVE25519)),
     IKE),  # two of one type
    (1, ((TransformType.ENCR, EncrId.AES_GCM_16, 128), (TransformType.DH, DhId.CURVE25519)),
     IKE),  # no PRF
    (3, ((TransformType.ENCR, EncrId.AES_GCM_16, 128), (TransformType.PRF, PrfId.HMAC_SHA2_256),
         (TransformType.DH, DhId.CURVE25519)), IKE),  # no proposal 3 was sent
    (2, ((TransformType.ENCR, EncrId.AES_GCM_16, 128), (TransformType.PRF, PrfId.HMAC_SHA2_256),
         (TransformType.DH, DhId.CURVE25519)), IKE),  # mixes proposal 1 into 2
    (1, ((TransformType.ENCR, EncrId.AES_GCM_16, 128), (TransformType.PRF, PrfId.HMAC_SHA2_256),
         (TransformType.DH, DhId.CURVE25519)), ESP),  # other protocol
])
def test_accept_chosen_rejects_what_we_did_not_offer(
        number: int, transforms: tuple[tuple[int, int, int | None] | tuple[int, int], ...],
        protocol: ProtocolId) -> None:
    sent = wire("aes128gcm16-aes256gcm16-prfsha256-x25519-ecp256, aes128-sha256-x25519")
    chosen = Proposal(number, protocol, b"", tuple(Transform(*t) for t in transforms))
    assert not accept_chosen(sent, chosen)


def test_accept_chosen_rejects_unknown_transform_types() -> None:
    sent = wire("aes128gcm16-prfsha256-x25519")
    chosen = Proposal(1, IKE, b"", (*sent[0].transforms[:3], Transform(99, 1)))
    assert not accept_chosen(sent, chosen)


def test_accept_chosen_allows_no_dh_for_the_first_child() -> None:
    sent = wire("aes128gcm16-x25519", ESP, b"\0\0\0\7")
    chosen = Proposal(1, ESP, b"\0\0\0\x09", (
        Transform(TransformType.ENCR, EncrId.AES_GCM_16, 128),
        Transform(TransformType.ESN, EsnId.NO_ESN)))
    assert accept_chosen(sent, chosen)
    no_esn = Proposal(1, ESP, b"\0\0\0\x09", chosen.transforms[:1])
    assert not accept_chosen(sent, no_esn)


def test_suite_and_descriptions() -> None:
    (p,) = wire("aes256-sha384-prfsha384-ecp384")
    suite = suite_of(p)
    assert suite == Suite(IKE, EncrId.AES_CBC, 256, IntegId.HMAC_SHA2_384_192,
                          PrfId.HMAC_SHA2_384, DhId.ECP_384)
    assert str(suite) == "AES_CBC_256/HMAC_SHA2_384_192/PRF_HMAC_SHA2_384/ECP_384"
    assert not suite.aead
    assert describe_offer(list(wire("aes128gcm16-prfsha256-x25519"))) == [
        "aes128gcm16-prfsha256-x25519"]
    odd = Proposal(1, 7, b"", (Transform(TransformType.ENCR, EncrId.AES_CBC, 128),
                              Transform(99, 1)))
    assert describe_offer([odd]) == ["aes128"]  # unknown protocol and type: no exception
    (esp,) = wire("chacha20poly1305-esn", ESP, b"\0\0\0\1")
    assert suite_of(esp).esn and suite_of(esp).aead
    assert str(suite_of(esp)) == "CHACHA20_POLY1305/ESN"
