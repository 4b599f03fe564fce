"""IKE_AUTH (RFC 7296 1.2, 2.15): identities, AUTH (PSK or signatures, RFC 7427),
certificates, the configuration payload and the first CHILD_SA.

The initiator's `IkeAuth` follows IKE_SA_INIT; `respond` picks the connection by the
peer's identity among the candidates. Certificates go out as `IkeConfig.send_cert` says
(default: when the peer sent a CERTREQ): the end entity and the intermediates up to
the CA the peer named. Revocation is checked after the chain and the AUTH signature
verified; when it needs a fetch the exchange parks (`Setup.parked`), the daemon fetches
(RevocationFetch) and `IkeSa.resume_auth` runs the step again with what came back.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import constant_time
from cryptography.hazmat.primitives.serialization import Encoding

from .. import auth
from ..certs import TrustStore, id_for_certificate, identity_matches, spki_sha1
from ..config import AuthMethodName, Identity, IkeConfig, LocalAuth, RemoteAuth, SendCert
from ..constants import AuthMethod, CertEncoding, ExchangeType, NotifyType
from ..crypto import IkeKeys
from ..eap import EapError
from ..errors import LocalError, ProtocolError
from ..events import FailureReason, IkeSaUp, RevocationFetch
from ..message import Message
from ..payloads import (
    AuthPayload,
    CertPayload,
    CertReqPayload,
    EapPayload,
    IdiPayload,
    IdrPayload,
    Payload,
    SaPayload,
    id_body,
)
from ..ppk import derive_ppk_keys, encode_ppk_identity, parse_ppk_identity
from ..revocation import RevocationStore
from ..state import IkeState
from . import ike_config, ike_eap, mobike
from .base import error_notify, notify
from .child_create import ChildRequest, answer_child_request, finish_child_request, new_request
from .ike_init import Setup, certreq, offers_ppk, requested_cas
from .ike_intermediate import int_auth

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


def _sk_p(sa: IkeSa, ours: bool, ppk_keys: IkeKeys | None) -> bytes:
    """SK_pi or SK_pr: the IKE SA's, or those a PPK made (RFC 8784 3)."""
    assert sa.keys is not None
    if ppk_keys is None:
        return sa.keys.sk_p(ours, sa.is_initiator)
    return ppk_keys.sk_pi if ours == sa.is_initiator else ppk_keys.sk_pr


def auth_payloads(sa: IkeSa, setup: Setup, conf: IkeConfig,
                  id_payload: IdiPayload | IdrPayload, octets_prefix: bytes,
                  peer_nonce: bytes, auth_message_id: int,
                  ppk_keys: IkeKeys | None = None) -> list[Payload]:
    """CERT and AUTH payloads proving our identity (with a PPK's SK_p when given)."""
    keys = sa.keys
    assert keys is not None
    octets = auth.signed_octets(octets_prefix, peer_nonce, keys.prf,
                                _sk_p(sa, True, ppk_keys), id_body(id_payload),
                                int_auth(setup, auth_message_id))
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
    chain = [local.certificate, *_intermediates_for(local, setup.peer_cas)]
    certs: list[Payload] = [CertPayload(CertEncoding.X509_SIGNATURE, c.public_bytes(Encoding.DER))
                            for c in chain]
    return [*certs, AuthPayload(method, data)]


def _intermediates_for(local: LocalAuth, requested: frozenset[bytes]) -> list[x509.Certificate]:
    """Our intermediates (configured issuer first) up to the CA the peer's CERTREQ named:
    a peer that trusts an intermediate itself needs nothing above it."""
    sent: list[x509.Certificate] = []
    for cert in local.intermediates:
        if spki_sha1(cert) in requested:
            break
        sent.append(cert)
    return sent


