"""Hostile IKE_SA_INIT requests against a live responder (RFC 7296 2.5, 2.21.1, 3.3, 3.4,
3.9; RFC 6989; RFC 8031). Each case ends with the daemon healthy (`healthy` fixture)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from tests.hostile.conftest import HostileLab
from tests.hostile.peer import (
    GCM128,
    PRF256,
    X25519,
    assert_error,
    assert_refused,
    first,
    ike_proposal,
    init_with,
    is_init_accept,
    transform,
    with_payloads,
)
from xfrmctl.ike.constants import DhId, EncrId, NotifyType, ProtocolId, TransformType
from xfrmctl.ike.dh import MODP_PRIMES
from xfrmctl.ike.message import encode
from xfrmctl.ike.payloads import KePayload, NoncePayload, SaPayload, UnknownPayload

pytestmark = [pytest.mark.netns, pytest.mark.hostile]
NT = NotifyType


def test_valid_request_is_accepted(healthy: HostileLab) -> None:
    """The baseline the other cases change one thing of."""
    peer = healthy.peer()
    _, request = peer.init_request()
    assert is_init_accept(peer.ask(encode(request)))


def test_retransmitted_request_answered_from_cache(healthy: HostileLab) -> None:
    """RFC 7296 2.1: a retransmitted request gets the same response, no second SA."""
    peer = healthy.peer()
    _, request = peer.init_request()
    data = encode(request)
    one, two = peer.ask(data), peer.ask(data)
    assert is_init_accept(one) and one is not None and two is not None
    assert two.data == one.data


def test_unknown_critical_payload_gets_unsupported_critical_payload(healthy: HostileLab) -> None:
    """RFC 7296 2.5: an unknown payload with the critical bit MUST be rejected with
    UNSUPPORTED_CRITICAL_PAYLOAD, its data the payload type."""
    peer = healthy.peer()
    _, request = peer.init_request()
    msg = with_payloads(request, [*request.payloads, UnknownPayload(200, True, b"hostile")])
    notify = assert_error(peer.ask(encode(msg)), NT.UNSUPPORTED_CRITICAL_PAYLOAD)
    assert notify.data == bytes([200])


def test_unknown_noncritical_payload_is_ignored(healthy: HostileLab) -> None:
    """RFC 7296 2.5: an unknown payload without the critical bit MUST be skipped."""
    peer = healthy.peer()
    _, request = peer.init_request()
    msg = with_payloads(request, [*request.payloads, UnknownPayload(200, False, b"x" * 40)])
    assert is_init_accept(peer.ask(encode(msg)))


def test_proposal_with_unknown_transform_type_is_skipped(healthy: HostileLab) -> None:
    """RFC 7296 3.3.6: a proposal with a transform type we do not know is rejected as a
    whole; the only proposal gone, NO_PROPOSAL_CHOSEN."""
    peer = healthy.peer()
    _, request = peer.init_request()
    odd = ike_proposal(1, GCM128, PRF256, X25519, transform(200, 1))
    assert_error(peer.ask(init_with(request, sa=SaPayload((odd,)))), NT.NO_PROPOSAL_CHOSEN)


def test_next_proposal_chosen_after_one_with_unknown_transform_type(healthy: HostileLab) -> None:
    """RFC 7296 3.3.6: the proposal with the unknown type is skipped, the next one chosen."""
    peer = healthy.peer()
    _, request = peer.init_request()
    odd = ike_proposal(1, GCM128, PRF256, X25519, transform(200, 1))
    reply = peer.ask(init_with(request, sa=SaPayload((odd, ike_proposal(2)))))
    assert is_init_accept(reply) and reply is not None and reply.message is not None
    chosen = first(reply.message, SaPayload)
    assert isinstance(chosen, SaPayload) and [p.number for p in chosen.proposals] == [2]
    assert all(t.type != 200 for t in chosen.proposals[0].transforms)


def test_ike_proposal_with_spi_is_not_accepted(healthy: HostileLab) -> None:
    """RFC 7296 3.3.1: in an initial IKE SA negotiation the SPI Size MUST be zero; a
    proposal with an SPI must not be accepted (and its SPI not echoed)."""
    peer = healthy.peer()
    _, request = peer.init_request()
    sa = SaPayload((ike_proposal(1, spi=b"\x11" * 8),))
    reply = peer.ask(init_with(request, sa=sa))
    assert_refused(reply, NT.NO_PROPOSAL_CHOSEN, NT.INVALID_SYNTAX)


def test_proposal_without_dh_is_not_chosen(healthy: HostileLab) -> None:
    """RFC 7296 3.3.3: an IKE proposal needs a D-H transform."""
    peer = healthy.peer()
    _, request = peer.init_request()
    sa = SaPayload((ike_proposal(1, GCM128, PRF256),))
    assert_refused(peer.ask(init_with(request, sa=sa)), NT.NO_PROPOSAL_CHOSEN,
                   NT.INVALID_SYNTAX)


def test_no_acceptable_proposal_gets_no_proposal_chosen(healthy: HostileLab) -> None:
    """RFC 7296 2.7: nothing acceptable (DES, no PRF we have) -> NO_PROPOSAL_CHOSEN."""
    peer = healthy.peer()
    _, request = peer.init_request()
    weak = ike_proposal(1, transform(TransformType.ENCR, EncrId.DES),
                        transform(TransformType.PRF, 1), transform(TransformType.INTEG, 1), X25519)
    assert_error(peer.ask(init_with(request, sa=SaPayload((weak,)))), NT.NO_PROPOSAL_CHOSEN)


def test_esp_proposal_in_ike_sa_init_is_not_chosen(healthy: HostileLab) -> None:
    """The protocol of an IKE_SA_INIT proposal must be IKE (RFC 7296 3.3.1)."""
    peer = healthy.peer()
    _, request = peer.init_request()
    esp = ike_proposal(1, protocol=ProtocolId.ESP)
    assert_refused(peer.ask(init_with(request, sa=SaPayload((esp,)))), NT.NO_PROPOSAL_CHOSEN,
                   NT.INVALID_SYNTAX)


def test_transform_with_unknown_attribute_is_not_chosen(healthy: HostileLab) -> None:
    """RFC 7296 3.3.6: a transform with an attribute we do not know is unusable."""
    peer = healthy.peer()
    _, request = peer.init_request()
    odd = replace(GCM128, unknown_attributes=b"\x80\x63\x00\x01")
    sa = SaPayload((ike_proposal(1, odd, PRF256, X25519),))
    assert_error(peer.ask(init_with(request, sa=sa)), NT.NO_PROPOSAL_CHOSEN)


def test_empty_sa_payload_is_not_accepted(healthy: HostileLab) -> None:
    peer = healthy.peer()
    _, request = peer.init_request()
    assert_refused(peer.ask(init_with(request, sa=SaPayload(()))), NT.NO_PROPOSAL_CHOSEN,
                   NT.INVALID_SYNTAX)


def test_ke_of_another_group_gets_invalid_ke_payload(healthy: HostileLab) -> None:
    """RFC 7296 1.2/3.4: KE group not the chosen one -> INVALID_KE_PAYLOAD carrying the
    group the responder wants (2 octets)."""
    peer = healthy.peer()
    _, request = peer.init_request()
    sa = SaPayload((ike_proposal(1),))  # x25519 only
    key = ec.generate_private_key(ec.SECP256R1()).public_key().public_numbers()
    ke = KePayload(DhId.ECP_256, key.x.to_bytes(32, "big") + key.y.to_bytes(32, "big"))
    notify = assert_error(peer.ask(init_with(request, sa=sa, ke=ke)), NT.INVALID_KE_PAYLOAD)
    assert notify.data == int(DhId.CURVE25519).to_bytes(2, "big")


def test_ke_group_not_offered_gets_invalid_ke_payload(healthy: HostileLab) -> None:
    """A KE of a group that no proposal names: INVALID_KE_PAYLOAD with the chosen one."""
    peer = healthy.peer()
    _, request = peer.init_request()
    ke = KePayload(DhId.MODP_1024, b"\x02" * 128)
    notify = assert_error(peer.ask(init_with(request, ke=ke)), NT.INVALID_KE_PAYLOAD)
    assert int.from_bytes(notify.data, "big") in {p.id for p in ike_proposal(1).transforms}


@pytest.mark.parametrize("size", [0, 31, 33, 64])
def test_x25519_ke_of_wrong_length_is_refused(healthy: HostileLab, size: int) -> None:
    """RFC 8031 2: an X25519 public value is 32 octets; anything else is INVALID_SYNTAX
    (or dropped), never an IKE SA."""
    peer = healthy.peer()
    _, request = peer.init_request()
    ke = KePayload(DhId.CURVE25519, b"\x09" * size)
    assert_refused(peer.ask(init_with(request, ke=ke)), NT.INVALID_SYNTAX,
                   NT.INVALID_KE_PAYLOAD, NT.NO_PROPOSAL_CHOSEN)


def test_x25519_all_zero_public_value_is_refused(healthy: HostileLab) -> None:
    """RFC 8031 2.3: an all-zero shared secret MUST be rejected (a low-order point)."""
    peer = healthy.peer()
    _, request = peer.init_request()
    ke = KePayload(DhId.CURVE25519, bytes(32))
    assert_refused(peer.ask(init_with(request, ke=ke)), NT.INVALID_SYNTAX,
                   NT.INVALID_KE_PAYLOAD, NT.NO_PROPOSAL_CHOSEN)


@pytest.mark.parametrize("point", ["not-on-curve", "zero", "short"])
def test_ecp256_invalid_point_is_refused(healthy: HostileLab, point: str) -> None:
    """RFC 6989 2.3: a receiver MUST check that an ECP public value is on the curve."""
    peer = healthy.peer()
    _, request = peer.init_request()
    sa = SaPayload((ike_proposal(1, GCM128, PRF256, transform(TransformType.DH, DhId.ECP_256)),))
    data = {"not-on-curve": (1).to_bytes(32, "big") * 2, "zero": bytes(64),
            "short": b"\x04" * 33}[point]
    reply = peer.ask(init_with(request, sa=sa, ke=KePayload(DhId.ECP_256, data)))
    assert_refused(reply, NT.INVALID_SYNTAX, NT.INVALID_KE_PAYLOAD, NT.NO_PROPOSAL_CHOSEN)


@pytest.mark.parametrize("value", ["one", "p-1", "zero"])
def test_modp2048_degenerate_public_value_is_refused(healthy: HostileLab, value: str) -> None:
    """RFC 6989 2.1: a MODP public value must be 1 < y < p-1."""
    peer = healthy.peer()
    _, request = peer.init_request()
    modp = transform(TransformType.DH, DhId.MODP_2048)
    sa = SaPayload((ike_proposal(1, GCM128, PRF256, modp),))
    prime = MODP_PRIMES[DhId.MODP_2048]
    y = {"one": 1, "p-1": prime - 1, "zero": 0}[value]
    ke = KePayload(DhId.MODP_2048, y.to_bytes(256, "big"))
    assert_refused(peer.ask(init_with(request, sa=sa, ke=ke)), NT.INVALID_SYNTAX,
                   NT.INVALID_KE_PAYLOAD, NT.NO_PROPOSAL_CHOSEN)


def test_missing_ke_is_refused(healthy: HostileLab) -> None:
    peer = healthy.peer()
    _, request = peer.init_request()
    assert_refused(peer.ask(init_with(request, ke=None)), NT.INVALID_SYNTAX,
                   NT.INVALID_KE_PAYLOAD)


def test_missing_nonce_is_refused(healthy: HostileLab) -> None:
    peer = healthy.peer()
    _, request = peer.init_request()
    assert_refused(peer.ask(init_with(request, nonce=None)), NT.INVALID_SYNTAX)


def test_missing_sa_is_refused(healthy: HostileLab) -> None:
    peer = healthy.peer()
    _, request = peer.init_request()
    assert_refused(peer.ask(init_with(request, sa=None)), NT.INVALID_SYNTAX,
                   NT.NO_PROPOSAL_CHOSEN)


@pytest.mark.parametrize("size", [0, 8, 15, 257])
def test_nonce_outside_16_to_256_octets_is_refused(healthy: HostileLab, size: int) -> None:
    """RFC 7296 3.9: the nonce is 16 to 256 octets (and at least half the PRF key)."""
    peer = healthy.peer()
    _, request = peer.init_request()
    reply = peer.ask(init_with(request, nonce=NoncePayload(b"\x5a" * size)))
    assert_refused(reply, NT.INVALID_SYNTAX)


def test_two_ke_payloads_are_refused_or_use_one(healthy: HostileLab) -> None:
    """A duplicated KE: INVALID_SYNTAX or a normal answer, never a traceback."""
    peer = healthy.peer()
    _, request = peer.init_request()
    ke = first(request, KePayload)
    reply = peer.ask(encode(with_payloads(request, [*request.payloads, ke])))
    if not is_init_accept(reply):
        assert_refused(reply, NT.INVALID_SYNTAX)
