"""All IKE SAs of one gateway, sans-I/O: routes datagrams by SPI, creates responders,
answers with cookies under load, and keeps every SA's timer in one heap.

The daemon's endpoints feed `receive_datagram()` and send what `datagrams_to_send()`
returns; `next_event()` yields the events of every SA; `get_timer()`/`handle_timer()`
drive all timers from one place.

What unauthenticated peers can make it hold is bounded by `limits.Limits` (see there):
half-open IKE SAs (in total, per address, in octets), fragment buffers, blocked
addresses. Before an IKE SA exists, an IKE_SA_INIT request goes through, in order: the
static block list, the temporary block of its address, the cookie check on a walk of
the payload headers (a COOKIE is required once `cookie_threshold` SAs are half-open, or
half the half-open table or memory budget is in use, or
`limits.cookie_threshold_per_address` are from that address), parsing (an unknown
critical payload is answered with UNSUPPORTED_CRITICAL_PAYLOAD, RFC 7296 2.5), the
per-address limit, and room in the half-open table (the oldest half-open SA makes way).
A request of a higher major version gets INVALID_MAJOR_VERSION (RFC 7296 1.5, 2.5).
Error answers outside an SA are rate-limited.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import os
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace

from .config import IkeConfig
from .constants import (
    IKE_HEADER_SIZE,
    IKE_VERSION,
    PAYLOAD_HEADER_SIZE,
    ExchangeType,
    HeaderFlag,
    NotifyType,
    PayloadType,
)
from .errors import ProtocolError
from .events import Event, FailureReason, IkeSaRekeyed, NegotiationFailed
from .limits import HALF_OPEN_COST, MAX_BLOCKED, Budget, Limits
from .message import HEADER, Message, decode, encode, parse_header
from .payloads import GENERIC_HEADER, NotifyPayload, push_chain
from .sa import Datagram, Endpoint, IkeSa, IkeState, random_child_spi

COOKIE_VERSION = b"\x00\x01"
COOKIE_SECRET_LIFETIME = 120.0  # a new cookie secret this often; the previous one still counts


class IkeManager:
    def __init__(self, configs: Iterable[IkeConfig] = (), *, cookie_threshold: int = 200,
                 spi_allocator: Callable[[], int] = random_child_spi,
                 limits: Limits | None = None) -> None:
        self.configs: dict[str, IkeConfig] = {c.name: c for c in configs}
        self.cookie_threshold = cookie_threshold
        self.limits = limits or Limits()
        self.budget = Budget(self.limits)
        self.sas: dict[bytes, IkeSa] = {}  # by our SPI
        self._by_id: dict[int, IkeSa] = {}
        # Half-open responder SAs, oldest first: (source address, peer's SPI) -> SA, and
        # by SA id -> (that key, octets charged to the budget).
        self._half_open: dict[tuple[str, bytes], IkeSa] = {}
        self._half_open_ids: dict[int, tuple[tuple[str, bytes], int]] = {}
        self._per_address: dict[str, int] = {}  # half-open SAs per source address
        self._refusals: dict[str, int] = {}  # refused IKE_SA_INITs, while it has half-open
        self._blocked: dict[str, float] = {}  # address -> blocked until (oldest first)
        self._answer_tokens = 0.0
        self._answer_at: float | None = None
        self._timers: list[tuple[float, int]] = []
        self._scheduled: dict[int, float] = {}  # SA id -> the deadline its newest entry has
        self._events: deque[Event] = deque()
        self._out: list[Datagram] = []
        self._cookie_secret = os.urandom(32)
        self._cookie_secret_old = self._cookie_secret
        self._cookie_secret_at: float | None = None
        self._alloc_spi = spi_allocator
        self.dropped = 0  # datagrams that were malformed or for no SA
        # `now` + this = the wall-clock time, for certificate validity when the caller's
        # `now` is a monotonic clock (the caller keeps it current; 0: `now` is wall-clock)
        self.wall_offset = 0.0
        self.refused = 0  # IKE_SA_INITs over a per-address limit, or from blocked addresses
        self.evicted = 0  # half-open SAs dropped to make room for newer ones

    # ----------------------------------------------------------------- outputs

    def datagrams_to_send(self) -> list[Datagram]:
        out, self._out = self._out, []
        return out

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        while self._timers:
            deadline, sa_id = self._timers[0]
            sa = self._by_id.get(sa_id)
            if sa is not None and sa.get_timer() == deadline:
                return deadline
            self._pop_timer()  # stale entry
        return None

    def handle_timer(self, now: float) -> None:
        while self._timers and self._timers[0][0] <= now:
            deadline, sa_id = self._pop_timer()
            sa = self._by_id.get(sa_id)
            if sa is not None and sa.get_timer() == deadline:
                sa.handle_timer(now)
                self._collect(sa)

    # ----------------------------------------------------------------- API

    def get(self, sa_id: int) -> IkeSa | None:
        return self._by_id.get(sa_id)

    @property
    def half_open(self) -> int:
        return len(self._half_open)

    def blocked_addresses(self, now: float) -> list[str]:
        return [a for a, until in self._blocked.items() if until > now]

    def all(self) -> list[IkeSa]:
        return list(self._by_id.values())

    def initiate(self, name: str, local: Endpoint, remote: Endpoint, now: float,
                 children: Sequence[str] | None = None, *, reauth: bool = False) -> IkeSa:
        """A new IKE SA as initiator. `reauth`: it replaces one with the same peer (RFC
        7296 2.8.3), so no INITIAL_CONTACT (the peer would drop the old one at once)."""
        config = self.configs[name]
        if reauth:
            config = replace(config, initial_contact=False)
        sa = IkeSa.initiator(config, local, remote, now, spi_allocator=self._alloc_spi)
        self._register(sa)
        sa.initiate(now, children)
        self._collect(sa)
        return sa

    def adopt(self, sa: IkeSa) -> None:
        """Take over an IKE SA made elsewhere (restored after a daemon restart)."""
        self._register(sa)
        self._collect(sa)

    def resume_auth(self, sa_id: int, now: float) -> None:
        """The daemon fetched what a RevocationFetch asked for (or gave up): go on."""
        sa = self.get(sa_id)
        if sa is not None:
            sa.wall_offset = self.wall_offset
            sa.resume_auth(now)
            self._collect(sa)

    def act(self, sa: IkeSa, action: Callable[[IkeSa], object]) -> None:
        """Run an API call on an SA (rekey, delete ...) and collect what it produced."""
        action(sa)
        self._collect(sa)

    # ----------------------------------------------------------------- receiving

    def receive_datagram(self, data: bytes, local: Endpoint, remote: Endpoint,
                         now: float) -> None:
        if self.limits.block_networks and self.limits.blocked_network(remote[0]):
            self.dropped += 1
            return
        try:
            header = parse_header(data)
        except ProtocolError as exc:
            if exc.notify == NotifyType.INVALID_MAJOR_VERSION:
                self._answer_major_version(data, local, remote, now)
            self.dropped += 1
            return
        if header.exchange == ExchangeType.IKE_SA_INIT and not header.is_response \
                and header.spi_r == b"\0" * 8:
            self._receive_init(data, local, remote, now, header.spi_i)
            return
        our_spi = header.spi_r if header.is_initiator else header.spi_i
        sa = self.sas.get(our_spi)
        if sa is None:
            self.dropped += 1
            return
        sa.wall_offset = self.wall_offset
        sa.receive_datagram(data, local, remote, now)
        self._collect(sa)

    def _receive_init(self, data: bytes, local: Endpoint, remote: Endpoint, now: float,
                      spi_i: bytes) -> None:
        address = remote[0]
        existing = self._half_open.get((address, spi_i))
        if existing is not None:
            existing.wall_offset = self.wall_offset
            existing.receive_datagram(data, local, remote, now)
            self._collect(existing)
            return
        if self._is_blocked(address, now):
            self.refused += 1
            return
        count = self._per_address.get(address, 0)
        if self._under_load() or count >= self.limits.cookie_threshold_per_address:
            # Checked before the whole request is parsed: a flood costs a header walk.
            fields = _cookie_fields(data)
            if fields is None:
                self.dropped += 1
                return
            cookie, nonce = fields
            if not self._cookie_valid(cookie, nonce, address, spi_i, now):
                self._send_plain(spi_i, local, remote, NotifyPayload(
                    NotifyType.COOKIE, 0, b"",
                    self._cookie(nonce, address, spi_i, self._cookie_secret)))
                return
        try:
            request = decode(data)
        except ProtocolError as exc:
            self.dropped += 1
            if exc.notify == NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD:
                self._answer_error(spi_i, local, remote, now, exc.notify, exc.notify_data)
            return
        if count >= self.limits.half_open_per_address:
            self._refuse(address, now)
            return
        candidates = [c for c in self.configs.values() if c.accepts(local[0], address)]
        if not candidates:
            self._answer_error(spi_i, local, remote, now, NotifyType.NO_PROPOSAL_CHOSEN)
            self._events.append(NegotiationFailed(
                ike_sa=0, connection="", reason=FailureReason.NO_MATCHING_CONFIG,
                message=f"IKE_SA_INIT from {address}:{remote[1]} to {local[0]}:{local[1]} matches "
                "no connection (by address); answered NO_PROPOSAL_CHOSEN",
                theirs=(f"{address} -> {local[0]}",), local=local, remote=remote))
            return
        charge = HALF_OPEN_COST + len(data)
        if not self._make_room(charge):
            self.refused += 1
            return
        sa = IkeSa.responder(candidates, local, remote, now, spi_allocator=self._alloc_spi)
        self._register(sa)
        key = (address, spi_i)
        self._half_open[key] = sa
        self._half_open_ids[sa.id] = (key, charge)
        self._per_address[address] = count + 1
        self.budget.half_open_bytes += charge
        sa.receive_message(request, data, now)
        self._collect(sa)

    # ----------------------------------------------------------------- limits

    def _under_load(self) -> bool:
        """Cookies for everyone: `cookie_threshold` SAs half-open, or half of the
        half-open table or of the memory budget in use."""
        half_open = len(self._half_open)
        return half_open >= self.cookie_threshold or 2 * half_open >= self.limits.half_open \
            or 2 * self.budget.held >= self.limits.memory

    def _is_blocked(self, address: str, now: float) -> bool:
        blocked = self._blocked
        while blocked:  # forget expired blocks, oldest first (one block_time for all)
            first = next(iter(blocked))
            if blocked[first] > now:
                break
            del blocked[first]
        return address in blocked

    def _refuse(self, address: str, now: float) -> None:
        """An IKE_SA_INIT (with a valid cookie, so from a real address) over the
        per-address limit: dropped; after `block_after` of them the address is blocked."""
        self.refused += 1
        refusals = self._refusals.get(address, 0) + 1
        self._refusals[address] = refusals
        if refusals >= self.limits.block_after and self.limits.block_time > 0:
            del self._refusals[address]
            while len(self._blocked) >= MAX_BLOCKED:
                del self._blocked[next(iter(self._blocked))]
            self._blocked.pop(address, None)
            self._blocked[address] = now + self.limits.block_time

    def _make_room(self, charge: int) -> bool:
        """Drop the oldest half-open SAs until one more of `charge` octets fits."""
        limits, budget = self.limits, self.budget
        while self._half_open and (len(self._half_open) >= limits.half_open
                                   or not budget.room(charge)):
            oldest = next(iter(self._half_open.values()))
            self.evicted += 1
            oldest.drop_half_open()
            self._collect(oldest)
            if oldest.id in self._half_open_ids:  # never loop on an SA that did not go
                self._forget_half_open(oldest)
        return len(self._half_open) < limits.half_open and budget.room(charge)

    def _forget_half_open(self, sa: IkeSa) -> None:
        entry = self._half_open_ids.pop(sa.id, None)
        if entry is None:
            return
        key, charge = entry
        self._half_open.pop(key, None)
        self.budget.half_open_bytes -= charge
        address = key[0]
        count = self._per_address.get(address, 0) - 1
        if count > 0:
            self._per_address[address] = count
        else:
            self._per_address.pop(address, None)
            self._refusals.pop(address, None)

    def _may_answer(self, now: float) -> bool:
        """Token bucket for answers to unauthenticated requests (no reflection floods)."""
        rate = self.limits.answers_per_second
        if rate <= 0:
            return False
        burst = max(1.0, rate)
        if self._answer_at is None:
            self._answer_tokens = burst
        else:
            self._answer_tokens = min(burst, self._answer_tokens
                                      + max(0.0, now - self._answer_at) * rate)
        self._answer_at = now
        if self._answer_tokens < 1.0:
            return False
        self._answer_tokens -= 1.0
        return True

    def _answer_error(self, spi_i: bytes, local: Endpoint, remote: Endpoint, now: float,
                      notify: int, data: bytes = b"") -> None:
        if self._may_answer(now):
            self._send_plain(spi_i, local, remote, NotifyPayload(notify, 0, b"", data))

    def _answer_major_version(self, data: bytes, local: Endpoint, remote: Endpoint,
                              now: float) -> None:
        """RFC 7296 1.5/2.5: a request of a higher major version is answered with
        INVALID_MAJOR_VERSION, version 2 in the header, SPIs, exchange type and message
        ID copied, the Response flag set. Responses, and IKEv1 (lower), are not."""
        if len(data) < IKE_HEADER_SIZE:
            return
        spi_i, spi_r, _, version, exchange, flags, mid, _ = HEADER.unpack_from(data)
        if version >> 4 <= IKE_VERSION >> 4 or flags & HeaderFlag.RESPONSE \
                or not self._may_answer(now):
            return
        body = push_chain([NotifyPayload(NotifyType.INVALID_MAJOR_VERSION, 0, b"", b"")])
        ours = HeaderFlag.RESPONSE | (0 if flags & HeaderFlag.INITIATOR else
                                      HeaderFlag.INITIATOR)
        head = HEADER.pack(spi_i, spi_r, NotifyPayload.payload_type, IKE_VERSION, exchange,
                           ours, mid, IKE_HEADER_SIZE + len(body))
        self._out.append(Datagram(head + body, local, remote))

    def _send_plain(self, spi_i: bytes, local: Endpoint, remote: Endpoint,
                    notify: NotifyPayload) -> None:
        reply = Message(ExchangeType.IKE_SA_INIT, spi_i, b"\0" * 8, 0, False, True, [notify])
        self._out.append(Datagram(encode(reply), local, remote))

    @staticmethod
    def _cookie(nonce: bytes, address: str, spi_i: bytes, secret: bytes) -> bytes:
        """RFC 7296 2.6: Hash(Ni | IPi | SPIi | secret), after a version of our format."""
        digest = hashlib.sha256(nonce + address.encode() + spi_i + secret)
        return COOKIE_VERSION + digest.digest()

    def _cookie_valid(self, cookie: bytes | None, nonce: bytes, address: str, spi_i: bytes,
                      now: float) -> bool:
        """A COOKIE made with the current or the previous secret (the secret changes every
        COOKIE_SECRET_LIFETIME; no state per peer)."""
        if self._cookie_secret_at is None:
            self._cookie_secret_at = now
        elif now - self._cookie_secret_at >= COOKIE_SECRET_LIFETIME:
            stale = now - self._cookie_secret_at >= 2 * COOKIE_SECRET_LIFETIME
            self._cookie_secret_old = os.urandom(32) if stale else self._cookie_secret
            self._cookie_secret = os.urandom(32)
            self._cookie_secret_at = now
        if cookie is None:
            return False
        return any(hmac.compare_digest(cookie, self._cookie(nonce, address, spi_i, secret))
                   for secret in (self._cookie_secret, self._cookie_secret_old))

    # ----------------------------------------------------------------- bookkeeping

    def _register(self, sa: IkeSa) -> None:
        sa.use_budget(self.budget)  # every SA's fragment buffers are charged to us
        self._by_id[sa.id] = sa
        self.sas[sa.our_spi] = sa

    def _pop_timer(self) -> tuple[float, int]:
        deadline, sa_id = heapq.heappop(self._timers)
        if self._scheduled.get(sa_id) == deadline:
            del self._scheduled[sa_id]
        return deadline, sa_id

    def _schedule(self, sa: IkeSa) -> None:
        """One heap entry per SA and deadline: an unchanged timer is not pushed again
        (every datagram collects its SA, and most leave the timer as it was)."""
        deadline = sa.get_timer()
        if deadline is not None and self._scheduled.get(sa.id) != deadline:
            heapq.heappush(self._timers, (deadline, sa.id))
            self._scheduled[sa.id] = deadline

    def _unregister(self, sa: IkeSa) -> None:
        self._by_id.pop(sa.id, None)
        self._scheduled.pop(sa.id, None)
        if self.sas.get(sa.our_spi) is sa:
            del self.sas[sa.our_spi]
        self._forget_half_open(sa)

    def _collect(self, sa: IkeSa) -> None:
        """Move an SA's output into ours, follow rekeys, forget closed SAs."""
        self._out.extend(sa.datagrams_to_send())
        for new in sa.take_spawned():  # IKE SAs made by rekeying: reachable by SPI now
            self._register(new)
            self._collect(new)
        while (event := sa.next_event()) is not None:
            self._events.append(event)
            if isinstance(event, IkeSaRekeyed) and sa.successor is not None:
                self._register(sa.successor)
                self._collect(sa.successor)
        if sa.state in (IkeState.ESTABLISHED, IkeState.REKEYED, IkeState.DELETING):
            self._forget_half_open(sa)
        if sa.state is IkeState.CLOSED:
            self._unregister(sa)
            return
        for each in (sa, sa.successor):  # an old SA may set its successor's timers
            if each is not None and each.id in self._by_id:
                self._schedule(each)


def _cookie_fields(data: bytes) -> tuple[bytes | None, bytes] | None:
    """(COOKIE notify data if it is the first payload, Nonce data) of an IKE_SA_INIT
    request, by walking the generic payload headers only; None when the chain is broken
    or has no Nonce."""
    ptype, at, end = data[16], IKE_HEADER_SIZE, len(data)
    cookie: bytes | None = None
    while ptype != PayloadType.NONE and at + PAYLOAD_HEADER_SIZE <= end:
        next_type, _, length = GENERIC_HEADER.unpack_from(data, at)
        if length < PAYLOAD_HEADER_SIZE or at + length > end:
            return None
        body = at + PAYLOAD_HEADER_SIZE
        if ptype == PayloadType.NOTIFY and at == IKE_HEADER_SIZE and length >= 8 \
                and int.from_bytes(data[body + 2 : body + 4], "big") == NotifyType.COOKIE:
            cookie = data[body + 4 + data[body + 1] : at + length]
        elif ptype == PayloadType.NONCE:
            return cookie, data[body : at + length]
        ptype, at = next_type, at + length
    return None
