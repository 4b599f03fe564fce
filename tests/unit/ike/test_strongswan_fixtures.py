"""Real strongSwan 5.9.8 exchanges (tests/fixtures/strongswan, see its README): our core
parses every datagram, derives charon's keys from the logged DH secrets and the nonces and
SPIs it reads from the messages, decrypts every SK payload, and verifies both AUTH payloads
of every IKE SA; CHILD_SA KEYMAT is recomputed and compared too."""

from __future__ import annotations

import itertools
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import constant_time
from cryptography.hazmat.primitives.serialization import Encoding

from tests.support.ike_pair import psk_config
from tests.support.strongswan_replay import (
    FIXTURES,
    Replay,
    found,
    key_sizes,
    load,
)
from xfrmctl.ike import auth
from xfrmctl.ike.certs import TrustStore, identity_matches
from xfrmctl.ike.constants import AuthMethod, CertEncoding, ExchangeType, ProtocolId
from xfrmctl.ike.crypto import (
    derive_child_keymat,
    split_child_keymat,
)
from xfrmctl.ike.errors import IntegrityError, ProtocolError
from xfrmctl.ike.manager import IkeManager
from xfrmctl.ike.message import Message, decode
from xfrmctl.ike.payloads import (
    AuthPayload,
    CertPayload,
    IdiPayload,
    IdrPayload,
    KePayload,
    NoncePayload,
    SaPayload,
    id_body,
)
from xfrmctl.ike.proposals import parse_proposals, suite_of

CASES = sorted(FIXTURES.glob("*.json"))


pytestmark = pytest.mark.skipif(not CASES, reason=f"no strongSwan fixtures in {FIXTURES}")


@pytest.fixture(params=CASES, ids=[p.stem for p in CASES])
def replay(request: pytest.FixtureRequest) -> Replay:
    r = Replay(load(request.param))
    r.run()
    return r


def test_every_datagram_parses_and_every_sk_payload_decrypts(replay: Replay) -> None:
    fixture = replay.fixture
    assert len(replay.sas) == len(fixture["ike_sas"])
    decrypted = sum(len(sa.messages) for sa in replay.sas)
    assert decrypted == len(fixture["datagrams"]) - 2
    assert decrypted == fixture["checked"]["sk_payloads_decrypted"]
    for d, msg in (m for sa in replay.sas for m in sa.messages):
        assert msg.exchange.name == d["exchange"]


def auth_exchange(replay: Replay) -> tuple[Message, Message]:
    sa = replay.sas[0]
    request, response = (m for d, m in sa.messages if m.exchange == ExchangeType.IKE_AUTH)
    return request, response


def signed_octets(replay: Replay, by_initiator: bool) -> bytes:
    sa = replay.sas[0]
    request, response = auth_exchange(replay)
    init_request, init_response = (d["raw"] for d in replay.fixture["datagrams"][:2])
    if by_initiator:
        ident: IdiPayload | IdrPayload = found(request, IdiPayload)
        return auth.signed_octets(init_request, found(replay.init[1], NoncePayload).data,
                                  sa.prf, sa.keys.sk_pi, id_body(ident))
    ident = found(response, IdrPayload)
    return auth.signed_octets(init_response, found(replay.init[0], NoncePayload).data,
                              sa.prf, sa.keys.sk_pr, id_body(ident))


def test_auth_payloads_verify(replay: Replay) -> None:
    fixture = replay.fixture
    request, response = auth_exchange(replay)
    logged = {a["by"]: a for a in fixture["ike_sas"][0]["auth"]}
    for by_initiator, msg, side in ((True, request, "left"), (False, response, "right")):
        octets = signed_octets(replay, by_initiator)
        entry = logged["initiator" if by_initiator else "responder"]
        assert octets.hex() == entry["octets"]
        payload: AuthPayload = found(msg, AuthPayload)
        if "psk" in fixture:
            assert payload.method == AuthMethod.PSK
            expected = auth.psk_auth(replay.sas[0].prf, fixture["psk"].encode(), octets)
            assert constant_time.bytes_eq(expected, payload.data)
            assert expected.hex() == entry["auth"]
        else:
            verify_certificate_auth(fixture, side, msg, payload, octets)


