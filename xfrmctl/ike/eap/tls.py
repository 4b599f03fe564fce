"""EAP-TLS (RFC 5216 for TLS 1.2, RFC 9190 for TLS 1.3): both roles, sans-I/O.

OpenSSL (pyOpenSSL) does the TLS handshake through memory BIOs: we write the peer's TLS
records in and read ours out, no socket. This module frames them in EAP-TLS packets:
Flags (L = length included, M = more fragments, S = start), the TLS message length in
the first fragment, fragments of FRAGMENT_SIZE octets each acknowledged by an empty
packet of the other side. A peer's reassembled message may not exceed MAX_MESSAGE and a
conversation not MAX_ROUNDS packets: a hostile peer cannot grow our memory or keep us
busy.

Certificates are not judged here: OpenSSL checks the handshake's signatures, and the
peer's chain goes back to the IKE core (`EapStep.peer_chain` on the gateway,
`EapTlsClient.peer_chain` on the client), which verifies it against the connection's
CAs and revocation information at the IKE SA's time, as for certificate AUTH.

MSK (64 octets): TLS 1.2: the exporter with label "client EAP encryption" and no context
(= TLS-PRF(master secret, label, client random | server random), RFC 5216 2.3);
TLS 1.3: label "EXPORTER_EAP_TLS_Key_Material", context 0x0D (RFC 9190 2.3). With TLS
1.3 the gateway ends the handshake with one octet 0x00 of application data (RFC 9190
2.5, "protected success indication"); the client waits for it before it is done.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from enum import IntFlag

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from OpenSSL import SSL, crypto

from . import EapCode, EapError, EapPacket, EapStep, EapType, Outcome

FRAGMENT_SIZE = 1024  # TLS octets per EAP-TLS packet (strongSwan's default)
MAX_MESSAGE = 64 * 1024  # largest TLS flight we reassemble from a peer
MAX_ROUNDS = 64  # EAP-TLS packets one conversation may take (fragments included)
MSK_SIZE = 64
_LENGTH = struct.Struct("!I")
_TLS12_LABEL = b"client EAP encryption"
_TLS13_LABEL = b"EXPORTER_EAP_TLS_Key_Material"
_SUCCESS_INDICATION = b"\x00"


class Flags(IntFlag):
    LENGTH = 0x80
    MORE = 0x40
    START = 0x20


def _accept_any(*_args: object) -> bool:
    # The chain is verified by the IKE core with the connection's CAs; OpenSSL only
    # has to ask for the peer's certificate and check the handshake's signatures.
    return True


def _context(certificate: x509.Certificate, key: CertificateIssuerPrivateKeyTypes,
             intermediates: Sequence[x509.Certificate], *, server: bool) -> SSL.Context:
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.use_certificate(certificate)
    ctx.use_privatekey(key)  # type: ignore[arg-type]
    ctx.check_privatekey()
    for cert in intermediates:
        ctx.add_extra_chain_cert(crypto.X509.from_cryptography(cert))
    ctx.set_options(SSL.OP_NO_TICKET | SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION)
    ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    if not server:
        # strongSwan's TLS stack sends no renegotiation_info (RFC 5746); with renegotiation
        # off on our side the attack it guards against cannot happen, so we connect
        ctx.set_options(SSL.OP_LEGACY_SERVER_CONNECT)
    mode = SSL.VERIFY_PEER | (SSL.VERIFY_FAIL_IF_NO_PEER_CERT if server else 0)
    ctx.set_verify(mode, _accept_any)
    return ctx


def server_context(certificate: x509.Certificate, key: CertificateIssuerPrivateKeyTypes,
                   intermediates: Sequence[x509.Certificate] = ()) -> SSL.Context:
    """The gateway's TLS context (made once per connection): our certificate; it asks
    every client for its certificate."""
    return _context(certificate, key, intermediates, server=True)


def client_context(certificate: x509.Certificate, key: CertificateIssuerPrivateKeyTypes,
                   intermediates: Sequence[x509.Certificate] = ()) -> SSL.Context:
    """The road warrior's TLS context: the certificate we log in with."""
    return _context(certificate, key, intermediates, server=False)


