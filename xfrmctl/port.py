"""The port between the API and the running daemon: live state and actions.

The daemon's controller implements `Controller`; the API only talks to this Protocol
(tests use an in-memory fake). All methods are coroutines and must not block the loop.

Errors: raise `UnknownTarget` for an id the daemon does not know (API: 404) and
`ActionRejected` when the action cannot be done in the current state (API: 409).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal, Protocol, runtime_checkable

ConfigKind = Literal["peer", "connection", "child", "proposal", "secret", "ca", "certificate",
                     "eap_user", "crl"]
ConfigChange = Literal["created", "updated", "deleted"]
TargetKind = Literal["connection", "ike_sa", "child_sa"]


class UnknownTarget(LookupError):
    """The connection or SA named by the caller does not exist in the daemon."""


class ActionRejected(Exception):
    """The action is not possible now (e.g. connection disabled, SA already deleting)."""


class ConnectionState(StrEnum):
    DOWN = "down"
    CONNECTING = "connecting"
    UP = "up"
    TRAPPED = "trapped"  # policies installed, waiting for traffic (start_action=trap)


class DownReason(StrEnum):
    """Why a connection or a child is down (or was refused). The negotiation failures
    are the IKE core's FailureReason values; the rest say who ended it."""

    NO_PROPOSAL_CHOSEN = "NO_PROPOSAL_CHOSEN"
    INVALID_KE_PAYLOAD = "INVALID_KE_PAYLOAD"
    AUTHENTICATION_FAILED = "AUTHENTICATION_FAILED"
    TS_UNACCEPTABLE = "TS_UNACCEPTABLE"
    NO_MATCHING_CONFIG = "NO_MATCHING_CONFIG"
    PEER_UNREACHABLE = "PEER_UNREACHABLE"
    HALF_OPEN_TIMEOUT = "HALF_OPEN_TIMEOUT"
    PROTOCOL_ERROR = "PROTOCOL_ERROR"
    PEER_ERROR = "PEER_ERROR"
    INTERNAL_ADDRESS_FAILURE = "INTERNAL_ADDRESS_FAILURE"
    SINGLE_PAIR_REQUIRED = "SINGLE_PAIR_REQUIRED"
    CHILD_SA_NOT_FOUND = "CHILD_SA_NOT_FOUND"
    KERNEL_INSTALL_FAILED = "KERNEL_INSTALL_FAILED"
    DELETED = "deleted"  # by us (API, CLI)
    DELETED_BY_PEER = "deleted by peer"
    DAEMON_STOPPED = "daemon stopped"
    CONFIGURATION_CHANGED = "configuration changed"
    HARD_EXPIRE = "hard expire"
    NOT_CONFIGURED = "not configured"
    LOST_IN_RESTART = "lost in restart"
    REKEY_COLLISION_LOST = "rekey collision lost"
    NOT_LOADED = "not loaded"  # the daemon could not load the configuration (see detail)
    DISABLED = "disabled"
    DAEMON_NOT_RUNNING = "daemon not running"
    OTHER = "other"  # an unlisted reason; detail["message"] has its text

    @classmethod
    def of(cls, text: str) -> DownReason:
        try:
            return cls(text)
        except ValueError:
            return cls.OTHER


@dataclass(frozen=True, slots=True)
class Target:
    """What an action applies to: a connection (by id) or an SA (by its unique id)."""

    kind: TargetKind
    id: str


@dataclass(frozen=True, slots=True)
class Traffic:
    bytes_in: int = 0
    bytes_out: int = 0
    packets_in: int = 0
    packets_out: int = 0
    last_used_at: datetime | None = None  # the last packet in or out (kernel use time)


@dataclass(frozen=True, slots=True)
class IkeSaInfo:
    id: str  # unique id, stable for the SA's life
    connection_id: int | None
    connection_name: str | None
    state: str  # e.g. CONNECTING, ESTABLISHED, REKEYING, DELETING
    initiator: bool
    spi_i: int
    spi_r: int
    local_addr: str
    local_port: int
    remote_addr: str
    remote_port: int
    local_id: str | None = None
    remote_id: str | None = None
    encryption: str | None = None  # e.g. "AES_GCM_16_128"
    integrity: str | None = None
    prf: str | None = None  # labelled as one: PRF_HMAC_SHA2_256 (an integrity name looks alike)
    dh_group: str | None = None
    proposal: str | None = None  # the chosen suite in keywords: aes256gcm16-prfsha384-x25519
    established_at: datetime | None = None
    rekey_at: datetime | None = None
    reauth_at: datetime | None = None
    expire_at: datetime | None = None
    nat_local: bool = False
    nat_remote: bool = False
    remote_eap_id: str | None = None  # the user the peer logged in as with EAP
    virtual_ip: str | None = None  # ours (initiator) or the one we leased to the peer


@dataclass(frozen=True, slots=True)
class ChildSaInfo:
    id: str
    ike_sa_id: str
    connection_id: int | None
    child_id: int | None
    name: str
    state: str  # e.g. INSTALLED, REKEYING, DELETING
    mode: str  # tunnel | transport
    protocol: str  # esp | ah
    spi_in: int
    spi_out: int
    local_ts: tuple[str, ...]
    remote_ts: tuple[str, ...]
    encryption: str | None = None
    integrity: str | None = None
    dh_group: str | None = None
    proposal: str | None = None  # the chosen suite in keywords: aes256gcm16-x25519
    reqid: int | None = None  # the kernel's reqid (ties SAs to policies)
    esn: bool = False
    encap: bool = False
    if_id: int | None = None
    mtu: int | None = None  # effective MTU through the tunnel (children with mss on)
    mss: int | None = None  # the MSS TCP SYNs are clamped to (IPv4's if both)
    installed_at: datetime | None = None
    rekey_at: datetime | None = None
    expire_at: datetime | None = None
    traffic: Traffic = field(default_factory=Traffic)


