"""The IPv6 topology of test_ipv6.py and its IPv6-specific checks (the interop cases and
their common checks are interop_common.py's).

    ns L (our daemon)            ns S (charon)                 ns P (xfrmctl peer)
    inner 2001:db8:a::1/64       inner 2001:db8:b::1/64        inner 2001:db8:b::1/64
          198.51.100.1/24              203.0.113.1/24
    v6br 2001:db8:0:1::1/64 + vr 2001:db8:0:1::2/64
                            +------------------------------ vr 2001:db8:0:1::3/64

Our side reaches both peers on one IPv6 link: a bridge in L with ports to S and P, so our
daemon listens on the one outer address and each peer is a remote address of its own.
Every address is given ``nodad``: usable at once, no duplicate address detection to wait
for. Nobody routes by hand: our daemon and the xfrmctl peer route the remote selectors in
table 220 themselves, charon does so too. The two right-hand peers share their inner
subnet: a case at a time uses one.

The topology is seen as three gateway pairs (conftest.GatewayPair), so interop_common's
configurations and checks apply unchanged: ``swan`` and ``peer`` with IPv6 inner subnets,
``mixed``: IPv4 inner subnets inside the same IPv6 outer addresses, against charon.
"""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass

from tests.lab.conftest import Gateway, GatewayPair, ip_batch, remove_pair, run
from tests.lab.interop_common import Case, check_traffic
from tests.support.xfrmctl_daemon import Event, xfrm_states

OURS_OUTER, SWAN_OUTER, PEER_OUTER = "2001:db8:0:1::1", "2001:db8:0:1::2", "2001:db8:0:1::3"
LEFT6, RIGHT6 = ("2001:db8:a::1", "2001:db8:a::/64"), ("2001:db8:b::1", "2001:db8:b::/64")
LEFT4, RIGHT4 = ("198.51.100.1", "198.51.100.0/24"), ("203.0.113.1", "203.0.113.0/24")
OUR_LINK, PEER_LINK = "v6br", "vr"  # not "br": ip reads it as "broadcast"
PINGS = 5  # echo requests of check_traffic
# octets an ESP SA counts for one echo request or reply of ping's default 56-octet payload:
# the inner packet (IPv6 40-octet header or IPv4 20, ICMP 8)
ECHO_OCTETS = {6: 40 + 8 + 56, 4: 20 + 8 + 56}


@dataclass(frozen=True)
class Topology:
    swan: GatewayPair  # our daemon <-> charon, IPv6 inside and out
    peer: GatewayPair  # our daemon <-> the xfrmctl peer, IPv6 inside and out
    mixed: GatewayPair  # our daemon <-> charon, IPv4 inside, IPv6 outside


def _side(link: str, outer: str, inner6: tuple[str, str], inner4: tuple[str, str]) -> str:
    """The ``ip -batch`` of one namespace (its outer address on ``link``, made already)."""
    return (
        f"addr add {outer}/64 dev {link} nodad\n"
        f"link set {link} up\n"
        "link add inner type dummy\n"
        f"addr add {inner6[0]}/64 dev inner nodad\n"
        f"addr add {inner4[0]}/24 dev inner\n"
        "link set inner up\n"
    )


def make_topology(prefix: str) -> Topology:
    """Create the three namespaces; on failure, remove what was made."""
    ours, swan, peer = f"{prefix}l", f"{prefix}s", f"{prefix}p"

    def gateway(netns: str, outer: str, inner: tuple[str, str], link: str) -> Gateway:
        return Gateway(netns, outer, inner[0], inner[1], link)

    topo = Topology(
        GatewayPair(gateway(ours, OURS_OUTER, LEFT6, OUR_LINK),
                    gateway(swan, SWAN_OUTER, RIGHT6, PEER_LINK)),
        GatewayPair(gateway(ours, OURS_OUTER, LEFT6, OUR_LINK),
                    gateway(peer, PEER_OUTER, RIGHT6, PEER_LINK)),
        GatewayPair(gateway(ours, OURS_OUTER, LEFT4, OUR_LINK),
                    gateway(swan, SWAN_OUTER, RIGHT4, PEER_LINK)))
    try:
        for ns in (ours, swan, peer):
            run("ip", "netns", "add", ns)
        for port, other in (("vs", swan), ("vp", peer)):
            run("ip", "link", "add", port, "netns", ours, "type", "veth", "peer", "name",
                PEER_LINK, "netns", other)
        # one `ip -batch` per namespace: process starts are what costs under TCG
        ip_batch(ours, "link set lo up\n"
                       f"link add {OUR_LINK} type bridge mcast_snooping 0\n"
                       f"link set vs master {OUR_LINK}\nlink set vs up\n"
                       f"link set vp master {OUR_LINK}\nlink set vp up\n"
                       + _side(OUR_LINK, OURS_OUTER, LEFT6, LEFT4))
        for ns, outer in ((swan, SWAN_OUTER), (peer, PEER_OUTER)):
            ip_batch(ns, "link set lo up\n" + _side(PEER_LINK, outer, RIGHT6, RIGHT4))
    except Exception:
        remove_topology(topo)
        raise
    return topo


