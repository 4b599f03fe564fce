"""EAP in IKE_AUTH (RFC 7296 2.16) between two in-memory peers, and EAP-MSCHAPv2 against
the published vectors (RFC 2759 9.2, RFC 3079 3.5.3; MD4 against RFC 1320 A.5).

The gateway (b) proves itself with its certificate; the client (a) logs in with
EAP-MSCHAPv2 and gets a virtual IP. Users are NT hashes only.
"""

from __future__ import annotations

import ipaddress
from dataclasses import replace

import pytest

from tests.support.ike_pair import ADDR_A, Pair, child, make_pair
from tests.support.pki import make_ca, make_cert
from xfrmctl.daemon.pool import AddressPool
from xfrmctl.ike.certs import TrustStore
from xfrmctl.ike.config import AuthMethodName, IkeConfig, LocalAuth, RemoteAuth
from xfrmctl.ike.constants import CfgAttr, PayloadType, ProtocolId
from xfrmctl.ike.eap import EapPacket, EapServer, EapStep, Outcome
from xfrmctl.ike.eap import mschapv2 as ms
from xfrmctl.ike.eap.md4 import md4
from xfrmctl.ike.events import (
    ChildSaNegotiated,
    FailureReason,
    IkeSaUp,
    NegotiationFailed,
    VirtualIpAssigned,
)
from xfrmctl.ike.message import decode
from xfrmctl.ike.payloads import CpPayload
from xfrmctl.ike.proposals import parse_proposals
from xfrmctl.ike.sa import IkeState
from xfrmctl.ike.tasks import ike_eap

USERS = {"carol": ms.nt_hash("test-only password 1"), "dave": ms.nt_hash("test-only password 2")}


@pytest.fixture(scope="module")
def pki() -> tuple:  # type: ignore[type-arg]
    root = make_ca("xfrmctl EAP Test Root CA")
    gw = make_cert(root, "gw.example", sans=["gw.example", "192.0.2.2"])
    return root, gw


def gateway(pki: tuple, server=None) -> IkeConfig:  # type: ignore[no-untyped-def, type-arg]
    _, gw = pki
    factory = server or (lambda sa_id: ms.MschapServer(USERS.get))
    return IkeConfig(
        name="rw",
        local_auth=LocalAuth(AuthMethodName.PUBKEY, private_key=gw.key, certificate=gw.cert),
        remote_auth=RemoteAuth(AuthMethodName.PUBKEY, eap=factory),
        children=(child("lan", "203.0.113.0/24", "0.0.0.0/0"),),
        pool=AddressPool(ipaddress.ip_network("198.51.100.64/28")),
        dns=("198.51.100.53", "2001:db8::53"),
    )


def client(pki: tuple, user: str = "carol", password: str = "test-only password 1"  # type: ignore[type-arg]
           ) -> IkeConfig:
    root, _ = pki
    return IkeConfig(
        name="net",
        local_auth=LocalAuth(AuthMethodName.PUBKEY,
                             eap=lambda: ms.MschapClient(user, ms.nt_hash(password))),
        remote_auth=RemoteAuth(AuthMethodName.PUBKEY, trust=TrustStore([root.cert])),
        children=(child("lan", "0.0.0.0/0", "203.0.113.0/24"),),
        request_virtual_ip=True,
    )


def up(pair: Pair) -> None:
    pair.a.initiate("net", pair.endpoint("a"), pair.endpoint("b"), pair.now)
    pair.pump()


def auth_exchanges(pair: Pair, side: str) -> list[list[int]]:
    """Payload types of the IKE_AUTH messages `side` sent (decrypted with its keys)."""
    receiver = pair.b if side == "a" else pair.a
    sa = receiver.all()[0]
    assert sa.keys is not None
    out = []
    for who, d in pair.wire:
        if who != side or d.data[18] != 35:  # exchange type IKE_AUTH
            continue
        msg = decode(d.data, sa.keys.cipher_in)
        out.append([p.payload_type for p in msg.protected or []])
    return out


