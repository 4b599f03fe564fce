"""Hostile peers that have not authenticated (issue 15): what they can make the responder
hold stays bounded (fragments, half-open SAs, per address, one memory cap), and requests
the RFC says to answer are answered.

The network is in memory: one responder manager at RESPONDER, initiator managers at any
documentation address; an "attacker" is our own initiator whose IKE_AUTH never leaves
(so its SA stays half-open after a complete IKE_SA_INIT, cookies included), or raw
datagrams sealed with the keys its IKE_SA_INIT gave it.
"""

from __future__ import annotations

import gc
import ipaddress
import os
import tracemalloc
from dataclasses import dataclass, field

from tests.support.ike_pair import make_pair, psk_config
from xfrmctl.daemon.conf import DaemonConf
from xfrmctl.daemon.controller import Controller
from xfrmctl.ike import ts
from xfrmctl.ike.config import ChildConfig
from xfrmctl.ike.constants import (
    IKE_HEADER_SIZE,
    DhId,
    EncrId,
    ExchangeType,
    HeaderFlag,
    NotifyType,
    PayloadType,
    PrfId,
    ProtocolId,
    TransformType,
)
from xfrmctl.ike.events import Event, IkeSaUp
from xfrmctl.ike.fragment import Reassembler
from xfrmctl.ike.limits import HALF_OPEN_COST, Budget, Limits
from xfrmctl.ike.manager import IkeManager
from xfrmctl.ike.message import (
    FRAGMENT_FIELDS,
    HEADER,
    Message,
    SkFragment,
    decode,
    encode,
    seal,
)
from xfrmctl.ike.payloads import NotifyPayload, Proposal, SaPayload, Transform, UnknownPayload
from xfrmctl.ike.proposals import parse_proposals, select
from xfrmctl.ike.sa import Datagram, IkeSa, IkeState
from xfrmctl.kernel.fake import FakeKernel

RESPONDER = "192.0.2.1"
START = 1_700_000_000.0


def _is_ike_auth(d: Datagram) -> bool:
    return d.data[18] == ExchangeType.IKE_AUTH


@dataclass
class Net:
    """Managers by address; datagrams go to the manager of their destination address."""

    responder: IkeManager
    peers: dict[str, IkeManager] = field(default_factory=dict)
    now: float = START
    events: list[Event] = field(default_factory=list)
    hold_auth: set[str] = field(default_factory=set)  # peers whose IKE_AUTH is dropped
    answers: list[Datagram] = field(default_factory=list)  # responder -> unknown address

    def peer(self, address: str, *, hold_auth: bool = False) -> IkeManager:
        if address not in self.peers:
            self.peers[address] = IkeManager([psk_config(remote_addrs=(RESPONDER,))])
        if hold_auth:
            self.hold_auth.add(address)
        return self.peers[address]

    def initiate(self, address: str) -> IkeSa:
        return self.peer(address).initiate("net", (address, 500), (RESPONDER, 500), self.now)

    def inject(self, data: bytes, source: str) -> None:
        self.responder.receive_datagram(data, (RESPONDER, 500), (source, 500), self.now)

    def pump(self, rounds: int = 20) -> None:
        for _ in range(rounds):
            moved = False
            for address, mgr in self.peers.items():
                for d in mgr.datagrams_to_send():
                    if address in self.hold_auth and _is_ike_auth(d):
                        continue
                    moved = True
                    self.responder.receive_datagram(d.data, d.remote, d.local, self.now)
            for d in self.responder.datagrams_to_send():
                moved = True
                target = self.peers.get(d.remote[0])
                if target is None:
                    self.answers.append(d)
                else:
                    target.receive_datagram(d.data, d.remote, d.local, self.now)
            while (e := self.responder.next_event()) is not None:
                self.events.append(e)
            if not moved:
                return

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.responder.handle_timer(self.now)
        for mgr in self.peers.values():
            mgr.handle_timer(self.now)
        self.pump()


def make_net(limits: Limits | None = None, cookie_threshold: int = 200) -> Net:
    return Net(IkeManager([psk_config()], cookie_threshold=cookie_threshold, limits=limits))


def half_open_attacker(net: Net, address: str) -> IkeSa:
    """A complete IKE_SA_INIT (cookie round trip if asked) from `address`, no IKE_AUTH."""
    net.peer(address, hold_auth=True)
    sa = net.initiate(address)
    net.pump()
    return sa


