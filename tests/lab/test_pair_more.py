"""The cases of test_interop_more.py with xfrmctl on both sides (issue 4): X.509 with
Ed25519 and RSA-PSS, route-based on both sides (XFRM interfaces, VTIs, and xfrmi against
policy-based), a real NAT (nftables masquerade) in front of the initiator, and DPD when
the right daemon dies. Topology and checks: tests/lab/more_lab.py.

One daemon per side for the module, started in parallel (a cold start costs 30-100 s
under TCG). Each case loads its connection into both by SIGHUP, under a fresh name: the
responder first, then the initiator, whose ``start_action: start`` brings it up; a
reload without the connection deletes it (on the side the case names, then the other).
Every case pings through ESP with 0% loss and checks the exact counter deltas of both SAs
in both kernels, that both daemons' events name the same SPIs, that neither daemon logged
an error, and that both kernels (and the route-based interfaces) are clean afterwards.

The signature scheme: both daemons run this code, which signs with Ed25519 for an
Ed25519 key and with RSASSA-PSS for an RSA key when the peer announces RFC 7427 hashes
(as ours does); nothing outside the process shows it (the AUTH payload is encrypted), so
here the certificates' identities on both sides prove X.509 was used, and
test_interop_more.py proves the scheme against charon's log.

DPD: the right daemon initiates the DPD connection (192.0.2.3), then is SIGKILLed and
192.0.2.3 removed; it is restarted (a warm start) on a clean kernel while the left
daemon retransmits its DPD request. The give-up (~165 s later) is checked by the last
test of the module, after the other cases. A failing case keeps both daemons' logs in
``<results>/pair-more-logs/<case>/``.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator, Mapping
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
from tests.support.xfrmctl_daemon import (
    Event,
    XfrmctlDaemon,
    child,
    connection,
    daemon_conf,
    xfrm_states,
)

SIDES = ("left", "right")
ADDRESSES = {("left", "xfrmi"): "198.51.100.254/32", ("left", "vti"): "198.51.100.253/32",
             ("right", "xfrmi"): "203.0.113.254/32", ("right", "vti"): "203.0.113.253/32"}


@dataclass
class Lab:
    topo: Topology
    left: XfrmctlDaemon
    right: XfrmctlDaemon
    work: Path
    results: Path
    right_listen: list[str] = field(default_factory=lambda: [R_DIRECT, R_NAT, R_DPD])
    names: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    dpd: DpdRun | None = None

    def daemon(self, side: str) -> XfrmctlDaemon:
        return self.left if side == "left" else self.right

    def netns(self, side: str) -> str:
        return self.topo.left if side == "left" else self.topo.right

    def conf(self, side: str, conns: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
        """A side's whole configuration: the left keeps its DPD connection throughout."""
        return with_dpd(conns) if side == "left" else daemon_conf(self.right_listen, conns)

    def reload(self, side: str, conns: Mapping[str, Mapping[str, Any]]) -> None:
        self.daemon(side).reload(self.conf(side, conns))


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, lab_results: Path) -> Iterator[Lab]:
    work = tmp_path_factory.mktemp("pair-more")
    make_certs(work)
    with topology(f"xp{os.getpid() % 1000}") as topo:
        left = XfrmctlDaemon(topo.left, work / "left", with_dpd({}))
        right = XfrmctlDaemon(topo.right, work / "right",
                              daemon_conf([R_DIRECT, R_NAT, R_DPD], {}))
        with running(left, right):
            yield Lab(topo, left, right, work, lab_results)


@pytest.fixture
def keep_logs(request: pytest.FixtureRequest, lab: Lab) -> Iterator[None]:
    yield from case_logs(
        request, lab.results, "pair-more-logs",
        [(lab.left.log_path, "left.log"), (lab.right.log_path, "right.log")],
        [(lab.left.config_path, "left.yaml"), (lab.right.config_path, "right.yaml"),
         (lab.work / "right-killed.log", "right-killed.log")])


def check_spis_agree(left_event: Event, right_event: Event) -> None:
    """Each side's inbound SA is the other's outbound one."""
    assert (left_event["spi_in"], left_event["spi_out"]) == (
        right_event["spi_out"], right_event["spi_in"]), (left_event, right_event)


def wait_links(lab: Lab, links: Mapping[str, str], *, present: bool) -> None:
    """Wait until each side's interface of ``links`` ({side: name}) is there, or gone."""
    def done() -> bool:
        return all(link_exists(lab.netns(side), name) is present
                   for side, name in links.items())
    wait_until(done, 30, lambda: f"links {links} not {'all there' if present else 'gone'}\n"
                                 f"{lab.left.tail(10)}\n{lab.right.tail(10)}")


