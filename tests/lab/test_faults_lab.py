"""Faults on a real kernel, against strongSwan 5.9.8: the daemon killed with SIGKILL while
traffic flows (the kernel keeps forwarding, nothing leaves in clear, the restarted daemon
takes its SAs back), and a kernel install refused with EEXIST (a conflicting policy that
is not ours) is retried with back-off until it goes in.

    left: xfrmctl daemon --state-dir          right: charon (responder), tcpdump on its veth
"""

from __future__ import annotations

import contextlib
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

from tests.lab.conftest import Gateway, GatewayPair, make_pair, remove_pair
from tests.lab.interop_common import LEFT_ID, PSK, RIGHT_ID, case_logs, ping_done, ping_from
from tests.support.strongswan import Charon, CharonError, SwanConn, SwanSecret
from tests.support.xfrmctl_daemon import (
    XfrmctlDaemon,
    child,
    connection,
    daemon_conf,
    wait_installed,
    wait_until,
    xfrm_policies,
    xfrm_states,
)


class StatefulDaemon(XfrmctlDaemon):
    def argv(self) -> list[str]:
        return [*super().argv(), "--state-dir", str(self.workdir / "state")]

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, the state file is whatever was last saved."""
        proc, self.proc = self.proc, None
        assert proc is not None and proc.poll() is None
        proc.kill()
        proc.wait(30)


@dataclass
class Lab:
    pair: GatewayPair
    charon: Charon
    daemon: StatefulDaemon
    results: Path
    work: Path
    names: Iterator[int] = field(default_factory=lambda: itertools.count(1))


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, lab_results: Path) -> Iterator[Lab]:
    work = tmp_path_factory.mktemp("faults")
    pair = make_pair("xf")
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
            yield Lab(pair, charon, daemon, lab_results, work)
        finally:
            charon.stop()
            daemon.stop()
    finally:
        remove_pair(pair)


@pytest.fixture
def keep_logs(request: pytest.FixtureRequest, lab: Lab) -> Iterator[None]:
    yield from _reset_after(lab, case_logs(request, lab.results, "faults-logs",
                         [(lab.daemon.log_path, "xfrmctl.log"),
                          (lab.charon.log_path, "charon.log")],
                         [(lab.daemon.config_path, "xfrmctl.yaml")]))


def _reset_after(lab: Lab, inner: Iterator[None]) -> Iterator[None]:
    """Whatever a case left behind (it failed before its own unload check) is cleared, so
    the next case starts from an empty kernel: one failure does not become two."""
    try:
        yield from inner
    finally:
        if not lab.daemon.running:
            lab.daemon.start()
        lab.daemon.reload(daemon_conf([lab.pair.left.outer], {}))
        for sa in lab.charon.list_sas():
            with contextlib.suppress(CharonError):  # the daemon's delete may come first
                lab.charon.terminate(ike_id=sa.uniqueid)
        lab.pair.left.run("ip", "xfrm", "policy", "flush")
        lab.pair.left.run("ip", "xfrm", "state", "flush")


def _conf(lab: Lab, name: str) -> dict[str, Any]:
    pair = lab.pair
    kid = child([pair.left.subnet], [pair.right.subnet], esp_proposals="aes128gcm16-x25519")
    conn = connection(pair.left.outer, pair.right.outer, {"net": kid}, psk=PSK,
                      local_id=LEFT_ID, remote_id=RIGHT_ID, start_action="start")
    return daemon_conf([pair.left.outer], {name: conn})


def _received(out: str) -> tuple[int, int]:
    match = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    assert match, out
    return int(match[1]), int(match[2])


def _unload(lab: Lab, name: str) -> None:
    before = lab.daemon.mark()
    lab.daemon.reload(daemon_conf([lab.pair.left.outer], {}))
    if lab.charon.list_sas():
        lab.daemon.wait_event("IkeSaDown", 60, before, connection=name)
    wait_until(lambda: not xfrm_states(lab.pair.left.netns) and not lab.charon.list_sas(), 60,
               lambda: f"left over: {xfrm_states(lab.pair.left.netns)}")


class Capture:
    """tcpdump of what leaves a gateway by its outer link: ICMP (in clear) and ESP. Only
    outgoing packets: inbound ESP shows up on the link a second time, decrypted, as the
    kernel hands the inner packet back to the device it arrived on."""

    def __init__(self, lab: Lab, gw: Gateway) -> None:
        self.path = lab.work / f"{gw.netns}-out-{time.monotonic_ns()}.pcap"
        self.netns = gw.netns
        # -B: a 32 MiB buffer, so a capture process starved of CPU (TCG) drops nothing;
        # --immediate-mode: each packet is handed over as it comes (the default waits for
        # a block of the ring to fill or time out, and a block still open at SIGINT is
        # lost without being counted as dropped)
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, "tcpdump", "-i", gw.veth, "-Q", "out", "-n",
             "-B", "32768", "--immediate-mode", "-U", "-w", str(self.path), "icmp or esp"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        assert self.proc.stderr is not None
        # tcpdump says "listening on ..." once the capture is armed
        line = self.proc.stderr.readline()
        assert "listening" in line, line

    def stop(self) -> int:
        """Stop the capture; the number of packets the kernel dropped before tcpdump read
        them (its own report), which the counts below must account for."""
        self.proc.send_signal(signal.SIGINT)
        _, err = self.proc.communicate(timeout=60)
        match = re.search(r"(\d+) packets? dropped by kernel", err)
        assert match, err
        return int(match[1])

    def count(self, expr: str) -> int:
        out = subprocess.run(["tcpdump", "-n", "-r", str(self.path), expr],
                             capture_output=True, text=True, timeout=120, check=True).stdout
        return len(out.splitlines())


def test_sigkill_while_traffic_flows_then_restart(lab: Lab, keep_logs: None) -> None:
    name, daemon, pair = f"k{next(lab.names)}", lab.daemon, lab.pair
    mark = daemon.mark()
    daemon.reload(_conf(lab, name))
    event = wait_installed(daemon, mark, connection=name)
    spis = {int(event["spi_in"]), int(event["spi_out"])}
    (swan_sa,) = lab.charon.list_sas()
    time.sleep(3)  # the state writer saves within a second of a change
    left, right = pair.left, pair.right
    captures = [Capture(lab, left), Capture(lab, right)]  # requests, replies
    flowing = ping_from(left, left.inner, right.inner, 4000, 0.1)
    try:
        time.sleep(2)
        daemon.kill()
        # no daemon: the kernel alone forwards, by the same SAs
        time.sleep(4)
        assert sorted(s.spi for s in xfrm_states(left.netns)) == sorted(spis)
        assert "tmpl" in xfrm_policies(left.netns)
        daemon.start()
        daemon.wait_line(lambda e: str(e.get("message", "")).startswith(
            "restored 1 IKE SAs, 1 CHILD_SAs; removed 0 orphan SAs"), 60, "restored")
        assert not daemon.events("IkeSaUp")  # taken back, not negotiated again
        states = xfrm_states(left.netns)
        assert sorted(s.spi for s in states) == sorted(spis)  # no duplicate, no new SPI
        # control regained: charon rekeys through the restored IKE SA, and the rekeyed
        # CHILD_SA replaces the old one in the kernel
        lab.charon.rekey(child="net")
        new = wait_installed(daemon, 0, 90, rekey_of=int(event["spi_in"]))
        wait_until(lambda: not spis & {s.spi for s in xfrm_states(left.netns)}, 30,
                   lambda: f"old SAs still there: {xfrm_states(left.netns)}")
        now = [s.spi for s in xfrm_states(left.netns)]
        assert sorted(now) == sorted({int(new["spi_in"]), int(new["spi_out"])}), now
        (after,) = lab.charon.list_sas()
        assert after.uniqueid == swan_sa.uniqueid
        time.sleep(2)
    finally:
        flowing.send_signal(signal.SIGINT)
        out = flowing.communicate(timeout=60)[0]
        time.sleep(1)  # the last reply's ESP has passed both captures
        dropped = [capture.stop() for capture in captures]
    sent, got = _received(out)
    assert sent > 100 and got >= sent - 1, (sent, got)  # at most the one in flight
    # a capture that lost packets proves nothing about what left in clear
    assert dropped == [0, 0], f"tcpdump dropped {dropped} packets: the check is void"
    inner = f"net {left.subnet} and net {right.subnet}"
    for capture in captures:
        assert capture.count(f"icmp and {inner}") == 0  # nothing protected left in clear
        assert capture.count("esp") >= got  # the capture did see the tunnelled pings
    assert not daemon.errors(), daemon.tail()  # the log of the restarted daemon
    ping_done(ping_from(left, left.inner, right.inner, 5, 0.2))


def test_conflicting_policy_install_is_retried_until_it_goes_in(lab: Lab,
                                                                keep_logs: None) -> None:
    """A policy that is not ours holds the CHILD_SA's selector (EEXIST): the install is
    rolled back, the child is down with the reason, and it is negotiated again with a
    doubling back-off; once the operator removes the conflict, the next try goes in and
    the kernel holds exactly the CHILD_SA's SAs and policies (the foreign one untouched
    meanwhile)."""
    name, daemon, pair = f"e{next(lab.names)}", lab.daemon, lab.pair
    left, right = pair.left, pair.right
    conflict = ["xfrm", "policy", "add", "src", left.subnet, "dst", right.subnet, "dir", "out",
                "priority", "5"]
    left.run("ip", *conflict)
    mark = daemon.mark()
    daemon.reload(_conf(lab, name))
    first = daemon.wait_event("ChildInstallFailed", 90, mark, connection=name)
    assert "EEXIST" in str(first["reason"]) and first["attempt"] == 1, first
    second = daemon.wait_event("ChildInstallFailed", 90, mark, connection=name, attempt=2)
    assert float(second["retry_in"]) == 2 * float(first["retry_in"])  # back-off doubles
    assert not xfrm_states(left.netns)  # rolled back: nothing half-installed
    assert "tmpl" not in xfrm_policies(left.netns)
    assert f"src {left.subnet} dst {right.subnet}" in xfrm_policies(left.netns)  # not ours
    after = daemon.mark()
    left.run("ip", "xfrm", "policy", "delete", "src", left.subnet, "dst", right.subnet,
             "dir", "out")
    # the next try (one may still fail if it raced the delete) goes in
    wait_until(lambda: len(xfrm_states(left.netns)) == 2, 120,
               lambda: f"SAs: {xfrm_states(left.netns)}\n{daemon.tail()}")
    event = daemon.events("ChildSaNegotiated", connection=name)[-1]
    assert sorted(s.spi for s in xfrm_states(left.netns)) == \
        sorted({int(event["spi_in"]), int(event["spi_out"])})
    assert daemon.lines().index(event) >= after
    policies = xfrm_policies(left.netns)
    assert policies.count("tmpl") == 3, policies  # out, in, fwd: ours, once each
    ping_done(ping_from(left, left.inner, right.inner, 5, 0.2))
    _unload(lab, name)


def _stop_at(daemon: StatefulDaemon, line: str, before: str, timeout: float = 600) -> bool:
    """SIGSTOP the daemon as soon as its log has `line`; True if `before` was not logged
    yet then (the process was caught between the two). The log is read only when it
    grows: under TCG a busier loop would starve the daemon it waits for."""
    assert daemon.proc is not None
    deadline, seen, text = time.monotonic() + timeout, 0, b""
    while time.monotonic() < deadline:
        size = daemon.log_path.stat().st_size
        if size != seen:
            with open(daemon.log_path, "rb") as log:
                log.seek(seen)
                text += log.read()
            seen = size
            if line.encode() in text:
                daemon.proc.send_signal(signal.SIGSTOP)
                return before.encode() not in daemon.log_path.read_bytes()
        time.sleep(0.02)
    raise AssertionError(f"no {line!r} within {timeout} s:\n{daemon.tail()}")


def test_peer_rekey_answered_during_restore_keeps_its_sas(lab: Lab, keep_logs: None) -> None:
    """The restarted daemon answers IKE before its restore has taken stock of the kernel
    (issue 15): a CHILD_SA rekey by strongSwan that arrives in that window must keep its
    new SAs (they are not orphans of the previous process), the old ones go, and the
    pings through the tunnel lose at most the one in flight. The daemon is frozen
    (SIGSTOP) just after it binds its sockets and before it logs "restored", the peer's
    CREATE_CHILD_SA waits in its socket, and the daemon then goes on."""
    name, daemon, pair = f"r{next(lab.names)}", lab.daemon, lab.pair
    left, right = pair.left, pair.right
    mark = daemon.mark()
    daemon.reload(_conf(lab, name))
    event = wait_installed(daemon, mark, connection=name)
    old = {int(event["spi_in"]), int(event["spi_out"])}
    time.sleep(3)  # the state writer saves within a second of a change
    flowing = ping_from(left, left.inner, right.inner, 4000, 0.1)
    try:
        for attempt in range(3):  # under TCG the window is wide, but it is a race
            daemon.kill()
            daemon.start(wait=False)
            if _stop_at(daemon, '"listening on', '"restored '):
                print(f"caught between binding and restoring on attempt {attempt + 1}")
                break
            daemon.signal(signal.SIGCONT)
            daemon.wait_line(lambda e: str(e.get("message", "")).startswith("restored"), 60,
                             "restored")
            time.sleep(3)  # saved again before the next kill
        else:
            pytest.fail("never caught the daemon between binding and restoring")
        sent_before = _rekeys_sent(lab)
        lab.charon.rekey(child="net")
        wait_until(lambda: _rekeys_sent(lab) > sent_before, 30, "charon never sent its rekey")
        time.sleep(1)  # the request is in the frozen daemon's socket
        daemon.signal(signal.SIGCONT)
        restored = daemon.wait_line(lambda e: str(e.get("message", "")).startswith(
            "restored"), 90, "restored")
        assert "removed 0 orphan SAs" in str(restored["message"]), restored
        new = wait_installed(daemon, 0, 90, rekey_of=int(event["spi_in"]))
        fresh = {int(new["spi_in"]), int(new["spi_out"])}
        wait_until(lambda: {s.spi for s in xfrm_states(left.netns)} == fresh, 30,
                   lambda: f"expected only {fresh}: {xfrm_states(left.netns)}")
        assert not old & fresh
        time.sleep(2)
    finally:
        flowing.send_signal(signal.SIGINT)
    sent, got = _received(flowing.communicate(timeout=60)[0])
    assert sent > 50 and got >= sent - 1, (sent, got)
    assert not daemon.errors(), daemon.tail()
    ping_done(ping_from(left, left.inner, right.inner, 5, 0.2))


def _rekeys_sent(lab: Lab) -> int:
    """How many CREATE_CHILD_SA requests charon has logged generating."""
    return lab.charon.log_path.read_text(errors="replace").count(
        "generating CREATE_CHILD_SA request")
