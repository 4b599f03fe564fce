"""RFC 9370 additional key exchanges in proposals, RFC 7296 3.3.6 for unknown transform
types, and ML-KEM (FIPS 203) as a key exchange method."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import mlkem

from xfrmctl.ike import dh
from xfrmctl.ike.constants import DhId, NotifyType, ProtocolId, TransformType
from xfrmctl.ike.errors import ProtocolError
from xfrmctl.ike.payloads import Proposal, Transform
from xfrmctl.ike.proposals import (
    DhRule,
    accept_chosen,
    describe_offer,
    describe_spec,
    parse_proposals,
    select,
    suite_of,
)

IKE, ESP = ProtocolId.IKE, ProtocolId.ESP
HYBRID = "aes256gcm16-prfsha384-x25519-ke1_mlkem768"


def offer(text: str, protocol: ProtocolId = IKE, spi: bytes = b"") -> tuple[Proposal, ...]:
    return tuple(s.to_wire(i + 1, spi, with_addke=True)
                 for i, s in enumerate(parse_proposals(text, protocol)))


# --- syntax -------------------------------------------------------------------------


def test_strongswan_hybrid_syntax_parses_into_addke_transforms() -> None:
    (spec,) = parse_proposals(HYBRID, IKE)
    assert spec.get(TransformType.DH) == ((DhId.CURVE25519, None),)
    assert spec.get(TransformType.ADDKE1) == ((DhId.ML_KEM_768, None),)
    assert spec.has_addke
    (wire,) = offer(HYBRID)
    assert Transform(TransformType.ADDKE1, DhId.ML_KEM_768) in wire.transforms


def test_several_addke_types_and_none_round_trip_through_describe() -> None:
    text = "aes256gcm16-prfsha384-x25519-ke1_mlkem768-ke1_mlkem1024-ke2_none-ke2_mlkem1024"
    (spec,) = parse_proposals(text, IKE)
    assert spec.get(TransformType.ADDKE1) == ((DhId.ML_KEM_768, None), (DhId.ML_KEM_1024, None))
    assert spec.get(TransformType.ADDKE2) == ((DhId.NONE, None), (DhId.ML_KEM_1024, None))
    assert describe_spec(spec) == text
    assert describe_offer(offer(text)) == [text]


def test_esp_proposal_takes_addke_keywords() -> None:
    (spec,) = parse_proposals("aes256gcm16-x25519-ke1_mlkem768", ESP)
    assert spec.get(TransformType.ADDKE1) == ((DhId.ML_KEM_768, None),)
    # IKE_AUTH's child proposal does not carry them (no key exchange there);
    # CREATE_CHILD_SA's does (IKE_FOLLOWUP_KE follows)
    assert not any(t.type == TransformType.ADDKE1
                   for t in spec.to_wire(1, b"\0\0\0\1", with_dh=False).transforms)
    assert any(t.type == TransformType.ADDKE1
               for t in spec.to_wire(1, b"\0\0\0\1", with_addke=True).transforms)


@pytest.mark.parametrize(("text", "why"), [
    ("aes256gcm16-prfsha384-x25519-ke8_mlkem768", "unknown algorithm keyword 'ke8_mlkem768'"),
    ("aes256gcm16-prfsha384-x25519-ke1_aes128", "'aes128' is not a key exchange method"),
    ("aes256gcm16-prfsha384-x25519-ke1_bogus", "'bogus' is not a key exchange method"),
    ("aes256gcm16-ke1_mlkem768", "need a key exchange method too"),
])
def test_bad_addke_keywords_are_refused_with_the_reason(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_proposals(text, ESP if text.count("-") == 1 else IKE)


# --- selection ------------------------------------------------------------------------


def test_unknown_transform_type_skips_the_whole_proposal() -> None:
    """RFC 7296 3.3.6: not just the transform; the next proposal is taken."""
    (first,) = offer("aes256gcm16-prfsha384-x25519")
    odd = Proposal(1, IKE, b"", (*first.transforms, Transform(13, 1)))
    (plain,) = offer("aes128gcm16-prfsha256-x25519")
    plain = Proposal(2, IKE, b"", plain.transforms)
    ours = parse_proposals("aes256gcm16-prfsha384-x25519,aes128gcm16-prfsha256-x25519", IKE)
    chosen = select(ours, [odd, plain], spi_size=0, addke=True)
    assert chosen is not None and chosen.number == 2
    assert select(ours, [odd], spi_size=0, addke=True) is None


def test_addke_we_are_not_configured_for_is_not_chosen() -> None:
    """A peer insisting on ML-KEM is not answered with a classic-only SA."""
    ours = parse_proposals("aes256gcm16-prfsha384-x25519", IKE)
    assert select(ours, offer(HYBRID), spi_size=0, addke=True) is None
    optional = offer(HYBRID + "-ke1_none")
    chosen = select(ours, optional, spi_size=0, addke=True)
    assert chosen is not None and suite_of(chosen).addke == ()
    assert accept_chosen(optional, chosen)  # the initiator takes the omission


def test_hybrid_selected_with_our_preference_and_accepted() -> None:
    ours = parse_proposals("aes256gcm16-prfsha384-x25519-ke1_mlkem1024-ke1_mlkem768", IKE)
    theirs = offer("aes256gcm16-prfsha384-x25519-ke1_mlkem768-ke1_mlkem1024")
    chosen = select(ours, theirs, spi_size=0, addke=True)
    assert chosen is not None
    suite = suite_of(chosen)
    assert suite.dh == DhId.CURVE25519 and suite.addke == (DhId.ML_KEM_1024,)
    assert "KE1_ML_KEM_1024" in str(suite)
    assert accept_chosen(theirs, chosen)


def test_we_insist_on_addke_and_peer_offers_none() -> None:
    ours = parse_proposals(HYBRID, IKE)
    assert select(ours, offer("aes256gcm16-prfsha384-x25519"), spi_size=0, addke=True) is None
    optional = parse_proposals(HYBRID + "-ke1_none", IKE)
    chosen = select(optional, offer("aes256gcm16-prfsha384-x25519"), spi_size=0, addke=True)
    assert chosen is not None and suite_of(chosen).addke == ()


def test_initiator_refuses_a_dropped_mandatory_addke() -> None:
    sent = offer(HYBRID)
    no_addke = Proposal(1, IKE, b"", tuple(t for t in sent[0].transforms
                                           if t.type != TransformType.ADDKE1))
    assert not accept_chosen(sent, no_addke)


def test_exchanges_without_addke_do_not_choose_a_proposal_that_insists() -> None:
    """Where no additional key exchange can follow (a CREATE_CHILD_SA without KE, or
    `addke` off), a proposal that requires ADDKE is not taken as if it were classic."""
    ours = parse_proposals(HYBRID, IKE)
    assert select(ours, offer(HYBRID)) is None
    assert select(ours, offer(HYBRID + "-ke1_none")) is not None
    esp = parse_proposals("aes256gcm16-x25519-ke1_mlkem768", ESP)
    insisting = offer("aes256gcm16-x25519-ke1_mlkem768", ESP, b"\0\0\0\1")
    assert select(esp, insisting, DhRule.REQUIRE) is None
    # the first CHILD_SA (IKE_AUTH) has no key exchange at all: ADDKE is ignored there
    assert select(esp, insisting, DhRule.IGNORE) is not None


# --- ML-KEM ---------------------------------------------------------------------------


@pytest.mark.parametrize(("group", "ek", "ct"), [(DhId.ML_KEM_512, 800, 768),
                                                 (DhId.ML_KEM_768, 1184, 1088),
                                                 (DhId.ML_KEM_1024, 1568, 1568)])
def test_mlkem_initiator_and_responder_agree(group: DhId, ek: int, ct: int) -> None:
    initiator = dh.new_key_exchange(group)
    assert len(initiator.public_key) == ek
    ciphertext, secret = dh.respond(group, initiator.public_key)
    assert len(ciphertext) == ct and len(secret) == 32
    assert initiator.shared_secret(ciphertext) == secret


def test_mlkem_known_answer_from_seed() -> None:
    """The seed form (d || z) gives the library's key: decapsulating with our wrapper equals
    decapsulating with cryptography's key made from the same seed."""
    seed = bytes(range(64))
    ours = dh.key_exchange_from_private(DhId.ML_KEM_768, seed)
    reference = mlkem.MLKEM768PrivateKey.from_seed_bytes(seed)
    assert ours.public_key == reference.public_key().public_bytes_raw()
    ciphertext, secret = dh.respond(DhId.ML_KEM_768, ours.public_key)
    assert reference.decapsulate(ciphertext) == secret == ours.shared_secret(ciphertext)


