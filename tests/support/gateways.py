"""Two daemon controllers on in-memory kernels, wired to each other (no sockets)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.fake_links import FakeLinks
from xfrmctl.daemon import conf as cf
from xfrmctl.daemon.controller import Controller
from xfrmctl.daemon.state import StateFile
from xfrmctl.ike.sa import Datagram
from xfrmctl.kernel.fake import FakeKernel

A, B = "192.0.2.1", "192.0.2.2"
PSK = "test-only psk for the controller tests"


def connection(local: str, remote: str, lnet: str, rnet: str, start: str = "none",
               psk: str = PSK, **kwargs: object) -> cf.ConnectionConf:
    return cf.ConnectionConf(
        local_addrs=[local], remote_addrs=[remote], psk=psk, start_action=start,  # type: ignore[arg-type]
        children={"lan": cf.ChildConf(local_ts=[lnet], remote_ts=[rnet],
                                      esp_proposals="aes128gcm16-x25519")},
        **kwargs)  # type: ignore[arg-type]


@dataclass
class Gateways:
    a: Controller
    b: Controller
    ka: FakeKernel
    kb: FakeKernel

    async def settle(self) -> None:
        for _ in range(20):
            await asyncio.sleep(0)
        await self.a.drain()
        await self.b.drain()
        for _ in range(20):
            await asyncio.sleep(0)


def wire(src: Controller, dst: Controller) -> None:
    loop = asyncio.get_running_loop()

    def send(d: Datagram) -> None:
        loop.call_soon(dst.receive, d.data, d.remote, d.local)

    src.send = send


async def start_pair(conf_a: cf.DaemonConf, conf_b: cf.DaemonConf, links_a: Any = None,
                     links_b: Any = None,
                     kernels: tuple[FakeKernel, FakeKernel] | None = None) -> Gateways:
    """Two controllers on fake kernels, wired to each other; b (the responder) first."""
    ka, kb = kernels or (FakeKernel(), FakeKernel())
    a, b = Controller(conf_a, ka, links=links_a), Controller(conf_b, kb, links=links_b)
    wire(a, b)
    wire(b, a)
    gw = Gateways(a, b, ka, kb)
    await b.start()
    await a.start()
    await gw.settle()
    return gw


async def make(start_a: str = "start", psk_b: str = PSK, linger: float = 5.0,
               kernels: tuple[FakeKernel, FakeKernel] | None = None,
               **kwargs: object) -> Gateways:
    conf_a = cf.DaemonConf(delete_rekeyed_delay=linger, connections={"site-b": connection(
        A, B, "198.51.100.0/24", "203.0.113.0/24", start_a, **kwargs)})
    conf_b = cf.DaemonConf(delete_rekeyed_delay=linger, connections={"site-a": connection(
        B, A, "203.0.113.0/24", "198.51.100.0/24", psk=psk_b)})
    return await start_pair(conf_a, conf_b, kernels=kernels)


def state_file(tmp_path: Path) -> StateFile:
    return StateFile(tmp_path / "state.bin", tmp_path / "state.key")


async def pair_with_state(tmp_path: Path) -> tuple[Gateways, StateFile]:
    gw = await make()
    state = state_file(tmp_path)
    gw.a.state = state
    return gw, state


NET_A, NET_B = "198.51.100.0/24", "203.0.113.0/24"


async def pair_with_links(conn_a: cf.ConnectionConf, conn_b: cf.ConnectionConf,
                          links_a: FakeLinks, links_b: FakeLinks | None = None,
                          **daemon: object) -> Gateways:
    return await start_pair(
        cf.DaemonConf(connections={"b": conn_a}, **daemon),  # type: ignore[arg-type]
        cf.DaemonConf(connections={"a": conn_b}), links_a, links_b)
