"""Read-only views of the running daemon for the API port: IKE and CHILD_SAs, policies,
the kernel's raw state and the status of every configured connection (no key material)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Protocol

from xfrmctl import __version__
from xfrmctl.ike import ts
from xfrmctl.ike.constants import DhId, EncrId, IntegId, PrfId, ProtocolId, TransformType
from xfrmctl.ike.events import Event
from xfrmctl.ike.manager import IkeManager
from xfrmctl.ike.proposals import KEYWORDS, Suite
from xfrmctl.ike.sa import IkeSa
from xfrmctl.kernel.interface import KernelIPsec
from xfrmctl.kernel.types import Counters as KernelCounters
from xfrmctl.kernel.types import KernelError, PolicySpec, SaSpec
from xfrmctl.port import (
    ChildSaInfo,
    ChildStatus,
    ConnectionState,
    ConnectionStatus,
    Counters,
    DaemonStatus,
    FailureInfo,
    IkeSaInfo,
    KernelAlgorithm,
    KernelPolicyInfo,
    KernelSaInfo,
    KernelView,
    PolicyInfo,
    Traffic,
)

from .records import ChildRecord, ConnectionRecord, child_id


class ViewSource(Protocol):
    """What the views read (the controller and its parts)."""

    manager: IkeManager
    kernel: KernelIPsec
    connections: dict[str, ConnectionRecord]
    counters: dict[str, int]
    failures: dict[str, int]
    unmatched: deque[FailureInfo]
    not_loaded: dict[str, str]
    load_problems: Callable[[], dict[str, str]] | None
    kernel_kind: str
    started_at: float
    clock: Callable[[], float]
    wall_clock: Callable[[], float]

    @property
    def children(self) -> dict[int, ChildRecord]: ...

    @property
    def install_seconds(self) -> float: ...

    def sas_of(self, record: ConnectionRecord) -> list[IkeSa]: ...


class Views:
    """The port's read-only half, over the controller's state."""

    def __init__(self, source: ViewSource) -> None:
        self.c = source

    def wall(self, moment: float | None) -> datetime | None:
        """A moment of `clock` as the wall-clock time it was (or will be)."""
        if not moment:
            return None
        return datetime.fromtimestamp(self.c.wall_clock() - (self.c.clock() - moment), UTC)

    async def list_ike_sas(self) -> Sequence[IkeSaInfo]:
        return [self._ike_info(sa) for sa in self.c.manager.all()]

    def _ike_info(self, sa: IkeSa) -> IkeSaInfo:
        suite = sa.suite or Suite(ProtocolId.IKE)
        record = self.c.connections.get(sa.name)
        rekey_at = sa.rekey_deadline
        return IkeSaInfo(
            id=str(sa.id), connection_id=record.id if record else None,
            connection_name=sa.name if record else None, state=sa.state.name,
            initiator=sa.is_initiator, spi_i=int.from_bytes(sa.spi_i, "big"),
            spi_r=int.from_bytes(sa.spi_r, "big"), local_addr=sa.local[0],
            local_port=sa.local[1], remote_addr=sa.remote[0], remote_port=sa.remote[1],
            local_id=str(sa.local_id) if sa.local_id else None,
            remote_id=str(sa.remote_id) if sa.remote_id else None,
            encryption=_encr_name(suite), integrity=_name(IntegId, suite.integ),
            prf=f"PRF_{_name(PrfId, suite.prf)}" if suite.prf is not None else None,
            dh_group=_name(DhId, suite.dh),
            proposal=_proposal(suite), established_at=self.wall(sa.established_at),
            rekey_at=self.wall(rekey_at), reauth_at=self.wall(sa.reauth_deadline),
            expire_at=self.wall(sa.expire_deadline),
            nat_local=sa.nat_local, nat_remote=sa.nat_remote,
            remote_eap_id=sa.remote_eap_id, virtual_ip=sa.virtual_ip)

    def ike_sa_info(self, sa_id: int) -> IkeSaInfo | None:
        sa = self.c.manager.get(sa_id)
        return self._ike_info(sa) if sa is not None else None

    def child_sa_info(self, spi_in: int) -> ChildSaInfo | None:
        """One CHILD_SA without kernel counters (cheap, for the recorder)."""
        child = self.c.children.get(spi_in)
        return self._child_info(child, Traffic()) if child is not None else None

    async def list_child_sas(self) -> Sequence[ChildSaInfo]:
        out = []
        for child in list(self.c.children.values()):
            traffic = await self._traffic(child)
            out.append(self._child_info(child, traffic))
        return out

    async def _traffic(self, child: ChildRecord) -> Traffic:
        try:
            inbound = await self.c.kernel.counters(child.install.inbound.id)
            outbound = KernelCounters() if child.outbound_pending else \
                await self.c.kernel.counters(child.install.outbound.id)
        except KernelError:
            return Traffic()
        used = max(inbound.use_time, outbound.use_time)  # the kernel's wall-clock seconds
        return Traffic(inbound.bytes, outbound.bytes, inbound.packets, outbound.packets,
                       datetime.fromtimestamp(used, UTC) if used else None)

    def _child_info(self, child: ChildRecord, traffic: Traffic) -> ChildSaInfo:
        event = child.event
        record = self.c.connections.get(event.connection)
        lifetime = child.install.inbound.lifetime
        return ChildSaInfo(
            id=str(event.child_id), ike_sa_id=str(event.ike_sa),
            connection_id=record.id if record else None,
            child_id=child_id(record, event.child) if record else None,
            name=event.child, state=self._child_state(child), mode=event.mode.value,
            protocol=event.protocol.name.lower(), spi_in=event.spi_in, spi_out=event.spi_out,
            local_ts=tuple(map(ts.format_ts, event.local_ts)),
            remote_ts=tuple(map(ts.format_ts, event.remote_ts)),
            encryption=_encr_name(event.suite), integrity=_name(IntegId, event.suite.integ),
            dh_group=_name(DhId, event.suite.dh), proposal=_proposal(event.suite),
            reqid=child.reqid, esn=event.suite.esn, encap=event.encap,
            if_id=child.install.inbound.if_id or None, mtu=child.mtu, mss=_mss(child),
            installed_at=self.wall(child.installed_at),
            rekey_at=self.wall(child.installed_at + lifetime.soft_add_expires_seconds)
            if lifetime.soft_add_expires_seconds else None,
            expire_at=self.wall(child.installed_at + lifetime.hard_add_expires_seconds)
            if lifetime.hard_add_expires_seconds else None,
            traffic=traffic)

    def _child_state(self, child: ChildRecord) -> str:
        """The IKE core's state of the CHILD_SA (INSTALLED, REKEYING, REKEYED, DELETING),
        or ours once it left the core (DELETED, FAILED)."""
        sa = self.c.manager.get(child.event.ike_sa)
        state = sa.child_state(child.event.spi_in) if sa is not None else None
        return state.name if state is not None else child.state

    async def list_policies(self) -> Sequence[PolicyInfo]:
        out = []
        for child in self.c.children.values():
            record = self.c.connections.get(child.event.connection)
            out += [_policy_info(p, str(child.event.child_id), record.id if record else None)
                    for p in child.install.policies]
        for record in self.c.connections.values():
            out += [_policy_info(p, None, record.id) for p in record.traps]
        return out

    async def kernel_view(self) -> KernelView:
        states = [_kernel_sa(s.spec, s.counters) for s in await self.c.kernel.dump_sas()]
        policies = [_kernel_policy(p.spec) for p in await self.c.kernel.dump_policies()]
        return KernelView(tuple(states), tuple(policies))

    async def status(self) -> DaemonStatus:
        installed: dict[tuple[str, str], list[str]] = {}
        newest: dict[tuple[str, str], ChildRecord] = {}
        for child in self.c.children.values():
            key = (child.event.connection, child.event.child)
            installed.setdefault(key, []).append(str(child.event.child_id))
            if key not in newest or child.installed_at >= newest[key].installed_at:
                newest[key] = child
        connections = tuple(
            ConnectionStatus(r.id, r.state, r.reason, dict(r.detail),
                             tuple(str(sa.id) for sa in self.c.sas_of(r)), self.wall(r.since),
                             self._children_status(r, installed, newest))
            for r in sorted(self.c.connections.values(), key=lambda r: r.id))
        counters = Counters(self.c.counters["ike_setups"], self.c.counters["child_setups"],
                            self.c.counters["rekeys"], dict(self.c.failures),
                            self.c.counters["kernel_installs"], self.c.install_seconds)
        not_loaded = dict(self.c.not_loaded)
        if self.c.load_problems is not None:
            not_loaded |= self.c.load_problems()
        return DaemonStatus(self.wall(self.c.started_at) or datetime.now(UTC), connections,
                            counters, __version__, tuple(self.c.unmatched), not_loaded,
                            self.c.kernel_kind)

    def _children_status(self, record: ConnectionRecord,
                         installed: dict[tuple[str, str], list[str]],
                         newest: dict[tuple[str, str], ChildRecord]
                         ) -> tuple[ChildStatus, ...]:
        """Each configured child: up with its CHILD_SAs; else down with its own reason
        (refused, install failed, deleted), or as its connection is."""
        out = []
        for name in sorted(record.conf.children):
            ids, down = installed.get((record.name, name)), record.child_down.get(name)
            ident = child_id(record, name)
            if ids:
                last = newest[(record.name, name)]
                out.append(ChildStatus(name, ident, ConnectionState.UP,
                                       child_sa_ids=tuple(ids), mtu=last.mtu, mss=_mss(last)))
            elif down is not None:
                out.append(ChildStatus(name, ident, ConnectionState.DOWN, down.reason,
                                       dict(down.detail), since=self.wall(down.since)))
            elif record.state is ConnectionState.UP:  # not negotiated (yet)
                out.append(ChildStatus(name, ident, ConnectionState.DOWN))
            else:
                out.append(ChildStatus(name, ident, record.state, record.reason,
                                       since=self.wall(record.since)))
        return tuple(out)



def _mss(child: ChildRecord) -> int | None:
    """The MSS SYNs through a CHILD_SA are clamped to (IPv4's when it carries both)."""
    return child.mss[min(child.mss)] if child.mss else None


def _name(enum: type, value: int | None) -> str | None:
    if value is None:
        return None
    try:
        return str(enum(value).name)
    except ValueError:
        return str(value)


_KEYWORD_OF = {(t, ident, bits): word for word, (t, ident, bits) in reversed(KEYWORDS.items())}


def _proposal(suite: Suite) -> str | None:
    """A negotiated suite in proposal keywords (as configured): aes128gcm16-prfsha256-x25519."""
    words = []
    for kind, ident, bits in ((TransformType.ENCR, suite.encr, suite.encr_bits or None),
                              (TransformType.INTEG, suite.integ, None),
                              (TransformType.PRF, suite.prf, None),
                              (TransformType.DH, suite.dh, None)):
        if ident is None or (ident == 0 and kind in (TransformType.INTEG, TransformType.DH)):
            continue
        words.append(_KEYWORD_OF.get((kind, ident, bits), f"{kind.name.lower()}{ident}"))
    words += [f"ke{n}_{_KEYWORD_OF.get((TransformType.DH, ident, None), str(ident))}"
              for n, ident in enumerate(suite.addke, 1)]  # RFC 9370 additional exchanges
    if suite.esn:
        words.append("esn")
    return "-".join(words) or None


def _encr_name(suite: Suite) -> str | None:
    if suite.encr is None:
        return None
    name = _name(EncrId, suite.encr)
    return f"{name}_{suite.encr_bits}" if suite.encr_bits else name


def _policy_info(p: PolicySpec, child_id: str | None, connection_id: int | None) -> PolicyInfo:
    sel = p.selector
    return PolicyInfo(direction=p.direction.name.lower(), src=str(sel.src), dst=str(sel.dst),
                      proto=sel.proto, action=p.action.name.lower(), priority=p.priority,
                      if_id=p.if_id or None, mark=p.mark.value if p.mark else None,
                      mark_mask=p.mark.mask if p.mark else None, child_sa_id=child_id,
                      connection_id=connection_id)


def _kernel_sa(spec: SaSpec, counters: KernelCounters) -> KernelSaInfo:
    algs = {kind: KernelAlgorithm(alg.name, len(alg.key) * 8)
            for kind, alg in (("aead", spec.aead), ("crypt", spec.crypt), ("auth", spec.auth))
            if alg is not None}
    return KernelSaInfo(src=str(spec.src), dst=str(spec.dst), spi=spec.spi,
                        proto=spec.proto.name.lower(), mode=spec.mode.name.lower(),
                        reqid=spec.reqid, algorithms=algs, if_id=spec.if_id or None,
                        encap=bool(spec.encap), bytes=counters.bytes, packets=counters.packets)


def _kernel_policy(p: PolicySpec) -> KernelPolicyInfo:
    info = _policy_info(p, None, None)
    return KernelPolicyInfo(direction=info.direction, src=info.src, dst=info.dst,
                            proto=info.proto, action=info.action, priority=info.priority,
                            if_id=info.if_id, reqids=tuple(t.reqid for t in p.templates))


_PLAIN = (int, float, str, bool, type(None), list, tuple)


def event_fields(event: Event) -> dict[str, object]:
    """Event fields for logs and the event stream: never key material."""
    hidden = {"encr_key_in", "integ_key_in", "encr_key_out", "integ_key_out"}
    out: dict[str, object] = {}
    for name in event.__dataclass_fields__:
        if name in hidden:
            continue
        value = getattr(event, name)
        if isinstance(value, bytes):
            value = value.hex()
        elif isinstance(value, tuple) and value and hasattr(value[0], "ts_type"):
            value = [ts.format_ts(t) for t in value]
        elif isinstance(value, Suite) or not isinstance(value, _PLAIN):
            value = str(value)
        out[name] = value
    return out


