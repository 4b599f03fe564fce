"""xfrmctl <-> xfrmctl on a real kernel: tunnel up, ping through ESP, delete on SIGTERM.

    left (initiator, start_action: start)          right (responder)
    198.51.100.0/24 == ESP tunnel 192.0.2.1 <-> 192.0.2.2 == 203.0.113.0/24

The daemon is policy-based here, and the test adds no routes: each daemon routes the
remote subnet in table 220 via its peer, from its inner address (as strongSwan does), so
even the gateway's own pings, with no source address given, go through the tunnel.
"""

from __future__ import annotations

from collections.abc import Callable

from tests.lab.conftest import Gateway, GatewayPair
from tests.lab.pair_common import Steps, ping
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

PSK = "lab-daemon-pair-test-psk-not-secret"
SUITE_IKE = "aes128gcm16-prfsha256-x25519"
SUITE_ESP = "aes128gcm16-x25519"


def gw_conf(me: Gateway, peer: Gateway, side: str, *, initiator: bool) -> dict[str, object]:
    peer_side = "right" if side == "left" else "left"
    conn = connection(
        me.outer, peer.outer,
        {"net": child([me.subnet], [peer.subnet], esp_proposals=SUITE_ESP)},
        psk=PSK, local_id=f"{side}.example.org", remote_id=f"{peer_side}.example.org",
        ike_proposals=SUITE_IKE, start_action="start" if initiator else "none")
    return daemon_conf([me.outer], {"gw": conn})


def test_daemon_pair_tunnel_ping_and_delete(
    gateway_pair: GatewayPair, xfrmctl_daemons: DaemonFactory,
    record_property: Callable[[str, object], None],
) -> None:
    pair = gateway_pair
    step = Steps(record_property)
    # both start at once: a cold Python start takes minutes under TCG
    right = xfrmctl_daemons(pair.right.netns, "right",
                            gw_conf(pair.right, pair.left, "right", initiator=False), wait=False)
    left = xfrmctl_daemons(pair.left.netns, "left",
                           gw_conf(pair.left, pair.right, "left", initiator=True), wait=False)
    right.wait_ready()
    left.wait_ready()
    step("daemons_started")

    up = left.wait_event("IkeSaUp", 120, connection="gw")
    assert up["initiator"] is True
    ev_left = wait_installed(left)
    ev_right = wait_installed(right)
    assert (ev_left["spi_in"], ev_left["spi_out"]) == (ev_right["spi_out"], ev_right["spi_in"])
    assert ev_left["local_ts"] == [pair.left.subnet] and ev_left["remote_ts"] == [
        pair.right.subnet]
    step("tunnel_up")

    states = {s.spi: s for s in xfrm_states(pair.left.netns)}
    out_sa, in_sa = states[int(ev_left["spi_out"])], states[int(ev_left["spi_in"])]
    assert out_sa.mode == "tunnel" and "rfc4106(gcm(aes))" in out_sa.algorithms
    assert (out_sa.src, out_sa.dst) == (pair.left.outer, pair.right.outer)

    for gw, peer in ((pair.left, pair.right), (pair.right, pair.left)):
        routes = gw.run("ip", "route", "show", "table", "220")
        assert f"{peer.subnet} via {peer.outer} dev {gw.veth} proto static src {gw.inner}" \
            in routes, routes
        assert "lookup 220" in gw.run("ip", "rule", "show")
    out = ping(pair.left, pair.right)
    assert " 0% packet loss" in out, out
    step("ping")

    # no source address given: the route's (our inner address) puts it in the tunnel
    out = pair.left.run("ping", "-c", "2", "-i", "0.2", "-W", "5", pair.right.inner)
    assert " 0% packet loss" in out, out
    left_after = {s.spi: s for s in xfrm_states(pair.left.netns)}
    right_after = {s.spi: s for s in xfrm_states(pair.right.netns)}
    # 5 + 2 echo requests out and as many replies in, 84-octet inner IPv4 packets each
    assert left_after[out_sa.spi].packets - out_sa.packets == 7
    assert left_after[out_sa.spi].bytes - out_sa.bytes == 7 * 84
    assert left_after[in_sa.spi].packets - in_sa.packets == 7
    # the right side decrypted our requests with its inbound SA and encrypted its replies
    assert right_after[out_sa.spi].packets == left_after[out_sa.spi].packets
    assert right_after[in_sa.spi].packets == left_after[in_sa.spi].packets
    step("counters")

    mark = right.mark()
    assert left.stop() == 0, left.tail()
    right.wait_event("ChildSaDeleted", 60, mark, connection="gw")
    right.wait_event("IkeSaDown", 60, mark, connection="gw")
    for gw in (pair.left, pair.right):
        assert xfrm_states(gw.netns) == [], gw.netns
        assert "tmpl" not in gw.run("ip", "xfrm", "policy")
        assert gw.run("ip", "route", "show", "table", "220") == ""
    # the rule goes with the daemon that stopped; the running one keeps it
    assert "lookup 220" not in pair.left.run("ip", "rule", "show")
    assert not left.errors(), left.tail()
    assert not right.errors(), right.tail()
    step("deleted")
