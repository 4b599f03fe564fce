"""Two in-memory peers run every exchange; keys must agree and state be right after each."""

from __future__ import annotations

import dataclasses
import ipaddress

import pytest

from tests.support.ike_pair import (
    ADDR_A,
    ADDR_B,
    NET_A,
    NET_B,
    Pair,
    assert_child_pair,
    child,
    make_pair,
    mirrored,
    psk_config,
    up,
)
from xfrmctl.ike import ts
from xfrmctl.ike.config import ChildConfig, Mode
from xfrmctl.ike.constants import DhId, EncrId, ExchangeType, ProtocolId
from xfrmctl.ike.events import (
    ChildSaDeleted,
    ChildSaNegotiated,
    FailureReason,
    IkeSaDown,
    IkeSaRekeyed,
    IkeSaUp,
    NegotiationFailed,
    PeerMoved,
    VirtualIpAssigned,
)
from xfrmctl.ike.message import parse_header
from xfrmctl.ike.proposals import parse_proposals
from xfrmctl.ike.sa import IkeState


@pytest.fixture
def pair() -> Pair:
    lan = child()
    return make_pair(psk_config(children=(lan,)), psk_config(children=(mirrored(lan),)))


def test_psk_tunnel_comes_up_with_matching_keys(pair: Pair) -> None:
    up(pair)
    up_a, up_b = pair.of("a", IkeSaUp)[0], pair.of("b", IkeSaUp)[0]
    assert up_a.initiator and not up_b.initiator
    assert (up_a.spi_i, up_a.spi_r) == (up_b.spi_i, up_b.spi_r)
    assert up_a.suite == up_b.suite and up_a.suite.encr == EncrId.AES_GCM_16
    assert str(up_a.remote_id) == ADDR_B and str(up_b.remote_id) == ADDR_A
    (ca,), (cb,) = pair.of("a", ChildSaNegotiated), pair.of("b", ChildSaNegotiated)
    assert_child_pair(ca, cb)
    assert ca.mode is Mode.TUNNEL and ca.protocol is ProtocolId.ESP and not ca.encap
    assert [ts.format_ts(t) for t in ca.local_ts] == [NET_A]
    assert len(ca.encr_key_out) == 16 + 4  # AES-128 key and GCM salt
    # IKE_SA_INIT, IKE_AUTH: two requests, two responses.
    exchanges = [parse_header(d.data).exchange for _, d in pair.wire]
    assert exchanges == [ExchangeType.IKE_SA_INIT] * 2 + [ExchangeType.IKE_AUTH] * 2
    sa_a = pair.a.all()[0]
    assert sa_a.state is IkeState.ESTABLISHED and len(sa_a.children) == 1


def test_wrong_psk_fails_on_both_sides_with_the_reason() -> None:
    lan = child()
    pair = make_pair(psk_config(children=(lan,)),
                     psk_config(children=(mirrored(lan),), psk=b"another test-only key!!"))
    up(pair)
    (fail_b,) = pair.of("b", NegotiationFailed)
    assert fail_b.reason is FailureReason.AUTHENTICATION_FAILED
    assert "pre-shared key" in fail_b.message
    (fail_a,) = pair.of("a", NegotiationFailed)
    assert fail_a.reason is FailureReason.AUTHENTICATION_FAILED
    assert not pair.of("a", ChildSaNegotiated) and not pair.a.all() and not pair.b.all()


def test_no_proposal_chosen_reports_both_lists() -> None:
    a = psk_config(proposals=parse_proposals("aes256-sha256-modp2048", ProtocolId.IKE))
    b = psk_config(proposals=parse_proposals("aes128gcm16-prfsha256-x25519", ProtocolId.IKE))
    pair = make_pair(a, b)
    up(pair)
    (fail_b,) = pair.of("b", NegotiationFailed)
    assert fail_b.reason is FailureReason.NO_PROPOSAL_CHOSEN
    assert fail_b.ours == ("aes128gcm16-prfsha256-x25519",)
    assert fail_b.theirs == ("aes256-prfsha256-sha256-modp2048",)
    (fail_a,) = pair.of("a", NegotiationFailed)
    assert fail_a.reason is FailureReason.NO_PROPOSAL_CHOSEN
    assert fail_a.ours == ("aes256-prfsha256-sha256-modp2048",)


