"""Back-off for failed authentication, per client.

A client is an IP address (TCP) or a user id (unix socket, from SO_PEERCRED). After
`free` failures in a row, each further failure blocks that client for a doubling
delay, capped at `maximum` seconds; a success forgets the client. Only the failing
client waits: a valid token from any other client is checked at once. The table is
bounded (least recently failed clients are dropped first) and entries are forgotten
after `forget_after` seconds without a failure.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Record:
    failures: int
    last_failure: float
    blocked_until: float


class AuthThrottle:
    def __init__(self, *, maximum: float = 30.0, base: float = 0.5, free: int = 3,
                 capacity: int = 10_000, forget_after: float = 900.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.maximum, self.base, self.free = maximum, base, free
        self.capacity, self.forget_after, self.clock = capacity, forget_after, clock
        self._clients: OrderedDict[str, _Record] = OrderedDict()

    def __len__(self) -> int:
        return len(self._clients)

    def retry_after(self, client: str) -> float:
        """Seconds this client must wait before its next attempt is checked (0: now)."""
        record = self._clients.get(client)
        if record is None:
            return 0.0
        now = self.clock()
        if now - record.last_failure > self.forget_after:
            del self._clients[client]
            return 0.0
        return max(0.0, record.blocked_until - now)

    def failed(self, client: str) -> None:
        now = self.clock()
        record = self._clients.pop(client, None)
        if record is None or now - record.last_failure > self.forget_after:
            record = _Record(0, now, now)
        record.failures += 1
        record.last_failure = now
        extra = record.failures - self.free
        if extra > 0:
            record.blocked_until = now + min(self.maximum, self.base * 2 ** min(extra - 1, 30))
        self._clients[client] = record  # most recent last
        while len(self._clients) > self.capacity:
            self._clients.popitem(last=False)

    def succeeded(self, client: str) -> None:
        self._clients.pop(client, None)
