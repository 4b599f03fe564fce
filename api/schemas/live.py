"""Actual-state schemas: SAs, policies, kernel view, status, actions (read from the daemon)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from xfrmctl.port import ConnectionState, DownReason

from .common import Page


def _hex(width: int, value: object) -> object:
    return f"{value:0{width}x}" if isinstance(value, int) else value


class TrafficPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    bytes_in: int
    bytes_out: int
    packets_in: int
    packets_out: int
    last_used_at: datetime | None = None


class IkeSaPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    connection_id: int | None
    connection_name: str | None
    state: str
    initiator: bool
    spi_i: str
    spi_r: str
    local_addr: str
    local_port: int
    remote_addr: str
    remote_port: int
    local_id: str | None
    remote_id: str | None
    encryption: str | None
    integrity: str | None
    prf: str | None
    dh_group: str | None
    proposal: str | None = None
    established_at: datetime | None
    rekey_at: datetime | None
    reauth_at: datetime | None
    expire_at: datetime | None
    nat_local: bool
    nat_remote: bool
    remote_eap_id: str | None = None
    virtual_ip: str | None = None
    gateway: str | None = Field(None, description="the fleet gateway that holds it "
                                "(listed with ?gateway= or by an API without a daemon)")
    stale: bool = Field(False, description="its gateway is unreachable: the last state "
                        "it recorded, kept until it comes back")

    @field_validator("spi_i", "spi_r", mode="before")
    @classmethod
    def _spi(cls, value: object) -> object:
        return _hex(16, value)


class IkeSasPublic(Page[IkeSaPublic]):
    pass


class ChildSaPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    ike_sa_id: str
    connection_id: int | None
    child_id: int | None
    name: str
    state: str
    mode: str
    protocol: str
    spi_in: str
    spi_out: str
    local_ts: list[str]
    remote_ts: list[str]
    encryption: str | None
    integrity: str | None
    dh_group: str | None
    proposal: str | None = None
    reqid: int | None = None
    esn: bool
    encap: bool
    if_id: int | None
    mtu: int | None = None
    mss: int | None = None
    installed_at: datetime | None
    rekey_at: datetime | None
    expire_at: datetime | None
    traffic: TrafficPublic
    gateway: str | None = None
    stale: bool = False

    @field_validator("spi_in", "spi_out", mode="before")
    @classmethod
    def _spi(cls, value: object) -> object:
        return _hex(8, value)


class ChildSasPublic(Page[ChildSaPublic]):
    pass


class PolicyPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    direction: str
    src: str
    dst: str
    proto: int
    action: str
    priority: int
    if_id: int | None
    mark: int | None
    mark_mask: int | None
    child_sa_id: str | None
    connection_id: int | None


class PoliciesPublic(Page[PolicyPublic]):
    pass


class KernelAlgorithmPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    name: str
    bits: int


class KernelSaPublic(BaseModel):
    """One XFRM state (its keys never leave the daemon)."""

    model_config = ConfigDict(from_attributes=True)
    src: str
    dst: str
    spi: str
    proto: str
    mode: str
    reqid: int
    algorithms: dict[str, KernelAlgorithmPublic]
    if_id: int | None
    encap: bool
    bytes: int
    packets: int

    @field_validator("spi", mode="before")
    @classmethod
    def _spi(cls, value: object) -> object:
        return _hex(8, value)


class KernelPolicyPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    direction: str
    src: str
    dst: str
    proto: int  # 0: any
    action: str
    priority: int
    if_id: int | None
    reqids: list[int]


class KernelViewPublic(BaseModel):
    """XFRM states and policies as the kernel holds them (keys never included)."""

    model_config = ConfigDict(from_attributes=True)
    states: list[KernelSaPublic]
    policies: list[KernelPolicyPublic]


class ChildStatusPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    name: str
    child_id: int | None
    state: ConnectionState
    reason: DownReason | None
    detail: dict[str, Any]
    child_sa_ids: list[str]
    since: datetime | None
    mtu: int | None = None
    mss: int | None = None


class ConnectionStatusPublic(BaseModel):
    id: int
    name: str
    enabled: bool
    state: ConnectionState | None  # None: daemon not reachable
    reason: DownReason | None
    detail: dict[str, Any]
    ike_sa_ids: list[str]
    since: datetime | None
    children: list[ChildStatusPublic] = []
    gateway: str | None = None  # the fleet gateway it is assigned to (None: every one)


class FailurePublic(BaseModel):
    """A failure no connection owns, e.g. an IKE_SA_INIT that matched none."""

    model_config = ConfigDict(from_attributes=True)
    at: datetime
    reason: DownReason
    message: str
    local: str | None
    remote: str | None


class CountersPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    ike_setups: int
    child_setups: int
    rekeys: int
    failures: dict[str, int]
    kernel_installs: int
    kernel_install_seconds: float


class GatewayPublic(BaseModel):
    """A gateway of the fleet sharing this database."""

    model_config = ConfigDict(from_attributes=True)
    id: int
    name: str
    addresses: list[str]
    version: str
    started_at: datetime
    heartbeat_at: datetime
    heartbeat_interval: int
    reachable: bool = Field(description="heartbeat seen within 3 intervals")
    ike_sas: int = Field(description="IKE_SAs it recorded")
    child_sas: int
    connections: int = Field(description="connections assigned to it (the unassigned "
                             "ones run on every gateway)")


class GatewaysPublic(Page[GatewayPublic]):
    pass


class StatusPublic(BaseModel):
    daemon: bool  # False: the API runs without a daemon (desired state only)
    started_at: datetime | None
    version: str
    counters: CountersPublic | None
    connections: list[ConnectionStatusPublic]
    unmatched: list[FailurePublic] = []  # newest last
    # "netlink": the Linux kernel; "memory": the in-memory kernel (--kernel memory),
    # nothing is installed and no traffic is protected; None: no daemon
    kernel: str | None = None
    gateway: str | None = None  # this daemon's name in the fleet
    gateways: list[GatewayPublic] = []  # every gateway on the database


class ActionResult(BaseModel):
    action: str
    target: str
    id: str