def verify_peer_auth(sa: IkeSa, conf: IkeConfig, msg: Message,
                     id_payload: IdiPayload | IdrPayload, auth_payload: AuthPayload,
                     octets_prefix: bytes, our_nonce: bytes, setup: Setup,
                     ppk_keys: IkeKeys | None = None) -> str | None:
    """Check the peer's AUTH (made with a PPK's SK_p when given); None when good, else
    why not."""
    keys = sa.keys
    assert keys is not None
    octets = auth.signed_octets(octets_prefix, our_nonce, keys.prf,
                                _sk_p(sa, False, ppk_keys), id_body(id_payload),
                                int_auth(setup, msg.message_id))
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
    path = _verify_certificate_auth(sa, remote.trust, msg, id_payload, auth_payload, octets)
    if isinstance(path, str):
        return path
    return _check_revocation(sa, remote, path)


Path = list[tuple[x509.Certificate, x509.Certificate]]
_NOTHING_KNOWN = RevocationStore()


def _check_revocation(sa: IkeSa, remote: RemoteAuth, path: Path) -> str | None:
    """Revocation of a verified chain; when a fetch would settle it, note that in the
    setup (see park_for_revocation) and pass for now."""
    setup = sa.setup
    assert setup is not None
    # no store: nothing is known and nothing can be fetched (a daemon always gives one)
    store = remote.crls if remote.crls is not None else _NOTHING_KNOWN
    verdict = store.check(path, remote.revocation, datetime.fromtimestamp(sa.wall_time, UTC),
                          fetched=setup.revocation_fetched or remote.crls is None)
    if verdict.wants_fetch:
        setup.revocation_fetch = verdict
        return None
    return verdict.why


def park_for_revocation(sa: IkeSa, step: Callable[[float], None]) -> bool:
    """If the last verify_peer_auth asked for revocation information: ask the daemon
    for it, keep `step` to run again on resume_auth, and say so (True)."""
    setup = sa.setup
    if setup is None or setup.revocation_fetch is None:
        return False
    verdict, setup.revocation_fetch = setup.revocation_fetch, None
    setup.revocation_fetched, setup.parked = True, step
    sa.emit(RevocationFetch(ike_sa=sa.id, connection=sa.conf().name, crls=verdict.crls,
                            ocsp=verdict.ocsp))
    return True


def _verify_certificate_auth(sa: IkeSa, trust: TrustStore | None, msg: Message,
                             id_payload: IdiPayload | IdrPayload,
                             auth_payload: AuthPayload, octets: bytes) -> str | Path:
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
        path = trust.verify(end_entity, chain[1:], datetime.fromtimestamp(sa.wall_time, UTC))
        auth.verify(end_entity.public_key(), auth_payload.method, auth_payload.data, octets)
    except ProtocolError as exc:
        return str(exc)
    if not identity_matches(end_entity, id_payload.id_type, id_payload.data):
        return f"identity {Identity(id_payload.id_type, id_payload.data)} is not in " \
               f"the certificate of {end_entity.subject.rfc4514_string()}"
    return path


def established(sa: IkeSa, now: float, remote_eap_id: str | None = None,
                ppk: bool = False) -> None:
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
        nat_remote=sa.nat_remote, virtual_ip=sa.virtual_ip, remote_eap_id=remote_eap_id,
        ppk=ppk))


