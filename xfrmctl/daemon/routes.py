"""Routes for policy-based tunnels, in a table of their own (strongSwan's table 220).

An IPsec policy only sees packets that have a route: without one to the remote subnet,
the gateway's own traffic (and a trap's first packet) goes nowhere, or out in the clear
by the default route. For each policy-based tunnel-mode CHILD_SA, and each connection's
trap policies, the daemon routes every remote traffic selector in `table` (looked up
first, by an `ip rule` at `priority`): via the next hop towards the peer, from one of our
addresses inside the local selector when there is one (a remote-access client's virtual
IP), so that this host's own traffic leaves from an address the tunnel covers. A route
several owners need (a rekey's old and new SA, a trap and its SA) goes with the last.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import time
from collections.abc import Hashable, Sequence
from typing import Protocol

from xfrmctl.ike import ts
from xfrmctl.ike.payloads import TrafficSelector
from xfrmctl.kernel.links import NextHop, Route
from xfrmctl.kernel.types import IPNetwork, KernelError

log = logging.getLogger("xfrmctl.daemon")
ADDRESS_TTL = 1.0  # seconds a dump of our addresses serves (a burst of installs shares one)


class RouteLinks(Protocol):
    """What the routes need of rtnetlink (`KernelLinks` implements it)."""

    async def next_hop(self, address: str) -> NextHop: ...
    async def addresses(self) -> list[str]: ...
    async def replace_route(self, route: Route) -> None: ...
    async def remove_route(self, route: Route) -> None: ...
    async def add_rule(self, table: int, priority: int, version: int) -> None: ...
    async def delete_rule(self, table: int, priority: int, version: int) -> None: ...


class PolicyRoutes:
    """The routes of policy-based tunnels, counted by owner (any hashable key)."""

    def __init__(self, links: RouteLinks, table: int = 220, priority: int = 220) -> None:
        self.links, self.table, self.priority = links, table, priority
        self._routes: dict[IPNetwork, Route] = {}
        self._owners: dict[IPNetwork, set[Hashable]] = {}
        self._held: dict[Hashable, list[IPNetwork]] = {}
        self._rules: set[int] = set()  # IP versions whose rule we put in
        self._addresses: tuple[float, list[str]] = (-ADDRESS_TTL, [])

    async def plan(self, local_ts: Sequence[TrafficSelector],
                   remote_ts: Sequence[TrafficSelector], peer: str,
                   virtual_ip: str | None = None) -> list[Route]:
        """The routes a tunnel to `peer` between these selectors needs."""
        peer_ip = ipaddress.ip_address(peer)
        # host-to-host: the peer is reachable already
        dsts = [net for sel in remote_ts for net in ts.to_networks(sel)
                if not (net.num_addresses == 1 and net.network_address == peer_ip)]
        if not dsts:
            return []
        hop = await self.links.next_hop(peer)
        local_nets = [net for sel in local_ts for net in ts.to_networks(sel)]
        ours = [virtual_ip] if virtual_ip else await self._our_addresses()
        routes = []
        for dst in dsts:
            # An inner family other than the outer one cannot go via the peer's address.
            gateway = (hop.gateway or peer) if dst.version == peer_ip.version else None
            src = _source(ours, local_nets, dst.version)
            routes.append(Route(dst, hop.oif, gateway, src, self.table))
        return routes

    async def hold(self, owner: Hashable, routes: Sequence[Route]) -> None:
        """Put in the routes `owner` needs (a route already there is shared)."""
        for route in routes:
            if self._routes.get(route.dst) != route:
                await self._ensure_rule(route.dst.version)
                await self.links.replace_route(route)
                self._routes[route.dst] = route
            self._owners.setdefault(route.dst, set()).add(owner)
            held = self._held.setdefault(owner, [])
            if route.dst not in held:
                held.append(route.dst)

    async def release(self, owner: Hashable) -> None:
        """Drop `owner`'s routes; remove those no other owner needs."""
        for dst in self._held.pop(owner, []):
            owners = self._owners.get(dst, set())
            owners.discard(owner)
            if owners:
                continue
            self._owners.pop(dst, None)
            route = self._routes.pop(dst, None)
            if route is not None:
                try:
                    await self.links.remove_route(route)
                except KernelError as exc:  # removed by hand meanwhile
                    log.warning("route %s: %s", dst, exc)

    async def _our_addresses(self) -> list[str]:
        taken, addresses = self._addresses
        if time.monotonic() - taken >= ADDRESS_TTL:
            addresses = await self.links.addresses()
            self._addresses = (time.monotonic(), addresses)
        return addresses

    async def close(self) -> None:
        """Remove every route and the rules we added (the daemon stops)."""
        for owner in list(self._held):
            await self.release(owner)
        for version in sorted(self._rules):
            with contextlib.suppress(KernelError):
                await self.links.delete_rule(self.table, self.priority, version)
        self._rules.clear()

    async def _ensure_rule(self, version: int) -> None:
        if version in self._rules:
            return
        try:
            await self.links.add_rule(self.table, self.priority, version)
        except KernelError as exc:
            if exc.errno != errno.EEXIST:  # there from before a restart: ours all the same
                raise
        self._rules.add(version)


def _source(addresses: Sequence[str], local_nets: Sequence[IPNetwork],
            version: int) -> str | None:
    """One of our addresses inside the local selectors, if any."""
    for text in addresses:
        address = ipaddress.ip_address(text)
        if address.version == version and not address.is_loopback and any(
                address in net for net in local_nets if net.version == version):
            return text
    return None