def test_mschapv2_vectors_of_rfc2759_and_rfc3079() -> None:
    auth_challenge = bytes.fromhex("5B5D7C7D7B3F2F3E3C2C602132262628")
    peer_challenge = bytes.fromhex("21402324255E262A28295F2B3A337C7E")
    password_hash = ms.nt_hash("clientPass")
    assert password_hash.hex() == "44ebba8d5312b8d611474411f56989ae"
    assert ms.challenge_hash(peer_challenge, auth_challenge, b"User").hex() \
        == "d02e4386bce91226"
    response = ms.nt_response(auth_challenge, peer_challenge, b"User", password_hash)
    assert response.hex() == "82309ecd8d708b5ea08faa3981cd83544233114a3d85d6df"
    assert ms.authenticator_response(password_hash, response, peer_challenge,
                                     auth_challenge, b"User").hex().upper() \
        == "407A5589115FD0D6209F510FE9C04566932CDA56"
    # RFC 3079 3.5.3: the 128-bit send key of the server (its MasterSendKey)
    msk = ms.msk(password_hash, response)
    assert msk[16:32].hex() == "8b7cdc149b993a1ba118cb153f56dccb"
    assert len(msk) == 64 and msk[32:] == b"\0" * 32
    # the domain is not part of the challenge hash
    assert ms.challenge_hash(peer_challenge, auth_challenge, b"DOM\\User") \
        == ms.challenge_hash(peer_challenge, auth_challenge, b"User")


@pytest.mark.parametrize(("data", "digest"), [
    (b"", "31d6cfe0d16ae931b73c59d7e0c089c0"),
    (b"a", "bde52cb31de33e46245e05fbdbd6fb24"),
    (b"abc", "a448017aaf21d8525fc10ae87aa6729d"),
    (b"message digest", "d9130a8164549fe818874806e1c7014b"),
    (b"abcdefghijklmnopqrstuvwxyz", "d79e1c308aa5bbcdeea8ed63df412da9"),
    (b"12345678901234567890123456789012345678901234567890123456789012345678901234567890",
     "e33b4ddc9c38f2199c3e7b164fcc0536"),
])
def test_md4_rfc1320_suite(data: bytes, digest: str) -> None:
    assert md4(data).hex() == digest


def test_eap_mschapv2_login_gives_sa_virtual_ip_and_child(pki: tuple) -> None:  # type: ignore[type-arg]
    pair = make_pair(client(pki), gateway(pki), wall_clock=True)
    up(pair)
    (up_a,), (up_b,) = pair.of("a", IkeSaUp), pair.of("b", IkeSaUp)
    assert str(up_b.remote_id) == ADDR_A and up_b.remote_eap_id == "carol"
    assert up_a.remote_eap_id is None
    assert up_a.virtual_ip == up_b.virtual_ip
    assert ipaddress.ip_address(up_b.virtual_ip) in ipaddress.ip_network("198.51.100.64/28")
    (ca,), (cb,) = pair.of("a", ChildSaNegotiated), pair.of("b", ChildSaNegotiated)
    assert ca.spi_out == cb.spi_in and ca.encr_key_out == cb.encr_key_in
    assert [e.to_peer for e in pair.of("b", VirtualIpAssigned)] == [True]
    # IKE_AUTH 1: no AUTH from the client; the gateway's AUTH (certificate) and EAP;
    # then identity, MSCHAPv2 response, success response; finally both AUTH (MSK)
    sent_a, sent_b = auth_exchanges(pair, "a"), auth_exchanges(pair, "b")
    assert PayloadType.AUTH not in sent_a[0] and PayloadType.SA in sent_a[0]
    assert PayloadType.AUTH in sent_b[0] and PayloadType.EAP in sent_b[0]
    assert sent_a[1:4] == [[PayloadType.EAP]] * 3
    assert sent_a[4] == [PayloadType.AUTH]
    assert PayloadType.AUTH in sent_b[4] and PayloadType.SA in sent_b[4]
    assert len(sent_a) == len(sent_b) == 5
    # the last answer carries the virtual IP and the DNS servers (RFC 7296 3.15.1)
    sa_a = pair.a.all()[0]
    assert sa_a.keys is not None
    last = [d for who, d in pair.wire if who == "b"][-1]
    (cp,) = [p for p in decode(last.data, sa_a.keys.cipher_in).protected or []
             if isinstance(p, CpPayload)]
    assert [(a.attr_type, a.value) for a in cp.attributes[1:]] == [
        (CfgAttr.INTERNAL_IP4_DNS, ipaddress.ip_address("198.51.100.53").packed),
        (CfgAttr.INTERNAL_IP6_DNS, ipaddress.ip_address("2001:db8::53").packed)]