class IkeAuth:
    """The initiator's IKE_AUTH, with the first CHILD_SA (the others follow in
    CREATE_CHILD_SA exchanges once it is done). With EAP (`LocalAuth.eap`) the same task
    sends each EAP response, then the AUTH made with the MSK, in further IKE_AUTH
    requests (RFC 7296 2.16)."""

    __slots__ = ("child", "eap", "eap_out", "idi", "idr", "ppk_keys")
    name = "IKE_AUTH"

    def __init__(self) -> None:
        self.child: ChildRequest | None = None
        self.eap: ike_eap.EapPeer | None = None
        self.eap_out: bytes | None = None  # our next EAP response
        self.idi: IdiPayload | None = None
        self.idr: IdrPayload | None = None  # the gateway's, once its AUTH verified
        self.ppk_keys: IkeKeys | None = None  # the keys our PPK makes, if we offer one

    def build(self, sa: IkeSa, now: float) -> Message:
        if self.idr is not None and self.eap is not None:  # a later round of EAP
            assert self.idi is not None
            payload: Payload = self.eap.auth_payload(sa, self.idi) if self.eap.done \
                else EapPayload(self.eap_out or b"")
            return sa.message(ExchangeType.IKE_AUTH, [payload])
        conf, setup = sa.conf(), sa.setup
        assert setup is not None
        sa.local_id = local_identity(sa, conf)
        idi = self.idi = IdiPayload(sa.local_id.id_type, sa.local_id.data)
        payloads: list[Payload] = [idi]
        assert sa.keys is not None
        if conf.ppk is not None and setup.peer_use_ppk:
            self.ppk_keys = derive_ppk_keys(sa.keys.prf, conf.ppk, sa.keys.keys)
        if conf.local_auth.eap is not None:
            self.eap = ike_eap.EapPeer(conf.local_auth.eap(), sa.window.next_request_id)
            proof: list[Payload] = []
        else:
            proof = auth_payloads(sa, setup, conf, idi, setup.init_request, setup.nonce_r,
                                  sa.window.next_request_id, self.ppk_keys)
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
        payloads += self._ppk_notifies(sa, setup, conf, idi)
        cp = ike_config.build(sa, conf)
        if cp is not None:
            payloads.append(cp)
        if setup.children:
            self.child = new_request(sa, setup.children.pop(0), None, create_child_sa=False)
            self.child.nonce, self.child.nonce_r = setup.nonce_i, setup.nonce_r
            payloads += self.child.payloads
        return sa.message(ExchangeType.IKE_AUTH, payloads)

    def process(self, sa: IkeSa, msg: Message, now: float) -> None:
        if self.idr is not None and self.eap is not None:
            self._eap_round(sa, msg, now)
            return
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
        ppk_keys = self.ppk_keys if msg.notify(NotifyType.PPK_IDENTITY) is not None else None
        if self.ppk_keys is not None and ppk_keys is None and conf.ppk_required:
            self._reject_responder(sa, "a PPK is required, but the peer did not use it "
                                   "(no PPK_IDENTITY in its IKE_AUTH response)")
            return
        why = verify_peer_auth(sa, conf, msg, idr, auth_payload, setup.init_response,
                               setup.nonce_i, setup, ppk_keys)
        if why is not None:
            self._reject_responder(sa, why)
            return
        if park_for_revocation(sa, lambda later: sa.process_response(self, msg, later)):
            return
        sa.remote_id = remote_id
        if ppk_keys is not None:
            sa.keys.keys = ppk_keys  # type: ignore[union-attr]  # SK_d, SK_pi, SK_pr
        self.ppk_keys = ppk_keys  # None: the peer did not use ours
        if self.eap is not None:
            self.idr = idr
            self._eap_round(sa, msg, now)
            return
        self._done(sa, msg, now)

    def _done(self, sa: IkeSa, msg: Message, now: float) -> None:
        setup = sa.setup
        assert setup is not None
        ike_config.process(sa, msg)  # before IkeSaUp, which carries it
        mobike.read_auth(sa, msg)
        established(sa, now, ppk=self.ppk_keys is not None)
        if self.child is not None:
            finish_child_request(sa, self.child, msg, now)
        for child in setup.children:
            sa.create_child(child.name, now)
        sa.setup = None

    def _eap_round(self, sa: IkeSa, msg: Message, now: float) -> None:
        """The gateway's answer during EAP: its next request, or the final AUTH."""
        eap, error = self.eap, error_notify(msg)
        assert eap is not None and self.idr is not None
        if eap.done:
            auth_payload = msg.find(AuthPayload)
            if auth_payload is None and error is not None:
                sa.fail_from_notify(error)
            elif auth_payload is None:
                raise ProtocolError("IKE_AUTH response after EAP-Success lacks AUTH")
            elif not eap.verify(sa, self.idr, auth_payload):
                self._reject_responder(sa, "the gateway's AUTH with the EAP MSK does not "
                                       "verify")
            else:
                self._done(sa, msg, now)
            return
        payload = msg.find(EapPayload)
        if payload is None:
            if error is not None:
                sa.fail_from_notify(error)
                return
            raise ProtocolError("IKE_AUTH response without EAP payload during EAP")
        try:
            self.eap_out = eap.answer(payload)
            eap.check_chain(sa, self.idr)
        except EapError as exc:
            if error is not None:  # the gateway ended it (EAP-Failure)
                sa.fail(FailureReason.AUTHENTICATION_FAILED, str(exc))
            else:
                self._reject_responder(sa, str(exc))
            return
        sa.send_request(self, now)

    def _ppk_notifies(self, sa: IkeSa, setup: Setup, conf: IkeConfig,
                      idi: IdiPayload) -> list[Payload]:
        """PPK_IDENTITY naming our PPK, and with an optional PPK, NO_PPK_AUTH: the AUTH
        data with the original SK_pi (a MAC with a PSK, a second signature with a
        certificate), for a responder without the PPK (RFC 8784 3)."""
        if self.ppk_keys is None:
            return []
        out: list[Payload] = [notify(NotifyType.PPK_IDENTITY,
                                     encode_ppk_identity(conf.ppk_id or b""))]
        if not conf.ppk_required:
            (plain,) = [p for p in auth_payloads(sa, setup, conf, idi, setup.init_request,
                                                 setup.nonce_r, sa.window.next_request_id)
                        if isinstance(p, AuthPayload)]
            out.append(notify(NotifyType.NO_PPK_AUTH, plain.data))
        return out

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


