"""EAP-TLS in IKE_AUTH (RFC 5216, RFC 9190) between two in-memory peers: xfrmctl as client
and as gateway, TLS 1.2 (what strongSwan negotiates by default) and 1.3, fragmentation
both ways, the MSK both sides derive; refused client certificates (unknown CA, revoked,
not naming the EAP identity) end in EAP-Failure with AUTHENTICATION_FAILED and a reason;
a hostile peer's fragments cannot grow the gateway's memory."""

from __future__ import annotations

import ipaddress
import struct
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from OpenSSL import SSL

from tests.support.ike_pair import Pair, child, make_pair
from tests.support.pki import Credential, make_ca, make_cert
from xfrmctl.daemon.conf import dn_text
from xfrmctl.daemon.pool import AddressPool
from xfrmctl.ike.certs import TrustStore
from xfrmctl.ike.config import AuthMethodName, Identity, IkeConfig, LocalAuth, RemoteAuth
from xfrmctl.ike.constants import IdType
from xfrmctl.ike.eap import EapCode, EapError, EapPacket, EapType, Outcome
from xfrmctl.ike.eap import mschapv2 as ms
from xfrmctl.ike.eap import tls as et
from xfrmctl.ike.events import ChildSaNegotiated, FailureReason, IkeSaUp, NegotiationFailed
from xfrmctl.ike.manager import IkeManager
from xfrmctl.ike.revocation import RevocationPolicy, RevocationStore


class Pki:
    def __init__(self) -> None:
        self.root = make_ca("xfrmctl EAP-TLS Test Root CA")
        self.gw = make_cert(self.root, "gw.example", sans=["gw.example", "192.0.2.2"])
        self.carol = make_cert(self.root, "carol", sans=["carol@example.org"])
        self.stranger_ca = make_ca("Some Other CA")
        self.stranger = make_cert(self.stranger_ca, "mallory", sans=["mallory@example.org"])


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki()


def gateway(pki: Pki, crls: RevocationStore | None = None,
            max_version: int | None = None) -> IkeConfig:
    ctx = et.server_context(pki.gw.cert, pki.gw.key)
    if max_version is not None:
        ctx.set_max_proto_version(max_version)
    return IkeConfig(
        name="rw",
        local_auth=LocalAuth(AuthMethodName.PUBKEY, private_key=pki.gw.key,
                             certificate=pki.gw.cert),
        remote_auth=RemoteAuth(AuthMethodName.PUBKEY, trust=TrustStore([pki.root.cert]),
                               crls=crls, eap=lambda sa_id: et.EapTlsServer(ctx)),
        children=(child("lan", "203.0.113.0/24", "0.0.0.0/0"),),
        pool=AddressPool(ipaddress.ip_network("198.51.100.64/28")),
    )


def client(pki: Pki, cred: Credential | None = None, identity: str = "carol@example.org",
           trust: x509.Certificate | None = None) -> IkeConfig:
    cred = cred or pki.carol
    ctx = et.client_context(cred.cert, cred.key)
    return IkeConfig(
        name="net",
        local_auth=LocalAuth(AuthMethodName.PUBKEY, private_key=cred.key, certificate=cred.cert,
                             eap=lambda: et.EapTlsClient(identity, ctx)),
        remote_auth=RemoteAuth(AuthMethodName.PUBKEY,
                               trust=TrustStore([trust or pki.root.cert])),
        children=(child("lan", "0.0.0.0/0", "203.0.113.0/24"),),
        request_virtual_ip=True,
    )


def up(pair: Pair) -> None:
    pair.a.initiate("net", pair.endpoint("a"), pair.endpoint("b"), pair.now)
    pair.pump()


@pytest.mark.parametrize("version", [SSL.TLS1_2_VERSION, SSL.TLS1_3_VERSION])
def test_eap_tls_login_gives_sa_virtual_ip_and_child(pki: Pki, version: int) -> None:
    pair = make_pair(client(pki), gateway(pki, max_version=version), wall_clock=True)
    up(pair)
    (up_a,), (up_b,) = pair.of("a", IkeSaUp), pair.of("b", IkeSaUp)
    assert up_b.remote_eap_id == "carol@example.org"
    # IDi defaults to the client's certificate subject, as strongSwan's
    assert up_b.remote_id.data == pki.carol.cert.subject.public_bytes()
    assert up_a.virtual_ip == up_b.virtual_ip is not None
    (ca,), (cb,) = pair.of("a", ChildSaNegotiated), pair.of("b", ChildSaNegotiated)
    assert ca.spi_out == cb.spi_in and ca.encr_key_out == cb.encr_key_in
    assert not pair.of("a", NegotiationFailed) and not pair.of("b", NegotiationFailed)