@dataclass(frozen=True, slots=True)
class PolicyInfo:
    """An IPsec policy the daemon installed (or a raw kernel policy)."""

    direction: str  # in | out | fwd
    src: str  # prefix, e.g. "192.0.2.0/24"
    dst: str
    proto: int = 0  # 0 = any
    action: str = "allow"  # allow | block
    priority: int = 0
    if_id: int | None = None
    mark: int | None = None
    mark_mask: int | None = None
    child_sa_id: str | None = None
    connection_id: int | None = None


@dataclass(frozen=True, slots=True)
class ChildStatus:
    """Actual state of one configured child: up while it has a CHILD_SA installed; when
    down, why (e.g. TS_UNACCEPTABLE with both selector sets in `detail`)."""

    name: str
    child_id: int | None
    state: ConnectionState
    reason: DownReason | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    child_sa_ids: tuple[str, ...] = ()
    since: datetime | None = None
    mtu: int | None = None  # effective MTU through the tunnel (children with mss on)
    mss: int | None = None  # the MSS TCP SYNs are clamped to (IPv4's if both)


@dataclass(frozen=True, slots=True)
class ConnectionStatus:
    """Actual state of one configured connection; `reason` says why it is down."""

    connection_id: int
    state: ConnectionState
    reason: DownReason | None = None  # e.g. NO_PROPOSAL_CHOSEN, TS_UNACCEPTABLE
    detail: dict[str, Any] = field(default_factory=dict)  # e.g. both proposal lists
    ike_sa_ids: tuple[str, ...] = ()
    since: datetime | None = None
    children: tuple[ChildStatus, ...] = ()


@dataclass(frozen=True, slots=True)
class FailureInfo:
    """A failure no configured connection owns, e.g. an IKE_SA_INIT that matched none."""

    at: datetime
    reason: DownReason
    message: str
    local: str | None = None  # address:port
    remote: str | None = None


@dataclass(frozen=True, slots=True)
class Counters:
    """Monotonic counters since daemon start, exported on /metrics."""

    ike_setups: int = 0
    child_setups: int = 0
    rekeys: int = 0
    failures: dict[str, int] = field(default_factory=dict)  # by reason
    kernel_installs: int = 0
    kernel_install_seconds: float = 0.0  # sum; average = seconds / installs


@dataclass(frozen=True, slots=True)
class DaemonStatus:
    started_at: datetime
    connections: tuple[ConnectionStatus, ...]
    counters: Counters = field(default_factory=Counters)
    version: str = ""
    # newest last, a bounded window (the counters keep the totals)
    unmatched: tuple[FailureInfo, ...] = ()
    # connections the daemon could not load: name -> why (e.g. a missing psk_file)
    not_loaded: dict[str, str] = field(default_factory=dict)
    kernel: str = "netlink"  # "memory": nothing reaches the Linux kernel (--kernel memory)


@dataclass(frozen=True, slots=True)
class KernelAlgorithm:
    name: str  # the kernel's name, e.g. "rfc4106(gcm(aes))"
    bits: int  # key length (the key itself never leaves the daemon)


@dataclass(frozen=True, slots=True)
class KernelSaInfo:
    """One XFRM state as the kernel holds it (no key material)."""

    src: str
    dst: str
    spi: int
    proto: str  # esp | ah
    mode: str  # tunnel | transport
    reqid: int
    algorithms: dict[str, KernelAlgorithm]  # aead | crypt | auth -> algorithm
    if_id: int | None = None
    encap: bool = False
    bytes: int = 0
    packets: int = 0


@dataclass(frozen=True, slots=True)
class KernelPolicyInfo:
    """One XFRM policy as the kernel holds it."""

    direction: str  # in | out | fwd
    src: str
    dst: str
    proto: int  # 0: any
    action: str
    priority: int
    if_id: int | None = None
    reqids: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class KernelView:
    """The raw kernel state: XFRM states and policies (no key material)."""

    states: tuple[KernelSaInfo, ...]
    policies: tuple[KernelPolicyInfo, ...]


@runtime_checkable
class Controller(Protocol):
    async def initiate(self, connection_id: int, child_id: int | None = None) -> None:
        """Bring a connection (or one of its children) up; returns once started."""

    async def terminate(self, target: Target) -> None:
        """Delete a connection's SAs, or one IKE_SA / CHILD_SA."""

    async def rekey(self, target: Target) -> None:
        """Rekey a connection's SAs, or one IKE_SA / CHILD_SA."""

    async def list_ike_sas(self) -> Sequence[IkeSaInfo]: ...

    async def list_child_sas(self) -> Sequence[ChildSaInfo]: ...

    async def list_policies(self) -> Sequence[PolicyInfo]: ...

    async def kernel_view(self) -> KernelView: ...

    async def status(self) -> DaemonStatus: ...

    async def config_changed(self, kind: ConfigKind, object_id: int,
                             change: ConfigChange) -> None:
        """Desired state changed (already committed): load, re-establish if needed,
        or tear down. Must return quickly; long work continues in the daemon."""