def _packet(code: EapCode, identifier: int, flags: int, data: bytes = b"") -> bytes:
    return EapPacket(code, identifier, EapType.TLS, bytes((flags,)) + data).encode()


class _Fragments:
    """Our outgoing TLS flight, one fragment at a time."""

    __slots__ = ("_data", "_first", "_total")

    def __init__(self, data: bytes) -> None:
        self._data, self._total, self._first = data, len(data), True

    @property
    def pending(self) -> bool:
        return bool(self._data)

    def next(self) -> tuple[int, bytes]:
        """Flags and payload of the next fragment."""
        chunk, self._data = self._data[:FRAGMENT_SIZE], self._data[FRAGMENT_SIZE:]
        flags, head = 0, b""
        if self._first and self._data:  # L in the first of several (RFC 5216 3.1)
            flags, head = Flags.LENGTH, _LENGTH.pack(self._total)
        self._first = False
        if self._data:
            flags |= Flags.MORE
        return flags, head + chunk


class _Reassembly:
    """The peer's TLS flight from its fragments, within MAX_MESSAGE."""

    __slots__ = ("_buffer", "_total")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._total: int | None = None

    def add(self, flags: int, data: bytes) -> bytes | None:
        """The whole message once the last fragment came (None: more to come)."""
        if flags & Flags.LENGTH:
            if len(data) < _LENGTH.size:
                raise EapError("EAP-TLS L flag without the TLS message length")
            total = _LENGTH.unpack_from(data)[0]
            data = data[_LENGTH.size:]
            if total > MAX_MESSAGE:
                raise EapError(f"EAP-TLS message of {total} octets announced "
                               f"(at most {MAX_MESSAGE})")
            if self._total is None and not self._buffer:
                self._total = total
            elif total != self._total:
                raise EapError("EAP-TLS message length changed between fragments")
        self._buffer += data
        if len(self._buffer) > (self._total if self._total is not None else MAX_MESSAGE):
            raise EapError("EAP-TLS fragments exceed the announced message length")
        if flags & Flags.MORE:
            if not data:
                raise EapError("empty EAP-TLS fragment with the M flag")
            return None
        message = bytes(self._buffer)
        if self._total is not None and len(message) != self._total:
            raise EapError(f"EAP-TLS message of {len(message)} octets, "
                           f"{self._total} announced")
        self._buffer, self._total = bytearray(), None
        return message

    @property
    def partial(self) -> bool:
        return bool(self._buffer)


def _flags_and_data(packet: EapPacket) -> tuple[int, bytes]:
    if packet.type != EapType.TLS:
        raise EapError(f"expected EAP-TLS, got EAP type {packet.type}")
    if not packet.data:
        raise EapError("EAP-TLS packet without flags")
    return packet.data[0], packet.data[1:]