# --------------------------------------------------------------------------- DPD, part 1


def test_dpd_right_killed(lab: Lab, keep_logs: None) -> None:
    """The right daemon brings the DPD connection up, ping, liveness answered; then it is
    SIGKILLed and its address removed, and the left retransmits its DPD request. The right
    daemon is restarted on a clean kernel; test_dpd_gave_up checks the end."""
    topo, left, right = lab.topo, lab.left, lab.right
    left_mark, right_mark = left.mark(), right.mark()
    lab.reload("right", {"dpd": connection(
        R_DPD, L_DIRECT, {"dpd": child([R_DPD_NET], [L_DPD_NET], esp_proposals=ESP)},
        psk=PSK, local_id=DPD_ID, remote_id=LEFT_ID, ike_proposals=IKE, start_action="start")})
    for daemon, mark, initiator in ((left, left_mark, False), (right, right_mark, True)):
        up = wait_event(daemon, "IkeSaUp", "dpd", mark)
        assert up["initiator"] is initiator, up
    event = wait_installed(left, "dpd", left_mark)
    check_spis_agree(event, wait_installed(right, "dpd", right_mark))
    check_traffic(topo, event, L_DPD_HOST, R_DPD_HOST)
    wait_dpd_answered(topo, left)
    assert not right.events("IkeSaDown"), right.tail()
    for daemon in (left, right):
        assert not daemon.errors(), daemon.tail()

    lab.right_listen = [R_DIRECT, R_NAT]  # 192.0.2.3 goes: nothing to bind there
    right.conf = lab.conf("right", {})  # for its restart
    lab.dpd = kill_dpd_peer(topo, left, event, right, lab.work / "right-killed.log")


# --------------------------------------------------------------------------- the cases


@dataclass(frozen=True)
class Case:
    id: str
    initiator: str  # "left" | "right"
    deleter: str  # the side whose reload without the connection deletes it
    key_type: str | None = None  # X.509 with certificates of this pki key type
    left_route: str | None = None  # "xfrmi" | "vti"; None: policy-based
    right_route: str | None = None
    nat: bool = False  # the left initiates from behind the masquerading NAT

    def route(self, side: str) -> str | None:
        return self.left_route if side == "left" else self.right_route


CASES = [
    Case("x509-ed25519-left-initiates", "left", "left", key_type="ed25519"),
    Case("x509-ed25519-right-initiates", "right", "right", key_type="ed25519"),
    Case("x509-rsa-pss-left-initiates", "left", "right", key_type="rsa2048"),
    Case("x509-rsa-pss-right-initiates", "right", "left", key_type="rsa2048"),
    Case("route-xfrmi-both", "left", "left", left_route="xfrmi", right_route="xfrmi"),
    Case("route-vti-both", "right", "right", left_route="vti", right_route="vti"),
    # the 0.0.0.0/0 xfrmi side initiates, the policy-based left narrows to its subnets
    Case("route-xfrmi-right-policy-left", "right", "left", right_route="xfrmi"),
    Case("nat-masquerade-left-initiates", "left", "right", nat=True),
]


def side_connection(lab: Lab, case: Case, side: str) -> dict[str, Any]:
    """One side's connection of the case (start_action start on the initiator)."""
    left = side == "left"
    local_net, remote_net = (L_NET, R_NET) if left else (R_NET, L_NET)
    route = case.route(side)
    kid = route_child(route, local_net, remote_net, ADDRESSES.get((side, route or ""), ""))
    if case.nat:  # the right answers whoever comes through the NAT
        local, remote = (L_NAT, R_NAT) if left else (R_NAT, None)
    else:
        local, remote = (L_DIRECT, R_DIRECT) if left else (R_DIRECT, L_DIRECT)
    return connection(
        local, remote, {"net": kid}, psk=None if case.key_type else PSK,
        local_id=LEFT_ID if left else RIGHT_ID, remote_id=RIGHT_ID if left else LEFT_ID,
        ike_proposals=IKE, start_action="start" if side == case.initiator else "none",
        **(cert_auth(lab.work, case.key_type, side) if case.key_type else {}))