def skf(sa: IkeSa, message_id: int, size: int, number: int = 1, total: int = 2) -> bytes:
    """An authentic SKF datagram (fragment `number` of `total`, `size` octets of inner
    data) of an IKE_AUTH request with `message_id`, sealed with the attacker SA's keys."""
    cipher = sa.keys.cipher_out
    assert cipher is not None and sa.state is IkeState.AUTH_SENT
    header = Message(ExchangeType.IKE_AUTH, sa.spi_i, sa.spi_r, message_id, True, False, [], [])
    return seal(header, (), os.urandom(size), cipher, enc_type=PayloadType.SKF,
                enc_next=PayloadType.IDI if number == 1 else PayloadType.NONE,
                extra=FRAGMENT_FIELDS.pack(number, total))


def traced_bytes() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


# ------------------------------------------------------------------- fragments (RFC 7383)


def test_fragment_flood_after_ike_sa_init_stays_bounded_and_is_freed_on_expiry() -> None:
    """The report: after IKE_SA_INIT, SKF "fragment 1 of 2" with message IDs 2..N of
    30-60 kB each from a peer that never authenticated. Only the message ID the window
    expects (1) may be reassembled: one buffer, not one per message ID."""
    net = make_net()
    attacker = half_open_attacker(net, "198.51.100.7")
    assert net.responder.half_open == 1
    tracemalloc.start()
    try:
        before = traced_bytes()
        sizes = [30_000 + (i * 7919) % 30_000 for i in range(200)]
        for mid, size in enumerate(sizes, 2):
            net.inject(skf(attacker, mid, size), "198.51.100.7")
        net.inject(skf(attacker, 1, 40_000), "198.51.100.7")  # the one in the window
        grown = traced_bytes() - before
        assert grown < 400_000, f"{grown} octets held after {sum(sizes)} sent"
        assert net.responder.budget.fragment_bytes <= 40_000 + 64  # message ID 1 only
        assert net.responder.budget.fragments == 1
        net.advance(31.0)  # the half-open timeout (30 s) expires
        assert net.responder.half_open == 0 and not net.responder.sas
        assert net.responder.budget.fragment_bytes == 0 == net.responder.budget.fragments
        assert net.responder.budget.held == 0
        assert traced_bytes() - before < 100_000
    finally:
        tracemalloc.stop()


def test_fragments_outside_the_window_are_not_buffered_but_a_real_auth_completes() -> None:
    """Stale fragments do not disturb the legitimate exchange of the same SA."""
    net = make_net()
    sa = half_open_attacker(net, "198.51.100.8")
    for mid in (0, 2, 7, 2**31):
        net.inject(skf(sa, mid, 1000), "198.51.100.8")
    assert net.responder.budget.fragments == 0
    assert net.responder.datagrams_to_send() == []  # nor answered (mid 0: IKE_SA_INIT's)
    net.hold_auth.clear()
    net.advance(5.0)  # the IKE_AUTH request is retransmitted, and now it arrives
    assert sa.state is IkeState.ESTABLISHED
    assert any(isinstance(e, IkeSaUp) for e in net.events)


def test_fragment_caps_per_sa_and_in_total() -> None:
    limits = Limits(fragments_per_sa=4, fragment_bytes_per_sa=10_000, fragment_bytes=25_000)
    net = make_net(limits)
    one = half_open_attacker(net, "198.51.100.9")
    net.inject(skf(one, 1, 1000, 1, 5), "198.51.100.9")  # 5 pieces > 4 per SA
    assert net.responder.budget.fragments == 0
    for number in (1, 2, 3):  # 3 x 4000 octets > 10000 per SA: the third breaks it
        net.inject(skf(one, 1, 4000, number, 4), "198.51.100.9")
    assert net.responder.budget.fragment_bytes == 0  # the message was given up
    held = 0
    for i in range(6):  # 6 SAs x 8000 octets > 25000 in total
        sa = half_open_attacker(net, f"203.0.113.{10 + i}")
        net.inject(skf(sa, 1, 8000), f"203.0.113.{10 + i}")
        held = net.responder.budget.fragment_bytes
        assert held <= 25_000
    assert held > 16_000  # the first ones are held, the later ones dropped
    assert net.responder.budget.fragments == held // 8000


