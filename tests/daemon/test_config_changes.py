"""Configuration changes applied to running tunnels lose no packet (make-before-break).

Two controllers on fake kernels, as in test_rekey_no_loss.py: after every netlink batch on
either side, (1) whatever each side would send on is installed inbound at the peer, and
(2) the traffic that the tunnel carries before and after the change is carried at that
moment too: on the sender an OUT policy matches it and has an SA, on the receiver that SA
is installed and a FWD policy of the same reqid accepts the decrypted packet.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from pathlib import Path

import pytest

from tests.support.gateways import PSK, A, B, Gateways, start_pair
from tests.support.slow_kernel import SlowKernel, settle_slow, unreachable
from xfrmctl.daemon import conf as cf
from xfrmctl.daemon.controller import Controller
from xfrmctl.kernel.fake import FakeKernel
from xfrmctl.kernel.types import Action, Direction

LINGER = 0.5
LAN_A, LAN_B = "198.51.100.0/24", "203.0.113.0/24"
HOST_A, HOST_B = "198.51.100.10", "203.0.113.10"  # a flow carried before and after
ESP = "aes128gcm16-x25519"


def _child(local: str, remote: str, esp: str = ESP, **kw: object) -> cf.ChildConf:
    return cf.ChildConf(local_ts=[local], remote_ts=[remote], esp_proposals=esp, **kw)  # type: ignore[arg-type]


def _conn(local: str, remote: str, children: dict[str, cf.ChildConf], start: str,
          **kw: object) -> cf.ConnectionConf:
    return cf.ConnectionConf(local_addrs=[local], remote_addrs=[remote], psk=PSK,
                             start_action=start, children=children, **kw)  # type: ignore[arg-type]


def confs(children_a: dict[str, cf.ChildConf], children_b: dict[str, cf.ChildConf],
          **kw: object) -> tuple[cf.DaemonConf, cf.DaemonConf]:
    return (cf.DaemonConf(delete_rekeyed_delay=LINGER, connections={
                "site-b": _conn(A, B, children_a, "start", **kw)}),
            cf.DaemonConf(delete_rekeyed_delay=LINGER, connections={
                "site-a": _conn(B, A, children_b, "none", **kw)}))


def _mirror(children: dict[str, cf.ChildConf]) -> dict[str, cf.ChildConf]:
    return {n: c.model_copy(update={"local_ts": c.remote_ts, "remote_ts": c.local_ts})
            for n, c in children.items()}


def carried(src: FakeKernel, dst: FakeKernel, flow: tuple[str, str]) -> str | None:
    """Why a packet of `flow` (an ICMP echo, say: no ports) sent now by `src` would not
    reach `dst`'s LAN (None: it would)."""
    s, d = map(ipaddress.ip_address, flow)

    def best(kernel: FakeKernel, direction: Direction) -> object:
        matching = [p for p in kernel.policies.values() if p.direction is direction
                    and s in p.selector.src and d in p.selector.dst
                    and p.selector.proto in (0, socket.IPPROTO_ICMP)]
        return min(matching, key=lambda p: p.priority) if matching else None

    out = best(src, Direction.OUT)
    if out is None or not out.templates:  # type: ignore[attr-defined]
        return f"{flow}: no OUT policy"
    if out.action is Action.BLOCK:  # type: ignore[attr-defined]
        return f"{flow}: blocked by {out}"
    t = out.templates[0]  # type: ignore[attr-defined]
    sa = src.outbound_sa(t.src, t.dst, t.reqid)
    if sa is None:
        return f"{flow}: OUT policy without an SA (reqid {t.reqid})"
    inbound = next((e.spec for e in dst.sas.values() if not e.larval
                    and (e.spec.dst, e.spec.spi) == (sa.dst, sa.spi)), None)
    if inbound is None:
        return f"{flow}: sent on SPI {sa.spi:08x}, not installed at the peer"
    fwd = best(dst, Direction.FWD)
    if fwd is None or not any(tt.reqid == inbound.reqid for tt in fwd.templates):  # type: ignore[attr-defined]
        return f"{flow}: decrypted by SPI {sa.spi:08x} but no FWD policy of its reqid"
    return None