def test_pool_leases_go_to_the_eap_user_not_the_shared_ike_identity(
        pki: tuple) -> None:  # type: ignore[type-arg]
    """Road warriors often all send the same IDi (their private address behind NAT):
    each EAP user gets an address of its own, and one user's logout frees only its own."""
    shared = gateway(pki)
    carol = make_pair(client(pki), shared, wall_clock=True)
    dave = make_pair(client(pki, "dave", "test-only password 2"), shared, wall_clock=True)
    up(carol)
    up(dave)
    (carol_up,), (dave_up,) = carol.of("b", IkeSaUp), dave.of("b", IkeSaUp)
    assert str(carol_up.remote_id) == str(dave_up.remote_id) == ADDR_A
    assert carol_up.virtual_ip != dave_up.virtual_ip
    assert shared.pool is not None
    assert {str(a) for a in shared.pool.leases.values()} == {   # type: ignore[attr-defined]
        carol_up.virtual_ip, dave_up.virtual_ip}
    carol.a.act(carol.a.all()[0], lambda sa: sa.delete(carol.now))
    carol.pump()
    assert [str(a) for a in shared.pool.leases.values()] == [  # type: ignore[attr-defined]
        dave_up.virtual_ip]


def test_eap_after_ike_intermediate_binds_the_msk_auth_to_it(
        pki: tuple) -> None:  # type: ignore[type-arg]
    """An EAP login over an IKE SA with an ML-KEM key exchange in IKE_INTERMEDIATE: every
    AUTH (the gateway's signature, both MSK ones) takes IntAuth with the first IKE_AUTH's
    message ID (RFC 9242 3.3.2), and both ends agree on it."""
    hybrid = parse_proposals("aes256gcm16-prfsha384-x25519-ke1_mlkem768", ProtocolId.IKE)
    pair = make_pair(replace(client(pki), proposals=hybrid),
                     replace(gateway(pki), proposals=hybrid), wall_clock=True)
    up(pair)
    (up_a,), (up_b,) = pair.of("a", IkeSaUp), pair.of("b", IkeSaUp)
    assert up_b.remote_eap_id == "carol" and up_a.virtual_ip == up_b.virtual_ip
    assert pair.a.all()[0].state is IkeState.ESTABLISHED
    exchanges = [d.data[18] for who, d in pair.wire if who == "a"]
    assert exchanges[:2] == [34, 43]  # IKE_SA_INIT, then IKE_INTERMEDIATE


def test_wrong_password_is_refused_with_reason(pki: tuple) -> None:  # type: ignore[type-arg]
    pair = make_pair(client(pki, password="not the password"), gateway(pki),
                     wall_clock=True)
    up(pair)
    assert not pair.of("a", IkeSaUp) and not pair.of("b", IkeSaUp)
    (fail_b,) = pair.of("b", NegotiationFailed)
    assert fail_b.reason is FailureReason.AUTHENTICATION_FAILED
    assert "wrong password" in fail_b.message and "carol" in fail_b.message
    assert "not the password" not in fail_b.message
    (fail_a,) = pair.of("a", NegotiationFailed)
    assert fail_a.reason is FailureReason.AUTHENTICATION_FAILED
    assert "EAP-Failure" in fail_a.message
    assert not pair.a.all() and not pair.b.all()  # both gave up their IKE SA


def test_unknown_user_is_refused(pki: tuple) -> None:  # type: ignore[type-arg]
    pair = make_pair(client(pki, user="mallory"), gateway(pki), wall_clock=True)
    up(pair)
    (fail_b,) = pair.of("b", NegotiationFailed)
    assert "unknown user 'mallory'" in fail_b.message


def test_client_refuses_a_gateway_that_fakes_success(pki: tuple) -> None:  # type: ignore[type-arg]
    """A gateway without the user's hash cannot produce the authenticator response: the
    client checks it and gives up instead of answering Success."""

    class Faker(ms.MschapServer):
        def process(self, packet: EapPacket) -> EapStep:
            if packet.data[:1] != bytes((ms.OpCode.RESPONSE,)):
                return super().process(packet)
            fake = ms._packet(ms.EapCode.REQUEST, packet.identifier + 1, ms.OpCode.SUCCESS,
                              packet.data[1], b"S=" + b"0" * 40 + b" M=hi")
            return EapStep(Outcome.CONTINUE, fake)

    pair = make_pair(client(pki), gateway(pki, lambda sa_id: Faker(USERS.get)),
                     wall_clock=True)
    up(pair)
    assert not pair.of("a", IkeSaUp) and not pair.of("b", IkeSaUp)
    (fail_a,) = pair.of("a", NegotiationFailed)
    assert "authenticator response is wrong" in fail_a.message


