"""Hybrid post-quantum IKE SAs between two of our own peers: IKE_SA_INIT with ADDKE
transforms, IKE_INTERMEDIATE (RFC 9242) with ML-KEM (fragmented, RFC 7383), the key
update of RFC 9370 and the IntAuth binding in AUTH."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from tests.support.ike_pair import (
    Pair,
    assert_child_pair,
    child,
    make_pair,
    mirrored,
    psk_config,
    up,
)
from xfrmctl.ike.constants import DhId, ExchangeType, NotifyType, PayloadType, ProtocolId
from xfrmctl.ike.crypto import (
    Prf,
    derive_additional_ike_keys,
    derive_child_keymat,
    derive_rekeyed_ike_keys,
)
from xfrmctl.ike.events import ChildSaDeleted, ChildSaNegotiated, IkeSaUp, NegotiationFailed
from xfrmctl.ike.keys import KeyState
from xfrmctl.ike.message import Message, decode, intermediate_octets, parse_header
from xfrmctl.ike.payloads import KePayload, NotifyPayload, push_chain
from xfrmctl.ike.proposals import ProposalSpec, parse_proposals
from xfrmctl.ike.sa import Datagram, IkeState
from xfrmctl.ike.tasks import followup_ke, ike_auth, ike_intermediate

HYBRID = "aes256gcm16-prfsha384-x25519-ke1_mlkem768"


def _ike(text: str) -> tuple[ProposalSpec, ...]:
    return parse_proposals(text, ProtocolId.IKE)


def hybrid_pair(ours: str = HYBRID, theirs: str = HYBRID, fragment_size: int = 1280) -> Pair:
    lan = child()
    return make_pair(psk_config(children=(lan,), proposals=_ike(ours),
                                fragment_size=fragment_size),
                     psk_config(children=(mirrored(lan),), proposals=_ike(theirs),
                                fragment_size=fragment_size))


def exchanges(pair: Pair) -> list[tuple[str, ExchangeType]]:
    return [(side, ExchangeType(parse_header(d.data).exchange)) for side, d in pair.wire]


def test_hybrid_x25519_mlkem768_comes_up_over_fragmented_ike_intermediate() -> None:
    pair = hybrid_pair(fragment_size=576)
    up(pair)
    up_a, up_b = pair.of("a", IkeSaUp)[0], pair.of("b", IkeSaUp)[0]
    assert up_a.suite == up_b.suite
    assert up_a.suite.dh == DhId.CURVE25519 and up_a.suite.addke == (DhId.ML_KEM_768,)
    (ca,), (cb,) = pair.of("a", ChildSaNegotiated), pair.of("b", ChildSaNegotiated)
    assert_child_pair(ca, cb)
    seen = exchanges(pair)
    kinds = [e for _, e in seen]
    assert kinds[:2] == [ExchangeType.IKE_SA_INIT] * 2
    intermediate = [(s, d) for s, d in pair.wire
                    if parse_header(d.data).exchange == ExchangeType.IKE_INTERMEDIATE]
    # the 1184-octet encapsulation key does not fit one 576-octet datagram: fragments
    requests = [d for s, d in intermediate if s == "a"]
    assert len(requests) >= 3 and all(len(d.data) <= 576 for d in requests)
    assert all(parse_header(d.data).next_payload == PayloadType.SKF for d in requests)
    assert {parse_header(d.data).message_id for _, d in intermediate} == {1}
    auth = [d for _, d in pair.wire if parse_header(d.data).exchange == ExchangeType.IKE_AUTH]
    assert {parse_header(d.data).message_id for d in auth} == {2}
    assert kinds.index(ExchangeType.IKE_AUTH) > kinds.index(ExchangeType.IKE_INTERMEDIATE)
    sa_a, sa_b = pair.a.all()[0], pair.b.all()[0]
    assert sa_a.state is sa_b.state is IkeState.ESTABLISHED
    assert sa_a.keys is not None and sa_b.keys is not None
    assert sa_a.keys.keys.sk_d == sa_b.keys.keys.sk_d


def test_two_additional_key_exchanges_run_in_order() -> None:
    text = "aes256gcm16-prfsha384-x25519-ke1_mlkem768-ke2_mlkem1024"
    pair = hybrid_pair(text, text)
    up(pair)
    assert pair.of("a", IkeSaUp)[0].suite.addke == (DhId.ML_KEM_768, DhId.ML_KEM_1024)
    ids = [parse_header(d.data).message_id for _, d in pair.wire
           if parse_header(d.data).exchange == ExchangeType.IKE_INTERMEDIATE]
    assert sorted(set(ids)) == [1, 2]
    assert {parse_header(d.data).message_id for _, d in pair.wire
            if parse_header(d.data).exchange == ExchangeType.IKE_AUTH} == {3}
    assert len(pair.of("b", ChildSaNegotiated)) == 1


def test_optional_addke_against_a_classic_responder_needs_no_intermediate() -> None:
    pair = hybrid_pair(HYBRID + "-ke1_none", "aes256gcm16-prfsha384-x25519")
    up(pair)
    assert pair.of("a", IkeSaUp)[0].suite.addke == ()
    assert ExchangeType.IKE_INTERMEDIATE not in [e for _, e in exchanges(pair)]
    assert len(pair.of("a", ChildSaNegotiated)) == 1


def test_classic_responder_refuses_a_peer_insisting_on_mlkem() -> None:
    pair = hybrid_pair(HYBRID, "aes256gcm16-prfsha384-x25519")
    up(pair)
    (fail,) = pair.of("a", NegotiationFailed)
    assert fail.reason.value == "NO_PROPOSAL_CHOSEN"
    assert not pair.of("a", IkeSaUp)


def test_auth_binds_the_intermediate_exchanges(monkeypatch: pytest.MonkeyPatch) -> None:
    """RFC 9242 3.3.2: an initiator that leaves IntAuth out of its AUTH (as if the
    IKE_INTERMEDIATE messages had been different) is refused."""
    pair = hybrid_pair()
    real = ike_intermediate.int_auth

    def initiator_forgets(setup: object, mid: int) -> bytes:
        state = getattr(setup, "intermediate", None)
        if state is not None and state is pair.a.all()[0].setup.intermediate:  # type: ignore[union-attr]
            return b""
        return real(setup, mid)  # type: ignore[arg-type]

    monkeypatch.setattr(ike_auth, "int_auth", initiator_forgets)
    up(pair)
    assert not pair.of("b", IkeSaUp)
    assert any(f.reason.value == "AUTHENTICATION_FAILED" for f in pair.of("b", NegotiationFailed))


def test_lost_intermediate_response_is_resent_under_the_old_keys() -> None:
    """The responder updated its keys after answering; the initiator's retransmission
    (under the old keys) must still get the cached answer."""
    pair = hybrid_pair()
    dropped: list[Datagram] = []

    def lose_first_answer(side: str, d: Datagram) -> bool:
        if side == "b" and parse_header(d.data).exchange == ExchangeType.IKE_INTERMEDIATE \
                and not dropped:
            dropped.append(d)
            return True
        return False

    pair.drop = lose_first_answer
    up(pair)
    assert dropped and not pair.of("a", IkeSaUp)
    pair.advance(5)  # the initiator retransmits its request (after 4 s)
    assert pair.of("a", IkeSaUp) and pair.of("b", IkeSaUp)
    assert len(pair.of("a", ChildSaNegotiated)) == 1


def test_intermediate_request_with_the_wrong_method_is_invalid_syntax() -> None:
    pair = hybrid_pair()
    original = ike_intermediate.IkeIntermediate.__init__

    def wrong_group(self: ike_intermediate.IkeIntermediate, group: int) -> None:
        original(self, DhId.ML_KEM_1024)
        self.group = DhId.ML_KEM_1024

    ike_intermediate.IkeIntermediate.__init__ = wrong_group  # type: ignore[method-assign]
    try:
        up(pair)
    finally:
        ike_intermediate.IkeIntermediate.__init__ = original  # type: ignore[method-assign]
    assert not pair.of("a", IkeSaUp) and not pair.of("b", IkeSaUp)
    (fail,) = pair.of("a", NegotiationFailed)
    assert "INVALID_SYNTAX" in fail.message


def test_intermediate_octets_layout() -> None:
    """A = IKE header (Length as if unencrypted, Next Payload SK) | SK header (Next
    Payload of the first inner payload, Length 4 + inner); P = inner payloads."""
    ke = KePayload(DhId.ML_KEM_768, bytes(1184))
    msg = Message(ExchangeType.IKE_INTERMEDIATE, b"\1" * 8, b"\2" * 8, 1, True, False, [],
                  [ke])
    inner = push_chain([ke])
    octets = intermediate_octets(msg, inner)
    header = parse_header(octets)
    assert header.next_payload == PayloadType.SK and header.length == len(octets)
    assert header.message_id == 1 and header.exchange == ExchangeType.IKE_INTERMEDIATE
    assert octets[28:32] == bytes((PayloadType.KE, 0)) + (4 + len(inner)).to_bytes(2, "big")
    assert octets[32:] == inner


def test_received_fragments_give_the_octets_the_sender_folded() -> None:
    """RFC 9242 3.3.2 with RFC 7383: the receiver folds the reassembled message, equal
    to the sender's unfragmented one, whatever the fragment size."""
    pair = hybrid_pair(fragment_size=700)
    pair.a.initiate("net", pair.endpoint("a"), pair.endpoint("b"), pair.now)
    pair.step("a")
    pair.step("b")  # IKE_SA_INIT answered; the initiator's IKE_INTERMEDIATE is queued
    sa_a, sa_b = pair.a.all()[0], pair.b.all()[0]
    assert sa_a.setup is not None and sa_a.setup.intermediate is not None
    folded_by_sender = sa_a.setup.intermediate.int_auth_i
    assert len(pair.step("a")) >= 2  # fragments
    assert sa_b.setup is not None and sa_b.setup.intermediate is not None
    assert sa_b.setup.intermediate.int_auth_i == folded_by_sender != b""
    assert sa_b.setup.intermediate.exchanges == 1


