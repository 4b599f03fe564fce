"""The IKE socket is drained ahead of the protocol work: a wake-up reads every queued
datagram (up to DRAIN_BATCH) before the first is processed, so a burst waits in our
queue rather than overflowing the kernel's; what the kernel drops is counted."""

from __future__ import annotations

import asyncio
import logging
import socket
import struct

import pytest

from xfrmctl.daemon.endpoint import SO_MEMINFO, Endpoints

SK_MEMINFO_RMEM_ALLOC = 0
LOOPBACK = "127.0.0.1"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def _queued_bytes(sock: socket.socket) -> int:
    info = sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 4)
    return int(struct.unpack("=I", info)[0])


async def _wait_for(predicate: object, seconds: float = 5.0) -> None:
    for _ in range(int(seconds / 0.01)):
        if predicate():  # type: ignore[operator]
            return
        await asyncio.sleep(0.01)


async def test_a_burst_is_read_out_before_it_is_processed() -> None:
    received: list[bytes] = []
    queued_at_first: list[int] = []

    def receiver(data: bytes, local: tuple[str, int], remote: tuple[str, int]) -> None:
        if not received:
            queued_at_first.append(_queued_bytes(protocol.sock))  # type: ignore[arg-type]
        received.append(data)

    endpoints = Endpoints(receiver)
    ike = _free_port()
    await endpoints.open([LOOPBACK], ike, _free_port())
    protocol = endpoints.protocols[(LOOPBACK, ike)]
    burst = [b"IKE %03d" % i for i in range(100)]
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
            for data in burst:  # all queued before the loop looks at the socket
                peer.sendto(data, (LOOPBACK, ike))
            await _wait_for(lambda: len(received) == len(burst))
        assert received == burst
        assert queued_at_first == [0]  # the socket was empty when processing began
        assert protocol.drops == 0
    finally:
        endpoints.close()


async def test_datagrams_the_kernel_dropped_are_counted_and_logged(
        caplog: pytest.LogCaptureFixture) -> None:
    received: list[bytes] = []
    endpoints = Endpoints(lambda data, local, remote: received.append(data))
    ike = _free_port()
    await endpoints.open([LOOPBACK], ike, _free_port())
    protocol = endpoints.protocols[(LOOPBACK, ike)]
    assert protocol.sock is not None
    protocol.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a few datagrams
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer, \
                caplog.at_level(logging.WARNING, "xfrmctl.endpoint"):
            for i in range(200):
                peer.sendto(b"x" * 500 + b"%03d" % i, (LOOPBACK, ike))
            await _wait_for(lambda: protocol.drops > 0)
        assert received and protocol.drops == 200 - len(received)
        assert any("dropped" in r.getMessage() for r in caplog.records)
    finally:
        endpoints.close()