def test_invalid_ke_payload_retry_with_the_group_the_responder_wants() -> None:
    a = psk_config(proposals=parse_proposals("aes128gcm16-prfsha256-ecp256-x25519",
                                             ProtocolId.IKE))
    b = psk_config(proposals=parse_proposals("aes128gcm16-prfsha256-x25519", ProtocolId.IKE))
    pair = make_pair(a, b)
    up(pair)
    assert pair.of("a", IkeSaUp)[0].suite.dh == DhId.CURVE25519
    inits = [d for _, d in pair.wire if parse_header(d.data).exchange == ExchangeType.IKE_SA_INIT]
    assert len(inits) == 4  # request(ecp256), INVALID_KE, request(x25519), response


def test_cookie_challenge_under_load() -> None:
    lan = child()
    pair = make_pair(psk_config(children=(lan,)), psk_config(children=(mirrored(lan),)),
                     cookie_threshold=0)
    up(pair)
    assert pair.of("a", IkeSaUp) and pair.of("b", IkeSaUp)
    inits = [d for _, d in pair.wire if parse_header(d.data).exchange == ExchangeType.IKE_SA_INIT]
    assert len(inits) == 4  # request, COOKIE, request with cookie, response
    assert len(pair.b.all()) == 1  # no state was kept for the cookie-less request


def test_lost_request_is_retransmitted(pair: Pair) -> None:
    dropped: list[int] = []

    def lose_first_auth(side: str, d: object) -> bool:
        header = parse_header(d.data)  # type: ignore[attr-defined]
        if header.exchange == ExchangeType.IKE_AUTH and not dropped:
            dropped.append(1)
            return True
        return False

    pair.drop = lose_first_auth
    up(pair)
    assert not pair.of("a", IkeSaUp)
    pair.advance(5)
    assert pair.of("a", IkeSaUp) and pair.of("b", IkeSaUp)


def test_lost_response_is_answered_from_the_cache(pair: Pair) -> None:
    dropped: list[int] = []

    def lose_auth_response(side: str, d: object) -> bool:
        header = parse_header(d.data)  # type: ignore[attr-defined]
        if side == "b" and header.exchange == ExchangeType.IKE_AUTH and not dropped:
            dropped.append(1)
            return True
        return False

    pair.drop = lose_auth_response
    up(pair)
    assert pair.of("b", ChildSaNegotiated) and not pair.of("a", IkeSaUp)
    pair.advance(5)
    assert len(pair.of("a", ChildSaNegotiated)) == 1
    assert len(pair.of("b", ChildSaNegotiated)) == 1  # processed once, answered twice
    assert_child_pair(pair.of("a", ChildSaNegotiated)[0], pair.of("b", ChildSaNegotiated)[0])


def test_unreachable_peer_gives_up_after_the_retransmits(pair: Pair) -> None:
    pair.drop = lambda side, d: True
    up(pair)
    pair.advance(60)
    assert not pair.of("a", NegotiationFailed)
    pair.advance(200)
    (fail,) = pair.of("a", NegotiationFailed)
    assert fail.reason is FailureReason.PEER_UNREACHABLE
    sent = [d for side, d in pair.wire if side == "a"]
    assert len(sent) == 6  # first transmission and five retransmits
    assert not pair.a.all()


def test_second_child_with_create_child_sa() -> None:
    lan, dmz = child(), child("dmz", "198.51.100.128/25", "203.0.113.128/25")
    pair = make_pair(psk_config(children=(lan, dmz)),
                     psk_config(children=(mirrored(lan), mirrored(dmz))))
    up(pair)
    a_children = pair.of("a", ChildSaNegotiated)
    assert [c.child for c in a_children] == ["lan", "dmz"]
    b_children = {c.child: c for c in pair.of("b", ChildSaNegotiated)}
    for c in a_children:
        assert_child_pair(c, b_children[c.child])
    assert parse_header(pair.wire[-1][1].data).exchange == ExchangeType.CREATE_CHILD_SA


