"""Database models: desired state (peers, connections, children, proposals, secrets,
CAs, certificates), recorded actual state (IKE_SAs, CHILD_SAs), events and API tokens.

List-valued settings (addresses, traffic selectors, routes) are JSON columns, so the
same schema works on SQLite and PostgreSQL. Times are timezone-aware UTC.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Enum,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy import false as sa_false
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from xfrmctl.ike.proposals import DEFAULT_ESP, DEFAULT_IKE

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


# The same defaults as a configuration file that leaves proposals out (strongSwan's
# "default" set: AEAD first, then AES-CBC with HMAC-SHA2; curves, then MODP >= 2048).
DEFAULT_IKE_PROPOSALS = ", ".join(p.text for p in DEFAULT_IKE)
DEFAULT_ESP_PROPOSALS = ", ".join(p.text for p in DEFAULT_ESP)


def utcnow() -> datetime:
    return datetime.now(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """DateTime that always comes back timezone-aware (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        # Stored in UTC: SQLite keeps only the wall time, so 10:00+05:00 must become 05:00
        # (and comparisons in SQL then compare like with like).
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


def _enum(cls: type[enum.Enum]) -> Enum:
    # Stored as plain strings (no native PostgreSQL enum type to migrate later).
    return Enum(cls, native_enum=False, length=16, values_callable=lambda e: [m.value for m in e])


class AuthMethod(enum.StrEnum):
    PSK = "psk"
    PUBKEY = "pubkey"


class StartAction(enum.StrEnum):
    NONE = "none"
    START = "start"
    TRAP = "trap"


class DpdAction(enum.StrEnum):
    CLEAR = "clear"
    RESTART = "restart"
    TRAP = "trap"


class CloseAction(enum.StrEnum):
    NONE = "none"
    START = "start"
    TRAP = "trap"


class Fragmentation(enum.StrEnum):
    YES = "yes"
    NO = "no"
    ACCEPT = "accept"
    FORCE = "force"


class Revocation(enum.StrEnum):
    STRICT = "strict"
    IFURI = "ifuri"
    RELAXED = "relaxed"
    NONE = "none"


class Mode(enum.StrEnum):
    TUNNEL = "tunnel"
    TRANSPORT = "transport"


class InterfaceKind(enum.StrEnum):
    XFRMI = "xfrmi"
    VTI = "vti"


class ProposalProtocol(enum.StrEnum):
    IKE = "ike"
    ESP = "esp"
    AH = "ah"


class SecretKind(enum.StrEnum):
    PSK = "psk"
    PRIVATE_KEY = "private_key"
    EAP = "eap"  # our own EAP password, as a road-warrior client
    PPK = "ppk"  # RFC 8784 postquantum preshared key


class EapMethod(enum.StrEnum):
    MSCHAPV2 = "eap-mschapv2"
    TLS = "eap-tls"  # certificates inside EAP (RFC 5216); no password
    RADIUS = "eap-radius"  # gateway: EAP relayed to the daemon's RADIUS server


class EventKind(enum.StrEnum):
    PROTOCOL = "protocol"
    AUDIT = "audit"


class Timestamps:
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, onupdate=utcnow)


class Peer(Timestamps, Base):
    __tablename__ = "peers"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    addresses: Mapped[list[str]] = mapped_column(JSON, default=list)
    description: Mapped[str] = mapped_column(Text, default="")


class Proposal(Timestamps, Base):
    __tablename__ = "proposals"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    protocol: Mapped[ProposalProtocol] = mapped_column(_enum(ProposalProtocol))
    text: Mapped[str] = mapped_column(Text)


class Secret(Timestamps, Base):
    """A PSK or private key; `ciphertext` is nonce || AES-GCM(value), see store.secrets."""

    __tablename__ = "secrets"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[SecretKind] = mapped_column(_enum(SecretKind))
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    # the operator's label for the value (e.g. "2", "2026-12"), never derived from it:
    # a client that cannot read the value back compares versions instead
    version: Mapped[str | None] = mapped_column(String(64))


class CertificateAuthority(Timestamps, Base):
    __tablename__ = "cas"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    pem: Mapped[str] = mapped_column(Text)
    subject: Mapped[str] = mapped_column(Text)
    not_after: Mapped[datetime] = mapped_column(UtcDateTime)


