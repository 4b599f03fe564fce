"""RADIUS client for EAP pass-through (RFC 2865, RFC 3579; MPPE keys per RFC 2548).

The gateway's EAP relay (xfrmctl/ike/eap/relay.py) hands each EAP packet of a client
here; it goes to the RADIUS server in an Access-Request (EAP-Message split into
attributes of 253 octets, Message-Authenticator, the server's State of the last
Access-Challenge), retransmitted after `timeout` up to `retries` times. The answer
goes back to the IKE SA as an EapStep: Access-Challenge -> the next request;
Access-Accept -> EAP-Success with the MSK (MS-MPPE-Recv-Key | MS-MPPE-Send-Key);
Access-Reject or silence -> EAP-Failure with the reason. Every answer is checked (its
Response Authenticator and Message-Authenticator with the shared secret) before it is
believed; the secret and the keys are never logged.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from xfrmctl.ike.eap import EapCode, EapPacket, EapStep, Outcome

log = logging.getLogger(__name__)

ACCESS_REQUEST, ACCESS_ACCEPT, ACCESS_REJECT, ACCESS_CHALLENGE = 1, 2, 3, 11
USER_NAME, NAS_IP_ADDRESS, SERVICE_TYPE, FRAMED_MTU = 1, 4, 6, 12
REPLY_MESSAGE, STATE, VENDOR_SPECIFIC = 18, 24, 26
CALLING_STATION_ID, NAS_IDENTIFIER, NAS_PORT_TYPE = 31, 32, 61
EAP_MESSAGE, MESSAGE_AUTHENTICATOR = 79, 80
MICROSOFT, MS_MPPE_SEND_KEY, MS_MPPE_RECV_KEY = 311, 16, 17
SERVICE_FRAMED, PORT_VIRTUAL = 2, 5
FRAMED_MTU_VALUE = 1100  # EAP packets that fit an IKE_AUTH message unfragmented
MAX_SESSIONS = 10000  # RADIUS State kept per IKE SA in EAP; the oldest go beyond
_HEAD = struct.Struct("!BBH16s")
_MAX_PACKET = 4096


class RadiusError(Exception):
    """A RADIUS answer we cannot believe or use; the text is safe to log."""


@dataclass(frozen=True, slots=True)
class RadiusPacket:
    code: int
    identifier: int
    authenticator: bytes
    attributes: list[tuple[int, bytes]] = field(default_factory=list, repr=False)

    def get(self, kind: int) -> list[bytes]:
        return [value for t, value in self.attributes if t == kind]


def _attributes(raw: bytes) -> list[tuple[int, bytes]]:
    out, offset = [], 0
    while offset < len(raw):
        if offset + 2 > len(raw) or raw[offset + 1] < 2 or offset + raw[offset + 1] > len(raw):
            raise RadiusError("malformed RADIUS attribute")
        kind, length = raw[offset], raw[offset + 1]
        out.append((kind, raw[offset + 2:offset + length]))
        offset += length
    return out


def _encode_attributes(attributes: list[tuple[int, bytes]]) -> bytes:
    return b"".join(bytes((kind, len(value) + 2)) + value for kind, value in attributes)


def encode_request(identifier: int, authenticator: bytes, attributes: list[tuple[int, bytes]],
                   secret: bytes) -> bytes:
    """An Access-Request with its Message-Authenticator (RFC 3579 3.2) computed."""
    body = _encode_attributes([*attributes, (MESSAGE_AUTHENTICATOR, b"\0" * 16)])
    head = _HEAD.pack(ACCESS_REQUEST, identifier, _HEAD.size + len(body), authenticator)
    mac = hmac.new(secret, head + body, hashlib.md5).digest()
    return head + body[:-16] + mac


def eap_attributes(eap: bytes) -> list[tuple[int, bytes]]:
    """An EAP packet as EAP-Message attributes of at most 253 octets (RFC 3579 3.1)."""
    return [(EAP_MESSAGE, eap[i:i + 253]) for i in range(0, len(eap), 253)]


def parse_response(data: bytes, identifier: int, request_authenticator: bytes,
                   secret: bytes) -> RadiusPacket:
    """An answer to our request, verified with the shared secret; RadiusError if not."""
    if len(data) < _HEAD.size:
        raise RadiusError("RADIUS packet shorter than its header")
    code, ident, length, authenticator = _HEAD.unpack_from(data)
    if length > len(data) or length < _HEAD.size:
        raise RadiusError(f"RADIUS length {length} in {len(data)} octets")
    data = data[:length]
    if ident != identifier:
        raise RadiusError("RADIUS answer to another request")
    expected = hashlib.md5(data[:4] + request_authenticator + data[_HEAD.size:] + secret
                           ).digest()
    if not hmac.compare_digest(expected, authenticator):
        raise RadiusError("RADIUS Response Authenticator does not verify (shared secret?)")
    attributes = _attributes(data[_HEAD.size:])
    macs = [v for t, v in attributes if t == MESSAGE_AUTHENTICATOR]
    if any(t == EAP_MESSAGE for t, _ in attributes) and len(macs) != 1:
        raise RadiusError("RADIUS answer with EAP-Message lacks one Message-Authenticator")
    if macs:
        zeroed = _encode_attributes([(t, b"\0" * 16 if t == MESSAGE_AUTHENTICATOR else v)
                                     for t, v in attributes])
        signed = data[:4] + request_authenticator + zeroed
        if not hmac.compare_digest(hmac.new(secret, signed, hashlib.md5).digest(), macs[0]):
            raise RadiusError("RADIUS Message-Authenticator does not verify")
    return RadiusPacket(code, ident, authenticator, attributes)


def mppe_key(value: bytes, secret: bytes, request_authenticator: bytes) -> bytes:
    """Decrypt an MS-MPPE-Send/Recv-Key (RFC 2548 2.4.2/2.4.3): salt, then the key's
    length and the key under MD5(secret | authenticator | salt) chained per 16 octets."""
    if len(value) < 18 or (len(value) - 2) % 16:
        raise RadiusError("malformed MS-MPPE key")
    salt, cipher = value[:2], value[2:]
    plain, previous = bytearray(), request_authenticator + salt
    for i in range(0, len(cipher), 16):
        pad = hashlib.md5(secret + previous).digest()
        block = cipher[i:i + 16]
        plain += bytes(a ^ b for a, b in zip(block, pad, strict=True))
        previous = block
    if plain[0] > len(plain) - 1:
        raise RadiusError("MS-MPPE key longer than its attribute")
    return bytes(plain[1:1 + plain[0]])


def _vendor(packet: RadiusPacket, vendor_type: int) -> bytes | None:
    for value in packet.get(VENDOR_SPECIFIC):
        if len(value) < 6 or int.from_bytes(value[:4], "big") != MICROSOFT:
            continue
        for kind, inner in _attributes(value[4:]):
            if kind == vendor_type:
                return inner
    return None


@dataclass(frozen=True, slots=True)
class RadiusServer:
    address: str
    port: int = 1812
    secret: bytes = field(default=b"", repr=False)
    timeout: float = 2.0
    retries: int = 3
    nas_identifier: str = "xfrmctl"


def _step(packet: RadiusPacket, request_authenticator: bytes, server: RadiusServer,
          identity: str, identifier: int) -> EapStep:
    """The EAP server's answer in a RADIUS answer; `identifier`: of the client's response
    (for the EAP-Success/Failure we make when the server sent none)."""
    eap = b"".join(packet.get(EAP_MESSAGE))
    if packet.code == ACCESS_CHALLENGE:
        if not eap:
            raise RadiusError("Access-Challenge without EAP-Message")
        return EapStep(Outcome.CONTINUE, eap, identity=identity)
    if packet.code == ACCESS_ACCEPT:
        recv, send = _vendor(packet, MS_MPPE_RECV_KEY), _vendor(packet, MS_MPPE_SEND_KEY)
        if recv is None or send is None:
            raise RadiusError("Access-Accept without MS-MPPE keys (no MSK)")
        msk = mppe_key(recv, server.secret, request_authenticator) + \
            mppe_key(send, server.secret, request_authenticator)
        success = eap or EapPacket(EapCode.SUCCESS, identifier).encode()
        return EapStep(Outcome.SUCCESS, success, msk=msk, identity=identity)
    if packet.code == ACCESS_REJECT:
        message = b" ".join(packet.get(REPLY_MESSAGE)).decode("utf-8", "replace").strip()
        reason = "RADIUS Access-Reject" + (f": {message}" if message else "")
        return EapStep(Outcome.FAILURE, eap or EapPacket(EapCode.FAILURE, identifier).encode(),
                       identity=identity, reason=reason)
    raise RadiusError(f"unexpected RADIUS code {packet.code}")


class _Exchange(asyncio.DatagramProtocol):
    """One Access-Request on its own socket: sent, resent, answered."""

    def __init__(self, request: bytes, identifier: int, authenticator: bytes,
                 secret: bytes) -> None:
        self.request, self.identifier = request, identifier
        self.authenticator, self.secret = authenticator, secret
        self.answer: asyncio.Future[RadiusPacket] = \
            asyncio.get_running_loop().create_future()
        self.transport: asyncio.DatagramTransport | None = None
        self.refused: str | None = None  # why an answer was not believed

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        if self.answer.done() or len(data) > _MAX_PACKET:
            return
        try:
            packet = parse_response(data, self.identifier, self.authenticator, self.secret)
        except RadiusError as exc:
            log.warning("RADIUS answer dropped: %s", exc)
            self.refused = str(exc)
            return  # a forged or broken answer: wait for the real one
        self.answer.set_result(packet)


class RadiusClient:
    """The daemon's RADIUS client: the `EapBackend` of EAP relays. `deliver(sa_id,
    step)` hands each answer to the IKE SA (the controller sets it)."""

    def __init__(self) -> None:
        self.server: RadiusServer | None = None
        self.deliver: Callable[[int, EapStep], None] | None = None
        self._states: dict[int, bytes] = {}  # the server's State per IKE SA
        self._tasks: set[asyncio.Task[None]] = set()
        self.requests = 0
        self.timeouts = 0

    def configure(self, server: RadiusServer | None) -> None:
        self.server = server

    def submit(self, sa_id: int, identity: str, packet: bytes) -> None:
        task = asyncio.get_running_loop().create_task(self._ask(sa_id, identity, packet))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _ask(self, sa_id: int, identity: str, packet: bytes) -> None:
        server, identifier = self.server, packet[1]  # EAP-Failure answers the response
        if server is None:
            step = EapStep.failure(identifier, "EAP-RADIUS: no RADIUS server configured",
                                   identity)
        else:
            try:
                step = await self._exchange(server, sa_id, identity, packet)
            except (RadiusError, OSError) as exc:
                step = EapStep.failure(identifier, f"EAP-RADIUS: {exc}", identity)
        if step.outcome is not Outcome.CONTINUE:
            self._states.pop(sa_id, None)
        if self.deliver is not None:
            self.deliver(sa_id, step)

    def _attributes(self, server: RadiusServer, sa_id: int, identity: str,
                    packet: bytes) -> list[tuple[int, bytes]]:
        attributes = [(USER_NAME, identity.encode()[:253]),
                      (SERVICE_TYPE, SERVICE_FRAMED.to_bytes(4, "big")),
                      (NAS_PORT_TYPE, PORT_VIRTUAL.to_bytes(4, "big")),
                      (FRAMED_MTU, FRAMED_MTU_VALUE.to_bytes(4, "big")),
                      (NAS_IDENTIFIER, server.nas_identifier.encode()[:253]),
                      *eap_attributes(packet)]
        state = self._states.get(sa_id)
        if state is not None:
            attributes.append((STATE, state))
        return attributes

    async def _exchange(self, server: RadiusServer, sa_id: int, identity: str,
                        packet: bytes) -> EapStep:
        identifier, authenticator = os.urandom(1)[0], os.urandom(16)
        request = encode_request(identifier, authenticator,
                                 self._attributes(server, sa_id, identity, packet),
                                 server.secret)
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: _Exchange(request, identifier, authenticator, server.secret),
            remote_addr=(server.address, server.port))
        self.requests += 1
        try:
            for _ in range(server.retries + 1):
                transport.sendto(request)
                try:
                    answer = await asyncio.wait_for(asyncio.shield(protocol.answer),
                                                    server.timeout)
                    break
                except TimeoutError:
                    continue
            else:
                self.timeouts += 1
                why = f"; its answers were dropped: {protocol.refused}" if protocol.refused \
                    else ""
                raise RadiusError(f"RADIUS server {server.address}:{server.port} did not "
                                  f"answer ({server.retries + 1} tries){why}")
        finally:
            transport.close()
        state = answer.get(STATE)
        if answer.code == ACCESS_CHALLENGE and state:
            if len(self._states) >= MAX_SESSIONS:
                self._states.pop(next(iter(self._states)))
            self._states[sa_id] = state[0]
        return _step(answer, authenticator, server, identity, packet[1])

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        self._states.clear()


RADIUS = RadiusClient()