class _Engine:
    """What both roles share: the TLS connection, fragments both ways, the MSK."""

    __slots__ = ("_conn", "_in", "_out", "_rounds", "msk", "peer_chain")

    def __init__(self, context: SSL.Context, *, server: bool) -> None:
        self._conn = SSL.Connection(context, None)  # memory BIOs
        if server:
            self._conn.set_accept_state()
        else:
            self._conn.set_connect_state()
        self._in = _Reassembly()
        self._out: _Fragments | None = None
        self._rounds = 0
        self.msk = b""
        self.peer_chain: tuple[x509.Certificate, ...] = ()

    def count(self) -> None:
        self._rounds += 1
        if self._rounds > MAX_ROUNDS:
            raise EapError(f"EAP-TLS took more than {MAX_ROUNDS} packets")

    @property
    def sending(self) -> bool:
        return self._out is not None and self._out.pending

    def next_fragment(self) -> tuple[int, bytes]:
        assert self._out is not None
        return self._out.next()

    def receive(self, flags: int, data: bytes) -> bytes | None:
        """Reassemble; the complete TLS flight of the peer, or None (ACK it)."""
        return self._in.add(flags, data)

    def handshake(self, records: bytes) -> bool:
        """Feed the peer's records to OpenSSL; True once the handshake is complete."""
        if records:
            self._conn.bio_write(records)
        try:
            self._conn.do_handshake()
        except SSL.WantReadError:
            return False
        except SSL.Error as exc:
            raise EapError(f"EAP-TLS handshake failed: {_ssl_reason(exc)}") from None
        if not self.peer_chain:
            self.peer_chain = self._received_chain()
        return True

    def _received_chain(self) -> tuple[x509.Certificate, ...]:
        """End entity first (OpenSSL's chain leaves it out on the server's side)."""
        leaf = self._conn.get_peer_certificate(as_cryptography=True)
        if leaf is None:
            return ()
        chain = self._conn.get_peer_cert_chain(as_cryptography=True) or []
        return (leaf, *(c for c in chain if c != leaf))

    @property
    def tls13(self) -> bool:
        return self._conn.get_protocol_version_name() == "TLSv1.3"

    def export_msk(self) -> bytes:
        if self.tls13:
            key = self._conn.export_keying_material(_TLS13_LABEL, 2 * MSK_SIZE,
                                                    bytes((EapType.TLS,)))
        else:
            key = self._conn.export_keying_material(_TLS12_LABEL, 2 * MSK_SIZE)
        return bytes(key[:MSK_SIZE])

    def send_application(self, data: bytes) -> None:
        self._conn.send(data)

    def read_application(self) -> bytes:
        try:
            return self._conn.recv(16)
        except SSL.WantReadError:
            return b""
        except SSL.Error as exc:
            raise EapError(f"EAP-TLS: {_ssl_reason(exc)}") from None

    def flight(self) -> bool:
        """Take what OpenSSL wrote as our next flight; True if there is one."""
        out = bytearray()
        while True:
            try:
                chunk = self._conn.bio_read(65536)
            except SSL.WantReadError:
                break
            if not chunk:
                break
            out += chunk
        self._out = _Fragments(bytes(out)) if out else None
        return bool(out)

    @property
    def version(self) -> str:
        return self._conn.get_protocol_version_name()


def _ssl_reason(exc: SSL.Error) -> str:
    parts = [str(item[2]) for item in (exc.args[0] if exc.args and
                                       isinstance(exc.args[0], list) else [])
             if isinstance(item, tuple) and len(item) == 3]
    return ", ".join(parts) or exc.__class__.__name__


# --- the gateway -----------------------------------------------------------------------


