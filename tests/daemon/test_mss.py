"""TCP MSS clamping (a child's `mss: auto | N | off`): the MTU left after the negotiated
suite's ESP overhead, the nftables rules per child (policy- and route-based), and their
life with the CHILD_SA: shared across a rekey, made before broken on a change, gone with
the tunnel and the daemon, none left after a failed install, taken over after a restart."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import replace

import pytest
from pydantic import ValidationError

from tests.support.fake_links import FakeLinks
from tests.support.gateways import NET_A, NET_B, Gateways, connection, wire
from xfrmctl.daemon import conf as cf
from xfrmctl.daemon.controller import Controller
from xfrmctl.daemon.mss import MssClamps, child_mss, esp_mtu, mss_for
from xfrmctl.ike import ts
from xfrmctl.ike.config import Mode
from xfrmctl.ike.constants import EncrId, IntegId, ProtocolId
from xfrmctl.ike.events import ChildSaNegotiated
from xfrmctl.ike.proposals import Suite
from xfrmctl.kernel.fake import FakeKernel
from xfrmctl.kernel.nft import ClampRule, FakeFirewall, Hook, RuleHandle, Through, rule_expr
from xfrmctl.kernel.types import Expire
from xfrmctl.port import Target

A, B = "192.0.2.1", "192.0.2.2"
GCM16 = Suite(ProtocolId.ESP, EncrId.AES_GCM_16, 128)
CBC_SHA256 = Suite(ProtocolId.ESP, EncrId.AES_CBC, 128, IntegId.HMAC_SHA2_256_128)


def _event(suite: Suite = GCM16, local: str = A, remote: str = B, encap: bool = False,
           mode: Mode = Mode.TUNNEL, lts: Sequence[str] = (NET_A,),
           rts: Sequence[str] = (NET_B,)) -> ChildSaNegotiated:
    return ChildSaNegotiated(
        ike_sa=1, connection="c", child="x", child_id=1, protocol=ProtocolId.ESP, mode=mode,
        spi_in=0xC0000001, spi_out=0xC0000002, local=(local, 4500 if encap else 500),
        remote=(remote, 4500 if encap else 500), local_ts=tuple(map(ts.parse, lts)),
        remote_ts=tuple(map(ts.parse, rts)), suite=suite, encr_key_in=b"",
        integ_key_in=b"", encr_key_out=b"", integ_key_out=b"", encap=encap, rekey_time=0,
        life_time=0)


def _esp_size(inner: int, outer: int, udp: int, iv: int, block: int, icv: int) -> int:
    """An ESP packet's size for an inner packet, from RFC 4303 2 (tunnel mode)."""
    payload = inner + 2
    payload += -payload % block
    return outer + udp + 8 + iv + payload + icv


@pytest.mark.parametrize(("suite", "local", "encap", "iv", "block", "icv"), [
    (GCM16, A, False, 8, 4, 16),
    (GCM16, A, True, 8, 4, 16),
    (GCM16, "2001:db8::1", False, 8, 4, 16),
    (CBC_SHA256, A, False, 16, 16, 16),
    (CBC_SHA256, A, True, 16, 16, 16),
    (Suite(ProtocolId.ESP, EncrId.AES_GCM_8, 256), A, False, 8, 4, 8),
    (Suite(ProtocolId.ESP, EncrId.CHACHA20_POLY1305, 256), A, False, 8, 4, 16),
])
@pytest.mark.parametrize("path", [1500, 1400, 9000])
def test_esp_mtu_is_the_largest_packet_that_fits(suite: Suite, local: str, encap: bool,
                                                 iv: int, block: int, icv: int,
                                                 path: int) -> None:
    remote = "2001:db8::2" if ":" in local else B
    mtu = esp_mtu(_event(suite, local, remote, encap), path)
    outer = 40 if ":" in local else 20
    udp = 8 if encap else 0
    assert _esp_size(mtu, outer, udp, iv, block, icv) <= path
    assert all(_esp_size(mtu + k, outer, udp, iv, block, icv) > path for k in range(1, 20))


def test_known_values_for_a_1500_byte_path() -> None:
    assert esp_mtu(_event(GCM16), 1500) == 1446  # 20 + 8 + 8 + (1446+2) + 16 = 1500
    assert mss_for(1446, 4) == 1406 and mss_for(1446, 6) == 1386
    assert esp_mtu(_event(GCM16, encap=True), 1500) == 1438
    assert esp_mtu(_event(CBC_SHA256), 1500) == 1438  # 1440 is a multiple of 16
    # transport mode keeps the packet's own header in front: no outer header
    assert esp_mtu(_event(GCM16, mode=Mode.TRANSPORT), 1500) == 1466


