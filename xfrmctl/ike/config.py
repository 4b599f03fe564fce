"""What the IKE core needs to know about a connection (no kernel or database details).

The daemon builds these from its configuration; the core only reads them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

from cryptography import x509

from . import ts
from .constants import IdType
from .payloads import TrafficSelector
from .proposals import DEFAULT_ESP, DEFAULT_IKE, ProposalSpec
from .revocation import RevocationPolicy, RevocationStore

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

    from .certs import TrustStore
    from .eap import EapClient, EapServerFactory


@dataclass(frozen=True, slots=True)
class Identity:
    """An IKE identity (RFC 7296 3.5), written as strongSwan writes it."""

    id_type: int
    data: bytes
    text: str = field(default="", compare=False)  # how a DN was written, for display

    @classmethod
    def parse(cls, text: str) -> Identity:
        """"192.0.2.1" (address), "@gw.example" or "gw.example" (FQDN), "user@example"
        (RFC 822), "C=XX, O=Org, CN=gw" (DN, in DER order), "keyid:0a0b" (key id)."""
        text = text.strip()
        if not text:
            raise ValueError("empty identity")
        try:
            addr = ipaddress.ip_address(text)
        except ValueError:
            pass
        else:
            return cls(IdType.IPV4_ADDR if addr.version == 4 else IdType.IPV6_ADDR, addr.packed)
        if text.startswith("keyid:"):
            return cls(IdType.KEY_ID, bytes.fromhex(text[6:]))
        if text.startswith("@"):
            return cls(IdType.FQDN, text[1:].encode())
        if "=" in text:
            return cls(IdType.DER_ASN1_DN, _dn_from_text(text).public_bytes(), text)
        if "@" in text:
            return cls(IdType.RFC822_ADDR, text.encode())
        return cls(IdType.FQDN, text.encode())

    @classmethod
    def from_address(cls, addr: str) -> Identity:
        parsed = ts.address(addr)  # parsed once per address
        return cls(IdType.IPV4_ADDR if parsed.version == 4 else IdType.IPV6_ADDR, parsed.packed)

    def __str__(self) -> str:
        if self.id_type in (IdType.IPV4_ADDR, IdType.IPV6_ADDR) and len(self.data) in (4, 16):
            return str(ipaddress.ip_address(self.data))
        if self.id_type in (IdType.FQDN, IdType.RFC822_ADDR):
            return self.data.decode(errors="replace")
        if self.id_type == IdType.DER_ASN1_DN:
            return self.text or f"dn:{self.data.hex()}"
        if self.id_type == IdType.KEY_ID:
            return f"keyid:{self.data.hex()}"
        return f"id{self.id_type}:{self.data.hex()}"


def _dn_from_text(text: str) -> x509.Name:
    """strongSwan writes DNs in DER order ("C=.., O=.., CN=.."); RFC 4514 reverses it."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    try:
        return x509.Name.from_rfc4514_string(",".join(reversed(parts)))
    except ValueError as exc:
        raise ValueError(f"bad distinguished name {text!r}: {exc}") from None


class AuthMethodName(StrEnum):
    PSK = "psk"
    PUBKEY = "pubkey"


@dataclass(frozen=True, slots=True)
class LocalAuth:
    """How we prove who we are."""

    method: AuthMethodName
    psk: bytes | None = field(default=None, repr=False)
    private_key: CertificateIssuerPrivateKeyTypes | None = field(default=None, repr=False)
    certificate: x509.Certificate | None = None
    intermediates: tuple[x509.Certificate, ...] = ()
    # set: we authenticate with EAP (RFC 7296 2.16), a new client per IKE SA
    eap: Callable[[], EapClient] | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class RemoteAuth:
    """How the peer must prove who it is."""

    method: AuthMethodName
    psk: bytes | None = field(default=None, repr=False)
    trust: TrustStore | None = None
    # set: the peer authenticates with EAP against this server (we are the gateway)
    eap: EapServerFactory | None = field(default=None, repr=False)
    revocation: RevocationPolicy = RevocationPolicy.RELAXED  # strongSwan's default
    crls: RevocationStore | None = None  # the daemon's (shared); None: nothing known


class SendCert(StrEnum):
    """When we send our certificate (CERT payloads) with pubkey authentication."""

    ALWAYS = "always"
    IFASKED = "ifasked"  # only if the peer sent a CERTREQ (strongSwan's default)
    NEVER = "never"  # the peer has our certificate already


