"""An in-memory stand-in for KernelLinks (rtnetlink): records links, addresses, routes, rules."""

from __future__ import annotations

from typing import Any

from xfrmctl.kernel.links import NextHop, Route, VtiDevice, XfrmInterface
from xfrmctl.kernel.types import KernelError


class FakeLinks:
    """Records what the controller asks of rtnetlink; ENODEV for unknown links."""

    def __init__(self, addresses: tuple[str, ...] = ()) -> None:
        self.links: dict[str, dict[str, Any]] = {}
        self.loopback: list[str] = []  # addresses on "lo"
        self.addrs = list(addresses)  # on other links (policy routes pick a source)
        self.table: dict[str, Route] = {}  # policy routes, by destination
        self.rules: set[tuple[int, int, int]] = set()
        self.mtu = 1500  # of the link towards every peer

    async def next_hop(self, address: str) -> NextHop:
        return NextHop(oif=7, gateway=None)  # every peer on-link

    async def link_mtu(self, index: int) -> int:
        return self.mtu

    async def addresses(self) -> list[str]:
        return [a.split("/")[0] for a in self.loopback] + self.addrs

    async def replace_route(self, route: Route) -> None:
        self.table[str(route.dst)] = route

    async def remove_route(self, route: Route) -> None:
        del self.table[str(route.dst)]

    async def add_rule(self, table: int, priority: int, version: int) -> None:
        self.rules.add((table, priority, version))

    async def delete_rule(self, table: int, priority: int, version: int) -> None:
        self.rules.remove((table, priority, version))

    async def index(self, name: str) -> int:
        if name not in self.links:
            raise KernelError("find link", name, 19)
        return list(self.links).index(name) + 1

    def _exists(self, name: str, **keys: object) -> None:
        """As the kernel: one link per name, per if_id, per VTI endpoints and keys."""
        if name in self.links or any(
                all(link.get(k) == v for k, v in keys.items()) for link in self.links.values()):
            raise KernelError("add link", name, 17)

    async def add_xfrm_interface(self, dev: XfrmInterface, mtu: int | None = None) -> int:
        self._exists(dev.name, kind="xfrm", if_id=dev.if_id)
        self.links[dev.name] = {"kind": "xfrm", "if_id": dev.if_id, "mtu": mtu, "addrs": [],
                                "routes": []}
        return await self.index(dev.name)

    async def add_vti(self, dev: VtiDevice, mtu: int | None = None) -> int:
        self._exists(dev.name, kind="vti", ikey=dev.ikey, okey=dev.okey)
        self.links[dev.name] = {"kind": "vti", "ikey": dev.ikey, "okey": dev.okey, "mtu": mtu,
                                "addrs": [], "routes": []}
        return await self.index(dev.name)

    async def add_address(self, name: str, address: str) -> None:
        (self.loopback if name == "lo" else self.links[name]["addrs"]).append(address)

    async def delete_address(self, name: str, address: str) -> None:
        (self.loopback if name == "lo" else self.links[name]["addrs"]).remove(address)

    async def add_route(self, dst: object, name: str, src: str | None = None) -> None:
        if any(str(dst) in link["routes"] for link in self.links.values()):
            raise KernelError("add route", f"{dst} dev {name}", 17)  # main table: one per prefix
        self.links[name]["routes"].append(str(dst))

    async def set_mtu(self, name: str, mtu: int) -> None:
        self.links[name]["mtu"] = mtu

    async def delete_link(self, name: str) -> None:
        del self.links[name]
