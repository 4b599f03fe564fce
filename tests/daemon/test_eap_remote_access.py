"""EAP-MSCHAPv2 remote access between two daemons (fake kernels): the gateway checks the
users the database gave it (NT hashes), hands out a virtual IP with DNS servers; a wrong
password leaves the client down with AUTHENTICATION_FAILED and the reason in `status`,
counted in the failures the metrics export, and no password anywhere in the logs."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from tests.support.db_daemon import file_and_database
from tests.support.fake_links import FakeLinks
from tests.support.gateways import start_pair
from tests.support.pki import make_ca, make_cert
from xfrmctl.daemon import conf as cf
from xfrmctl.daemon import dbconfig
from xfrmctl.daemon.eapusers import EAP_USERS
from xfrmctl.ike.eap.mschapv2 import nt_hash
from xfrmctl.port import ConnectionState, DownReason
from xfrmctl.store import repo

GW, CLIENT = "192.0.2.1", "192.0.2.2"
PASSWORD = "test-only password of erin"


@pytest.fixture
def pems(tmp_path: Path) -> dict[str, str]:
    ca = make_ca("EAP daemon test CA")
    gw = make_cert(ca, "gw.example", sans=["gw.example"])
    return {"ca": ca.cert.public_bytes(Encoding.PEM).decode(),
            "cert": gw.cert.public_bytes(Encoding.PEM).decode(),
            "key": gw.key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8,
                                        NoEncryption()).decode()}


@pytest.fixture(autouse=True)
def users() -> object:
    EAP_USERS.replace({"erin": nt_hash(PASSWORD)})
    yield EAP_USERS
    EAP_USERS.replace({})


def confs(pems: dict[str, str], password: str) -> tuple[cf.DaemonConf, cf.DaemonConf]:
    gateway = cf.ConnectionConf.model_validate({
        "local_addrs": [GW], "auth": "pubkey", "local_id": "gw.example",
        "certificate_pem": pems["cert"], "private_key_pem": pems["key"],
        "remote_auth": "eap-mschapv2", "pool": "203.0.113.128/25",
        "dns": ["198.51.100.53", "2001:db8::53"],
        "children": {"corp": {"local_ts": ["198.51.100.0/24"]}}})
    client = cf.ConnectionConf.model_validate({
        "local_addrs": [CLIENT], "remote_addrs": [GW], "auth": "pubkey",
        "remote_id": "gw.example", "ca_pem": [pems["ca"]], "local_auth": "eap-mschapv2",
        "eap_id": "erin", "eap_password": password, "request_virtual_ip": True,
        "start_action": "start", "children": {"corp": {"remote_ts": ["198.51.100.0/24"]}}})
    return (cf.DaemonConf(connections={"corp": client}),
            cf.DaemonConf(connections={"roadwarriors": gateway}))


async def test_eap_login_gets_a_virtual_ip(pems: dict[str, str]) -> None:
    conf_client, conf_gateway = confs(pems, PASSWORD)
    gw = await start_pair(conf_client, conf_gateway, FakeLinks())
    (child,) = await gw.a.list_child_sas()
    assert child.local_ts == ("203.0.113.129/32",)
    (ike,) = await gw.b.list_ike_sas()
    assert ike.remote_id == CLIENT  # IDi; erin logged in with EAP
    assert (ike.remote_eap_id, ike.virtual_ip) == ("erin", "203.0.113.129")
    (client_ike,) = await gw.a.list_ike_sas()
    assert (client_ike.remote_eap_id, client_ike.virtual_ip) == (None, "203.0.113.129")
    await gw.a.stop()
    await gw.b.stop()


async def test_wrong_password_is_refused_with_reason_and_counted(
        pems: dict[str, str], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    conf_client, conf_gateway = confs(pems, "a wrong password")
    gw = await start_pair(conf_client, conf_gateway, FakeLinks())
    assert not await gw.a.list_child_sas() and not await gw.b.list_ike_sas()
    status_gw, status_client = await gw.b.status(), await gw.a.status()
    assert status_gw.counters.failures.get("AUTHENTICATION_FAILED") == 1
    (gw_conn,) = status_gw.connections
    assert gw_conn.reason is DownReason.AUTHENTICATION_FAILED
    assert "wrong password for user 'erin'" in gw_conn.detail["message"]
    (client_conn,) = status_client.connections
    assert client_conn.state is not ConnectionState.UP
    assert client_conn.reason is DownReason.AUTHENTICATION_FAILED
    assert "a wrong password" not in caplog.text and PASSWORD not in caplog.text
    await gw.a.stop()
    await gw.b.stop()


def test_eap_settings_are_checked() -> None:
    base = {"local_addrs": [GW], "auth": "pubkey", "children": {}}
    with pytest.raises(ValueError, match="not both"):
        cf.ConnectionConf.model_validate({**base, "local_auth": "eap-mschapv2",
                                          "remote_auth": "eap-mschapv2"})
    with pytest.raises(ValueError, match="needs certificate and private_key"):
        cf.ConnectionConf.model_validate({**base, "remote_auth": "eap-mschapv2"})
    with pytest.raises(ValueError, match="eap_password"):
        cf.ConnectionConf.model_validate({**base, "local_auth": "eap-mschapv2",
                                          "ca_pem": ["x"], "eap_id": "erin"})
    with pytest.raises(ValueError, match="auth: pubkey"):
        cf.ConnectionConf.model_validate({**base, "auth": "psk", "psk": "x" * 20,
                                          "remote_auth": "eap-mschapv2"})
    with pytest.raises(ValueError, match="eap-mschapv2"):
        cf.ConnectionConf.model_validate({**base, "remote_auth": "eap-md5"})
    with pytest.raises(ValueError):
        cf.ConnectionConf.model_validate({**base, "dns": ["not an address"]})


def test_file_round_trip_through_the_database(tmp_path: Path, pems: dict[str, str]) -> None:
    """A file's EAP connections stored and read back the same; the client's password is a
    secret of kind eap (never in an audit record); users come with the configuration."""
    conf_client, conf_gateway = confs(pems, PASSWORD)
    both = {"connections": {
        "corp": conf_client.connections["corp"].model_dump(mode="json", exclude_none=True)
        | {"eap_password": PASSWORD},
        "rw": conf_gateway.connections["roadwarriors"].model_dump(mode="json",
                                                                  exclude_none=True)
        | {"private_key_pem": pems["key"]}}}
    path, db, box = file_and_database(tmp_path, both)
    try:
        db.call(repo.create_eap_user, box, name="frank", password="frank's", actor="t")
        dbconfig.apply_file(db, box, path)
        EAP_USERS.replace({})
        loaded, problems = db.call(dbconfig.read_conf, box)
        assert problems == {}
        assert EAP_USERS.lookup("frank") == nt_hash("frank's")
        corp, rw = loaded.connections["corp"], loaded.connections["rw"]
        assert corp.local_auth == "eap-mschapv2" and corp.eap_id == "erin"
        assert corp.eap_password is not None
        assert corp.eap_password.get_secret_value() == PASSWORD
        assert rw.remote_auth == "eap-mschapv2" and rw.dns == ["198.51.100.53", "2001:db8::53"]
        assert dbconfig.apply_file(db, box, path)[1].summary() == "nothing changed"
        events, _ = db.call(repo.list_events, limit=500)
        assert PASSWORD not in json.dumps([[e.before, e.after, e.message] for e in events])
    finally:
        db.dispose()
