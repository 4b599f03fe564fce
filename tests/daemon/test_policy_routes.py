"""Policy-based tunnels get routes to the remote selectors in table 220: with the SA,
across rekeys, for traps, from a remote-access client's virtual IP; gone with the tunnel."""

from __future__ import annotations

from tests.support.fake_links import FakeLinks
from tests.support.gateways import (
    NET_A,
    NET_B,
    PSK,
    Gateways,
    connection,
    pair_with_links,
)
from xfrmctl.daemon import conf as cf
from xfrmctl.kernel.types import Expire
from xfrmctl.port import Target

A, B = "192.0.2.1", "192.0.2.2"


async def _net_to_net(links: FakeLinks, start: str = "start", **daemon: object) -> Gateways:
    return await pair_with_links(connection(A, B, NET_A, NET_B, start),
                                 connection(B, A, NET_B, NET_A), links, **daemon)


async def test_route_with_the_sa_kept_across_a_rekey_removed_with_it() -> None:
    links = FakeLinks(addresses=(A, "198.51.100.1"))
    gw = await _net_to_net(links)
    (route,) = links.table.values()
    assert (str(route.dst), route.gateway, route.src, route.table) == (
        NET_B, B, "198.51.100.1", 220)
    assert links.rules == {(220, 220, 4)}
    # soft expire -> rekey: the new SA comes before the old goes, the route stays
    (old,) = await gw.a.list_child_sas()
    gw.ka.inject(Expire(next(iter(gw.ka.sas.values())).spec.id, hard=False))
    await gw.settle()
    (new,) = await gw.a.list_child_sas()
    assert new.spi_in != old.spi_in
    assert list(links.table) == [NET_B]
    await gw.a.terminate(Target("connection", "1"))
    await gw.settle()
    assert links.table == {}
    await gw.a.stop()
    await gw.b.stop()
    assert links.rules == set()


async def test_no_routes_when_disabled_or_in_transport_mode() -> None:
    links = FakeLinks(addresses=(A,))
    gw = await _net_to_net(links, install_routes=False)
    assert len(gw.ka.sas) == 2 and links.table == {}
    await gw.a.stop()
    await gw.b.stop()

    transport = cf.ChildConf(mode="transport")  # type: ignore[arg-type]
    conn_a = replace_children(connection(A, B, NET_A, NET_B, "start"), transport)
    conn_b = replace_children(connection(B, A, NET_B, NET_A), transport)
    gw = await pair_with_links(conn_a, conn_b, links)
    assert len(gw.ka.sas) == 2 and links.table == {}
    await gw.a.stop()
    await gw.b.stop()


async def test_trap_routes_the_first_packet_to_its_policy() -> None:
    links = FakeLinks(addresses=(A, "198.51.100.1"))
    gw = await _net_to_net(links, start="trap")
    assert not gw.ka.sas and list(links.table) == [NET_B]  # trapped: route, no SA yet
    await gw.a.stop()
    await gw.b.stop()
    assert links.table == {} and links.rules == set()


async def test_remote_access_client_routes_from_its_virtual_ip() -> None:
    gateway = cf.ConnectionConf(local_addrs=[B], psk=PSK, pool="203.0.113.128/25",  # type: ignore[arg-type]
                                children={"corp": cf.ChildConf(local_ts=[NET_A])})
    client = cf.ConnectionConf(local_addrs=[A], remote_addrs=[B], psk=PSK,  # type: ignore[arg-type]
                               request_virtual_ip=True, start_action="start",  # type: ignore[arg-type]
                               children={"corp": cf.ChildConf(remote_ts=[NET_A])})
    links = FakeLinks(addresses=(A,))
    gw = await pair_with_links(client, gateway, links)
    (route,) = links.table.values()
    assert (str(route.dst), route.gateway, route.src) == (NET_A, B, "203.0.113.129")
    await gw.a.stop()
    await gw.b.stop()
    assert links.table == {} and links.loopback == []


def replace_children(conn: cf.ConnectionConf, child: cf.ChildConf) -> cf.ConnectionConf:
    return conn.model_copy(update={"children": {"lan": child}})
