"""More xfrmctl <-> strongSwan 5.9.8 interop on a real kernel: X.509 with Ed25519 and
RSA-PSS, DPD when charon dies, route-based (XFRM interface, VTI) on our side, and a real
NAT (nftables masquerade) between the two. Every case pings through ESP and checks the
packet counters of both SAs in both kernels. Topology and checks: tests/lab/more_lab.py
(test_pair_more.py runs the same cases against a second xfrmctl daemon).

One charon (right) and one xfrmctl daemon (left) for the module, as in
test_interop_strongswan.py: each case loads its connection into charon over VICI and
into our daemon by SIGHUP, under a fresh name, and removes it at the end.

DPD: the DPD connection (our side: dpd_delay 5, dpd_action clear; charon at 192.0.2.3)
comes up first; then charon is SIGKILLed and 192.0.2.3 removed (the peer is gone from
the wire). The daemon gives up after its retransmissions: 4 s * 1.8^n, five retries,
~165 s after the first DPD request, too long to wait for in a case of its own. So charon
is restarted (with a clean kernel on its side) and the other cases run while the daemon
retransmits to the dead peer; the last test of the module checks the give-up
(NegotiationFailed PEER_UNREACHABLE, IkeSaDown, SAs and policies gone) and the number
of DPD transmissions the dead peer was sent.

Route-based cases: our daemon creates the interface (xfrmi if_id 42, or a VTI with
marks 43) with its address and route to 203.0.113.0/24; charon stays policy-based. A
failing case keeps both logs in ``<results>/interop-more-logs/<case>/``.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.lab.interop_common import case_logs
from tests.lab.more_lab import (
    DPD_ID,
    ESP,
    IKE,
    L_DIRECT,
    L_DPD_HOST,
    L_DPD_NET,
    L_HOST,
    L_NAT,
    L_NET,
    LEFT_ID,
    LINKS,
    NAT_OUTSIDE,
    PSK,
    R_DIRECT,
    R_DPD,
    R_DPD_HOST,
    R_DPD_NET,
    R_HOST,
    R_NAT,
    R_NET,
    RIGHT_ID,
    DpdRun,
    Topology,
    case_errors,
    cert_auth,
    check_dpd_gave_up,
    check_interface,
    check_nat_traffic,
    check_route,
    check_traffic,
    kill_dpd_peer,
    link_exists,
    make_certs,
    route_child,
    running,
    topology,
    wait_clean,
    wait_dpd_answered,
    wait_event,
    wait_installed,
    wait_until,
    with_dpd,
)
from tests.support.strongswan import SA, Charon, SwanConn, SwanSecret
from tests.support.xfrmctl_daemon import Event, XfrmctlDaemon, connection

# --------------------------------------------------------------------------- the lab


@dataclass
class Lab:
    topo: Topology
    charon: Charon
    daemon: XfrmctlDaemon
    work: Path
    certs: dict[str, dict[str, bytes]]
    results: Path
    names: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    dpd: DpdRun | None = None


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, lab_results: Path) -> Iterator[Lab]:
    work = tmp_path_factory.mktemp("interop-more")
    certs = make_certs(work)
    with topology(f"xm{os.getpid() % 1000}") as topo:
        daemon = XfrmctlDaemon(topo.left, work / "daemon", with_dpd({}))
        charon = Charon(topo.right, work / "charon")
        with running(daemon, charon):
            yield Lab(topo, charon, daemon, work, certs, lab_results)


@pytest.fixture
def keep_logs(request: pytest.FixtureRequest, lab: Lab) -> Iterator[None]:
    failed = yield from case_logs(
        request, lab.results, "interop-more-logs",
        [(lab.daemon.log_path, "xfrmctl.log"), (lab.charon.log_path, "charon.log")],
        [(path, path.name) for path in (lab.daemon.config_path,
                                        lab.charon.swanctl_dir / "swanctl.conf",
                                        lab.work / "charon-killed.log")])
    if failed and lab.charon.running:  # leave nothing up for the next case
        for sa in lab.charon.list_sas():
            lab.charon.terminate(ike_id=sa.uniqueid, timeout=30)


def swan_child(sas: list[SA]) -> dict[str, Any]:
    kids = [c for sa in sas for c in sa.children.values() if c.get("state") == "INSTALLED"]
    assert kids, [(s.name, s.state, s.child_states()) for s in sas]
    return kids[-1]


def check_same_child(lab: Lab, child_name: str, event: Event) -> list[SA]:
    sas = lab.charon.wait_child_installed(child_name)
    kid = swan_child(sas)
    assert {int(kid["spi-in"], 16), int(kid["spi-out"], 16)} == {
        int(event["spi_out"]), int(event["spi_in"])}, kid
    return sas


# --------------------------------------------------------------------------- DPD, part 1


def test_dpd_charon_killed(lab: Lab, keep_logs: None) -> None:
    """The DPD connection up (charon initiates), ping, liveness answered; then charon is
    SIGKILLed and its address removed, and our daemon retransmits its DPD request. Charon
    is restarted on a clean kernel for the next cases; test_dpd_gave_up checks the end."""
    daemon, charon, topo = lab.daemon, lab.charon, lab.topo
    mark = daemon.mark()
    charon.load([SwanConn("dpd", child_name="dpd", local_addrs=[R_DPD], remote_addrs=[L_DIRECT],
                          local_id=DPD_ID, remote_id=LEFT_ID, proposals=[IKE],
                          esp_proposals=[ESP], local_ts=[R_DPD_NET], remote_ts=[L_DPD_NET])],
                [SwanSecret(PSK, ids=[LEFT_ID, DPD_ID])])
    charon.initiate("dpd", "dpd", timeout=90)
    up = wait_event(daemon, "IkeSaUp", "dpd", mark)
    assert up["initiator"] is False
    event = wait_installed(daemon, "dpd", mark)
    check_same_child(lab, "dpd", event)
    check_traffic(topo, event, L_DPD_HOST, R_DPD_HOST)
    wait_dpd_answered(topo, daemon)
    assert charon.list_sas(), "charon lost the IKE_SA"

    lab.dpd = kill_dpd_peer(topo, daemon, event, charon, lab.work / "charon-killed.log")


# --------------------------------------------------------------------------- the cases


@dataclass(frozen=True)
class Case:
    id: str
    we_initiate: bool = True
    key_type: str | None = None  # X.509 with certificates of this pki key type
    swan_auth: str = "pubkey"
    swan_scheme: str | None = None  # the signature scheme charon's log names, both ways
    route: str | None = None  # "xfrmi" | "vti" on our side
    nat: bool = False
    delete_by_us: bool = True


PSS_AUTH = "ike:rsa/pss-sha256"  # charon signs with RSASSA-PSS and accepts only that
CASES = [
    Case("x509-ed25519-we-initiate", key_type="ed25519", swan_scheme="ED25519"),
    Case("x509-ed25519-charon-initiates", we_initiate=False, key_type="ed25519",
         swan_scheme="ED25519", delete_by_us=False),
    Case("x509-rsa-pss-we-initiate", key_type="rsa2048", swan_auth=PSS_AUTH,
         swan_scheme="RSA_EMSA_PSS", delete_by_us=False),
    Case("x509-rsa-pss-charon-initiates", we_initiate=False, key_type="rsa2048",
         swan_auth=PSS_AUTH, swan_scheme="RSA_EMSA_PSS"),
    Case("route-xfrmi-we-initiate", route="xfrmi"),
    Case("route-vti-charon-initiates", route="vti", we_initiate=False),
    Case("nat-masquerade-we-initiate", nat=True),
]


def swan_conn(case: Case) -> SwanConn:
    local, remote = (R_NAT, None) if case.nat else (R_DIRECT, L_DIRECT)
    return SwanConn(
        "gw", child_name="net", local_addrs=[local], remote_addrs=[remote] if remote else [],
        local_id=RIGHT_ID, remote_id=LEFT_ID, proposals=[IKE], esp_proposals=[ESP],
        local_ts=[R_NET], remote_ts=[L_NET],
        auth=case.swan_auth if case.key_type else "psk",
        local_cert="right.pem" if case.key_type else None,
        remote_cacert="ca.pem" if case.key_type else None,
        child_rekey_time="1h", child_life_time="2h", rekey_time="4h")


def load_charon(lab: Lab, case: Case) -> None:
    conn = swan_conn(case)
    if case.key_type:
        files = lab.certs[case.key_type]
        lab.charon.load([conn], certs={"right.pem": files["right.pem"]},
                        cacerts={"ca.pem": files["ca.pem"]}, keys={"right.key": files["right.key"]})
    else:
        lab.charon.load([conn], [SwanSecret(PSK, ids=[LEFT_ID, RIGHT_ID])])


def our_connection(lab: Lab, case: Case) -> dict[str, Any]:
    address = {"xfrmi": "198.51.100.254/32", "vti": "198.51.100.253/32"}.get(case.route or "")
    kid = route_child(case.route, L_NET, R_NET, address or "")
    return connection(
        L_NAT if case.nat else L_DIRECT, R_NAT if case.nat else R_DIRECT, {"net": kid},
        psk=None if case.key_type else PSK, local_id=LEFT_ID, remote_id=RIGHT_ID,
        ike_proposals=IKE, start_action="start" if case.we_initiate else "none",
        **(cert_auth(lab.work, case.key_type, "left") if case.key_type else {}))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_interop_more(lab: Lab, case: Case, keep_logs: None) -> None:
    name = f"m{next(lab.names)}"
    daemon, charon, topo = lab.daemon, lab.charon, lab.topo
    left = topo.left
    link = LINKS.get(case.route or "")
    mark = daemon.mark()
    charon_log_mark = len(charon.log_text())
    load_charon(lab, case)
    daemon.reload(with_dpd({name: our_connection(lab, case)}))
    if link:  # created with the connection, before any SA
        wait_until(lambda: link_exists(left, link), 30,
                   lambda: f"no {link} in {left}\n{daemon.tail()}")
    if not case.we_initiate:
        charon.initiate("net", "gw", timeout=90)
    up = wait_event(daemon, "IkeSaUp", name, mark)
    assert up["initiator"] is case.we_initiate
    event = wait_installed(daemon, name, mark)
    sas = check_same_child(lab, "net", event)
    assert event["local_ts"] == [L_NET] and event["remote_ts"] == [R_NET], event

    if case.swan_scheme:  # both signatures of the scheme the case is about
        log = charon.log_text()[charon_log_mark:]
        for who in (f"'{RIGHT_ID}' (myself)", f"'{LEFT_ID}'"):
            assert re.search(rf"authentication of {re.escape(who)} with "
                             rf"{case.swan_scheme}\S* successful", log), (who, log[-3000:])
    if case.nat:
        assert up["nat_local"] is True and up["nat_remote"] is False, up
        assert event["encap"] is True, event
        ike = sas[0].raw
        assert ike.get("remote-host") == NAT_OUTSIDE, ike
        assert ike.get("nat-remote") == "yes" and ike.get("nat-local") != "yes", ike
        assert swan_child(sas).get("encap") == "yes"
        check_nat_traffic(topo, event)
    else:
        check_traffic(topo, event, L_HOST, R_HOST, links={left: link} if link else None)
    if case.route:
        check_interface(topo, left, case.route)
    check_route(topo, left, L_HOST, R_HOST, link)

    if case.delete_by_us:
        daemon.reload(with_dpd({}))  # the connection is gone from the file
    else:
        before = daemon.mark()
        charon.terminate(ike="gw", timeout=60)
        wait_event(daemon, "IkeSaDown", name, before, 60)
        if link:
            assert link_exists(left, link), "the interface went with the SA"
        daemon.reload(with_dpd({}))
    wait_clean(topo, also=lambda: not charon.list_sas())
    if link:
        wait_until(lambda: not link_exists(left, link), 30,
                   lambda: f"{link} still there after the connection was removed")
    assert not case_errors(daemon, mark), daemon.tail()


# --------------------------------------------------------------------------- DPD, part 2


def test_dpd_gave_up(lab: Lab, keep_logs: None) -> None:
    """The end of test_dpd_charon_killed: the daemon gives up on the dead peer
    (NegotiationFailed PEER_UNREACHABLE, IkeSaDown) and removes the DPD SAs and policies."""
    check_dpd_gave_up(lab.topo, lab.daemon, lab.dpd)