def test_key_update_formula() -> None:
    """SKEYSEED(1) = prf(SK_d(0), SK(1) | Ni | Nr); keys = prf+(SKEYSEED(1), Ni|Nr|SPIi|SPIr)."""
    prf = Prf(7)  # HMAC-SHA2-512
    sk_d, secret, ni, nr, spi_i, spi_r = (bytes([i]) * n for i, n in
                                          ((1, 64), (2, 32), (3, 32), (4, 32), (5, 8), (6, 8)))
    keys = derive_additional_ike_keys(prf, sk_d, secret, ni, nr, spi_i, spi_r, 36, 0)
    skeyseed = hmac.new(sk_d, secret + ni + nr, hashlib.sha512).digest()
    assert keys.skeyseed == skeyseed
    t1 = hmac.new(skeyseed, ni + nr + spi_i + spi_r + b"\x01", hashlib.sha512).digest()
    assert keys.sk_d == t1[:64]
    t2 = hmac.new(skeyseed, t1 + ni + nr + spi_i + spi_r + b"\x02", hashlib.sha512).digest()
    assert keys.sk_ei == t2[:36]


def test_followup_secrets_come_after_the_nonces() -> None:
    """RFC 9370 2.2.4 (and strongSwan 6): KEYMAT = prf+(SK_d, SK(0) | Ni | Nr | SK(1)...)
    and SKEYSEED = prf(SK_d (old), SK(0) | Ni | Nr | SK(1)...)."""
    prf = Prf(5)  # HMAC-SHA2-256
    sk_d, g_ir, ni, nr, sk1 = b"d" * 32, b"g" * 32, b"i" * 32, b"r" * 32, b"k" * 32
    keymat = derive_child_keymat(prf, sk_d, ni, nr, 32, g_ir, sk1)
    assert keymat == hmac.new(sk_d, g_ir + ni + nr + sk1 + b"\x01", hashlib.sha256).digest()
    keys = derive_rekeyed_ike_keys(prf, sk_d, prf, g_ir, ni, nr, b"s" * 8, b"t" * 8, 36, 0,
                                   sk1)
    assert keys.skeyseed == hmac.new(sk_d, g_ir + ni + nr + sk1, hashlib.sha256).digest()