def _select_config(sa: IkeSa, idi: Identity, idr: Identity | None,
                   eap: bool) -> IkeConfig | None:
    """The candidate for these identities whose peers use EAP (no AUTH in the first
    request) or not, as the request says: the first that names the peer's identity, else
    the first that takes any (as strongSwan, the more specific match wins)."""
    any_peer: IkeConfig | None = None
    for conf in sa.candidates:
        if (conf.remote_auth.eap is not None) != eap:
            continue
        if conf.remote_id is not None and conf.remote_id != idi:
            continue
        if idr is not None and conf.local_id is not None and conf.local_id != idr:
            continue
        if conf.remote_id is not None:
            return conf
        any_peer = any_peer or conf
    return any_peer


def respond(sa: IkeSa, msg: Message, raw: bytes, now: float) -> None:
    """The responder's IKE_AUTH."""
    setup = sa.setup
    if sa.state is not IkeState.INIT_DONE or setup is None:
        raise ProtocolError("unexpected IKE_AUTH")
    if setup.eap is not None:
        ike_eap.respond(sa, msg, now)
        return
    if setup.intermediate is not None and setup.intermediate.pending:
        raise ProtocolError("IKE_AUTH before the additional key exchanges (IKE_INTERMEDIATE)",
                            notify=NotifyType.INVALID_SYNTAX)
    idi, auth_payload = msg.find(IdiPayload), msg.find(AuthPayload)
    if idi is None:
        raise ProtocolError("IKE_AUTH request lacks IDi")
    idr = msg.find(IdrPayload)
    remote_id = Identity(idi.id_type, idi.data)
    conf = _select_config(sa, remote_id, Identity(idr.id_type, idr.data) if idr else None,
                          eap=auth_payload is None)
    if conf is None:
        how = "with EAP (no AUTH payload)" if auth_payload is None else "with AUTH"
        _reject(sa, msg, FailureReason.NO_MATCHING_CONFIG,
                f"no connection accepts peer identity {remote_id} {how}",
                ours=tuple(str(c.remote_id or "%any") for c in sa.candidates),
                theirs=(str(remote_id),))
        return
    sa.config = conf
    setup.peer_certreq = msg.find(CertReqPayload) is not None
    setup.peer_cas = requested_cas(msg)
    if auth_payload is None:  # EAP: we prove ourselves, then ask who it is
        sa.remote_id = remote_id
        sa.local_id = local_identity(sa, conf)
        our_idr = IdrPayload(sa.local_id.id_type, sa.local_id.data)
        proof = auth_payloads(sa, setup, conf, our_idr, setup.init_response, setup.nonce_i,
                              msg.message_id)
        sa.respond(msg, [our_idr, *proof, *ike_eap.start(sa, msg, idi, our_idr)])
        return
    ppk = _responder_ppk(sa, conf, msg, auth_payload)
    if isinstance(ppk, str):
        _reject(sa, msg, FailureReason.AUTHENTICATION_FAILED, ppk)
        return
    ppk_keys, auth_payload = ppk
    why = verify_peer_auth(sa, conf, msg, idi, auth_payload, setup.init_request, setup.nonce_r,
                           setup, ppk_keys)
    if why is not None:
        _reject(sa, msg, FailureReason.AUTHENTICATION_FAILED, why)
        return
    if park_for_revocation(sa, lambda later: sa.answer_request(respond, msg, raw, later)):
        return  # the peer's retransmissions are dropped meanwhile (no answer cached yet)
    sa.remote_id = remote_id
    sa.local_id = local_identity(sa, conf)
    our_idr = IdrPayload(sa.local_id.id_type, sa.local_id.data)
    proof = [our_idr, *auth_payloads(sa, setup, conf, our_idr, setup.init_response,
                                     setup.nonce_i, msg.message_id, ppk_keys)]
    if ppk_keys is not None:
        proof.append(notify(NotifyType.PPK_IDENTITY))
        assert sa.keys is not None
        sa.keys.keys = ppk_keys  # before the CHILD_SA's KEYMAT comes from SK_d
    finish_responder(sa, msg, msg, proof, now, ppk=ppk_keys is not None)


