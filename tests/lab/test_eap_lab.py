"""EAP-MSCHAPv2 and EAP-TLS remote access against strongSwan 6.0.6 (Debian's 5.9.8 ships
no eap-mschapv2 plugin), both roles, with real ESP (issue 13, "EAP for remote-access users").

    left: xfrmctl daemon (file + database)         right: charon 6.0.6
    198.51.100.0/24 == 192.0.2.1 <-> 192.0.2.2 == 203.0.113.0/24

- strongSwan logs in to our gateway (certificate LEFT_ID, users in the database as NT
  hashes), gets a virtual IP from our pool and our DNS servers, pings through ESP;
- the same with a wrong password: refused (AUTHENTICATION_FAILED), the reason in our
  events (log and database), the password nowhere;
- we log in to strongSwan's gateway as a road warrior, get its virtual IP, ping;
- EAP-TLS (TLS 1.2, strongSwan's default): strongSwan logs in to our gateway with its
  certificate (connection "rwtls", chosen by its IKE identity), and we to strongSwan's
  gateway with ours; each pings through ESP;
- EAP-RADIUS: strongSwan logs in with EAP-MSCHAPv2 to our gateway, which relays EAP to
  FreeRADIUS (started by the case in our namespace, on its loopback); pings through ESP.
One daemon and one charon serve the module; each case loads charon's connections and
leaves no SA behind.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.lab.conftest import GatewayPair
from tests.lab.interop_common import (
    LEFT_ID,
    POOL,
    RIGHT_ID,
    case_logs,
    ip_in,
    ping_done,
    ping_from,
    routed_pair,
    wait_clean,
    write_credentials,
)
from tests.support.freeradius import available as freeradius_available
from tests.support.freeradius import freeradius
from tests.support.strongswan import (
    STRONGSWAN6,
    Charon,
    CharonError,
    SwanConn,
    SwanPool,
    SwanSecret,
    available,
)
from tests.support.xfrmctl_daemon import (
    XfrmctlDaemon,
    child,
    connection,
    daemon_conf,
    wait_installed,
)
from xfrmctl.store import models as m
from xfrmctl.store import repo
from xfrmctl.store.db import Database
from xfrmctl.store.migrate import upgrade
from xfrmctl.store.secrets import SecretBox

USER, PASSWORD = "carol", "lab test-only password c4r0l"  # in our database (as NT hash)
OUR_USER, OUR_PASSWORD = "dave", "lab test-only password d4v3"  # in charon's secrets
DNS = ["198.51.100.53", "198.51.100.54"]
SWAN_POOL = "198.51.100.128/28"  # strongSwan's gateway hands our client these
TLS_POOL = "203.0.113.160/28"  # our EAP-TLS gateway's virtual IPs
EAP6 = dataclasses.replace(STRONGSWAN6, plugins=(
    *STRONGSWAN6.plugins, "md4", "eap-identity", "eap-mschapv2", "eap-tls"))

pytestmark = pytest.mark.skipif(available(EAP6) is not None,
                                reason=f"strongSwan 6: {available(EAP6)}")


@dataclass
class Lab:
    pair: GatewayPair
    charon: Charon
    daemon: XfrmctlDaemon
    certs: dict[str, bytes]
    credentials: Path
    db: Database
    results: Path


def gateway_conf(pair: GatewayPair, credentials: Path) -> dict[str, Any]:
    """Our remote-access gateway: EAP-MSCHAPv2 users, our certificate, pool and DNS."""
    return connection(
        pair.left.outer, None, {"net": child([pair.left.subnet], [])}, auth="pubkey",
        local_id=LEFT_ID, certificate=str(credentials / "left.pem"),
        private_key=str(credentials / "left.key"), remote_auth="eap-mschapv2", pool=POOL,
        dns=DNS)


def tls_gateway_conf(pair: GatewayPair, credentials: Path) -> dict[str, Any]:
    """Our EAP-TLS gateway for strongSwan's certificate (its IKE identity RIGHT_ID)."""
    return connection(
        pair.left.outer, None, {"net": child([pair.left.subnet], [])}, auth="pubkey",
        local_id=LEFT_ID, remote_id=RIGHT_ID, certificate=str(credentials / "left.pem"),
        private_key=str(credentials / "left.key"), ca=[str(credentials / "ca.pem")],
        remote_auth="eap-tls", pool=TLS_POOL)


def gateways(pair: GatewayPair, credentials: Path) -> dict[str, Any]:
    """Our gateway connections; the EAP-TLS one first: it takes only RIGHT_ID."""
    return {"rwtls": tls_gateway_conf(pair, credentials),
            "rw": gateway_conf(pair, credentials)}


