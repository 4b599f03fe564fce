"""The host kernel's SPD through NetlinkKernel, read back with iproute2 (an independent
decoder). ESP SAs don't exist on the host kernel; policies do."""

from __future__ import annotations

import asyncio
import errno
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from ipaddress import ip_address, ip_network

import pytest

from tests.support.netns import Netns, netns, require_root
from xfrmctl.daemon.endpoint import open_socket
from xfrmctl.kernel.netlink import NetlinkKernel
from xfrmctl.kernel.types import (
    REQID_MIN,
    Algorithm,
    ChildInstall,
    Direction,
    KernelError,
    Mark,
    PolicyNotify,
    PolicySpec,
    SaSpec,
    Selector,
    SpdThresholds,
    Template,
)

pytestmark = pytest.mark.netns

LEFT, RIGHT = ip_address("192.0.2.1"), ip_address("192.0.2.2")
NET_L, NET_R = ip_network("198.51.100.0/24"), ip_network("203.0.113.0/24")


@pytest.fixture
async def ns_kernel() -> AsyncIterator[tuple[Netns, NetlinkKernel]]:
    require_root()
    with netns("kp") as ns:
        kernel = await NetlinkKernel.open(ns.name)
        try:
            yield ns, kernel
        finally:
            await kernel.close()


def port_policy(i: int, direction: Direction = Direction.OUT, reqid: int = REQID_MIN) -> PolicySpec:
    sel = Selector(NET_L, NET_R, 17, dport=i, dport_mask=0xFFFF)
    return PolicySpec(sel, direction, (Template(reqid, src=LEFT, dst=RIGHT),), priority=500)


def ip_policies(ns: Netns) -> str:
    return ns.ip("xfrm", "policy", "list").stdout


async def test_policy_as_iproute2_reads_it(ns_kernel: tuple[Netns, NetlinkKernel]) -> None:
    ns, kernel = ns_kernel
    p = PolicySpec(Selector(NET_L, NET_R, 6, dport=443, dport_mask=0xFFFF), Direction.FWD,
                   (Template(REQID_MIN + 9, src=LEFT, dst=RIGHT),), priority=321,
                   mark=Mark(0x10, 0xF0), if_id=5)  # fmt: skip
    await kernel.add_policy(p)
    text = ip_policies(ns)
    for needle in ("src 198.51.100.0/24 dst 203.0.113.0/24 proto tcp dport 443", "dir fwd",
                   "priority 321", f"reqid {REQID_MIN + 9}", "mark 0x10/0xf0", "if_id 0x5",
                   "tmpl src 192.0.2.1 dst 192.0.2.2"):  # fmt: skip
        assert needle in text, text


async def test_foreign_entries_survive_everything(ns_kernel: tuple[Netns, NetlinkKernel]) -> None:
    ns, kernel = ns_kernel
    ns.ip("xfrm", "policy", "add", "src", str(NET_R), "dst", str(NET_L), "dir", "in",
          "priority", "7", "tmpl", "src", str(RIGHT), "dst", str(LEFT), "proto", "esp",
          "reqid", "1", "mode", "tunnel")  # fmt: skip
    ns.ip("xfrm", "policy", "add", "src", str(NET_L), "dst", str(NET_R), "dir", "out",
          "priority", "9", "action", "block")  # fmt: skip
    before = ip_policies(ns)
    ours = [port_policy(i) for i in range(1, 6)]
    for p in ours:
        await kernel.add_policy(p)
    assert len(await kernel.dump_policies()) == 5
    assert len(await kernel.dump_all_policies()) == 7
    for p in ours:
        await kernel.remove_policy(p)
    assert ip_policies(ns) == before


async def test_rekey_overlap_keeps_policy(ns_kernel: tuple[Netns, NetlinkKernel]) -> None:
    ns, kernel = ns_kernel
    old, new = port_policy(1, reqid=REQID_MIN + 1), port_policy(1, reqid=REQID_MIN + 2)
    await kernel.add_policy(old)
    await kernel.add_policy(new)
    assert f"reqid {REQID_MIN + 2}" in ip_policies(ns)
    await kernel.remove_policy(old)
    assert f"reqid {REQID_MIN + 2}" in ip_policies(ns)
    await kernel.remove_policy(new)
    assert ip_policies(ns) == ""


