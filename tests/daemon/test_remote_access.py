"""Remote access: the gateway hands out a virtual IP from its pool, the client puts it on
its loopback and tunnels the corporate network from it."""

from __future__ import annotations

from tests.support.fake_links import FakeLinks
from tests.support.gateways import PSK, start_pair
from xfrmctl.daemon import conf as cf
from xfrmctl.port import Target

GW, CLIENT = "192.0.2.1", "192.0.2.2"


async def test_client_gets_an_address_from_the_pool_and_gives_it_back() -> None:
    gateway = cf.ConnectionConf(local_addrs=[GW], psk=PSK, pool="203.0.113.128/25",  # type: ignore[arg-type]
                                children={"corp": cf.ChildConf(local_ts=["198.51.100.0/24"])})
    client = cf.ConnectionConf(local_addrs=[CLIENT], remote_addrs=[GW], psk=PSK,  # type: ignore[arg-type]
                               request_virtual_ip=True, start_action="start",  # type: ignore[arg-type]
                               children={"corp": cf.ChildConf(remote_ts=["198.51.100.0/24"])})
    links = FakeLinks()
    gw = await start_pair(cf.DaemonConf(connections={"corp": client}),
                          cf.DaemonConf(connections={"roadwarriors": gateway}), links)
    c, g, kc, kg = gw.a, gw.b, gw.ka, gw.kb
    (child,) = await c.list_child_sas()
    assert child.local_ts == ("203.0.113.129/32",) and child.remote_ts == ("198.51.100.0/24",)
    (peer,) = await g.list_child_sas()
    assert peer.remote_ts == ("203.0.113.129/32",)
    assert links.loopback == ["203.0.113.129/32"]
    # The gateway's policies send the client's address into the tunnel.
    assert {str(p.selector.dst) for p in kg.policies.values()
            if p.direction.name == "OUT"} == {"203.0.113.129/32"}
    await c.terminate(Target("connection", "1"))
    await gw.settle()
    assert links.loopback == [] and not kc.sas and not kg.sas
    await c.stop()
    await g.stop()
