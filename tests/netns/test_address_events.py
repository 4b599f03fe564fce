"""The real kernel's address and route events (rtnetlink) and source address lookup,
as MOBIKE reads them, in a namespace of the test's own."""

from __future__ import annotations

import asyncio
from ipaddress import ip_address

import pytest

from tests.support.netns import netns, require_root, veth
from xfrmctl.kernel.netlink import DAEMON_GROUPS, NetlinkKernel
from xfrmctl.kernel.types import AddressChange, KernelEvent, RouteChange

pytestmark = pytest.mark.netns


async def _next(events: object, kind: type, timeout: float = 5.0) -> KernelEvent:
    async def find() -> KernelEvent:
        async for event in events:  # type: ignore[attr-defined]
            if isinstance(event, kind):
                return event  # type: ignore[no-any-return]
        raise AssertionError("events ended")
    return await asyncio.wait_for(find(), timeout)


async def test_address_and_route_events_and_the_source_towards_a_peer() -> None:
    require_root()
    with netns("ae") as ns, netns("af") as other:  # (the host kernel has no dummy links)
        veth(ns, other, "192.0.2.1/24", None, "d0")
        veth(ns, other, None, None, "d1")
        kernel = await NetlinkKernel.open(ns.name, groups=DAEMON_GROUPS, address_events=True)
        try:
            events = kernel.events()
            peer = ip_address("203.0.113.1")
            assert await kernel.source_address(peer) is None  # no route yet
            ns.ip("route", "add", "203.0.113.0/24", "via", "192.0.2.254")
            assert isinstance(await _next(events, RouteChange), RouteChange)
            assert await kernel.source_address(peer) == ip_address("192.0.2.1")
            ns.add_addr("d1", "198.51.100.7/24")
            added = await _next(events, AddressChange)
            assert added == AddressChange(True, ip_address("198.51.100.7"), added.ifindex)
            assert set(await kernel.local_addresses()) == {
                ip_address("192.0.2.1"), ip_address("198.51.100.7")}
            # the path moves: the old address goes, the route now leaves from the new one
            ns.ip("addr", "del", "192.0.2.1/24", "dev", "d0")
            gone = await _next(events, AddressChange)
            assert gone == AddressChange(False, ip_address("192.0.2.1"), gone.ifindex)
            assert await kernel.source_address(peer) is None
            ns.ip("route", "add", "203.0.113.0/24", "via", "198.51.100.254")
            assert await kernel.source_address(peer) == ip_address("198.51.100.7")
        finally:
            await kernel.close()