def finish_responder(sa: IkeSa, first: Message, msg: Message, proof: list[Payload],
                     now: float, remote_eap_id: str | None = None, ppk: bool = False) -> None:
    """Answer the last IKE_AUTH request `msg` with our `proof`, the configuration payload
    and the CHILD_SA the peer asked for in its `first` IKE_AUTH request."""
    conf, setup = sa.conf(), sa.setup
    assert setup is not None
    payloads = list(proof)
    sa.remote_eap_id = remote_eap_id
    cp = ike_config.respond(sa, conf, first)
    if cp is not None:
        payloads.append(cp)
    mobike.read_auth(sa, first)
    if sa.mobike:
        payloads += mobike.auth_notifies(sa)
    established(sa, now, remote_eap_id, ppk)
    try:
        if first.find(SaPayload) is not None:
            payloads += answer_child_request(sa, first, None, now,
                                             auth_nonces=(setup.nonce_i, setup.nonce_r))
    finally:
        sa.setup = None  # the initial exchanges are done
    sa.respond(msg, payloads)


def _responder_ppk(sa: IkeSa, conf: IkeConfig, msg: Message, auth_payload: AuthPayload
                   ) -> tuple[IkeKeys | None, AuthPayload] | str:
    """RFC 8784 on the responder: (the PPK's keys, or None without one; the AUTH payload
    to check: NO_PPK_AUTH's data when the initiator's PPK is not ours), or why not."""
    offered = offers_ppk(sa)
    note = msg.notify(NotifyType.PPK_IDENTITY) if offered else None
    if note is None:
        if conf.ppk_required:
            return "a PPK is required, but the peer did not offer one (no USE_PPK " \
                   "or PPK_IDENTITY)"
        return None, auth_payload
    ppk_id = parse_ppk_identity(note.data)
    if conf.ppk is not None and ppk_id is not None and ppk_id == (conf.ppk_id or b""):
        assert sa.keys is not None
        return derive_ppk_keys(sa.keys.prf, conf.ppk, sa.keys.keys), auth_payload
    why = f"the peer's PPK_ID {ppk_id!r} is not ours"
    if conf.ppk_required:
        return f"a PPK is required, but {why}"
    no_ppk = msg.notify(NotifyType.NO_PPK_AUTH)
    if no_ppk is None:
        return f"{why}, and there is no NO_PPK_AUTH to fall back on"
    return None, AuthPayload(auth_payload.method, no_ppk.data)


def _reject(sa: IkeSa, msg: Message, reason: FailureReason, why: str,
            ours: tuple[str, ...] = (), theirs: tuple[str, ...] = ()) -> None:
    sa.respond(msg, [notify(NotifyType.AUTHENTICATION_FAILED)])
    sa.fail(reason, why, ours=ours, theirs=theirs)
