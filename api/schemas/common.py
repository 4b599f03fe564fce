"""Field types shared by the schemas: bounded strings and numbers, addresses, selectors,
proposal strings. Every bound matches a database column so bad input is a 422, never
a database error."""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from typing import Annotated, Generic, Literal, TypeVar

from cryptography import x509
from pydantic import AfterValidator, BaseModel, BeforeValidator, Field, StringConstraints

from xfrmctl.ike import ts
from xfrmctl.ike.config import Identity as IkeIdentity
from xfrmctl.ike.constants import ProtocolId
from xfrmctl.ike.proposals import parse_proposals

T = TypeVar("T")

INT32 = 2**31 - 1
UINT32 = 2**32 - 1
INT63 = 2**63 - 1
_IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
_HOSTNAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?)+$")


# Bidirectional overrides and isolates: they make text display as something it is not.
_BIDI_CONTROLS = frozenset(range(0x202A, 0x202F)) | frozenset(range(0x2066, 0x206A))


def _printable(value: str) -> str:
    """No control characters: C0, DEL, C1 (U+0080..U+009F), lone surrogates, and bidi
    overrides (they corrupt terminals and logs, or hide what text says)."""
    for char in value:
        if unicodedata.category(char) in ("Cc", "Cs") or ord(char) in _BIDI_CONTROLS:
            raise ValueError(f"control character U+{ord(char):04X} is not allowed")
    return value


def _identity(value: str) -> str:
    try:
        IkeIdentity.parse(value)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not an IKE identity: {exc}") from None
    return value


Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]


def _int_as_text(value: object) -> object:
    """A JSON integer version (3) is the text "3"."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


# A secret's version: the operator's label for its value ("3", "2026-12", "v2.1").
Version = Annotated[str, BeforeValidator(_int_as_text),
                    StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:+-]{0,63}$")]
Text = Annotated[str, StringConstraints(max_length=1000), AfterValidator(_printable)]
Identity = Annotated[str, StringConstraints(min_length=1, max_length=255),
                     AfterValidator(_printable), AfterValidator(_identity)]
Id = Annotated[int, Field(ge=1, le=INT32)]
Port = Annotated[int, Field(ge=1, le=65535)]
Seconds = Annotated[int, Field(ge=0, le=INT32)]
Count64 = Annotated[int, Field(ge=0, le=INT63)]
U32 = Annotated[int, Field(ge=0, le=UINT32)]
# TCP MSS clamping of a child: auto (what fits after ESP), off, or the MSS itself
Mss = Annotated[Literal["auto", "off"] | Annotated[int, Field(ge=536, le=65495)], Field(
    description="TCP MSS clamping of SYNs through the tunnel: auto (what fits after the "
                "negotiated ESP overhead on the outgoing interface's MTU), off, or an MSS")]


def _address(value: str) -> str:
    """An IP address, a prefix, a DNS name, or %any."""
    if value == "%any":
        return value
    try:
        return str(ipaddress.ip_network(value, strict=True)) if "/" in value \
            else str(ipaddress.ip_address(value))
    except ValueError:
        pass
    if value.rstrip(".").rsplit(".", 1)[-1].isdigit():  # 300.1.1.1, 10.1: no DNS name
        raise ValueError(f"{value!r} is not a valid IP address")
    if _HOSTNAME.match(value):
        return value
    raise ValueError(f"{value!r} is not an IP address, prefix, DNS name or %any")


def _prefix(value: str) -> str:
    """A traffic selector: a prefix (host bits zero) or an address, optionally with
    `[protocol/port]` as the daemon reads it (e.g. 198.51.100.0/24[udp/53]); 'dynamic' =
    own IP."""
    if value == "dynamic":
        return value
    net, bracket, spec = value.partition("[")
    try:
        network = str(ipaddress.ip_network(net, strict=True))
        if bracket:
            ts.parse(value)  # the [protocol/port] part
    except ValueError as exc:
        raise ValueError(f"{value!r} is not a valid prefix: {exc}") from None
    return network + bracket + spec


def _interface_address(value: str) -> str:
    try:
        return str(ipaddress.ip_interface(value))
    except ValueError as exc:
        raise ValueError(f"{value!r} is not an address with prefix length: {exc}") from None


def _interface_name(value: str) -> str:
    """A Linux interface name (dev_valid_name): 1-15 bytes, not . or .., no slash, colon
    or whitespace; letters, digits, _ . - only, to be safe in every tool."""
    if value in (".", ".."):
        raise ValueError(f"{value!r} is not an interface name")
    if not _IFNAME.match(value):
        raise ValueError("an interface name is 1-15 characters of A-Z a-z 0-9 _ . -")
    return value


def _certificates(value: str) -> str:
    """PEM with one or more X.509 certificates that parse completely (extensions too:
    a duplicated extension is refused here, not when the daemon loads it)."""
    _printable(value.replace("\n", "").replace("\r", ""))
    try:
        for cert in x509.load_pem_x509_certificates(value.encode()):
            _ = cert.extensions, cert.subject.rfc4514_string(), cert.issuer.rfc4514_string()
            _ = cert.public_key()
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as exc:
        raise ValueError(f"not a usable PEM X.509 certificate: {exc}") from None
    return value


Address = Annotated[str, StringConstraints(max_length=253), AfterValidator(_address)]
InterfaceName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,15}$"),
                          AfterValidator(_interface_name)]
CertificatePem = Annotated[str, StringConstraints(min_length=1, max_length=65536),
                           AfterValidator(_certificates)]
ProposalText = Annotated[str, StringConstraints(min_length=1, max_length=1000),
                         AfterValidator(_printable)]
Prefix = Annotated[str, StringConstraints(max_length=64), AfterValidator(_prefix)]
InterfaceAddress = Annotated[str, StringConstraints(max_length=64),
                             AfterValidator(_interface_address)]
AddressList = Annotated[list[Address], Field(max_length=32)]
PrefixList = Annotated[list[Prefix], Field(max_length=64)]


def check_proposals(text: str, protocol: ProtocolId) -> str:
    """Validate a strongSwan-style proposal list; ValueError names the bad keyword."""
    _printable(text)
    parse_proposals(text, protocol)
    return text


def _ike(text: str) -> str:
    return check_proposals(text, ProtocolId.IKE)


def _esp(text: str) -> str:
    return check_proposals(text, ProtocolId.ESP)


def _ah(text: str) -> str:
    return check_proposals(text, ProtocolId.AH)


IkeProposals = Annotated[str, StringConstraints(min_length=1, max_length=1000),
                         AfterValidator(_ike)]
EspProposals = Annotated[str, StringConstraints(min_length=1, max_length=1000),
                         AfterValidator(_esp)]
AhProposals = Annotated[str, StringConstraints(min_length=1, max_length=1000),
                        AfterValidator(_ah)]


class Page(BaseModel, Generic[T]):
    """A page of a list: `data` and the total `count` matching the filters."""

    data: list[T]
    count: int


class Message(BaseModel):
    message: str
