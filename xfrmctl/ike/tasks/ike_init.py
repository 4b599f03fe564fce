"""IKE_SA_INIT (RFC 7296 1.2): proposals, key exchange, nonces, NAT detection.

The initiator's `IkeInit` retries with a COOKIE or another group when asked (at most
MAX_INIT_RETRIES times); the responder's `respond` picks a proposal from all candidate
connections. Both derive the keys and hand over to IKE_AUTH (ike_auth.py).
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .. import auth, dh, proposals, ts
from ..config import ChildConfig
from ..constants import CertEncoding, ExchangeType, NotifyType
from ..errors import ProtocolError
from ..events import FailureReason
from ..keys import KeyState, new_nonce
from ..message import Message, encode
from ..payloads import (
    CertReqPayload,
    KePayload,
    NoncePayload,
    NotifyPayload,
    Payload,
    Proposal,
    SaPayload,
)
from ..proposals import Suite, suite_of
from ..revocation import Verdict
from ..state import IkeState
from .base import error_notify, notify
from .ike_intermediate import Intermediate
from .ike_intermediate import start as start_intermediate

if TYPE_CHECKING:
    from ..sa import Endpoint, IkeSa
    from .ike_eap import EapExchange

MAX_INIT_RETRIES = 3  # COOKIE and INVALID_KE_PAYLOAD round trips before giving up


@dataclass(slots=True)
class Setup:
    """What the initial exchanges (IKE_SA_INIT, then IKE_AUTH) share. The IKE SA holds
    it until IKE_AUTH is done, then frees it: a gateway keeps thousands of SAs."""

    nonce_i: bytes = b""
    nonce_r: bytes = b""
    init_request: bytes = b""  # RealMessage1
    init_response: bytes = b""  # RealMessage2
    ke: dh.KeyExchange | None = None
    cookie: bytes | None = None
    retries: int = 0
    sent_proposals: tuple[Proposal, ...] = ()
    peer_certreq: bool = False
    peer_cas: frozenset[bytes] = frozenset()  # SHA-1 SPKI hashes the peer's CERTREQs named
    revocation_fetch: Verdict | None = None  # what IKE_AUTH waits for (revocation.py)
    revocation_fetched: bool = False
    parked: Callable[[float], None] | None = None  # the IKE_AUTH step to run on resume
    peer_use_ppk: bool = False  # the peer sent USE_PPK (RFC 8784)
    children: list[ChildConfig] = field(default_factory=list)  # to bring up after AUTH
    eap: EapExchange | None = None  # the gateway's EAP conversation (ike_eap.py)
    peer_intermediate: bool = False  # the peer sent INTERMEDIATE_EXCHANGE_SUPPORTED
    intermediate: Intermediate | None = None  # RFC 9370 additional key exchanges


def nat_hash(spi_i: bytes, spi_r: bytes, endpoint: Endpoint) -> bytes:
    addr = ts.address(endpoint[0]).packed
    return hashlib.sha1(spi_i + spi_r + addr + struct.pack("!H", endpoint[1])).digest()


def init_notifies(sa: IkeSa) -> list[Payload]:
    conf = sa.config or sa.candidates[0]
    spi_r = sa.spi_r if not sa.is_initiator else b"\0" * 8
    src_hash = nat_hash(sa.spi_i, spi_r, sa.local)
    if conf.force_encap:
        src_hash = os.urandom(20)  # make the peer see a NAT: UDP-encapsulate ESP
    notifies: list[Payload] = [
        notify(NotifyType.NAT_DETECTION_SOURCE_IP, src_hash),
        notify(NotifyType.NAT_DETECTION_DESTINATION_IP, nat_hash(sa.spi_i, spi_r, sa.remote)),
    ]
    if conf.fragmentation:
        notifies.append(notify(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED))
    if _offers_intermediate(sa):
        notifies.append(notify(NotifyType.INTERMEDIATE_EXCHANGE_SUPPORTED))
    hashes = b"".join(struct.pack("!H", h) for h in sorted(auth.SUPPORTED_HASHES))
    if hashes:
        notifies.append(notify(NotifyType.SIGNATURE_HASH_ALGORITHMS, hashes))
    if offers_ppk(sa):
        notifies.append(notify(NotifyType.USE_PPK))
    return notifies


def _offers_intermediate(sa: IkeSa) -> bool:
    """RFC 9242 2.1: the initiator announces IKE_INTERMEDIATE when it proposes additional
    key exchanges; the responder answers an initiator that announced it."""
    if sa.is_initiator:
        return any(spec.has_addke for spec in sa.conf().proposals)
    return sa.setup is not None and sa.setup.peer_intermediate


def offers_ppk(sa: IkeSa) -> bool:
    """Whether our IKE_SA_INIT carries USE_PPK: the initiator's connection has a PPK; a
    responder answers one that sent it when a candidate connection has a PPK."""
    if sa.is_initiator:
        return sa.conf().ppk is not None
    return sa.setup is not None and sa.setup.peer_use_ppk and any(
        c.ppk is not None for c in sa.candidates)


def read_init_notifies(sa: IkeSa, msg: Message) -> None:
    src = msg.find_all(NotifyPayload)
    src_hashes = [n.data for n in src if n.notify_type == NotifyType.NAT_DETECTION_SOURCE_IP]
    dst_hashes = [n.data for n in src if n.notify_type == NotifyType.NAT_DETECTION_DESTINATION_IP]
    if src_hashes:
        sa.nat_remote = nat_hash(sa.spi_i, msg.spi_r, sa.remote) not in src_hashes
    if dst_hashes:
        sa.nat_local = nat_hash(sa.spi_i, msg.spi_r, sa.local) not in dst_hashes
    if (sa.config or sa.candidates[0]).force_encap and src_hashes:
        sa.nat_local = True
    sa.peer_fragmentation = msg.notify(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED) is not None
    if sa.setup is not None:
        sa.setup.peer_intermediate = \
            msg.notify(NotifyType.INTERMEDIATE_EXCHANGE_SUPPORTED) is not None
        sa.setup.peer_use_ppk = msg.notify(NotifyType.USE_PPK) is not None
    hashes = msg.notify(NotifyType.SIGNATURE_HASH_ALGORITHMS)
    if hashes is not None:
        data = hashes.data[: len(hashes.data) // 2 * 2]
        sa.peer_hashes = {v for (v,) in struct.iter_unpack("!H", data)}
    mobike = (sa.config or sa.candidates[0]).mobike and bool(src_hashes)
    if (sa.nat_local or sa.nat_remote or mobike) and sa.is_initiator and sa.remote[1] == 500:
        # RFC 7296 2.23: after a NAT is detected, IKE moves to port 4500; with MOBIKE
        # wanted and a peer doing NAT-T, IKE_AUTH already goes there (RFC 4555 3.3, as
        # strongSwan): a NAT on a later path then needs no change of port.
        sa.remote = (sa.remote[0], 4500)
        sa.local = (sa.local[0], 4500)


def requested_cas(msg: Message) -> frozenset[bytes]:
    """The CA hashes (SHA-1 of the SPKI, RFC 7296 3.7) named by the peer's CERTREQs."""
    data = b"".join(p.data for p in msg.find_all(CertReqPayload)
                    if p.encoding == CertEncoding.X509_SIGNATURE)
    return frozenset(data[i : i + 20] for i in range(0, len(data) - len(data) % 20, 20))


