"""EAP in IKE_AUTH (RFC 7296 2.16): the gateway's conversation and the client's.

The gateway proves itself with its certificate in its first IKE_AUTH response; the client
sends no AUTH until EAP is done. The gateway asks the EAP Identity, runs the method
(`EapServer`) over further IKE_AUTH exchanges, and once it sent EAP-Success both sides
send AUTH computed like a PSK AUTH with the MSK as the key (SK_pi/SK_pr if the method has
no MSK), over the same octets as without EAP. The CHILD_SA and configuration payload of
the client's first request are answered in the last response.

A method with certificates (EAP-TLS) hands the peer's chain up with the step at which its
handshake completed; the chain is verified here like a certificate AUTH's (the
connection's CAs, revocation, the identity in the certificate) before the step goes out.

A method's answer may come later (a RADIUS round trip): the request waits in
`EapExchange.pending`, unanswered (the peer's retransmissions of it are dropped by the
window), until the daemon calls `eap_answer`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import constant_time

from .. import auth
from ..certs import identity_matches
from ..config import Identity, RemoteAuth
from ..constants import AuthMethod, NotifyType
from ..eap import EapClient, EapCode, EapError, EapPacket, EapServer, EapStep, EapType, Outcome
from ..errors import ProtocolError
from ..events import FailureReason
from ..message import Message
from ..payloads import AuthPayload, EapPayload, IdiPayload, IdrPayload, Payload, id_body
from ..revocation import RevocationStore
from .base import notify
from .ike_intermediate import int_auth

if TYPE_CHECKING:
    from ..sa import IkeSa


@dataclass(slots=True)
class EapExchange:
    """The gateway's EAP state for one IKE SA, until IKE_AUTH is done."""

    first: Message  # the client's first IKE_AUTH request (SA, TS, CP)
    idi: IdiPayload
    idr: IdrPayload  # ours
    identifier: int = 1
    identity: str | None = None
    server: EapServer | None = None
    pending: Message | None = None  # a request waiting for the server's answer
    msk: bytes | None = field(default=None, repr=False)  # set at EAP-Success


def _msk_auth(sa: IkeSa, msk: bytes, initiator_side: bool, id_payload: IdiPayload | IdrPayload,
              auth_mid: int) -> bytes:
    """AUTH of one side with the MSK as the shared key (RFC 7296 2.16); after
    IKE_INTERMEDIATE exchanges bound to them with the first IKE_AUTH's ID `auth_mid`."""
    keys, setup = sa.keys, sa.setup
    assert keys is not None and setup is not None
    if initiator_side:
        prefix, nonce = setup.init_request, setup.nonce_r
    else:
        prefix, nonce = setup.init_response, setup.nonce_i
    ours = initiator_side == sa.is_initiator
    octets = auth.signed_octets(prefix, nonce, keys.prf, keys.sk_p(ours, sa.is_initiator),
                                id_body(id_payload), int_auth(setup, auth_mid))
    key = msk or keys.sk_p(ours, sa.is_initiator)
    return auth.psk_auth(keys.prf, key, octets)


def _eap(packet: bytes) -> EapPayload:
    return EapPayload(packet)


def verify_chain(sa: IkeSa, remote: RemoteAuth, chain: Sequence[x509.Certificate],
                 identity: Identity) -> str | None:
    """Why the certificate chain an EAP method saw is refused (None: accepted): it must
    lead to one of the connection's CAs, name `identity` and not be revoked, with what
    the daemon knows (CRLs and OCSP answers) at the IKE SA's wall time."""
    if remote.trust is None:
        return "no CA configured to verify the peer's certificate"
    now = datetime.fromtimestamp(sa.wall_time, UTC)
    end_entity = chain[0]
    try:
        path = remote.trust.verify(end_entity, chain[1:], now)
    except ProtocolError as exc:
        return str(exc)
    if not identity_matches(end_entity, identity.id_type, identity.data):
        return f"identity {identity} is not in the certificate of " \
               f"{end_entity.subject.rfc4514_string()}"
    store = remote.crls if remote.crls is not None else RevocationStore()
    return store.check(path, remote.revocation, now, fetched=True).why


