"""IKEv2 messages: the IKE header (RFC 7296 3.1), the payload chain and the SK / SKF
payloads (RFC 7296 3.14, RFC 7383 2.5).

`decode` raises `ProtocolError` for every malformed input and nothing else;
`IntegrityError` (a `ProtocolError`) comes from the cipher and means "drop silently".
A decoded SKF datagram is returned with `fragment` set and its payloads not parsed;
`fragment.Reassembler` turns the fragments back into one message.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from . import rules
from .constants import (
    IKE_HEADER_SIZE,
    IKE_VERSION,
    PAYLOAD_HEADER_SIZE,
    ExchangeType,
    HeaderFlag,
    NotifyType,
    PayloadType,
)
from .errors import LocalError, ProtocolError
from .payloads import GENERIC_HEADER, NotifyPayload, Payload, pull_chain, push_chain
from .sk import SkCipher

T = TypeVar("T")

HEADER = struct.Struct("!8s8sBBBBII")  # SPIi, SPIr, next, version, exchange, flags, MID, length
FRAGMENT_FIELDS = struct.Struct("!HH")  # Fragment Number, Total Fragments
SPI_SIZE = 8
MAX_MESSAGE_ID = 0xFFFFFFFF
_EXCHANGES = {e.value: e for e in ExchangeType}
_FLAGS = tuple(HeaderFlag(i) for i in range(256))  # IntFlag() and & are slow per call
_INITIATOR, _RESPONSE = int(HeaderFlag.INITIATOR), int(HeaderFlag.RESPONSE)


@dataclass(frozen=True, slots=True)
class Header:
    spi_i: bytes
    spi_r: bytes
    next_payload: int
    major: int
    minor: int
    exchange: int
    flags: HeaderFlag
    message_id: int
    length: int

    @property
    def is_response(self) -> bool:
        return bool(int(self.flags) & _RESPONSE)

    @property
    def is_initiator(self) -> bool:
        return bool(int(self.flags) & _INITIATOR)


@dataclass(frozen=True, slots=True)
class SkFragment:
    """One decrypted Encrypted Fragment payload (RFC 7383 2.5)."""

    number: int
    total: int
    next_payload: int  # type of the first inner payload; meaningful in fragment 1 only
    plaintext: bytes = field(repr=False)  # this fragment's inner octets, padding removed


@dataclass(slots=True)
class Message:
    exchange: ExchangeType
    spi_i: bytes
    spi_r: bytes
    message_id: int
    is_initiator: bool  # I flag: sent by the original initiator of the IKE SA
    is_response: bool
    payloads: list[Payload] = field(default_factory=list)  # outside SK
    protected: list[Payload] | None = None  # inside SK; None = no SK payload
    fragment: SkFragment | None = None  # set when the datagram was an SKF
    # Decoded messages: the decrypted inner payload octets as received (RFC 9242 IntAuth)
    inner: bytes = field(default=b"", repr=False, compare=False)

    def find(self, cls: type[T]) -> T | None:
        """First payload of type `cls`, searching protected then unprotected payloads."""
        for group in (self.protected or (), self.payloads):
            for p in group:
                if isinstance(p, cls):
                    return p
        return None

    def find_all(self, cls: type[T]) -> list[T]:
        return [
            p
            for group in (self.protected or (), self.payloads)
            for p in group
            if isinstance(p, cls)
        ]

    def notify(self, notify_type: int) -> NotifyPayload | None:
        for p in self.find_all(NotifyPayload):
            if p.notify_type == notify_type:
                return p
        return None

    def notifies(self) -> list[NotifyPayload]:
        return self.find_all(NotifyPayload)

    @property
    def flags(self) -> HeaderFlag:
        return _FLAGS[
            (_INITIATOR if self.is_initiator else 0) | (_RESPONSE if self.is_response else 0)
        ]


# --- header -------------------------------------------------------------------------------


def parse_header(data: bytes) -> Header:
    """Parse the IKE header; checks the version and the Length field against len(data)."""
    if len(data) < IKE_HEADER_SIZE:
        raise ProtocolError(f"IKE header truncated ({len(data)} octets)", offset=0)
    spi_i, spi_r, next_payload, version, exchange, flags, mid, length = HEADER.unpack_from(data)
    major, minor = version >> 4, version & 0x0F
    if major != IKE_VERSION >> 4:
        raise ProtocolError(
            f"IKE major version {major}", offset=17, notify=NotifyType.INVALID_MAJOR_VERSION
        )
    if length != len(data):
        raise ProtocolError(f"IKE header length {length} but {len(data)} octets", offset=24)
    return Header(spi_i, spi_r, next_payload, major, minor, exchange, _FLAGS[flags], mid, length)


def _pack_header(m: Message, next_payload: int, length: int) -> bytes:
    if len(m.spi_i) != SPI_SIZE or len(m.spi_r) != SPI_SIZE:
        raise LocalError("IKE SPIs must be 8 octets")
    if not 0 <= m.message_id <= MAX_MESSAGE_ID:
        raise LocalError(f"message ID {m.message_id} out of range")
    return HEADER.pack(
        m.spi_i, m.spi_r, next_payload, IKE_VERSION, m.exchange, m.flags, m.message_id, length
    )


# --- SK / SKF -----------------------------------------------------------------------------


def pad(inner: bytes, block_size: int) -> bytes:
    """inner || padding || Pad Length, a multiple of block_size long (RFC 7296 3.14)."""
    pad_length = -(len(inner) + 1) % block_size
    return inner + bytes(pad_length) + bytes((pad_length,))


def _unpad(plaintext: bytes) -> bytes:
    if not plaintext or plaintext[-1] + 1 > len(plaintext):
        raise ProtocolError("SK pad length exceeds the decrypted data")
    return plaintext[: len(plaintext) - plaintext[-1] - 1]


def seal(
    m: Message,
    outer: Sequence[Payload],
    inner: bytes,
    cipher: SkCipher,
    *,
    enc_type: int,
    enc_next: int,
    extra: bytes = b"",
) -> bytes:
    """Build header || outer payloads || SK/SKF header || extra || IV || ct || ICV."""
    plaintext = pad(inner, cipher.block_size)
    sealed_size = cipher.iv_size + len(plaintext) + cipher.icv_size
    enc_length = PAYLOAD_HEADER_SIZE + len(extra) + sealed_size
    outer_bytes = push_chain(outer, enc_type)
    first = outer[0].payload_type if outer else enc_type
    total = IKE_HEADER_SIZE + len(outer_bytes) + enc_length
    aad = b"".join(
        (
            _pack_header(m, first, total),
            outer_bytes,
            GENERIC_HEADER.pack(enc_next, 0, enc_length),
            extra,
        )
    )
    sealed = cipher.seal(aad, plaintext)
    if len(sealed) != sealed_size:
        raise LocalError(f"cipher returned {len(sealed)} octets, expected {sealed_size}")
    return aad + sealed


def _open(data: bytes, at: int, body_at: int, cipher: SkCipher | None) -> bytes:
    """Check sizes, decrypt data[body_at:] with data[:body_at] as aad and unpad."""
    if cipher is None:
        raise ProtocolError("encrypted payload but no keys for it", offset=at)
    size = len(data) - body_at - cipher.iv_size - cipher.icv_size
    if size <= 0 or size % cipher.block_size:
        raise ProtocolError(f"encrypted payload of {len(data) - body_at} octets", offset=at)
    return _unpad(cipher.open(data[:body_at], data[body_at:]))


def _check_last(data: bytes, at: int, header_size: int) -> tuple[int, int]:
    if at + header_size > len(data):
        raise ProtocolError("encrypted payload header truncated", offset=at)
    next_type, _, length = GENERIC_HEADER.unpack_from(data, at)
    if at + length != len(data):
        raise ProtocolError(f"encrypted payload length {length} is not the rest", offset=at)
    return next_type, length


def _open_sk(data: bytes, at: int, cipher: SkCipher | None) -> tuple[list[Payload], bytes]:
    first, _ = _check_last(data, at, PAYLOAD_HEADER_SIZE)
    inner = _open(data, at, at + PAYLOAD_HEADER_SIZE, cipher)
    try:
        return pull_chain(inner, 0, len(inner), first)[0], inner
    except ProtocolError as exc:
        raise ProtocolError(
            f"inside SK: {exc}", notify=exc.notify, notify_data=exc.notify_data
        ) from None


def _open_skf(data: bytes, at: int, cipher: SkCipher | None) -> SkFragment:
    head = PAYLOAD_HEADER_SIZE + FRAGMENT_FIELDS.size
    first, _ = _check_last(data, at, head)
    number, total = FRAGMENT_FIELDS.unpack_from(data, at + PAYLOAD_HEADER_SIZE)
    if not 1 <= number <= total:
        raise ProtocolError(f"fragment {number} of {total}", offset=at + PAYLOAD_HEADER_SIZE)
    return SkFragment(number, total, first, _open(data, at, at + head, cipher))


def intermediate_octets(message: Message, inner: bytes) -> bytes:
    """IntAuth_[i|r]*A | IntAuth_[i|r]*P of an IKE_INTERMEDIATE message (RFC 9242 3.3.2):
    the message as if it were sent whole with an SK payload of only its inner octets
    (no IV, padding or ICV; Length fields adjusted), whether it went in fragments or not."""
    outer = push_chain(message.payloads, PayloadType.SK)
    first = message.payloads[0].payload_type if message.payloads else PayloadType.SK
    inner_first = message.protected[0].payload_type if message.protected else PayloadType.NONE
    sk_length = PAYLOAD_HEADER_SIZE + len(inner)
    return b"".join((_pack_header(message, first, IKE_HEADER_SIZE + len(outer) + sk_length),
                     outer, GENERIC_HEADER.pack(inner_first, 0, sk_length), inner))


# --- message ------------------------------------------------------------------------------


def encode(message: Message, cipher: SkCipher | None = None) -> bytes:
    """Serialize (and protect, when `protected` is set) one unfragmented message."""
    if message.fragment is not None:
        raise LocalError("fragments are built with fragment.encode_fragments")
    if message.protected is None:
        body = push_chain(message.payloads)
        first = message.payloads[0].payload_type if message.payloads else PayloadType.NONE
        return _pack_header(message, first, IKE_HEADER_SIZE + len(body)) + body
    if cipher is None:
        raise LocalError("a message with protected payloads needs a cipher")
    inner = push_chain(message.protected)
    first_inner = message.protected[0].payload_type if message.protected else PayloadType.NONE
    return seal(
        message, message.payloads, inner, cipher, enc_type=PayloadType.SK, enc_next=first_inner
    )


def decode(data: bytes | bytearray | memoryview, cipher: SkCipher | None = None) -> Message:
    """Parse, decrypt and check one IKE datagram (without the non-ESP marker)."""
    data = bytes(data)  # no copy when it already is bytes
    header = parse_header(data)
    exchange = _EXCHANGES.get(header.exchange)
    if exchange is None:
        raise ProtocolError(f"unknown exchange type {header.exchange}", offset=18)
    payloads, enc_type, at = pull_chain(
        data, IKE_HEADER_SIZE, len(data), header.next_payload, stop_at_encrypted=True
    )
    message = Message(
        exchange,
        header.spi_i,
        header.spi_r,
        header.message_id,
        header.is_initiator,
        header.is_response,
        payloads,
    )
    if enc_type == PayloadType.SK:
        message.protected, message.inner = _open_sk(data, at, cipher)
    elif enc_type == PayloadType.SKF:
        message.fragment = _open_skf(data, at, cipher)
        rules.check_fragment(message)
        return message
    rules.check(message)
    return message