class Crl(Timestamps, Base):
    """A certificate revocation list of one of our CAs (verified against it when written)."""

    __tablename__ = "crls"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    ca_id: Mapped[int] = mapped_column(ForeignKey("cas.id", ondelete="RESTRICT"), index=True)
    pem: Mapped[str] = mapped_column(Text)
    issuer: Mapped[str] = mapped_column(Text)
    this_update: Mapped[datetime] = mapped_column(UtcDateTime)
    next_update: Mapped[datetime | None] = mapped_column(UtcDateTime)
    revoked: Mapped[int] = mapped_column(Integer, default=0)  # how many certificates it lists


class Certificate(Timestamps, Base):
    __tablename__ = "certificates"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    pem: Mapped[str] = mapped_column(Text)
    subject: Mapped[str] = mapped_column(Text)
    issuer: Mapped[str] = mapped_column(Text)
    not_before: Mapped[datetime] = mapped_column(UtcDateTime)
    not_after: Mapped[datetime] = mapped_column(UtcDateTime)
    ca_id: Mapped[int | None] = mapped_column(ForeignKey("cas.id", ondelete="RESTRICT"))
    key_secret_id: Mapped[int | None] = mapped_column(
        ForeignKey("secrets.id", ondelete="RESTRICT"))


class Gateway(Base):
    """A daemon of the fleet sharing this database: it registers itself at start and
    heartbeats every `heartbeat_interval` seconds; one whose heartbeat is older than
    a few intervals is unreachable (its recorded SAs are then stale, never deleted)."""

    __tablename__ = "gateways"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    addresses: Mapped[list[str]] = mapped_column(JSON, default=list)
    version: Mapped[str] = mapped_column(String(64), default="")
    heartbeat_interval: Mapped[int] = mapped_column(Integer, default=5)
    started_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class Connection(Timestamps, Base):
    """An IKE_SA configuration (strongSwan's `connections.<name>`)."""

    __tablename__ = "connections"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    peer_id: Mapped[int | None] = mapped_column(ForeignKey("peers.id", ondelete="RESTRICT"))
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    local_addrs: Mapped[list[str]] = mapped_column(JSON, default=list)
    remote_addrs: Mapped[list[str]] = mapped_column(JSON, default=list)
    local_port: Mapped[int] = mapped_column(Integer, default=500)
    remote_port: Mapped[int] = mapped_column(Integer, default=500)
    local_id: Mapped[str | None] = mapped_column(String(255))
    remote_id: Mapped[str | None] = mapped_column(String(255))
    auth: Mapped[AuthMethod] = mapped_column(_enum(AuthMethod), default=AuthMethod.PSK)
    secret_id: Mapped[int | None] = mapped_column(ForeignKey("secrets.id", ondelete="RESTRICT"))
    certificate_id: Mapped[int | None] = mapped_column(
        ForeignKey("certificates.id", ondelete="RESTRICT"))
    ca_id: Mapped[int | None] = mapped_column(ForeignKey("cas.id", ondelete="RESTRICT"))
    ike_proposals: Mapped[str] = mapped_column(Text, default=DEFAULT_IKE_PROPOSALS)
    start_action: Mapped[StartAction] = mapped_column(
        _enum(StartAction), default=StartAction.NONE)
    dpd_delay: Mapped[int] = mapped_column(Integer, default=0)  # seconds; 0 = off (strongSwan)
    dpd_action: Mapped[DpdAction] = mapped_column(_enum(DpdAction), default=DpdAction.CLEAR)
    rekey_time: Mapped[int] = mapped_column(Integer, default=14400)
    reauth_time: Mapped[int] = mapped_column(Integer, default=0)
    over_time: Mapped[int] = mapped_column(Integer, default=0)  # 0: 10% of rekey/reauth
    fragmentation: Mapped[Fragmentation] = mapped_column(
        _enum(Fragmentation), default=Fragmentation.YES)
    encap: Mapped[bool] = mapped_column(Boolean, default=False)  # force UDP encapsulation
    mobike: Mapped[bool] = mapped_column(Boolean, default=True)  # MOBIKE (RFC 4555)
    close_action: Mapped[CloseAction] = mapped_column(
        _enum(CloseAction), default=CloseAction.NONE)  # when the peer deletes the IKE_SA
    pool: Mapped[str | None] = mapped_column(String(64))  # remote access: virtual IP prefix
    request_virtual_ip: Mapped[bool] = mapped_column(Boolean, default=False)
    # EAP (RFC 7296 2.16), as swanctl's local/remote auth: remote_auth, the peers log in
    # against eap_users (we are the gateway, proving ourselves with `auth` pubkey);
    # local_auth, we log in as eap_id with the password in eap_secret_id (a client).
    local_auth: Mapped[EapMethod | None] = mapped_column(_enum(EapMethod))
    remote_auth: Mapped[EapMethod | None] = mapped_column(_enum(EapMethod))
    eap_id: Mapped[str | None] = mapped_column(String(255))
    eap_secret_id: Mapped[int | None] = mapped_column(
        ForeignKey("secrets.id", ondelete="RESTRICT"))
    dns: Mapped[list[str]] = mapped_column(JSON, default=list)  # sent with virtual IPs
    # strongSwan's `revocation` (strict, ifuri, relaxed) or none
    revocation: Mapped[Revocation] = mapped_column(_enum(Revocation),
                                                   default=Revocation.RELAXED)
    # RFC 8784 postquantum preshared key: its PPK_ID, the secret (kind ppk), required?
    ppk_id: Mapped[str | None] = mapped_column(String(255))
    ppk_secret_id: Mapped[int | None] = mapped_column(
        ForeignKey("secrets.id", ondelete="RESTRICT"))
    ppk_required: Mapped[bool] = mapped_column(Boolean, default=False,
                                               server_default=sa_false())
    # None: created through the API/CLI; "file:<path>": applied from that configuration
    # file, which alone changes it (the API refuses writes until it is taken over).
    managed_by: Mapped[str | None] = mapped_column(String(255), index=True)
    # The fleet gateway that runs it; None: every gateway on this database (a single
    # gateway's database).
    gateway_id: Mapped[int | None] = mapped_column(
        ForeignKey("gateways.id", ondelete="RESTRICT"), index=True)
    # Bumped by every update: a client that read version N and writes with If-Match: N
    # gets 409 if someone else wrote in between (optimistic locking, enforced by the
    # UPDATE's WHERE version = N even between concurrent transactions).
    version: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    __mapper_args__ = {"version_id_col": version}