# --- gateway ---------------------------------------------------------------------------


def start(sa: IkeSa, msg: Message, idi: IdiPayload, idr: IdrPayload) -> list[Payload]:
    """The client's first IKE_AUTH came without AUTH: ask its EAP Identity."""
    assert sa.setup is not None
    exchange = EapExchange(first=msg, idi=idi, idr=idr)
    sa.setup.eap = exchange
    request = EapPacket(EapCode.REQUEST, exchange.identifier, EapType.IDENTITY)
    return [_eap(request.encode())]


def respond(sa: IkeSa, msg: Message, now: float) -> None:
    """A later IKE_AUTH request of the client: its next EAP response, or its final AUTH."""
    assert sa.setup is not None and sa.setup.eap is not None
    exchange = sa.setup.eap
    if exchange.msk is not None:
        _final_auth(sa, exchange, msg, now)
        return
    payload = msg.find(EapPayload)
    if payload is None:
        raise ProtocolError("IKE_AUTH request without EAP during EAP",
                            notify=NotifyType.AUTHENTICATION_FAILED)
    packet = EapPacket.parse(payload.data)
    if packet.code != EapCode.RESPONSE:
        raise ProtocolError(f"EAP code {packet.code} from the client")
    if exchange.server is None:
        _identity(sa, exchange, msg, packet, now)
        return
    exchange.pending = msg
    step = exchange.server.process(packet)
    if step is not None:
        eap_answer(sa, step, now)


def _identity(sa: IkeSa, exchange: EapExchange, msg: Message, packet: EapPacket,
              now: float) -> None:
    if packet.type != EapType.IDENTITY or packet.identifier != exchange.identifier:
        _failed(sa, msg, EapStep.failure(packet.identifier, "expected the EAP Identity"))
        return
    factory = sa.conf().remote_auth.eap
    assert factory is not None
    exchange.identity = packet.data.decode("utf-8", errors="replace")
    exchange.server = factory(sa.id)
    exchange.pending = msg
    step = exchange.server.begin(exchange.identity, (packet.identifier + 1) % 256)
    if step is not None:
        eap_answer(sa, step, now)


def eap_answer(sa: IkeSa, step: EapStep, now: float) -> None:
    """The EAP server's answer to the waiting request (the daemon calls this for an
    asynchronous backend; a synchronous one is answered at once)."""
    setup = sa.setup
    exchange = setup.eap if setup is not None else None
    if exchange is None or exchange.pending is None:
        return  # the IKE SA gave up meanwhile
    request, exchange.pending = exchange.pending, None
    if step.peer_chain:
        step = _judge_chain(sa, exchange, step)
    if step.outcome is Outcome.FAILURE:
        _failed(sa, request, step)
        return
    if step.outcome is Outcome.SUCCESS:
        exchange.msk = step.msk
    sa.respond(request, [_eap(step.packet)])


def _judge_chain(sa: IkeSa, exchange: EapExchange, step: EapStep) -> EapStep:
    """The step, or EAP-Failure if the client's certificate does not pass."""
    name = exchange.server.method_name if exchange.server is not None else "EAP"
    try:
        identity = Identity.parse(exchange.identity or "")
    except ValueError:
        why: str | None = f"EAP identity {exchange.identity!r} is no identity a " \
                          "certificate can hold"
    else:
        why = verify_chain(sa, sa.conf().remote_auth, step.peer_chain, identity)
    if why is None:
        return step
    identifier = EapPacket.parse(step.packet).identifier
    return EapStep.failure(identifier, f"{name}: client certificate refused: {why}",
                           exchange.identity or "")


def _failed(sa: IkeSa, request: Message, step: EapStep) -> None:
    sa.respond(request, [_eap(step.packet), notify(NotifyType.AUTHENTICATION_FAILED)])
    who = f" (EAP identity {step.identity!r})" if step.identity else ""
    sa.fail(FailureReason.AUTHENTICATION_FAILED, f"{step.reason or 'EAP failed'}{who}")