async def watched(conf_a: cf.DaemonConf, conf_b: cf.DaemonConf, slow: str,
                  flows: list[tuple[str, str]]) -> tuple[Gateways, list[str]]:
    ka, kb = SlowKernel(), SlowKernel()
    (ka if slow == "a" else kb).delay = 0.02
    gw = await start_pair(conf_a, conf_b, kernels=(ka, kb))
    await settle_slow(gw)
    assert len(ka.sas) == len(kb.sas) == 2 * len(conf_a.connections["site-b"].children)
    losses: list[str] = []

    def check() -> None:
        losses.extend(unreachable(ka, kb) + unreachable(kb, ka))
        for f in flows:
            losses.extend(w for w in (carried(ka, kb, f), carried(kb, ka, f[::-1])) if w)

    ka.after = kb.after = check
    check()
    assert losses == []
    return gw, losses


def ike_ids(c: Controller) -> set[int]:
    return {sa.id for sa in c.manager.all()}


def exchanges(c: Controller) -> list[str]:
    out: list[str] = []
    c.event_listeners.append(lambda kind, fields: out.append(kind))
    return out


async def apply(gw: Gateways, conf_a: cf.DaemonConf, conf_b: cf.DaemonConf) -> None:
    """The responder's configuration first (a passive end waits for the initiator),
    then the initiator's."""
    await gw.b.reload(conf_b)
    await settle_slow(gw)
    await gw.a.reload(conf_a)
    await settle_slow(gw)


async def stop(gw: Gateways) -> None:
    await gw.a.stop()
    await gw.b.stop()


LAN = {"lan": _child(LAN_A, LAN_B)}


async def test_a_local_setting_touches_nothing() -> None:
    a, b = confs(LAN, _mirror(LAN))
    gw, losses = await watched(a, b, "b", [(HOST_A, HOST_B)])
    before = (ike_ids(gw.a), set(gw.ka.sas), set(gw.kb.sas))
    events = exchanges(gw.a) + exchanges(gw.b)
    a2, b2 = confs(LAN, _mirror(LAN), dpd_delay=7, close_action="start")
    await apply(gw, a2, b2)
    assert (ike_ids(gw.a), set(gw.ka.sas), set(gw.kb.sas)) == before
    assert events == [] and losses == []
    (sa,) = gw.a.manager.all()
    assert sa.config is not None and sa.config.dpd_delay == 7  # taken at once
    await stop(gw)


@pytest.mark.parametrize("slow", ["a", "b"])
async def test_a_protocol_limited_child_beside_a_whole_one_blocks_none_of_its_traffic(
        slow: str) -> None:
    """A UDP-only child on the same subnets has a fence (drop, not clear text, for the
    subnets' other traffic) with the very key of the whole child's OUT policy: the
    kernel keeps the whole child's policy, the fence only after that child is gone."""
    a, b = confs(LAN, _mirror(LAN))
    gw, losses = await watched(a, b, slow, [(HOST_A, HOST_B)])
    both = {**LAN, "udp": _child(f"{LAN_A}[udp]", f"{LAN_B}[udp]")}
    await apply(gw, *confs(both, _mirror(both)))
    assert sorted(c.event.child for c in gw.a.children.values()) == ["lan", "udp"]
    # (the new child's own first packets may be lost, as in the case below)
    assert [w for w in losses if str((HOST_A, HOST_B)) in w
            or str((HOST_B, HOST_A)) in w] == []
    assert carried(gw.ka, gw.kb, (HOST_A, HOST_B)) is None
    udp = {"udp": both["udp"]}  # the whole child goes: now the fence holds the key
    await apply(gw, *confs(udp, _mirror(udp)))
    await asyncio.sleep(LINGER + 0.1)
    await settle_slow(gw)
    assert "blocked" in (carried(gw.ka, gw.kb, (HOST_A, HOST_B)) or "")
    await stop(gw)