def test_reassembler_gives_back_its_charge() -> None:
    budget = Budget(Limits())
    reassembler = Reassembler(budget=budget)
    msg = Message(ExchangeType.IKE_AUTH, b"i" * 8, b"r" * 8, 1, True, False)
    msg.fragment = SkFragment(1, 3, PayloadType.IDI, b"x" * 700)
    assert reassembler.add(msg) is None
    assert (budget.fragment_bytes, budget.fragments) == (700, 1)
    reassembler.clear()
    assert budget.fragment_bytes == 0 == budget.fragments
    tiny = Reassembler(budget=Budget(Limits(fragment_bytes=500)))
    assert tiny.add(msg) is None and tiny.held_bytes == 0  # no room: dropped


# ------------------------------------------------------------------- half-open per address


def test_600_cookie_completed_half_open_sas_from_one_address_are_not_all_created() -> None:
    net = make_net()
    net.peer("198.51.100.66", hold_auth=True)
    sas = [net.initiate("198.51.100.66") for _ in range(600)]
    net.pump()
    limit = net.responder.limits.half_open_per_address
    assert net.responder.half_open == limit
    completed = [sa for sa in sas if sa.state is IkeState.AUTH_SENT]
    assert len(completed) == limit  # they all got keys (cookies included) ...
    # ... past the cookie check
    assert any(sa.setup is not None and sa.setup.cookie is not None for sa in completed)
    assert net.responder.refused >= 600 - limit
    assert "198.51.100.66" in net.responder.blocked_addresses(net.now)
    net.peers.pop("198.51.100.66")  # the flood stops (its retransmissions too)
    # Another address still gets in.
    legit = net.initiate("203.0.113.5")
    net.pump()
    assert legit.state is IkeState.ESTABLISHED
    # The blocked address stays blocked for block_time, then may try again.
    net.advance(31.0)  # its half-open SAs expire
    assert net.responder.half_open == 0
    again = net.initiate("198.51.100.66")
    net.pump()
    assert again.state is IkeState.INIT_SENT and net.responder.half_open == 0
    net.advance(net.responder.limits.block_time)
    net.hold_auth.clear()
    late = net.initiate("198.51.100.66")
    net.pump()
    assert late.state is IkeState.ESTABLISHED


def test_spoofed_initiations_do_not_use_up_a_victims_quota() -> None:
    """Plain IKE_SA_INITs with a victim's source address (no cookie can come back):
    past cookie_threshold_per_address they get only COOKIEs, so the victim gets in."""
    net = make_net()
    victim = "203.0.113.99"
    template = net.peer("192.0.2.250")  # builds requests; their answers go nowhere
    for _ in range(50):
        sa = template.initiate("net", (victim, 500), (RESPONDER, 500), net.now)
        (d,) = template.datagrams_to_send()
        net.inject(d.data, victim)
        del sa
    assert net.responder.half_open == net.responder.limits.cookie_threshold_per_address
    assert victim not in net.responder.blocked_addresses(net.now)
    net.responder.datagrams_to_send()
    real = net.initiate(victim)
    net.pump()
    assert real.state is IkeState.ESTABLISHED


def test_static_block_list_gets_no_answer() -> None:
    net = make_net(Limits(block_networks=(ipaddress.ip_network("203.0.113.0/24"),)))
    blocked = net.initiate("203.0.113.40")
    net.pump()
    assert blocked.state is IkeState.INIT_SENT and net.responder.half_open == 0
    assert net.responder.dropped >= 1
    allowed = net.initiate("198.51.100.40")
    net.pump()
    assert allowed.state is IkeState.ESTABLISHED


# ------------------------------------------------------------------- one memory budget


def test_flood_from_many_addresses_keeps_the_cap_and_a_legitimate_peer_completes() -> None:
    """Cookie-completed half-open SAs from 400 addresses, each with a 20 kB fragment,
    against a 1 MiB cap: the account never exceeds it, the oldest half-open SAs make
    room, and a legitimate initiator arriving in the middle of it completes."""
    cap = 1024 * 1024
    net = make_net(Limits(memory=cap, half_open=10_000), cookie_threshold=50)
    tracemalloc.start()
    try:
        before = traced_bytes()
        peak = 0
        for i in range(400):
            address = f"198.51.{100 + i // 250}.{i % 250 + 1}"
            sa = half_open_attacker(net, address)
            if sa.state is IkeState.AUTH_SENT:
                net.inject(skf(sa, 1, 20_000), address)
            peak = max(peak, net.responder.budget.held)
            assert net.responder.budget.held <= cap
            if i == 300:
                legit = net.initiate("203.0.113.200")
                net.pump()
                assert legit.state is IkeState.ESTABLISHED
            net.peers.pop(address)  # the attacker's own state is not the responder's
        assert peak > cap - 64 * 1024  # the flood did fill the budget
        assert net.responder.evicted > 0
        held = net.responder.budget.held
        grown = traced_bytes() - before
        # Python-level memory tracks the account (it is an estimate from above).
        assert grown < 2 * cap, f"{grown} octets for {held} accounted"
    finally:
        tracemalloc.stop()
    net.advance(31.0)
    assert net.responder.budget.held == 0 and net.responder.half_open == 0