def _final_auth(sa: IkeSa, exchange: EapExchange, msg: Message, now: float) -> None:
    from . import ike_auth  # noqa: PLC0415 - ike_auth imports this module

    assert exchange.msk is not None
    auth_payload = msg.find(AuthPayload)
    if auth_payload is None:
        raise ProtocolError("IKE_AUTH request without AUTH after EAP-Success")
    expected = _msk_auth(sa, exchange.msk, True, exchange.idi, exchange.first.message_id)
    if auth_payload.method != AuthMethod.PSK or \
            not constant_time.bytes_eq(expected, auth_payload.data):
        sa.respond(msg, [notify(NotifyType.AUTHENTICATION_FAILED)])
        sa.fail(FailureReason.AUTHENTICATION_FAILED,
                f"AUTH with the EAP MSK does not verify (EAP identity {exchange.identity!r})")
        return
    ours = AuthPayload(AuthMethod.PSK, _msk_auth(sa, exchange.msk, False, exchange.idr,
                                                 exchange.first.message_id))
    ike_auth.finish_responder(sa, exchange.first, msg, [ours], now, exchange.identity)


# --- client ----------------------------------------------------------------------------


class EapPeer:
    """The client's EAP: answers the gateway's requests until EAP-Success."""

    __slots__ = ("auth_mid", "chain_checked", "client", "done", "msk")

    def __init__(self, client: EapClient, auth_mid: int) -> None:
        self.client = client
        self.auth_mid = auth_mid  # the first IKE_AUTH request's message ID
        self.done = False
        self.chain_checked = False
        self.msk = b""

    def check_chain(self, sa: IkeSa, idr: IdrPayload) -> None:
        """Once the method saw the gateway's certificate chain (EAP-TLS): verify it
        with the connection's CAs, for the gateway's IKE identity; EapError if refused."""
        chain = self.client.peer_chain
        if self.chain_checked or not chain:
            return
        self.chain_checked = True
        why = verify_chain(sa, sa.conf().remote_auth, chain, Identity(idr.id_type, idr.data))
        if why is not None:
            raise EapError(f"the gateway's EAP-TLS certificate is refused: {why}")

    def answer(self, payload: EapPayload) -> bytes | None:
        """Our EAP response, or None after EAP-Success; raise EapError on failure."""
        try:
            packet = EapPacket.parse(payload.data)
        except ProtocolError as exc:
            raise EapError(f"malformed EAP packet: {exc}") from None
        if packet.code == EapCode.SUCCESS:
            if not self.client.msk or (self.client.peer_chain and not self.chain_checked):
                raise EapError("EAP-Success before the method completed")
            self.done, self.msk = True, self.client.msk
            return None
        if packet.code == EapCode.FAILURE:
            raise EapError("the gateway sent EAP-Failure (login refused)")
        if packet.code != EapCode.REQUEST:
            raise EapError(f"EAP code {packet.code} from the gateway")
        if packet.type == EapType.IDENTITY:
            return EapPacket(EapCode.RESPONSE, packet.identifier, EapType.IDENTITY,
                             self.client.identity.encode()).encode()
        if packet.type != self.client.method_type:
            return EapPacket(EapCode.RESPONSE, packet.identifier, EapType.NAK,
                             bytes((self.client.method_type,))).encode()
        return self.client.process(packet)

    def auth_payload(self, sa: IkeSa, idi: IdiPayload) -> AuthPayload:
        return AuthPayload(AuthMethod.PSK, _msk_auth(sa, self.msk, True, idi, self.auth_mid))

    def verify(self, sa: IkeSa, idr: IdrPayload, payload: AuthPayload) -> bool:
        expected = _msk_auth(sa, self.msk, False, idr, self.auth_mid)
        return payload.method == AuthMethod.PSK and \
            constant_time.bytes_eq(expected, payload.data)