class LaterServer:
    """An asynchronous backend: answers only when the test says so (like RADIUS)."""

    method_name = "EAP-MSCHAPv2 (deferred)"

    def __init__(self) -> None:
        self.inner = ms.MschapServer(USERS.get)
        self.waiting: list[tuple[str, object]] = []

    def begin(self, identity: str, identifier: int) -> EapStep | None:
        self.waiting.append(("begin", (identity, identifier)))
        return None

    def process(self, packet: EapPacket) -> EapStep | None:
        self.waiting.append(("process", packet))
        return None

    def run(self) -> EapStep:
        kind, arg = self.waiting.pop(0)
        if kind == "begin":
            return self.inner.begin(*arg)  # type: ignore[misc]
        return self.inner.process(arg)  # type: ignore[arg-type]


def test_a_deferred_eap_backend_completes_later(pki: tuple) -> None:  # type: ignore[type-arg]
    servers: list[LaterServer] = []

    def factory(sa_id: int) -> EapServer:
        servers.append(LaterServer())
        return servers[-1]

    pair = make_pair(client(pki), gateway(pki, factory), wall_clock=True)
    up(pair)
    rounds = 0
    while not pair.of("a", IkeSaUp):
        (server,) = servers
        assert server.waiting, "the gateway waits for its backend"
        assert not pair.b.datagrams_to_send()  # nothing answered while pending
        pair.advance(1.0)  # the client's retransmissions are not answered twice
        sa = pair.b.all()[0]
        step = server.run()
        pair.b.act(sa, lambda s, step=step: ike_eap.eap_answer(s, step, pair.now))  # type: ignore[misc]
        pair.pump()
        rounds += 1
    assert rounds == 3 and pair.b.all()[0].state is IkeState.ESTABLISHED


def test_request_without_auth_matches_no_psk_connection(pki: tuple) -> None:  # type: ignore[type-arg]
    from tests.support.ike_pair import psk_config  # noqa: PLC0415

    pair = make_pair(client(pki), psk_config("rw"), wall_clock=True)
    up(pair)
    (fail_b,) = pair.of("b", NegotiationFailed)
    assert fail_b.reason is FailureReason.NO_MATCHING_CONFIG and "EAP" in fail_b.message
    (fail_a,) = pair.of("a", NegotiationFailed)
    assert fail_a.reason is FailureReason.AUTHENTICATION_FAILED


class RawClient:
    """A client that answers the method's requests with fixed bytes (a broken or hostile
    peer)."""

    method_type = 26
    identity = "carol"
    msk = b""
    peer_chain = ()

    def __init__(self, answer: bytes) -> None:
        self.answer = answer

    def process(self, packet: EapPacket) -> bytes:
        return self.answer


def raw_client(pki: tuple, answer: bytes) -> IkeConfig:  # type: ignore[type-arg]
    conf = client(pki)
    local = LocalAuth(AuthMethodName.PUBKEY, eap=lambda: RawClient(answer))  # type: ignore[arg-type,return-value]
    return IkeConfig(**{f: getattr(conf, f) for f in conf.__dataclass_fields__} | {  # type: ignore[arg-type]
        "local_auth": local})


@pytest.mark.parametrize(("answer", "why"), [
    (b"\x02\x02\x00\x04", "PROTOCOL_ERROR"),  # a Response without a type
    # length beyond the packet: the EAP payload itself is malformed, answered with
    # INVALID_SYNTAX; the half-open SA goes at its timeout
    (b"\x02\x02\x00\x09\x1a", "HALF_OPEN_TIMEOUT"),
    (b"\x02\x02\x00\x06\x03\x04", "expected EAP-MSCHAPv2, got EAP type 3"),  # a Nak (MD5)
    (b"\x02\x07\x00\x06\x1a\x02", "unexpected EAP packet"),  # another identifier
    (b"\x02\x02\x00\x0a\x1a\x02\x02\x00\x05\x31", "malformed MSCHAPv2 Response"),
])
def test_broken_eap_from_the_client_fails_cleanly(pki: tuple, answer: bytes,  # type: ignore[type-arg]
                                                  why: str) -> None:
    pair = make_pair(raw_client(pki, answer), gateway(pki), wall_clock=True)
    up(pair)
    pair.advance(31)
    assert not pair.of("a", IkeSaUp) and not pair.of("b", IkeSaUp)
    (fail_b,) = pair.of("b", NegotiationFailed)
    assert why in (fail_b.message if " " in why else fail_b.reason.value), fail_b
    assert not pair.a.all() and not pair.b.all()