def test_half_open_cost_estimate_covers_a_half_open_sa() -> None:
    """HALF_OPEN_COST plus the request it keeps is at least what one half-open responder
    SA holds in Python objects (measured on the responder alone)."""
    net = make_net(cookie_threshold=10_000)
    requests = []
    for i in range(1, 201):
        address = f"198.51.100.{i}"
        mgr = net.peer(address)
        mgr.initiate("net", (address, 500), (RESPONDER, 500), net.now)
        requests.append((address, mgr.datagrams_to_send()[0].data))
    for address, data in requests[:50]:  # warm-up: caches, interned strings, heap growth
        net.inject(data, address)
    net.responder.datagrams_to_send()
    tracemalloc.start()
    try:
        before = traced_bytes()
        for address, data in requests[50:]:
            net.inject(data, address)
        net.responder.datagrams_to_send()
        per_sa = (traced_bytes() - before) / 150
    finally:
        tracemalloc.stop()
    size = len(requests[0][1])
    assert net.responder.half_open == 200
    assert per_sa <= HALF_OPEN_COST + size, per_sa
    assert net.responder.budget.half_open_bytes == 200 * (HALF_OPEN_COST + size)


# ------------------------------------------------------------------- RFC 7296 on hostile requests


def _init_request(net: Net, address: str) -> Message:
    """A real IKE_SA_INIT request from `address`, decoded (not sent)."""
    mgr = net.peer(address)
    mgr.initiate("net", (address, 500), (RESPONDER, 500), net.now)
    (d,) = mgr.datagrams_to_send()
    return decode(d.data)


def _answers(net: Net) -> list[Message]:
    return [decode(d.data) for d in net.responder.datagrams_to_send()]


def test_unknown_critical_payload_in_ike_sa_init_gets_unsupported_critical_payload() -> None:
    net = make_net()
    request = _init_request(net, "198.51.100.20")
    request.payloads.append(UnknownPayload(200, True, b"\x01\x02"))
    net.inject(encode(request), "198.51.100.20")
    (answer,) = _answers(net)
    assert answer.exchange == ExchangeType.IKE_SA_INIT and answer.is_response
    assert answer.spi_i == request.spi_i and answer.message_id == 0
    notify = answer.notify(NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD)
    assert notify is not None and notify.data == bytes([200])
    assert net.responder.half_open == 0 and not net.responder.sas
    # Not critical: ignored, the exchange goes on.
    request.payloads[-1] = UnknownPayload(200, False, b"\x01\x02")
    net.inject(encode(request), "198.51.100.20")
    (answer,) = _answers(net)
    assert answer.notify(NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD) is None
    assert len(answer.payloads) > 3 and net.responder.half_open == 1


def test_higher_major_version_gets_invalid_major_version_rate_limited() -> None:
    net = make_net(Limits(answers_per_second=10))
    raw = bytearray(encode(_init_request(net, "198.51.100.21")))
    raw[17] = 0x30  # version 3.0
    raw[20:24] = (7).to_bytes(4, "big")  # a message ID to copy
    net.inject(bytes(raw), "198.51.100.21")
    (d,) = net.responder.datagrams_to_send()
    spi_i, spi_r, first, version, exchange, flags, mid, length = HEADER.unpack_from(d.data)
    assert version == 0x20 and exchange == ExchangeType.IKE_SA_INIT and mid == 7
    assert spi_i == bytes(raw[:8]) and spi_r == bytes(8)
    assert flags & HeaderFlag.RESPONSE and not flags & HeaderFlag.INITIATOR
    assert first == PayloadType.NOTIFY and length == len(d.data)
    notify = decode(d.data).notify(NotifyType.INVALID_MAJOR_VERSION)
    assert notify is not None and not net.responder.sas
    raw[19] |= HeaderFlag.RESPONSE  # a response is never answered
    net.inject(bytes(raw), "198.51.100.21")
    raw[19] &= ~HeaderFlag.RESPONSE & 0xFF
    raw[17] = 0x10  # IKEv1: not ours to answer
    net.inject(bytes(raw), "198.51.100.21")
    assert net.responder.datagrams_to_send() == []
    raw[17] = 0x30
    for _ in range(100):  # a burst: at most answers_per_second answers a second
        net.inject(bytes(raw), "198.51.100.21")
    assert len(net.responder.datagrams_to_send()) <= 10
    net.now += 1.0
    net.inject(bytes(raw), "198.51.100.21")
    assert len(net.responder.datagrams_to_send()) == 1


