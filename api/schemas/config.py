"""Desired-state schemas, one family per resource: Base, Create, Update, Public, List.

Update models have every field optional (PATCH: only the fields given change).
Secrets have no Public field holding the value: they are write-only.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    ValidationInfo,
    field_validator,
)

from xfrmctl.ike.constants import ProtocolId
from xfrmctl.store.models import (
    DEFAULT_ESP_PROPOSALS,
    DEFAULT_IKE_PROPOSALS,
    AuthMethod,
    CloseAction,
    DpdAction,
    EapMethod,
    Fragmentation,
    InterfaceKind,
    Mode,
    ProposalProtocol,
    Revocation,
    SecretKind,
    StartAction,
)

from .common import (
    U32,
    AddressList,
    AhProposals,
    CertificatePem,
    Count64,
    EspProposals,
    Id,
    Identity,
    IkeProposals,
    InterfaceAddress,
    InterfaceName,
    Mss,
    Name,
    Page,
    Port,
    Prefix,
    PrefixList,
    ProposalText,
    Seconds,
    Text,
    Version,
    check_proposals,
)

_FORBID = ConfigDict(extra="forbid")


Mobike = Annotated[bool, Field(description="MOBIKE (RFC 4555): on as in strongSwan")]
IfId = Annotated[int | None, Field(ge=1, le=2**32 - 1, description="XFRM interface id")]


class PublicBase(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    created_at: datetime
    updated_at: datetime


# --- peers ---------------------------------------------------------------------------

class PeerBase(BaseModel):
    model_config = _FORBID
    name: Name
    addresses: AddressList = []
    description: Text = ""


class PeerCreate(PeerBase):
    pass


class PeerUpdate(BaseModel):
    model_config = _FORBID
    name: Name | None = None
    addresses: AddressList | None = None
    description: Text | None = None


class PeerPublic(PeerBase, PublicBase):
    model_config = ConfigDict(from_attributes=True)


class PeersPublic(Page[PeerPublic]):
    pass


# --- connections ---------------------------------------------------------------------

class ConnectionBase(BaseModel):
    model_config = _FORBID
    name: Name
    peer_id: Id | None = None
    enabled: bool = True
    local_addrs: AddressList = []
    remote_addrs: AddressList = []
    local_port: Port = 500
    remote_port: Port = 500
    local_id: Identity | None = None
    remote_id: Identity | None = None
    auth: AuthMethod = AuthMethod.PSK
    secret_id: Id | None = Field(None, description="PSK (auth psk) or private key (pubkey)")
    certificate_id: Id | None = Field(None, description="local certificate (auth pubkey)")
    ca_id: Id | None = Field(None, description="trust anchor for the peer's certificate")
    ike_proposals: IkeProposals = DEFAULT_IKE_PROPOSALS
    start_action: StartAction = StartAction.NONE
    dpd_delay: Seconds = Field(0, description="seconds; 0 = off (strongSwan's default)")
    dpd_action: DpdAction = DpdAction.CLEAR
    close_action: CloseAction = CloseAction.NONE
    rekey_time: Seconds = 14400
    reauth_time: Seconds = 0
    over_time: Seconds = 0
    fragmentation: Fragmentation = Fragmentation.YES
    encap: bool = False
    mobike: Mobike = True
    pool: Prefix | None = Field(None, description="remote access: virtual IPs from this")
    request_virtual_ip: bool = False
    local_auth: EapMethod | None = Field(
        None, description="we log in with EAP as eap_id (a road-warrior client); the "
        "gateway is verified by `auth` pubkey (ca_id)")
    remote_auth: EapMethod | None = Field(
        None, description="peers log in with EAP against the EAP users (we are the "
        "gateway, proving ourselves by `auth` pubkey)")
    eap_id: Identity | None = Field(None, description="our EAP identity (default local_id)")
    eap_secret_id: Id | None = Field(None, description="secret (kind eap): our EAP password")
    dns: AddressList = Field([], description="DNS servers sent with a virtual IP")
    revocation: Revocation = Field(
        Revocation.RELAXED, description="when a peer certificate's revocation status stays "
        "unknown: strict fails, ifuri fails if it names a CRL/OCSP URI, relaxed (strongSwan's "
        "default) fails only if revoked; none checks nothing")
    ppk_id: Text | None = Field(None, max_length=255, description=(
        "RFC 8784 postquantum preshared key: its PPK_ID (with ppk_secret_id)"))
    ppk_secret_id: Id | None = Field(None, description="the PPK: a secret of kind ppk")
    ppk_required: bool = Field(False, description="refuse peers that do not use the PPK")
    gateway_id: Id | None = Field(None, description="the fleet gateway that runs it "
                                  "(GET /gateways); none: every gateway on the database")


class ConnectionCreate(ConnectionBase):
    pass


class ConnectionUpdate(BaseModel):
    model_config = _FORBID
    name: Name | None = None
    peer_id: Id | None = None
    enabled: bool | None = None
    local_addrs: AddressList | None = None
    remote_addrs: AddressList | None = None
    local_port: Port | None = None
    remote_port: Port | None = None
    local_id: Identity | None = None
    remote_id: Identity | None = None
    auth: AuthMethod | None = None
    secret_id: Id | None = None
    certificate_id: Id | None = None
    ca_id: Id | None = None
    ike_proposals: IkeProposals | None = None
    start_action: StartAction | None = None
    dpd_delay: Seconds | None = None
    dpd_action: DpdAction | None = None
    close_action: CloseAction | None = None
    rekey_time: Seconds | None = None
    reauth_time: Seconds | None = None
    over_time: Seconds | None = None
    fragmentation: Fragmentation | None = None
    encap: bool | None = None
    mobike: Mobike | None = None
    pool: Prefix | None = None
    request_virtual_ip: bool | None = None
    local_auth: EapMethod | None = None
    remote_auth: EapMethod | None = None
    eap_id: Identity | None = None
    eap_secret_id: Id | None = None
    dns: AddressList | None = None
    revocation: Revocation | None = None
    ppk_id: Text | None = Field(None, max_length=255)
    ppk_secret_id: Id | None = None
    ppk_required: bool | None = None
    gateway_id: Id | None = None


class ConnectionPublic(ConnectionBase, PublicBase):
    model_config = ConfigDict(from_attributes=True)
    managed_by: str | None = Field(
        None, description='None: managed through the API; "file:<path>": by that '
        "configuration file (writes are refused until taken over)")
    version: int = Field(description="bumped by every change; send it back as If-Match "
                         "to have a write refused (409) if someone changed it since")


class ConnectionsPublic(Page[ConnectionPublic]):
    pass


# --- children ------------------------------------------------------------------------

class ChildBase(BaseModel):
    model_config = _FORBID
    name: Name
    local_ts: PrefixList = Field(default_factory=lambda: ["dynamic"])
    remote_ts: PrefixList = Field(default_factory=lambda: ["dynamic"])
    mode: Mode = Mode.TUNNEL
    esp_proposals: EspProposals | None = DEFAULT_ESP_PROPOSALS
    ah_proposals: AhProposals | None = None
    interface_kind: InterfaceKind | None = Field(
        None, description="set for route-based (xfrmi or vti); null for policy-based")
    interface_name: InterfaceName | None = None
    if_id: IfId = None
    interface_addresses: list[InterfaceAddress] = Field(default_factory=list, max_length=16)
    routes: PrefixList = []
    mtu: int | None = Field(None, ge=576, le=65535)
    mark_in: U32 | None = None
    mark_in_mask: U32 | None = None
    mark_out: U32 | None = None
    mark_out_mask: U32 | None = None
    replay_window: int = Field(32, ge=0, le=4096)
    esn: bool = False
    rekey_time: Seconds = 3600
    life_time: Seconds = 3960
    rekey_bytes: Count64 = 0
    life_bytes: Count64 = 0
    rekey_packets: Count64 = 0
    life_packets: Count64 = 0
    tfc_padding: int = Field(0, ge=0, le=65535)
    mss: Mss = "off"
    start_action: StartAction = StartAction.NONE


class ChildCreate(ChildBase):
    pass


class ChildUpdate(BaseModel):
    model_config = _FORBID
    name: Name | None = None
    local_ts: PrefixList | None = None
    remote_ts: PrefixList | None = None
    mode: Mode | None = None
    esp_proposals: EspProposals | None = None
    ah_proposals: AhProposals | None = None
    interface_kind: InterfaceKind | None = None
    interface_name: InterfaceName | None = None
    if_id: IfId = None
    interface_addresses: list[InterfaceAddress] | None = Field(None, max_length=16)
    routes: PrefixList | None = None
    mtu: int | None = Field(None, ge=576, le=65535)
    mark_in: U32 | None = None
    mark_in_mask: U32 | None = None
    mark_out: U32 | None = None
    mark_out_mask: U32 | None = None
    replay_window: int | None = Field(None, ge=0, le=4096)
    esn: bool | None = None
    rekey_time: Seconds | None = None
    life_time: Seconds | None = None
    rekey_bytes: Count64 | None = None
    life_bytes: Count64 | None = None
    rekey_packets: Count64 | None = None
    life_packets: Count64 | None = None
    tfc_padding: int | None = Field(None, ge=0, le=65535)
    mss: Mss | None = None
    start_action: StartAction | None = None


class ChildPublic(ChildBase, PublicBase):
    model_config = ConfigDict(from_attributes=True)
    connection_id: int


class ChildrenPublic(Page[ChildPublic]):
    pass


# --- proposals -----------------------------------------------------------------------

class ProposalBase(BaseModel):
    model_config = _FORBID
    name: Name
    protocol: ProposalProtocol
    text: ProposalText = Field(examples=["aes128gcm16-prfsha256-x25519"])


class ProposalCreate(ProposalBase):
    @field_validator("text")
    @classmethod
    def _parses(cls, text: str, info: ValidationInfo) -> str:
        protocol = info.data.get("protocol")
        if protocol is not None:
            check_proposals(text, ProtocolId[protocol.name])
        return text


class ProposalUpdate(BaseModel):
    model_config = _FORBID
    name: Name | None = None
    protocol: ProposalProtocol | None = None
    text: ProposalText | None = None


class ProposalPublic(ProposalBase, PublicBase):
    model_config = ConfigDict(from_attributes=True)


class ProposalsPublic(Page[ProposalPublic]):
    pass


# --- secrets (write-only values) -----------------------------------------------------

class SecretBase(BaseModel):
    model_config = _FORBID
    name: Name
    kind: SecretKind


_VERSION_DOC = ("the operator's label for this value (text, or an integer taken as text:"
                " 1-64 of A-Z a-z 0-9 _ . : + -, starting with a letter or digit); clients"
                " that cannot read the value back compare it; null: none")


class SecretCreate(SecretBase):
    value: SecretStr = Field(min_length=1, max_length=16384,
                             description="PSK or PEM private key; never returned")
    version: Version | None = Field(None, description=_VERSION_DOC)


class SecretUpdate(BaseModel):
    """PUT: the value and its version are replaced together (no version given: none)."""

    model_config = _FORBID
    value: SecretStr = Field(min_length=1, max_length=16384)
    version: Version | None = Field(None, description=_VERSION_DOC)


class SecretPublic(SecretBase, PublicBase):
    model_config = ConfigDict(from_attributes=True)
    version: str | None = Field(None, description="the version given with the value")


class SecretsPublic(Page[SecretPublic]):
    pass


# --- CAs and certificates ------------------------------------------------------------

Pem = Field(description="PEM-encoded X.509 certificate")


class CaBase(BaseModel):
    model_config = _FORBID
    name: Name


class CaCreate(CaBase):
    pem: CertificatePem = Pem


class CaUpdate(BaseModel):
    model_config = _FORBID
    name: Name | None = None
    pem: CertificatePem | None = None


class CaPublic(CaBase, PublicBase):
    model_config = ConfigDict(from_attributes=True)
    pem: str
    subject: str
    not_after: datetime


class CasPublic(Page[CaPublic]):
    pass


class CertificateBase(BaseModel):
    model_config = _FORBID
    name: Name
    ca_id: Id | None = None
    key_secret_id: Id | None = Field(None, description="secret holding the private key")


class CertificateCreate(CertificateBase):
    pem: CertificatePem = Pem


class CertificateUpdate(BaseModel):
    model_config = _FORBID
    name: Name | None = None
    ca_id: Id | None = None
    key_secret_id: Id | None = None
    pem: CertificatePem | None = None


class CertificatePublic(CertificateBase, PublicBase):
    model_config = ConfigDict(from_attributes=True)
    pem: str
    subject: str
    issuer: str
    not_before: datetime
    not_after: datetime


class CertificatesPublic(Page[CertificatePublic]):
    pass


# --- EAP users (write-only passwords) --------------------------------------------------

EapUserName = Annotated[str, StringConstraints(
    pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@\\-]{0,254}$")]
_PASSWORD_DOC = ("the user's password: only its NT hash (MSCHAPv2) is stored, encrypted; "
                 "never returned")


class EapUserCreate(BaseModel):
    """A remote-access user for EAP-MSCHAPv2: a password, or its NT hash in hex."""

    model_config = _FORBID
    name: EapUserName
    password: SecretStr | None = Field(None, min_length=1, max_length=256,
                                       description=_PASSWORD_DOC)
    nt_hash: SecretStr | None = Field(None, description="or the NT hash (32 hex digits)")
    enabled: bool = True
    version: Version | None = Field(None, description=_VERSION_DOC)


class EapUserUpdate(BaseModel):
    """PATCH: a new password (or NT hash) with its version, and/or enabled."""

    model_config = _FORBID
    password: SecretStr | None = Field(None, min_length=1, max_length=256,
                                       description=_PASSWORD_DOC)
    nt_hash: SecretStr | None = None
    enabled: bool | None = None
    version: Version | None = Field(None, description=_VERSION_DOC)


class EapUserPublic(PublicBase):
    model_config = ConfigDict(from_attributes=True)
    name: str
    enabled: bool
    version: str | None = None


class EapUsersPublic(Page[EapUserPublic]):
    pass


CrlPem = Field(description="PEM-encoded certificate revocation list, signed by the CA",
               min_length=1, max_length=8 << 20)


class CrlBase(BaseModel):
    model_config = _FORBID
    name: Name
    ca_id: Id = Field(description="the CA that issued (signed) the CRL")


class CrlCreate(CrlBase):
    pem: str = CrlPem


class CrlUpdate(BaseModel):
    model_config = _FORBID
    name: Name | None = None
    pem: str | None = Field(None, description="a newer CRL of the same CA",
                            min_length=1, max_length=8 << 20)


class CrlPublic(CrlBase, PublicBase):
    model_config = ConfigDict(from_attributes=True)
    pem: str
    issuer: str
    this_update: datetime
    next_update: datetime | None
    revoked: int = Field(description="how many certificates it lists")


class CrlsPublic(Page[CrlPublic]):
    pass