def test_unexpected_intermediate_request_is_refused() -> None:
    """A classic IKE SA (no ADDKE chosen) answers IKE_INTERMEDIATE with INVALID_SYNTAX."""
    pair = hybrid_pair("aes256gcm16-prfsha384-x25519", "aes256gcm16-prfsha384-x25519")
    pair.a.initiate("net", pair.endpoint("a"), pair.endpoint("b"), pair.now)
    pair.step("a")
    pair.step("b")
    sa_a, sa_b = pair.a.all()[0], pair.b.all()[0]
    pair.a.datagrams_to_send()  # forget the IKE_AUTH request: send our own instead
    assert sa_a.keys is not None
    msg = sa_a.message(ExchangeType.IKE_INTERMEDIATE, [])
    msg.message_id = 1
    (data,) = sa_a.encode(msg)
    pair.b.receive_datagram(data, pair.endpoint("a"), pair.endpoint("b"), pair.now)
    (answer,) = pair.b.datagrams_to_send()
    reply = decode(answer.data, sa_a.keys.cipher_in)
    assert [n.notify_type for n in reply.notifies()] == [7]  # INVALID_SYNTAX
    assert sa_b.state is IkeState.CLOSED


# --- CREATE_CHILD_SA with additional key exchanges (IKE_FOLLOWUP_KE) --------------------

