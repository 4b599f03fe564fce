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
from xfrmctl.ike.constants import DhId, ExchangeType, PayloadType, ProtocolId
from xfrmctl.ike.crypto import Prf, derive_additional_ike_keys
from xfrmctl.ike.events import ChildSaNegotiated, IkeSaUp, NegotiationFailed
from xfrmctl.ike.message import Message, decode, intermediate_octets, parse_header
from xfrmctl.ike.payloads import KePayload, push_chain
from xfrmctl.ike.proposals import ProposalSpec, parse_proposals
from xfrmctl.ike.sa import Datagram, IkeState
from xfrmctl.ike.tasks import ike_auth, ike_intermediate

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
