"""Route-based IPsec plumbing: XFRM interfaces (if_id) and VTI devices (ikey/okey
marks), their addresses, routes and MTU, through pyroute2's AsyncIPRoute.

Kept apart from `KernelIPsec` (which is only SAD/SPD) so the fake kernel needn't
emulate rtnetlink; the controller creates the device here, then installs SAs and
policies carrying the same if_id (XFRM interface) or mark (VTI).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from ipaddress import IPv4Address, ip_interface
from typing import Any

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError

from .types import IPNetwork, KernelError


@dataclass(frozen=True)
class XfrmInterface:
    name: str
    if_id: int
    underlay: str | None = None  # device the encrypted packets leave by


@dataclass(frozen=True)
class VtiDevice:
    name: str
    local: IPv4Address
    remote: IPv4Address
    ikey: int
    okey: int
    underlay: str | None = None


@dataclass(frozen=True)
class Route:
    """A route in `table` (main is 254): to `dst`, by `oif`, via `gateway`, from `src`."""

    dst: IPNetwork
    oif: int
    gateway: str | None = None
    src: str | None = None
    table: int = 254


@dataclass(frozen=True)
class NextHop:
    """How the kernel reaches an address: the device, and the gateway if not on-link."""

    oif: int
    gateway: str | None


class KernelLinks:
    """Links, addresses and routes in one namespace (None: the current one)."""

    def __init__(self, ipr: Any) -> None:
        self._ipr = ipr

    @classmethod
    async def open(cls, netns: str | None = None) -> KernelLinks:
        ipr = AsyncIPRoute(netns=netns) if netns else AsyncIPRoute()
        await ipr.setup_endpoint()
        return cls(ipr)

    async def close(self) -> None:
        self._ipr.close()

    async def index(self, name: str) -> int:
        found = await self._ipr.link_lookup(ifname=name)
        if not found:
            raise KernelError("find link", name, 19)  # ENODEV
        return int(found[0])

    async def _call(self, op: str, obj: object, method: str, *args: Any, **kw: Any) -> Any:
        try:
            return await getattr(self._ipr, method)(*args, **kw)
        except NetlinkError as exc:
            raise KernelError(op, obj, exc.code, str(exc)) from None

    async def add_xfrm_interface(self, dev: XfrmInterface, mtu: int | None = None) -> int:
        args: dict[str, Any] = {"ifname": dev.name, "kind": "xfrm", "xfrm_if_id": dev.if_id}
        if dev.underlay:
            args["xfrm_link"] = await self.index(dev.underlay)
        await self._call("add xfrm interface", dev.name, "link", "add", **args)
        return await self._up(dev.name, mtu)

    async def add_vti(self, dev: VtiDevice, mtu: int | None = None) -> int:
        args: dict[str, Any] = {
            "ifname": dev.name, "kind": "vti", "vti_local": str(dev.local),
            "vti_remote": str(dev.remote), "vti_ikey": dev.ikey, "vti_okey": dev.okey,
        }  # fmt: skip
        if dev.underlay:
            args["vti_link"] = await self.index(dev.underlay)
        await self._call("add vti", dev.name, "link", "add", **args)
        return await self._up(dev.name, mtu)

    async def _up(self, name: str, mtu: int | None) -> int:
        idx = await self.index(name)
        extra = {"mtu": mtu} if mtu else {}
        await self._call("set link up", name, "link", "set", index=idx, state="up", **extra)
        return idx

    async def set_mtu(self, name: str, mtu: int) -> None:
        await self._call("set mtu", name, "link", "set", index=await self.index(name), mtu=mtu)

    async def delete_link(self, name: str) -> None:
        await self._call("delete link", name, "link", "del", index=await self.index(name))

    async def add_address(self, name: str, address: str) -> None:
        """`address` with prefix, e.g. "198.51.100.1/24"."""
        iface = ip_interface(address)
        await self._call(
            "add address", f"{address} dev {name}", "addr", "add",
            index=await self.index(name), address=str(iface.ip), prefixlen=iface.network.prefixlen,
        )  # fmt: skip

    async def delete_address(self, name: str, address: str) -> None:
        iface = ip_interface(address)
        await self._call(
            "delete address", f"{address} dev {name}", "addr", "del",
            index=await self.index(name), address=str(iface.ip), prefixlen=iface.network.prefixlen,
        )  # fmt: skip

    async def add_route(self, dst: IPNetwork, name: str, src: str | None = None) -> None:
        extra = {"prefsrc": src} if src else {}
        await self._call(
            "add route", f"{dst} dev {name}", "route", "add",
            dst=str(dst), oif=await self.index(name), **extra,
        )  # fmt: skip

    async def link_info(self, name: str) -> dict[str, Any]:
        """Kind and keys of a link, read back from the kernel."""
        msgs = await self._call("get link", name, "link", "get", index=await self.index(name))
        msg = msgs[0]
        info = msg.get(("linkinfo", "data")) or {}
        return {
            "kind": msg.get(("linkinfo", "kind")),
            "mtu": msg.get("mtu"),
            "if_id": info.get("IFLA_XFRM_IF_ID") if hasattr(info, "get") else None,
            "ikey": info.get("IFLA_VTI_IKEY") if hasattr(info, "get") else None,
            "okey": info.get("IFLA_VTI_OKEY") if hasattr(info, "get") else None,
        }

    async def next_hop(self, address: str) -> NextHop:
        """The kernel's route to `address` (as `ip route get`)."""
        msgs = await self._call("get route", address, "route", "get", dst=address)
        msg = msgs[0]
        return NextHop(int(msg.get("RTA_OIF")), msg.get("RTA_GATEWAY"))

    async def link_mtu(self, index: int) -> int:
        """The MTU of the link with this index."""
        msgs = await self._call("get link", index, "link", "get", index=index)
        return int(msgs[0].get("mtu"))

    async def addresses(self) -> list[str]:
        """Every address on this namespace's links (no prefix)."""
        msgs = await self._call("list addresses", "*", "addr", "dump")
        return [str(m.get("IFA_ADDRESS")) async for m in msgs]

    async def replace_route(self, route: Route) -> None:
        extra: dict[str, Any] = {}
        if route.gateway:
            extra["gateway"] = route.gateway
        if route.src:
            extra["prefsrc"] = route.src
        await self._call("replace route", _describe(route), "route", "replace",
                         dst=str(route.dst), oif=route.oif, table=route.table, **extra)

    async def remove_route(self, route: Route) -> None:
        await self._call("delete route", _describe(route), "route", "del",
                         dst=str(route.dst), oif=route.oif, table=route.table)

    async def add_rule(self, table: int, priority: int, version: int) -> None:
        """`ip rule add priority P table T` for IPv4 (4) or IPv6 (6)."""
        await self._call("add rule", f"priority {priority} table {table}", "rule", "add",
                         table=table, priority=priority, family=_FAMILY[version])

    async def delete_rule(self, table: int, priority: int, version: int) -> None:
        await self._call("delete rule", f"priority {priority} table {table}", "rule", "del",
                         table=table, priority=priority, family=_FAMILY[version])


_FAMILY = {4: socket.AF_INET, 6: socket.AF_INET6}


def _describe(route: Route) -> str:
    via = f" via {route.gateway}" if route.gateway else ""
    return f"{route.dst}{via} table {route.table}"
