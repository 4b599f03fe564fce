"""reauth_time and over_time (strongSwan semantics), fragmentation force, and the
ESP_TFC_PADDING_NOT_SUPPORTED notify, on two in-memory peers."""

from __future__ import annotations

import pytest

from tests.support.ike_pair import Pair, child, make_pair, mirrored, psk_config, up
from xfrmctl.ike.config import Mode
from xfrmctl.ike.constants import ExchangeType, NotifyType, PayloadType
from xfrmctl.ike.events import ChildSaNegotiated, IkeSaDown, IkeSaRekeyed, IkeSaUp, ReauthDue
from xfrmctl.ike.message import decode, parse_header
from xfrmctl.ike.sa import IkeState


def pair_with(conf_a: dict[str, object], conf_b: dict[str, object] | None = None,
              **child_kw: object) -> Pair:
    lan = child(**child_kw)
    return make_pair(psk_config(children=(lan,), **conf_a),
                     psk_config(children=(mirrored(lan),), **(conf_b or {})))


def test_reauth_is_due_at_reauth_time_less_up_to_ten_percent() -> None:
    p = pair_with({"reauth_time": 1000.0, "rekey_time": 0.0})
    up(p)
    (ike,) = p.of("a", IkeSaUp)
    p.advance(899)
    assert p.of("a", ReauthDue) == []
    # due in [900, 1000]; the hard lifetime is over_time (100) later, so at 1000 the
    # reauthentication is due and the IKE SA still there, whatever the jitter drew
    p.advance(101)
    assert p.of("a", ReauthDue) == [ReauthDue(ike.ike_sa, "net")]
    assert p.of("b", ReauthDue) == []  # the peer has no reauth_time
    (sa,) = p.a.all()
    assert sa.state is IkeState.ESTABLISHED  # the daemon decides: nothing torn down


@pytest.mark.parametrize("over_time,limit", [(100.0, 100.0), (0.0, 100.0), (300.0, 300.0)])
def test_over_time_closes_an_ike_sa_nobody_reauthenticated(over_time: float,
                                                           limit: float) -> None:
    """The hard lifetime is over_time after reauth (default 10% of reauth_time)."""
    p = pair_with({"reauth_time": 1000.0, "rekey_time": 0.0, "over_time": over_time})
    up(p)
    (sa,) = p.a.all()
    reauth_at = sa.reauth_deadline
    assert reauth_at is not None and 900 <= reauth_at - p.now <= 1000
    p.advance(reauth_at + limit - 1 - p.now)  # reauth was due, nobody acted on it
    assert len(p.of("a", ReauthDue)) == 1
    assert p.of("a", IkeSaDown) == []
    p.advance(2)
    (down,) = p.of("a", IkeSaDown)
    assert down.reason == "expired (over_time)"
    assert [e.reason for e in p.of("b", IkeSaDown)] == ["deleted by peer"]


def test_over_time_follows_the_later_of_rekey_and_reauth() -> None:
    p = pair_with({"reauth_time": 1000.0, "rekey_time": 2000.0, "over_time": 50.0})
    up(p)
    (sa,) = p.a.all()
    assert sa.expire_deadline is not None and sa.rekey_deadline is not None
    assert sa.expire_deadline == sa.rekey_deadline + 50.0


def test_a_rekey_keeps_the_reauth_deadline() -> None:
    """An IKE rekey is no reauthentication (strongSwan keeps the reauth time too)."""
    p = pair_with({"reauth_time": 1000.0, "rekey_time": 600.0, "over_time": 100.0})
    up(p)
    p.advance(601)
    (rekeyed,) = p.of("a", IkeSaRekeyed)
    assert p.of("a", ReauthDue) == []
    p.advance(400)  # the successor rekeys at 540 s after the first rekey: not yet
    assert p.of("a", ReauthDue) == [ReauthDue(rekeyed.new_ike_sa, "net")]
    assert p.of("a", IkeSaDown)[-1].reason == "rekeyed"  # only the rekeyed one went


def _auth_datagrams(p: Pair) -> list[bytes]:
    return [d.data for side, d in p.wire if side == "a"
            and parse_header(d.data).exchange == ExchangeType.IKE_AUTH]


@pytest.mark.parametrize("force", [False, True])
def test_fragmentation_force_fragments_even_if_the_peer_did_not_offer(force: bool) -> None:
    """strongSwan's fragmentation=force: no IKEV2_FRAGMENTATION_SUPPORTED needed; large
    messages (not IKE_SA_INIT) leave in RFC 7383 fragments."""
    p = pair_with({"force_fragmentation": force, "fragment_size": 300},
                  {"fragmentation": False})
    up(p)
    sent = _auth_datagrams(p)
    if force:
        assert len(sent) > 1
        assert all(parse_header(d).next_payload == PayloadType.SKF for d in sent)
        assert all(len(d) <= 300 for d in sent)
    else:
        assert len(sent) == 1 and parse_header(sent[0]).next_payload == PayloadType.SK
    assert len(p.of("a", IkeSaUp)) == 1 and len(p.of("b", IkeSaUp)) == 1
    init = [d.data for side, d in p.wire if side == "a"
            and parse_header(d.data).exchange == ExchangeType.IKE_SA_INIT]
    assert len(init) == 1  # IKE_SA_INIT is never fragmented


def test_small_messages_are_not_fragmented_with_force() -> None:
    p = pair_with({"force_fragmentation": True})
    up(p)
    assert len(_auth_datagrams(p)) == 1


@pytest.mark.parametrize("mode", [Mode.TUNNEL, Mode.TRANSPORT])
def test_tfc_padding_not_supported_is_sent_and_honoured(mode: Mode) -> None:
    """Linux cannot strip TFC padding in transport mode: we say so, and the peer's notify
    reaches the CHILD_SA (no padding on the SA to it)."""
    p = pair_with({}, {}, mode=mode)
    up(p)
    (a,) = p.of("a", ChildSaNegotiated)
    (b,) = p.of("b", ChildSaNegotiated)
    refused = mode is Mode.TRANSPORT
    assert a.tfc_padding is b.tfc_padding is (not refused)
    (request,) = [d.data for side, d in p.wire if side == "a"
                  and parse_header(d.data).exchange == ExchangeType.IKE_AUTH]
    (responder,) = p.b.all()
    msg = decode(request, responder.keys.cipher_in)
    assert (msg.notify(NotifyType.ESP_TFC_PADDING_NOT_SUPPORTED) is not None) is refused