def expected_ts(case: Case, side: str) -> tuple[list[str], list[str]]:
    """(local_ts, remote_ts) a side's event names: 0.0.0.0/0 when both are route-based,
    else narrowed to the subnets."""
    if case.left_route and case.right_route:
        return ["0.0.0.0/0"], ["0.0.0.0/0"]
    return ([L_NET], [R_NET]) if side == "left" else ([R_NET], [L_NET])


def check_nat_detected(lab: Lab, ups: Mapping[str, Event], kids: Mapping[str, Event]) -> None:
    """Both daemons saw the NAT (the left behind it), moved to 4500 and encapsulate."""
    left_up, right_up = ups["left"], ups["right"]
    assert (left_up["nat_local"], left_up["nat_remote"]) == (True, False), left_up
    assert (right_up["nat_local"], right_up["nat_remote"]) == (False, True), right_up
    assert left_up["local"] == [L_NAT, 4500] and left_up["remote"] == [R_NAT, 4500], left_up
    assert right_up["local"] == [R_NAT, 4500] and right_up["remote"][0] == NAT_OUTSIDE, right_up
    for kid in kids.values():
        assert kid["encap"] is True, kid
    # the right sends to the NAT's outside address and the port it mapped our 4500 to
    right_out = {s.spi: s for s in xfrm_states(lab.topo.right)}[int(kids["right"]["spi_out"])]
    assert right_out.dst == NAT_OUTSIDE, right_out
    assert right_out.encap == f"espinudp sport 4500 dport {right_up['remote'][1]}", right_out


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_pair_more(lab: Lab, case: Case, keep_logs: None) -> None:
    name = f"p{next(lab.names)}"
    topo = lab.topo
    links = {side: LINKS[route] for side in SIDES if (route := case.route(side))}
    marks = {side: lab.daemon(side).mark() for side in SIDES}
    responder = "right" if case.initiator == "left" else "left"
    for side in (responder, case.initiator):  # the initiator starts once both have it
        lab.reload(side, {name: side_connection(lab, case, side)})
    wait_links(lab, links, present=True)  # created with the connection, before any SA

    ups = {side: wait_event(lab.daemon(side), "IkeSaUp", name, marks[side]) for side in SIDES}
    kids = {side: wait_installed(lab.daemon(side), name, marks[side]) for side in SIDES}
    for side in SIDES:
        assert ups[side]["initiator"] is (side == case.initiator), ups[side]
        local_ts, remote_ts = expected_ts(case, side)
        assert (kids[side]["local_ts"], kids[side]["remote_ts"]) == (local_ts, remote_ts)
    check_spis_agree(kids["left"], kids["right"])
    if case.key_type:  # the identities the certificates carry
        for side, peer_id in (("left", RIGHT_ID), ("right", LEFT_ID)):
            assert ups[side]["remote_id"] == peer_id, ups[side]

    if case.nat:
        check_nat_detected(lab, ups, kids)
        check_nat_traffic(topo, kids["left"])
    else:
        check_traffic(topo, kids["left"], L_HOST, R_HOST,
                      links={lab.netns(side): link for side, link in links.items()})
    for side in SIDES:
        route = case.route(side)
        if route:
            check_interface(topo, lab.netns(side), route)
    check_route(topo, topo.left, L_HOST, R_HOST, links.get("left"))
    check_route(topo, topo.right, R_HOST, L_HOST, links.get("right"))

    # delete: one side's reload without the connection; the other hears of it, keeps its
    # interface until its own reload without the connection
    other = "right" if case.deleter == "left" else "left"
    before = lab.daemon(other).mark()
    lab.reload(case.deleter, {})
    down = wait_event(lab.daemon(other), "IkeSaDown", name, before, 60)
    assert down["reason"] == "deleted by peer", down
    if other in links:
        assert link_exists(lab.netns(other), links[other]), "the interface went with the SA"
    lab.reload(other, {})
    wait_clean(topo)
    wait_links(lab, links, present=False)
    for side in SIDES:
        assert not case_errors(lab.daemon(side), marks[side]), lab.daemon(side).tail()


# --------------------------------------------------------------------------- DPD, part 2


def test_dpd_gave_up(lab: Lab, keep_logs: None) -> None:
    """The end of test_dpd_right_killed: the left gives up on the dead peer
    (NegotiationFailed PEER_UNREACHABLE, IkeSaDown) and removes the DPD SAs and policies."""
    check_dpd_gave_up(lab.topo, lab.left, lab.dpd)
    for daemon in (lab.left, lab.right):  # the whole module (the right since its restart)
        assert not daemon.errors(), daemon.tail()
