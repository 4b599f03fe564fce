"""Route-based children: the interface, its addresses and routes come and go with the
connection, and its MTU accounts for the negotiated suite's ESP overhead."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.support.fake_links import FakeLinks
from tests.support.gateways import PSK, Gateways, start_pair
from tests.support.slow_kernel import SlowKernel
from tests.support.slow_kernel import settle_slow as settle
from xfrmctl.daemon import conf as cf
from xfrmctl.daemon.install import esp_overhead
from xfrmctl.ike.config import Mode
from xfrmctl.ike.constants import EncrId, IntegId, ProtocolId
from xfrmctl.ike.events import ChildSaNegotiated
from xfrmctl.ike.proposals import Suite
from xfrmctl.kernel.fake import FakeKernel
from xfrmctl.kernel.types import Direction

A, B = "192.0.2.1", "192.0.2.2"


def _conn(local: str, remote: str, child: cf.ChildConf, start: str) -> cf.ConnectionConf:
    return cf.ConnectionConf(local_addrs=[local], remote_addrs=[remote], psk=PSK,  # type: ignore[arg-type]
                             start_action=start, children={"routed": child})  # type: ignore[arg-type]


async def _pair(child_a: cf.ChildConf, kernels: tuple[FakeKernel, FakeKernel] | None = None
                ) -> tuple[Gateways, FakeLinks]:
    links = FakeLinks()
    any_ts = {"local_ts": ["0.0.0.0/0"], "remote_ts": ["0.0.0.0/0"]}
    gw = await start_pair(
        cf.DaemonConf(delete_rekeyed_delay=0.1, connections={"b": _conn(A, B, child_a, "start")}),
        cf.DaemonConf(delete_rekeyed_delay=0.1,
                      connections={"a": _conn(B, A, cf.ChildConf(**any_ts), "none")}), links,
        kernels=kernels)
    return gw, links


async def test_xfrm_interface_lives_with_the_connection() -> None:
    child = cf.ChildConf(local_ts=["0.0.0.0/0"], remote_ts=["0.0.0.0/0"],
                         esp_proposals="aes256gcm16", interface_kind="xfrmi",
                         interface_name="ipsec-b", if_id=42,
                         interface_addresses=["198.51.100.254/32"], routes=["203.0.113.0/24"])
    gw, links = await _pair(child)
    link = links.links["ipsec-b"]
    assert (link["kind"], link["if_id"]) == ("xfrm", 42)
    assert link["addrs"] == ["198.51.100.254/32"] and link["routes"] == ["203.0.113.0/24"]
    assert {e.spec.if_id for e in gw.ka.sas.values()} == {42}
    assert {p.if_id for p in gw.ka.policies.values()} == {42}
    # AES-GCM-256, tunnel, IPv4: 20 + 8 (ESP) + 8 (IV) + 3 (pad) + 2 + 16 (ICV) = 57
    assert link["mtu"] == (1500 - 57) // 4 * 4
    await gw.a.stop()
    await gw.b.stop()
    assert not links.links and not gw.ka.sas and not gw.ka.policies


async def test_vti_uses_the_marks_on_sas_and_policies() -> None:
    child = cf.ChildConf(local_ts=["0.0.0.0/0"], remote_ts=["0.0.0.0/0"],
                         interface_kind="vti", interface_name="vti-b", mark_in=43,
                         mark_out=44, mtu=1400, routes=["203.0.113.0/24"])
    gw, links = await _pair(child)
    link = links.links["vti-b"]
    assert (link["kind"], link["ikey"], link["okey"], link["mtu"]) == ("vti", 43, 44, 1400)
    marks = {(str(e.spec.dst), e.spec.mark.value) for e in gw.ka.sas.values()
             if e.spec.mark is not None}
    assert marks == {(B, 44)}  # only the outbound SA: inbound ESP has no mark at lookup
    assert {p.mark.value for p in gw.ka.policies.values() if p.mark} == {43, 44}
    await gw.a.stop()
    await gw.b.stop()
    assert not links.links


def test_esp_overhead_by_suite() -> None:
    def event(suite: Suite, encap: bool, mode: Mode = Mode.TUNNEL) -> ChildSaNegotiated:
        return ChildSaNegotiated(
            ike_sa=1, connection="c", child="x", child_id=1, protocol=ProtocolId.ESP,
            mode=mode, spi_in=1, spi_out=2, local=(A, 4500), remote=(B, 4500), local_ts=(),
            remote_ts=(), suite=suite, encr_key_in=b"", integ_key_in=b"", encr_key_out=b"",
            integ_key_out=b"", encap=encap, rekey_time=0, life_time=0)

    gcm = Suite(ProtocolId.ESP, EncrId.AES_GCM_16, 128)
    cbc = Suite(ProtocolId.ESP, EncrId.AES_CBC, 256, IntegId.HMAC_SHA2_256_128)
    assert esp_overhead(event(gcm, False)) == 57
    assert esp_overhead(event(gcm, True)) == 65  # + UDP
    assert esp_overhead(event(cbc, False)) == 20 + 8 + 16 + 15 + 2 + 16
    assert esp_overhead(event(gcm, False, Mode.TRANSPORT)) == 37


ROUTED = cf.ChildConf(local_ts=["0.0.0.0/0"], remote_ts=["0.0.0.0/0"],
                      esp_proposals="aes256gcm16", interface_kind="xfrmi",
                      interface_name="ipsec-b", if_id=42,
                      interface_addresses=["198.51.100.254/32"], routes=["203.0.113.0/24"])


def _carrier(links: FakeLinks, kernel: FakeKernel) -> str | None:
    """Why a packet routed to 203.0.113.0/24 now would not leave encrypted (None: it
    would): the link holding the route, an OUT policy of its if_id, an SA of that if_id."""
    holder = [n for n, link in links.links.items() if "203.0.113.0/24" in link["routes"]]
    if not holder:
        return "no interface routes 203.0.113.0/24"
    if_id = links.links[holder[0]]["if_id"]
    for policy in kernel.policies.values():
        if policy.direction is Direction.OUT and policy.if_id == if_id and policy.templates:
            t = policy.templates[0]  # as xfrm_state_find: the SA's if_id must match too
            if any(not e.larval and (e.spec.src, e.spec.dst, e.spec.reqid, e.spec.if_id)
                   == (t.src, t.dst, t.reqid, if_id) for e in kernel.sas.values()):
                return None
    return f"{holder[0]} (if_id {if_id}) has no OUT policy with an SA of its if_id"


async def _changed(update: dict[str, Any]) -> tuple[Gateways, FakeLinks, list[str]]:
    """Start with ROUTED, change it on the running tunnel; every kernel batch on the way
    checks that routed traffic leaves encrypted."""
    ka = SlowKernel()
    gw, links = await _pair(ROUTED, kernels=(ka, SlowKernel()))
    await settle(gw)
    losses: list[str] = []

    def check() -> None:
        if (why := _carrier(links, ka)) is not None:
            losses.append(why)

    check()
    assert losses == []
    ka.after = check
    conf = gw.a.conf.model_copy(deep=True)
    conf.connections["b"].children["routed"] = ROUTED.model_copy(update=update)
    await gw.a.reload(cf.DaemonConf.model_validate(conf.model_dump()))
    await settle(gw)
    await asyncio.sleep(0.2)  # the replaced inbound SA lingers 0.1 s
    await settle(gw)
    return gw, links, losses


async def test_a_new_interface_is_made_before_the_child_moves_and_the_old_removed_after(
        ) -> None:
    gw, links, losses = await _changed({"interface_name": "ipsec-c", "if_id": 43})
    assert losses == []
    assert set(links.links) == {"ipsec-c"}
    link = links.links["ipsec-c"]
    assert (link["if_id"], link["routes"], link["addrs"]) == (
        43, ["203.0.113.0/24"], ["198.51.100.254/32"])
    assert {e.spec.if_id for e in gw.ka.sas.values()} == {43}
    await gw.a.stop()
    await gw.b.stop()
    assert not links.links


async def test_a_changed_if_id_on_the_same_interface_name_is_applied() -> None:
    gw, links, losses = await _changed({"if_id": 43})
    assert losses == []  # the interface was re-made before the old CHILD_SA went
    assert set(links.links) == {"ipsec-b"} and links.links["ipsec-b"]["if_id"] == 43
    assert links.links["ipsec-b"]["routes"] == ["203.0.113.0/24"]
    assert {e.spec.if_id for e in gw.ka.sas.values()} == {43}
    assert {p.if_id for p in gw.ka.policies.values()} == {43}
    await gw.a.stop()
    await gw.b.stop()


async def test_an_xfrm_interface_becomes_a_vti() -> None:
    gw, links, _ = await _changed({"interface_kind": "vti", "interface_name": "vti-b",
                                   "if_id": None, "mark_in": 7, "mark_out": 8})
    assert set(links.links) == {"vti-b"}
    assert (links.links["vti-b"]["ikey"], links.links["vti-b"]["okey"]) == (7, 8)
    assert links.links["vti-b"]["routes"] == ["203.0.113.0/24"]
    assert {p.mark.value for p in gw.ka.policies.values() if p.mark} == {7, 8}
    await gw.a.stop()
    await gw.b.stop()


async def test_a_child_no_longer_route_based_leaves_no_interface() -> None:
    gw, links, _ = await _changed({"interface_kind": None, "interface_name": None,
                                   "if_id": None, "routes": [], "interface_addresses": []})
    assert links.links == {}
    assert {e.spec.if_id for e in gw.ka.sas.values()} == {0} and len(gw.ka.sas) == 2
    await gw.a.stop()
    await gw.b.stop()


async def test_an_interface_shared_by_two_children_stays_while_one_uses_it() -> None:
    other = ROUTED.model_copy(update={"local_ts": ["198.51.100.0/24"],
                                      "remote_ts": ["203.0.113.0/24"], "routes": []})
    shared = ROUTED.model_copy(update={"routes": ["203.0.113.0/24"]})
    links = FakeLinks()
    any_ts = {"local_ts": ["0.0.0.0/0"], "remote_ts": ["0.0.0.0/0"]}
    conf_a = cf.DaemonConf(delete_rekeyed_delay=0.1, connections={"b": cf.ConnectionConf(
        local_addrs=[A], remote_addrs=[B], psk=PSK, start_action="start",  # type: ignore[arg-type]
        children={"routed": shared, "other": other})})
    conf_b = cf.DaemonConf(delete_rekeyed_delay=0.1, connections={"a": cf.ConnectionConf(
        local_addrs=[B], remote_addrs=[A], psk=PSK,  # type: ignore[arg-type]
        children={"routed": cf.ChildConf(**any_ts),
                  "other": cf.ChildConf(local_ts=["203.0.113.0/24"],
                                        remote_ts=["198.51.100.0/24"])})})
    gw = await start_pair(conf_a, conf_b, links)
    await settle(gw)
    assert len(gw.a.children) == 2 and set(links.links) == {"ipsec-b"}
    conf = conf_a.model_copy(deep=True)
    conf.connections["b"].children["routed"] = shared.model_copy(
        update={"interface_kind": None, "interface_name": None, "if_id": None,
                "routes": [], "interface_addresses": []})
    await gw.a.reload(cf.DaemonConf.model_validate(conf.model_dump()))
    await settle(gw)
    await asyncio.sleep(0.2)
    await settle(gw)
    assert set(links.links) == {"ipsec-b"}  # "other" still routes through it
    await gw.a.stop()
    await gw.b.stop()
