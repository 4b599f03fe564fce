"""All IKE SAs of one gateway, sans-I/O: routes datagrams by SPI, creates responders,
answers with cookies under load, and keeps every SA's timer in one heap.

The daemon's endpoints feed `receive_datagram()` and send what `datagrams_to_send()`
returns; `next_event()` yields the events of every SA; `get_timer()`/`handle_timer()`
drive all timers from one place.
"""

from __future__ import annotations

import hashlib
import heapq
import os
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace

from .config import IkeConfig
from .constants import ExchangeType, NotifyType
from .errors import ProtocolError
from .events import Event, IkeSaRekeyed
from .message import Message, decode, encode, parse_header
from .payloads import NoncePayload, NotifyPayload
from .sa import Datagram, Endpoint, IkeSa, IkeState, random_child_spi

COOKIE_VERSION = b"\x00\x01"


class IkeManager:
    def __init__(self, configs: Iterable[IkeConfig] = (), *, cookie_threshold: int = 200,
                 spi_allocator: Callable[[], int] = random_child_spi) -> None:
        self.configs: dict[str, IkeConfig] = {c.name: c for c in configs}
        self.cookie_threshold = cookie_threshold
        self.sas: dict[bytes, IkeSa] = {}  # by our SPI
        self._by_id: dict[int, IkeSa] = {}
        self._half_open: dict[tuple[str, bytes], IkeSa] = {}
        self._timers: list[tuple[float, int]] = []
        self._scheduled: dict[int, float] = {}  # SA id -> the deadline its newest entry has
        self._events: deque[Event] = deque()
        self._out: list[Datagram] = []
        self._cookie_secret = os.urandom(32)
        self._alloc_spi = spi_allocator
        self.dropped = 0  # datagrams that were malformed or for no SA

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

    def act(self, sa: IkeSa, action: Callable[[IkeSa], object]) -> None:
        """Run an API call on an SA (rekey, delete ...) and collect what it produced."""
        action(sa)
        self._collect(sa)

    # ----------------------------------------------------------------- receiving

    def receive_datagram(self, data: bytes, local: Endpoint, remote: Endpoint,
                         now: float) -> None:
        try:
            header = parse_header(data)
        except ProtocolError:
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
        sa.receive_datagram(data, local, remote, now)
        self._collect(sa)

    def _receive_init(self, data: bytes, local: Endpoint, remote: Endpoint, now: float,
                      spi_i: bytes) -> None:
        existing = self._half_open.get((remote[0], spi_i))
        if existing is not None:
            existing.receive_datagram(data, local, remote, now)
            self._collect(existing)
            return
        try:
            request = decode(data)
        except ProtocolError:
            self.dropped += 1
            return
        if len(self._half_open) >= self.cookie_threshold and \
                not self._cookie_valid(request, remote):
            self._send_plain(request, local, remote,
                             NotifyPayload(NotifyType.COOKIE, 0, b"",
                                           self._cookie(request, remote)))
            return
        candidates = [c for c in self.configs.values() if c.accepts(local[0], remote[0])]
        if not candidates:
            self._send_plain(request, local, remote,
                             NotifyPayload(NotifyType.NO_PROPOSAL_CHOSEN, 0, b"", b""))
            return
        sa = IkeSa.responder(candidates, local, remote, now, spi_allocator=self._alloc_spi)
        self._register(sa)
        self._half_open[(remote[0], spi_i)] = sa
        sa.receive_message(request, data, now)
        self._collect(sa)

    def _send_plain(self, request: Message, local: Endpoint, remote: Endpoint,
                    notify: NotifyPayload) -> None:
        reply = Message(ExchangeType.IKE_SA_INIT, request.spi_i, b"\0" * 8, 0, False, True,
                        [notify])
        self._out.append(Datagram(encode(reply), local, remote))

    def _cookie(self, request: Message, remote: Endpoint) -> bytes:
        nonce = request.find(NoncePayload)
        ni = nonce.data if nonce else b""
        digest = hashlib.sha256(ni + remote[0].encode() + request.spi_i + self._cookie_secret)
        return COOKIE_VERSION + digest.digest()

    def _cookie_valid(self, request: Message, remote: Endpoint) -> bool:
        first = request.payloads[0] if request.payloads else None
        return isinstance(first, NotifyPayload) and first.notify_type == NotifyType.COOKIE \
            and first.data == self._cookie(request, remote)

    # ----------------------------------------------------------------- bookkeeping

    def _register(self, sa: IkeSa) -> None:
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
        self._half_open.pop((sa.remote[0], sa.spi_i), None)

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
            self._half_open.pop((sa.remote[0], sa.spi_i), None)
        if sa.state is IkeState.CLOSED:
            self._unregister(sa)
            return
        for each in (sa, sa.successor):  # an old SA may set its successor's timers
            if each is not None and each.id in self._by_id:
                self._schedule(each)