def client_conf(pair: GatewayPair, credentials: Path) -> dict[str, Any]:
    """Us as a road warrior against strongSwan's gateway."""
    return connection(
        pair.left.outer, pair.right.outer, {"net": child([], [pair.right.subnet])},
        auth="pubkey", remote_id=RIGHT_ID, local_id=OUR_USER, ca=[str(credentials / "ca.pem")],
        local_auth="eap-mschapv2", eap_id=OUR_USER, eap_password=OUR_PASSWORD,
        request_virtual_ip=True, start_action="start")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, lab_results: Path) -> Iterator[Lab]:
    work = tmp_path_factory.mktemp("eap")
    credentials = work / "credentials"
    certs = write_credentials(credentials)
    with routed_pair("xe") as pair:
        daemon_dir = work / "daemon"
        daemon_dir.mkdir()
        url = f"sqlite:///{daemon_dir}/xfrmctl.db"
        upgrade(url)  # the users first: the daemon reads them with its configuration
        db = Database(url)
        box = SecretBox.from_file(daemon_dir / "secret.key")
        db.call(repo.create_eap_user, box, name=USER, password=PASSWORD, actor="lab")
        daemon = XfrmctlDaemon(pair.left.netns, daemon_dir, daemon_conf(
            [pair.left.outer], gateways(pair, credentials)))
        charon = Charon(pair.right.netns, work / "charon", build=EAP6,
                        log_levels={"ike": 2, "cfg": 2})
        daemon.start(wait=False)
        try:
            charon.start()
            daemon.wait_ready()
            yield Lab(pair, charon, daemon, certs, credentials, db, lab_results)
        finally:
            charon.stop()
            daemon.stop()
            db.dispose()


@pytest.fixture
def keep_logs(request: pytest.FixtureRequest, lab: Lab) -> Iterator[None]:
    yield from case_logs(
        request, lab.results, "eap-logs",
        [(lab.daemon.log_path, "xfrmctl.log"), (lab.charon.log_path, "charon.log")],
        [(lab.daemon.config_path, "xfrmctl.yaml"),
         (lab.charon.swanctl_dir / "swanctl.conf", "swanctl.conf")])
    for sa in lab.charon.list_sas():  # leave nothing up for the next case
        lab.charon.terminate(ike_id=sa.uniqueid, timeout=30)
    wait_clean(lab.pair)


def swan_client(lab: Lab, password: str, user: str = USER) -> None:
    """charon as a road warrior logging in to our gateway as `user` (its IKE identity
    too) with EAP-MSCHAPv2."""
    me, gw = lab.pair.right, lab.pair.left
    conn = SwanConn(
        "home", child_name="net", local_addrs=[me.outer], remote_addrs=[gw.outer],
        local_id=user, remote_id=LEFT_ID, auth="pubkey", local_auth="eap-mschapv2",
        eap_id=user, remote_cacert="ca.pem", vips=["0.0.0.0"], local_ts=["dynamic"],
        remote_ts=[gw.subnet], proposals=["aes128gcm16-prfsha256-x25519"],
        esp_proposals=["aes128gcm16-x25519"])
    lab.charon.load([conn], [SwanSecret(password, ids=[user], kind="EAP")],
                    cacerts={"ca.pem": lab.certs["ca.pem"]})


def test_strongswan_client_logs_in_gets_vip_dns_and_pings(lab: Lab, keep_logs: None) -> None:
    swan_client(lab, PASSWORD)
    mark = lab.daemon.mark()
    log_mark = lab.charon.log_path.stat().st_size
    lab.charon.initiate("net", ike="home")
    up = lab.daemon.wait_event("IkeSaUp", 120, mark)
    assert up["connection"] == "rw" and up["initiator"] is False
    assert up["remote_eap_id"] == USER, up
    event = wait_installed(lab.daemon, mark)
    vip = up["virtual_ip"]
    assert vip and ip_in(vip, POOL), up
    (sa,) = lab.charon.list_sas("home")
    assert sa.raw.get("local-vips") == [vip], sa.raw
    charon_log = lab.charon.log_text()[log_mark:]
    assert "EAP-MS-CHAPv2 succeeded" in charon_log, charon_log[-3000:]
    # our CP reply carried the address and both DNS servers (charon's message summary)
    assert "CPRP(ADDR DNS DNS)" in charon_log, charon_log[-3000:]
    ping_done(ping_from(lab.pair.right, vip, lab.pair.left.inner, 5))
    assert int(event["spi_in"]) > 0


