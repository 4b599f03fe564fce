"""EAP-RADIUS pass-through (RFC 3579) against FreeRADIUS (Debian's package, started by the
test on loopback with a users file): an xfrmctl client logs in with EAP-MSCHAPv2 to a
gateway that relays EAP to FreeRADIUS and takes the MSK from its MS-MPPE keys; a wrong
password gets Access-Reject -> AUTHENTICATION_FAILED with the reason, counted; a wrong
shared secret or a silent server ends the login with a reason that says so."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import struct
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from tests.support.freeradius import FreeRadius, available, freeradius
from tests.support.gateways import Gateways, start_pair
from tests.support.pki import make_ca, make_cert
from xfrmctl.daemon import conf as cf
from xfrmctl.daemon.radius import (
    ACCESS_ACCEPT,
    MESSAGE_AUTHENTICATOR,
    RadiusError,
    encode_request,
    mppe_key,
    parse_response,
)
from xfrmctl.port import DownReason

pytestmark = pytest.mark.skipif(available() is not None, reason=str(available()))

GW, CLIENT = "192.0.2.1", "192.0.2.2"
PASSWORD = "test-only password of carol"
SECRET = "test-only radius secret"


@pytest.fixture(scope="module")
def radius(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FreeRadius]:
    with freeradius(tmp_path_factory.mktemp("freeradius"), {"carol": PASSWORD},
                    SECRET) as server:
        yield server


@pytest.fixture(scope="module")
def pems() -> dict[str, str]:
    ca = make_ca("EAP-RADIUS test CA")
    gw = make_cert(ca, "gw.example", sans=["gw.example"])
    return {"ca": ca.cert.public_bytes(Encoding.PEM).decode(),
            "cert": gw.cert.public_bytes(Encoding.PEM).decode(),
            "key": gw.key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8,
                                        NoEncryption()).decode()}


def confs(pems: dict[str, str], radius: FreeRadius, password: str = PASSWORD,
          secret: str = SECRET, port: int | None = None
          ) -> tuple[cf.DaemonConf, cf.DaemonConf]:
    gateway = cf.ConnectionConf.model_validate({
        "local_addrs": [GW], "auth": "pubkey", "local_id": "gw.example",
        "certificate_pem": pems["cert"], "private_key_pem": pems["key"],
        "remote_auth": "eap-radius", "pool": "203.0.113.128/25",
        "children": {"corp": {"local_ts": ["198.51.100.0/24"]}}})
    client = cf.ConnectionConf.model_validate({
        "local_addrs": [CLIENT], "remote_addrs": [GW], "auth": "pubkey",
        "remote_id": "gw.example", "ca_pem": [pems["ca"]], "local_auth": "eap-mschapv2",
        "eap_id": "carol", "eap_password": password, "request_virtual_ip": True,
        "start_action": "start", "children": {"corp": {"remote_ts": ["198.51.100.0/24"]}}})
    server = cf.RadiusConf.model_validate({
        "server": radius.address, "port": port or radius.port, "secret": secret,
        "timeout": 0.5, "retries": 1})
    return (cf.DaemonConf(connections={"corp": client}),
            cf.DaemonConf(radius=server, connections={"rw": gateway}))


async def settle_login(gw: Gateways) -> None:
    """Until the client is up or the gateway recorded a failure (RADIUS takes real time)."""
    for _ in range(200):
        await gw.settle()
        status = await gw.b.status()
        if await gw.a.list_child_sas() or status.counters.failures:
            return
        await asyncio.sleep(0.05)


async def test_login_through_freeradius_gets_a_virtual_ip(pems: dict[str, str],
                                                          radius: FreeRadius) -> None:
    gw = await start_pair(*confs(pems, radius))
    try:
        await settle_login(gw)
        (child,) = await gw.a.list_child_sas()
        assert child.local_ts == ("203.0.113.129/32",)
        (ike,) = await gw.b.list_ike_sas()
        assert (ike.remote_eap_id, ike.virtual_ip) == ("carol", "203.0.113.129")
        assert gw.b.radius.requests >= 3  # identity, MSCHAPv2 response, success response
    finally:
        await gw.a.stop()
        await gw.b.stop()
    assert "Login OK: [carol]" in radius.log_text()


@pytest.mark.parametrize(("kind", "why"), [
    ("password", "RADIUS Access-Reject"),
    # FreeRADIUS drops a request whose Message-Authenticator does not verify
    ("secret", "did not answer (2 tries)"),
    ("port", "did not answer (2 tries)"),
])
async def test_refused_logins_say_why_and_are_counted(
        pems: dict[str, str], radius: FreeRadius, kind: str, why: str,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    args: dict[str, object] = {
        "password": {"password": "not the password"},
        "secret": {"secret": "not the shared secret"},
        "port": {"port": radius.port + 1 if radius.port < 65535 else radius.port - 1},
    }[kind]
    gw = await start_pair(*confs(pems, radius, **args))  # type: ignore[arg-type]
    try:
        await settle_login(gw)
        assert not await gw.a.list_child_sas() and not await gw.b.list_ike_sas()
        status = await gw.b.status()
        assert status.counters.failures.get("AUTHENTICATION_FAILED") == 1
        (conn,) = status.connections
        assert conn.reason is DownReason.AUTHENTICATION_FAILED
        assert why in conn.detail["message"] and "'carol'" in conn.detail["message"]
    finally:
        await gw.a.stop()
        await gw.b.stop()
    assert SECRET not in caplog.text and PASSWORD not in caplog.text


def test_radius_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="secret or secret_file"):
        cf.RadiusConf.model_validate({"server": "127.0.0.1"})
    with pytest.raises(ValueError, match="server"):
        cf.RadiusConf.model_validate({"server": "radius.example", "secret": "x"})
    with pytest.raises(ValueError, match="eap-radius is for gateways"):
        cf.ConnectionConf.model_validate({"local_addrs": [GW], "auth": "pubkey",
                                          "local_auth": "eap-radius", "children": {}})


# --- the codec -------------------------------------------------------------------------


def _answer(code: int, identifier: int, request_auth: bytes, attributes: bytes,
            secret: bytes) -> bytes:
    body = attributes + bytes((MESSAGE_AUTHENTICATOR, 18)) + b"\0" * 16
    head = struct.pack("!BBH", code, identifier, 20 + len(body))
    mac = hmac.new(secret, head + request_auth + body, hashlib.md5).digest()
    body = body[:-16] + mac
    auth = hashlib.md5(head + request_auth + body + secret).digest()
    return head + auth + body


def test_answers_are_verified_with_the_secret() -> None:
    secret, request_auth = b"s3", bytes(range(16))
    request = encode_request(7, request_auth, [(1, b"carol")], secret)
    assert request[0] == 1 and request[1] == 7 and request[-18] == MESSAGE_AUTHENTICATOR
    good = _answer(ACCESS_ACCEPT, 7, request_auth, b"", secret)
    assert parse_response(good, 7, request_auth, secret).code == ACCESS_ACCEPT
    with pytest.raises(RadiusError, match="Response Authenticator"):
        parse_response(good, 7, request_auth, b"other")
    with pytest.raises(RadiusError, match="another request"):
        parse_response(good, 8, request_auth, secret)
    forged = bytearray(good)
    forged[-1] ^= 1  # the Message-Authenticator, Response Authenticator recomputed
    forged[4:20] = hashlib.md5(bytes(forged[:4]) + request_auth + bytes(forged[20:])
                               + secret).digest()
    with pytest.raises(RadiusError, match="Message-Authenticator"):
        parse_response(bytes(forged), 7, request_auth, secret)
    with pytest.raises(RadiusError):
        parse_response(good[:10], 7, request_auth, secret)


def test_mppe_key_refuses_malformed_values() -> None:
    with pytest.raises(RadiusError, match="malformed"):
        mppe_key(b"\x80\x01" + b"x" * 15, b"s", bytes(16))