@pytest.mark.parametrize("slow", ["a", "b"])
async def test_a_new_child_is_a_create_child_sa_on_the_running_ike_sa(slow: str) -> None:
    a, b = confs(LAN, _mirror(LAN))
    gw, losses = await watched(a, b, slow, [(HOST_A, HOST_B)])
    ike = ike_ids(gw.a)
    more = {**LAN, "dmz": _child("198.51.100.64/26", "192.0.2.128/26")}
    await apply(gw, *confs(more, _mirror(more)))
    assert ike_ids(gw.a) == ike  # the same IKE SA
    assert sorted(c.event.child for c in gw.a.children.values()) == ["dmz", "lan"]
    assert sorted(c.event.child for c in gw.b.children.values()) == ["dmz", "lan"]
    assert len(gw.ka.sas) == len(gw.kb.sas) == 4
    assert carried(gw.ka, gw.kb, ("198.51.100.70", "192.0.2.130")) is None
    # The running child lost nothing. (The new child's own first packets may leave the
    # responder before the initiator installed it: IKEv2 has no signal for that, and
    # that traffic was not carried by any SA before.)
    dmz = {f"{spi:08x}" for c in gw.b.children.values() if c.event.child == "dmz"
           for spi in (c.event.spi_in, c.event.spi_out)}
    assert [w for w in losses if not any(spi in w for spi in dmz)] == []
    await stop(gw)


async def test_a_removed_child_is_a_child_sa_delete_only() -> None:
    two = {**LAN, "dmz": _child("198.51.100.64/26", "192.0.2.128/26")}
    a, b = confs(two, _mirror(two))
    gw, losses = await watched(a, b, "b", [(HOST_A, HOST_B)])
    ike = ike_ids(gw.a)
    lan_spis = {c.event.spi_in for c in gw.a.children.values() if c.event.child == "lan"}
    dmz = {f"{spi:08x}" for c in gw.a.children.values() if c.event.child == "dmz"
           for spi in (c.event.spi_in, c.event.spi_out)}
    await apply(gw, *confs(LAN, _mirror(LAN)))
    assert ike_ids(gw.a) == ike
    assert {c.event.spi_in for c in gw.a.children.values()} == lan_spis  # lan untouched
    assert len(gw.ka.sas) == len(gw.kb.sas) == 2
    assert carried(gw.ka, gw.kb, ("198.51.100.70", "192.0.2.130")) is not None  # gone
    # nothing lost on lan (dmz's own packets in flight while it is deleted may be)
    assert [w for w in losses if not any(spi in w for spi in dmz)] == []
    await stop(gw)


@pytest.mark.parametrize("slow", ["a", "b"])
@pytest.mark.parametrize("change", ["proposals", "selectors", "proposals-and-replay-window"])
async def test_a_changed_child_is_replaced_new_before_old(slow: str, change: str) -> None:
    a, b = confs(LAN, _mirror(LAN))
    gw, losses = await watched(a, b, slow, [(HOST_A, HOST_B)])
    ike = ike_ids(gw.a)
    (old,) = gw.a.children.values()
    new = {"selectors": {"lan": _child(LAN_A, "203.0.113.0/25")},
           "proposals": {"lan": _child(LAN_A, LAN_B, "aes256gcm16-x25519")},
           "proposals-and-replay-window": {"lan": _child(LAN_A, LAN_B, "aes256gcm16-ecp256",
                                                replay_window=128)}}[change]
    await apply(gw, *confs(new, _mirror(new)))
    assert ike_ids(gw.a) == ike  # the IKE SA stays
    (now,) = gw.a.children.values()
    assert now.event.spi_in != old.event.spi_in
    assert now.event.rekey_of == old.event.spi_in  # a rekey with the new configuration
    if change == "selectors":
        assert [str(t) for t in now.event.remote_ts] != [str(t) for t in old.event.remote_ts]
        assert carried(gw.ka, gw.kb, (HOST_A, "203.0.113.200")) is not None  # left out
    else:
        assert now.event.suite.encr_bits == 256
    await asyncio.sleep(LINGER + 0.1)
    await settle_slow(gw)
    assert len(gw.ka.sas) == len(gw.kb.sas) == 2  # the old ones (and their lingering) gone
    assert len([p for p in gw.ka.policies.values() if p.direction is Direction.OUT]) == 1
    assert losses == []
    assert gw.a._rekeys == gw.b._rekeys == {}
    await stop(gw)


@pytest.mark.parametrize("slow", ["a", "b"])
async def test_new_ike_proposals_rekey_the_ike_sa_children_untouched(slow: str) -> None:
    a, b = confs(LAN, _mirror(LAN))
    gw, losses = await watched(a, b, slow, [(HOST_A, HOST_B)])
    (old,) = gw.a.manager.all()
    spis = (set(gw.ka.sas), set(gw.kb.sas))
    await apply(gw, *confs(LAN, _mirror(LAN), ike_proposals="aes256gcm16-prfsha256-ecp384"))
    (new,) = gw.a.manager.all()
    assert new.id != old.id and new.suite is not None and new.suite.encr_bits == 256
    assert (set(gw.ka.sas), set(gw.kb.sas)) == spis  # the CHILD_SAs moved over as they are
    (child,) = gw.a.children.values()
    assert child.event.ike_sa == new.id
    assert losses == []
    await stop(gw)


