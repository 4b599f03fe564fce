"""NAT rebinding on a real kernel: strongSwan behind an nftables masquerade NAT whose
outside address changes mid-tunnel. The kernel of our (outside) gateway reports the new
source of the peer's ESP-in-UDP (XFRM MAPPING); the daemon moves the IKE SA and the
CHILD_SA's SAs and policies to it, keeping SPIs and sequence numbers, and routes the
inside subnet via the new address. Ping through ESP before and after.

    ns C (charon)                ns N (NAT)                         ns X (xfrmctl)
    inner 198.51.100.1/24        nin .129/26  nout .193/26 -> .195    inner 203.0.113.1/24
    ci 192.0.2.130/26 <------->  masquerade out of "nout"  <-------->  xo 192.0.2.194/26
"""

from __future__ import annotations

import itertools
import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.lab.conftest import CharonFactory, ip_batch, run
from tests.support.strongswan import SwanConn, SwanSecret
from tests.support.xfrmctl_daemon import (
    DaemonFactory,
    child,
    connection,
    daemon_conf,
    wait_installed,
    xfrm_states,
    xfrmctl_daemons,
)

__all__ = ["xfrmctl_daemons"]  # the fixture, imported for pytest

PSK = "lab-nat-rebinding-psk-not-secret"
C_ID, X_ID = "inside.example.org", "outside.example.org"
C_OUTER, NAT_IN, NAT_OUT, NAT_OUT_NEW, X_OUTER = (
    "192.0.2.130", "192.0.2.129", "192.0.2.193", "192.0.2.195", "192.0.2.194")
C_NET, X_NET, C_HOST, X_HOST = "198.51.100.0/24", "203.0.113.0/24", "198.51.100.1", "203.0.113.1"
_names = itertools.count()


@dataclass(frozen=True)
class Topology:
    charon: str
    nat: str
    ours: str


def _make(prefix: str) -> Topology:
    topo = Topology(f"{prefix}c", f"{prefix}n", f"{prefix}x")
    for ns in (topo.charon, topo.nat, topo.ours):
        run("ip", "netns", "add", ns)
    run("ip", "link", "add", "ci", "netns", topo.charon, "type", "veth", "peer", "name", "nin",
        "netns", topo.nat)
    run("ip", "link", "add", "xo", "netns", topo.ours, "type", "veth", "peer", "name", "nout",
        "netns", topo.nat)
    ip_batch(topo.charon, f"link set lo up\naddr add {C_OUTER}/26 dev ci\nlink set ci up\n"
             f"route add default via {NAT_IN}\nlink add inner type dummy\n"
             f"addr add {C_HOST}/24 dev inner\nlink set inner up\n")
    ip_batch(topo.nat, f"link set lo up\naddr add {NAT_IN}/26 dev nin\nlink set nin up\n"
             f"addr add {NAT_OUT}/26 dev nout\nlink set nout up\n")
    ip_batch(topo.ours, f"link set lo up\naddr add {X_OUTER}/26 dev xo\nlink set xo up\n"
             f"link add inner type dummy\naddr add {X_HOST}/24 dev inner\nlink set inner up\n")
    for ns in (topo.charon, topo.nat, topo.ours):
        run("sysctl", "-qw", "net.ipv4.ip_forward=1", netns=ns)
    subprocess.run(["ip", "netns", "exec", topo.nat, "nft", "-f", "-"], check=True, text=True,
                   input="table ip nat {\n chain post {\n  type nat hook postrouting "
                         "priority srcnat;\n  oifname \"nout\" masquerade\n }\n}\n")
    return topo


def _remove(topo: Topology) -> None:
    for ns in (topo.charon, topo.nat, topo.ours):
        for pid in run("ip", "netns", "pids", ns, check=False).split():
            subprocess.run(["kill", "-9", pid], check=False)
        run("ip", "netns", "del", ns, check=False)


