"""An in-memory Controller for API and CLI tests: records calls, serves canned SAs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from xfrmctl.port import (
    ActionRejected,
    ChildSaInfo,
    ConfigChange,
    ConfigKind,
    ConnectionState,
    ConnectionStatus,
    Counters,
    DaemonStatus,
    DownReason,
    FailureInfo,
    IkeSaInfo,
    KernelAlgorithm,
    KernelSaInfo,
    KernelView,
    PolicyInfo,
    Target,
    Traffic,
    UnknownTarget,
)

NOW = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


def ike_sa(conn_id: int, sa_id: str = "ike-1") -> IkeSaInfo:
    return IkeSaInfo(
        id=sa_id, connection_id=conn_id, connection_name=f"conn{conn_id}", state="ESTABLISHED",
        initiator=True, spi_i=0x1122334455667788, spi_r=0x99AABBCCDDEEFF00,
        local_addr="192.0.2.1", local_port=500, remote_addr="198.51.100.1", remote_port=500,
        local_id="gw1.example", remote_id="gw2.example", encryption="AES_GCM_16_256",
        prf="PRF_HMAC_SHA2_384", dh_group="CURVE25519", proposal="aes256gcm16-prfsha384-x25519",
        established_at=NOW, remote_eap_id="carol", virtual_ip="203.0.113.9",
        rekey_at=NOW + timedelta(hours=4), expire_at=NOW + timedelta(hours=5))


def child_sa(conn_id: int, sa_id: str = "child-1", ike_id: str = "ike-1") -> ChildSaInfo:
    return ChildSaInfo(
        id=sa_id, ike_sa_id=ike_id, connection_id=conn_id, child_id=None, name="net",
        state="INSTALLED", mode="tunnel", protocol="esp", spi_in=0xC0FFEE01,
        spi_out=0xC0FFEE02, local_ts=("192.0.2.0/24",), remote_ts=("198.51.100.0/24",),
        encryption="AES_GCM_16_256", proposal="aes256gcm16", reqid=16385, installed_at=NOW,
        rekey_at=NOW + timedelta(hours=1), expire_at=NOW + timedelta(minutes=66),
        traffic=Traffic(bytes_in=1500, bytes_out=3000, packets_in=10, packets_out=20,
                        last_used_at=NOW))


@dataclass
class FakeController:
    ike: list[IkeSaInfo] = field(default_factory=list)
    children: list[ChildSaInfo] = field(default_factory=list)
    calls: list[tuple[str, object]] = field(default_factory=list)
    changes: list[tuple[ConfigKind, int, ConfigChange]] = field(default_factory=list)
    states: dict[int, ConnectionStatus] = field(default_factory=dict)
    not_loaded: dict[str, str] = field(default_factory=dict)  # name -> why
    outcome: ConnectionStatus | None = None  # the state an initiate leads to
    extra_policies: list[PolicyInfo] = field(default_factory=list)
    unmatched: list[FailureInfo] = field(default_factory=list)
    reject: bool = False

    def _known(self, target: Target) -> None:
        ids = {"ike_sa": {s.id for s in self.ike}, "child_sa": {s.id for s in self.children}}
        if target.kind in ids and target.id not in ids[target.kind]:
            raise UnknownTarget(f"{target.kind} {target.id} not found")
        if self.reject:
            raise ActionRejected(f"{target.kind} {target.id} is busy")

    async def initiate(self, connection_id: int, child_id: int | None = None) -> None:
        if self.reject:
            raise ActionRejected("connection is disabled")
        self.calls.append(("initiate", (connection_id, child_id)))
        self.ike.append(ike_sa(connection_id, f"ike-{len(self.ike) + 1}"))
        if self.outcome is not None:  # what the daemon will report for this connection
            self.states[connection_id] = replace(self.outcome, connection_id=connection_id)

    async def terminate(self, target: Target) -> None:
        self._known(target)
        self.calls.append(("terminate", target))

    async def rekey(self, target: Target) -> None:
        self._known(target)
        self.calls.append(("rekey", target))

    async def list_ike_sas(self) -> Sequence[IkeSaInfo]:
        return list(self.ike)

    async def list_child_sas(self) -> Sequence[ChildSaInfo]:
        return list(self.children)

    async def list_policies(self) -> Sequence[PolicyInfo]:
        return [PolicyInfo(direction=d, src="192.0.2.0/24", dst="198.51.100.0/24",
                           child_sa_id=c.id, connection_id=c.connection_id)
                for c in self.children for d in ("out", "in", "fwd")] + self.extra_policies

    async def kernel_view(self) -> KernelView:
        return KernelView(states=(KernelSaInfo(
            src="192.0.2.1", dst="192.0.2.2", spi=0xC0FFEE01, proto="esp", mode="tunnel",
            reqid=1, algorithms={"aead": KernelAlgorithm("rfc4106(gcm(aes))", 160)}),),
            policies=())

    async def status(self) -> DaemonStatus:
        return DaemonStatus(started_at=NOW, connections=tuple(self.states.values()),
                            counters=Counters(ike_setups=3, rekeys=1,
                                              failures={"AUTH_FAILED": 2},
                                              kernel_installs=4, kernel_install_seconds=0.02),
                            version="test", not_loaded=dict(self.not_loaded),
                            unmatched=tuple(self.unmatched))

    async def config_changed(self, kind: ConfigKind, object_id: int,
                             change: ConfigChange) -> None:
        self.changes.append((kind, object_id, change))

    def set_state(self, conn_id: int, state: ConnectionState,
                  reason: DownReason | None = None) -> None:
        self.states[conn_id] = ConnectionStatus(conn_id, state, reason)