def test_child_rekey_with_pfs_installs_new_before_deleting_old() -> None:
    esp = parse_proposals("aes256gcm16-x25519", ProtocolId.ESP)
    lan = child(proposals=esp)
    pair = make_pair(psk_config(children=(lan,)), psk_config(children=(mirrored(lan),)))
    up(pair)
    (old_a,) = pair.of("a", ChildSaNegotiated)
    pair.a.act(pair.a.all()[0], lambda sa: sa.rekey_child(old_a.spi_in, pair.now))
    pair.pump()
    new_a, new_b = pair.of("a", ChildSaNegotiated)[1], pair.of("b", ChildSaNegotiated)[1]
    assert_child_pair(new_a, new_b)
    assert new_a.rekey_of == old_a.spi_in and new_a.suite.dh == DhId.CURVE25519
    assert old_a.suite.dh is None  # the IKE_AUTH child has no key exchange of its own
    assert new_a.encr_key_out != old_a.encr_key_out
    (del_a,), (del_b,) = pair.of("a", ChildSaDeleted), pair.of("b", ChildSaDeleted)
    assert del_a.spi_in == old_a.spi_in and del_b.spi_out == old_a.spi_in
    # make-before-break: the new SA was reported before the old one was deleted
    assert pair.events_a.index(new_a) < pair.events_a.index(del_a)
    assert [c.spi_in for c in pair.a.all()[0].children.values()] == [new_a.spi_in]
    # PFS: the rekey carried a KE payload of x25519
    create = [d for _, d in pair.wire if parse_header(d.data).exchange ==
              ExchangeType.CREATE_CHILD_SA]
    assert len(create) == 2


def test_simultaneous_child_rekey_leaves_exactly_one_pair() -> None:
    lan = child()
    pair = make_pair(psk_config(children=(lan,)), psk_config(children=(mirrored(lan),)))
    up(pair)
    (old_a,), (old_b,) = pair.of("a", ChildSaNegotiated), pair.of("b", ChildSaNegotiated)
    sa_a, sa_b = pair.a.all()[0], pair.b.all()[0]
    pair.a.act(sa_a, lambda sa: sa.rekey_child(old_a.spi_in, pair.now))
    pair.b.act(sa_b, lambda sa: sa.rekey_child(old_b.spi_in, pair.now))
    pair.pump()
    left_a = {(c.spi_in, c.spi_out) for c in sa_a.children.values()}
    left_b = {(c.spi_out, c.spi_in) for c in sa_b.children.values()}
    assert len(left_a) == 1 and left_a == left_b
    assert old_a.spi_in not in {s for s, _ in left_a}
    assert len(pair.of("a", ChildSaNegotiated)) == 3  # the original and two rekeys
    assert len(pair.of("a", ChildSaDeleted)) == 2  # the old one and the redundant one


def test_ike_rekey_moves_children_to_the_new_sa(pair: Pair) -> None:
    up(pair)
    old = pair.a.all()[0]
    pair.a.act(old, lambda sa: sa.rekey(pair.now))
    pair.pump()
    (rekeyed_a,), (rekeyed_b,) = pair.of("a", IkeSaRekeyed), pair.of("b", IkeSaRekeyed)
    assert (rekeyed_a.new_spi_i, rekeyed_a.new_spi_r) == (rekeyed_b.new_spi_i,
                                                          rekeyed_b.new_spi_r)
    (new_a,), (new_b,) = pair.a.all(), pair.b.all()
    assert new_a.id == rekeyed_a.new_ike_sa and old.state is IkeState.CLOSED
    assert new_a.state is IkeState.ESTABLISHED and len(new_a.children) == 1
    assert new_b.state is IkeState.ESTABLISHED and len(new_b.children) == 1
    assert not pair.of("a", ChildSaDeleted)  # children survive an IKE rekey
    # The new IKE SA works: rekey the child over it.
    (child_a,) = pair.of("a", ChildSaNegotiated)
    pair.a.act(new_a, lambda sa: sa.rekey_child(child_a.spi_in, pair.now))
    pair.pump()
    assert_child_pair(pair.of("a", ChildSaNegotiated)[1], pair.of("b", ChildSaNegotiated)[1])