@pytest.fixture
def topology() -> Iterator[Topology]:
    topo = _make(f"r{os.getpid()}n{next(_names)}")
    try:
        yield topo
    finally:
        _remove(topo)


def _ping(topo: Topology, count: int) -> tuple[int, str]:
    """Pings from charon's inner address to ours; how many were answered."""
    out = run("ping", "-c", str(count), "-i", "0.2", "-W", "2", "-I", C_HOST, X_HOST,
              netns=topo.charon, check=False)
    got = re.search(r"(\d+) received", out)
    return (int(got[1]) if got else 0), out


def test_outside_gateway_follows_the_peers_new_nat_mapping(
        topology: Topology, charons: CharonFactory, xfrmctl_daemons: DaemonFactory,
        tmp_path: Path) -> None:
    topo = topology
    conn = connection(X_OUTER, None, {"net": child([X_NET], [C_NET])}, psk=PSK,
                      local_id=X_ID, remote_id=C_ID)
    daemon = xfrmctl_daemons(topo.ours, "outside", daemon_conf([X_OUTER], {"nat": conn}),
                             wait=False)
    charon = charons(topo.charon, "inside", wait=False)
    charon.wait_ready()
    charon.load([SwanConn("gw", child_name="net", local_addrs=[C_OUTER],
                          remote_addrs=[X_OUTER], local_id=C_ID, remote_id=X_ID,
                          local_ts=[C_NET], remote_ts=[X_NET])],
                [SwanSecret(PSK, ids=[C_ID, X_ID])])
    daemon.wait_ready()
    mark = daemon.mark()
    charon.initiate("net", "gw", timeout=90)
    event = wait_installed(daemon, mark, connection="nat")
    spi_in, spi_out = int(event["spi_in"]), int(event["spi_out"])
    out_sa = {s.spi: s for s in xfrm_states(topo.ours)}[spi_out]
    assert out_sa.dst == NAT_OUT and out_sa.encap is not None, out_sa  # NAT-T found the NAT
    port = int(out_sa.encap.rsplit(" ", 1)[1])
    answered, out = _ping(topo, 5)
    assert answered == 5, out

    # The NAT's outside address changes: masquerade forgets the old mappings.
    ip_batch(topo.nat, f"addr del {NAT_OUT}/26 dev nout\naddr add {NAT_OUT_NEW}/26 dev nout\n")
    moved_mark = daemon.mark()
    answered, out = _ping(topo, 10)
    assert answered >= 8, out  # a reply or two may go to the old mapping before the move
    moved = daemon.wait_event("PeerMoved", 30, moved_mark, connection="nat")
    assert moved["new"][0] == NAT_OUT_NEW and moved["old"] == [NAT_OUT, port], moved
    answered, out = _ping(topo, 5)
    assert answered == 5, out

    states = {s.spi: s for s in xfrm_states(topo.ours)}
    assert set(states) == {spi_in, spi_out}  # the same CHILD_SA, re-addressed
    assert states[spi_out].dst == NAT_OUT_NEW and states[spi_in].src == NAT_OUT_NEW
    assert states[spi_out].packets >= out_sa.packets + 5 + 5
    policies = run("ip", "xfrm", "policy", netns=topo.ours)
    assert f"tmpl src {X_OUTER} dst {NAT_OUT_NEW}" in policies, policies
    assert NAT_OUT not in policies.replace(NAT_OUT_NEW, ""), policies
    routes = run("ip", "route", "show", "table", "220", netns=topo.ours)
    assert f"{C_NET} via {NAT_OUT_NEW}" in routes, routes
    (sa,) = charon.list_sas()
    assert sa.state == "ESTABLISHED"
    assert {int(c["spi-in"], 16) for c in sa.children.values()} == {spi_out}  # no new SA

    gone = daemon.mark()
    charon.terminate(ike="gw", timeout=60)  # reaches us from the new mapping
    daemon.wait_event("IkeSaDown", 60, gone, connection="nat")
    assert xfrm_states(topo.ours) == []
    assert not daemon.errors(), daemon.tail()
