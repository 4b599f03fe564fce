"""Routes of policy-based tunnels (table 220) in a real namespace, read back with iproute2.

rtnetlink routes and rules work on the host kernel, so these run here (no ESP needed).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from tests.support.netns import Netns, netns_pair, require_root
from xfrmctl.daemon.routes import PolicyRoutes
from xfrmctl.ike import ts
from xfrmctl.kernel.links import KernelLinks

pytestmark = pytest.mark.netns

PEER = "192.0.2.2"
LOCAL_TS, REMOTE_TS = (ts.parse("198.51.100.0/24"),), (ts.parse("203.0.113.0/24"),)


@pytest.fixture
async def gateway() -> AsyncIterator[tuple[Netns, KernelLinks]]:
    require_root()
    with netns_pair() as (left, _right):
        left.add_addr("lo", "198.51.100.1/24")  # no dummy module on every host kernel
        links = await KernelLinks.open(left.name)
        try:
            yield left, links
        finally:
            await links.close()


def routes(ns: Netns, table: str = "220") -> list[dict[str, object]]:
    out = ns.ip("-j", "route", "show", "table", table).stdout
    return list(json.loads(out or "[]"))


def rules(ns: Netns, family: str = "-4") -> list[dict[str, object]]:
    return list(json.loads(ns.ip(family, "-j", "rule", "show").stdout))


async def test_route_via_peer_from_inner_address(gateway: tuple[Netns, KernelLinks]) -> None:
    ns, links = gateway
    table = PolicyRoutes(links)
    await table.hold("child", await table.plan(LOCAL_TS, REMOTE_TS, PEER))
    (route,) = routes(ns)
    assert route["dst"] == "203.0.113.0/24"
    assert route["gateway"] == PEER  # on-link peer: via its own address
    assert route["dev"] == "veth0"
    assert route["prefsrc"] == "198.51.100.1"
    assert any(r.get("priority") == 220 and r.get("table") == "220" for r in rules(ns))
    # the gateway's own traffic to the remote subnet now leaves from the inner address
    got = json.loads(ns.ip("-j", "route", "get", "203.0.113.9").stdout)[0]
    assert (got["gateway"], got["prefsrc"]) == (PEER, "198.51.100.1")


async def test_shared_route_goes_with_its_last_owner(gateway: tuple[Netns, KernelLinks]) -> None:
    ns, links = gateway
    table = PolicyRoutes(links)
    planned = await table.plan(LOCAL_TS, REMOTE_TS, PEER)
    await table.hold("old SA", planned)
    await table.hold("new SA", planned)  # a rekey: make-before-break
    await table.release("old SA")
    assert [r["dst"] for r in routes(ns)] == ["203.0.113.0/24"]
    await table.release("new SA")
    assert routes(ns) == []
    await table.close()
    assert not any(r.get("priority") == 220 for r in rules(ns))


async def test_no_source_outside_local_selector_and_other_family(
        gateway: tuple[Netns, KernelLinks]) -> None:
    ns, links = gateway
    table = PolicyRoutes(links, table=221, priority=221)
    remote = (ts.parse("203.0.113.0/25"), ts.parse("2001:db8:2::/64"))
    planned = await table.plan((ts.parse("192.0.2.128/25"),), remote, PEER)
    v4, v6 = planned
    assert (v4.gateway, v4.src) == (PEER, None)  # none of our addresses in .128/25
    assert v6.gateway is None  # IPv6 inside IPv4 outer: by the device, not via the peer
    await table.hold("child", planned)
    assert [r["dst"] for r in routes(ns, "221")] == ["203.0.113.0/25"]
    out6 = ns.ip("-6", "-j", "route", "show", "table", "221").stdout
    assert [r["dst"] for r in json.loads(out6)] == ["2001:db8:2::/64"]
    assert any(r.get("priority") == 221 for r in rules(ns, "-6"))
    await table.close()
    assert routes(ns, "221") == [] and not any(
        r.get("priority") == 221 for r in rules(ns, "-6"))


async def test_rule_left_by_a_previous_process_is_taken_over(
        gateway: tuple[Netns, KernelLinks]) -> None:
    ns, links = gateway
    ns.ip("rule", "add", "priority", "220", "table", "220")
    table = PolicyRoutes(links)
    await table.hold("child", await table.plan(LOCAL_TS, REMOTE_TS, PEER))
    assert sum(r.get("priority") == 220 for r in rules(ns)) == 1
    await table.close()
    assert not any(r.get("priority") == 220 for r in rules(ns))


async def test_host_to_host_peer_needs_no_route(gateway: tuple[Netns, KernelLinks]) -> None:
    _ns, links = gateway
    table = PolicyRoutes(links)
    assert await table.plan((ts.parse("192.0.2.1/32"),), (ts.parse(f"{PEER}/32"),), PEER) == []
