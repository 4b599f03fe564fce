"""Fuzzing targets: one per parser and one for the responder state machine.

A target is a function of one input that returns normally or raises only what the
parser documents (`ProtocolError` for the IKE core: "drop, or answer per RFC"); anything
else escaping is a crash. Seeds are real messages: the golden strongSwan captures in
tests/fixtures/strongswan (datagrams, decrypted payloads, certificates) and messages
of our own encoders. `tests/fuzz/test_fuzz.py` runs each target briefly under
hypothesis (CI); `python -m tests.fuzz --minutes N` runs them long. A crash found
becomes a case in `tests/fuzz/test_regressions.py`.
"""

from __future__ import annotations

import contextlib
import json
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any

from cryptography import x509

from tests.support.ike_pair import psk_config
from xfrmctl.ike import proposals as props
from xfrmctl.ike import ts as tsmod
from xfrmctl.ike.certs import TrustStore, identity_matches
from xfrmctl.ike.config import Identity
from xfrmctl.ike.constants import IKE_HEADER_SIZE, PAYLOAD_HEADER_SIZE, PayloadType, ProtocolId
from xfrmctl.ike.errors import ProtocolError
from xfrmctl.ike.fragment import Reassembler
from xfrmctl.ike.manager import IkeManager
from xfrmctl.ike.message import FRAGMENT_FIELDS, HEADER, Message, decode, parse_header, seal
from xfrmctl.ike.payloads import (
    GENERIC_HEADER,
    PULL,
    CertPayload,
    IdiPayload,
    IdrPayload,
    Payload,
    SaPayload,
    TsiPayload,
    TsrPayload,
    pull_payload,
    push_chain,
    push_payload,
)
from xfrmctl.ike.sk import SkCipher
from xfrmctl.kernel import codec
from xfrmctl.kernel.messages import MsgType
from xfrmctl.kernel.types import Algorithm, Direction, PolicySpec, SaSpec, Selector

FIXTURES = Path(__file__).parents[1] / "fixtures" / "strongswan"


@dataclass(frozen=True)
class Target:
    name: str
    run: Callable[[bytes], None]
    seeds: Callable[[], list[bytes]]


# --------------------------------------------------------------------------- seeds


@cache
def golden() -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(FIXTURES.glob("*.json"))]


@cache
def golden_datagrams() -> list[bytes]:
    return [bytes.fromhex(d["hex"]) for f in golden() for d in f["datagrams"]]


@dataclass(frozen=True)
class Decrypted:
    raw: bytes
    message: Message
    cipher: SkCipher  # the key that sealed it (opens it again, and seals forgeries)


@cache
def golden_decrypted() -> list[Decrypted]:
    """Every golden SK datagram with its decrypted payloads and its cipher, from the
    fixtures' logged keys (tests/support/strongswan_replay.Replay)."""
    from tests.support.strongswan_replay import Replay, load  # noqa: PLC0415

    out: list[Decrypted] = []
    for path in sorted(FIXTURES.glob("*.json")):
        replay = Replay(load(path))
        replay.run()
        for sa in replay.sas:
            for d, msg in sa.messages:
                cipher = sa.cipher_i if d["from_initiator"] else sa.cipher_r
                out.append(Decrypted(d["raw"], msg, cipher))
    return out


@cache
def golden_payloads() -> list[Payload]:
    plain = [p for raw in golden_datagrams()[:2] for p in decode(raw).payloads]
    plain += [p for f in golden() for raw in
              (bytes.fromhex(d["hex"]) for d in f["datagrams"][:2]) for p in decode(raw).payloads]
    return plain + [p for d in golden_decrypted() for p in d.message.protected or ()]


def bodies_of(*types: int) -> Callable[[], list[bytes]]:
    def seeds() -> list[bytes]:
        return [bytes([p.payload_type]) + push_payload(p) for p in golden_payloads()
                if p.payload_type in types] or [bytes([types[0]])]
    return seeds


