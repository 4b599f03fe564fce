"""Field types shared by the schemas: bounded strings and numbers, addresses, selectors,
proposal strings. Every bound matches a database column so bad input is a 422, never
a database error."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Generic, TypeVar

from pydantic import AfterValidator, BaseModel, Field, StringConstraints

from xfrmctl.ike.constants import ProtocolId
from xfrmctl.ike.proposals import parse_proposals

T = TypeVar("T")

INT32 = 2**31 - 1
UINT32 = 2**32 - 1
INT63 = 2**63 - 1
_HOSTNAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?)+$")


def _printable(value: str) -> str:
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ValueError("control characters are not allowed")
    return value


Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
Text = Annotated[str, StringConstraints(max_length=1000), AfterValidator(_printable)]
Identity = Annotated[str, StringConstraints(min_length=1, max_length=255),
                     AfterValidator(_printable)]
Id = Annotated[int, Field(ge=1, le=INT32)]
Port = Annotated[int, Field(ge=1, le=65535)]
Seconds = Annotated[int, Field(ge=0, le=INT32)]
Count64 = Annotated[int, Field(ge=0, le=INT63)]
U32 = Annotated[int, Field(ge=0, le=UINT32)]


def _address(value: str) -> str:
    """An IP address, a prefix, a DNS name, or %any."""
    if value == "%any":
        return value
    try:
        return str(ipaddress.ip_network(value, strict=True)) if "/" in value \
            else str(ipaddress.ip_address(value))
    except ValueError:
        pass
    if _HOSTNAME.match(value):
        return value
    raise ValueError(f"{value!r} is not an IP address, prefix, DNS name or %any")


def _prefix(value: str) -> str:
    """A traffic selector: a prefix (host bits zero) or an address; 'dynamic' = own IP."""
    if value == "dynamic":
        return value
    try:
        return str(ipaddress.ip_network(value, strict=True))
    except ValueError as exc:
        raise ValueError(f"{value!r} is not a valid prefix: {exc}") from None


def _interface_address(value: str) -> str:
    try:
        return str(ipaddress.ip_interface(value))
    except ValueError as exc:
        raise ValueError(f"{value!r} is not an address with prefix length: {exc}") from None


Address = Annotated[str, StringConstraints(max_length=253), AfterValidator(_address)]
Prefix = Annotated[str, StringConstraints(max_length=64), AfterValidator(_prefix)]
InterfaceAddress = Annotated[str, StringConstraints(max_length=64),
                             AfterValidator(_interface_address)]
AddressList = Annotated[list[Address], Field(max_length=32)]
PrefixList = Annotated[list[Prefix], Field(max_length=64)]


def check_proposals(text: str, protocol: ProtocolId) -> str:
    """Validate a strongSwan-style proposal list; ValueError names the bad keyword."""
    if any(ord(c) < 0x20 for c in text):
        raise ValueError("control characters are not allowed")
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
