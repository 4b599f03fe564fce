"""What the daemon holds per connection and per CHILD_SA (shared by its parts)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from xfrmctl.ike.config import IkeConfig
from xfrmctl.ike.events import ChildSaNegotiated
from xfrmctl.kernel.types import ChildInstall, PolicySpec
from xfrmctl.port import ConnectionState, DownReason

from . import conf as cf
from .routelinks import LinkSpec


class ChildRecordState(StrEnum):
    """Our side of a CHILD_SA's life; the IKE core's state is shown while it has one."""

    INSTALLED = "INSTALLED"  # negotiated; in the kernel (or queued to be)
    REKEYING = "REKEYING"  # a rekey with a changed configuration is under way
    DELETED = "DELETED"  # deleted with the peer: its kernel state goes
    FAILED = "FAILED"  # the kernel refused it (rolled back)


@dataclass(slots=True)
class InstallFailure:
    """A child whose last kernel install failed: why, how often, and the next try."""

    reason: str
    attempts: int
    retry_at: float


@dataclass(slots=True)
class ChildRecord:
    """A CHILD_SA as installed in the kernel."""

    event: ChildSaNegotiated
    install: ChildInstall
    reqid: int
    installed_at: float
    state: ChildRecordState = ChildRecordState.INSTALLED
    in_kernel: bool = False  # install_child succeeded: there is something to remove
    # a rekey's responder, or either end of a collision: the outbound SA waits until the
    # old CHILD_SA is deleted (see installer.py)
    outbound_pending: bool = False
    # the CHILD_SA this one replaces (its inbound SPI): a rekey's, or a replacement's (a
    # configuration change, a reauthentication) of a CHILD_SA of the same connection/child
    predecessor: int | None = None
    conf: cf.ChildConf | None = None  # the configuration it was negotiated with
    link: LinkSpec | None = None  # the interface it is routed through (route-based)
    mtu: int | None = None  # the largest inner packet that fits after ESP (mss not off)
    mss: dict[int, int] | None = None  # IP version -> the MSS SYNs are clamped to


@dataclass(frozen=True, slots=True)
class ChildDown:
    reason: DownReason
    detail: dict[str, object]
    since: float


@dataclass(slots=True)
class ConnectionRecord:
    id: int
    name: str
    conf: cf.ConnectionConf
    ike: IkeConfig
    state: ConnectionState = ConnectionState.DOWN
    reason: DownReason | None = None
    detail: dict[str, object] = field(default_factory=dict)
    since: float = 0.0
    # children that failed or went down while the IKE_SA lives: name -> why
    child_down: dict[str, ChildDown] = field(default_factory=dict)
    traps: list[PolicySpec] = field(default_factory=list)
    credentials: str | None = None  # digest of the credential files it was loaded with
    wanted: bool = False  # should be up (start action, API initiate, DPD restart)


def child_id(record: ConnectionRecord, name: str) -> int | None:
    """The child's database id, or (file mode) its 1-based place in sorted order."""
    child = record.conf.children.get(name)
    if child is None:
        return None
    return child.id or sorted(record.conf.children).index(name) + 1
