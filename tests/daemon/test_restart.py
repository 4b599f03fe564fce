"""A restarted daemon takes its tunnels back: no SA is dropped, the peer notices nothing."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from tests.support.gateways import (
    PSK,
    Gateways,
    connection,
    pair_with_state,
    wire,
)
from xfrmctl.daemon import conf as cf
from xfrmctl.daemon.controller import Controller
from xfrmctl.daemon.state import StateFile
from xfrmctl.kernel.fake import FakeKernel
from xfrmctl.port import Target

A, B = "192.0.2.1", "192.0.2.2"


async def _restart_a(gw: Gateways, state: StateFile, *,
                     drop: frozenset[int] = frozenset()) -> Controller:
    """Stop a (keeping tunnels), then start a new controller on the same kernel state."""
    await gw.a.stop()
    survivors = {k: v for k, v in gw.ka.sas.items() if v.spec.spi not in drop}
    kernel = FakeKernel(sas=survivors, policies=dict(gw.ka.policies))
    a2 = Controller(gw.a.conf, kernel, state=state)
    wire(a2, gw.b)
    wire(gw.b, a2)
    gw.a, gw.ka = a2, kernel
    await a2.start()
    await gw.settle()
    return a2


async def test_restart_keeps_the_tunnel_and_the_ike_sa(tmp_path: Path) -> None:
    gw, state = await pair_with_state(tmp_path)
    (child,) = await gw.a.list_child_sas()
    (ike,) = await gw.a.list_ike_sas()
    sas_before = {e.spec.spi for e in gw.ka.sas.values()}
    a2 = await _restart_a(gw, state)
    assert {e.spec.spi for e in gw.ka.sas.values()} == sas_before  # nothing reinstalled
    (child2,) = await a2.list_child_sas()
    (ike2,) = await a2.list_ike_sas()
    assert (child2.spi_in, child2.spi_out) == (child.spi_in, child.spi_out)
    assert (ike2.spi_i, ike2.spi_r, ike2.state) == (ike.spi_i, ike.spi_r, "ESTABLISHED")
    assert not state.path.read_bytes().count(b"sk_") and b"encr_key" not in \
        state.path.read_bytes()  # encrypted at rest
    # The restored IKE SA works with the peer: rekey the child through it.
    await a2.rekey(Target("child_sa", child2.id))
    await gw.settle()
    (child3,) = await a2.list_child_sas()
    (peer_child,) = await gw.b.list_child_sas()
    assert child3.spi_in != child.spi_in and peer_child.spi_out == child3.spi_in
    # the peer's inbound SA of the replaced CHILD_SA lingers (delete_rekeyed_delay)
    assert {e.spec.spi for e in gw.kb.sas.values()} == \
        {child3.spi_in, child3.spi_out, child.spi_out}
    await a2.stop(keep_tunnels=False)
    await gw.b.stop()
    assert not gw.ka.sas and not gw.ka.policies and not state.path.exists()


async def test_lost_child_is_renegotiated_and_orphans_removed(tmp_path: Path) -> None:
    gw, state = await pair_with_state(tmp_path)
    (child,) = await gw.a.list_child_sas()
    template = next(iter(gw.ka.sas.values())).spec
    orphan = replace(template, spi=0xC0FFEE01, reqid=template.reqid + 99)
    await gw.ka.add_sa(orphan)
    a2 = await _restart_a(gw, state, drop=frozenset({child.spi_in, child.spi_out}))
    (new,) = await a2.list_child_sas()
    assert new.spi_in != child.spi_in
    spis = {e.spec.spi for e in gw.ka.sas.values()}
    assert spis == {new.spi_in, new.spi_out} and orphan.spi not in spis
    assert {e.spec.spi for e in gw.kb.sas.values()} == spis  # peer replaced it too
    await a2.stop(keep_tunnels=False)
    await gw.b.stop()


async def test_connection_removed_while_down_is_cleaned_up(tmp_path: Path) -> None:
    gw, state = await pair_with_state(tmp_path)
    await gw.a.stop()
    kernel = FakeKernel(sas=dict(gw.ka.sas), policies=dict(gw.ka.policies))
    a2 = Controller(cf.DaemonConf(connections={"other": connection(
        A, "192.0.2.9", "198.51.100.0/25", "203.0.113.0/25", psk=PSK)}), kernel, state=state)
    await a2.start()
    assert not kernel.sas and not kernel.policies
    await a2.stop(keep_tunnels=False)
    await gw.b.stop(keep_tunnels=False)