class EapTlsServer:
    """The gateway's EAP-TLS for one IKE SA. The step at which the handshake completes
    carries the client's chain (`peer_chain`) for the IKE core to verify before it goes
    on; the client's certificate must name the EAP identity (checked there too)."""

    method_name = "EAP-TLS"
    __slots__ = ("_done", "_engine", "_identifier", "_identity")

    def __init__(self, context: SSL.Context) -> None:
        self._engine = _Engine(context, server=True)
        self._identifier = 0
        self._identity = ""
        self._done = False  # handshake complete and our last flight sent

    def begin(self, identity: str, identifier: int) -> EapStep:
        self._identity, self._identifier = identity, identifier
        return EapStep(Outcome.CONTINUE, _packet(EapCode.REQUEST, identifier, Flags.START))

    def process(self, packet: EapPacket) -> EapStep:
        if packet.code != EapCode.RESPONSE or packet.identifier != self._identifier:
            return self._fail(packet.identifier, "unexpected EAP packet")
        if packet.type == EapType.NAK:
            return self._fail(packet.identifier, "the client refused EAP-TLS (Nak)")
        try:
            return self._process(packet)
        except EapError as exc:
            return self._fail(packet.identifier, str(exc))

    def _process(self, packet: EapPacket) -> EapStep:
        engine = self._engine
        engine.count()
        flags, data = _flags_and_data(packet)
        if engine.sending:  # the client acknowledges our fragment: the next one
            if flags or data:
                raise EapError("expected the acknowledgement of a fragment")
            return self._request(*engine.next_fragment())
        if self._done:
            if flags or data:
                raise EapError("TLS data after the handshake was complete")
            success = EapPacket(EapCode.SUCCESS, packet.identifier).encode()
            return EapStep(Outcome.SUCCESS, success, msk=engine.msk, identity=self._identity)
        records = engine.receive(flags, data)
        if records is None:
            return self._request(0)  # ACK the fragment
        if not records:
            raise EapError("empty EAP-TLS response during the handshake")
        chain: tuple[x509.Certificate, ...] = ()
        if engine.handshake(records):
            if not engine.peer_chain:
                raise EapError("the client sent no certificate")
            self._done, chain = True, engine.peer_chain
            engine.msk = engine.export_msk()
            if engine.tls13:
                engine.send_application(_SUCCESS_INDICATION)
        if not engine.flight():
            raise EapError("the TLS handshake stalled")
        step = self._request(*engine.next_fragment())
        return EapStep(step.outcome, step.packet, peer_chain=chain, identity=self._identity)

    def _request(self, flags: int, data: bytes = b"") -> EapStep:
        self._identifier = (self._identifier + 1) % 256
        return EapStep(Outcome.CONTINUE, _packet(EapCode.REQUEST, self._identifier, flags, data))

    def _fail(self, identifier: int, reason: str) -> EapStep:
        return EapStep.failure(identifier, f"EAP-TLS: {reason}", self._identity)


# --- the road warrior ------------------------------------------------------------------


class EapTlsClient:
    """Our EAP-TLS as a client, with the certificate of `context`. `peer_chain` holds
    the gateway's TLS chain once the handshake completed (the IKE core verifies it)."""

    method_type = EapType.TLS
    __slots__ = ("_context", "_done", "_engine", "identity")

    def __init__(self, identity: str, context: SSL.Context) -> None:
        self.identity = identity
        self._context = context
        self._engine: _Engine | None = None
        self._done = False

    @property
    def msk(self) -> bytes:
        return self._engine.msk if self._engine is not None and self._done else b""

    @property
    def peer_chain(self) -> tuple[x509.Certificate, ...]:
        return self._engine.peer_chain if self._engine is not None else ()

    def process(self, packet: EapPacket) -> bytes:
        flags, data = _flags_and_data(packet)
        if flags & Flags.START:
            if self._engine is not None:
                raise EapError("a second EAP-TLS start")
            self._engine = _Engine(self._context, server=False)
            return self._flight(packet.identifier, b"")
        engine = self._engine
        if engine is None:
            raise EapError("EAP-TLS data before the start")
        engine.count()
        if engine.sending:
            if flags or data:
                raise EapError("expected the acknowledgement of a fragment")
            return self._response(packet.identifier, *engine.next_fragment())
        records = engine.receive(flags, data)
        if records is None:
            return self._response(packet.identifier, 0)  # ACK the fragment
        if self._done or not records:
            raise EapError("unexpected EAP-TLS request after the handshake")
        return self._flight(packet.identifier, records)

    def _flight(self, identifier: int, records: bytes) -> bytes:
        engine = self._engine
        assert engine is not None
        was_complete = bool(engine.msk)
        if engine.handshake(records) and not was_complete:
            engine.msk = engine.export_msk()
        if engine.msk and (not engine.tls13 or
                           engine.read_application() == _SUCCESS_INDICATION):
            self._done = not engine.flight()
            if self._done:
                return self._response(identifier, 0)  # our last: the gateway sends Success
        elif not engine.flight():
            raise EapError("the TLS handshake stalled")
        return self._response(identifier, *engine.next_fragment())

    @staticmethod
    def _response(identifier: int, flags: int, data: bytes = b"") -> bytes:
        return _packet(EapCode.RESPONSE, identifier, flags, data)
