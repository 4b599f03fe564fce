"""Issue 4 over IPv6: our daemon's IKE endpoints and ESP with IPv6 outer addresses, against
strongSwan 5.9.8 (charon) and against a second xfrmctl daemon, on a real kernel.

    ns L (ours, left)                                       ns S: charon
    2001:db8:a::/64 == ESP 2001:db8:0:1::1 <-> 2001:db8:0:1::2 == 2001:db8:b::/64
    198.51.100.0/24 == ESP 2001:db8:0:1::1 <-> 2001:db8:0:1::2 == 203.0.113.0/24 (mixed)
                       ESP 2001:db8:0:1::1 <-> 2001:db8:0:1::3 == 2001:db8:b::/64
                                                            ns P: xfrmctl peer

One topology (ipv6_lab.py), one charon and two daemons for the module, all started at
once (a cold start costs minutes under TCG). Each case loads its connection into charon
over VICI and into the daemons by SIGHUP, under a fresh name (the previous case's is gone),
as the interop modules do, with their cases and checks (interop_common.py), the responder
first: each side initiates once, against both peers, a peer by its connection's start
action as it is loaded. Every case checks the IKE_SA and both SAs run between
the IPv6 outer addresses, that both ends agree on the SPIs, that our daemon routed the
remote subnet in table 220 (nobody routes by hand), pings through ESP with exact packet
counts on both SAs in both kernels (octets on the sending SAs), and deletes from one side
or the other: both kernels are left without SAs, policies and table 220 routes, and our
daemon's log without errors. A failing case keeps the logs in ``<results>/ipv6-logs/``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from tests.lab import ipv6_lab
from tests.lab.conftest import GatewayPair
from tests.lab.interop_common import (
    LEFT_ID,
    PSK,
    RIGHT_ID,
    Case,
    assert_mirrored,
    case_logs,
    wait_child_deleted,
    wait_clean,
    write_credentials,
    xfrmctl_conf,
)
from tests.lab.swan_lab import Lab as SwanLab
from tests.lab.swan_lab import swan_child, swan_conn
from tests.support.strongswan import Charon, SwanSecret
from tests.support.xfrmctl_daemon import XfrmctlDaemon, daemon_conf, wait_installed

WE_INITIATE = Case("we-initiate")
PEER_INITIATES = Case("peer-initiates", we_initiate=False, delete_by_us=False)


@dataclass
class Lab:
    topo: ipv6_lab.Topology
    daemon: XfrmctlDaemon  # ours, left
    charon: Charon
    peer: XfrmctlDaemon  # the xfrmctl peer, right
    credentials: Path
    results: Path
    names: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def empty(self, daemon: XfrmctlDaemon) -> dict[str, object]:
        """A configuration of ``daemon`` without connections."""
        pair = self.topo.peer
        return daemon_conf([(pair.right if daemon is self.peer else pair.left).outer], {})


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, lab_results: Path) -> Iterator[Lab]:
    work = tmp_path_factory.mktemp("ipv6")
    write_credentials(work / "credentials")  # PSK cases: only for xfrmctl_conf's signature
    topo = ipv6_lab.make_topology("v6")
    daemon = XfrmctlDaemon(topo.swan.left.netns, work / "daemon",
                           daemon_conf([topo.swan.left.outer], {}))
    peer = XfrmctlDaemon(topo.peer.right.netns, work / "peer",
                         daemon_conf([topo.peer.right.outer], {}))
    charon = Charon(topo.swan.right.netns, work / "charon")
    try:
        daemon.start(wait=False)  # the three cold starts at once
        peer.start(wait=False)
        charon.start()
        daemon.wait_ready()
        peer.wait_ready()
        yield Lab(topo, daemon, charon, peer, work / "credentials", lab_results)
    finally:
        charon.stop()
        peer.stop()
        daemon.stop()
        ipv6_lab.remove_topology(topo)


@pytest.fixture
def keep_logs(request: pytest.FixtureRequest, lab: Lab) -> Iterator[None]:
    failed = yield from case_logs(
        request, lab.results, "ipv6-logs",
        [(lab.daemon.log_path, "xfrmctl.log"), (lab.charon.log_path, "charon.log"),
         (lab.peer.log_path, "peer.log")],
        [(lab.daemon.config_path, "xfrmctl.yaml"), (lab.peer.config_path, "peer.yaml"),
         (lab.charon.swanctl_dir / "swanctl.conf", "swanctl.conf")])
    if failed:  # what the kernels held, then leave nothing up for the next case
        dump = lab.results / "ipv6-logs" / f"kernels-{request.node.name}.txt"
        dump.write_text(ipv6_lab.kernel_dump(lab.topo))
        for sa in lab.charon.list_sas():
            lab.charon.terminate(ike_id=sa.uniqueid, timeout=30)
        for daemon in (lab.daemon, lab.peer):
            if daemon.running:
                daemon.reload(lab.empty(daemon))


def check_clean(pair: GatewayPair) -> None:
    """No table 220 route left on either side, of the inner family."""
    for gw in (pair.left, pair.right):
        ipv6_lab.wait_unrouted(gw, ipv6_lab.version(pair))


@pytest.mark.parametrize(("case", "mixed"), [
    pytest.param(WE_INITIATE, False, id="v6-we-initiate-we-delete"),
    pytest.param(PEER_INITIATES, False, id="v6-charon-initiates-charon-deletes"),
    pytest.param(WE_INITIATE, True, id="v4-inside-v6-we-initiate-we-delete"),
])
def test_ipv6_charon(lab: Lab, case: Case, mixed: bool, keep_logs: None) -> None:
    pair = lab.topo.mixed if mixed else lab.topo.swan
    daemon, charon = lab.daemon, lab.charon
    name = f"c{next(lab.names)}"
    mark = daemon.mark()
    swan = SwanLab(pair, charon, daemon, {}, lab.credentials, lab.results)
    # the responder first: charon initiates by its connection's start action, on its load
    conn = replace(swan_conn(swan, case), start_action="none" if case.we_initiate else "start")
    loads = [lambda: charon.load([conn], [SwanSecret(PSK, ids=[LEFT_ID, RIGHT_ID])]),
             lambda: daemon.reload(xfrmctl_conf(pair, case, name, lab.credentials))]
    for load in loads if case.we_initiate else loads[::-1]:
        load()
    up = daemon.wait_event("IkeSaUp", 120, mark, connection=name)
    assert up["initiator"] is case.we_initiate
    event = wait_installed(daemon, mark, connection=name)
    assert (event["local_ts"], event["remote_ts"]) == ([pair.left.subnet],
                                                       [pair.right.subnet]), event
    kid = swan_child(charon.wait_child_installed("net"))
    # charon's inbound SA is our outbound one and the reverse
    assert (int(kid["spi-in"], 16), int(kid["spi-out"], 16)) == (
        int(event["spi_out"]), int(event["spi_in"])), kid
    assert (kid["local-ts"], kid["remote-ts"]) == ([pair.right.subnet], [pair.left.subnet])
    ipv6_lab.check_outer(pair, up, event)
    ipv6_lab.check_route(pair.left, pair.right)
    ipv6_lab.check_counted_traffic(pair, case, event)

    before = daemon.mark()
    if case.delete_by_us:
        daemon.reload(lab.empty(daemon))
    else:
        charon.terminate(ike="gw", timeout=60)
        daemon.wait_event("IkeSaDown", 60, before, connection=name)
    wait_child_deleted(daemon, mark, event)
    wait_clean(pair, lambda: not charon.list_sas())
    check_clean(pair)
    assert not daemon.errors(mark), daemon.tail()


@pytest.mark.parametrize("case", [
    pytest.param(WE_INITIATE, id="v6-we-initiate-we-delete"),
    pytest.param(PEER_INITIATES, id="v6-peer-initiates-peer-deletes"),
])
def test_ipv6_pair(lab: Lab, case: Case, keep_logs: None) -> None:
    pair, both = lab.topo.peer, (lab.daemon, lab.peer)
    name = f"p{next(lab.names)}"
    marks = [d.mark() for d in both]
    # the responder first: the initiator negotiates as soon as it has the connection
    confs = [xfrmctl_conf(pair, case, name, lab.credentials, right=right)
             for right in (False, True)]
    order = (1, 0) if case.we_initiate else (0, 1)
    for i in order:
        both[i].reload(confs[i])
    up, peer_up = (d.wait_event("IkeSaUp", 120, m, connection=name)
                   for d, m in zip(both, marks, strict=True))
    assert up["initiator"] is case.we_initiate is not peer_up["initiator"]
    assert (up["spi_i"], up["spi_r"]) == (peer_up["spi_i"], peer_up["spi_r"])
    event, peer_event = (wait_installed(d, m, connection=name)
                         for d, m in zip(both, marks, strict=True))
    assert_mirrored(event, peer_event)
    assert (event["local_ts"], event["remote_ts"]) == ([pair.left.subnet],
                                                       [pair.right.subnet]), event
    ipv6_lab.check_outer(pair, up, event)
    ipv6_lab.check_route(pair.left, pair.right)
    ipv6_lab.check_route(pair.right, pair.left)
    ipv6_lab.check_counted_traffic(pair, case, event)

    deleter, other = both if case.delete_by_us else both[::-1]
    down_mark = other.mark()
    deleter.reload(lab.empty(deleter))
    other.wait_event("IkeSaDown", 60, down_mark, connection=name)
    for daemon, mark, kid in zip(both, marks, (event, peer_event), strict=True):
        wait_child_deleted(daemon, mark, kid)
    wait_clean(pair)
    check_clean(pair)
    for daemon, mark in zip(both, marks, strict=True):
        assert not daemon.errors(mark), daemon.tail()