def test_ike_rekeys_keep_the_prf_where_the_proposals_allow(pair: Pair) -> None:
    """Both ends come to prefer another PRF: the rekey still keeps the running one (a new
    PRF is keyed differently by strongSwan and by RFC 7296 2.18)."""
    up(pair)
    old, peer = pair.a.all()[0], pair.b.all()[0]
    assert old.suite is not None and old.config is not None and peer.config is not None
    running = old.suite.prf
    sha384_first = parse_proposals("aes256gcm16-prfsha384-ecp384, aes128gcm16-prfsha256-"
                                   "prfsha384-x25519", ProtocolId.IKE)
    old.config = dataclasses.replace(old.config, proposals=sha384_first)
    peer.config = dataclasses.replace(peer.config, proposals=sha384_first)
    pair.a.act(old, lambda sa: sa.rekey(pair.now))
    pair.pump()
    (new_a,), (new_b,) = pair.a.all(), pair.b.all()
    assert new_a.suite is not None and new_b.suite is not None
    assert new_a.suite.prf == new_b.suite.prf == running
    (child_a,) = pair.of("a", ChildSaNegotiated)  # the new IKE SA works
    pair.a.act(new_a, lambda sa: sa.rekey_child(child_a.spi_in, pair.now))
    pair.pump()
    assert_child_pair(pair.of("a", ChildSaNegotiated)[1], pair.of("b", ChildSaNegotiated)[1])


def test_delete_child_from_the_responder(pair: Pair) -> None:
    up(pair)
    (cb,) = pair.of("b", ChildSaNegotiated)
    pair.b.act(pair.b.all()[0], lambda sa: sa.delete_child(cb.spi_in, pair.now))
    pair.pump()
    assert pair.of("a", ChildSaDeleted)[0].reason == "deleted by peer"
    assert pair.of("b", ChildSaDeleted)[0].spi_in == cb.spi_in
    assert not pair.a.all()[0].children and not pair.b.all()[0].children


def test_delete_ike_sa_takes_children_down(pair: Pair) -> None:
    up(pair)
    pair.a.act(pair.a.all()[0], lambda sa: sa.delete(pair.now))
    pair.pump()
    assert pair.of("a", IkeSaDown)[0].reason == "deleted"
    assert pair.of("b", IkeSaDown)[0].reason == "deleted by peer"
    assert len(pair.of("b", ChildSaDeleted)) == 1
    assert not pair.a.all() and not pair.b.all()


def test_dead_peer_detection_reports_unreachable() -> None:
    lan = child()
    pair = make_pair(psk_config(children=(lan,), dpd_delay=10),
                     psk_config(children=(mirrored(lan),)))
    up(pair)
    pair.advance(11)
    informational = [d for _, d in pair.wire if parse_header(d.data).exchange ==
                     ExchangeType.INFORMATIONAL]
    assert len(informational) == 2  # liveness request and its answer
    pair.drop = lambda side, d: True
    pair.advance(300)
    assert pair.of("a", NegotiationFailed)[0].reason is FailureReason.PEER_UNREACHABLE
    assert pair.of("a", ChildSaDeleted)


def test_traffic_selectors_are_narrowed_by_the_responder() -> None:
    wide = child(local="198.51.100.0/24", remote="203.0.113.0/24")
    narrow_b = child(local="203.0.113.0/25", remote="198.51.100.0/24[tcp]")
    pair = make_pair(psk_config(children=(wide,)), psk_config(children=(narrow_b,)))
    up(pair)
    (ca,) = pair.of("a", ChildSaNegotiated)
    assert [ts.format_ts(t) for t in ca.local_ts] == ["198.51.100.0/24[tcp]"]
    assert [ts.format_ts(t) for t in ca.remote_ts] == ["203.0.113.0/25"]


