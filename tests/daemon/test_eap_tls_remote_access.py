"""EAP-TLS remote access between two daemons (fake kernels): the client logs in with its
certificate inside EAP and gets a virtual IP; a certificate from another CA leaves it
down with AUTHENTICATION_FAILED, the reason in `status` and the failure counted; the
settings are checked, and an EAP-TLS client survives the trip through the database with
its certificate, key and CA."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from tests.support.db_daemon import file_and_database
from tests.support.fake_links import FakeLinks
from tests.support.gateways import start_pair
from tests.support.pki import Credential, make_ca, make_cert
from xfrmctl.daemon import conf as cf
from xfrmctl.daemon import dbconfig
from xfrmctl.port import ConnectionState, DownReason

GW, CLIENT = "192.0.2.1", "192.0.2.2"


def _pem(cred: Credential) -> tuple[str, str]:
    return (cred.cert.public_bytes(Encoding.PEM).decode(),
            cred.key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()).decode())


@pytest.fixture(scope="module")
def pems() -> dict[str, str]:
    ca = make_ca("EAP-TLS daemon test CA")
    other = make_ca("Not the gateway's CA")
    out = {"ca": ca.cert.public_bytes(Encoding.PEM).decode()}
    out["gw_cert"], out["gw_key"] = _pem(make_cert(ca, "gw.example", sans=["gw.example"]))
    out["cert"], out["key"] = _pem(make_cert(ca, "erin", sans=["erin@example.org"]))
    out["bad_cert"], out["bad_key"] = _pem(make_cert(other, "erin",
                                                     sans=["erin@example.org"]))
    return out


def gateway_conf(pems: dict[str, str]) -> cf.ConnectionConf:
    return cf.ConnectionConf.model_validate({
        "local_addrs": [GW], "auth": "pubkey", "local_id": "gw.example",
        "certificate_pem": pems["gw_cert"], "private_key_pem": pems["gw_key"],
        "ca_pem": [pems["ca"]], "remote_auth": "eap-tls", "pool": "203.0.113.128/25",
        "children": {"corp": {"local_ts": ["198.51.100.0/24"]}}})


def client_conf(pems: dict[str, str], bad: bool = False) -> cf.ConnectionConf:
    prefix = "bad_" if bad else ""
    return cf.ConnectionConf.model_validate({
        "local_addrs": [CLIENT], "remote_addrs": [GW], "auth": "pubkey",
        "remote_id": "gw.example", "ca_pem": [pems["ca"]], "local_auth": "eap-tls",
        "certificate_pem": pems[f"{prefix}cert"], "private_key_pem": pems[f"{prefix}key"],
        "eap_id": "erin@example.org", "request_virtual_ip": True, "start_action": "start",
        "children": {"corp": {"remote_ts": ["198.51.100.0/24"]}}})


async def test_eap_tls_login_gets_a_virtual_ip(pems: dict[str, str]) -> None:
    gw = await start_pair(cf.DaemonConf(connections={"corp": client_conf(pems)}),
                          cf.DaemonConf(connections={"rw": gateway_conf(pems)}), FakeLinks())
    (child,) = await gw.a.list_child_sas()
    assert child.local_ts == ("203.0.113.129/32",)
    (ike,) = await gw.b.list_ike_sas()
    assert (ike.remote_eap_id, ike.virtual_ip) == ("erin@example.org", "203.0.113.129")
    await gw.a.stop()
    await gw.b.stop()


async def test_certificate_of_another_ca_is_refused_and_counted(
        pems: dict[str, str], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    gw = await start_pair(cf.DaemonConf(connections={"corp": client_conf(pems, bad=True)}),
                          cf.DaemonConf(connections={"rw": gateway_conf(pems)}), FakeLinks())
    assert not await gw.a.list_child_sas() and not await gw.b.list_ike_sas()
    status_gw, status_client = await gw.b.status(), await gw.a.status()
    assert status_gw.counters.failures.get("AUTHENTICATION_FAILED") == 1
    (gw_conn,) = status_gw.connections
    assert gw_conn.reason is DownReason.AUTHENTICATION_FAILED
    message = gw_conn.detail["message"]
    assert "EAP-TLS: client certificate refused" in message
    assert "not issued by a trusted CA" in message and "erin@example.org" in message
    (client_conn,) = status_client.connections
    assert client_conn.state is not ConnectionState.UP
    assert client_conn.reason is DownReason.AUTHENTICATION_FAILED
    assert "PRIVATE KEY" not in caplog.text
    await gw.a.stop()
    await gw.b.stop()


def test_eap_tls_settings_are_checked(pems: dict[str, str]) -> None:
    base = {"local_addrs": [GW], "auth": "pubkey", "children": {}}
    own = {"certificate_pem": pems["cert"], "private_key_pem": pems["key"]}
    with pytest.raises(ValueError, match="eap-tls needs ca"):
        cf.ConnectionConf.model_validate({**base, **own, "remote_auth": "eap-tls"})
    with pytest.raises(ValueError, match="eap-tls needs certificate and private_key"):
        cf.ConnectionConf.model_validate({**base, "local_auth": "eap-tls",
                                          "ca_pem": [pems["ca"]]})
    # no password for EAP-TLS
    conf = cf.ConnectionConf.model_validate({**base, **own, "local_auth": "eap-tls",
                                             "ca_pem": [pems["ca"]]})
    ike = cf.ike_config("c", conf)
    assert ike.local_auth.eap is not None
    client = ike.local_auth.eap()
    # the EAP identity defaults to our certificate's subject, in DER order
    assert client.identity == cf.dn_text(ike.local_auth.certificate.subject)  # type: ignore[union-attr]
    assert client.identity.endswith("CN=erin")


def test_eap_tls_connections_round_trip_through_the_database(
        tmp_path: Path, pems: dict[str, str]) -> None:
    both = {"connections": {
        "corp": client_conf(pems).model_dump(mode="json", exclude_none=True)
        | {"private_key_pem": pems["key"]},
        "rw": gateway_conf(pems).model_dump(mode="json", exclude_none=True)
        | {"private_key_pem": pems["gw_key"]}}}
    path, db, box = file_and_database(tmp_path, both)
    try:
        dbconfig.apply_file(db, box, path)
        loaded, problems = db.call(dbconfig.read_conf, box)
        assert problems == {}
        corp, rw = loaded.connections["corp"], loaded.connections["rw"]
        assert corp.local_auth == "eap-tls" and rw.remote_auth == "eap-tls"
        assert corp.certificate_pem == pems["cert"] and corp.ca_pem == [pems["ca"]]
        assert corp.private_key_pem is not None
        assert corp.private_key_pem.get_secret_value() == pems["key"]
        assert rw.ca_pem == [pems["ca"]] and rw.certificate_pem == pems["gw_cert"]
        cf.ike_config("corp", corp)  # loads: TLS context with our key
        cf.ike_config("rw", rw)
        assert dbconfig.apply_file(db, box, path)[1].summary() == "nothing changed"
    finally:
        db.dispose()