def _aead(number: int, *extra: Transform, spi: bytes = b"",
          encr: EncrId = EncrId.AES_GCM_16) -> Proposal:
    return Proposal(number, ProtocolId.IKE, spi, (
        Transform(TransformType.ENCR, encr, 128), Transform(TransformType.PRF,
                                                            PrfId.HMAC_SHA2_256),
        Transform(TransformType.DH, DhId.CURVE25519), *extra))


def _with_proposals(request: Message, *proposals: Proposal) -> Message:
    request.payloads = [SaPayload(proposals) if isinstance(p, SaPayload) else p
                        for p in request.payloads]
    return request


def test_proposal_with_an_unknown_transform_type_is_skipped_whole() -> None:
    ours = parse_proposals("aes128gcm16-prfsha256-x25519", ProtocolId.IKE)
    odd = _aead(1, Transform(200, 1))
    assert select(ours, [odd]) is None  # not "accepted minus that transform"
    chosen = select(ours, [odd, _aead(2)])
    assert chosen is not None and chosen.number == 2
    net = make_net()
    request = _with_proposals(_init_request(net, "198.51.100.22"), odd)
    net.inject(encode(request), "198.51.100.22")
    (answer,) = _answers(net)
    assert answer.notify(NotifyType.NO_PROPOSAL_CHOSEN) is not None
    request = _with_proposals(_init_request(net, "198.51.100.22"), odd, _aead(2))
    net.inject(encode(request), "198.51.100.22")
    (answer,) = _answers(net)
    sa = answer.find(SaPayload)
    assert sa is not None and [p.number for p in sa.proposals] == [2]


def test_ike_proposal_with_an_spi_in_ike_sa_init_is_rejected_and_never_echoed() -> None:
    net = make_net()
    with_spi = _aead(1, spi=b"\xde\xad\xbe\xef\xde\xad\xbe\xef")
    request = _with_proposals(_init_request(net, "198.51.100.23"), with_spi)
    net.inject(encode(request), "198.51.100.23")
    (answer,) = _answers(net)
    assert answer.notify(NotifyType.NO_PROPOSAL_CHOSEN) is not None
    assert b"\xde\xad\xbe\xef" not in encode(answer)
    request = _with_proposals(_init_request(net, "198.51.100.23"), with_spi, _aead(2))
    net.inject(encode(request), "198.51.100.23")
    (answer,) = _answers(net)
    sa = answer.find(SaPayload)
    assert sa is not None and [(p.number, p.spi) for p in sa.proposals] == [(2, b"")]


def test_error_answers_are_plain_and_small() -> None:
    """No amplification: answers to unauthenticated junk are no larger than a header
    and one notify with its data."""
    net = make_net()
    request = _init_request(net, "198.51.100.24")
    request.payloads.append(UnknownPayload(201, True, os.urandom(1000)))
    data = encode(request)
    net.inject(data, "198.51.100.24")
    (d,) = net.responder.datagrams_to_send()
    assert len(d.data) <= IKE_HEADER_SIZE + 8 + 1 < len(data)
    assert isinstance(decode(d.data).payloads[0], NotifyPayload)


def test_retransmitted_fragmented_request_resends_the_answer_on_fragment_1_only() -> None:
    """RFC 7383 2.6.1: fragments of a request already answered are not reassembled
    again; fragment 1 makes the responder send its cached answer once more."""
    many = tuple(ts.parse(f"198.51.{i}.0/24") for i in range(100))
    lan = ChildConfig("lan", many, (ts.parse("203.0.113.0/24"),))
    back = ChildConfig("lan", (ts.parse("203.0.113.0/24"),), many)
    pair = make_pair(psk_config(children=(lan,), fragment_size=576),
                     psk_config(children=(back,), fragment_size=576))
    pair.a.initiate("net", pair.endpoint("a"), pair.endpoint("b"), pair.now)
    pair.pump()
    assert [type(e) for e in pair.of("b", IkeSaUp)] == [IkeSaUp]
    request = [d for side, d in pair.wire if side == "a" and _is_ike_auth(d)]
    answer = [d for side, d in pair.wire if side == "b" and _is_ike_auth(d)]
    assert len(request) > 2 and len(answer) > 2
    for d in reversed(request[1:]):
        pair.b.receive_datagram(d.data, d.remote, d.local, pair.now)
    assert pair.b.datagrams_to_send() == [] and pair.b.budget.fragments == 0
    first = request[0]
    pair.b.receive_datagram(first.data, first.remote, first.local, pair.now)
    assert [d.data for d in pair.b.datagrams_to_send()] == [d.data for d in answer]


