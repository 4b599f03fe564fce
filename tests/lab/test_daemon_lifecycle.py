"""The daemon's lifecycle against strongSwan 5.9.8 on a real kernel: trap policies bring a
tunnel up on the first packet, a hard expire cleans up, and a restart with a state
directory keeps the tunnel up (traffic flows through the kernel meanwhile) and takes the
IKE SA back, keys and all, so the peer can rekey it afterwards.

    left: xfrmctl daemon --state-dir (no routes added by the test: the daemon's own)
    right: charon, responder (its own routes in table 220)
"""

from __future__ import annotations

import itertools
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.lab.conftest import GatewayPair, make_pair, remove_pair
from tests.lab.interop_common import (
    LEFT_ID,
    PSK,
    RIGHT_ID,
    case_logs,
    ping_done,
    ping_from,
    wait_clean,
)
from tests.support.strongswan import Charon, SwanConn, SwanSecret
from tests.support.xfrmctl_daemon import (
    XfrmctlDaemon,
    child,
    connection,
    daemon_conf,
    wait_installed,
    xfrm_policies,
    xfrm_states,
)


class StatefulDaemon(XfrmctlDaemon):
    """`xfrmctl daemon --state-dir`: SIGTERM leaves the tunnels to the kernel."""

    def argv(self) -> list[str]:
        return [*super().argv(), "--state-dir", str(self.workdir / "state")]


@dataclass
class Lab:
    pair: GatewayPair
    charon: Charon
    daemon: StatefulDaemon
    results: Path
    names: Iterator[int] = field(default_factory=lambda: itertools.count(1))


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, lab_results: Path) -> Iterator[Lab]:
    work = tmp_path_factory.mktemp("lifecycle")
    pair = make_pair("xc")
    try:
        daemon = StatefulDaemon(pair.left.netns, work / "daemon",
                                daemon_conf([pair.left.outer], {}))
        charon = Charon(pair.right.netns, work / "charon")
        daemon.start(wait=False)
        try:
            charon.start()
            charon.load([SwanConn(
                "gw", child_name="net", local_addrs=[pair.right.outer],
                remote_addrs=[pair.left.outer], local_id=RIGHT_ID, remote_id=LEFT_ID,
                local_ts=[pair.right.subnet], remote_ts=[pair.left.subnet])],
                [SwanSecret(PSK, ids=[LEFT_ID, RIGHT_ID])])
            daemon.wait_ready()
            yield Lab(pair, charon, daemon, lab_results)
        finally:
            charon.stop()
            daemon.stop()
    finally:
        remove_pair(pair)


@pytest.fixture
def keep_logs(request: pytest.FixtureRequest, lab: Lab) -> Iterator[None]:
    yield from case_logs(request, lab.results, "lifecycle-logs",
                         [(lab.daemon.log_path, "xfrmctl.log"),
                          (lab.charon.log_path, "charon.log")],
                         [(lab.daemon.config_path, "xfrmctl.yaml")])


def _load(lab: Lab, name: str, start: str, **child_options: Any) -> None:
    pair = lab.pair
    # with PFS, as charon's proposal asks for when it rekeys
    kid = child([pair.left.subnet], [pair.right.subnet], esp_proposals="aes128gcm16-x25519",
                **child_options)
    conn = connection(pair.left.outer, pair.right.outer, {"net": kid}, psk=PSK,
                      local_id=LEFT_ID, remote_id=RIGHT_ID, start_action=start)
    lab.daemon.reload(daemon_conf([pair.left.outer], {name: conn}))


def _ping(lab: Lab, count: int, interval: float = 0.2) -> subprocess.Popen[str]:
    left, right = lab.pair.left, lab.pair.right
    return ping_from(left, left.inner, right.inner, count, interval)


def _received(out: str) -> tuple[int, int]:
    match = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    assert match, out
    return int(match[1]), int(match[2])


def _unload(lab: Lab, name: str, mark: int) -> None:
    before = lab.daemon.mark()
    lab.daemon.reload(daemon_conf([lab.pair.left.outer], {}))
    if lab.charon.list_sas():
        lab.daemon.wait_event("IkeSaDown", 60, before, connection=name)
    wait_clean(lab.pair, lambda: not lab.charon.list_sas())
    assert not lab.daemon.errors(mark), lab.daemon.tail()