@pytest.mark.parametrize("web_side", ["initiator", "responder"])
def test_a_web_only_child_is_narrowed_to_tcp_443_either_way(web_side: str) -> None:
    wide = child(local="198.51.100.0/24", remote="203.0.113.0/24")
    web = child(local="198.51.100.0/24", remote="203.0.113.0/24[tcp/443]")
    web_b = child(local="203.0.113.0/24[tcp/443]", remote="198.51.100.0/24")
    wide_b = child(local="203.0.113.0/24", remote="198.51.100.0/24")
    a, b = (web, wide_b) if web_side == "initiator" else (wide, web_b)
    pair = make_pair(psk_config(children=(a,)), psk_config(children=(b,)))
    up(pair)
    (ca,), (cb,) = pair.of("a", ChildSaNegotiated), pair.of("b", ChildSaNegotiated)
    assert [ts.format_ts(t) for t in ca.remote_ts] == ["203.0.113.0/24[tcp/443]"]
    assert [ts.format_ts(t) for t in cb.local_ts] == ["203.0.113.0/24[tcp/443]"]
    assert [ts.format_ts(t) for t in ca.local_ts] == ["198.51.100.0/24"]


def test_ts_unacceptable_reports_both_selector_sets() -> None:
    a = child(local="198.51.100.0/24", remote="203.0.113.0/24")
    b = child(local="192.0.2.128/25", remote="198.51.100.0/24")
    pair = make_pair(psk_config(children=(a,)), psk_config(children=(b,)))
    up(pair)
    assert pair.of("a", IkeSaUp) and not pair.of("a", ChildSaNegotiated)
    (fail_b,) = pair.of("b", NegotiationFailed)
    assert fail_b.reason is FailureReason.TS_UNACCEPTABLE
    assert "198.51.100.0/24" in fail_b.theirs and "203.0.113.0/24" in fail_b.theirs
    (fail_a,) = pair.of("a", NegotiationFailed)
    assert fail_a.reason is FailureReason.TS_UNACCEPTABLE and fail_a.child == "lan"


def test_transport_mode_host_to_host() -> None:
    host = ChildConfig("host", mode=Mode.TRANSPORT)
    pair = make_pair(psk_config(children=(host,)), psk_config(children=(host,)))
    up(pair)
    (ca,), (cb,) = pair.of("a", ChildSaNegotiated), pair.of("b", ChildSaNegotiated)
    assert_child_pair(ca, cb)
    assert ca.mode is Mode.TRANSPORT
    assert [ts.format_ts(t) for t in ca.local_ts] == [f"{ADDR_A}/32"]


class _Pool:
    def __init__(self) -> None:
        self.leases: dict[str, str] = {}

    def acquire(self, owner: str) -> ipaddress.IPv4Address:
        self.leases[owner] = "203.0.113.77"
        return ipaddress.IPv4Address("203.0.113.77")

    def release(self, owner: str) -> None:
        self.leases.pop(owner, None)


def test_remote_access_client_gets_a_virtual_ip() -> None:
    client = ChildConfig("ra", remote_ts=(ts.parse("198.51.100.0/24"),))
    gateway = ChildConfig("ra", local_ts=(ts.parse("198.51.100.0/24"),))
    pool = _Pool()
    pair = make_pair(psk_config(children=(client,), request_virtual_ip=True),
                     psk_config(children=(gateway,), pool=pool))  # type: ignore[arg-type]
    up(pair)
    assert pair.of("a", VirtualIpAssigned)[0].address == "203.0.113.77"
    # both ends announce the IKE SA with the virtual IP: the client's own, the gateway's lease
    assert [e.virtual_ip for e in pair.of("a", IkeSaUp) + pair.of("b", IkeSaUp)] == [
        "203.0.113.77", "203.0.113.77"]
    (ca,), (cb,) = pair.of("a", ChildSaNegotiated), pair.of("b", ChildSaNegotiated)
    assert [ts.format_ts(t) for t in ca.local_ts] == ["203.0.113.77/32"]
    assert_child_pair(ca, cb)
    pair.a.act(pair.a.all()[0], lambda sa: sa.delete(pair.now))
    pair.pump()
    assert pool.leases == {}


