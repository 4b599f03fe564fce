"""xfrmctl against xfrmctl on a real kernel: the interop cases of interop_common.py (run
against strongSwan by test_interop_strongswan.py) with a second xfrmctl daemon as the
right-hand peer, ping through ESP every time.

    ns "pl" (our daemon, left)                      ns "pr" (the peer daemon, right)
    198.51.100.0/24 == ESP 192.0.2.1 <----------> 192.0.2.2 == 203.0.113.0/24

One gateway pair and two daemons for the module, started in parallel (a cold start costs
minutes under TCG). Each case reloads both (SIGHUP) with only its own connection, under a
fresh name, the responder first: the initiator (``start_action: start``) starts at its
reload. The peer acts through its configuration alone: it rekeys a CHILD_SA or its IKE_SA
by its shorter timers, and deletes when reloaded without the connection. Every case
checks that both daemons agree on the SPIs and selectors, pings with exact counters on
both SAs in both kernels, and ends with both kernels empty and no error in either log.
A failing case keeps both logs in ``<results>/pair-interop-logs/<case>/``.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.lab import interop_common as common
from tests.lab.conftest import GatewayPair
from tests.lab.interop_common import CASES, Case, assert_mirrored
from tests.support.xfrmctl_daemon import XfrmctlDaemon, daemon_conf, wait_installed


@dataclass
class Lab:
    pair: GatewayPair
    left: XfrmctlDaemon  # ours
    right: XfrmctlDaemon  # the peer
    credentials: Path
    results: Path
    names: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def both(self) -> tuple[XfrmctlDaemon, XfrmctlDaemon]:
        return self.left, self.right

    def empty(self, right: bool) -> dict[str, object]:
        """A configuration of the left (or right) daemon without connections."""
        return daemon_conf([(self.pair.right if right else self.pair.left).outer], {})


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, lab_results: Path) -> Iterator[Lab]:
    work = tmp_path_factory.mktemp("pair-interop")
    common.write_credentials(work / "credentials")
    with common.routed_pair("pi") as pair:
        left = XfrmctlDaemon(pair.left.netns, work / "left", daemon_conf([pair.left.outer], {}))
        right = XfrmctlDaemon(pair.right.netns, work / "right",
                              daemon_conf([pair.right.outer], {}))
        try:
            left.start(wait=False)  # both cold starts at once
            right.start(wait=False)
            left.wait_ready()
            right.wait_ready()
            yield Lab(pair, left, right, work / "credentials", lab_results)
        finally:
            right.stop()
            left.stop()


@pytest.fixture
def keep_logs(request: pytest.FixtureRequest, lab: Lab) -> Iterator[None]:
    failed = yield from common.case_logs(
        request, lab.results, "pair-interop-logs",
        [(lab.left.log_path, "left.log"), (lab.right.log_path, "right.log")],
        [(lab.left.config_path, "left.yaml"), (lab.right.config_path, "right.yaml")])
    if failed:  # leave nothing up for the next case
        for daemon in lab.both:
            if daemon.running:
                daemon.reload(lab.empty(daemon is lab.right))


def lo_addresses(lab: Lab) -> str:
    return lab.pair.right.run("ip", "-o", "addr", "show", "dev", "lo")


def wait_lo(lab: Lab, vip: str, present: bool, timeout: float = 30) -> None:
    """The client's virtual IP on (or off) its loopback device: the daemon's job queue."""
    deadline = time.monotonic() + timeout
    while (f" {vip}/32 " in lo_addresses(lab)) is not present:
        assert time.monotonic() < deadline, (vip, present, lo_addresses(lab))
        time.sleep(0.5)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_pair_interop(lab: Lab, case: Case, keep_logs: None) -> None:
    name = f"p{next(lab.names)}"
    pair, (left, right) = lab.pair, lab.both
    marks = left.mark(), right.mark()
    # the responder first: the initiator negotiates as soon as it has the connection
    confs = [(left, common.xfrmctl_conf(pair, case, name, lab.credentials)),
             (right, common.xfrmctl_conf(pair, case, name, lab.credentials, right=True))]
    for daemon, conf in confs if not case.we_initiate else reversed(confs):
        daemon.reload(conf)

    up = left.wait_event("IkeSaUp", 120, marks[0], connection=name)
    peer_up = right.wait_event("IkeSaUp", 120, marks[1], connection=name)
    assert up["initiator"] is case.we_initiate and peer_up["initiator"] is not case.we_initiate
    assert (up["spi_i"], up["spi_r"]) == (peer_up["spi_i"], peer_up["spi_r"])
    event = wait_installed(left, marks[0], connection=name)
    installed = time.monotonic()  # the rekey timers run from about here
    peer_event = wait_installed(right, marks[1], connection=name)
    assert_mirrored(event, peer_event)
    assert event["mode"] == case.mode and event["encap"] is case.encap
    if not case.encap:
        assert (up["nat_local"], up["nat_remote"]) == (False, False), up
    if case.narrow:  # we proposed the /24s, the peer narrowed to its /32s
        assert event["local_ts"] == [f"{pair.left.inner}/32"]
        assert event["remote_ts"] == [f"{pair.right.inner}/32"]
    vip = None
    if case.vip:
        vip = peer_up["virtual_ip"]
        assert vip and common.ip_in(vip, common.POOL), peer_up
        assert up["virtual_ip"] == vip
        left.wait_event("VirtualIpAssigned", 30, marks[0], address=vip, to_peer=True)
        right.wait_event("VirtualIpAssigned", 30, marks[1], address=vip, to_peer=False)
        assert event["remote_ts"] == [f"{vip}/32"]
        wait_lo(lab, vip, present=True)
    common.check_traffic(pair, case, event, vip)

    if case.peer_rekeys_child or case.we_rekey:  # by a timer: we rekey our IKE_SA next
        timer = common.IKE_REKEY if case.we_rekey else common.CHILD_REKEY
        event = common.rekey_child_while_pinging(
            pair, case, left, event, vip, marks[0], by_peer=case.peer_rekeys_child,
            seconds=common.until(installed, timer))
        peer_event = wait_installed(right, marks[1], rekey_of=int(peer_event["spi_in"]))
        assert_mirrored(event, peer_event)
    if case.peer_rekeys_ike:
        common.rekey_ike_while_pinging(pair, case, left, event, vip,
                                       seconds=common.until(installed, common.IKE_REKEY))
    if case.peer_rekeys_ike or case.we_rekey:  # both ends moved to the same new IKE_SA
        ours, theirs = (daemon.wait_event("IkeSaRekeyed", 30, mark)
                        for daemon, mark in zip(lab.both, marks, strict=True))
        assert (ours["new_spi_i"], ours["new_spi_r"]) == (theirs["new_spi_i"],
                                                         theirs["new_spi_r"])

    deleter, other = (left, right) if case.delete_by_us else (right, left)
    down_mark = other.mark()
    deleter.reload(lab.empty(deleter is right))
    other.wait_event("IkeSaDown", 60, down_mark, connection=name)
    for daemon, mark, kid in zip(lab.both, marks, (event, peer_event), strict=True):
        common.wait_child_deleted(daemon, mark, kid)
    common.wait_clean(pair)
    if vip:
        wait_lo(lab, vip, present=False)
    for daemon, mark in zip(lab.both, marks, strict=True):
        assert not daemon.errors(mark), daemon.tail()
