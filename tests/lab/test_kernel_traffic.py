"""Real kernel, real ESP: SAs and policies installed through KernelIPsec carry ping
traffic between two namespaces; counters, events and scale checked against the kernel.

    left:  dummy0 198.51.100.1/24, veth0 192.0.2.1/24
    right: dummy0 203.0.113.1/24,  veth0 192.0.2.2/24
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from ipaddress import ip_address
from typing import Any

import pytest

from tests.lab import kernel_pair
from tests.lab.kernel_pair import (
    ALGOS,
    ANY,
    HOST_L,
    HOST_R,
    LEFT,
    NET_L,
    NET_R,
    PINGS,
    RIGHT,
    UDP_ENCAP,
    UDP_ENCAP_ESPINUDP,
    Pair,
    Side,
    child_for,
    install_pair,
    ip_counters,
    ping,
)
from tests.support.netns import Netns
from xfrmctl.kernel.capabilities import Capabilities
from xfrmctl.kernel.links import KernelLinks, VtiDevice, XfrmInterface
from xfrmctl.kernel.netlink import NetlinkKernel
from xfrmctl.kernel.types import (
    REQID_MIN,
    Acquire,
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

# Bytes an SA counts per echo: tunnel mode the inner packet (20 IP + 8 ICMP + 56 data),
# transport mode what follows the IP header.
ECHO_BYTES = {Mode.TUNNEL: 84, Mode.TRANSPORT: 64}

# the SA pair fixtures (tests/lab/kernel_pair.py)
caps, topology, pair = kernel_pair.caps, kernel_pair.topology, kernel_pair.pair


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