@pytest.mark.parametrize("slow", ["a", "b"])
@pytest.mark.parametrize("change", [{"local_id": "@gw-a.example"},
                                    {"local_id": "@gw-a.example",
                                     "ike_proposals": "aes256gcm16-prfsha384-ecp384"},
                                    # a new PRF: peers key such a rekey differently
                                    {"ike_proposals": "aes256gcm16-prfsha384-ecp384"}],
                         ids=["identity", "identity-and-proposals", "new-prf"])
async def test_an_ike_change_reauthenticates_make_before_break(
        slow: str, change: dict[str, object]) -> None:
    a, b = confs(LAN, _mirror(LAN))
    gw, losses = await watched(a, b, slow, [(HOST_A, HOST_B)])
    (old,) = gw.a.manager.all()
    a2, b2 = confs(LAN, _mirror(LAN))
    a2 = cf.DaemonConf(delete_rekeyed_delay=LINGER, connections={
        "site-b": a2.connections["site-b"].model_copy(update=change)})
    peer_change = {{"local_id": "remote_id"}.get(k, k): v for k, v in change.items()}
    b2 = cf.DaemonConf(delete_rekeyed_delay=LINGER, connections={
        "site-a": b2.connections["site-a"].model_copy(update=peer_change)})
    await apply(gw, a2, b2)
    (new,) = gw.a.manager.all()
    assert new.id != old.id and new.state.name == "ESTABLISHED"
    (peer,) = gw.b.manager.all()
    assert peer.spi_i == new.spi_i
    if "ike_proposals" in change:
        assert new.suite is not None and new.suite.encr_bits == 256
    if "local_id" in change:
        assert str(peer.remote_id) == "gw-a.example"
    (child,) = gw.a.children.values()
    assert child.event.ike_sa == new.id
    await asyncio.sleep(LINGER + 0.1)
    await settle_slow(gw)
    assert len(gw.ka.sas) == len(gw.kb.sas) == 2
    assert losses == []
    assert gw.a._reauths == {} and gw.b._rekeys == {}
    await stop(gw)


@pytest.mark.parametrize("slow", ["a", "b"])
async def test_reauth_time_reauthenticates_make_before_break(slow: str) -> None:
    a, _ = confs(LAN, _mirror(LAN), reauth_time=2)
    _, b = confs(LAN, _mirror(LAN))
    gw, losses = await watched(a, b, slow, [(HOST_A, HOST_B)])
    (old,) = gw.a.manager.all()
    assert old.config is not None and old.config.reauth_time == 2
    (info,) = await gw.a.list_ike_sas()
    assert info.reauth_at is not None and info.expire_at is not None
    assert 1.7 < info.reauth_at.timestamp() - gw.a.wall_clock() <= 2.0
    assert info.expire_at > info.reauth_at
    await asyncio.sleep(2.2)  # reauth_time, less up to 10%
    await settle_slow(gw)
    (new,) = gw.a.manager.all()
    assert new.id != old.id and new.state.name == "ESTABLISHED"
    (child,) = gw.a.children.values()
    assert child.event.ike_sa == new.id
    assert losses == []
    await stop(gw)


async def test_mark_masks_reach_the_sas_and_policies() -> None:
    lan = {"lan": _child(LAN_A, LAN_B, mark_in=0x100, mark_in_mask=0xF00,
                         mark_out=0x20, mark_out_mask=0xF0)}
    a, b = confs(lan, _mirror(LAN))
    gw, _ = await watched(a, b, "b", [])
    (child,) = gw.a.children.values()
    out = next(e.spec for e in gw.ka.sas.values() if e.spec.spi == child.event.spi_out)
    assert out.mark is not None and (out.mark.value, out.mark.mask) == (0x20, 0xF0)
    marks = {p.direction: (p.mark.value, p.mark.mask) for p in gw.ka.policies.values()
             if p.mark is not None}
    assert marks == {Direction.OUT: (0x20, 0xF0), Direction.IN: (0x100, 0xF00),
                     Direction.FWD: (0x100, 0xF00)}
    await stop(gw)


