"""UDP endpoints for IKE: port 500, and port 4500 with the non-ESP marker (RFC 3948).

The 4500 socket carries the kernel's UDP_ENCAP option, so ESP-in-UDP arriving on it goes
to the kernel's ESP input and only IKE (marked with four zero octets) reaches us. Every
IKE socket bypasses IPsec policies, or a policy covering the peer's address would swallow
IKE itself (host-to-host, remote access with 0.0.0.0/0).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import struct
from collections.abc import Callable

from xfrmctl.ike.constants import NON_ESP_MARKER
from xfrmctl.ike.sa import Datagram

log = logging.getLogger("xfrmctl.endpoint")

SOL_UDP = 17
UDP_ENCAP = 100
UDP_ENCAP_ESPINUDP = 2
IP_XFRM_POLICY = 17
IPV6_XFRM_POLICY = 35
XFRM_POLICY_IN, XFRM_POLICY_OUT = 0, 1
XFRM_INF = 0xFFFFFFFFFFFFFFFF
NAT_KEEPALIVE = b"\xff"
SO_RCVBUFFORCE = 33
SO_MEMINFO, SK_MEMINFO_DROPS = 55, 8  # the socket's drop counter (struct of u32)
RECEIVE_BUFFER = 4 << 20
# Datagrams read from the socket per wake-up before any is processed: the receive
# queue empties ahead of the protocol work, and the CHILD_SA installs the batch causes
# go to the kernel together.
DRAIN_BATCH = 256
MAX_DATAGRAM = 65535

Endpoint = tuple[str, int]
Receiver = Callable[[bytes, Endpoint, Endpoint], None]


def _bypass_policy(direction: int, family: int) -> bytes:
    """struct xfrm_userpolicy_info: a selector of the socket's family matching anything,
    action ALLOW: this socket's packets skip IPsec."""
    selector = bytes(40) + struct.pack("=H", family) + bytes(14)
    lifetime_cfg = struct.pack("=8Q", XFRM_INF, XFRM_INF, XFRM_INF, XFRM_INF, 0, 0, 0, 0)
    lifetime_cur = bytes(32)
    tail = struct.pack("=IIBBBB", 0, 0, direction, 0, 0, 0)
    return (selector + lifetime_cfg + lifetime_cur + tail).ljust(168, b"\0")


def _bypass_ipsec(sock: socket.socket, family: int) -> None:
    level, option = (socket.IPPROTO_IP, IP_XFRM_POLICY) if family == socket.AF_INET else \
        (socket.IPPROTO_IPV6, IPV6_XFRM_POLICY)
    for direction in (XFRM_POLICY_IN, XFRM_POLICY_OUT):
        try:
            sock.setsockopt(level, option, _bypass_policy(direction, family))
        except OSError as exc:  # needs CAP_NET_ADMIN
            log.warning("cannot exempt the IKE socket from IPsec policies: %s", exc)


def open_socket(address: str, port: int, *, nat_t: bool) -> socket.socket:
    family = socket.AF_INET if ipaddress.ip_address(address).version == 4 else socket.AF_INET6
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Bursts of IKE_SA_INITs must not overflow the queue: a drop costs the peer a 4 s
    # retransmit (the kernel caps this at net.core.rmem_max unless we may force it).
    for option in (SO_RCVBUFFORCE, socket.SO_RCVBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, RECEIVE_BUFFER)
            break
        except OSError:
            continue
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.setblocking(False)
    sock.bind((address, port))
    _bypass_ipsec(sock, family)
    if nat_t:
        try:
            sock.setsockopt(SOL_UDP, UDP_ENCAP, UDP_ENCAP_ESPINUDP)
        except OSError as exc:
            log.warning("UDP_ENCAP on %s:%d unavailable (no ESP-in-UDP): %s", address, port, exc)
    return sock