def test_default_identity_is_the_subject_in_der_order(pki: Pki) -> None:
    """What strongSwan sends when eap_id is not set: the DN in DER order, which the
    gateway parses back and finds as the certificate's subject."""
    text = dn_text(pki.carol.cert.subject)
    assert text.startswith("O=") or text.startswith("C=") or text.startswith("CN=")
    pair = make_pair(client(pki, identity=text), gateway(pki), wall_clock=True)
    up(pair)
    (up_b,) = pair.of("b", IkeSaUp)
    assert up_b.remote_eap_id == text


def refused(pair: Pair) -> NegotiationFailed:
    up(pair)
    assert not pair.of("a", IkeSaUp) and not pair.of("b", IkeSaUp)
    (failed,) = pair.of("b", NegotiationFailed)
    assert failed.reason is FailureReason.AUTHENTICATION_FAILED
    (client_failed,) = pair.of("a", NegotiationFailed)
    assert client_failed.reason is FailureReason.AUTHENTICATION_FAILED
    return failed


def test_client_certificate_from_an_unknown_ca_is_refused(pki: Pki) -> None:
    failed = refused(make_pair(client(pki, pki.stranger, "mallory@example.org"),
                               gateway(pki), wall_clock=True))
    assert "EAP-TLS: client certificate refused" in failed.message
    assert "not issued by a trusted CA" in failed.message
    assert "mallory@example.org" in failed.message


def test_certificate_not_naming_the_eap_identity_is_refused(pki: Pki) -> None:
    failed = refused(make_pair(client(pki, identity="dave@example.org"), gateway(pki),
                               wall_clock=True))
    assert "identity dave@example.org is not in the certificate" in failed.message


def test_revoked_client_certificate_is_refused(pki: Pki) -> None:
    now = datetime.now(UTC)
    crl = (x509.CertificateRevocationListBuilder()
           .issuer_name(pki.root.cert.subject)
           .last_update(now - timedelta(minutes=5))
           .next_update(now + timedelta(days=1))
           .add_revoked_certificate(x509.RevokedCertificateBuilder()
                                    .serial_number(pki.carol.cert.serial_number)
                                    .revocation_date(now - timedelta(minutes=1)).build())
           .sign(pki.root.key, hashes.SHA256()))  # type: ignore[arg-type]
    store = RevocationStore()
    store.add_crl(crl, pki.root.cert)
    conf = gateway(pki, crls=store)
    assert conf.remote_auth.revocation is RevocationPolicy.RELAXED
    failed = refused(make_pair(client(pki), conf, wall_clock=True))
    assert "is revoked" in failed.message


def test_client_refuses_a_gateway_tls_certificate_it_does_not_trust(pki: Pki) -> None:
    """The gateway's IKE certificate verifies, but its TLS certificate (another CA's) does
    not: the client gives up before it would send its AUTH."""
    conf = gateway(pki)
    ctx = et.server_context(pki.stranger.cert, pki.stranger.key)
    conf = replace(conf, remote_auth=replace(conf.remote_auth,
                                             eap=lambda sa_id: et.EapTlsServer(ctx)))
    pair = make_pair(client(pki), conf, wall_clock=True)
    up(pair)
    assert not pair.of("a", IkeSaUp) and not pair.of("b", IkeSaUp)
    (failed,) = pair.of("a", NegotiationFailed)
    assert failed.reason is FailureReason.AUTHENTICATION_FAILED
    assert "the gateway's EAP-TLS certificate is refused" in failed.message
    assert "not issued by a trusted CA" in failed.message


# --- the method alone: fragments, limits ---------------------------------------------


def _server(pki: Pki) -> et.EapTlsServer:
    server = et.EapTlsServer(et.server_context(pki.gw.cert, pki.gw.key))
    step = server.begin("carol@example.org", 2)
    assert step.outcome is Outcome.CONTINUE
    start = EapPacket.parse(step.packet)
    assert start.type == EapType.TLS and start.data == bytes((et.Flags.START,))
    return server


def _response(identifier: int, flags: int, data: bytes) -> EapPacket:
    return EapPacket(EapCode.RESPONSE, identifier, EapType.TLS, bytes((flags,)) + data)


