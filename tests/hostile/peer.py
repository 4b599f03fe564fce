"""A hostile (or legitimate) IKE peer on a real UDP socket in a network namespace.

The messages are built with the project's own wire-format code: a real initiator
(`IkeSa.initiator`) makes a valid IKE_SA_INIT, tests decode it, change what they attack
and encode it again; raw bytes only where the message must be malformed.
"""

from __future__ import annotations

import os
import select
import socket
import time
from dataclasses import dataclass, field, replace

import pytest

from tests.support.ike_pair import psk_config
from tests.support.netns import Netns
from xfrmctl.ike.config import IkeConfig
from xfrmctl.ike.constants import (
    DhId,
    EncrId,
    ExchangeType,
    NotifyType,
    PayloadType,
    PrfId,
    ProtocolId,
    TransformType,
)
from xfrmctl.ike.errors import ProtocolError
from xfrmctl.ike.events import IkeSaUp
from xfrmctl.ike.message import FRAGMENT_FIELDS, Message, decode, encode, seal
from xfrmctl.ike.payloads import (
    KePayload,
    NoncePayload,
    NotifyPayload,
    Payload,
    Proposal,
    SaPayload,
    Transform,
)
from xfrmctl.ike.sa import IkeSa, IkeState
from xfrmctl.ike.sk import SkCipher

RESPONDER = "192.0.2.1"
PSK = b"hostile-suite test-only pre-shared key"
REPLY_TIMEOUT = 2.0  # seconds to wait for an answer that must come
SILENCE = 0.6  # seconds of silence that count as "no answer"


def initiator_config(psk: bytes = PSK, **kwargs: object) -> IkeConfig:
    """The legitimate initiator: PSK, no CHILD_SA in IKE_AUTH (the host has no ESP)."""
    return psk_config("hostile", psk=psk, **kwargs)


@dataclass
class Reply:
    data: bytes
    message: Message | None  # None when it does not decode without keys

    def notify_types(self) -> list[int]:
        return [n.notify_type for n in self.message.notifies()] if self.message else []


@dataclass
class Peer:
    """A UDP socket bound to (addr, port) inside `ns`, talking to the responder."""

    ns: Netns
    addr: str
    port: int = 500
    target: str = RESPONDER  # the responder's address this peer talks to
    sock: socket.socket = field(init=False)

    def __post_init__(self) -> None:
        def bind() -> socket.socket:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((self.addr, self.port))
            return s
        self.sock = self.ns.call(bind)
        self.sock.setblocking(False)

    def close(self) -> None:
        self.sock.close()

    @property
    def endpoint(self) -> tuple[str, int]:
        return (self.addr, self.port)

    def send(self, data: bytes, port: int = 500) -> None:
        self.sock.sendto(data, (self.target, port))

    def recv(self, timeout: float = REPLY_TIMEOUT) -> bytes | None:
        ready, _, _ = select.select([self.sock], [], [], timeout)
        if not ready:
            return None
        data, _ = self.sock.recvfrom(65535)
        return data

    def drain(self) -> None:
        while self.recv(0) is not None:
            pass

    def ask(self, data: bytes, timeout: float = REPLY_TIMEOUT) -> Reply | None:
        """Send `data`; the first answer (decoded when it is plaintext), or None."""
        self.drain()
        self.send(data)
        raw = self.recv(timeout)
        if raw is None:
            return None
        try:
            return Reply(raw, decode(raw))
        except ProtocolError:
            return Reply(raw, None)

    def silent(self, data: bytes, wait: float = SILENCE) -> bool:
        """Send `data`; True when nothing comes back within `wait` seconds."""
        self.drain()
        self.send(data)
        return self.recv(wait) is None

    # ------------------------------------------------------------- building messages

    def initiator(self, config: IkeConfig | None = None) -> IkeSa:
        sa = IkeSa.initiator(config or initiator_config(), self.endpoint, (self.target, 500),
                             time.time())
        sa.initiate(time.time())
        return sa

    def init_request(self, config: IkeConfig | None = None) -> tuple[IkeSa, Message]:
        """A fresh valid IKE_SA_INIT request (and the initiator that made it)."""
        sa = self.initiator(config)
        (datagram,) = sa.datagrams_to_send()
        return sa, decode(datagram.data)

    def handshake(self, config: IkeConfig | None = None) -> Keyed:
        """IKE_SA_INIT with the responder: an initiator holding keys, IKE_AUTH not sent."""
        sa, request = self.init_request(config)
        reply = self.ask(encode(request))
        assert reply is not None and reply.message is not None, "no IKE_SA_INIT answer"
        sa.receive_datagram(reply.data, self.endpoint, (self.target, 500), time.time())
        if reply.message.notify(NotifyType.COOKIE) is not None:  # RFC 7296 2.6: again
            (again,) = sa.datagrams_to_send()
            reply = self.ask(again.data)
            assert reply is not None, "no answer to IKE_SA_INIT with the cookie"
            sa.receive_datagram(reply.data, self.endpoint, (self.target, 500), time.time())
        assert sa.state in (IkeState.INIT_DONE, IkeState.AUTH_SENT), \
            f"initiator in {sa.state}: {reply.message}"
        auth = [d.data for d in sa.datagrams_to_send()]
        return Keyed(self, sa, auth)

    def setup(self, config: IkeConfig | None = None, timeout: float = 10.0) -> IkeSa:
        """A complete IKE_SA_INIT + IKE_AUTH (PSK); the established initiator SA."""
        keyed = self.handshake(config)
        for data in keyed.auth:
            self.send(data)
        deadline = time.monotonic() + timeout
        sa = keyed.sa
        while sa.state is not IkeState.ESTABLISHED and time.monotonic() < deadline:
            raw = self.recv(0.2)
            if raw is not None:
                sa.receive_datagram(raw, self.endpoint, (self.target, 500), time.time())
            for d in sa.datagrams_to_send():
                self.send(d.data)
            if sa.state is IkeState.CLOSED:
                break
        events = []
        while (e := sa.next_event()) is not None:
            events.append(e)
        assert any(isinstance(e, IkeSaUp) for e in events), f"no IkeSaUp: {events}"
        return sa