def certreq(sa: IkeSa) -> CertReqPayload | None:
    for conf in sa.candidates if sa.config is None else (sa.config,):
        trust = conf.remote_auth.trust
        if conf.send_certreq and trust is not None:
            return CertReqPayload(CertEncoding.X509_SIGNATURE, trust.certreq_data())
    return None


def _derive_keys(sa: IkeSa, setup: Setup, suite: Suite, shared: bytes) -> None:
    sa.suite = suite
    if suite.addke:
        setup.intermediate = Intermediate(list(suite.addke))
    sa.keys = KeyState.derive(suite, shared, setup.nonce_i, setup.nonce_r, sa.spi_i,
                              sa.spi_r, sa.is_initiator)


class IkeInit:
    """The initiator's IKE_SA_INIT; sent by `IkeSa.initiate`, then IKE_AUTH follows."""

    __slots__ = ()
    name = "IKE_SA_INIT"

    def build(self, sa: IkeSa, now: float) -> Message:
        conf, setup = sa.conf(), sa.setup
        assert setup is not None and setup.ke is not None
        setup.sent_proposals = tuple(
            spec.to_wire(i + 1, b"", with_addke=True) for i, spec in enumerate(conf.proposals))
        payloads: list[Payload] = []
        if setup.cookie is not None:
            payloads.append(notify(NotifyType.COOKIE, setup.cookie))
        payloads += [SaPayload(setup.sent_proposals), KePayload(setup.ke.group,
                                                                setup.ke.public_key),
                     NoncePayload(setup.nonce_i), *init_notifies(sa)]
        msg = Message(ExchangeType.IKE_SA_INIT, sa.spi_i, b"\0" * 8, 0, True, False, payloads)
        setup.init_request = encode(msg)
        return msg

    def process(self, sa: IkeSa, msg: Message, now: float) -> None:
        setup = sa.setup
        assert setup is not None and setup.ke is not None
        cookie = msg.notify(NotifyType.COOKIE)
        invalid_ke = msg.notify(NotifyType.INVALID_KE_PAYLOAD)
        if cookie is not None or invalid_ke is not None:
            self._retry(sa, setup, cookie, invalid_ke, now)
            return
        error = error_notify(msg)
        if error is not None:
            sa.fail_from_notify(error, ours=proposals.describe_offer(setup.sent_proposals))
            return
        sa_payload, ke, nonce = msg.find(SaPayload), msg.find(KePayload), msg.find(NoncePayload)
        if sa_payload is None or ke is None or nonce is None or len(sa_payload.proposals) != 1:
            raise ProtocolError("IKE_SA_INIT response lacks SA, KE or Nonce")
        chosen = sa_payload.proposals[0]
        if not proposals.accept_chosen(setup.sent_proposals, chosen):
            raise ProtocolError("responder chose a proposal we did not offer",
                                notify=NotifyType.NO_PROPOSAL_CHOSEN)
        suite = suite_of(chosen)
        if suite.dh != setup.ke.group or ke.group != setup.ke.group:
            raise ProtocolError("responder's key exchange group does not match")
        sa.spi_r = msg.spi_r
        setup.nonce_r = nonce.data
        read_init_notifies(sa, msg)
        if suite.addke and not setup.peer_intermediate:
            raise ProtocolError("responder chose additional key exchanges without "
                                "INTERMEDIATE_EXCHANGE_SUPPORTED")
        if sa.conf().ppk_required and not setup.peer_use_ppk:
            sa.fail(FailureReason.AUTHENTICATION_FAILED, "a PPK is required, but the peer "
                    "does not support PPK (no USE_PPK in its IKE_SA_INIT)")
            return
        _derive_keys(sa, setup, suite, setup.ke.shared_secret(ke.data))
        setup.peer_certreq = msg.find(CertReqPayload) is not None
        setup.peer_cas = requested_cas(msg)
        sa.move_to(IkeState.AUTH_SENT)  # IKE_INTERMEDIATE exchanges, if any, come first
        start_intermediate(sa, now)

    def _retry(self, sa: IkeSa, setup: Setup, cookie: NotifyPayload | None,
               invalid_ke: NotifyPayload | None, now: float) -> None:
        conf = sa.conf()
        setup.retries += 1
        if setup.retries > MAX_INIT_RETRIES:
            sa.fail(FailureReason.PROTOCOL_ERROR, "too many IKE_SA_INIT retries")
            return
        if cookie is not None:
            setup.cookie = cookie.data
        if invalid_ke is not None:
            group = int.from_bytes(invalid_ke.data[:2], "big") if len(invalid_ke.data) >= 2 \
                else 0
            offered = {g for spec in conf.proposals for g in spec.dh_groups}
            if group not in offered:
                sa.fail(FailureReason.INVALID_KE_PAYLOAD,
                        f"peer wants key exchange group {group}, which we do not offer",
                        ours=tuple(str(g) for g in sorted(offered)), theirs=(str(group),))
                return
            setup.ke = dh.new_key_exchange(group)
            setup.cookie = None  # RFC 7296 2.6: a new KE invalidates the cookie exchange
        sa.move_to(IkeState.INIT_SENT)
        sa.send_init(self, now)