def test_forced_encapsulation_moves_ike_to_4500() -> None:
    lan = child()
    pair = make_pair(psk_config(children=(lan,), force_encap=True),
                     psk_config(children=(mirrored(lan),)))
    up(pair)
    (ca,), (cb,) = pair.of("a", ChildSaNegotiated), pair.of("b", ChildSaNegotiated)
    assert ca.encap and cb.encap
    assert ca.remote == (ADDR_B, 4500) and cb.remote == (ADDR_A, 4500)
    auth = [d for _, d in pair.wire if parse_header(d.data).exchange == ExchangeType.IKE_AUTH]
    assert all(d.remote[1] == 4500 for d in auth)


def test_natted_peer_follows_its_new_mapping() -> None:
    """An authenticated request from the NATed peer's new port moves the IKE SA (and says
    so, for its CHILD_SAs); a kernel MAPPING moves it only where the peer is NATed."""
    lan = child()
    pair = make_pair(psk_config(children=(lan,), force_encap=True),
                     psk_config(children=(mirrored(lan),)))
    up(pair)
    sa_a, sa_b = pair.a.all()[0], pair.b.all()[0]
    assert sa_b.nat_remote and not sa_b.nat_local
    pair.a.act(sa_a, lambda sa: sa.liveness_check(pair.now))
    for d in pair.a.datagrams_to_send():  # the NAT rebinds: A now appears at port 40000
        pair.b.receive_datagram(d.data, d.local, (ADDR_A, 40000), pair.now)
    pair.pump()
    (moved,) = pair.of("b", PeerMoved)
    assert (moved.old, moved.new) == ((ADDR_A, 4500), (ADDR_A, 40000))
    assert sa_b.remote == (ADDR_A, 40000)
    side, answer = pair.wire[-1]  # B's DPD answer went to the new mapping
    assert side == "b" and answer.remote == (ADDR_A, 40000)
    # B's kernel saw ESP from yet another address: B follows; A (NATed itself) does not
    assert sa_b.peer_moved(("192.0.2.11", 40001)) and sa_b.remote == ("192.0.2.11", 40001)
    assert not sa_a.peer_moved(("192.0.2.12", 4500)) and sa_a.remote == (ADDR_B, 4500)


def test_large_messages_are_fragmented() -> None:
    many = tuple(ts.parse(f"198.51.{i}.0/24") for i in range(100))
    lan = ChildConfig("lan", many, (ts.parse(NET_B),))
    back = ChildConfig("lan", (ts.parse(NET_B),), many)
    pair = make_pair(psk_config(children=(lan,), fragment_size=576),
                     psk_config(children=(back,), fragment_size=576))
    up(pair)
    (ca,), (cb,) = pair.of("a", ChildSaNegotiated), pair.of("b", ChildSaNegotiated)
    assert_child_pair(ca, cb)
    assert len(ca.local_ts) == 100
    assert all(len(d.data) <= 576 for _, d in pair.wire)
    auth = [d for _, d in pair.wire if parse_header(d.data).exchange == ExchangeType.IKE_AUTH]
    assert len(auth) > 4


def test_unknown_peer_address_gets_no_proposal_chosen() -> None:
    lan = child()
    pair = make_pair(psk_config(children=(lan,)),
                     psk_config(children=(mirrored(lan),), remote_addrs=("192.0.2.99",)))
    up(pair)
    assert pair.of("a", NegotiationFailed)[0].reason is FailureReason.NO_PROPOSAL_CHOSEN
    assert not pair.b.all()
