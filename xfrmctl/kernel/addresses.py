"""Local addresses and routes, as MOBIKE needs them (rtnetlink through pyroute2).

- `AddressMonitor`: a NETLINK_ROUTE socket bound to the address and route groups,
  read by the event loop; RTM_NEWADDR/DELADDR become `AddressChange`, RTM_NEWROUTE/
  DELROUTE `RouteChange` (the kernel layer's event queue carries them to the daemon).
- `RouteQueries`: the source address the kernel picks towards a peer (`ip route get`)
  and the addresses of the namespace, over pyroute2's AsyncIPRoute.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import socket
from collections.abc import Callable
from typing import Any

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import (
    RTM_DELADDR,
    RTM_DELROUTE,
    RTM_NEWADDR,
    RTM_NEWROUTE,
    RTMGRP_IPV4_IFADDR,
    RTMGRP_IPV4_ROUTE,
    RTMGRP_IPV6_IFADDR,
    RTMGRP_IPV6_ROUTE,
)
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from .codec import split
from .nsutil import open_socket
from .types import AddressChange, EventsLost, IPAddress, KernelError, KernelEvent, RouteChange

log = logging.getLogger(__name__)

NETLINK_ROUTE = 0
GROUPS = RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE
RT_TABLE_LOCAL = 255
IFA_F_TENTATIVE = 0x40  # an IPv6 address still in duplicate address detection


def usable(address: IPAddress) -> bool:
    """An address IKE may use: not loopback, link-local or multicast."""
    return not (address.is_loopback or address.is_link_local or address.is_multicast
                or address.is_unspecified)


def decode(data: bytes, offset: int, length: int, msg_type: int) -> KernelEvent | None:
    """One rtnetlink message as an event (None: not one we report)."""
    chunk = data[offset:offset + length]
    if msg_type in (RTM_NEWADDR, RTM_DELADDR):
        msg: Any = ifaddrmsg(chunk)
        msg.decode()
        text = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
        if text is None:
            return None
        address = ipaddress.ip_address(text)
        if not usable(address):
            return None
        if msg_type == RTM_NEWADDR and msg["flags"] & IFA_F_TENTATIVE:
            return None  # not usable until DAD is done (a NEWADDR without it follows)
        return AddressChange(msg_type == RTM_NEWADDR, address, int(msg["index"]))
    if msg_type in (RTM_NEWROUTE, RTM_DELROUTE):
        route: Any = rtmsg(chunk)
        route.decode()
        table = int(route.get_attr("RTA_TABLE") or route["table"])
        if table == RT_TABLE_LOCAL:
            return None  # follows the address events
        return RouteChange(msg_type == RTM_NEWROUTE, table)
    return None


class AddressMonitor:
    """Address and route events of one namespace, pushed to `put`."""

    def __init__(self, netns: str | None, put: Callable[[KernelEvent], None]) -> None:
        self._put = put
        self._sock = open_socket(netns, socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        self._sock.bind((0, GROUPS))
        self._sock.setblocking(False)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._sock.fileno(), self._readable)

    def _readable(self) -> None:
        while True:
            try:
                data = self._sock.recv(1 << 20)
            except BlockingIOError:
                return
            except OSError as exc:  # ENOBUFS: some were lost; the daemon looks again
                self._put(EventsLost(exc.errno or errno.EIO))
                continue
            for offset, length, msg_type, _seq in split(data):
                try:
                    event = decode(data, offset, length, msg_type)
                except (ValueError, KeyError, TypeError) as exc:
                    log.warning("rtnetlink message %d not understood: %s", msg_type, exc)
                    continue
                if event is not None:
                    self._put(event)

    def close(self) -> None:
        self._loop.remove_reader(self._sock.fileno())
        self._sock.close()


class RouteQueries:
    """`ip route get` and `ip addr` of one namespace (opened on first use)."""

    def __init__(self, netns: str | None) -> None:
        self._netns = netns
        self._ipr: Any = None

    async def _open(self) -> Any:
        if self._ipr is None:
            ipr = AsyncIPRoute(netns=self._netns) if self._netns else AsyncIPRoute()
            await ipr.setup_endpoint()
            self._ipr = ipr
        return self._ipr

    async def source_address(self, dst: IPAddress) -> IPAddress | None:
        ipr = await self._open()
        try:
            msgs = list(await ipr.route("get", dst=str(dst)))
        except NetlinkError as exc:
            if exc.code in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EINVAL):
                return None
            raise KernelError("get route", dst, exc.code, str(exc)) from None
        src = msgs[0].get("RTA_PREFSRC") if msgs else None
        return ipaddress.ip_address(src) if src else None

    async def local_addresses(self) -> list[IPAddress]:
        ipr = await self._open()
        out = []
        async for m in await ipr.addr("dump"):
            text = m.get("IFA_LOCAL") or m.get("IFA_ADDRESS")
            if text and not m["flags"] & IFA_F_TENTATIVE:
                address = ipaddress.ip_address(text)
                if usable(address):
                    out.append(address)
        return out

    def close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None
