"""The daemon's configuration file (YAML or TOML), validated with pydantic.

Field names are those of the REST API and the database (connections and their children),
so a file is also an import format for the API. Example (YAML):

    listen: [192.0.2.1]
    connections:
      site-b:
        local_addrs: [192.0.2.1]
        remote_addrs: [192.0.2.2]
        auth: psk
        psk_file: /etc/xfrmctl/site-b.psk      # or: psk: "..." (kept out of logs)
        ike_proposals: aes128gcm16-prfsha256-x25519
        start_action: start                      # none | start | trap
        dpd_delay: 30                            # default 0: off, as strongSwan
        mobike: true                             # MOBIKE (RFC 4555), the default
        children:
          lan:
            local_ts: [198.51.100.0/24]
            remote_ts: [203.0.113.0/24]
            esp_proposals: aes128gcm16-x25519

Top-level keys besides `connections`: `listen`, `ike_port`, `nat_port`,
`cookie_threshold`, `install_routes` / `route_table` / `route_priority` (routes of
policy-based tunnels, default on, table and rule priority 220; see daemon/routes.py), and
`delete_rekeyed_delay` (seconds a rekeyed CHILD_SA's inbound SA stays in the kernel for
packets still on the wire, default 5, as strongSwan's setting of that name), and
`limits` (what unauthenticated peers may make the daemon hold; README "Security").

EAP (docs/eap.md): `remote_auth: eap-mschapv2` makes a connection an EAP gateway (users from
the database), `local_auth: eap-mschapv2` with `eap_id` and `eap_password[_file]` a client;
`eap-tls` on either side logs in with certificates inside EAP (`certificate`,
`private_key` and `ca` on both sides, no password); `remote_auth: eap-radius` relays the
clients' EAP to the RADIUS server of the daemon-level `radius` section; `dns` lists DNS
servers sent with virtual IPs.

Proposals (`ike_proposals`, `esp_proposals`, `ah_proposals`) use strongSwan's keywords,
joined by `-`, several proposals by `,` (xfrmctl/ike/proposals.py lists them). Post-quantum
hybrid key exchange (RFC 9370 over RFC 9242 IKE_INTERMEDIATE) adds `keN_<method>` for the
additional key exchange N (1..7), `keN_none` making it optional, with ML-KEM (FIPS 203) as
`mlkem768` or `mlkem1024` (ML-KEM-512 is not offered: the crypto library lacks it):

        ike_proposals: aes256gcm16-prfsha384-x25519-ke1_mlkem768
        esp_proposals: aes256gcm16-x25519-ke1_mlkem768

The IKE SA then runs X25519 in IKE_SA_INIT and ML-KEM-768 in an IKE_INTERMEDIATE exchange
(fragmented when needed); its rekeys, and CHILD_SAs made or rekeyed by CREATE_CHILD_SA
with a key exchange, run the additional ones in IKE_FOLLOWUP_KE exchanges (the first
CHILD_SA, made in IKE_AUTH, has no key exchange of its own: the `keN_` part of its ESP
proposal applies from its first rekey). A peer that cannot do them gets
NO_PROPOSAL_CHOSEN unless the proposal says `keN_none`.

See deploy/examples/ for net-to-net, host-to-host, remote access (with EAP too) and
route-based files.

How the file relates to the database (xfrmctl/daemon/dbconfig.py): the database
(XFRMCTL_DATABASE_URL, SQLite by default) is always the daemon's configuration. A file
given with `xfrmctl daemon --config FILE` is applied into it at start and on SIGHUP, all
or nothing; its connections are marked `managed_by: file:<path>`, the API refuses writes
to them (409) until they are taken over, and the file removes only its own connections.
`xfrmctl db import FILE` creates a file's connections once, managed by the API from then
on. Read back from the database, `id` fields carry the database ids and certificates and
keys come as PEM text (`certificate_pem`, `private_key_pem`, `ca_pem`, `crl_pem`).

Certificates (auth: pubkey): `certificate` (PEM; may hold our intermediates after the end
entity: they are sent in CERT payloads), `private_key`, `ca` (the CAs peers must chain
to), `crl` (CRL files of those CAs, DER or PEM, re-read on every reload) and `revocation`
(strict | ifuri | relaxed | none; default relaxed as strongSwan; README "Certificates").

Defaults are the API's: `dpd_delay` 0 (off, as strongSwan), `mobike` true (as strongSwan),
proposals left out = the core's default set.
"""

