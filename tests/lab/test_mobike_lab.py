"""MOBIKE (RFC 4555) against strongSwan 5.9.8, both roles: a client pinging through the
tunnel moves to an address on another interface (the old one removed); the same IKE_SA
and CHILD_SA (same SPIs) carry on at the new address, pings resume within seconds.
With `nat`, a masquerade NAT sits on the new path (NAT detection in the update, UDP
encapsulation from then on). Each case moves back at its end (a second move).

    ns C (client)                 ns R (router)                ns G (gateway)
    inner 198.51.100.1/24         ra 192.0.2.1/26              gx 192.0.2.130/26
    ca 192.0.2.2/26  <--------->  rb 192.0.2.65/26             inner 203.0.113.1/24
    cb 192.0.2.66/26 <--------->  rg 192.0.2.129/26 <--------> default via .129
                                  (nat: masquerade rb -> rg)

Two such topologies: in one strongSwan is the client and xfrmctl the gateway, in the
other the reverse; the daemons and charons live for the whole module.
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.lab.conftest import ip_batch, run
from tests.support.strongswan import SA, Charon, SwanConn, SwanSecret
from tests.support.xfrmctl_daemon import (
    XfrmctlDaemon,
    child,
    connection,
    daemon_conf,
    keep_logs,
    wait_installed,
    xfrm_states,
)

PSK = "lab-mobike-psk-not-secret"
C_ID, G_ID = "client.example.org", "gateway.example.org"
C_A, C_B, R_A, R_B, R_G, G_X = ("192.0.2.2", "192.0.2.66", "192.0.2.1", "192.0.2.65",
                                "192.0.2.129", "192.0.2.130")
C_NET, G_NET, C_HOST, G_HOST = "198.51.100.0/24", "203.0.113.0/24", "198.51.100.1", "203.0.113.1"
PING_INTERVAL = 0.2
PINGS = 80  # 16 s: the move happens after 4 s
MOVE_AT = 4.0
RESUME_WITHIN = 8.0  # seconds of pings lost at most around the move (under TCG)


@dataclass(frozen=True)
class Topology:
    client: str
    router: str
    gateway: str


def _make(prefix: str) -> Topology:
    t = Topology(f"{prefix}c", f"{prefix}r", f"{prefix}g")
    for ns in (t.client, t.router, t.gateway):
        run("ip", "netns", "add", ns)
    for a, b in (("ca", "ra"), ("cb", "rb")):
        run("ip", "link", "add", a, "netns", t.client, "type", "veth", "peer", "name", b,
            "netns", t.router)
    run("ip", "link", "add", "gx", "netns", t.gateway, "type", "veth", "peer", "name", "rg",
        "netns", t.router)
    ip_batch(t.client, f"link set lo up\nlink set ca up\nlink set cb up\n"
             f"addr add {C_A}/26 dev ca\nroute add default via {R_A} dev ca\n"
             f"link add inner type dummy\naddr add {C_HOST}/24 dev inner\nlink set inner up\n")
    ip_batch(t.router, f"link set lo up\naddr add {R_A}/26 dev ra\nlink set ra up\n"
             f"addr add {R_B}/26 dev rb\nlink set rb up\naddr add {R_G}/26 dev rg\n"
             "link set rg up\n")
    ip_batch(t.gateway, f"link set lo up\naddr add {G_X}/26 dev gx\nlink set gx up\n"
             f"route add default via {R_G}\nlink add inner type dummy\n"
             f"addr add {G_HOST}/24 dev inner\nlink set inner up\n")
    for ns in (t.client, t.router, t.gateway):
        run("sysctl", "-qw", "net.ipv4.ip_forward=1", netns=ns)
    _nft(t, "table ip mobike {\n chain post {\n  type nat hook postrouting priority srcnat;\n"
            " }\n}\n")
    return t


def _nft(t: Topology, script: str) -> None:
    subprocess.run(["ip", "netns", "exec", t.router, "nft", "-f", "-"], check=True, text=True,
                   input=script, capture_output=True)


def _remove(t: Topology) -> None:
    for ns in (t.client, t.router, t.gateway):
        for pid in run("ip", "netns", "pids", ns, check=False).split():
            subprocess.run(["kill", "-9", pid], check=False)
        run("ip", "netns", "del", ns, check=False)


def _move_to_b(t: Topology) -> None:
    """The client gets its address on cb, routes by it, and loses the one on ca."""
    ip_batch(t.client, f"addr add {C_B}/26 dev cb\nroute replace default via {R_B} dev cb\n"
             f"addr del {C_A}/26 dev ca\n")


def _move_to_a(t: Topology) -> None:
    ip_batch(t.client, f"addr add {C_A}/26 dev ca\nroute replace default via {R_A} dev ca\n"
             f"addr del {C_B}/26 dev cb\n")


def _nat_on_b(t: Topology, on: bool) -> None:
    rule = 'add rule ip mobike post iifname "rb" oifname "rg" masquerade\n'
    _nft(t, rule if on else "flush chain ip mobike post\n")


class Pinger:
    """ping from the client's inner address to the gateway's, in the background."""

    def __init__(self, t: Topology) -> None:
        self.output = ""
        self._thread = threading.Thread(target=self._run, args=(t,), daemon=True)

    def _run(self, t: Topology) -> None:
        self.output = run("ping", "-n", "-c", str(PINGS), "-i", str(PING_INTERVAL), "-W", "1",
                          "-I", C_HOST, G_HOST, netns=t.client, check=False)

    def __enter__(self) -> Pinger:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._thread.join(PINGS * PING_INTERVAL + 30)

    def answered(self) -> list[int]:
        return sorted(int(s) for s in re.findall(r"icmp_seq=(\d+)", self.output))


def _assert_resumed(pinger: Pinger) -> None:
    """Pings before the move answered, a gap of at most RESUME_WITHIN, then all again."""
    got = pinger.answered()
    assert got, pinger.output
    lost = sorted(set(range(1, PINGS + 1)) - set(got))
    last_lost = lost[-1] if lost else 0
    assert len(lost) * PING_INTERVAL <= RESUME_WITHIN, (lost, pinger.output)
    assert last_lost < PINGS - 10, (lost, pinger.output)  # the last 2 s all answered
    # the pings well before the move (ping starts a moment after the timer) all answered
    assert all(s in got for s in range(1, int(MOVE_AT / PING_INTERVAL) - 6)), pinger.output


def _ike(charon: Charon) -> SA:
    sas = charon.list_sas()
    assert len(sas) == 1, [s.raw for s in sas]
    return sas[0]


def _child_spis(sa: SA) -> set[int]:
    return {int(c["spi-in"], 16) for c in sa.children.values()} | \
        {int(c["spi-out"], 16) for c in sa.children.values()}


@dataclass
class Role:
    topo: Topology
    charon: Charon
    daemon: XfrmctlDaemon
    spis: set[int]  # the CHILD_SA's, from the daemon's ChildSaNegotiated


@dataclass
class Lab:
    swan_client: Role  # strongSwan is the client, xfrmctl the gateway
    xfrmctl_client: Role


def _swan(name: str, local: list[str], remote: list[str], local_id: str, remote_id: str,
          local_ts: str, remote_ts: str) -> SwanConn:
    return SwanConn(name, child_name="net", local_addrs=local, remote_addrs=remote,
                    local_id=local_id, remote_id=remote_id, local_ts=[local_ts],
                    remote_ts=[remote_ts], mobike=True, dpd_delay=10)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, lab_results: Path) -> Iterator[Lab]:
    work = tmp_path_factory.mktemp("mobike")
    base = f"m{os.getpid() % 10000}"
    t1, t2 = _make(base + "s"), _make(base + "x")
    daemons: list[XfrmctlDaemon] = []
    charons: list[Charon] = []
    try:
        gateway = XfrmctlDaemon(t1.gateway, work / "gateway", daemon_conf([G_X], {
            "rw": connection(G_X, None, {"net": child([G_NET], [C_NET])}, psk=PSK,
                             local_id=G_ID, remote_id=C_ID, dpd_delay=10)}))
        client_charon = Charon(t1.client, work / "client-charon")
        gateway_charon = Charon(t2.gateway, work / "gateway-charon")
        daemons.append(gateway)
        charons += [client_charon, gateway_charon]
        gateway.start(wait=False)
        client_charon.start(wait=False)
        gateway_charon.start(wait=False)
        for c in charons:
            c.wait_ready()
        gateway.wait_ready()
        client_charon.load([_swan("gw", [], [G_X], C_ID, G_ID, C_NET, G_NET)],
                           [SwanSecret(PSK, ids=[C_ID, G_ID])])
        gateway_charon.load([_swan("rw", [G_X], [], G_ID, C_ID, G_NET, C_NET)],
                            [SwanSecret(PSK, ids=[C_ID, G_ID])])
        # xfrmctl as the client: listens on whatever addresses the namespace has
        client = XfrmctlDaemon(t2.client, work / "client", daemon_conf([], {
            "gw": connection(C_A, G_X, {"net": child([C_NET], [G_NET])}, psk=PSK,
                             local_id=C_ID, remote_id=G_ID, start_action="start",
                             dpd_delay=10)}))
        daemons.append(client)
        client.start()
        mark = gateway.mark()
        client_charon.initiate("net", "gw", timeout=120)
        up1 = wait_installed(gateway, mark, connection="rw")
        up2 = wait_installed(client, 0, connection="gw")
        yield Lab(
            Role(t1, client_charon, gateway, {int(up1["spi_in"]), int(up1["spi_out"])}),
            Role(t2, gateway_charon, client, {int(up2["spi_in"]), int(up2["spi_out"])}))
    finally:  # all four at once (each stop waits for its deletes: minutes under TCG)
        stoppers = [threading.Thread(target=p.stop) for p in (*charons, *daemons)]
        for thread in stoppers:
            thread.start()
        for thread in stoppers:
            thread.join()
        keep_logs(lab_results, "test_mobike_lab", daemons)
        for c in charons:
            dest = lab_results / "charon-logs" / "test_mobike_lab"
            dest.mkdir(parents=True, exist_ok=True)
            if c.log_path.exists():
                (dest / f"{c.netns}.log").write_bytes(c.log_path.read_bytes())
        _remove(t1)
        _remove(t2)


def _moved_to(event: dict[str, Any], key: str) -> str:
    return str(event[key][0])


@pytest.mark.parametrize("nat", [False, True], ids=["direct", "nat"])
def test_strongswan_client_moves_and_the_gateway_follows(lab: Lab, nat: bool) -> None:
    role = lab.swan_client
    t, daemon, charon = role.topo, role.daemon, role.charon
    before = _ike(charon)
    new_remote = R_G if nat else C_B
    _nat_on_b(t, nat)
    try:
        mark = daemon.mark()
        with Pinger(t) as pinger:
            time.sleep(MOVE_AT)
            _move_to_b(t)
        _assert_resumed(pinger)
        moved = daemon.wait_event("IkeSaMoved", 30, mark, connection="rw")
        assert _moved_to(moved, "remote") == new_remote and moved["nat_remote"] is nat, moved
        assert not daemon.events("IkeSaUp")[1:], "a new IKE_SA was made"
        states = {s.spi: s for s in xfrm_states(t.gateway)}
        assert set(states) == role.spis  # the same CHILD_SA, moved
        assert all(new_remote in (s.src, s.dst) for s in states.values()), states
        assert all((s.encap is not None) is nat for s in states.values()), states
        after = _ike(charon)
        assert after.uniqueid == before.uniqueid and after.raw["local-host"] == C_B
        assert _child_spis(after) == role.spis
    finally:  # back to ca, without the NAT: the next case starts from there
        mark = daemon.mark()
        _move_to_a(t)
        _nat_on_b(t, False)
        daemon.wait_event("IkeSaMoved", 60, mark, connection="rw")
    assert {s.spi for s in xfrm_states(t.gateway)} == role.spis
    assert not daemon.errors(), daemon.tail()


@pytest.mark.parametrize("nat", [False, True], ids=["direct", "nat"])
def test_xfrmctl_client_moves_and_strongswan_follows(lab: Lab, nat: bool) -> None:
    role = lab.xfrmctl_client
    t, daemon, charon = role.topo, role.daemon, role.charon
    before = _ike(charon)
    _nat_on_b(t, nat)
    try:
        mark = daemon.mark()
        with Pinger(t) as pinger:
            time.sleep(MOVE_AT)
            _move_to_b(t)
        _assert_resumed(pinger)
        moved = daemon.wait_event("IkeSaMoved", 30, mark, connection="gw")
        assert _moved_to(moved, "local") == C_B and moved["nat_local"] is nat, moved
        assert not daemon.events("IkeSaUp")[1:], "a new IKE_SA was made"
        states = {s.spi: s for s in xfrm_states(t.client)}
        assert set(states) == role.spis
        assert all(C_B in (s.src, s.dst) for s in states.values()), states
        assert all((s.encap is not None) is nat for s in states.values()), states
        after = _ike(charon)
        assert after.uniqueid == before.uniqueid
        assert after.raw["remote-host"] == (R_G if nat else C_B), after.raw
        assert _child_spis(after) == role.spis
        policies = run("ip", "xfrm", "policy", netns=t.client)
        assert f"tmpl src {C_B} dst {G_X}" in policies, policies
    finally:
        mark = daemon.mark()
        _move_to_a(t)
        _nat_on_b(t, False)
        daemon.wait_event("IkeSaMoved", 60, mark, connection="gw")
    assert {s.spi for s in xfrm_states(t.client)} == role.spis
    assert not daemon.errors(), daemon.tail()
