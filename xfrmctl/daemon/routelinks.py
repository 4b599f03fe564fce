"""The interfaces of route-based children (XFRM interfaces, VTIs) with their addresses
and routes: made when a configuration asks for them, changed make-before-break.

`RouteLinks.sync(wanted, in_use)` brings the links to what the configuration wants:
1. a wanted link that is missing is made first (before any CHILD_SA moves onto it);
2. a link nobody wants any more, or whose settings changed, is removed only once no
   CHILD_SA in the kernel uses it (a link several children share stays while one does);
3. a wanted link the kernel refused while an old one was in its way (same name, same
   if_id, same VTI keys: EEXIST) is made right after the old one went, and so is a route
   an old link still held.
A link present at start (the previous process's, after a restart) is taken as it is.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from xfrmctl.kernel.links import KernelLinks, VtiDevice, XfrmInterface
from xfrmctl.kernel.types import KernelError

from . import conf as cf

log = logging.getLogger("xfrmctl.daemon")


@dataclass(frozen=True, slots=True)
class LinkSpec:
    """One route-based interface as configured."""

    name: str
    kind: str  # xfrmi | vti
    if_id: int = 0
    local: str | None = None  # VTI endpoints
    remote: str | None = None
    ikey: int = 0
    okey: int = 0
    mtu: int | None = None
    addresses: tuple[str, ...] = ()
    routes: tuple[str, ...] = ()


def link_spec(conn: cf.ConnectionConf, child: cf.ChildConf) -> LinkSpec | None:
    """The interface a child is routed through (None: policy-based)."""
    if child.interface_kind is None or child.interface_name is None:
        return None
    vti = child.interface_kind == "vti"
    return LinkSpec(
        child.interface_name, child.interface_kind,
        if_id=0 if vti else child.if_id or 0,
        local=conn.local_addrs[0] if vti and conn.local_addrs else None,
        remote=conn.remote_addrs[0] if vti and conn.remote_addrs else None,
        ikey=child.mark_in or 0 if vti else 0, okey=child.mark_out or 0 if vti else 0,
        mtu=child.mtu, addresses=tuple(child.interface_addresses), routes=tuple(child.routes))


def wanted_links(connections: Mapping[str, cf.ConnectionConf]) -> dict[str, LinkSpec]:
    """Every configured route-based interface by name (the first one of a name wins)."""
    out: dict[str, LinkSpec] = {}
    for name, conn in sorted(connections.items()):
        for child_name, child in conn.children.items():
            spec = link_spec(conn, child)
            if spec is None:
                continue
            if spec.name in out and out[spec.name] != spec:
                log.error("%s/%s: interface %s is configured differently by another "
                          "child: the first one is kept", name, child_name, spec.name)
                continue
            out[spec.name] = spec
    return out


class RouteLinks:
    """The links this daemon manages: name -> the settings it made them with."""

    def __init__(self, links: KernelLinks | None) -> None:
        self.links = links
        self.held: dict[str, LinkSpec] = {}
        self._routes_waiting: dict[str, list[str]] = {}  # link -> routes an old link had
        self._said: set[str] = set()  # problems logged once per interface

    async def sync(self, wanted: Mapping[str, LinkSpec], in_use: Iterable[LinkSpec],
                   *, adopt: bool = False) -> None:
        """See the module's docstring. `adopt`: take links already present (start)."""
        if self.links is None:
            for name in set(wanted) - self._said:
                log.error("interface %s is route-based but no link manager is running", name)
                self._said.add(name)
            return
        used = set(in_use)
        for spec in wanted.values():
            if spec.name not in self.held:
                await self._make(spec, adopt=adopt)
        removed = False
        for name, held in list(self.held.items()):
            if wanted.get(name) != held and held not in used:
                await self._delete(name)
                removed = True
        if not removed:
            return
        for spec in wanted.values():
            if spec.name not in self.held:
                await self._make(spec, adopt=False)
        for name, routes in list(self._routes_waiting.items()):
            del self._routes_waiting[name]
            await self._add_routes(name, routes)

    async def close(self) -> None:
        """Remove every link we made (their addresses and routes go with them)."""
        for name in list(self.held):
            await self._delete(name)

    async def _make(self, spec: LinkSpec, *, adopt: bool) -> None:
        links = self.links
        assert links is not None
        if adopt:
            with contextlib.suppress(KernelError):
                await links.index(spec.name)
                self.held[spec.name] = spec  # kept from before a restart
                return
        try:
            if spec.kind == "xfrmi":
                await links.add_xfrm_interface(XfrmInterface(spec.name, spec.if_id), spec.mtu)
            else:
                if spec.local is None or spec.remote is None:
                    raise ValueError("a VTI needs local_addrs and remote_addrs")
                await links.add_vti(VtiDevice(
                    spec.name, ipaddress.IPv4Address(spec.local),
                    ipaddress.IPv4Address(spec.remote), spec.ikey, spec.okey), spec.mtu)
        except KernelError as exc:
            if exc.errno == errno.EEXIST:  # an old link is in its way: made once it went
                self._say(spec.name, logging.INFO, "interface %s waits for the one in its "
                          "way to be unused: %s", spec.name, exc)
            else:
                self._say(spec.name, logging.ERROR, "interface %s: %s", spec.name, exc)
            return
        except ValueError as exc:
            self._say(spec.name, logging.ERROR, "interface %s: %s", spec.name, exc)
            return
        self._said.discard(spec.name)
        self.held[spec.name] = spec
        try:
            for address in spec.addresses:
                await links.add_address(spec.name, address)
        except KernelError as exc:
            log.error("interface %s: %s", spec.name, exc)
        await self._add_routes(spec.name, list(spec.routes))

    def _say(self, name: str, level: int, message: str, *args: object) -> None:
        if name not in self._said:
            self._said.add(name)
            log.log(level, message, *args)

    async def _add_routes(self, name: str, routes: list[str]) -> None:
        assert self.links is not None
        for route in routes:
            try:
                await self.links.add_route(ipaddress.ip_network(route), name)
            except KernelError as exc:
                if exc.errno == errno.EEXIST:  # an old link's, until that one goes
                    log.info("route %s dev %s waits for the interface holding it", route,
                             name)
                    self._routes_waiting.setdefault(name, []).append(route)
                else:
                    log.error("route %s dev %s: %s", route, name, exc)

    async def _delete(self, name: str) -> None:
        assert self.links is not None
        self.held.pop(name, None)
        self._routes_waiting.pop(name, None)
        try:
            await self.links.delete_link(name)  # its addresses and routes go with it
        except KernelError as exc:
            if exc.errno != errno.ENODEV:
                log.warning("removing interface %s: %s", name, exc)