def verify_certificate_auth(fixture: dict[str, Any], side: str, msg: Message,
                            payload: AuthPayload, octets: bytes) -> None:
    folder = FIXTURES / fixture["certs_dir"]
    ca = x509.load_pem_x509_certificate((folder / fixture["certs"]["ca"]).read_bytes())
    cert = x509.load_pem_x509_certificate(
        (folder / fixture["certs"][side]["cert"]).read_bytes())
    (sent,) = msg.find_all(CertPayload)
    assert sent.encoding == CertEncoding.X509_SIGNATURE
    assert sent.data == cert.public_bytes(Encoding.DER)
    TrustStore([ca]).verify(cert, [], cert.not_valid_before_utc + timedelta(minutes=1))
    ident = msg.find(IdiPayload) or msg.find(IdrPayload)
    assert ident is not None and identity_matches(cert, ident.id_type, ident.data)
    assert payload.method == AuthMethod.DIGITAL_SIGNATURE
    auth.verify(cert.public_key(), payload.method, payload.data, octets)
    with pytest.raises(ProtocolError, match="does not verify"):  # and not any octets
        auth.verify(cert.public_key(), payload.method, payload.data, octets + b"\0")


def child_exchanges(replay: Replay) -> list[tuple[int, Message, Message]]:
    """(IKE SA index, request, response) of every exchange that made an ESP SA."""
    found_pairs = []
    for index, sa in enumerate(replay.sas):
        messages = [m for _, m in sa.messages]
        for request, response in itertools.pairwise(messages):
            if request.is_response or not response.is_response or \
                    request.message_id != response.message_id:
                continue
            sa_payload = response.find(SaPayload)
            if sa_payload is not None and sa_payload.proposals[0].protocol == ProtocolId.ESP:
                found_pairs.append((index, request, response))
    return found_pairs


def test_child_sa_keymat(replay: Replay) -> None:
    fixture = replay.fixture
    exchanges = child_exchanges(replay)
    assert len(exchanges) == len(fixture["child_sas"]) >= 1
    for logged, (index, request, response) in zip(fixture["child_sas"], exchanges,
                                                  strict=True):
        sa = replay.sas[index]
        assert logged["ike_sa"] == index and logged["created_by"] == request.exchange.name
        chosen = found(response, SaPayload).proposals[0]
        offered = next(p for p in found(request, SaPayload).proposals
                       if p.number == chosen.number)
        assert (offered.spi.hex(), chosen.spi.hex()) == (logged["spi_i"], logged["spi_r"])
        if request.exchange == ExchangeType.IKE_AUTH:
            ni = found(replay.init[0], NoncePayload).data
            nr = found(replay.init[1], NoncePayload).data
            shared = None
            assert "shared_secret" not in logged
        else:
            ni, nr = found(request, NoncePayload).data, found(response, NoncePayload).data
            has_ke = request.find(KePayload) is not None
            shared = bytes.fromhex(logged["shared_secret"]) if has_ke else None
            assert has_ke == ("shared_secret" in logged)
        assert (ni.hex(), nr.hex()) == (logged["ni"], logged["nr"])
        suite = suite_of(chosen)
        encr, integ = key_sizes(suite)
        keymat = derive_child_keymat(sa.prf, sa.keys.sk_d, ni, nr, 2 * (encr + integ),
                                     shared)
        keys = split_child_keymat(keymat, encr, integ)
        assert (keys.encr_i.hex(), keys.encr_r.hex()) == (logged["encr_i"], logged["encr_r"])
        assert keys.integ_i.hex() == logged.get("integ_i", "")
        assert keys.integ_r.hex() == logged.get("integ_r", "")


def test_tampered_datagram_fails_integrity(replay: Replay) -> None:
    """The keys are really what protects these messages: one flipped bit is refused."""
    d, _ = replay.sas[0].messages[0]
    raw = bytearray(d["raw"])
    raw[-1] ^= 0x01
    with pytest.raises(IntegrityError):
        decode(bytes(raw), replay.sas[0].cipher_i)


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_we_answer_charons_ike_sa_init_as_charon_did(path: Path) -> None:
    """charon's real IKE_SA_INIT request, to our responder configured with the same
    proposal: we choose what charon chose and send a response that parses."""
    fixture = load(path)
    request, charons_answer = (d["raw"] for d in fixture["datagrams"][:2])
    proposals = parse_proposals(fixture["proposals"], ProtocolId.IKE)
    manager = IkeManager([psk_config(proposals=proposals)])
    left, right = fixture["left"]["addr"], fixture["right"]["addr"]
    manager.receive_datagram(request, (right, 500), (left, 500), 1_700_000_000.0)
    (ours,) = manager.datagrams_to_send()
    assert ours.remote == (left, 500)
    response = decode(ours.data)
    theirs = decode(charons_answer)
    assert response.is_response and response.spi_i == theirs.spi_i
    assert suite_of(found(response, SaPayload).proposals[0]) == \
        suite_of(found(theirs, SaPayload).proposals[0])
    assert found(response, KePayload).group == found(theirs, KePayload).group