def test_wrong_password_is_refused_with_the_reason_in_events(lab: Lab,
                                                             keep_logs: None) -> None:
    swan_client(lab, "not the password of carol")
    mark = lab.daemon.mark()
    with pytest.raises(CharonError):
        lab.charon.initiate("net", ike="home", timeout=60)
    failed = lab.daemon.wait_event("NegotiationFailed", 60, mark)
    assert failed["reason"] == "AUTHENTICATION_FAILED", failed
    assert "wrong password for user 'carol'" in failed["message"], failed
    assert not [e for e in lab.daemon.lines()[mark:] if e.get("event") == "IkeSaUp"]
    # the recorder writes the event to the database too (what `xfrmctl events` shows)
    deadline = time.monotonic() + 30
    while True:
        rows, _ = lab.db.call(repo.list_events, kind=m.EventKind.PROTOCOL, limit=500)
        found = [r for r in rows if r.type == "NegotiationFailed"
                 and "wrong password" in str((r.data or {}).get("message"))]
        if found or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert found, [r.message for r in rows][-10:]
    log = lab.daemon.log_path.read_text()
    assert "not the password" not in log and PASSWORD not in log


def test_xfrmctl_client_logs_in_to_strongswan_gateway(lab: Lab, keep_logs: None) -> None:
    me = lab.pair.right
    gw = SwanConn(
        "rw", child_name="net", local_addrs=[me.outer], local_id=RIGHT_ID, auth="pubkey",
        local_cert="right.pem", remote_auth="eap-mschapv2", remote_eap_id="%any",
        pools=["vips"], local_ts=[me.subnet], remote_ts=["dynamic"],
        proposals=["aes128gcm16-prfsha256-x25519"], esp_proposals=["aes128gcm16-x25519"],
        send_cert="always")
    lab.charon.load([gw], [SwanSecret(OUR_PASSWORD, ids=[OUR_USER], kind="EAP")],
                    [SwanPool("vips", SWAN_POOL, dns=["203.0.113.53"])],
                    certs={"right.pem": lab.certs["right.pem"]},
                    keys={"right.key": lab.certs["right.key"]})
    our_client_logs_in(lab, client_conf(lab.pair, lab.credentials), OUR_USER)


def our_client_logs_in(lab: Lab, home: dict[str, Any], eap_user: str) -> None:
    """Load our client connection `home` beside the gateways: it comes up with a virtual
    IP of charon's pool, charon saw `eap_user`, ping through ESP; then it goes again."""
    me, client = lab.pair.right, lab.pair.left
    mark = lab.daemon.mark()
    lab.daemon.reload(daemon_conf([client.outer], gateways(lab.pair, lab.credentials)
                                  | {"home": home}))
    try:
        up = lab.daemon.wait_event("IkeSaUp", 120, mark, connection="home")
        vip = up["virtual_ip"]
        assert up["initiator"] is True and vip and ip_in(vip, SWAN_POOL), up
        wait_installed(lab.daemon, mark)
        (sa,) = lab.charon.list_sas("rw")
        assert sa.raw.get("remote-eap-id", sa.raw.get("remote-id")) == eap_user, sa.raw
        ping_done(ping_from(client, vip, me.inner, 5))
    finally:
        mark = lab.daemon.mark()
        lab.daemon.reload(daemon_conf([client.outer], gateways(lab.pair, lab.credentials)))
        lab.daemon.wait_event("IkeSaDown", 60, mark)


# --- EAP-TLS ---------------------------------------------------------------------------


def test_strongswan_eap_tls_client_logs_in_and_pings(lab: Lab, keep_logs: None) -> None:
    """charon logs in with its certificate inside EAP-TLS (its default TLS 1.2); our
    gateway verifies it against the CA and hands out a virtual IP."""
    me, gw = lab.pair.right, lab.pair.left
    conn = SwanConn(
        "home", child_name="net", local_addrs=[me.outer], remote_addrs=[gw.outer],
        local_id=RIGHT_ID, remote_id=LEFT_ID, auth="pubkey", local_auth="eap-tls",
        eap_id=RIGHT_ID, local_cert="right.pem", remote_cacert="ca.pem", vips=["0.0.0.0"],
        local_ts=["dynamic"], remote_ts=[gw.subnet],
        proposals=["aes128gcm16-prfsha256-x25519"], esp_proposals=["aes128gcm16-x25519"])
    lab.charon.load([conn], [], cacerts={"ca.pem": lab.certs["ca.pem"]},
                    certs={"right.pem": lab.certs["right.pem"]},
                    keys={"right.key": lab.certs["right.key"]})
    mark = lab.daemon.mark()
    log_mark = lab.charon.log_path.stat().st_size
    lab.charon.initiate("net", ike="home")
    up = lab.daemon.wait_event("IkeSaUp", 120, mark)
    assert up["connection"] == "rwtls" and up["remote_eap_id"] == RIGHT_ID, up
    vip = up["virtual_ip"]
    assert vip and ip_in(vip, TLS_POOL), up
    wait_installed(lab.daemon, mark)
    charon_log = lab.charon.log_text()[log_mark:]
    assert "EAP method EAP_TLS succeeded, MSK established" in charon_log, charon_log[-3000:]
    ping_done(ping_from(lab.pair.right, vip, lab.pair.left.inner, 5))