def remove_topology(topo: Topology) -> None:
    for pair in (topo.swan, topo.peer):  # the netns of our side twice: the second is a no-op
        remove_pair(pair)


def kernel_dump(topo: Topology) -> str:
    """SAs with counters, policies, table 220 and rules of the three namespaces."""
    out = []
    for ns in (topo.swan.left.netns, topo.swan.right.netns, topo.peer.right.netns):
        for cmd in ("-s xfrm state", "xfrm policy", "-4 route show table all",
                    "-6 route show table all", "rule show", "-6 rule show"):
            text = run("ip", "-n", ns, *cmd.split(), check=False)
            out.append(f"### {ns}: ip {cmd}\n{text}")
    return "\n".join(out)


# ---------------------------------------------------------------------------- checks


def version(pair: GatewayPair) -> int:
    """The IP version of the pair's inner subnets."""
    return ipaddress.ip_network(pair.left.subnet).version


def same_address(a: object, b: str) -> bool:
    return ipaddress.ip_address(str(a)) == ipaddress.ip_address(b)


def table_220(gw: Gateway, ip_version: int) -> str:
    return gw.run("ip", f"-{ip_version}", "route", "show", "table", "220")


def check_route(gw: Gateway, peer: Gateway) -> None:
    """``gw``'s daemon routes ``peer``'s subnet in table 220, from its own inner address,
    via the peer's outer address when the families agree (else just out of the link), and
    its rule of that family looks table 220 up."""
    ip_version = ipaddress.ip_network(peer.subnet).version
    same_family = ipaddress.ip_address(peer.outer).version == ip_version
    hop = f"via {peer.outer} " if same_family else ""
    routes = table_220(gw, ip_version)
    assert f"{peer.subnet} {hop}dev {gw.veth} proto static " in routes, routes
    assert f" src {gw.inner} " in f"{routes.strip()} ", routes
    rules = gw.run("ip", f"-{ip_version}", "rule", "show")
    assert "lookup 220" in rules, rules


def wait_unrouted(gw: Gateway, ip_version: int, timeout: float = 30) -> None:
    """Table 220 of ``gw`` empty for ``ip_version`` (routes go with the last SA)."""
    deadline = time.monotonic() + timeout
    while routes := table_220(gw, ip_version):
        assert time.monotonic() < deadline, (gw.netns, routes)
        time.sleep(0.5)


def check_outer(pair: GatewayPair, up: Event, event: Event) -> None:
    """Our IkeSaUp ``up`` and ChildSaNegotiated ``event`` between the IPv6 outer addresses,
    and so are the event's two SAs in our kernel."""
    for ev in (up, event):
        assert same_address(ev["local"][0], pair.left.outer), ev
        assert same_address(ev["remote"][0], pair.right.outer), ev
    states = {s.spi: s for s in xfrm_states(pair.left.netns)}
    out_sa, in_sa = states[int(event["spi_out"])], states[int(event["spi_in"])]
    assert (out_sa.src, out_sa.dst) == (pair.left.outer, pair.right.outer), out_sa
    assert (in_sa.src, in_sa.dst) == (pair.right.outer, pair.left.outer), in_sa


def check_counted_traffic(pair: GatewayPair, case: Case, event: Event) -> None:
    """check_traffic (5 pings, both SAs +5 packets in our kernel, the peer's agreeing),
    and exactly: each SA counts 5 more packets in both kernels, and the sending side's
    outbound SA 5 more echo messages in octets (our requests, the peer's replies)."""
    spi_in, spi_out = int(event["spi_in"]), int(event["spi_out"])
    netns = (pair.left.netns, pair.right.netns)
    before = [{s.spi: s for s in xfrm_states(ns)} for ns in netns]
    check_traffic(pair, case, event, None)
    after = [{s.spi: s for s in xfrm_states(ns)} for ns in netns]
    for side in (0, 1):
        for spi in (spi_in, spi_out):
            assert after[side][spi].packets - before[side][spi].packets == PINGS, (
                netns[side], spi, before[side][spi], after[side][spi])
    octets = PINGS * ECHO_OCTETS[version(pair)]
    # our outbound SA (spi_out) on our side, the peer's outbound (our spi_in) on its side
    for side, spi in ((0, spi_out), (1, spi_in)):
        assert after[side][spi].bytes - before[side][spi].bytes == octets, (
            netns[side], spi, before[side][spi], after[side][spi])