class IkeProtocol(asyncio.DatagramProtocol):
    """One bound socket: strips/adds the non-ESP marker on the NAT-T port. Each wake-up
    reads what is queued (up to DRAIN_BATCH datagrams) before handing any on, and
    counts what the kernel dropped for a full receive buffer (`drops`)."""

    def __init__(self, local: Endpoint, nat_t: bool, receiver: Receiver,
                 sock: socket.socket | None = None) -> None:
        self.local = local
        self.nat_t = nat_t
        self.receiver = receiver
        self.sock = sock  # the bound socket, read directly to drain it
        self.transport: asyncio.DatagramTransport | None = None
        self.drops = 0  # datagrams the kernel dropped (receive buffer full)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        batch = [(data, addr)]
        if self.sock is not None:
            batch += self._drain(DRAIN_BATCH - 1)
        for datagram, source in batch:
            self._deliver(datagram, source)
        self._count_drops()  # one getsockopt a wake-up, against ~1 ms of work a datagram

    def _drain(self, limit: int) -> list[tuple[bytes, tuple[str | int, ...]]]:
        """Up to `limit` more datagrams the socket holds now."""
        assert self.sock is not None
        more: list[tuple[bytes, tuple[str | int, ...]]] = []
        recvfrom = self.sock.recvfrom
        while len(more) < limit:
            try:
                more.append(recvfrom(MAX_DATAGRAM))
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # e.g. an ICMP error queued on the socket
                self.error_received(exc)
                break
        return more

    def _deliver(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        remote = (str(addr[0]), int(addr[1]))
        if self.nat_t:
            if data == NAT_KEEPALIVE:
                return
            if not data.startswith(NON_ESP_MARKER):
                return  # ESP the kernel did not take: not ours
            data = data[4:]
        try:
            self.receiver(data, self.local, remote)
        except Exception:  # one bad datagram must never take the endpoint down
            log.exception("datagram from %s:%d", *remote)

    def _count_drops(self) -> None:
        if self.sock is None or self.sock.fileno() < 0:
            return
        try:
            info = self.sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 4 * (SK_MEMINFO_DROPS + 1))
        except OSError:
            return
        drops = struct.unpack_from("=I", info, 4 * SK_MEMINFO_DROPS)[0]
        if drops > self.drops:
            log.warning("%s:%d: the kernel dropped %d IKE datagrams (receive buffer full; "
                        "%d since start)", *self.local, drops - self.drops, drops)
            self.drops = drops

    def send(self, data: bytes, remote: Endpoint) -> None:
        if self.transport is None:
            return
        if self.nat_t:
            data = NON_ESP_MARKER + data
        self.transport.sendto(data, remote)

    def error_received(self, exc: Exception) -> None:
        log.debug("socket %s:%d: %s", *self.local, exc)


def _factory(protocol: IkeProtocol) -> Callable[[], IkeProtocol]:
    return lambda: protocol


class Endpoints:
    """All IKE sockets of the daemon; `send` picks the one bound to a datagram's source."""

    def __init__(self, receiver: Receiver) -> None:
        self.receiver = receiver
        self.protocols: dict[Endpoint, IkeProtocol] = {}

    async def open(self, addresses: list[str], ike_port: int = 500,
                   nat_port: int = 4500) -> None:
        loop = asyncio.get_running_loop()
        for address in addresses:
            for port, nat_t in ((ike_port, False), (nat_port, True)):
                sock = open_socket(address, port, nat_t=nat_t)
                protocol = IkeProtocol((address, port), nat_t, self.receiver, sock)
                await loop.create_datagram_endpoint(_factory(protocol), sock=sock)
                self.protocols[(address, port)] = protocol

    async def sync(self, addresses: list[str], ike_port: int = 500,
                   nat_port: int = 4500) -> list[str]:
        """Listen on exactly `addresses` (the daemon follows the namespace's addresses
        when `listen` is not configured): sockets for new ones, none for gone ones.
        Returns the addresses listened on (one that cannot be bound yet is left out)."""
        wanted = set(addresses)
        for key in [k for k in self.protocols if k[0] not in wanted]:
            transport = self.protocols.pop(key).transport
            if transport is not None:
                transport.close()
        for address in sorted(wanted - {a for a, _ in self.protocols}):
            try:
                await self.open([address], ike_port, nat_port)
                log.info("listening on %s (ports %d, %d)", address, ike_port, nat_port)
            except OSError as exc:  # e.g. gone again, or not yet usable
                log.warning("cannot listen on %s: %s", address, exc)
                for key in [k for k in self.protocols if k[0] == address]:
                    transport = self.protocols.pop(key).transport
                    if transport is not None:
                        transport.close()
        return sorted({a for a, _ in self.protocols})

    def send(self, datagram: Datagram) -> None:
        protocol = self.protocols.get(datagram.local)
        if protocol is None:
            # The core may pick 4500 when NAT is detected; fall back to any socket of that
            # address, so a missing one is logged rather than fatal.
            protocol = next((p for (a, _), p in self.protocols.items()
                             if a == datagram.local[0]), None)
            if protocol is None:
                log.error("no socket bound to %s:%d", *datagram.local)
                return
        protocol.send(datagram.data, datagram.remote)

    def send_keepalive(self, local: Endpoint, remote: Endpoint) -> None:
        protocol = self.protocols.get(local)
        if protocol is not None and protocol.transport is not None:
            protocol.transport.sendto(NAT_KEEPALIVE, remote)

    def close(self) -> None:
        for protocol in self.protocols.values():
            if protocol.transport is not None:
                protocol.transport.close()
        self.protocols.clear()