from __future__ import annotations

import hashlib
import ipaddress
import tomllib
from dataclasses import replace
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import yaml
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from xfrmctl.ike import ts
from xfrmctl.ike.certs import TrustStore
from xfrmctl.ike.config import (
    AuthMethodName,
    ChildConfig,
    Identity,
    IkeConfig,
    LocalAuth,
    Mode,
    RemoteAuth,
    Retransmit,
)
from xfrmctl.ike.constants import EsnId, ProtocolId, TransformType
from xfrmctl.ike.eap import tls as eap_tls
from xfrmctl.ike.eap.mschapv2 import MschapClient, MschapServer, nt_hash
from xfrmctl.ike.eap.relay import EapBackend, EapRelay
from xfrmctl.ike.limits import Limits
from xfrmctl.ike.proposals import DEFAULT_ESP, DEFAULT_IKE, ProposalSpec, parse_proposals
from xfrmctl.ike.revocation import RevocationPolicy, RevocationStore

from .eapusers import EAP_USERS
from .pool import AddressPool
from .radius import RadiusClient, RadiusServer

PPK_MIN = 32  # octets of a postquantum preshared key
MSS_MIN, MSS_MAX = 536, 65495  # IPv4's default MSS (RFC 9293 3.7.1); the largest IPv4 one


class StartAction(StrEnum):
    NONE = "none"  # responder only, or started by the API
    START = "start"  # initiate when the daemon starts
    TRAP = "trap"  # install trap policies; initiate on the first packet (ACQUIRE)


class CloseAction(StrEnum):
    NONE = "none"  # the peer deleted the IKE SA: leave it down (strongSwan's default)
    START = "start"  # initiate again
    TRAP = "trap"  # install trap policies: the next packet brings it up


class DpdAction(StrEnum):
    CLEAR = "clear"  # close the SAs
    RESTART = "restart"  # re-initiate at once
    TRAP = "trap"  # close, and re-install trap policies


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_proposals(text: str | None, protocol: ProtocolId) -> str | None:
    if text is not None:
        parse_proposals(text, protocol)  # raises ValueError naming the bad keyword
    return text


class ChildConf(_Strict):
    id: int | None = Field(None, description="database id (database mode only)")
    local_ts: list[str] = Field(default_factory=list, description="empty: our address")
    remote_ts: list[str] = Field(default_factory=list, description="empty: peer's address")
    mode: Mode = Mode.TUNNEL
    esp_proposals: str | None = None
    ah_proposals: str | None = None
    start_action: StartAction | None = None  # default: the connection's
    interface_kind: Literal["xfrmi", "vti"] | None = None  # route-based when set
    interface_name: str | None = None
    if_id: int | None = None
    interface_addresses: list[str] = Field(default_factory=list)
    routes: list[str] = Field(default_factory=list)
    mtu: int | None = None
    mark_in: int | None = None
    mark_in_mask: int | None = Field(None, ge=0, le=0xFFFFFFFF)  # None: all bits
    mark_out: int | None = None
    mark_out_mask: int | None = Field(None, ge=0, le=0xFFFFFFFF)
    replay_window: int = Field(32, ge=0, le=4096)
    esn: bool = False
    rekey_time: int = Field(3600, ge=0)
    life_time: int = Field(3960, ge=0)
    rekey_bytes: int = Field(0, ge=0)
    life_bytes: int = Field(0, ge=0)
    rekey_packets: int = Field(0, ge=0)
    life_packets: int = Field(0, ge=0)
    tfc_padding: int = Field(0, ge=0, le=1500)
    # TCP MSS clamping of SYNs through the tunnel: auto (what fits after ESP), a number, off
    mss: Literal["auto", "off"] | int = "off"

    @field_validator("mss")
    @classmethod
    def _mss(cls, value: str | int) -> str | int:
        if isinstance(value, int) and not MSS_MIN <= value <= MSS_MAX:
            raise ValueError(f"mss must be auto, off or {MSS_MIN}..{MSS_MAX}")
        return value

    @field_validator("local_ts", "remote_ts")
    @classmethod
    def _selectors(cls, value: list[str]) -> list[str]:
        for text in value:
            ts.parse(text)
        return value

    @field_validator("esp_proposals")
    @classmethod
    def _esp(cls, value: str | None) -> str | None:
        return _check_proposals(value, ProtocolId.ESP)

    @field_validator("ah_proposals")
    @classmethod
    def _ah(cls, value: str | None) -> str | None:
        return _check_proposals(value, ProtocolId.AH)

    @model_validator(mode="after")
    def _lifetimes(self) -> ChildConf:
        if self.life_time and self.rekey_time and self.life_time <= self.rekey_time:
            raise ValueError("life_time must be longer than rekey_time")
        if self.interface_kind == "xfrmi" and not self.if_id:
            raise ValueError("an xfrmi child needs an if_id")
        return self