@cache
def golden_certificates() -> list[bytes]:
    pem = b"".join(p.read_bytes() for p in sorted(FIXTURES.glob("certs/**/*.pem"))
                   if b"CERTIFICATE" in p.read_bytes())
    certs = x509.load_pem_x509_certificates(pem) if pem else []
    from cryptography.hazmat.primitives.serialization import Encoding  # noqa: PLC0415

    found = [c.public_bytes(Encoding.DER) for c in certs]
    found += [p.data for p in golden_payloads() if isinstance(p, CertPayload)]
    return found


# --------------------------------------------------------------------------- IKE parsers


def only_protocol_errors(fn: Callable[[], object]) -> None:
    with contextlib.suppress(ProtocolError):
        fn()


def ike_header(data: bytes) -> None:
    only_protocol_errors(lambda: parse_header(data))


def ike_message(data: bytes) -> None:
    """Header, payload chain and the exchange rules, without keys."""
    only_protocol_errors(lambda: decode(data))


def payload(data: bytes) -> None:
    """One payload body: the first octet picks the decoder (every type we parse)."""
    if not data:
        return
    ptype = data[0]
    only_protocol_errors(lambda: pull_payload(ptype, bool(ptype & 1), data, 1, len(data)))


def sk_datagram(data: bytes) -> None:
    """A protected datagram (SK or SKF) opened with a real key: tampered octets."""
    for d in golden_decrypted()[:2]:
        only_protocol_errors(lambda d=d: decode(data, d.cipher))


def sk_inner(data: bytes) -> None:
    """The SK payload's plaintext, properly encrypted and authenticated (so the fuzzer
    gets past the integrity check): padding, inner chain, rules. data[0] picks a cipher
    (AEAD or CBC+HMAC), data[1] the first inner payload type; the rest is sealed as it
    is (its last octet is the Pad Length, so bad padding is reached too)."""
    if len(data) < 2:
        return
    options = golden_decrypted()
    d = options[data[0] % len(options)]
    m0 = d.message
    body = data[2:]
    block = d.cipher.block_size
    body += bytes(-len(body) % block)
    header = HEADER.pack(m0.spi_i, m0.spi_r, PayloadType.SK, 0x20, m0.exchange,
                         int(m0.flags), m0.message_id, 0)
    size = IKE_HEADER_SIZE + PAYLOAD_HEADER_SIZE + d.cipher.iv_size + len(body) \
        + d.cipher.icv_size
    aad = header[:24] + struct.pack("!I", size) + GENERIC_HEADER.pack(
        data[1], 0, size - IKE_HEADER_SIZE)
    sealed = aad + d.cipher.seal(aad, body)
    only_protocol_errors(lambda: decode(sealed, d.cipher))


def skf_reassembly(data: bytes) -> None:
    """A run of authentic SKF fragments (number, total, chunk from the input) into one
    Reassembler: caps, duplicates, totals changing, the reassembled chain."""
    d = golden_decrypted()[0]
    m0 = d.message
    reassembler = Reassembler(8, 4096)
    at = 0
    while at + 5 <= len(data):
        number, total, size = data[at], data[at + 1], data[at + 2] * 4
        first = data[at + 3]
        chunk = data[at + 4: at + 4 + size]
        at += 4 + size
        msg = Message(m0.exchange, m0.spi_i, m0.spi_r, m0.message_id, m0.is_initiator,
                      m0.is_response, [], [])
        raw = seal(msg, (), chunk, d.cipher, enc_type=PayloadType.SKF,
                   enc_next=first if number == 1 else 0,
                   extra=FRAGMENT_FIELDS.pack(number, total))

        def step(raw: bytes = raw) -> None:
            reassembler.add(decode(raw, d.cipher))
        only_protocol_errors(step)


LOCAL_TS = (tsmod.from_network("198.51.100.0/24"), tsmod.from_network("2001:db8::/32"),
            tsmod.from_network("0.0.0.0/0", 6, 443, 443))