def test_spoofed_init_flood_from_20000_addresses_while_200_peers_connect() -> None:
    """20,000 IKE_SA_INITs from as many (spoofed) addresses, 200 legitimate setups in
    between: every legitimate one completes (through a COOKIE round trip once the flood
    fills half the memory cap), the account stays within its cap, memory is bounded."""
    cap = 1024 * 1024  # smaller than cookie_threshold half-open SAs would take
    net = make_net(Limits(memory=cap))
    template = bytearray(encode(_init_request(net, "192.0.2.250")))
    net.peers.clear()
    legit = []
    tracemalloc.start()
    try:
        before = traced_bytes()
        for i in range(20_000):
            template[:8] = os.urandom(8)  # a new SPIi per spoofed request
            net.inject(bytes(template), f"2001:db8::{i + 1:x}")
            net.responder.datagrams_to_send()  # the answers go to nobody
            assert net.responder.budget.held <= cap
            if i % 100 == 99:
                legit.append(net.initiate(f"203.0.113.{len(legit) % 250 + 1}"))
                net.pump()
        grown = traced_bytes() - before
    finally:
        tracemalloc.stop()
    assert sum(sa.state is IkeState.ESTABLISHED for sa in legit) == 200
    assert 2 * net.responder.budget.held <= cap + 16 * 1024  # cookies from half the cap
    assert grown < 4 * cap + 200 * 20_000, grown  # the account, plus 200 established SAs


def test_cookie_secret_rotates_and_the_previous_one_still_counts() -> None:
    net = make_net(cookie_threshold=0)  # cookies for everyone

    def ask(request: Message) -> Message:
        net.inject(encode(request), "198.51.100.30")
        (answer,) = _answers(net)
        return answer

    first = _init_request(net, "198.51.100.30")
    cookie = ask(first).notify(NotifyType.COOKIE)
    assert cookie is not None and net.responder.half_open == 0
    first.payloads.insert(0, cookie)
    net.now += 121  # one rotation: made with the previous secret, still good
    assert ask(first).find(SaPayload) is not None and net.responder.half_open == 1
    second = _init_request(net, "198.51.100.30")
    cookie = ask(second).notify(NotifyType.COOKIE)
    assert cookie is not None
    second.payloads.insert(0, cookie)
    net.now += 2 * 121  # two rotations later it is refused: a new COOKIE instead
    again = ask(second)
    assert again.find(SaPayload) is None and again.notify(NotifyType.COOKIE) is not None
    garbled = bytearray(encode(second))
    garbled[-1] ^= 0xFF  # broken tail: a header walk finds no Nonce, nothing answered
    garbled[30:32] = b"\xff\xff"  # first payload's length past the end
    net.inject(bytes(garbled), "198.51.100.30")
    assert net.responder.datagrams_to_send() == []


def test_daemon_configuration_limits_section() -> None:
    conf = DaemonConf.model_validate({"limits": {
        "memory_bytes": 2**20, "half_open_per_address": 4, "block_time": 5,
        "block_networks": ["203.0.113.0/24", "2001:db8:1::/48"]}})
    limits = conf.limits.to_core()
    assert limits.memory == 2**20 and limits.half_open_per_address == 4
    assert limits.block_time == 5 and limits.blocked_network("2001:db8:1::7")
    assert limits.blocked_network("203.0.113.9") and not limits.blocked_network("192.0.2.9")
    assert DaemonConf().limits.to_core() == Limits()  # the documented defaults agree
    assert Controller(conf, FakeKernel()).manager.limits == limits  # wired into the core
    for bad in ({"block_networks": ["300.0.0.0/8"]}, {"half_open": 0}, {"spare": 1}):
        try:
            DaemonConf.model_validate({"limits": bad})
        except ValueError as exc:
            assert "limits" in str(exc)
        else:
            raise AssertionError(f"{bad} accepted")