def test_xfrmctl_eap_tls_client_logs_in_to_strongswan_gateway(lab: Lab,
                                                              keep_logs: None) -> None:
    me, client = lab.pair.right, lab.pair.left
    gw = SwanConn(
        "rw", child_name="net", local_addrs=[me.outer], local_id=RIGHT_ID, auth="pubkey",
        local_cert="right.pem", remote_auth="eap-tls", remote_eap_id="%any",
        remote_cacert="ca.pem", pools=["vips"], local_ts=[me.subnet], remote_ts=["dynamic"],
        proposals=["aes128gcm16-prfsha256-x25519"], esp_proposals=["aes128gcm16-x25519"],
        send_cert="always")
    lab.charon.load([gw], [], [SwanPool("vips", SWAN_POOL)],
                    cacerts={"ca.pem": lab.certs["ca.pem"]},
                    certs={"right.pem": lab.certs["right.pem"]},
                    keys={"right.key": lab.certs["right.key"]})
    home = connection(
        client.outer, me.outer, {"net": child([], [me.subnet])}, auth="pubkey",
        remote_id=RIGHT_ID, local_id=LEFT_ID, eap_id=LEFT_ID, local_auth="eap-tls",
        certificate=str(lab.credentials / "left.pem"),
        private_key=str(lab.credentials / "left.key"), ca=[str(lab.credentials / "ca.pem")],
        request_virtual_ip=True, start_action="start")
    our_client_logs_in(lab, home, LEFT_ID)


# --- EAP-RADIUS ------------------------------------------------------------------------

RADIUS_USER, RADIUS_PASSWORD = "frank", "lab test-only password fr4nk"  # in FreeRADIUS
RADIUS_SECRET = "lab test-only radius secret"


def test_strongswan_client_logs_in_through_freeradius(lab: Lab, keep_logs: None,
                                                      tmp_path: Path) -> None:
    reason = freeradius_available()
    if reason is not None:
        pytest.skip(reason)
    gw = lab.pair.left
    rwradius = connection(
        gw.outer, None, {"net": child([gw.subnet], [])}, auth="pubkey", local_id=LEFT_ID,
        remote_id=RADIUS_USER, certificate=str(lab.credentials / "left.pem"),
        private_key=str(lab.credentials / "left.key"), remote_auth="eap-radius",
        pool=TLS_POOL)
    radius = {"server": "127.0.0.1", "port": 1812, "secret": RADIUS_SECRET, "timeout": 5}
    swan_client(lab, RADIUS_PASSWORD, RADIUS_USER)
    with freeradius(tmp_path / "freeradius", {RADIUS_USER: RADIUS_PASSWORD}, RADIUS_SECRET,
                    netns=gw.netns) as server:
        lab.daemon.reload(daemon_conf([gw.outer], {"rwradius": rwradius}
                                      | gateways(lab.pair, lab.credentials), radius=radius))
        try:
            mark = lab.daemon.mark()
            lab.charon.initiate("net", ike="home")
            up = lab.daemon.wait_event("IkeSaUp", 120, mark)
            assert up["connection"] == "rwradius" and up["remote_eap_id"] == RADIUS_USER, up
            vip = up["virtual_ip"]
            assert vip and ip_in(vip, TLS_POOL), up
            wait_installed(lab.daemon, mark)
            ping_done(ping_from(lab.pair.right, vip, lab.pair.left.inner, 5))
            assert f"Login OK: [{RADIUS_USER}]" in server.log_text()
        finally:
            for sa in lab.charon.list_sas():
                lab.charon.terminate(ike_id=sa.uniqueid, timeout=30)
            lab.daemon.reload(daemon_conf([gw.outer], gateways(lab.pair, lab.credentials)))