def traffic_selectors(data: bytes) -> None:
    """TSi/TSr bodies, then narrowing against ours (what a responder does with them)."""
    def run() -> None:
        p = pull_payload(PayloadType.TSI, False, data, 0, len(data))
        assert isinstance(p, TsiPayload | TsrPayload)
        for theirs in p.selectors:
            tsmod.format_ts(theirs)
            for ours in LOCAL_TS:
                tsmod.intersect(ours, theirs)
    only_protocol_errors(run)


def sa_proposals(data: bytes) -> None:
    """An SA payload, then proposal selection as IKE_SA_INIT / CREATE_CHILD_SA do it."""
    def run() -> None:
        p = pull_payload(PayloadType.SA, False, data, 0, len(data))
        assert isinstance(p, SaPayload)
        props.describe_offer(p.proposals)
        for local, protocol in ((props.DEFAULT_IKE, ProtocolId.IKE),
                                (props.DEFAULT_ESP, ProtocolId.ESP)):
            for rule in props.DhRule:
                chosen = props.select(local, p.proposals, rule)
                if chosen is not None and chosen.protocol == protocol:
                    props.suite_of(chosen)
    only_protocol_errors(run)


def identity(data: bytes) -> None:
    """IDi/IDr bodies, and printing them (logs, events, status)."""
    def run() -> None:
        p = pull_payload(PayloadType.IDI, False, data, 0, len(data))
        assert isinstance(p, IdiPayload | IdrPayload)
        str(Identity(p.id_type, p.data))
    only_protocol_errors(run)


@cache
def trust() -> TrustStore:
    certs = [x509.load_der_x509_certificate(c) for c in golden_certificates()]
    cas = [c for c in certs if c.issuer == c.subject]
    return TrustStore(cas or certs[:1])


def certificate(data: bytes) -> None:
    """A peer certificate (DER) through what IKE_AUTH does with it: parse, chain to a
    CA, match the identity, take its public key (ValueError only from parsing)."""
    try:
        cert = x509.load_der_x509_certificate(data)
    except ValueError:
        return
    def run() -> None:
        trust().verify(cert, [], datetime(2026, 1, 1, tzinfo=UTC))
        identity_matches(cert, 2, b"left.example.org")
        identity_matches(cert, 1, b"\xc0\x00\x02\x01")
        cert.public_key()
    only_protocol_errors(run)


# --------------------------------------------------------------------------- kernel codec


@cache
def kernel_seeds() -> list[bytes]:
    """Messages as the kernel sends them (our encoders build the same layouts)."""
    spec = SaSpec(ip_address("192.0.2.1"), ip_address("192.0.2.2"), 0x1234, 0x100,
                  aead=Algorithm("rfc4106(gcm(aes))", bytes(20), 128))
    pol = PolicySpec(Selector(ip_network("198.51.100.0/24"), ip_network("203.0.113.0/24")),
                     Direction.OUT, index=0x19)
    return [codec.encode_sa(spec, 1), codec.encode_policy(pol, 2),
            codec.encode_sa_id(MsgType.DELSA, spec.id, 3),
            codec.encode_policy_id(MsgType.DELPOLICY, pol.key, 4),
            codec.encode_sa(spec, 5) + codec.encode_policy(pol, 6)]


def kernel_messages(data: bytes) -> None:
    """A datagram on the kernel monitor socket: split into netlink messages, each decoded
    as an event; `KernelMessageError` is the one documented failure (the monitor turns it
    into EventsLost: a resync by dump)."""
    for offset, _length, _type, _seq in codec.split(data):
        with contextlib.suppress(codec.KernelMessageError):
            codec.decode_event(data, offset)


# --------------------------------------------------------------------------- responder


RESPONDER, INITIATOR, OTHER = ("192.0.2.1", 500), ("192.0.2.2", 500), ("192.0.2.3", 500)