class Child(Timestamps, Base):
    """A CHILD_SA configuration of a connection."""

    __tablename__ = "children"
    __table_args__ = (UniqueConstraint("connection_id", "name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    connection_id: Mapped[int] = mapped_column(
        ForeignKey("connections.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    local_ts: Mapped[list[str]] = mapped_column(JSON, default=list)
    remote_ts: Mapped[list[str]] = mapped_column(JSON, default=list)
    mode: Mapped[Mode] = mapped_column(_enum(Mode), default=Mode.TUNNEL)
    esp_proposals: Mapped[str | None] = mapped_column(Text, default=DEFAULT_ESP_PROPOSALS)
    ah_proposals: Mapped[str | None] = mapped_column(Text)
    # Route-based when interface_kind is set; policy-based otherwise.
    interface_kind: Mapped[InterfaceKind | None] = mapped_column(_enum(InterfaceKind))
    interface_name: Mapped[str | None] = mapped_column(String(15))
    if_id: Mapped[int | None] = mapped_column(BigInteger)
    interface_addresses: Mapped[list[str]] = mapped_column(JSON, default=list)
    routes: Mapped[list[str]] = mapped_column(JSON, default=list)
    mtu: Mapped[int | None] = mapped_column(Integer)
    mark_in: Mapped[int | None] = mapped_column(BigInteger)
    mark_in_mask: Mapped[int | None] = mapped_column(BigInteger)
    mark_out: Mapped[int | None] = mapped_column(BigInteger)
    mark_out_mask: Mapped[int | None] = mapped_column(BigInteger)
    replay_window: Mapped[int] = mapped_column(Integer, default=32)
    esn: Mapped[bool] = mapped_column(Boolean, default=False)
    rekey_time: Mapped[int] = mapped_column(Integer, default=3600)
    life_time: Mapped[int] = mapped_column(Integer, default=3960)
    rekey_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    life_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    rekey_packets: Mapped[int] = mapped_column(BigInteger, default=0)
    life_packets: Mapped[int] = mapped_column(BigInteger, default=0)
    tfc_padding: Mapped[int] = mapped_column(Integer, default=0)
    mss: Mapped[str] = mapped_column(String(8), default="off", server_default="off")
    start_action: Mapped[StartAction] = mapped_column(
        _enum(StartAction), default=StartAction.NONE)


class EapUser(Timestamps, Base):
    """A remote-access user: the NT hash of the password only (MSCHAPv2 needs no more),
    encrypted like a secret (`nt_hash` is nonce || AES-GCM, bound to "eap-user:<name>")."""

    __tablename__ = "eap_users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    nt_hash: Mapped[bytes] = mapped_column(LargeBinary)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    version: Mapped[str | None] = mapped_column(String(64))  # the operator's label


class IkeSaRecord(Base):
    """An IKE_SA as negotiated, recorded by the daemon (keyed by its unique id)."""

    __tablename__ = "ike_sas"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    # the gateway that negotiated it (None: recorded before the fleet, or by a daemon
    # without a gateway); the id is then "<gateway>:<its own id>", unique in the fleet
    gateway_id: Mapped[int | None] = mapped_column(
        ForeignKey("gateways.id", ondelete="CASCADE"), index=True)
    connection_id: Mapped[int | None] = mapped_column(
        ForeignKey("connections.id", ondelete="SET NULL"), index=True)
    state: Mapped[str] = mapped_column(String(32))
    initiator: Mapped[bool] = mapped_column(Boolean)
    spi_i: Mapped[str] = mapped_column(String(16))  # hex
    spi_r: Mapped[str] = mapped_column(String(16))
    local_addr: Mapped[str] = mapped_column(String(64))
    local_port: Mapped[int] = mapped_column(Integer)
    remote_addr: Mapped[str] = mapped_column(String(64))
    remote_port: Mapped[int] = mapped_column(Integer)
    local_id: Mapped[str | None] = mapped_column(String(255))
    remote_id: Mapped[str | None] = mapped_column(String(255))
    encryption: Mapped[str | None] = mapped_column(String(64))
    integrity: Mapped[str | None] = mapped_column(String(64))
    prf: Mapped[str | None] = mapped_column(String(64))
    dh_group: Mapped[str | None] = mapped_column(String(64))
    established_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    rekey_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    reauth_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    expire_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, onupdate=utcnow)


class ChildSaRecord(Base):
    """A CHILD_SA as negotiated and installed, with counters read from the kernel."""

    __tablename__ = "child_sas"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    gateway_id: Mapped[int | None] = mapped_column(
        ForeignKey("gateways.id", ondelete="CASCADE"), index=True)
    ike_sa_id: Mapped[str] = mapped_column(
        ForeignKey("ike_sas.id", ondelete="CASCADE"), index=True)
    child_id: Mapped[int | None] = mapped_column(
        ForeignKey("children.id", ondelete="SET NULL"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(32))
    mode: Mapped[str] = mapped_column(String(16))
    protocol: Mapped[str] = mapped_column(String(8))
    spi_in: Mapped[str] = mapped_column(String(8))  # hex
    spi_out: Mapped[str] = mapped_column(String(8))
    encryption: Mapped[str | None] = mapped_column(String(64))
    integrity: Mapped[str | None] = mapped_column(String(64))
    dh_group: Mapped[str | None] = mapped_column(String(64))
    esn: Mapped[bool] = mapped_column(Boolean, default=False)
    local_ts: Mapped[list[str]] = mapped_column(JSON, default=list)
    remote_ts: Mapped[list[str]] = mapped_column(JSON, default=list)
    if_id: Mapped[int | None] = mapped_column(BigInteger)
    installed_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    rekey_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    expire_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    bytes_in: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_out: Mapped[int] = mapped_column(BigInteger, default=0)
    packets_in: Mapped[int] = mapped_column(BigInteger, default=0)
    packets_out: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, onupdate=utcnow)


class Event(Base):
    """A protocol event or an audit record of an API change (secrets redacted)."""

    __tablename__ = "events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ts: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, index=True)
    kind: Mapped[EventKind] = mapped_column(_enum(EventKind), index=True)
    type: Mapped[str] = mapped_column(String(64), index=True)
    connection_id: Mapped[int | None] = mapped_column(Integer, index=True)  # no FK: history
    actor: Mapped[str | None] = mapped_column(String(64))
    resource: Mapped[str | None] = mapped_column(String(32))
    resource_id: Mapped[str | None] = mapped_column(String(64))
    message: Mapped[str] = mapped_column(Text, default="")
    before: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class ApiToken(Base):
    """A bearer token: only its SHA-256 is stored; `prefix` identifies it in listings."""

    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