def test_trap_brings_the_tunnel_up_on_the_first_packet(lab: Lab, keep_logs: None) -> None:
    name, daemon, pair = f"t{next(lab.names)}", lab.daemon, lab.pair
    mark = daemon.mark()
    _load(lab, name, "trap")
    deadline = time.monotonic() + 30
    while "tmpl" not in xfrm_policies(pair.left.netns):  # the trap is in place
        assert time.monotonic() < deadline, daemon.tail()
        time.sleep(0.5)
    assert xfrm_states(pair.left.netns) == [] and not lab.charon.list_sas()
    # no route by hand: the daemon routes the trapped subnet, so the packet meets the policy
    routes = pair.left.run("ip", "route", "show", "table", "220")
    assert f"{pair.right.subnet} via {pair.right.outer}" in routes, routes
    # the first packets go while IKE negotiates (seconds under emulation); then all pass
    sent, got = _received(_ping(lab, 20, 0.5).communicate(timeout=120)[0])
    assert got >= 5, (sent, got)
    up = daemon.wait_event("IkeSaUp", 60, mark, connection=name)
    assert up["initiator"] is True
    wait_installed(daemon, mark, connection=name)
    ping_done(_ping(lab, 5))
    _unload(lab, name, mark)


def test_hard_expire_removes_the_child(lab: Lab, keep_logs: None) -> None:
    name, daemon = f"h{next(lab.names)}", lab.daemon
    mark = daemon.mark()
    _load(lab, name, "start", rekey_time=0, life_time=20)  # no rekey: it must just end
    event = wait_installed(daemon, mark, connection=name)
    ping_done(_ping(lab, 3))
    gone = daemon.wait_event("ChildSaDeleted", 60, mark, spi_in=int(event["spi_in"]))
    assert "expire" in str(gone.get("reason", "")), gone
    deadline = time.monotonic() + 30
    while {int(event["spi_in"]), int(event["spi_out"])} & {
            s.spi for s in xfrm_states(lab.pair.left.netns)}:
        assert time.monotonic() < deadline, xfrm_states(lab.pair.left.netns)
        time.sleep(0.5)
    lab.charon.wait_for(lambda sas: all(not sa.children for sa in sas), 30,
                        "charon's CHILD_SA deleted")
    _unload(lab, name, mark)


def test_restart_keeps_the_tunnel_and_the_ike_sa(lab: Lab, keep_logs: None) -> None:
    name, daemon, pair = f"r{next(lab.names)}", lab.daemon, lab.pair
    mark = daemon.mark()
    _load(lab, name, "start")
    event = wait_installed(daemon, mark, connection=name)
    spis = {int(event["spi_in"]), int(event["spi_out"])}
    (swan_sa,) = lab.charon.list_sas()
    flowing = _ping(lab, 2000, 0.2)  # through the whole restart
    try:
        assert daemon.stop() == 0, daemon.tail()
        assert spis <= {s.spi for s in xfrm_states(pair.left.netns)}  # left to the kernel
        daemon.start()
        daemon.wait_line(lambda e: str(e.get("message", "")).startswith("restored 1 IKE SAs, "
                                                                         "1 CHILD_SAs"),
                         60, "restored")
        assert not daemon.events("IkeSaUp")  # taken back, not negotiated again
        assert {s.spi for s in xfrm_states(pair.left.netns)} == spis
        # the restored IKE SA still has its keys: charon's CHILD_SA rekey goes through it
        lab.charon.rekey(child="net")
        new = wait_installed(daemon, 0, 90, rekey_of=int(event["spi_in"]))
        assert new["connection"] == name and new["initiator"] is False  # charon's rekey
        (after,) = lab.charon.list_sas()
        assert after.uniqueid == swan_sa.uniqueid  # the same IKE SA on charon's side
        time.sleep(2)
    finally:
        flowing.send_signal(signal.SIGINT)
    sent, got = _received(flowing.communicate(timeout=60)[0])
    assert sent > 50 and got >= sent - 1, (sent, got)  # at most the one in flight
    ping_done(_ping(lab, 5))
    _unload(lab, name, 0)