class Mode(StrEnum):
    TUNNEL = "tunnel"
    TRANSPORT = "transport"


@dataclass(frozen=True, slots=True)
class ChildConfig:
    """One CHILD_SA of a connection. Empty selectors mean "dynamic": our/their IKE address
    (or the virtual IP assigned)."""

    name: str
    local_ts: tuple[TrafficSelector, ...] = ()
    remote_ts: tuple[TrafficSelector, ...] = ()
    mode: Mode = Mode.TUNNEL
    proposals: tuple[ProposalSpec, ...] = DEFAULT_ESP
    rekey_time: float = 3600.0
    life_time: float = 3960.0
    rekey_bytes: int = 0
    life_bytes: int = 0
    rekey_packets: int = 0
    life_packets: int = 0


@dataclass(frozen=True, slots=True)
class Retransmit:
    """strongSwan's defaults: 4 s, growing by 1.8, five retransmits (gives up after ~165 s)."""

    timeout: float = 4.0
    base: float = 1.8
    tries: int = 5

    def delay(self, attempt: int) -> float:
        return self.timeout * self.base**attempt


@dataclass(frozen=True, slots=True)
class IkeConfig:
    """One connection as the IKE core sees it."""

    name: str
    local_auth: LocalAuth
    remote_auth: RemoteAuth
    local_addrs: tuple[str, ...] = ()  # addresses or prefixes we answer on; empty: any
    remote_addrs: tuple[str, ...] = ()  # peers we accept; empty: any (remote access)
    local_id: Identity | None = None  # None: our IP address
    remote_id: Identity | None = None  # None: any identity the auth proves
    proposals: tuple[ProposalSpec, ...] = DEFAULT_IKE
    children: tuple[ChildConfig, ...] = ()
    rekey_time: float = 14400.0  # 0: never
    reauth_time: float = 0.0  # 0: never (RFC 7296 2.8.3, the daemon reauthenticates)
    over_time: float = 0.0  # hard lifetime after rekey/reauth time; 0: 10% of the larger
    dpd_delay: float = 30.0  # 0: no liveness checks
    retransmit: Retransmit = Retransmit()
    half_open_timeout: float = 30.0
    fragmentation: bool = True
    # strongSwan's fragmentation=force: fragment large messages even if the peer did not
    # announce IKEV2_FRAGMENTATION_SUPPORTED (IKE_SA_INIT is never fragmented, RFC 7383)
    force_fragmentation: bool = False
    fragment_size: int = 1280
    send_certreq: bool = True
    send_cert: SendCert = SendCert.IFASKED
    request_virtual_ip: bool = False
    pool: AddressPoolLike | None = None
    dns: tuple[str, ...] = ()  # DNS servers for the peer, with its virtual IP
    force_encap: bool = False
    initial_contact: bool = True
    # MOBIKE (RFC 4555): offer MOBIKE_SUPPORTED in IKE_AUTH; with both ends for it the
    # initiator moves the IKE_SA and its CHILD_SAs when its address changes
    mobike: bool = False
    # RFC 8784 postquantum preshared key: the PPK and its PPK_ID; required: no IKE SA
    # without it (else a peer without PPK support or that PPK is accepted)
    ppk: bytes | None = field(default=None, repr=False)
    ppk_id: bytes | None = None
    ppk_required: bool = False

    def accepts(self, local: str, remote: str) -> bool:
        """Whether an IKE_SA_INIT from `remote` to `local` may belong to this connection."""
        return _addr_in(local, self.local_addrs) and _addr_in(remote, self.remote_addrs)

    def child(self, name: str) -> ChildConfig:
        for c in self.children:
            if c.name == name:
                return c
        raise KeyError(name)


def _addr_in(address: str, allowed: tuple[str, ...]) -> bool:
    if not allowed:
        return True
    addr = ipaddress.ip_address(address)
    for entry in allowed:
        if entry in ("%any", "0.0.0.0/0", "::/0"):
            return True
        try:
            if addr in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            continue  # a hostname: the daemon resolves those
    return False


class AddressPoolLike:
    """Interface of a virtual IP pool (see pool.py)."""

    def acquire(self, owner: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        raise NotImplementedError

    def claim(self, owner: str,
              address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        raise NotImplementedError

    def release(self, owner: str) -> None:
        raise NotImplementedError
