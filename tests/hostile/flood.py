"""The flood of issue 15: legitimate setups from one namespace while an attacker sends
IKE_SA_INIT requests from many addresses in another.

`Flooder` sends prebuilt IKE_SA_INIT datagrams (a real one with a new initiator SPI
each) from sockets bound to many addresses, paced so they arrive during the setups, and
returns every COOKIE it is asked for (an attacker that owns its addresses can).
`LegitInitiator` drives the project's `IkeManager` over a real socket: many setups
(IKE_SA_INIT + IKE_AUTH, PSK, no CHILD_SA) in flight at once, cookies and
retransmissions handled by the manager itself.
"""

from __future__ import annotations

import os
import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from tests.hostile.peer import initiator_config
from tests.support.netns import Netns
from xfrmctl.ike.constants import NotifyType
from xfrmctl.ike.errors import ProtocolError
from xfrmctl.ike.events import IkeSaUp, NegotiationFailed
from xfrmctl.ike.manager import IkeManager
from xfrmctl.ike.message import Message, decode, encode
from xfrmctl.ike.sa import IkeSa


def bound_socket(ns: Netns, addr: str, port: int = 500) -> socket.socket:
    def make() -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        s.bind((addr, port))
        return s
    sock = ns.call(make)
    sock.setblocking(False)
    return sock


@dataclass
class Flooder:
    ns: Netns
    sources: list[str]
    target: tuple[str, int]
    total: int
    per_second: float
    answer_cookies: bool = True
    sent: int = 0
    cookies_returned: int = 0
    _thread: threading.Thread | None = field(default=None, init=False)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def join(self, timeout: float) -> None:
        assert self._thread is not None
        self._thread.join(timeout)

    def _run(self) -> None:
        socks = [bound_socket(self.ns, a, 500) for a in self.sources]
        sa = IkeSa.initiator(initiator_config(), (self.sources[0], 500), self.target, 0.0)
        sa.initiate(0.0)
        request = decode(sa.datagrams_to_send()[0].data)
        template = bytearray(encode(request))
        start = time.monotonic()
        try:
            while self.sent < self.total:
                template[:8] = os.urandom(8)  # a new initiator SPI: a new half-open SA
                self._send(socks[self.sent % len(socks)], bytes(template))
                if self.answer_cookies and self.sent % 20 == 0:
                    self._answer_cookies(socks, request)
                ahead = self.sent / self.per_second - (time.monotonic() - start)
                if ahead > 0.01:
                    time.sleep(ahead)
        finally:
            for s in socks:
                s.close()

    def _send(self, sock: socket.socket, data: bytes) -> None:
        if self.sent < self.total:
            try:
                sock.sendto(data, self.target)
                self.sent += 1
            except BlockingIOError:
                time.sleep(0.001)

    def _answer_cookies(self, socks: list[socket.socket], request: Message) -> None:
        """An attacker that owns its addresses returns every COOKIE it is asked for."""
        ready, _, _ = select.select(socks, [], [], 0)
        for sock in ready:
            try:
                data = sock.recv(65535)
                reply = decode(data)
            except (BlockingIOError, ProtocolError):
                continue
            cookie = reply.notify(NotifyType.COOKIE)
            if cookie is not None:
                again = replace(request, spi_i=reply.spi_i,
                                payloads=[cookie, *request.payloads])
                self._send(sock, encode(again))
                self.cookies_returned += 1


@dataclass
class LegitInitiator:
    ns: Netns
    local: tuple[str, int]
    remote: tuple[str, int]
    up: int = 0
    failed: list[str] = field(default_factory=list)

    def run(self, setups: int, concurrency: int, timeout: float) -> None:
        manager = IkeManager([initiator_config()])
        sock = bound_socket(self.ns, *self.local)
        started = 0
        deadline = time.monotonic() + timeout
        try:
            while self.up + len(self.failed) < setups and time.monotonic() < deadline:
                while started < setups and started - self.up - len(self.failed) < concurrency:
                    manager.initiate("hostile", self.local, self.remote, time.time())
                    started += 1
                self._pump(manager, sock)
        finally:
            sock.close()
        missing = setups - self.up - len(self.failed)
        self.failed += ["no answer in time"] * missing

    def _pump(self, manager: IkeManager, sock: socket.socket) -> None:
        for d in manager.datagrams_to_send():
            sock.sendto(d.data, d.remote)
        ready, _, _ = select.select([sock], [], [], 0.05)
        while ready:
            try:
                data, addr = sock.recvfrom(65535)
            except BlockingIOError:
                break
            manager.receive_datagram(data, self.local, addr, time.time())
        manager.handle_timer(time.time())
        while (event := manager.next_event()) is not None:
            if isinstance(event, IkeSaUp):
                self.up += 1
            elif isinstance(event, NegotiationFailed):
                self.failed.append(str(event))
        for d in manager.datagrams_to_send():
            sock.sendto(d.data, d.remote)


@dataclass
class RssSampler:
    """The peak RSS (KiB) of a process, sampled every `interval` seconds in a thread."""

    read: Callable[[], int]
    interval: float = 0.2
    peak: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> RssSampler:
        self.peak = self.read()
        threading.Thread(target=self._run, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.peak = max(self.peak, self.read())

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self.read())