@dataclass
class Keyed:
    """An initiator after IKE_SA_INIT: its keys protect the messages tests forge."""

    peer: Peer
    sa: IkeSa
    auth: list[bytes]  # the real IKE_AUTH request (fragments), not sent yet

    @property
    def cipher(self) -> SkCipher:
        cipher = self.sa.keys.cipher_out
        assert cipher is not None
        return cipher

    @property
    def cipher_in(self) -> SkCipher:
        cipher = self.sa.keys.cipher_in
        assert cipher is not None
        return cipher

    def message(self, exchange: ExchangeType, protected: list[Payload], mid: int = 1, *,
                response: bool = False) -> Message:
        return Message(exchange, self.sa.spi_i, self.sa.spi_r, mid, True, response, [],
                       protected)

    def seal(self, exchange: ExchangeType, protected: list[Payload], mid: int = 1, *,
             response: bool = False) -> bytes:
        return encode(self.message(exchange, protected, mid, response=response), self.cipher)

    def open(self, data: bytes) -> Message:
        return decode(data, self.cipher_in)


def with_payloads(msg: Message, payloads: list[Payload]) -> Message:
    return replace(msg, payloads=payloads)


def replace_payload(msg: Message, cls: type, new: Payload | None) -> Message:
    """`msg` with its first payload of type `cls` replaced by `new` (or removed)."""
    out: list[Payload] = []
    done = False
    for p in msg.payloads:
        if isinstance(p, cls) and not done:
            done = True
            if new is not None:
                out.append(new)
        else:
            out.append(p)
    assert done, f"no {cls.__name__} in {msg}"
    return with_payloads(msg, out)


def first(msg: Message, cls: type) -> Payload:
    found = msg.find(cls)
    assert found is not None
    return found


def notify_of(reply: Reply | None) -> list[int]:
    assert reply is not None, "no answer"
    assert reply.message is not None, "an answer that does not decode"
    return reply.notify_types()


def is_init_accept(reply: Reply | None) -> bool:
    """A real IKE_SA_INIT response: SA, KE and Nonce, a responder SPI."""
    return reply is not None and reply.message is not None and reply.message.is_response \
        and reply.message.spi_r != b"\0" * 8 \
        and all(reply.message.find(c) for c in (SaPayload, KePayload, NoncePayload))