@pytest.mark.parametrize("size", [0, 1183, 1185, 1088])
def test_mlkem_encapsulation_key_of_wrong_length_is_invalid_syntax(size: int) -> None:
    with pytest.raises(ProtocolError) as err:
        dh.respond(DhId.ML_KEM_768, bytes(size))
    assert err.value.notify == NotifyType.INVALID_SYNTAX


@pytest.mark.parametrize(("group", "ek"), [(DhId.ML_KEM_512, 800), (DhId.ML_KEM_768, 1184)])
def test_mlkem_encapsulation_key_failing_the_modulus_check_is_invalid_syntax(
        group: DhId, ek: int) -> None:
    with pytest.raises(ProtocolError, match="modulus") as err:
        dh.respond(group, b"\xff" * ek)
    assert err.value.notify == NotifyType.INVALID_SYNTAX


@pytest.mark.parametrize("size", [0, 1087, 1089, 1184])
def test_mlkem_ciphertext_of_wrong_length_is_invalid_syntax(size: int) -> None:
    initiator = dh.new_key_exchange(DhId.ML_KEM_768)
    with pytest.raises(ProtocolError) as err:
        initiator.shared_secret(bytes(size))
    assert err.value.notify == NotifyType.INVALID_SYNTAX


def test_mlkem512_from_seed_and_in_proposals() -> None:
    """ML-KEM-512 (kyber-py; cryptography lacks it): the seed form gives the same key
    pair twice, a tampered ciphertext gives another secret (implicit rejection, FIPS 203),
    and the proposal keyword is strongSwan's."""
    seed = bytes(range(64))
    ours = dh.key_exchange_from_private(DhId.ML_KEM_512, seed)
    assert ours.public_key == dh.key_exchange_from_private(DhId.ML_KEM_512, seed).public_key
    ciphertext, secret = dh.respond(DhId.ML_KEM_512, ours.public_key)
    assert ours.shared_secret(ciphertext) == secret
    tampered = bytes([ciphertext[0] ^ 1]) + ciphertext[1:]
    assert ours.shared_secret(tampered) != secret
    (spec,) = parse_proposals("aes256gcm16-prfsha384-x25519-ke1_mlkem512", IKE)
    assert str(spec) == "aes256gcm16-prfsha384-x25519-ke1_mlkem512"