@cache
def state_machine_seeds() -> list[bytes]:
    """A real setup, the initiator's datagrams as one input: each datagram prefixed with
    its length (2 octets) and a time step (1 octet)."""
    lines = []
    for f in golden():
        lines.append(b"".join(frame(bytes.fromhex(d["hex"]))
                              for d in f["datagrams"] if d["from_initiator"]))
    lines.append(b"".join(frame(d) for d in initiator_datagrams()))
    return lines


def frame(datagram: bytes, step: int = 0) -> bytes:
    return struct.pack("!HB", len(datagram), step) + datagram


def initiator_datagrams() -> list[bytes]:
    """What our own initiator sends to set up with the state-machine responder."""
    resp = IkeManager([psk_config("fuzz")])
    init = IkeManager([psk_config("fuzz")])
    init.initiate("fuzz", INITIATOR, RESPONDER, 1000.0)
    sent: list[bytes] = []
    for _ in range(6):
        for d in init.datagrams_to_send():
            sent.append(d.data)
            resp.receive_datagram(d.data, RESPONDER, INITIATOR, 1000.0)
        for d in resp.datagrams_to_send():
            init.receive_datagram(d.data, INITIATOR, RESPONDER, 1000.0)
    return sent


def responder_state_machine(data: bytes) -> None:
    """Datagrams (framed as in `state_machine_seeds`) fed to a responder with timers
    running: it never raises, holds no more than its budget, and afterwards a legitimate
    initiator from another address still sets up with it."""
    resp = IkeManager([psk_config("fuzz")])
    now, at = 1000.0, 0
    while at + 3 <= len(data):
        size, step = struct.unpack_from("!HB", data, at)
        datagram = data[at + 3: at + 3 + size]
        at += 3 + size
        now += step / 4
        resp.receive_datagram(datagram, RESPONDER, INITIATOR, now)
        resp.handle_timer(now)
        resp.datagrams_to_send()
        while resp.next_event() is not None:
            pass
    assert resp.budget.held <= resp.limits.memory
    legit = IkeManager([psk_config("fuzz")])
    sa = legit.initiate("fuzz", OTHER, RESPONDER, now)
    for _ in range(6):
        for d in legit.datagrams_to_send():
            resp.receive_datagram(d.data, RESPONDER, OTHER, now)
        for d in resp.datagrams_to_send():
            legit.receive_datagram(d.data, OTHER, RESPONDER, now)
    assert sa.state.name == "ESTABLISHED", f"a legitimate setup failed afterwards: {sa.state}"


# --------------------------------------------------------------------------- registry


def _all_parsed_types() -> tuple[int, ...]:
    return tuple(sorted(int(t) for t in PULL))


TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("ike_header", ike_header, golden_datagrams),
    Target("ike_message", ike_message, golden_datagrams),
    Target("payload", payload, bodies_of(*_all_parsed_types())),
    Target("sk_datagram", sk_datagram, lambda: [d.raw for d in golden_decrypted()]),
    Target("sk_inner", sk_inner, lambda: [
        bytes([i, (d.message.protected or [SaPayload(())])[0].payload_type])
        + push_chain(d.message.protected or []) for i, d in enumerate(golden_decrypted())]),
    Target("skf_reassembly", skf_reassembly, lambda: [
        bytes([1, 2, 4, PayloadType.NOTIFY]) + bytes(16) + bytes([2, 2, 1, 0]) + bytes(4)]),
    Target("traffic_selectors", traffic_selectors, lambda: [
        b[1:] for b in bodies_of(PayloadType.TSI, PayloadType.TSR)()]),
    Target("sa_proposals", sa_proposals, lambda: [b[1:] for b in bodies_of(PayloadType.SA)()]),
    Target("identity", identity, lambda: [
        b[1:] for b in bodies_of(PayloadType.IDI, PayloadType.IDR)()]),
    Target("certificate", certificate, golden_certificates),
    Target("kernel_messages", kernel_messages, kernel_seeds),
    Target("responder_state_machine", responder_state_machine, state_machine_seeds),
)}


def names() -> Sequence[str]:
    return list(TARGETS)
