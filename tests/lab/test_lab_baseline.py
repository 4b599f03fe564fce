"""The lab itself works: strongSwan <-> strongSwan over a real kernel's ESP.

If this fails, nothing else in tests/lab can be trusted: the kernel modules, the
namespaces, charon or the VM are broken, not xfrmctl.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from tests.lab.conftest import CharonFactory, GatewayPair
from tests.lab.pair_common import Steps
from tests.support.strongswan import SwanConn, SwanSecret

PSK = "lab-baseline-test-psk-not-secret"


def xfrm_counters(text: str) -> dict[str, tuple[int, int]]:
    """Map ``src>dst spi`` to (bytes, packets) from ``ip -s xfrm state`` output."""
    out: dict[str, tuple[int, int]] = {}
    key = ""
    lifetime_current = False
    for line in text.splitlines():
        head = re.match(r"src (\S+) dst (\S+)", line)
        if head:
            key = f"{head[1]}>{head[2]}"
            continue
        spi = re.search(r"proto esp spi (0x[0-9a-f]+)", line)
        if spi and key:
            key = f"{key.split(' ')[0]} {spi[1]}"
            continue
        if "lifetime current:" in line:
            lifetime_current = True
            continue
        if lifetime_current:
            cur = re.search(r"(\d+)\(bytes\), (\d+)\(packets\)", line)
            if cur:
                out[key] = (int(cur[1]), int(cur[2]))
                lifetime_current = False
    return out


def conn(pair: GatewayPair, side: str) -> SwanConn:
    me, peer = (pair.left, pair.right) if side == "left" else (pair.right, pair.left)
    return SwanConn(
        "gw",
        local_addrs=[me.outer],
        remote_addrs=[peer.outer],
        local_id=f"{side}.example.org",
        remote_id=f"{'right' if side == 'left' else 'left'}.example.org",
        proposals=["aes128gcm16-prfsha256-x25519"],
        esp_proposals=["aes128gcm16-x25519"],
        local_ts=[me.subnet],
        remote_ts=[peer.subnet],
    )


def test_strongswan_tunnel_passes_esp(
    gateway_pair: GatewayPair,
    charons: CharonFactory,
    record_property: Callable[[str, object], None],
) -> None:
    pair = gateway_pair
    step = Steps(record_property)
    secret = SwanSecret(PSK, ids=["left.example.org", "right.example.org"])
    left = charons(pair.left.netns, "left", wait=False)
    right = charons(pair.right.netns, "right", wait=False)
    left.wait_ready()
    right.wait_ready()
    step("charons_started")
    left.load([conn(pair, "left")], [secret])
    right.load([conn(pair, "right")], [secret])
    step("configs_loaded")

    left.initiate("gw", timeout=90)
    sas = left.wait_child_installed("gw")
    right.wait_child_installed("gw")
    step("tunnel_up")
    child = next(iter(sas[0].children.values()))
    assert child["protocol"] == "ESP"
    assert child["encr-alg"] == "AES_GCM_16"
    assert child["encr-keysize"] == "128"
    assert sas[0].raw["dh-group"] == "CURVE_25519"

    states = pair.left.run("ip", "xfrm", "state")
    assert "rfc4106(gcm(aes))" in states
    before = xfrm_counters(pair.left.run("ip", "-s", "xfrm", "state"))
    assert len(before) == 2, before

    ping = pair.left.run(
        "ping", "-c", "5", "-i", "0.2", "-W", "5", "-I", pair.left.inner, pair.right.inner
    )
    assert " 0% packet loss" in ping, ping
    step("ping")

    after = xfrm_counters(pair.left.run("ip", "-s", "xfrm", "state"))
    out_key = next(k for k in after if k.startswith(f"{pair.left.outer}>"))
    in_key = next(k for k in after if k.startswith(f"{pair.right.outer}>"))
    # 5 echo requests out, 5 replies in: 84-octet IPv4 packets each, inner bytes
    assert after[out_key][1] - before.get(out_key, (0, 0))[1] == 5
    assert after[in_key][1] - before.get(in_key, (0, 0))[1] == 5
    assert after[out_key][0] - before.get(out_key, (0, 0))[0] == 5 * 84
    # the right side's inbound SA decrypted the same packets
    right_after = xfrm_counters(pair.right.run("ip", "-s", "xfrm", "state"))
    assert right_after[out_key][1] >= 5
    step("counters")

    left.terminate(ike="gw", timeout=60)
    left.wait_for(lambda sas: not sas, 30, "IKE_SA gone")
    assert "proto esp" not in pair.left.run("ip", "xfrm", "state")
    step("deleted")


def test_gateway_pair_topology(gateway_pair: GatewayPair) -> None:
    """Without any IPsec the inner subnets are unreachable (no route), the veth is."""
    gw = gateway_pair.left
    assert " 0% packet loss" in gw.run("ping", "-c", "1", "-W", "5", "192.0.2.2")
    out = gw.run("ping", "-c", "1", "-W", "2", "203.0.113.1", check=False)
    assert " 0% packet loss" not in out
