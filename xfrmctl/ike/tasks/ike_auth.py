"""IKE_AUTH (RFC 7296 1.2, 2.15): identities, AUTH (PSK or signatures, RFC 7427),
certificates, the configuration payload and the first CHILD_SA.

The initiator's `IkeAuth` follows IKE_SA_INIT; `respond` picks the connection by the
peer's identity among the candidates. Certificates go out as `IkeConfig.send_cert` says
(default: when the peer sent a CERTREQ).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import constant_time
from cryptography.hazmat.primitives.serialization import Encoding

from .. import auth
from ..certs import TrustStore, id_for_certificate, identity_matches
from ..config import AuthMethodName, Identity, IkeConfig, LocalAuth, SendCert
from ..constants import AuthMethod, CertEncoding, ExchangeType, NotifyType
from ..errors import LocalError, ProtocolError
from ..events import FailureReason, IkeSaUp
from ..message import Message
from ..payloads import (
    AuthPayload,
    CertPayload,
    CertReqPayload,
    IdiPayload,
    IdrPayload,
    Payload,
    SaPayload,
    id_body,
)
from ..state import IkeState
from . import ike_config, mobike
from .base import error_notify, notify
from .child_create import ChildRequest, answer_child_request, finish_child_request, new_request
from .ike_init import Setup, certreq

if TYPE_CHECKING:
    from ..sa import IkeSa


def local_identity(sa: IkeSa, conf: IkeConfig) -> Identity:
    if conf.local_id is not None:
        return conf.local_id
    cert = conf.local_auth.certificate
    if cert is not None and conf.local_auth.method is AuthMethodName.PUBKEY:
        id_type, data = id_for_certificate(cert)
        return Identity(id_type, data, cert.subject.rfc4514_string())
    return Identity.from_address(sa.local[0])


def _sends_cert(conf: IkeConfig, setup: Setup) -> bool:
    """Our CERT payloads go out always, never, or (default) when the peer sent a
    CERTREQ, whichever CAs it named (as strongSwan's send_cert = ifasked)."""
    if conf.send_cert is SendCert.IFASKED:
        return setup.peer_certreq
    return conf.send_cert is SendCert.ALWAYS


def auth_payloads(sa: IkeSa, setup: Setup, conf: IkeConfig,
                  id_payload: IdiPayload | IdrPayload, octets_prefix: bytes,
                  peer_nonce: bytes) -> list[Payload]:
    """CERT and AUTH payloads proving our identity."""
    keys = sa.keys
    assert keys is not None
    octets = auth.signed_octets(octets_prefix, peer_nonce, keys.prf,
                                keys.sk_p(True, sa.is_initiator), id_body(id_payload))
    local: LocalAuth = conf.local_auth
    if local.method is AuthMethodName.PSK:
        if local.psk is None:
            raise LocalError(f"connection {conf.name}: PSK authentication without a PSK")
        return [AuthPayload(AuthMethod.PSK, auth.psk_auth(keys.prf, local.psk, octets))]
    if local.private_key is None or local.certificate is None:
        raise LocalError(f"connection {conf.name}: pubkey auth needs a key and certificate")
    # RFC 7427 4: a peer without SIGNATURE_HASH_ALGORITHMS gets the legacy method of
    # the key type (RSA_SIG, ECDSA_SHA*_P*); auth.sign does that for an empty set.
    method, data = auth.sign(local.private_key, octets, set(sa.peer_hashes))
    if not _sends_cert(conf, setup):
        return [AuthPayload(method, data)]
    certs: list[Payload] = [CertPayload(CertEncoding.X509_SIGNATURE,
                                        local.certificate.public_bytes(Encoding.DER))]
    certs += [CertPayload(CertEncoding.X509_SIGNATURE, c.public_bytes(Encoding.DER))
              for c in local.intermediates]
    return [*certs, AuthPayload(method, data)]


def verify_peer_auth(sa: IkeSa, conf: IkeConfig, msg: Message,
                     id_payload: IdiPayload | IdrPayload, auth_payload: AuthPayload,
                     octets_prefix: bytes, our_nonce: bytes) -> str | None:
    """Check the peer's AUTH; None when good, else why not."""
    keys = sa.keys
    assert keys is not None
    octets = auth.signed_octets(octets_prefix, our_nonce, keys.prf,
                                keys.sk_p(False, sa.is_initiator), id_body(id_payload))
    remote = conf.remote_auth
    if remote.method is AuthMethodName.PSK:
        if auth_payload.method != AuthMethod.PSK:
            return f"peer used auth method {auth_payload.method}, we require PSK"
        if remote.psk is None:
            return "no PSK configured for the peer"
        expected = auth.psk_auth(keys.prf, remote.psk, octets)
        if not constant_time.bytes_eq(expected, auth_payload.data):
            return "PSK AUTH payload does not verify (wrong pre-shared key?)"
        return None
    return _verify_certificate_auth(sa, remote.trust, msg, id_payload, auth_payload, octets)


def _verify_certificate_auth(sa: IkeSa, trust: TrustStore | None, msg: Message,
                             id_payload: IdiPayload | IdrPayload,
                             auth_payload: AuthPayload, octets: bytes) -> str | None:
    if trust is None:
        return "no CA configured to verify the peer's certificate"
    if auth_payload.method == AuthMethod.PSK:
        return "peer authenticated with a pre-shared key, we require a certificate"
    certs = [p for p in msg.find_all(CertPayload) if p.encoding == CertEncoding.X509_SIGNATURE]
    if not certs:
        return "peer sent no certificate"
    try:
        chain = [x509.load_der_x509_certificate(c.data) for c in certs]
    except ValueError as exc:
        return f"peer certificate does not parse: {exc}"
    end_entity = chain[0]
    try:
        trust.verify(end_entity, chain[1:], datetime.fromtimestamp(sa.wall_time, UTC))
        auth.verify(end_entity.public_key(), auth_payload.method, auth_payload.data, octets)
    except ProtocolError as exc:
        return str(exc)
    if not identity_matches(end_entity, id_payload.id_type, id_payload.data):
        return f"identity {Identity(id_payload.id_type, id_payload.data)} is not in " \
               f"the certificate of {end_entity.subject.rfc4514_string()}"
    return None


def established(sa: IkeSa, now: float) -> None:
    """IKE_AUTH succeeded (either role): timers, and IkeSaUp."""
    conf = sa.conf()
    sa.move_to(IkeState.ESTABLISHED)
    sa.established_at = now
    sa.timers.half_open = None
    sa.timers.arm_rekey(conf, now)
    sa.timers.arm_lifetime(conf, now)
    sa.arm_dpd(now)
    assert sa.suite is not None and sa.local_id and sa.remote_id
    sa.emit(IkeSaUp(
        ike_sa=sa.id, connection=conf.name, spi_i=sa.spi_i, spi_r=sa.spi_r,
        initiator=sa.is_initiator, local=sa.local, remote=sa.remote, local_id=sa.local_id,
        remote_id=sa.remote_id, suite=sa.suite, nat_local=sa.nat_local,
        nat_remote=sa.nat_remote, virtual_ip=sa.virtual_ip))


class IkeAuth:
    """The initiator's IKE_AUTH, with the first CHILD_SA (the others follow in
    CREATE_CHILD_SA exchanges once it is done)."""

    __slots__ = ("child",)
    name = "IKE_AUTH"

    def __init__(self) -> None:
        self.child: ChildRequest | None = None

    def build(self, sa: IkeSa, now: float) -> Message:
        conf, setup = sa.conf(), sa.setup
        assert setup is not None
        sa.local_id = local_identity(sa, conf)
        idi = IdiPayload(sa.local_id.id_type, sa.local_id.data)
        payloads: list[Payload] = [idi]
        proof = auth_payloads(sa, setup, conf, idi, setup.init_request, setup.nonce_r)
        payloads += [p for p in proof if isinstance(p, CertPayload)]
        request = certreq(sa)
        if request is not None:
            payloads.append(request)
        if conf.initial_contact:
            payloads.append(notify(NotifyType.INITIAL_CONTACT))
        payloads += mobike.auth_notifies(sa)
        if conf.remote_id is not None:
            payloads.append(IdrPayload(conf.remote_id.id_type, conf.remote_id.data))
        payloads += [p for p in proof if isinstance(p, AuthPayload)]
        cp = ike_config.build(sa, conf)
        if cp is not None:
            payloads.append(cp)
        if setup.children:
            self.child = new_request(sa, setup.children.pop(0), None, create_child_sa=False)
            self.child.nonce, self.child.nonce_r = setup.nonce_i, setup.nonce_r
            payloads += self.child.payloads
        return sa.message(ExchangeType.IKE_AUTH, payloads)

    def process(self, sa: IkeSa, msg: Message, now: float) -> None:
        conf, setup = sa.conf(), sa.setup
        assert setup is not None
        idr = msg.find(IdrPayload)
        auth_payload = msg.find(AuthPayload)
        if idr is None or auth_payload is None:
            error = error_notify(msg)
            if error is not None:
                sa.fail_from_notify(error)
                return
            raise ProtocolError("IKE_AUTH response lacks IDr or AUTH")
        remote_id = Identity(idr.id_type, idr.data)
        if conf.remote_id is not None and remote_id != conf.remote_id:
            self._reject_responder(sa, f"peer identity {remote_id} is not the configured "
                                   f"{conf.remote_id}", ours=(str(conf.remote_id),),
                                   theirs=(str(remote_id),))
            return
        why = verify_peer_auth(sa, conf, msg, idr, auth_payload, setup.init_response,
                               setup.nonce_i)
        if why is not None:
            self._reject_responder(sa, why)
            return
        sa.remote_id = remote_id
        ike_config.process(sa, msg)  # before IkeSaUp, which carries it
        mobike.read_auth(sa, msg)
        established(sa, now)
        if self.child is not None:
            finish_child_request(sa, self.child, msg, now)
        for child in setup.children:
            sa.create_child(child.name, now)
        sa.setup = None

    @staticmethod
    def _reject_responder(sa: IkeSa, why: str, ours: tuple[str, ...] = (),
                          theirs: tuple[str, ...] = ()) -> None:
        """The responder's AUTH failed: tell it in a new INFORMATIONAL request (RFC 7296
        2.21.2), sent once and not waited for, then give up the IKE SA."""
        message = sa.message(ExchangeType.INFORMATIONAL,
                             [notify(NotifyType.AUTHENTICATION_FAILED)])
        message.message_id = sa.window.claim_id()
        sa.emit_datagrams(sa.encode(message))
        sa.fail(FailureReason.AUTHENTICATION_FAILED, why, ours=ours, theirs=theirs)


def _select_config(sa: IkeSa, idi: Identity, idr: Identity | None) -> IkeConfig | None:
    for conf in sa.candidates:
        if conf.remote_id is not None and conf.remote_id != idi:
            continue
        if idr is not None and conf.local_id is not None and conf.local_id != idr:
            continue
        return conf
    return None


def respond(sa: IkeSa, msg: Message, raw: bytes, now: float) -> None:
    """The responder's IKE_AUTH."""
    setup = sa.setup
    if sa.state is not IkeState.INIT_DONE or setup is None:
        raise ProtocolError("unexpected IKE_AUTH")
    idi, auth_payload = msg.find(IdiPayload), msg.find(AuthPayload)
    if idi is None or auth_payload is None:
        raise ProtocolError("IKE_AUTH request lacks IDi or AUTH")
    idr = msg.find(IdrPayload)
    remote_id = Identity(idi.id_type, idi.data)
    conf = _select_config(sa, remote_id, Identity(idr.id_type, idr.data) if idr else None)
    if conf is None:
        _reject(sa, msg, FailureReason.NO_MATCHING_CONFIG,
                f"no connection accepts peer identity {remote_id}",
                ours=tuple(str(c.remote_id or "%any") for c in sa.candidates),
                theirs=(str(remote_id),))
        return
    sa.config = conf
    setup.peer_certreq = msg.find(CertReqPayload) is not None
    why = verify_peer_auth(sa, conf, msg, idi, auth_payload, setup.init_request, setup.nonce_r)
    if why is not None:
        _reject(sa, msg, FailureReason.AUTHENTICATION_FAILED, why)
        return
    sa.remote_id = remote_id
    sa.local_id = local_identity(sa, conf)
    our_idr = IdrPayload(sa.local_id.id_type, sa.local_id.data)
    payloads: list[Payload] = [our_idr, *auth_payloads(sa, setup, conf, our_idr,
                                                       setup.init_response, setup.nonce_i)]
    cp = ike_config.respond(sa, conf, msg)
    if cp is not None:
        payloads.append(cp)
    mobike.read_auth(sa, msg)
    if sa.mobike:
        payloads += mobike.auth_notifies(sa)
    established(sa, now)
    try:
        if msg.find(SaPayload) is not None:
            payloads += answer_child_request(sa, msg, None, now,
                                             auth_nonces=(setup.nonce_i, setup.nonce_r))
    finally:
        sa.setup = None  # the initial exchanges are done
    sa.respond(msg, payloads)


def _reject(sa: IkeSa, msg: Message, reason: FailureReason, why: str,
            ours: tuple[str, ...] = (), theirs: tuple[str, ...] = ()) -> None:
    sa.respond(msg, [notify(NotifyType.AUTHENTICATION_FAILED)])
    sa.fail(reason, why, ours=ours, theirs=theirs)