def test_fragments_are_acknowledged_and_the_flight_is_split(pki: Pki) -> None:
    """Run the method pair by hand: the gateway's flight with certificate comes in
    fragments of FRAGMENT_SIZE, the first with L and the total length, each but the
    last with M, each acknowledged by an empty response."""
    server = _server(pki)
    tls_client = et.EapTlsClient("carol@example.org",
                                 et.client_context(pki.carol.cert, pki.carol.key))
    request = EapPacket(EapCode.REQUEST, 2, EapType.TLS, bytes((et.Flags.START,)))
    seen_flags: list[int] = []
    for _ in range(et.MAX_ROUNDS):
        answer = EapPacket.parse(tls_client.process(request))
        step = server.process(answer)
        assert step.outcome is not Outcome.FAILURE, step.reason
        if step.outcome is Outcome.SUCCESS:
            break
        request = EapPacket.parse(step.packet)
        seen_flags.append(request.data[0])
    else:
        pytest.fail("no EAP-Success")
    assert step.msk == tls_client.msk and len(step.msk) == 64
    first_of_flight = seen_flags[1]  # after the client's ClientHello
    assert first_of_flight & et.Flags.LENGTH and first_of_flight & et.Flags.MORE
    assert tls_client.peer_chain[0] == pki.gw.cert


def test_oversized_message_announcement_is_refused_at_once(pki: Pki) -> None:
    server = _server(pki)
    huge = struct.pack("!I", et.MAX_MESSAGE + 1)
    step = server.process(_response(2, et.Flags.LENGTH | et.Flags.MORE, huge + b"x" * 100))
    assert step.outcome is Outcome.FAILURE
    assert "at most" in step.reason
    assert EapPacket.parse(step.packet).code == EapCode.FAILURE


def test_fragments_beyond_the_announced_length_are_refused(pki: Pki) -> None:
    server = _server(pki)
    step = server.process(_response(2, et.Flags.LENGTH | et.Flags.MORE,
                                    struct.pack("!I", 2000) + b"x" * 1500))
    assert step.outcome is Outcome.CONTINUE  # ACK
    ack = EapPacket.parse(step.packet)
    assert ack.data == b"\x00"
    step = server.process(_response(ack.identifier, et.Flags.MORE, b"y" * 1500))
    assert step.outcome is Outcome.FAILURE and "exceed" in step.reason


def test_endless_fragments_without_length_hit_the_cap(pki: Pki) -> None:
    """No L flag: the cap is MAX_MESSAGE (or MAX_ROUNDS packets), never more memory."""
    server = _server(pki)
    identifier = 2
    for _ in range(et.MAX_ROUNDS + 1):
        step = server.process(_response(identifier, et.Flags.MORE, b"z" * 4000))
        if step.outcome is Outcome.FAILURE:
            break
        identifier = EapPacket.parse(step.packet).identifier
    assert step.outcome is Outcome.FAILURE
    assert "exceed" in step.reason or "more than" in step.reason


def test_garbage_tls_ends_in_failure_not_an_exception(pki: Pki) -> None:
    server = _server(pki)
    step = server.process(_response(2, 0, b"\x16\x03\x01\x00\x05hello"))
    assert step.outcome is Outcome.FAILURE and "handshake failed" in step.reason


def test_client_refuses_oversized_fragments_too(pki: Pki) -> None:
    tls_client = et.EapTlsClient("carol", et.client_context(pki.carol.cert, pki.carol.key))
    answer = tls_client.process(EapPacket(EapCode.REQUEST, 2, EapType.TLS,
                                          bytes((et.Flags.START,))))
    identifier = 3
    while EapPacket.parse(answer).data[0] & et.Flags.MORE:  # the ClientHello's fragments
        answer = tls_client.process(EapPacket(EapCode.REQUEST, identifier, EapType.TLS, b"\0"))
        identifier += 1
    with pytest.raises(EapError, match="at most"):
        tls_client.process(EapPacket(EapCode.REQUEST, identifier, EapType.TLS, bytes(
            (et.Flags.LENGTH | et.Flags.MORE,)) + struct.pack("!I", 10**9) + b"x"))


def test_gateway_picks_the_connection_naming_the_peer_over_a_catch_all(pki: Pki) -> None:
    """An EAP-MSCHAPv2 connection for anyone listed first, an EAP-TLS one for this peer's
    IKE identity second: the peer gets the one that names it (as strongSwan's best
    match), whatever the order."""
    catch_all = replace(gateway(pki), name="all", remote_auth=RemoteAuth(
        AuthMethodName.PUBKEY, eap=lambda sa_id: ms.MschapServer(lambda user: None)))
    carol_id = Identity(IdType.DER_ASN1_DN, pki.carol.cert.subject.public_bytes())
    for_carol = replace(gateway(pki), name="tls", remote_id=carol_id)
    for order in ([catch_all, for_carol], [for_carol, catch_all]):
        pair = Pair(IkeManager([client(pki)]), IkeManager(order))
        pair.now = time.time()
        up(pair)
        (up_b,) = pair.of("b", IkeSaUp)
        assert up_b.connection == "tls"