async def test_install_child_rolls_back_policies(ns_kernel: tuple[Netns, NetlinkKernel]) -> None:
    """The policies go down in the same batch as the SAs; the SAs fail (no ESP on the
    host, or an unknown algorithm), so the installed policies must be undone."""
    ns, kernel = ns_kernel
    aead = Algorithm("nonesuch(aes)", bytes(20), 128)
    pols = (port_policy(1), port_policy(1, Direction.IN))
    child = ChildInstall(
        SaSpec(RIGHT, LEFT, 0xC0000001, REQID_MIN, aead=aead),
        SaSpec(LEFT, RIGHT, 0xC0000002, REQID_MIN, aead=aead),
        pols,
    )
    events = kernel.events()
    with pytest.raises(KernelError) as info:
        await kernel.install_child(child)
    assert info.value.errno in (errno.ENOSYS, errno.EPROTONOSUPPORT)
    assert "0xc0000001" in str(info.value)
    assert ip_policies(ns) == ""
    kinds = []
    while len(kinds) < 4:  # two policies went in and came out again
        ev = await asyncio.wait_for(events.__anext__(), 2)
        if isinstance(ev, PolicyNotify):
            kinds.append(ev.kind)
    assert kinds == ["new", "new", "delete", "delete"]


async def test_spdinfo_matches_iproute2(ns_kernel: tuple[Netns, NetlinkKernel]) -> None:
    ns, kernel = ns_kernel
    for i in range(1, 4):
        await kernel.add_policy(port_policy(i))
    await kernel.add_policy(port_policy(1, Direction.IN))
    info = await kernel.get_spdinfo()
    assert (info.incnt, info.outcnt, info.fwdcnt) == (1, 3, 0)
    await kernel.set_spdinfo(SpdThresholds(20, 24, 48, 56))
    text = ns.ip("-s", "-s", "xfrm", "policy", "count").stdout
    assert "SPD IN  1 OUT 3 FWD 0" in text, text
    assert "IPv4 thresholds: local 20 remote 24" in text, text
    assert "IPv6 thresholds: local 48 remote 56" in text, text
    assert (await kernel.get_spdinfo()).thresholds == SpdThresholds(20, 24, 48, 56)


async def test_foreign_change_seen_as_event(ns_kernel: tuple[Netns, NetlinkKernel]) -> None:
    ns, kernel = ns_kernel
    events = kernel.events()
    ns.ip("xfrm", "policy", "add", "src", str(NET_L), "dst", str(NET_R), "dir", "out",
          "action", "block")  # fmt: skip
    ev = await asyncio.wait_for(events.__anext__(), 2)
    assert isinstance(ev, PolicyNotify) and ev.kind == "new"
    assert ev.key is not None and ev.key.selector == Selector(NET_L, NET_R)


async def test_ten_thousand_policies(ns_kernel: tuple[Netns, NetlinkKernel]) -> None:
    ns, kernel = ns_kernel
    count = 10_000
    specs = [
        port_policy(i % 60000 + 1, (Direction.OUT, Direction.IN)[i // 60000]) for i in range(count)
    ]
    t0 = time.monotonic()
    assert await kernel.add_policies(specs) == [None] * count
    t1 = time.monotonic()
    dumped = await kernel.dump_policies()
    assert {replace(d.spec, index=0) for d in dumped} == set(specs)
    assert (await kernel.get_spdinfo()).outcnt == count
    await kernel.remove_policies(specs)
    assert await kernel.dump_policies() == []
    assert ip_policies(ns) == ""
    print(f"\n{count} policies: add {t1 - t0:.2f}s")


async def test_dump_skips_the_ike_sockets_bypass_policies(
        ns_kernel: tuple[Netns, NetlinkKernel]) -> None:
    """The daemon's IKE sockets carry per-socket bypass policies; the SPD dump (a restart's
    reconciliation reads it) must neither choke on them nor count them as ours."""
    ns, kernel = ns_kernel
    ns.ip("addr", "add", "192.0.2.1/24", "dev", "lo")
    sock = ns.call(lambda: open_socket("192.0.2.1", 500, nat_t=False))
    try:
        assert "socket out" in ip_policies(ns) and "socket in" in ip_policies(ns)
        await kernel.add_policy(port_policy(9))
        assert [p.spec.selector.dport for p in await kernel.dump_policies()] == [9]
        assert len(await kernel.dump_all_policies()) == 1
    finally:
        sock.close()