def test_policy_based_rules_follow_the_selectors_and_ipsec() -> None:
    result = child_mss(_event(lts=(NET_A, "2001:db8:a::/48"), rts=(NET_B, "2001:db8:b::/48")),
                       cf.ChildConf(mss="auto"), 1500)
    assert result.mtu == 1446 and result.mss == {4: 1406, 6: 1386}
    four = [r for r in result.rules if r.version == 4]
    a, b = ipaddress.ip_network(NET_A), ipaddress.ip_network(NET_B)
    assert {(r.hook, r.through, r.src, r.dst, r.mss) for r in four} == {
        (Hook.FORWARD, Through.LEAVING, a, b, 1406),   # towards the tunnel
        (Hook.OUTPUT, Through.LEAVING, a, b, 1406),    # this host's own connections
        (Hook.FORWARD, Through.ARRIVED, b, a, 1406)}   # decrypted SYNs from the far side
    assert len(result.rules) == 6  # no rule mixes IPv4 and IPv6 selectors
    expr = rule_expr(next(r for r in four if r.through is Through.LEAVING))
    assert {"match": {"op": "==", "left": {"rt": {"key": "ipsec"}}, "right": True}} in expr
    assert expr[-1] == {"mangle": {"key": {"tcp option": {"name": "maxseg", "field": "size"}},
                                   "value": 1406}}


def test_route_based_rules_match_the_interface_and_a_fixed_mss() -> None:
    conf = cf.ChildConf(mss=1300, interface_kind="xfrmi", if_id=7, interface_name="ipsec7",
                        mtu=1400)
    result = child_mss(_event(lts=("0.0.0.0/0",), rts=("0.0.0.0/0",)), conf, 1500, "ipsec7")
    assert result.mtu == 1400  # the interface's own MTU is lower than what ESP leaves
    assert result.mss == {4: 1300}
    assert {(r.hook, r.iif, r.oif) for r in result.rules} == {
        (Hook.FORWARD, None, "ipsec7"), (Hook.OUTPUT, None, "ipsec7"),
        (Hook.FORWARD, "ipsec7", None)}
    # auto on an interface the daemon sized itself: its MTU, not what ESP would leave
    auto = child_mss(_event(lts=("0.0.0.0/0",), rts=("0.0.0.0/0",)),
                     cf.ChildConf(mss="auto", interface_kind="xfrmi", if_id=7,
                                  interface_name="ipsec7"), 1500, "ipsec7")
    assert (auto.mtu, auto.mss) == (1440, {4: 1400})  # interface_mtu's worst-case padding


def test_off_and_tcp_free_children_get_no_rules() -> None:
    assert child_mss(_event(), cf.ChildConf(), 1500).rules == ()
    udp = child_mss(_event(lts=(f"{NET_A}[udp]",)), cf.ChildConf(mss="auto"), 1500)
    assert udp.rules == () and udp.mss == {}
    web = child_mss(_event(rts=(f"{NET_B}[tcp/443]",)), cf.ChildConf(mss="auto"), 1500)
    assert len(web.rules) == 3


@pytest.mark.parametrize("value", [100, 70000, "maybe", -1])
def test_bad_mss_is_refused_with_the_field(value: object) -> None:
    with pytest.raises(ValidationError, match="mss"):
        cf.ChildConf(mss=value)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- daemon


