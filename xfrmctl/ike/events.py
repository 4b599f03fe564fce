"""Events the IKE core hands to the daemon: frozen dataclasses, read with next_event().

Events with many fields are keyword-only, so a construction names what it sets.

Failures carry the why: what the peer offered and what we would have accepted, so a user
can see why a tunnel is down without reading debug logs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from .config import Identity, Mode
from .constants import ProtocolId
from .payloads import TrafficSelector
from .proposals import Suite
from .revocation import CrlQuery, OcspQuery

Endpoint = tuple[str, int]


class FailureReason(StrEnum):
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


@dataclass(frozen=True, slots=True, kw_only=True)
class IkeSaUp:
    ike_sa: int  # the IKE SA's unique id in this process
    connection: str
    spi_i: bytes
    spi_r: bytes
    initiator: bool
    local: Endpoint
    remote: Endpoint
    local_id: Identity
    remote_id: Identity
    suite: Suite
    nat_local: bool
    nat_remote: bool
    virtual_ip: str | None = None
    remote_eap_id: str | None = None  # the user the peer logged in as with EAP
    ppk: bool = False  # the keys include a postquantum preshared key (RFC 8784)


@dataclass(frozen=True, slots=True)
class IkeSaRekeyed:
    ike_sa: int
    new_ike_sa: int
    new_spi_i: bytes
    new_spi_r: bytes
    suite: Suite


@dataclass(frozen=True, slots=True)
class IkeSaDown:
    ike_sa: int
    connection: str
    reason: str  # "deleted", "deleted by peer", "rekeyed", a FailureReason value ...


@dataclass(frozen=True, slots=True, kw_only=True)
class ChildSaNegotiated:
    """A CHILD_SA to install: both SAs, keys, selectors, lifetimes and encapsulation."""

    ike_sa: int
    connection: str
    child: str
    child_id: int
    protocol: ProtocolId
    mode: Mode
    spi_in: int
    spi_out: int
    local: Endpoint
    remote: Endpoint
    local_ts: tuple[TrafficSelector, ...]
    remote_ts: tuple[TrafficSelector, ...]
    suite: Suite
    encr_key_in: bytes = field(repr=False)
    integ_key_in: bytes = field(repr=False)
    encr_key_out: bytes = field(repr=False)
    integ_key_out: bytes = field(repr=False)
    encap: bool
    rekey_time: float
    life_time: float
    rekey_bytes: int = 0
    life_bytes: int = 0
    rekey_packets: int = 0
    life_packets: int = 0
    rekey_of: int | None = None  # spi_in of the CHILD_SA this one replaces
    initiator: bool = True  # whether we initiated the exchange that made it
    # False: the peer sent ESP_TFC_PADDING_NOT_SUPPORTED (RFC 7296 3.10.1), so our
    # outbound SA must not pad
    tfc_padding: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class ChildSaDeleted:
    ike_sa: int
    connection: str
    child: str
    child_id: int
    protocol: ProtocolId
    spi_in: int
    spi_out: int
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class NegotiationFailed:
    """An IKE_SA or CHILD_SA could not be set up; `details` says what each side wanted."""

    ike_sa: int
    connection: str
    reason: FailureReason
    message: str
    child: str | None = None
    ours: tuple[str, ...] = ()
    theirs: tuple[str, ...] = ()
    # the datagram's addresses, when no IKE_SA exists (an IKE_SA_INIT matching nothing)
    local: Endpoint | None = None
    remote: Endpoint | None = None


@dataclass(frozen=True, slots=True)
class VirtualIpAssigned:
    ike_sa: int
    connection: str
    address: str
    to_peer: bool  # True: we (responder) gave it; False: the peer gave it to us


@dataclass(frozen=True, slots=True)
class ReauthDue:
    """The IKE SA reached its reauth_time: the daemon makes a new IKE SA with the same
    peer and children (RFC 7296 2.8.3, make-before-break), then deletes this one. If
    none replaces it, it is deleted at its hard lifetime (over_time later)."""

    ike_sa: int
    connection: str


@dataclass(frozen=True, slots=True)
class PeerMoved:
    """The peer's address or port changed (a NAT rebinding): its CHILD_SAs must follow."""

    ike_sa: int
    connection: str
    old: Endpoint
    new: Endpoint


@dataclass(frozen=True, slots=True, kw_only=True)
class RevocationFetch:
    """IKE_AUTH waits for revocation information: fetch it (CRLs into the connection's
    RevocationStore, OCSP answers verified by it), then call `IkeManager.resume_auth`.
    Asked only after the peer's chain and AUTH signature verified."""

    ike_sa: int
    connection: str
    crls: tuple[CrlQuery, ...]
    ocsp: tuple[OcspQuery, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class IkeSaMoved:
    """MOBIKE (RFC 4555) moved the IKE_SA to new addresses, or the NAT on its path
    changed: its CHILD_SAs and their policies must follow (same SPIs), with UDP
    encapsulation when either end is behind a NAT."""

    ike_sa: int
    connection: str
    old_local: Endpoint
    old_remote: Endpoint
    local: Endpoint
    remote: Endpoint
    nat_local: bool
    nat_remote: bool


Event = (IkeSaUp | IkeSaRekeyed | IkeSaDown | ChildSaNegotiated | ChildSaDeleted
         | NegotiationFailed | VirtualIpAssigned | PeerMoved | ReauthDue | RevocationFetch
         | IkeSaMoved)