def respond(sa: IkeSa, msg: Message, raw: bytes, now: float) -> None:
    """The responder's IKE_SA_INIT."""
    setup = sa.setup
    if sa.state is not IkeState.CREATED or msg.message_id != 0 or setup is None:
        raise ProtocolError("unexpected IKE_SA_INIT", notify=NotifyType.INVALID_SYNTAX)
    sa_payload, ke, nonce = msg.find(SaPayload), msg.find(KePayload), msg.find(NoncePayload)
    if sa_payload is None or ke is None or nonce is None:
        raise ProtocolError("IKE_SA_INIT request lacks SA, KE or Nonce")
    sa.spi_i = msg.spi_i
    setup.init_request = raw
    ours = [spec for conf in sa.candidates for spec in conf.proposals]
    # RFC 7296 3.3.1: an IKE_SA_INIT proposal carries no SPI (it is in the header); one
    # that does is skipped, and the SPI is never echoed.
    # RFC 9242: additional key exchanges only with an initiator that can do IKE_INTERMEDIATE
    intermediate = msg.notify(NotifyType.INTERMEDIATE_EXCHANGE_SUPPORTED) is not None
    chosen = proposals.select(ours, sa_payload.proposals, spi_size=0, addke=intermediate)
    if chosen is None:
        sa.respond(msg, [notify(NotifyType.NO_PROPOSAL_CHOSEN)], plain=True)
        sa.fail(FailureReason.NO_PROPOSAL_CHOSEN, "no common IKE proposal",
                ours=tuple(str(s) for s in ours),
                theirs=tuple(proposals.describe_offer(sa_payload.proposals)))
        return
    suite = suite_of(chosen)
    if suite.dh != ke.group:
        assert suite.dh is not None
        sa.respond(msg, [notify(NotifyType.INVALID_KE_PAYLOAD, struct.pack("!H", suite.dh))],
                   plain=True)
        sa.close(FailureReason.INVALID_KE_PAYLOAD.value, quiet=True)
        return
    our_data, shared = dh.respond(suite.dh, ke.data)
    setup.nonce_i, setup.nonce_r = nonce.data, new_nonce()
    read_init_notifies(sa, msg)
    _derive_keys(sa, setup, suite, shared)
    payloads: list[Payload] = [SaPayload((chosen,)), KePayload(suite.dh, our_data),
                               NoncePayload(setup.nonce_r), *init_notifies(sa)]
    request = certreq(sa)
    if request is not None:
        payloads.append(request)
    setup.init_response = sa.respond(msg, payloads, plain=True)[0]
    sa.move_to(IkeState.INIT_DONE)