class RecordingFirewall(FakeFirewall):
    """Counts the rules after every operation, to see no moment without a clamp."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: list[int] = []

    async def add_rules(self, rules: Sequence[ClampRule]) -> list[RuleHandle]:
        handles = await super().add_rules(rules)
        self.counts.append(len(self.rules))
        return handles

    async def delete_rules(self, handles: Sequence[RuleHandle]) -> None:
        await super().delete_rules(handles)
        self.counts.append(len(self.rules))


def _with_mss(conn: cf.ConnectionConf, mss: str | int, **child: object) -> cf.ConnectionConf:
    lan = conn.children["lan"].model_copy(update={"mss": mss, **child})
    return conn.model_copy(update={"children": {"lan": lan}})


async def _pair(mss: str | int, firewall: FakeFirewall, links: FakeLinks | None = None,
                events: list[tuple[str, dict[str, object]]] | None = None,
                **child: object) -> Gateways:
    conn_a = _with_mss(connection(A, B, NET_A, NET_B, "start"), mss, **child)
    ka, kb = FakeKernel(), FakeKernel()
    a = Controller(cf.DaemonConf(connections={"b": conn_a}), ka, links=links,
                   firewall=firewall)
    b = Controller(cf.DaemonConf(connections={"a": connection(B, A, NET_B, NET_A)}), kb)
    if events is not None:
        a.event_listeners.append(lambda kind, fields: events.append((kind, fields)))
    wire(a, b)
    wire(b, a)
    gw = Gateways(a, b, ka, kb)
    await b.start()
    await a.start()
    await gw.settle()
    return gw


async def test_rules_live_with_the_tunnel_and_its_rekeys() -> None:
    links = FakeLinks(addresses=(A,))
    links.mtu = 1400
    firewall = RecordingFirewall()
    gw = await _pair("auto", firewall, links)
    (child,) = await gw.a.list_child_sas()
    assert (child.mtu, child.mss) == (1346, 1306)  # the outgoing interface's 1400
    ((status,),) = [c.children for c in (await gw.a.status()).connections]
    assert (status.mtu, status.mss) == (1346, 1306)
    assert sorted(r.mss for r in firewall.rules.values()) == [1306] * 3
    before = dict(firewall.rules)
    gw.ka.inject(Expire(next(iter(gw.ka.sas.values())).spec.id, hard=False))
    await gw.settle()
    (rekeyed,) = await gw.a.list_child_sas()
    assert rekeyed.spi_in != child.spi_in
    assert firewall.rules == before  # same suite: the very rules, shared, not re-added
    await gw.a.terminate(Target("connection", "1"))
    await gw.settle()
    assert firewall.rules == {}
    assert 0 not in firewall.counts[:-1]  # never without a clamp while the tunnel was up
    await gw.a.stop()
    await gw.b.stop()
    assert not firewall.table


async def test_no_rules_without_mss_and_none_left_by_stop() -> None:
    firewall = FakeFirewall()
    gw = await _pair("off", firewall)
    (child,) = await gw.a.list_child_sas()
    assert firewall.rules == {} and child.mss is None
    await gw.a.stop()
    await gw.b.stop()
    gw = await _pair(1200, firewall)
    (child,) = await gw.a.list_child_sas()
    assert child.mss == 1200 and len(firewall.rules) == 3
    await gw.a.stop(keep_tunnels=False)
    await gw.b.stop()
    assert firewall.rules == {} and not firewall.table


async def test_a_changed_mss_adds_the_new_rules_before_the_old_go() -> None:
    firewall = RecordingFirewall()
    gw = await _pair("auto", firewall)
    old = set(firewall.rules.values())
    conn = _with_mss(gw.a.conf.connections["b"], 1300)
    await gw.a.reload(gw.a.conf.model_copy(update={"connections": {"b": conn}}))
    await gw.settle()
    assert {r.mss for r in firewall.rules.values()} == {1300}
    assert not old & set(firewall.rules.values())
    # the new rules went in while the old were there: 3 -> 6 -> 3, never 0
    assert firewall.counts[-2:] == [6, 3]
    await gw.a.stop()
    await gw.b.stop()


async def test_a_failed_clamp_keeps_the_tunnel_says_why_and_leaves_nothing() -> None:
    firewall = FakeFirewall()
    firewall.fail = "Could not process rule: No such file or directory"
    events: list[tuple[str, dict[str, object]]] = []
    gw = await _pair("auto", firewall, events=events)
    (child,) = await gw.a.list_child_sas()
    assert child.mss is None and firewall.rules == {} and len(gw.ka.sas) == 2
    (failed,) = [f for k, f in events if k == "MssClampFailed"]
    assert failed["child"] == "lan" and "No such file" in str(failed["reason"])
    await gw.a.stop()
    await gw.b.stop()


async def test_a_new_process_takes_over_the_rules_and_prunes_the_rest() -> None:
    firewall = FakeFirewall()
    first = MssClamps(firewall)
    rules = child_mss(_event(), cf.ChildConf(mss="auto"), 1500).rules
    await first.hold(1, rules)
    stale = replace(rules[0], mss=1000)
    await first.hold(2, [stale])
    kept = dict(firewall.rules)
    second = MssClamps(firewall)  # the next process, after a restart
    await second.start()
    await second.hold(10, rules)
    assert firewall.transactions == 2  # adopted: nothing added again
    await second.prune()
    assert set(firewall.rules.values()) == set(rules)
    assert {h: r for h, r in kept.items() if r in rules} == firewall.rules
    await second.release(10)
    assert firewall.rules == {}
