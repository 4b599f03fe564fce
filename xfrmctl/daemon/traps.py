"""Trap policies (start_action = trap): outbound policies with no SA yet, so the first
packet makes the kernel send ACQUIRE and the daemon initiates; with the routes that let
such a packet reach its policy (policy-based tunnels)."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from xfrmctl.ike import ts
from xfrmctl.ike.config import Mode
from xfrmctl.ike.payloads import TrafficSelector
from xfrmctl.kernel.interface import KernelIPsec
from xfrmctl.kernel.types import KernelError, PolicySpec

from . import conf as cf
from .install import trap_policies
from .records import ConnectionRecord
from .routes import PolicyRoutes

log = logging.getLogger("xfrmctl.daemon")


@dataclass(frozen=True, slots=True)
class TrapChild:
    name: str
    conf: cf.ChildConf
    local_ts: tuple[TrafficSelector, ...]
    remote_ts: tuple[TrafficSelector, ...]
    local: str
    remote: str


async def hold_routes(routes: PolicyRoutes | None, owner: object,
                      local_ts: Sequence[TrafficSelector], remote_ts: Sequence[TrafficSelector],
                      peer: str, vip: str | None = None) -> None:
    """Routes to the remote selectors are a convenience: a failure is logged, the SAs
    stay."""
    if routes is None:
        return
    try:
        await routes.hold(owner, await routes.plan(local_ts, remote_ts, peer, vip))
    except KernelError as exc:
        log.warning("routes to %s: %s", ", ".join(map(ts.format_ts, remote_ts)), exc)


class Traps:
    """The trap policies of each connection (kept in `ConnectionRecord.traps`)."""

    def __init__(self, kernel: KernelIPsec, routes: PolicyRoutes | None,
                 reqid: Callable[[str, str], int]) -> None:
        self.kernel = kernel
        self.routes = routes
        self.reqid = reqid

    @staticmethod
    def children(record: ConnectionRecord) -> Iterator[TrapChild]:
        """The configured children with the selectors their trap policies hold."""
        conf = record.conf
        if not conf.remote_addrs or not conf.local_addrs:
            return
        local, remote = conf.local_addrs[0], conf.remote_addrs[0]
        for name, child in conf.children.items():
            local_ts = tuple(ts.parse(t) for t in child.local_ts) or \
                (ts.from_address(ipaddress.ip_address(local)),)
            remote_ts = tuple(ts.parse(t) for t in child.remote_ts) or \
                (ts.from_address(ipaddress.ip_address(remote)),)
            yield TrapChild(name, child, local_ts, remote_ts, local, remote)

    def specs(self, record: ConnectionRecord) -> list[PolicySpec]:
        return [spec for t in self.children(record)
                for spec in trap_policies(t.local_ts, t.remote_ts, t.local, t.remote, t.conf,
                                          self.reqid(record.name, t.name))]

    async def install(self, record: ConnectionRecord) -> bool:
        """Install the connection's traps (once); True if it holds any now."""
        if record.traps:
            return True
        for policy in self.specs(record):
            try:
                await self.kernel.add_policy(policy)
                record.traps.append(policy)
            except KernelError as exc:
                log.error("trap policy for %s: %s", record.name, exc)
        await self.hold_routes(record)
        return bool(record.traps)

    async def hold_routes(self, record: ConnectionRecord) -> None:
        """A trap's first packet needs a route to reach its policy."""
        for trap in self.children(record):
            if trap.conf.interface_kind is None and trap.conf.mode is Mode.TUNNEL:
                await hold_routes(self.routes, ("trap", record.name, trap.name),
                                  trap.local_ts, trap.remote_ts, trap.remote)

    async def remove(self, record: ConnectionRecord) -> None:
        for policy in record.traps:
            with contextlib.suppress(KernelError):
                await self.kernel.remove_policy(policy)
        record.traps = []
        if self.routes is not None:
            for name in record.conf.children:
                await self.routes.release(("trap", record.name, name))

    async def update(self, record: ConnectionRecord, before: cf.ConnectionConf) -> bool:
        """Trap policies of the new configuration first, then the old ones go (the kernel
        counts shared policies: those that stay are never missing). True if it holds
        traps now."""
        old = record.traps
        if not old and before.start_action is cf.StartAction.TRAP:
            return False  # its traps were not installed (or failed): nothing to replace
        record.traps = []
        trapped = False
        if record.conf.start_action is cf.StartAction.TRAP:
            trapped = await self.install(record)
        for policy in old:
            with contextlib.suppress(KernelError):
                await self.kernel.remove_policy(policy)
        return trapped

    async def adopt(self, record: ConnectionRecord) -> bool:
        """Trap policies the previous process left in the kernel are held again; True if
        any were."""
        if record.conf.start_action is not cf.StartAction.TRAP:
            return False
        present = {p.spec.key for p in await self.kernel.dump_policies()}
        for policy in self.specs(record):
            if policy.key in present:
                self.kernel.adopt_policy(policy)
                record.traps.append(policy)
        if record.traps:
            await self.hold_routes(record)
        return bool(record.traps)

    def owner_of(self, connections: Sequence[ConnectionRecord], reqid: int
                 ) -> ConnectionRecord | None:
        """The connection whose trap an ACQUIRE of this reqid hit."""
        return next((r for r in connections if any(
            p.templates and p.templates[0].reqid == reqid for p in r.traps)), None)
