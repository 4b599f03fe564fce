"""Two network namespaces joined by veth, SA pairs installed over NETLINK_XFRM, ping and
counters: the kernel lab fixtures (caps, topology, pair) and helpers."""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from ipaddress import ip_address, ip_network
from typing import Any

import pytest

from tests.support.netns import Netns, netns_pair, require_root
from xfrmctl.kernel.capabilities import Capabilities, probe
from xfrmctl.kernel.netlink import NetlinkKernel
from xfrmctl.kernel.types import (
    REQID_MIN,
    Algorithm,
    ChildInstall,
    Direction,
    Mode,
    PolicySpec,
    SaSpec,
    Selector,
    Template,
)

LEFT, RIGHT = ip_address("192.0.2.1"), ip_address("192.0.2.2")


NET_L, NET_R = ip_network("198.51.100.0/24"), ip_network("203.0.113.0/24")


HOST_L, HOST_R = "198.51.100.1", "203.0.113.1"


ANY = ip_network("0.0.0.0/0")


PINGS = 3


UDP_ENCAP, UDP_ENCAP_ESPINUDP = 100, 2


def key_of(n: int) -> bytes:
    return bytes((i * 7 + n) & 0xFF for i in range(n))


ALGOS: dict[str, tuple[str, dict[str, Algorithm]]] = {
    "aes-gcm-128": ("aes-gcm", {"aead": Algorithm("rfc4106(gcm(aes))", key_of(20), 128)}),
    "aes-gcm-256": ("aes-gcm", {"aead": Algorithm("rfc4106(gcm(aes))", key_of(36), 128)}),
    "chacha20-poly1305": (
        "chacha20-poly1305",
        {"aead": Algorithm("rfc7539esp(chacha20,poly1305)", key_of(36), 128)},
    ),
    "aes-cbc-hmac-sha256": (
        "aes-cbc-hmac-sha256",
        {
            "crypt": Algorithm("cbc(aes)", key_of(16)),
            "auth": Algorithm("hmac(sha256)", key_of(32), 128),
        },
    ),
}


@pytest.fixture(scope="module")
def caps() -> Capabilities:
    require_root()
    return asyncio.run(probe())


@dataclass
class Side:
    ns: Netns
    kernel: NetlinkKernel
    addr: Any
    peer: Any
    net: Any
    peer_net: Any
    keep: list[socket.socket] = field(default_factory=list)


@dataclass
class Pair:
    left: Side
    right: Side


@pytest.fixture
def topology() -> Iterator[tuple[Netns, Netns]]:
    require_root()
    with netns_pair(prefix="kl") as (a, b):
        a.add_dummy("dummy0", f"{HOST_L}/24")
        b.add_dummy("dummy0", f"{HOST_R}/24")
        for ns in (a, b):
            ns.run(["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        yield a, b


@pytest.fixture
async def pair(topology: tuple[Netns, Netns], caps: Capabilities) -> AsyncIterator[Pair]:
    if not caps.esp:
        pytest.skip(caps.esp.reason)
    a, b = topology
    ka, kb = await NetlinkKernel.open(a.name), await NetlinkKernel.open(b.name)
    try:
        yield Pair(Side(a, ka, LEFT, RIGHT, NET_L, NET_R), Side(b, kb, RIGHT, LEFT, NET_R, NET_L))
    finally:
        await ka.close()
        await kb.close()


def child_for(
    side: Side, spi_out: int, spi_in: int, algos: dict[str, Algorithm], mode: Mode = Mode.TUNNEL,
    reqid: int = REQID_MIN + 10, **sa_extra: Any,
) -> ChildInstall:  # fmt: skip
    """One side's CHILD_SA: outbound/inbound SA and the policies for its subnets."""
    pol_extra = {k: v for k, v in sa_extra.items() if k in ("mark", "if_id")}
    sel_kw = sa_extra.pop("selectors", None)
    if mode == Mode.TRANSPORT:
        out_sel, in_sel = Selector.host(side.addr, side.peer), Selector.host(side.peer, side.addr)
        t_out = t_in = (Template(reqid, mode=Mode.TRANSPORT),)
        dirs = (Direction.OUT, Direction.IN)
    else:
        out_sel = sel_kw[0] if sel_kw else Selector(side.net, side.peer_net)
        in_sel = sel_kw[1] if sel_kw else Selector(side.peer_net, side.net)
        t_out = (Template(reqid, src=side.addr, dst=side.peer),)
        t_in = (Template(reqid, src=side.peer, dst=side.addr),)
        dirs = (Direction.OUT, Direction.IN, Direction.FWD)
    policies = tuple(
        PolicySpec(out_sel if d == Direction.OUT else in_sel, d,
                   t_out if d == Direction.OUT else t_in, priority=1000, **pol_extra)
        for d in dirs
    )  # fmt: skip
    sa_kw = {k: v for k, v in sa_extra.items()}
    outbound = SaSpec(side.addr, side.peer, spi_out, reqid, mode=mode, **algos, **sa_kw)
    inbound = SaSpec(side.peer, side.addr, spi_in, reqid, mode=mode, **algos, **sa_kw)
    return ChildInstall(inbound=inbound, outbound=outbound, policies=policies)


async def install_pair(
    p: Pair, algos: dict[str, Algorithm], **kw: Any
) -> tuple[ChildInstall, ChildInstall]:
    out_mark = kw.pop("left_out_mark", None)
    cl = child_for(p.left, 0xC0000A01, 0xC0000B01, algos, **kw)
    cr = child_for(p.right, 0xC0000B01, 0xC0000A01, algos, **kw)
    if out_mark is not None:  # only what left sends is marked: outbound SA and OUT policy
        marked = tuple(
            replace(pol, mark=out_mark) if pol.direction == Direction.OUT else pol
            for pol in cl.policies
        )
        cl = replace(cl, outbound=replace(cl.outbound, mark=out_mark), policies=marked)
    if kw.get("mode", Mode.TUNNEL) == Mode.TUNNEL:  # the subnets are reached over veth0
        for side in (p.left, p.right):
            side.ns.ip("route", "add", str(side.peer_net), "via", str(side.peer))
    await p.left.kernel.install_child(cl)
    await p.right.kernel.install_child(cr)
    return cl, cr


def ping(
    ns: Netns, dst: str, src: str | None = None, count: int = PINGS, mark: int | None = None
) -> bool:
    argv = ["ping", "-c", str(count), "-i", "0.2", "-W", "3", "-n", "-q"]
    argv += ["-I", src] if src else []
    argv += ["-m", str(mark)] if mark is not None else []
    return ns.run([*argv, dst], check=False, timeout=120).returncode == 0


def ip_counters(ns: Netns, sa: SaSpec) -> tuple[int, int]:
    """(bytes, packets) as iproute2 reads them: an independent decoder."""
    out = ns.ip("-s", "xfrm", "state", "get", "src", str(sa.src), "dst", str(sa.dst), "proto",
                "esp", "spi", hex(sa.spi), *(("mark", str(sa.mark.value), "mask",
                str(sa.mark.mask)) if sa.mark else ())).stdout  # fmt: skip
    found = re.search(r"(\d+)\(bytes\), (\d+)\(packets\)", out)
    assert found, out
    return int(found.group(1)), int(found.group(2))
