"""Route-based children: the interface, its addresses and routes come and go with the
connection, and its MTU accounts for the negotiated suite's ESP overhead."""

from __future__ import annotations

from tests.support.fake_links import FakeLinks
from tests.support.gateways import PSK, Gateways, start_pair
from xfrmctl.daemon import conf as cf
from xfrmctl.daemon.install import esp_overhead
from xfrmctl.ike.config import Mode
from xfrmctl.ike.constants import EncrId, IntegId, ProtocolId
from xfrmctl.ike.events import ChildSaNegotiated
from xfrmctl.ike.proposals import Suite

A, B = "192.0.2.1", "192.0.2.2"


def _conn(local: str, remote: str, child: cf.ChildConf, start: str) -> cf.ConnectionConf:
    return cf.ConnectionConf(local_addrs=[local], remote_addrs=[remote], psk=PSK,  # type: ignore[arg-type]
                             start_action=start, children={"routed": child})  # type: ignore[arg-type]


async def _pair(child_a: cf.ChildConf) -> tuple[Gateways, FakeLinks]:
    links = FakeLinks()
    any_ts = {"local_ts": ["0.0.0.0/0"], "remote_ts": ["0.0.0.0/0"]}
    gw = await start_pair(
        cf.DaemonConf(connections={"b": _conn(A, B, child_a, "start")}),
        cf.DaemonConf(connections={"a": _conn(B, A, cf.ChildConf(**any_ts), "none")}), links)
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
