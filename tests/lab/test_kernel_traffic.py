"""Real kernel, real ESP: SAs and policies installed through KernelIPsec carry ping
traffic between two namespaces; counters, events and scale checked against the kernel.

    left:  dummy0 198.51.100.1/24, veth0 192.0.2.1/24
    right: dummy0 203.0.113.1/24,  veth0 192.0.2.2/24
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from ipaddress import ip_address, ip_network
from typing import Any

import pytest

from tests.support.netns import Netns, netns_pair, require_root
from xfrmctl.kernel.capabilities import Capabilities, probe
from xfrmctl.kernel.links import KernelLinks, VtiDevice, XfrmInterface
from xfrmctl.kernel.netlink import NetlinkKernel
from xfrmctl.kernel.types import (
    REQID_MIN,
    Acquire,
    Algorithm,
    ChildInstall,
    Direction,
    Encap,
    Expire,
    KernelEvent,
    Lifetime,
    Mark,
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


def _key(n: int) -> bytes:
    return bytes((i * 7 + n) & 0xFF for i in range(n))


ALGOS: dict[str, tuple[str, dict[str, Algorithm]]] = {
    "aes-gcm-128": ("aes-gcm", {"aead": Algorithm("rfc4106(gcm(aes))", _key(20), 128)}),
    "aes-gcm-256": ("aes-gcm", {"aead": Algorithm("rfc4106(gcm(aes))", _key(36), 128)}),
    "chacha20-poly1305": (
        "chacha20-poly1305",
        {"aead": Algorithm("rfc7539esp(chacha20,poly1305)", _key(36), 128)},
    ),
    "aes-cbc-hmac-sha256": (
        "aes-cbc-hmac-sha256",
        {
            "crypt": Algorithm("cbc(aes)", _key(16)),
            "auth": Algorithm("hmac(sha256)", _key(32), 128),
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


# Bytes an SA counts per echo: tunnel mode the inner packet (20 IP + 8 ICMP + 56 data),
# transport mode what follows the IP header.
ECHO_BYTES = {Mode.TUNNEL: 84, Mode.TRANSPORT: 64}


async def assert_counted(side: Side, sa: SaSpec, packets: int) -> None:
    counters = await side.kernel.counters(sa.id)
    assert counters.packets == packets
    assert (counters.bytes, counters.packets) == ip_counters(side.ns, sa)
    assert counters.bytes >= ECHO_BYTES[sa.mode] * packets


async def assert_traffic(
    p: Pair, cl: ChildInstall, cr: ChildInstall, dst: str, src: str | None
) -> None:
    assert ping(p.left.ns, dst, src), "ping through the SAs failed"
    await assert_counted(p.left, cl.outbound, PINGS)
    await assert_counted(p.right, cr.inbound, PINGS)
    await assert_counted(p.right, cr.outbound, PINGS)
    await assert_counted(p.left, cl.inbound, PINGS)


# --- traffic -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(ALGOS))
@pytest.mark.parametrize("mode", [Mode.TUNNEL, Mode.TRANSPORT])
async def test_ping_through_sas(pair: Pair, caps: Capabilities, name: str, mode: Mode) -> None:
    family, algos = ALGOS[name]
    if not caps.algorithm(family):
        pytest.skip(caps.algorithm(family).reason)
    cl, cr = await install_pair(pair, algos, mode=mode)
    if mode == Mode.TUNNEL:
        await assert_traffic(pair, cl, cr, HOST_R, HOST_L)
    else:
        await assert_traffic(pair, cl, cr, str(RIGHT), None)


async def test_esn_with_large_window(pair: Pair) -> None:
    _, algos = ALGOS["aes-gcm-128"]
    cl, cr = await install_pair(pair, algos, esn=True, replay_window=256)
    got = await pair.left.kernel.get_sa(cl.inbound.id)
    assert got.spec.esn and got.spec.replay_window == 256
    await assert_traffic(pair, cl, cr, HOST_R, HOST_L)
    replay = (await pair.right.kernel.get_sa(cr.inbound.id)).replay
    assert replay is not None and replay.seq == PINGS and replay.seq_hi == 0


def _encap_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", 4500))
    sock.setsockopt(socket.IPPROTO_UDP, UDP_ENCAP, UDP_ENCAP_ESPINUDP)
    return sock


async def test_udp_encapsulation(pair: Pair) -> None:
    for side in (pair.left, pair.right):
        side.keep.append(side.ns.call(_encap_socket))
    try:
        _, algos = ALGOS["aes-gcm-128"]
        cl, cr = await install_pair(pair, algos, encap=Encap(4500, 4500))
        capture = pair.right.ns.run(["sh", "-c", "cat /proc/net/snmp | grep Udp:"], check=False)
        await assert_traffic(pair, cl, cr, HOST_R, HOST_L)
        after = pair.right.ns.run(["sh", "-c", "cat /proc/net/snmp | grep Udp:"], check=False)
        assert _udp_in(after.stdout) - _udp_in(capture.stdout) >= PINGS  # ESP came in UDP
    finally:
        for side in (pair.left, pair.right):
            for s in side.keep:
                s.close()


def _udp_in(snmp: str) -> int:
    header, values = (line.split() for line in snmp.strip().splitlines()[:2])
    return int(values[header.index("InDatagrams")])


async def test_marks_select_traffic(pair: Pair) -> None:
    _, algos = ALGOS["aes-gcm-128"]
    cl, _ = await install_pair(pair, algos, left_out_mark=Mark(7, 0xFF))
    assert not ping(pair.left.ns, HOST_R, HOST_L, count=1)  # unmarked: no SA, right drops it
    assert (await pair.left.kernel.counters(cl.outbound.id)).packets == 0
    assert ping(pair.left.ns, HOST_R, HOST_L, mark=7)
    await assert_counted(pair.left, cl.outbound, PINGS)


async def _route_via(side: Side, links: KernelLinks, dev: str) -> None:
    await links.add_route(side.peer_net, dev, src=HOST_L if side.addr == LEFT else HOST_R)


async def test_xfrm_interface(pair: Pair, caps: Capabilities) -> None:
    if not caps.xfrm_interface:
        pytest.skip(caps.xfrm_interface.reason)
    _, algos = ALGOS["aes-gcm-128"]
    for side in (pair.left, pair.right):
        links = await KernelLinks.open(side.ns.name)
        await links.add_xfrm_interface(XfrmInterface("ipsec0", 0x42, "veth0"), mtu=1400)
        await _route_via(side, links, "ipsec0")
        info = await links.link_info("ipsec0")
        assert info["kind"] == "xfrm" and info["mtu"] == 1400
        await links.close()
    sels = (Selector(ANY, ANY), Selector(ANY, ANY))
    cl = child_for(pair.left, 0xC0000A01, 0xC0000B01, algos, if_id=0x42, selectors=sels)
    cr = child_for(pair.right, 0xC0000B01, 0xC0000A01, algos, if_id=0x42, selectors=sels)
    await pair.left.kernel.install_child(cl)
    await pair.right.kernel.install_child(cr)
    await assert_traffic(pair, cl, cr, HOST_R, HOST_L)


async def test_vti(pair: Pair, caps: Capabilities) -> None:
    if not caps.vti:
        pytest.skip(caps.vti.reason)
    _, algos = ALGOS["aes-gcm-128"]
    for side in (pair.left, pair.right):
        links = await KernelLinks.open(side.ns.name)
        await links.add_vti(VtiDevice("vti0", side.addr, side.peer, 7, 7, "veth0"))
        side.ns.run(["sysctl", "-qw", "net.ipv4.conf.vti0.disable_policy=1"])
        await _route_via(side, links, "vti0")
        info = await links.link_info("vti0")
        assert info["kind"] == "vti"
        await links.close()
    sels = (Selector(ANY, ANY), Selector(ANY, ANY))
    cl = child_for(pair.left, 0xC0000A01, 0xC0000B01, algos, mark=Mark(7), selectors=sels)
    cr = child_for(pair.right, 0xC0000B01, 0xC0000A01, algos, mark=Mark(7), selectors=sels)
    await pair.left.kernel.install_child(cl)
    await pair.right.kernel.install_child(cr)
    await assert_traffic(pair, cl, cr, HOST_R, HOST_L)


# --- events ------------------------------------------------------------------------------


async def _next(events: AsyncIterator[KernelEvent], kind: type, timeout: float) -> Any:
    async def find() -> KernelEvent:
        async for ev in events:
            if isinstance(ev, kind):
                return ev
        raise AssertionError("event stream ended")

    return await asyncio.wait_for(find(), timeout)


async def test_trap_policy_gives_acquire(pair: Pair) -> None:
    reqid = REQID_MIN + 77
    trap = PolicySpec(Selector(NET_L, NET_R), Direction.OUT,
                      (Template(reqid, src=LEFT, dst=RIGHT),), priority=1000)  # fmt: skip
    events = pair.left.kernel.events()
    pair.left.ns.ip("route", "add", str(NET_R), "via", str(RIGHT))
    await pair.left.kernel.add_policy(trap)
    ping_task = asyncio.create_task(asyncio.to_thread(ping, pair.left.ns, HOST_R, HOST_L, 1))
    event: Acquire = await _next(events, Acquire, 60)
    await ping_task
    assert (event.src, event.dst, event.reqid) == (LEFT, RIGHT, reqid)
    assert event.policy_direction == Direction.OUT
    assert event.selector.dst.network_address == ip_address(HOST_R)


async def test_soft_and_hard_expire(pair: Pair) -> None:
    _, algos = ALGOS["aes-gcm-128"]
    lifetime = Lifetime(soft_add_expires_seconds=1, hard_add_expires_seconds=3)
    sa = SaSpec(LEFT, RIGHT, 0xC0000E01, REQID_MIN + 5, lifetime=lifetime, **algos)  # type: ignore[arg-type]
    events = pair.left.kernel.events()
    start = time.monotonic()
    await pair.left.kernel.add_sa(sa)
    soft: Expire = await _next(events, Expire, 60)
    hard: Expire = await _next(events, Expire, 60)
    assert (soft.sa, soft.hard, soft.reqid) == (sa.id, False, sa.reqid)
    assert (hard.sa, hard.hard) == (sa.id, True)
    assert time.monotonic() - start >= 2.5
    assert await pair.left.kernel.dump_sas() == []


# --- scale -------------------------------------------------------------------------------

SCALE = int(os.environ.get("XFRMCTL_LAB_SCALE", "2000"))


async def test_many_sa_pairs(topology: tuple[Netns, Netns], caps: Capabilities) -> None:
    if not caps.esp:
        pytest.skip(caps.esp.reason)
    kernel = await NetlinkKernel.open(topology[0].name, monitor=False)
    _, algos = ALGOS["aes-gcm-128"]
    side = Side(topology[0], kernel, LEFT, RIGHT, NET_L, NET_R)
    children = []
    for i in range(SCALE):
        port = i + 1
        sels = (Selector(NET_L, NET_R, 17, dport=port, dport_mask=0xFFFF),
                Selector(NET_R, NET_L, 17, sport=port, sport_mask=0xFFFF))  # fmt: skip
        c = child_for(side, 0xC1000000 + i, 0xC2000000 + i, algos, reqid=REQID_MIN + i,
                      selectors=sels)  # fmt: skip
        children.append(replace(c, policies=c.policies[:2]))
    try:
        t0 = time.monotonic()
        assert await kernel.install_children(children) == [None] * SCALE
        t1 = time.monotonic()
        sas = await kernel.dump_sas()
        pols = await kernel.dump_policies()
        assert {s.spec.spi for s in sas} == {c.inbound.spi for c in children} | {
            c.outbound.spi for c in children
        }
        assert len(pols) == 2 * SCALE
        assert (await kernel.get_sa(children[SCALE // 2].outbound.id)).spec == replace(
            children[SCALE // 2].outbound,
            selector=children[SCALE // 2].outbound.effective_selector(),
        )
        t2 = time.monotonic()
        await kernel.remove_children(children)
        assert await kernel.dump_sas() == []
        assert await kernel.dump_policies() == []
        print(f"\n{SCALE} SA pairs: install {t1 - t0:.1f}s, dump {t2 - t1:.1f}s, "
              f"remove {time.monotonic() - t2:.1f}s")  # fmt: skip
    finally:
        await kernel.close()