__all__ = ["SILENCE", "Keyed", "NotifyPayload", "NotifyType", "Peer", "Reply",
           "initiator_config", "is_init_accept", "os"]


# ----------------------------------------------------------------- proposals

def transform(ttype: int, tid: int, key_length: int | None = None) -> Transform:
    return Transform(ttype, tid, key_length)


GCM128 = Transform(TransformType.ENCR, EncrId.AES_GCM_16, 128)
PRF256 = Transform(TransformType.PRF, PrfId.HMAC_SHA2_256)
X25519 = Transform(TransformType.DH, DhId.CURVE25519)


def ike_proposal(number: int = 1, *transforms: Transform, spi: bytes = b"",
                 protocol: int = ProtocolId.IKE) -> Proposal:
    return Proposal(number, protocol, spi, transforms or (GCM128, PRF256, X25519))


def init_with(request: Message, **changes: Payload | None) -> bytes:
    """`request` (an IKE_SA_INIT) with payloads swapped: sa=, ke=, nonce= (None drops)."""
    kinds = {"sa": SaPayload, "ke": KePayload, "nonce": NoncePayload}
    msg = request
    for key, new in changes.items():
        msg = replace_payload(msg, kinds[key], new)
    return encode(msg)


def assert_refused(reply: Reply | None, *allowed: int) -> None:
    """Silence, or a plaintext answer carrying one of the `allowed` error notifies and
    no SA (RFC 7296 2.21.1: an IKE_SA_INIT error may be answered or dropped)."""
    if reply is None:
        return
    assert reply.message is not None, f"undecodable answer {reply.data.hex()}"
    assert reply.message.is_response and not reply.message.is_initiator, reply.message
    assert reply.message.find(SaPayload) is None, f"accepted: {reply.message}"
    assert set(reply.notify_types()) & set(allowed), \
        f"answer notifies {reply.notify_types()}, expected one of {allowed}"


def assert_error(reply: Reply | None, notify: int) -> NotifyPayload:
    """A plaintext error answer carrying `notify` (and no SA); its notify payload."""
    assert reply is not None, f"no answer, expected {NotifyType(notify).name}"
    assert reply.message is not None, f"undecodable answer {reply.data.hex()}"
    assert reply.message.is_response and not reply.message.is_initiator, reply.message
    assert reply.message.find(SaPayload) is None, f"accepted: {reply.message}"
    found = reply.message.notify(notify)
    assert found is not None, f"notifies {reply.notify_types()}, no {NotifyType(notify).name}"
    return found


def establish(keyed: Keyed, datagrams: list[bytes] | None = None,
              timeout: float = 5.0) -> list[object]:
    """Send the IKE_AUTH request (`datagrams`, default the real one) and feed answers to
    the initiator until it is established or closed; its events."""
    peer, sa = keyed.peer, keyed.sa
    for data in keyed.auth if datagrams is None else datagrams:
        peer.send(data)
    deadline = time.monotonic() + timeout
    while sa.state not in (IkeState.ESTABLISHED, IkeState.CLOSED) \
            and time.monotonic() < deadline:
        raw = peer.recv(0.2)
        if raw is not None:
            sa.receive_datagram(raw, peer.endpoint, (peer.target, 500), time.time())
    events = []
    while (e := sa.next_event()) is not None:
        events.append(e)
    return events


def established(events: list[object]) -> bool:
    return any(isinstance(e, IkeSaUp) for e in events)


def core_bug(what: str) -> pytest.MarkDecorator:
    """A case that fails on the core (xfrmctl/ike/) as it is: reported, fixed there; strict,
    so the fix turns it into a failure until the mark is removed."""
    return pytest.mark.xfail(strict=True, reason=f"open in xfrmctl/ike: {what}")


def skf(keyed: Keyed, mid: int, number: int, total: int, chunk: bytes,
        first: int = PayloadType.IDI) -> bytes:
    """One SKF datagram, correctly protected, carrying `chunk`."""
    msg = keyed.message(ExchangeType.IKE_AUTH, [], mid)
    return seal(msg, (), chunk, keyed.cipher, enc_type=PayloadType.SKF,
                enc_next=first if number == 1 else 0,
                extra=FRAGMENT_FIELDS.pack(number, total))