class EapMethodName(StrEnum):
    MSCHAPV2 = "eap-mschapv2"
    TLS = "eap-tls"
    RADIUS = "eap-radius"  # gateway only: EAP relayed to the RADIUS server (`radius`)


class ConnectionConf(_Strict):
    id: int | None = Field(None, description="database id (database mode only)")
    local_addrs: list[str] = Field(default_factory=list)
    remote_addrs: list[str] = Field(default_factory=list)
    local_port: int = Field(500, ge=1, le=65535)
    remote_port: int = Field(500, ge=1, le=65535)
    local_id: str | None = None
    remote_id: str | None = None
    auth: AuthMethodName = AuthMethodName.PSK
    psk: SecretStr | None = None
    psk_file: Path | None = None
    certificate: Path | None = None
    private_key: Path | None = None
    ca: list[Path] = Field(default_factory=list)
    certificate_pem: str | None = None  # database mode: PEM text instead of files
    private_key_pem: SecretStr | None = None
    ca_pem: list[str] = Field(default_factory=list)
    # revocation: CRL files (DER or PEM) of the connection's CAs, and the policy when a
    # status stays unknown (strongSwan's `revocation`: strict, ifuri, relaxed) or none
    crl: list[Path] = Field(default_factory=list)
    crl_pem: list[str] = Field(default_factory=list)  # database mode
    revocation: RevocationPolicy = RevocationPolicy.RELAXED
    ike_proposals: str | None = None
    start_action: StartAction = StartAction.NONE
    # 0 = off, strongSwan's default (and the API's): DPD only where asked for
    dpd_delay: int = Field(0, ge=0)
    dpd_action: DpdAction = DpdAction.CLEAR
    close_action: CloseAction = CloseAction.NONE  # when the peer deletes the IKE SA
    rekey_time: int = Field(14400, ge=0)
    reauth_time: int = Field(0, ge=0)  # 0: no reauthentication
    over_time: int = Field(0, ge=0)  # hard IKE_SA lifetime after rekey/reauth; 0: 10%
    fragmentation: bool | Literal["force"] = True  # force: even if the peer did not offer
    encap: bool = False
    mobike: bool = True  # MOBIKE (RFC 4555), on by default as strongSwan's
    pool: str | None = None  # remote access: hand out virtual IPs from this prefix
    request_virtual_ip: bool = False
    # EAP (RFC 7296 2.16), named as swanctl's local/remote `auth`: with remote_auth the
    # peers log in against the EAP users of the database and we (the gateway) prove
    # ourselves with `auth: pubkey`; with local_auth we log in as eap_id (default:
    # local_id) with eap_password and verify the gateway's certificate against `ca`.
    local_auth: EapMethodName | None = None
    remote_auth: EapMethodName | None = None
    eap_id: str | None = None
    eap_password: SecretStr | None = None
    eap_password_file: Path | None = None
    dns: list[str] = Field(default_factory=list)  # sent to clients with a virtual IP
    # RFC 8784 postquantum preshared key (PPK): mixed into the IKE SA's keys when both
    # ends have it; `ppk_required` refuses peers without it (else they get in without)
    ppk_id: str | None = Field(None, min_length=1, max_length=255)
    ppk: SecretStr | None = None
    ppk_required: bool = False
    children: dict[str, ChildConf] = Field(default_factory=dict)

    @field_validator("ike_proposals")
    @classmethod
    def _ike(cls, value: str | None) -> str | None:
        return _check_proposals(value, ProtocolId.IKE)

    @field_validator("local_id", "remote_id")
    @classmethod
    def _identity(cls, value: str | None) -> str | None:
        if value is not None:
            Identity.parse(value)
        return value

    @field_validator("local_addrs", "remote_addrs")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        for text in value:
            if text != "%any":
                ipaddress.ip_network(text, strict=False)
        return value

    @field_validator("dns")
    @classmethod
    def _dns(cls, value: list[str]) -> list[str]:
        for text in value:
            ipaddress.ip_address(text)  # ValueError naming the address
        return value

    @field_validator("pool")
    @classmethod
    def _pool(cls, value: str | None) -> str | None:
        if value is not None:
            ipaddress.ip_network(value, strict=False)  # ValueError naming the prefix
        return value

    @model_validator(mode="after")
    def _auth(self) -> ConnectionConf:
        if self.local_auth or self.remote_auth:
            return self._eap()
        if self.auth is AuthMethodName.PSK and not (self.psk or self.psk_file):
            raise ValueError("auth psk needs psk or psk_file")
        if self.auth is AuthMethodName.PUBKEY and not (
                (self.certificate or self.certificate_pem)
                and (self.private_key or self.private_key_pem) and (self.ca or self.ca_pem)):
            raise ValueError("auth pubkey needs certificate, private_key and ca")
        if self.start_action is not StartAction.NONE and not self.remote_addrs:
            raise ValueError(f"start_action {self.start_action} needs remote_addrs")
        if (self.ppk is None) != (self.ppk_id is None):
            raise ValueError("ppk and ppk_id go together: set both or neither")
        if self.ppk_required and self.ppk is None:
            raise ValueError("ppk_required needs ppk and ppk_id")
        if self.ppk is not None and len(self.ppk.get_secret_value().encode()) < PPK_MIN:
            raise ValueError(f"ppk must be at least {PPK_MIN} octets (RFC 8784 asks for "
                             "256 bits of entropy)")
        return self


    def _eap(self) -> ConnectionConf:
        if self.local_auth and self.remote_auth:
            raise ValueError("set local_auth (we are the EAP client) or remote_auth (we are "
                             "the gateway), not both")
        if self.auth is not AuthMethodName.PUBKEY:
            raise ValueError("with EAP the gateway proves itself with a certificate: set "
                             "auth: pubkey")
        own = bool((self.certificate or self.certificate_pem)
                   and (self.private_key or self.private_key_pem))
        if self.remote_auth and not own:
            raise ValueError("remote_auth (EAP gateway) needs certificate and private_key")
        if self.local_auth is EapMethodName.RADIUS:
            raise ValueError("eap-radius is for gateways (remote_auth): a client logs in "
                             "with the method the RADIUS server asks for, e.g. eap-mschapv2")
        if EapMethodName.TLS in (self.local_auth, self.remote_auth):
            if not (self.ca or self.ca_pem):
                raise ValueError("eap-tls needs ca: the CA of the peer's certificate")
            if not own:
                raise ValueError("eap-tls needs certificate and private_key: ours for TLS")
            return self
        if self.local_auth:
            if not (self.ca or self.ca_pem):
                raise ValueError("local_auth (EAP client) needs ca: the gateway's CA")
            if not (self.eap_password or self.eap_password_file):
                raise ValueError("local_auth needs eap_password or eap_password_file")
            if not (self.eap_id or self.local_id):
                raise ValueError("local_auth needs eap_id (or local_id): the user name")
        return self