@pytest.mark.parametrize("mode", ["tunnel", "transport"])
async def test_tfc_padding_only_to_a_peer_that_takes_it(mode: str) -> None:
    hosts = {"lan": cf.ChildConf(mode=mode, tfc_padding=512,  # type: ignore[arg-type]
                                 esp_proposals=ESP)}
    a, b = confs(hosts, hosts)
    gw = await start_pair(a, b)
    await settle_slow(gw)
    (child,) = gw.a.children.values()
    out = next(e.spec for e in gw.ka.sas.values() if e.spec.spi == child.event.spi_out)
    # in transport mode the peer said ESP_TFC_PADDING_NOT_SUPPORTED
    assert out.tfcpad == (512 if mode == "tunnel" else 0)
    await stop(gw)


async def test_a_mode_change_is_a_new_child_sa_then_the_old_deleted() -> None:
    """A rekey cannot change the mode: a new CHILD_SA is made, then the old one deleted."""
    hosts = {"lan": cf.ChildConf(esp_proposals=ESP)}
    a, b = confs(hosts, hosts)
    gw = await start_pair(a, b)
    await settle_slow(gw)
    ike = ike_ids(gw.a)
    (old,) = gw.a.children.values()
    transport = {"lan": cf.ChildConf(esp_proposals=ESP, mode="transport")}  # type: ignore[arg-type]
    await apply(gw, *confs(transport, transport))
    assert ike_ids(gw.a) == ike
    (new,) = gw.a.children.values()
    assert new.event.mode.value == "transport" and new.event.rekey_of is None
    assert new.predecessor == old.event.spi_in  # installed before the old one went
    await asyncio.sleep(LINGER + 0.1)
    await settle_slow(gw)
    assert len(gw.ka.sas) == len(gw.kb.sas) == 2
    await stop(gw)


async def test_a_psk_file_rewritten_in_place_reauthenticates(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Same path, new content: the running IKE SA is replaced by one authenticated with
    the new PSK (make-before-break); neither the PSK nor its digest reaches the log."""
    caplog.set_level(logging.DEBUG)
    path_a, path_b = tmp_path / "a.psk", tmp_path / "b.psk"
    old_psk, new_psk = "test-only old psk, 32 characters!", "test-only new psk, rotated today"
    path_a.write_text(old_psk + "\n")
    path_b.write_text(old_psk + "\n")

    def from_files() -> tuple[cf.DaemonConf, cf.DaemonConf]:
        a, b = confs(LAN, _mirror(LAN))
        return tuple(  # type: ignore[return-value]
            cf.DaemonConf(delete_rekeyed_delay=LINGER, connections={
                name: conn.model_copy(update={"psk": None, "psk_file": path})
                for name, conn in c.connections.items()})
            for c, path in ((a, path_a), (b, path_b)))

    a, b = from_files()
    gw, losses = await watched(a, b, "b", [(HOST_A, HOST_B)])
    (old,) = gw.a.manager.all()
    path_a.write_text(new_psk + "\n")
    path_b.write_text(new_psk + "\n")
    await apply(gw, *from_files())
    (new,) = gw.a.manager.all()
    assert new.id != old.id and new.state.name == "ESTABLISHED"
    for controller in (gw.a, gw.b):
        (record,) = controller.connections.values()
        assert record.ike.local_auth.psk == new_psk.encode()
        (sa,) = controller.manager.all()
        assert sa.config.local_auth.psk == new_psk.encode()  # what it authenticated with
    (child,) = gw.a.children.values()
    assert child.event.ike_sa == new.id
    await asyncio.sleep(LINGER + 0.1)
    await settle_slow(gw)
    assert losses == [] and len(gw.ka.sas) == len(gw.kb.sas) == 2
    digest = cf.credential_digest(gw.a.connections["site-b"].conf)
    assert digest is not None
    for secret in (old_psk, new_psk, digest):
        assert secret not in caplog.text
    assert "new credential file content" in caplog.text
    # an unchanged file changes nothing
    await apply(gw, *from_files())
    assert [sa.id for sa in gw.a.manager.all()] == [new.id]
    await stop(gw)
