"""What a child lets through and how, against strongSwan 5.9.8 on a real kernel: TCP MSS
clamping (`mss: auto`) and access control by selectors (a web-only child).

    host ns  198.51.100.10 --vh-- left: xfrmctl daemon ==ESP== right: charon 203.0.113.1
                                       (198.51.100.0/24)                (TCP servers)

The module shares one pair, charon and daemon (the `lab` fixture of swan_lab.py) and a
host behind the left gateway, so forwarded traffic crosses the tunnel as a LAN's would;
each case loads its connection, checks, and unloads it.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.lab.conftest import Gateway, run
from tests.lab.interop_common import (
    LEFT_ID,
    PSK,
    RIGHT_ID,
    ping_done,
    ping_from,
    wait_clean,
)
from tests.lab.swan_lab import Lab, keep_logs, lab
from tests.support.strongswan import SwanConn, SwanSecret
from tests.support.xfrmctl_daemon import (
    PYTHON,
    child,
    connection,
    daemon_conf,
    wait_installed,
    wait_until,
    xfrm_states,
)

__all__ = ["keep_logs", "lab"]  # fixtures, imported for pytest

HOST, HOST_NS_DEV, LEFT_DEV = "198.51.100.10", "vh0", "vh"
PPK_ID, PPK = "pq-lab", "test-only postquantum preshared key for the lab 0123456789"
ESP = "aes128gcm16-x25519"
BULK = 400_000  # octets the host sends through the tunnel

SERVER = r'''
import socket, sys, threading
def serve(sock):
    while True:
        conn, _ = sock.accept()
        with conn:
            got = 0
            while data := conn.recv(65536):
                got += len(data)
            conn.sendall(str(got).encode())
socks = []
for port in map(int, sys.argv[2:]):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((sys.argv[1], port)); s.listen(8); socks.append(s)
    threading.Thread(target=serve, args=(s,), daemon=True).start()
print("ready", flush=True)
sys.stdin.read()
'''

CLIENT = r'''
import socket, sys
dst, port, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
src, timeout = (sys.argv[4] or None), float(sys.argv[5])
try:
    s = socket.create_connection((dst, port), timeout=timeout,
                                 source_address=(src, 0) if src else None)
    s.sendall(b"x" * size); s.shutdown(socket.SHUT_WR)
    print("got", s.recv(100).decode())
except OSError as exc:
    print("error", exc.errno, exc.strerror)
'''


@dataclass
class Net:
    lab: Lab
    host_ns: str
    scripts: Path

    @property
    def left(self) -> Gateway:
        return self.lab.pair.left

    @property
    def right(self) -> Gateway:
        return self.lab.pair.right


@pytest.fixture(scope="module")
def net(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    """A host behind the left gateway, and TCP servers on the right one (443 and 8080)."""
    scripts = tmp_path_factory.mktemp("scripts")
    (scripts / "server.py").write_text(SERVER)
    (scripts / "client.py").write_text(CLIENT)
    left, right = lab.pair.left, lab.pair.right
    host_ns = f"{left.netns}h"
    run("ip", "netns", "add", host_ns)
    server = None
    try:
        run("ip", "link", "add", LEFT_DEV, "netns", left.netns, "type", "veth", "peer", "name",
            HOST_NS_DEV, "netns", host_ns)
        for args in (["link", "set", "lo", "up"], ["addr", "add", f"{HOST}/24", "dev",
                     HOST_NS_DEV], ["link", "set", HOST_NS_DEV, "up"],
                     ["route", "add", "default", "via", left.inner]):
            run("ip", "-n", host_ns, *args)
        run("ip", "-n", left.netns, "link", "set", LEFT_DEV, "up")
        run("ip", "-n", left.netns, "route", "add", f"{HOST}/32", "dev", LEFT_DEV)
        server = subprocess.Popen(
            ["ip", "netns", "exec", right.netns, str(PYTHON), str(scripts / "server.py"),
             right.inner, "443", "8080"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True)
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        yield Net(lab, host_ns, scripts)
    finally:
        if server is not None:
            server.kill()
            server.wait()
        run("ip", "netns", "del", host_ns, check=False)


def tcp(net: Net, netns: str, port: int, size: int = 1000, src: str | None = None,
        timeout: float = 30) -> str:
    """Connect from `netns` to the right gateway's server on `port`, send `size` octets:
    "got N" (what the server received) or "error ERRNO TEXT"."""
    argv = ["ip", "netns", "exec", netns, str(PYTHON), str(net.scripts / "client.py"),
            net.right.inner, str(port), str(size), src or "", str(timeout)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=180,
                          check=True).stdout.strip()


class Capture:
    """tcpdump on one link of a namespace (`-v` text read back afterwards)."""

    def __init__(self, work: Path, netns: str, dev: str, expr: str,
                 direction: str | None = None) -> None:
        self.path = work / f"{netns}-{dev}-{time.monotonic_ns()}.pcap"
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, "tcpdump", "-i", dev, "-n", "-B", "32768",
             "--immediate-mode", "-U", "-w", str(self.path),
             *(["-Q", direction] if direction else []), expr],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline()
        assert "listening" in line, line

    def stop(self) -> list[str]:
        """Stop; the packets, one `tcpdump -v` entry each (fails if tcpdump lost some)."""
        time.sleep(0.5)
        self.proc.send_signal(signal.SIGINT)
        _, err = self.proc.communicate(timeout=60)
        match = re.search(r"(\d+) packets? dropped by kernel", err)
        assert match and match[1] == "0", err
        out = subprocess.run(["tcpdump", "-n", "-v", "-r", str(self.path)],
                             capture_output=True, text=True, timeout=120, check=True).stdout
        return re.split(r"\n(?=\d\d:\d\d:)", out.strip()) if out.strip() else []


def snmp(netns: str) -> dict[str, int]:
    """/proc/net/snmp of a namespace as "Proto.Field" -> value."""
    text = run("cat", "/proc/net/snmp", netns=netns)
    lines = text.splitlines()
    out: dict[str, int] = {}
    for names, values in zip(lines[::2], lines[1::2], strict=True):
        proto = names.split(":")[0]
        for key, value in zip(names.split()[1:], values.split()[1:], strict=True):
            out[f"{proto}.{key}"] = int(value)
    return out


def _load(net: Net, name: str, ours: dict[str, Any], swan_remote_ts: list[str],
          swan_local_ts: list[str], we_initiate: bool = True,
          swan_extra: dict[str, Any] | None = None, swan_ppk: str | None = None,
          **conn_extra: Any) -> None:
    left, right = net.left, net.right
    secrets = [SwanSecret(PSK, ids=[LEFT_ID, RIGHT_ID])]
    if swan_ppk is not None:
        secrets.append(SwanSecret(swan_ppk, ids=[PPK_ID], kind="ppk"))
    net.lab.charon.load([SwanConn(
        "gw", child_name="net", local_addrs=[right.outer], remote_addrs=[left.outer],
        local_id=RIGHT_ID, remote_id=LEFT_ID, local_ts=swan_local_ts, remote_ts=swan_remote_ts,
        esp_proposals=[ESP], extra=swan_extra or {})], secrets)
    conn = connection(left.outer, right.outer, {"net": ours}, psk=PSK, local_id=LEFT_ID,
                      remote_id=RIGHT_ID, start_action="start" if we_initiate else "none",
                      **conn_extra)
    net.lab.daemon.reload(daemon_conf([left.outer], {name: conn}))


def _unload(net: Net, name: str, mark: int) -> None:
    daemon, charon = net.lab.daemon, net.lab.charon
    before = daemon.mark()
    daemon.reload(daemon_conf([net.left.outer], {}))
    daemon.wait_event("IkeSaDown", 60, before, connection=name)
    wait_clean(net.lab.pair, lambda: not charon.list_sas())
    wait_until(lambda: "maxseg" not in _ruleset(net), 30, lambda: _ruleset(net))
    assert not daemon.errors(mark), daemon.tail()


def _ruleset(net: Net) -> str:
    return run("nft", "list", "ruleset", netns=net.left.netns, check=False)


# --------------------------------------------------------------------------- MSS


def test_mss_auto_clamps_syns_and_esp_is_never_fragmented(net: Net, keep_logs: None) -> None:
    """AES-GCM-16 on a 1500-octet path without NAT: an inner packet of 1446 fills an ESP
    packet of exactly 1500 (20 + 8 + 8 + 1446 + 2 + 16), so SYNs both ways through the
    gateway carry MSS 1406; the host's bulk transfer then leaves as ESP packets of at
    most (and at best exactly) 1500 octets, with no fragment and no ICMP too-big."""
    lab, name = net.lab, f"m{next(net.lab.names)}"
    mark = lab.daemon.mark()
    _load(net, name, child([net.left.subnet], [net.right.subnet], esp_proposals=ESP,
                           mss="auto"), [net.left.subnet], [net.right.subnet])
    wait_installed(lab.daemon, mark, connection=name)
    rules = _ruleset(net)
    assert rules.count("tcp option maxseg size set 1406") == 3, rules
    work = net.scripts
    syn = Capture(work, net.right.netns, net.right.veth, f"host {HOST} and tcp[13] & 2 != 0",
                  "in")
    synack = Capture(work, net.host_ns, HOST_NS_DEV, f"host {HOST} and tcp[13] & 2 != 0", "in")
    esp = Capture(work, net.left.netns, net.left.veth, "esp or icmp or ip[6:2] & 0x3fff != 0",
                  "out")
    before = snmp(net.left.netns)
    assert tcp(net, net.host_ns, 443, BULK) == f"got {BULK}"
    after = snmp(net.left.netns)
    syns, synacks, packets = syn.stop(), synack.stop(), esp.stop()
    # the decrypted SYN as it reached the right gateway, and the SYN-ACK at the host
    # (a retransmitted SYN, if any, carries the same)
    assert syns and {tuple(re.findall(r"mss (\d+)", p)) for p in syns} == {("1406",)}, syns
    assert synacks and {tuple(re.findall(r"mss (\d+)", p)) for p in synacks} == {
        ("1406",)}, synacks
    lengths = [int(m[1]) for p in packets if (m := re.search(r"proto ESP \(50\), length (\d+)", p))]
    assert len(lengths) >= BULK // 1406, packets[:5]
    assert max(lengths) == 1500, sorted(set(lengths))
    assert not [p for p in packets if "ICMP" in p or "flags [+]" in p or "offset 0," not in p]
    assert after["Ip.FragCreates"] == before["Ip.FragCreates"]
    assert after["Icmp.OutDestUnreachs"] == before["Icmp.OutDestUnreachs"]
    _unload(net, name, mark)


# --------------------------------------------------------------------------- selectors


@pytest.mark.parametrize("who_narrows", ["peer", "we"])
def test_web_only_child_passes_443_and_nothing_else_leaves_in_clear(
        net: Net, who_narrows: str, keep_logs: None) -> None:
    """A child for 203.0.113.0/24[tcp/443] only. `peer`: we propose the whole subnet and
    charon, configured for 443, narrows; `we`: charon initiates with the whole subnet and
    we narrow. Either way 443 goes through ESP, and a connection to 8080 is refused at
    the gateway (our block policy below the child's) instead of leaving in clear."""
    lab, name = net.lab, f"s{next(net.lab.names)}"
    web = f"{net.right.subnet}[tcp/443]"
    mark = lab.daemon.mark()
    if who_narrows == "peer":
        _load(net, name, child([net.left.subnet], [net.right.subnet], esp_proposals=ESP),
              [net.left.subnet], [web])
    else:
        _load(net, name, child([net.left.subnet], [web], esp_proposals=ESP),
              [net.left.subnet], [net.right.subnet], we_initiate=False)
        lab.charon.initiate("net", "gw", timeout=90)
    event = wait_installed(lab.daemon, mark, connection=name)
    assert event["remote_ts"] == [web], event
    (swan,) = [c for sa in lab.charon.list_sas() for c in sa.children.values()]
    # charon names the port by its service
    assert re.fullmatch(r"203\.0\.113\.0/24\[tcp/(443|https)\]", swan["local-ts"][0]), swan
    spi_out = int(event["spi_out"])
    clear = Capture(net.scripts, net.left.netns, net.left.veth,
                    "tcp port 8080 or tcp port 443", "out")
    sent = {s.spi: s.packets for s in xfrm_states(net.left.netns)}.get(spi_out, 0)
    for netns, src in ((net.left.netns, net.left.inner), (net.host_ns, None)):
        assert tcp(net, netns, 443, 2000, src) == "got 2000"
        refused = tcp(net, netns, 8080, 2000, src, timeout=5)
        assert refused.startswith("error"), refused
    leaked = clear.stop()
    assert leaked == [], leaked  # neither 443 (in ESP) nor 8080 (blocked) in clear
    assert {s.spi: s.packets for s in xfrm_states(net.left.netns)}[spi_out] > sent
    policies = run("ip", "xfrm", "policy", netns=net.left.netns)
    assert "action block" in policies, policies
    _unload(net, name, mark)
    assert "action block" not in run("ip", "xfrm", "policy", netns=net.left.netns)



# --------------------------------------------------------------------------- PPK


@pytest.mark.parametrize("case", ["we-initiate", "peer-initiates", "peer-lacks-ppk"])
def test_postquantum_preshared_key(net: Net, case: str, keep_logs: None) -> None:
    """RFC 8784 against charon: with the PPK on both ends and required by both, the IKE SA
    comes up either way with the PPK in its keys, and the CHILD_SA (KEYMAT from the new
    SK_d) carries pings; with our PPK optional and none at charon, NO_PPK_AUTH lets it up
    without one."""
    lab, name = net.lab, f"p{next(net.lab.names)}"
    mark = lab.daemon.mark()
    both = case != "peer-lacks-ppk"
    ours = child([net.left.subnet], [net.right.subnet], esp_proposals=ESP)
    _load(net, name, ours, [net.left.subnet], [net.right.subnet],
          we_initiate=case != "peer-initiates",
          swan_extra={"ppk_id": PPK_ID, "ppk_required": "yes"} if both else {},
          swan_ppk=PPK if both else None, ppk_id=PPK_ID, ppk=PPK, ppk_required=both)
    if case == "peer-initiates":
        lab.charon.initiate("net", "gw", timeout=90)
    up = lab.daemon.wait_event("IkeSaUp", 120, mark, connection=name)
    assert up["ppk"] is both, up
    wait_installed(lab.daemon, mark, connection=name)
    ping_done(ping_from(net.left, net.left.inner, net.right.inner, 3))
    _unload(net, name, mark)