class LimitsConf(_Strict):
    """Limits on what unauthenticated peers make the daemon hold (README, "Security";
    the rules are in xfrmctl/ike/limits.py). strongSwan's nearest settings in brackets."""

    memory_bytes: int = Field(default=64 * 2**20, ge=1024)  # the one cap on all of it
    half_open: int = Field(default=5000, ge=1)  # [init_limit_half_open] oldest dropped
    half_open_per_address: int = Field(default=10, ge=1)  # [block_threshold]
    cookie_threshold_per_address: int = Field(default=3, ge=0)  # [cookie_threshold_ip]
    block_after: int = Field(default=50, ge=1)  # refusals over the per-address limit
    block_time: float = Field(default=60.0, ge=0, le=86400)  # seconds; 0: never block
    block_networks: list[str] = Field(default_factory=list)  # never answered
    fragments_per_sa: int = Field(default=64, ge=1, le=0xFFFF)
    fragment_bytes_per_sa: int = Field(default=65535, ge=1280)
    fragments: int = Field(default=16384, ge=1)
    fragment_bytes: int = Field(default=16 * 2**20, ge=65535)
    answers_per_second: float = Field(default=100.0, ge=0)  # error answers outside an SA

    @field_validator("block_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for text in value:
            ipaddress.ip_network(text, strict=False)  # ValueError names the bad network
        return value

    def to_core(self) -> Limits:
        fields = self.model_dump(exclude={"memory_bytes", "block_networks"})
        return Limits(memory=self.memory_bytes, block_networks=tuple(
            ipaddress.ip_network(n, strict=False) for n in self.block_networks), **fields)


class RadiusConf(_Strict):
    """The RADIUS server `remote_auth: eap-radius` connections relay EAP to (RFC 3579)."""

    server: str  # its address
    port: int = Field(1812, ge=1, le=65535)
    secret: SecretStr | None = None
    secret_file: Path | None = None
    timeout: float = Field(2.0, gt=0, le=60)  # seconds before a retransmission
    retries: int = Field(3, ge=0, le=10)
    nas_identifier: str = Field("xfrmctl", min_length=1, max_length=253)

    @field_validator("server")
    @classmethod
    def _server(cls, value: str) -> str:
        ipaddress.ip_address(value)  # ValueError naming the address
        return value

    @model_validator(mode="after")
    def _secret(self) -> RadiusConf:
        if (self.secret is None) == (self.secret_file is None):
            raise ValueError("radius needs secret or secret_file (one of them)")
        return self


def radius_server(conf: RadiusConf | None) -> RadiusServer | None:
    """The RADIUS client's view; reads secret_file (OSError if it cannot)."""
    if conf is None:
        return None
    secret = conf.secret.get_secret_value() if conf.secret is not None else \
        conf.secret_file.read_text().strip()  # type: ignore[union-attr]
    return RadiusServer(conf.server, conf.port, secret.encode(), conf.timeout, conf.retries,
                        conf.nas_identifier)


class DaemonConf(_Strict):
    listen: list[str] = Field(default_factory=list, description="empty: every address")
    ike_port: int = 500
    nat_port: int = 4500
    cookie_threshold: int = 200
    # Policy-based tunnels: route each remote selector in this table, looked up by an
    # `ip rule` at this priority (strongSwan's 220/220); read at start only.
    install_routes: bool = True
    route_table: int = Field(default=220, ge=1, le=2**32 - 1)
    route_priority: int = Field(default=220, ge=0, le=2**32 - 1)
    # A CHILD_SA replaced by a rekey keeps its inbound SA this long (seconds): the peer's
    # packets sent on it just before the switch still arrive.
    delete_rekeyed_delay: float = Field(default=5.0, ge=0, le=3600)
    limits: LimitsConf = Field(default_factory=LimitsConf)
    radius: RadiusConf | None = None  # for `remote_auth: eap-radius` connections
    connections: dict[str, ConnectionConf] = Field(default_factory=dict)


def load(path: Path) -> DaemonConf:
    """Read a YAML (.yaml/.yml) or TOML (.toml) file; raise ValueError saying what is
    wrong and where."""
    text = path.read_text()
    data: Any = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    return DaemonConf.model_validate(data or {})


# --------------------------------------------------------------------------- to the core


def credential_digest(conf: ConnectionConf) -> str | None:
    """A SHA-256 over the credential files a connection names by path (psk_file,
    certificate, private_key, ca), so a reload notices new content behind the same path.
    None when it names none. Kept in memory only: neither it nor the secret is logged.
    Raises OSError for a file that cannot be read."""
    paths = [p for p in (conf.psk_file, conf.certificate, conf.private_key, *conf.ca,
                         conf.eap_password_file) if p is not None]
    if not paths:
        return None
    digest = hashlib.sha256()
    for path in paths:
        content = path.read_bytes()
        digest.update(len(content).to_bytes(8, "big") + content)
    return digest.hexdigest()


def _psk(conf: ConnectionConf) -> bytes:
    if conf.psk is not None:
        return conf.psk.get_secret_value().encode()
    assert conf.psk_file is not None
    return conf.psk_file.read_bytes().strip()


def _require_esn(spec: ProposalSpec) -> ProposalSpec:
    """`esn: true` on a child whose proposals leave ESN open: offer ESN only."""
    algorithms = dict(spec.algorithms)
    algorithms[TransformType.ESN] = ((EsnId.ESN, None),)
    return replace(spec, algorithms=algorithms, text="")


def _child(name: str, conf: ChildConf) -> ChildConfig:
    if conf.ah_proposals:
        proposals = parse_proposals(conf.ah_proposals, ProtocolId.AH)
    elif conf.esp_proposals:
        proposals = parse_proposals(conf.esp_proposals, ProtocolId.ESP)
    else:
        proposals = DEFAULT_ESP
    named = (conf.ah_proposals or conf.esp_proposals or "").replace(",", "-").split("-")
    if conf.esn and not {"esn", "noesn"} & {w.strip() for w in named}:
        proposals = tuple(_require_esn(spec) for spec in proposals)
    return ChildConfig(
        name=name,
        local_ts=tuple(ts.parse(t) for t in conf.local_ts),
        remote_ts=tuple(ts.parse(t) for t in conf.remote_ts),
        mode=conf.mode,
        proposals=proposals,
        rekey_time=float(conf.rekey_time),
        life_time=float(conf.life_time),
        rekey_bytes=conf.rekey_bytes,
        life_bytes=conf.life_bytes,
        rekey_packets=conf.rekey_packets,
        life_packets=conf.life_packets,
    )


def _pem(text: str | None, path: Path | None) -> bytes:
    if text is not None:
        return text.encode()
    assert path is not None
    return path.read_bytes()


def eap_password(conf: ConnectionConf) -> str:
    if conf.eap_password is not None:
        return conf.eap_password.get_secret_value()
    assert conf.eap_password_file is not None
    return conf.eap_password_file.read_text().strip()


def _remote_pubkey(conf: ConnectionConf, crls: RevocationStore | None) -> RemoteAuth:
    """The peer proves itself with a certificate from one of our CAs, not revoked."""
    return RemoteAuth(AuthMethodName.PUBKEY, trust=TrustStore(_cas(conf)),
                      revocation=conf.revocation, crls=crls)


def _cas(conf: ConnectionConf) -> list[x509.Certificate]:
    return [c for pem in [*conf.ca_pem, *(p.read_text() for p in conf.ca)]
            for c in x509.load_pem_x509_certificates(pem.encode())]


def _own(conf: ConnectionConf) -> LocalAuth:
    """Our certificate (the file may hold our chain: the end entity, then its
    intermediates) and private key."""
    cert, *chain = x509.load_pem_x509_certificates(_pem(conf.certificate_pem, conf.certificate))
    key_pem = conf.private_key_pem.get_secret_value() if conf.private_key_pem else None
    key = load_pem_private_key(_pem(key_pem, conf.private_key), password=None)
    return LocalAuth(AuthMethodName.PUBKEY, private_key=key, certificate=cert,  # type: ignore[arg-type]
                     intermediates=tuple(chain))


def dn_text(name: x509.Name) -> str:
    """A DN as strongSwan writes it, in DER order ("C=CH, O=Org, CN=carol"): what
    Identity.parse reads back to the same DER."""
    return ", ".join(f"{a.rfc4514_attribute_name}={a.value!s}" for rdn in name.rdns
                     for a in rdn)


def _eap_tls_client(conf: ConnectionConf, crls: RevocationStore | None
                    ) -> tuple[LocalAuth, RemoteAuth]:
    """EAP-TLS as the client: our certificate in TLS; the EAP identity is eap_id, else
    local_id, else our certificate's subject (which the gateway finds in it)."""
    own = _own(conf)
    assert own.certificate is not None and own.private_key is not None
    identity = conf.eap_id or conf.local_id or dn_text(own.certificate.subject)
    context = eap_tls.client_context(own.certificate, own.private_key, own.intermediates)
    return (replace(own, eap=lambda: eap_tls.EapTlsClient(identity, context)),
            _remote_pubkey(conf, crls))


def _eap_client(conf: ConnectionConf, crls: RevocationStore | None
                ) -> tuple[LocalAuth, RemoteAuth]:
    if conf.local_auth is EapMethodName.TLS:
        return _eap_tls_client(conf, crls)
    identity = conf.eap_id or conf.local_id or ""
    password_hash = nt_hash(eap_password(conf))
    return (LocalAuth(AuthMethodName.PUBKEY,
                      eap=lambda: MschapClient(identity, password_hash)),
            _remote_pubkey(conf, crls))


def _eap_tls_gateway(conf: ConnectionConf, local: LocalAuth, crls: RevocationStore | None
                     ) -> RemoteAuth:
    """EAP-TLS as the gateway: our certificate in TLS; the clients' certificates are
    verified by the IKE core against `ca` (and revocation), as for certificate AUTH."""
    assert local.certificate is not None and local.private_key is not None
    cas = _cas(conf)
    context = eap_tls.server_context(local.certificate, local.private_key,
                                     local.intermediates)
    return RemoteAuth(AuthMethodName.PUBKEY, trust=TrustStore(cas), revocation=conf.revocation,
                      crls=crls, eap=lambda sa_id: eap_tls.EapTlsServer(context))


_NO_RADIUS = RadiusClient()  # answers "no RADIUS server configured"


def _auth(conf: ConnectionConf, crls: RevocationStore | None,
          eap_backend: EapBackend | None = None) -> tuple[LocalAuth, RemoteAuth]:
    if conf.local_auth is not None:
        return _eap_client(conf, crls)
    if conf.auth is AuthMethodName.PSK:
        psk = _psk(conf)
        return (LocalAuth(AuthMethodName.PSK, psk=psk),
                RemoteAuth(AuthMethodName.PSK, psk=psk))
    local = _own(conf)
    if conf.remote_auth is EapMethodName.TLS:  # the gateway: client certificates
        return local, _eap_tls_gateway(conf, local, crls)
    if conf.remote_auth is EapMethodName.RADIUS:  # the gateway: the RADIUS server decides
        backend = eap_backend or _NO_RADIUS
        return local, RemoteAuth(AuthMethodName.PUBKEY,
                                 eap=lambda sa_id: EapRelay(sa_id, backend))
    if conf.remote_auth is not None:  # the gateway: users from the database
        return local, RemoteAuth(AuthMethodName.PUBKEY,
                                 eap=lambda sa_id: MschapServer(EAP_USERS.lookup))
    return local, _remote_pubkey(conf, crls)


def ike_config(name: str, conf: ConnectionConf, pool: AddressPool | None = None,
               crls: RevocationStore | None = None,
               eap_backend: EapBackend | None = None) -> IkeConfig:
    """The IKE core's view of one connection. `crls`: the daemon's revocation store;
    `eap_backend`: its RADIUS client (eap-radius)."""
    local_auth, remote_auth = _auth(conf, crls, eap_backend)
    return IkeConfig(
        name=name,
        local_auth=local_auth,
        remote_auth=remote_auth,
        local_addrs=tuple(conf.local_addrs),
        remote_addrs=tuple(conf.remote_addrs),
        local_id=Identity.parse(conf.local_id) if conf.local_id else None,
        remote_id=Identity.parse(conf.remote_id) if conf.remote_id else None,
        proposals=parse_proposals(conf.ike_proposals, ProtocolId.IKE)
        if conf.ike_proposals else DEFAULT_IKE,
        children=tuple(_child(n, c) for n, c in conf.children.items()),
        rekey_time=float(conf.rekey_time),
        reauth_time=float(conf.reauth_time),
        over_time=float(conf.over_time),
        dpd_delay=float(conf.dpd_delay),
        retransmit=Retransmit(),
        fragmentation=bool(conf.fragmentation),
        force_fragmentation=conf.fragmentation == "force",
        request_virtual_ip=conf.request_virtual_ip,
        pool=pool,
        dns=tuple(conf.dns),
        force_encap=conf.encap,
        mobike=conf.mobike,
        ppk=conf.ppk.get_secret_value().encode() if conf.ppk is not None else None,
        ppk_id=conf.ppk_id.encode() if conf.ppk_id is not None else None,
        ppk_required=conf.ppk_required,
    )