ESP_HYBRID = "aes256gcm16-x25519-ke1_mlkem768"


def esp_pair(ours: str = ESP_HYBRID, theirs: str = ESP_HYBRID) -> Pair:
    lan = child(proposals=parse_proposals(ours, ProtocolId.ESP))
    back = mirrored(child(proposals=parse_proposals(theirs, ProtocolId.ESP)))
    return make_pair(psk_config(children=(lan,), proposals=_ike(HYBRID)),
                     psk_config(children=(back,), proposals=_ike(HYBRID)))


def keymat_secrets(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Record the lengths of the secrets each CHILD_SA's KEYMAT is made from: the main key
    exchange's and the additional ones'."""
    seen: list[tuple[int, int]] = []
    real = KeyState.child_keymat

    def spy(self: KeyState, nonce_i: bytes, nonce_r: bytes, size: int,
            shared: bytes | None, additional: bytes = b"") -> bytes:
        seen.append((len(shared or b""), len(additional)))
        return real(self, nonce_i, nonce_r, size, shared, additional)

    monkeypatch.setattr(KeyState, "child_keymat", spy)
    return seen


def test_child_rekey_with_mlkem_runs_ike_followup_ke(monkeypatch: pytest.MonkeyPatch) -> None:
    pair = esp_pair()
    up(pair)
    (old_a,) = pair.of("a", ChildSaNegotiated)
    seen = keymat_secrets(monkeypatch)
    pair.a.act(pair.a.all()[0], lambda sa: sa.rekey_child(old_a.spi_in, pair.now))
    pair.pump()
    new_a, new_b = pair.of("a", ChildSaNegotiated)[1], pair.of("b", ChildSaNegotiated)[1]
    assert_child_pair(new_a, new_b)
    assert new_a.rekey_of == old_a.spi_in
    assert new_a.suite.dh == DhId.CURVE25519 and new_a.suite.addke == (DhId.ML_KEM_768,)
    # KEYMAT from g^ir (32 octets) and SK(1) (ML-KEM: 32 octets), on both sides
    assert seen == [(32, 32), (32, 32)]
    kinds = [e for _, e in exchanges(pair)]
    i = kinds.index(ExchangeType.CREATE_CHILD_SA)
    assert kinds[i:i + 4] == [ExchangeType.CREATE_CHILD_SA] * 2 + \
        [ExchangeType.IKE_FOLLOWUP_KE] * 2
    (del_a,) = pair.of("a", ChildSaDeleted)
    assert del_a.spi_in == old_a.spi_in
    assert pair.events_a.index(new_a) < pair.events_a.index(del_a)
    assert pair.a.all()[0].followups is None and pair.b.all()[0].followups is None


def test_new_child_with_two_additional_exchanges(monkeypatch: pytest.MonkeyPatch) -> None:
    esp = "aes256gcm16-x25519-ke1_mlkem768-ke2_mlkem1024"
    lan = child(proposals=parse_proposals(ESP_HYBRID, ProtocolId.ESP))
    dmz = child("dmz", "198.51.100.128/25", "203.0.113.128/25",
                proposals=parse_proposals(esp, ProtocolId.ESP))
    pair = make_pair(psk_config(children=(lan, dmz), proposals=_ike(HYBRID)),
                     psk_config(children=(mirrored(lan), mirrored(dmz)),
                                proposals=_ike(HYBRID)))
    seen = keymat_secrets(monkeypatch)
    up(pair)
    a = {c.child: c for c in pair.of("a", ChildSaNegotiated)}
    b = {c.child: c for c in pair.of("b", ChildSaNegotiated)}
    assert_child_pair(a["dmz"], b["dmz"])
    assert a["dmz"].suite.addke == (DhId.ML_KEM_768, DhId.ML_KEM_1024)
    assert seen[-2:] == [(32, 64), (32, 64)]  # g^ir; SK(1) | SK(2)
    followups = {parse_header(d.data).message_id for _, d in pair.wire
                 if parse_header(d.data).exchange == ExchangeType.IKE_FOLLOWUP_KE}
    assert len(followups) == 2  # two exchanges (ML-KEM-1024's went in fragments)


def test_peer_insisting_on_mlkem_in_a_rekey_gets_no_proposal_chosen() -> None:
    """Our child wants only X25519: the peer's ML-KEM rekey is refused, the old SA stays."""
    pair = esp_pair(ESP_HYBRID, "aes256gcm16-x25519")
    up(pair)
    (old_a,) = pair.of("a", ChildSaNegotiated)
    pair.a.act(pair.a.all()[0], lambda sa: sa.rekey_child(old_a.spi_in, pair.now))
    pair.pump()
    (fail,) = pair.of("a", NegotiationFailed)
    assert fail.reason.value == "NO_PROPOSAL_CHOSEN"
    assert [c.spi_in for c in pair.a.all()[0].children.values()] == [old_a.spi_in]


def test_followup_with_an_unknown_link_is_state_not_found() -> None:
    pair = esp_pair()
    up(pair)
    sa_a = pair.a.all()[0]
    assert sa_a.keys is not None
    ke = KePayload(DhId.ML_KEM_768, bytes(1184))
    msg = sa_a.message(ExchangeType.IKE_FOLLOWUP_KE,
                       [ke, NotifyPayload(NotifyType.ADDITIONAL_KEY_EXCHANGE, 0, b"", b"x" * 8)])
    msg.message_id = sa_a.window.claim_id()
    (data,) = sa_a.encode(msg)
    pair.b.receive_datagram(data, pair.endpoint("a"), pair.endpoint("b"), pair.now)
    (answer,) = pair.b.datagrams_to_send()
    reply = decode(answer.data, sa_a.keys.cipher_in)
    assert [n.notify_type for n in reply.notifies()] == [NotifyType.STATE_NOT_FOUND]
    assert pair.b.all()[0].state is IkeState.ESTABLISHED


def test_failed_followup_leaves_the_old_child_and_reports(monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    """The responder rejects the initiator's ML-KEM key (modulus check): INVALID_SYNTAX,
    no CHILD_SA on either side, the old one stays installed."""
    pair = esp_pair()
    up(pair)
    (old_a,) = pair.of("a", ChildSaNegotiated)
    real_build = followup_ke.FollowupKe.build

    def bad_key(self: followup_ke.FollowupKe, sa: object, now: float) -> Message:
        msg = real_build(self, sa, now)  # type: ignore[arg-type]
        assert msg.protected is not None
        msg.protected[0] = KePayload(DhId.ML_KEM_768, b"\xff" * 1184)
        return msg

    monkeypatch.setattr(followup_ke.FollowupKe, "build", bad_key)
    pair.a.act(pair.a.all()[0], lambda sa: sa.rekey_child(old_a.spi_in, pair.now))
    pair.pump()
    assert len(pair.of("a", ChildSaNegotiated)) == len(pair.of("b", ChildSaNegotiated)) == 1
    (fail,) = pair.of("a", NegotiationFailed)
    assert "INVALID_SYNTAX" in fail.message
    sa_a = pair.a.all()[0]
    assert [(c.spi_in, c.state.name) for c in sa_a.children.values()] == \
        [(old_a.spi_in, "INSTALLED")]
    assert pair.b.all()[0].followups is None


def test_ike_rekey_with_mlkem_runs_ike_followup_ke(monkeypatch: pytest.MonkeyPatch) -> None:
    """SKEYSEED = prf(SK_d (old), g^ir | SK(1) | Ni | Nr): the new IKE SA works (a child
    rekey over it succeeds) and its keys came from both secrets on both sides."""
    pair = esp_pair()
    up(pair)
    old = pair.a.all()[0]
    seen: list[tuple[int, int]] = []
    real = KeyState.rekeyed

    def spy(self: KeyState, suite: object, shared: bytes, *args: object) -> KeyState:
        additional = args[5] if len(args) > 5 else b""
        assert isinstance(additional, bytes)
        seen.append((len(shared), len(additional)))
        return real(self, suite, shared, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(KeyState, "rekeyed", spy)
    pair.a.act(old, lambda sa: sa.rekey(pair.now))
    pair.pump()
    assert seen == [(32, 32), (32, 32)]  # X25519 and ML-KEM-768 secrets, both sides
    (new_a,), (new_b,) = pair.a.all(), pair.b.all()
    assert old.state is IkeState.CLOSED and new_a.state is IkeState.ESTABLISHED
    assert new_a.suite is not None and new_a.suite.addke == (DhId.ML_KEM_768,)
    assert new_a.keys is not None and new_b.keys is not None
    assert new_a.keys.keys.sk_d == new_b.keys.keys.sk_d
    assert ExchangeType.IKE_FOLLOWUP_KE in [e for _, e in exchanges(pair)]
    (child_a,) = pair.of("a", ChildSaNegotiated)
    pair.a.act(new_a, lambda sa: sa.rekey_child(child_a.spi_in, pair.now))
    pair.pump()
    assert_child_pair(pair.of("a", ChildSaNegotiated)[1], pair.of("b", ChildSaNegotiated)[1])


def test_ike_rekey_by_the_responder_with_mlkem() -> None:
    pair = esp_pair()
    up(pair)
    pair.b.act(pair.b.all()[0], lambda sa: sa.rekey(pair.now))
    pair.pump()
    (new_a,), (new_b,) = pair.a.all(), pair.b.all()
    assert new_a.state is new_b.state is IkeState.ESTABLISHED
    assert new_a.keys is not None and new_b.keys is not None
    assert new_a.keys.keys.sk_d == new_b.keys.keys.sk_d and len(new_a.children) == 1
