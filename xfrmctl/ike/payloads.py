"""IKEv2 payloads (RFC 7296 section 3): one frozen dataclass each, plus pull/push tables.

`pull_payload` reads one payload body from a buffer, `push_payload` writes one body;
`pull_chain` / `push_chain` walk the Next Payload chain with the generic headers.
Every malformed input raises `ProtocolError` naming what and the offset in the buffer.

Receive rules (RFC 7296 2.5): reserved fields are ignored, lengths and counts are
checked strictly. Unknown transform attributes are kept raw and make the transform
unusable (`Transform.usable`), they do not make the message malformed.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address
from typing import Any, ClassVar, TypeAlias

from .constants import (
    PAYLOAD_HEADER_SIZE,
    IdType,
    NotifyType,
    PayloadType,
    ProtocolId,
    TransformAttr,
    TransformType,
    TsType,
)
from .errors import LocalError, ProtocolError

# --- precompiled layouts -------------------------------------------------------------

GENERIC_HEADER = struct.Struct("!BBH")  # next payload, C flag + reserved, length
_U8 = struct.Struct("!B")
_U16 = struct.Struct("!H")
_PROPOSAL = struct.Struct("!BBHBBBB")  # last, reserved, length, num, protocol, spi size, count
_TRANSFORM = struct.Struct("!BBHBBH")  # last, reserved, length, type, reserved, id
_ATTR = struct.Struct("!HH")  # AF bit + type, value (TV) or length (TLV)
_KE = struct.Struct("!HH")  # group, reserved
_TYPE_RESERVED3 = struct.Struct("!B3x")  # ID, AUTH, TS count, CP type: one octet + 3 reserved
_NOTIFY = struct.Struct("!BBH")  # protocol, spi size, notify type
_DELETE = struct.Struct("!BBH")  # protocol, spi size, num spis
_TS_HEAD = struct.Struct("!BBHHH")  # ts type, ip protocol, length, start port, end port
_CFG_ATTR = struct.Struct("!HH")  # R bit + type, length
_EAP_HEAD = struct.Struct("!BBH")  # code, identifier, length

CRITICAL = 0x80
_LAST_PROPOSAL, _MORE_PROPOSALS = 0, 2
_LAST_TRANSFORM, _MORE_TRANSFORMS = 0, 3
_AF_TV = 0x8000
NONCE_MIN, NONCE_MAX = 16, 256
MAX_BODY = 0xFFFF - PAYLOAD_HEADER_SIZE

_TRANSFORM_TYPES = {t.value: t for t in TransformType}
_PROTOCOLS = {p.value: p for p in ProtocolId}
_TS_FAMILY: dict[int, tuple[int, type[IPv4Address] | type[IPv6Address]]] = {
    TsType.IPV4_ADDR_RANGE: (4, IPv4Address),
    TsType.IPV6_ADDR_RANGE: (16, IPv6Address),
}
_DELETE_SPI_SIZE = {ProtocolId.IKE: 0, ProtocolId.AH: 4, ProtocolId.ESP: 4}


# --- payload classes -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Transform:
    type: TransformType | int
    id: int
    key_length: int | None = None
    # Raw attributes other than one Key Length: present means "do not select this".
    unknown_attributes: bytes = b""

    @property
    def usable(self) -> bool:
        return not self.unknown_attributes and isinstance(self.type, TransformType)


@dataclass(frozen=True, slots=True)
class Proposal:
    number: int
    protocol: ProtocolId | int
    spi: bytes
    transforms: tuple[Transform, ...]


@dataclass(frozen=True, slots=True)
class SaPayload:
    payload_type: ClassVar[int] = PayloadType.SA
    proposals: tuple[Proposal, ...]


@dataclass(frozen=True, slots=True)
class KePayload:
    payload_type: ClassVar[int] = PayloadType.KE
    group: int
    data: bytes


@dataclass(frozen=True, slots=True)
class IdiPayload:
    payload_type: ClassVar[int] = PayloadType.IDI
    id_type: int
    data: bytes


@dataclass(frozen=True, slots=True)
class IdrPayload:
    payload_type: ClassVar[int] = PayloadType.IDR
    id_type: int
    data: bytes


@dataclass(frozen=True, slots=True)
class CertPayload:
    payload_type: ClassVar[int] = PayloadType.CERT
    encoding: int
    data: bytes


@dataclass(frozen=True, slots=True)
class CertReqPayload:
    payload_type: ClassVar[int] = PayloadType.CERTREQ
    encoding: int
    data: bytes


@dataclass(frozen=True, slots=True)
class AuthPayload:
    payload_type: ClassVar[int] = PayloadType.AUTH
    method: int
    data: bytes


@dataclass(frozen=True, slots=True)
class NoncePayload:
    payload_type: ClassVar[int] = PayloadType.NONCE
    data: bytes


@dataclass(frozen=True, slots=True)
class NotifyPayload:
    payload_type: ClassVar[int] = PayloadType.NOTIFY
    notify_type: int
    protocol: int = 0
    spi: bytes = b""
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class DeletePayload:
    payload_type: ClassVar[int] = PayloadType.DELETE
    protocol: ProtocolId
    spis: tuple[bytes, ...] = ()


@dataclass(frozen=True, slots=True)
class VendorPayload:
    payload_type: ClassVar[int] = PayloadType.VENDOR
    data: bytes


@dataclass(frozen=True, slots=True)
class TrafficSelector:
    ts_type: TsType
    ip_protocol: int
    start_port: int
    end_port: int
    start_addr: IPv4Address | IPv6Address
    end_addr: IPv4Address | IPv6Address


@dataclass(frozen=True, slots=True)
class TsiPayload:
    payload_type: ClassVar[int] = PayloadType.TSI
    selectors: tuple[TrafficSelector, ...]


@dataclass(frozen=True, slots=True)
class TsrPayload:
    payload_type: ClassVar[int] = PayloadType.TSR
    selectors: tuple[TrafficSelector, ...]


@dataclass(frozen=True, slots=True)
class CfgAttribute:
    attr_type: int
    value: bytes


@dataclass(frozen=True, slots=True)
class CpPayload:
    payload_type: ClassVar[int] = PayloadType.CP
    cfg_type: int
    attributes: tuple[CfgAttribute, ...]


@dataclass(frozen=True, slots=True)
class EapPayload:
    payload_type: ClassVar[int] = PayloadType.EAP
    data: bytes = field(repr=False)  # may carry credentials (EAP-GTC, MSCHAPv2)


@dataclass(frozen=True, slots=True)
class UnknownPayload:
    payload_type: int
    critical: bool
    data: bytes


Payload: TypeAlias = (
    SaPayload
    | KePayload
    | IdiPayload
    | IdrPayload
    | CertPayload
    | CertReqPayload
    | AuthPayload
    | NoncePayload
    | NotifyPayload
    | DeletePayload
    | VendorPayload
    | TsiPayload
    | TsrPayload
    | CpPayload
    | EapPayload
    | UnknownPayload
)


def payload_type_of(p: Payload) -> int:
    return p.payload_type


def id_body(p: IdiPayload | IdrPayload) -> bytes:
    """ID Type, 3 reserved octets and data: the RestOfIDPayload AUTH signs (RFC 7296 2.15)."""
    return _TYPE_RESERVED3.pack(p.id_type) + p.data


def _name(ptype: int) -> str:
    try:
        return PayloadType(ptype).name
    except ValueError:
        return f"payload {ptype}"


# --- pull: body bytes -> payload ------------------------------------------------------
# Each pull function reads data[start:end] (the body after the generic header).


def _need(end: int, at: int, size: int, what: str) -> None:
    if at + size > end:
        raise ProtocolError(f"{what} truncated", offset=at)


def _pull_attributes(data: bytes, start: int, end: int) -> tuple[int | None, bytes]:
    key_length: int | None = None
    unknown = bytearray()
    at = start
    while at < end:
        _need(end, at, 4, "transform attribute")
        af_type, value = _ATTR.unpack_from(data, at)
        size = 4 if af_type & _AF_TV else 4 + value
        _need(end, at, size, "transform attribute")
        if af_type == _AF_TV | TransformAttr.KEY_LENGTH and key_length is None:
            key_length = value
        else:
            unknown += data[at : at + size]
        at += size
    return key_length, bytes(unknown)


def _pull_transform(data: bytes, at: int, end: int) -> tuple[Transform, int, bool]:
    _need(end, at, _TRANSFORM.size, "transform")
    last, _, length, ttype, _, tid = _TRANSFORM.unpack_from(data, at)
    if length < _TRANSFORM.size or at + length > end:
        raise ProtocolError(f"transform length {length} is wrong", offset=at)
    if last not in (_LAST_TRANSFORM, _MORE_TRANSFORMS):
        raise ProtocolError(f"transform substructure type {last}", offset=at)
    key_length, unknown = _pull_attributes(data, at + _TRANSFORM.size, at + length)
    transform = Transform(_TRANSFORM_TYPES.get(ttype, ttype), tid, key_length, unknown)
    return transform, at + length, last == _MORE_TRANSFORMS


def _pull_proposal(data: bytes, at: int, end: int) -> tuple[Proposal, int, bool]:
    _need(end, at, _PROPOSAL.size, "proposal")
    last, _, length, number, protocol, spi_size, count = _PROPOSAL.unpack_from(data, at)
    if length < _PROPOSAL.size + spi_size or at + length > end:
        raise ProtocolError(f"proposal length {length} is wrong", offset=at)
    if last not in (_LAST_PROPOSAL, _MORE_PROPOSALS):
        raise ProtocolError(f"proposal substructure type {last}", offset=at)
    spi_at = at + _PROPOSAL.size
    pos, stop = spi_at + spi_size, at + length
    transforms: list[Transform] = []
    more = pos < stop
    while more:
        transform, pos, more = _pull_transform(data, pos, stop)
        transforms.append(transform)
        if more and pos >= stop:
            raise ProtocolError("transform says more follow but proposal ends", offset=pos)
    if pos != stop or len(transforms) != count:
        raise ProtocolError(
            f"proposal {number} announces {count} transforms, holds {len(transforms)}",
            offset=at,
        )
    proposal = Proposal(
        number,
        _PROTOCOLS.get(protocol, protocol),
        data[spi_at : spi_at + spi_size],
        tuple(transforms),
    )
    return proposal, stop, last == _MORE_PROPOSALS


def _pull_sa(data: bytes, start: int, end: int) -> SaPayload:
    proposals: list[Proposal] = []
    at, more = start, start < end
    while more:
        proposal, at, more = _pull_proposal(data, at, end)
        proposals.append(proposal)
        if more and at >= end:
            raise ProtocolError("proposal says more follow but SA ends", offset=at)
    if at != end:
        raise ProtocolError("octets after last proposal", offset=at)
    if not proposals:
        raise ProtocolError("SA payload without proposals", offset=start)
    return SaPayload(tuple(proposals))


def _pull_ke(data: bytes, start: int, end: int) -> KePayload:
    _need(end, start, _KE.size, "KE payload")
    group, _ = _KE.unpack_from(data, start)
    return KePayload(group, data[start + _KE.size : end])


def _pull_typed(data: bytes, start: int, end: int, what: str) -> tuple[int, bytes]:
    _need(end, start, _TYPE_RESERVED3.size, what)
    return _TYPE_RESERVED3.unpack_from(data, start)[0], data[start + 4 : end]


# RFC 7296 3.5: an address identity is exactly the address's octets
_ID_ADDRESS_LENGTHS: dict[int, int] = {IdType.IPV4_ADDR: 4, IdType.IPV6_ADDR: 16}


def _pull_identity(data: bytes, start: int, end: int, what: str) -> tuple[int, bytes]:
    id_type, body = _pull_typed(data, start, end, what)
    length = _ID_ADDRESS_LENGTHS.get(id_type)
    if length is not None and len(body) != length:
        raise ProtocolError(f"{what}: an address identity of {len(body)} octets, not "
                            f"{length}", offset=start)
    return id_type, body


def _pull_idi(data: bytes, start: int, end: int) -> IdiPayload:
    return IdiPayload(*_pull_identity(data, start, end, "IDi payload"))


def _pull_idr(data: bytes, start: int, end: int) -> IdrPayload:
    return IdrPayload(*_pull_identity(data, start, end, "IDr payload"))


def _pull_auth(data: bytes, start: int, end: int) -> AuthPayload:
    return AuthPayload(*_pull_typed(data, start, end, "AUTH payload"))


def _pull_encoded(data: bytes, start: int, end: int, what: str) -> tuple[int, bytes]:
    _need(end, start, 1, what)
    return data[start], data[start + 1 : end]


def _pull_cert(data: bytes, start: int, end: int) -> CertPayload:
    return CertPayload(*_pull_encoded(data, start, end, "CERT payload"))


def _pull_certreq(data: bytes, start: int, end: int) -> CertReqPayload:
    return CertReqPayload(*_pull_encoded(data, start, end, "CERTREQ payload"))


def _pull_nonce(data: bytes, start: int, end: int) -> NoncePayload:
    if not NONCE_MIN <= end - start <= NONCE_MAX:
        raise ProtocolError(f"nonce of {end - start} octets (16..256)", offset=start)
    return NoncePayload(data[start:end])


def _pull_notify(data: bytes, start: int, end: int) -> NotifyPayload:
    _need(end, start, _NOTIFY.size, "notify payload")
    protocol, spi_size, ntype = _NOTIFY.unpack_from(data, start)
    spi_at = start + _NOTIFY.size
    _need(end, spi_at, spi_size, "notify SPI")
    return NotifyPayload(
        ntype, protocol, data[spi_at : spi_at + spi_size], data[spi_at + spi_size : end]
    )


def _pull_delete(data: bytes, start: int, end: int) -> DeletePayload:
    _need(end, start, _DELETE.size, "delete payload")
    protocol, spi_size, count = _DELETE.unpack_from(data, start)
    expected = _DELETE_SPI_SIZE.get(protocol)
    if expected is None or spi_size != expected:
        raise ProtocolError(f"delete protocol {protocol} with SPI size {spi_size}", offset=start)
    at = start + _DELETE.size
    if end - at != count * spi_size or (spi_size == 0 and count):
        raise ProtocolError(f"delete announces {count} SPIs in {end - at} octets", offset=start)
    spis = tuple(data[i : i + spi_size] for i in range(at, end, spi_size)) if spi_size else ()
    return DeletePayload(ProtocolId(protocol), spis)


def _pull_vendor(data: bytes, start: int, end: int) -> VendorPayload:
    return VendorPayload(data[start:end])


def _pull_selectors(data: bytes, start: int, end: int) -> tuple[TrafficSelector, ...]:
    _need(end, start, _TYPE_RESERVED3.size, "TS payload")
    count = data[start]
    selectors: list[TrafficSelector] = []
    at = start + _TYPE_RESERVED3.size
    while at < end:
        _need(end, at, _TS_HEAD.size, "traffic selector")
        ts_type, proto, length, sport, eport = _TS_HEAD.unpack_from(data, at)
        family = _TS_FAMILY.get(ts_type)
        if family is None:
            raise ProtocolError(f"traffic selector type {ts_type} unsupported", offset=at)
        size, address = family
        if length != _TS_HEAD.size + 2 * size or at + length > end:
            raise ProtocolError(f"traffic selector length {length} is wrong", offset=at)
        addr_at = at + _TS_HEAD.size
        selectors.append(
            TrafficSelector(
                TsType(ts_type),
                proto,
                sport,
                eport,
                address(data[addr_at : addr_at + size]),
                address(data[addr_at + size : addr_at + 2 * size]),
            )
        )
        at += length
    if len(selectors) != count:
        raise ProtocolError(f"TS announces {count} selectors, holds {len(selectors)}", offset=start)
    return tuple(selectors)


def _pull_tsi(data: bytes, start: int, end: int) -> TsiPayload:
    return TsiPayload(_pull_selectors(data, start, end))


def _pull_tsr(data: bytes, start: int, end: int) -> TsrPayload:
    return TsrPayload(_pull_selectors(data, start, end))


def _pull_cp(data: bytes, start: int, end: int) -> CpPayload:
    _need(end, start, _TYPE_RESERVED3.size, "CP payload")
    attributes: list[CfgAttribute] = []
    at = start + _TYPE_RESERVED3.size
    while at < end:
        _need(end, at, _CFG_ATTR.size, "configuration attribute")
        rtype, length = _CFG_ATTR.unpack_from(data, at)
        _need(end, at, _CFG_ATTR.size + length, "configuration attribute")
        value_at = at + _CFG_ATTR.size
        attributes.append(CfgAttribute(rtype & 0x7FFF, data[value_at : value_at + length]))
        at = value_at + length
    return CpPayload(data[start], tuple(attributes))


def _pull_eap(data: bytes, start: int, end: int) -> EapPayload:
    _need(end, start, _EAP_HEAD.size, "EAP payload")
    length = _EAP_HEAD.unpack_from(data, start)[2]
    if length != end - start:
        raise ProtocolError(f"EAP length {length} in {end - start} octets", offset=start)
    return EapPayload(data[start:end])


# --- push: payload -> body bytes ------------------------------------------------------


def _push_attributes(t: Transform) -> bytes:
    if t.key_length is None:
        return t.unknown_attributes
    return _ATTR.pack(_AF_TV | TransformAttr.KEY_LENGTH, t.key_length) + t.unknown_attributes


def _push_proposal(p: Proposal, last: bool) -> bytes:
    parts: list[bytes] = []
    for i, t in enumerate(p.transforms):
        attrs = _push_attributes(t)
        more = _LAST_TRANSFORM if i == len(p.transforms) - 1 else _MORE_TRANSFORMS
        parts.append(_TRANSFORM.pack(more, 0, _TRANSFORM.size + len(attrs), t.type, 0, t.id))
        parts.append(attrs)
    body = b"".join(parts)
    length = _PROPOSAL.size + len(p.spi) + len(body)
    head = _PROPOSAL.pack(
        _LAST_PROPOSAL if last else _MORE_PROPOSALS,
        0,
        length,
        p.number,
        p.protocol,
        len(p.spi),
        len(p.transforms),
    )
    return head + p.spi + body


def _push_sa(p: SaPayload) -> bytes:
    n = len(p.proposals)
    return b"".join(_push_proposal(x, i == n - 1) for i, x in enumerate(p.proposals))


def _push_ke(p: KePayload) -> bytes:
    return _KE.pack(p.group, 0) + p.data


def _push_typed(p: IdiPayload | IdrPayload) -> bytes:
    return _TYPE_RESERVED3.pack(p.id_type) + p.data


def _push_auth(p: AuthPayload) -> bytes:
    return _TYPE_RESERVED3.pack(p.method) + p.data


def _push_encoded(p: CertPayload | CertReqPayload) -> bytes:
    return _U8.pack(p.encoding) + p.data


def _push_data(p: NoncePayload | VendorPayload | EapPayload) -> bytes:
    return p.data


def _push_notify(p: NotifyPayload) -> bytes:
    return _NOTIFY.pack(p.protocol, len(p.spi), p.notify_type) + p.spi + p.data


def _push_delete(p: DeletePayload) -> bytes:
    size = _DELETE_SPI_SIZE.get(p.protocol)
    if size is None:
        raise LocalError(f"cannot delete protocol {p.protocol}")
    if any(len(spi) != size for spi in p.spis) or (size == 0 and p.spis):
        raise LocalError(f"delete of {p.protocol} needs {size}-octet SPIs")
    return _DELETE.pack(p.protocol, size, len(p.spis)) + b"".join(p.spis)


def _push_selector(ts: TrafficSelector) -> bytes:
    size = _TS_FAMILY[ts.ts_type][0]
    addrs = ts.start_addr.packed + ts.end_addr.packed
    if len(addrs) != 2 * size:
        raise LocalError(f"addresses of {ts} do not match {ts.ts_type.name}")
    head = _TS_HEAD.pack(
        ts.ts_type, ts.ip_protocol, _TS_HEAD.size + 2 * size, ts.start_port, ts.end_port
    )
    return head + addrs


def _push_ts(p: TsiPayload | TsrPayload) -> bytes:
    head = _TYPE_RESERVED3.pack(len(p.selectors))
    return head + b"".join(_push_selector(ts) for ts in p.selectors)


def _push_cp(p: CpPayload) -> bytes:
    attrs = b"".join(_CFG_ATTR.pack(a.attr_type, len(a.value)) + a.value for a in p.attributes)
    return _TYPE_RESERVED3.pack(p.cfg_type) + attrs


def _push_unknown(p: UnknownPayload) -> bytes:
    return p.data


# --- tables ---------------------------------------------------------------------------

_Pull: TypeAlias = Callable[[bytes, int, int], Payload]

PULL: dict[int, _Pull] = {
    PayloadType.SA: _pull_sa,
    PayloadType.KE: _pull_ke,
    PayloadType.IDI: _pull_idi,
    PayloadType.IDR: _pull_idr,
    PayloadType.CERT: _pull_cert,
    PayloadType.CERTREQ: _pull_certreq,
    PayloadType.AUTH: _pull_auth,
    PayloadType.NONCE: _pull_nonce,
    PayloadType.NOTIFY: _pull_notify,
    PayloadType.DELETE: _pull_delete,
    PayloadType.VENDOR: _pull_vendor,
    PayloadType.TSI: _pull_tsi,
    PayloadType.TSR: _pull_tsr,
    PayloadType.CP: _pull_cp,
    PayloadType.EAP: _pull_eap,
}

PUSH: dict[type, Callable[[Any], bytes]] = {
    SaPayload: _push_sa,
    KePayload: _push_ke,
    IdiPayload: _push_typed,
    IdrPayload: _push_typed,
    CertPayload: _push_encoded,
    CertReqPayload: _push_encoded,
    AuthPayload: _push_auth,
    NoncePayload: _push_data,
    NotifyPayload: _push_notify,
    DeletePayload: _push_delete,
    VendorPayload: _push_data,
    TsiPayload: _push_ts,
    TsrPayload: _push_ts,
    CpPayload: _push_cp,
    EapPayload: _push_data,
    UnknownPayload: _push_unknown,
}

ENCRYPTED_TYPES = frozenset({PayloadType.SK, PayloadType.SKF})


def pull_payload(ptype: int, critical: bool, data: bytes, start: int, end: int) -> Payload:
    """Parse one payload body data[start:end] of type `ptype`."""
    pull = PULL.get(ptype)
    if pull is not None:
        return pull(data, start, end)
    if critical:
        raise ProtocolError(
            f"unsupported critical payload {ptype}",
            offset=start - PAYLOAD_HEADER_SIZE,
            notify=NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD,
            notify_data=bytes([ptype]),
        )
    return UnknownPayload(ptype, critical, data[start:end])


def push_payload(p: Payload) -> bytes:
    """Serialize one payload body (without the generic header)."""
    try:
        return PUSH[type(p)](p)
    except struct.error as exc:
        raise LocalError(f"{p!r} does not fit its wire format: {exc}") from None


def pull_chain(
    data: bytes, start: int, end: int, first: int, *, stop_at_encrypted: bool = False
) -> tuple[list[Payload], int, int]:
    """Parse the payload chain in data[start:end] beginning with type `first`.

    Returns (payloads, type, offset): type is NONE when the chain ended exactly at
    `end`, or SK/SKF (only with `stop_at_encrypted`) with the offset of its header.
    """
    payloads: list[Payload] = []
    ptype, at = first, start
    while ptype != PayloadType.NONE:
        if ptype in ENCRYPTED_TYPES:
            if stop_at_encrypted:
                return payloads, ptype, at
            raise ProtocolError(f"{_name(ptype)} inside encrypted payload", offset=at)
        if at + PAYLOAD_HEADER_SIZE > end:
            raise ProtocolError(f"{_name(ptype)} header truncated", offset=at)
        next_type, flags, length = GENERIC_HEADER.unpack_from(data, at)
        if length < PAYLOAD_HEADER_SIZE or at + length > end:
            raise ProtocolError(f"{_name(ptype)} length {length} is wrong", offset=at)
        payloads.append(
            pull_payload(ptype, bool(flags & CRITICAL), data, at + PAYLOAD_HEADER_SIZE, at + length)
        )
        ptype, at = next_type, at + length
    if at != end:
        raise ProtocolError(f"{end - at} octets after the last payload", offset=at)
    return payloads, PayloadType.NONE, at


def push_chain(payloads: Sequence[Payload], last_next: int = PayloadType.NONE) -> bytes:
    """Serialize payloads with generic headers; the last one points at `last_next`."""
    parts: list[bytes] = []
    count = len(payloads)
    for i, p in enumerate(payloads):
        body = push_payload(p)
        if len(body) > MAX_BODY:
            raise LocalError(f"{_name(p.payload_type)} body of {len(body)} octets is too long")
        next_type = payloads[i + 1].payload_type if i + 1 < count else last_next
        flags = CRITICAL if isinstance(p, UnknownPayload) and p.critical else 0
        parts.append(GENERIC_HEADER.pack(next_type, flags, PAYLOAD_HEADER_SIZE + len(body)))
        parts.append(body)
    return b"".join(parts)
