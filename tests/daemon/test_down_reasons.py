"""Why is it down: per child on both ends, unmatched peers, connections that cannot load,
the CHILD_SA state after a rekey, and timers on a monotonic clock."""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from tests.support.gateways import A, B, Gateways, connection, make, start_pair, wire
from tests.support.pki import Credential, make_ca, make_cert
from xfrmctl.daemon import conf as cf
from xfrmctl.daemon.controller import Controller
from xfrmctl.daemon.state import StateFile
from xfrmctl.ike.constants import ProtocolId
from xfrmctl.ike.proposals import parse_proposals
from xfrmctl.kernel.fake import FakeKernel
from xfrmctl.kernel.interface import OpKind
from xfrmctl.kernel.types import Expire
from xfrmctl.port import ChildStatus, ConnectionState, DownReason

NET_A, NET_B = "198.51.100.0/24", "203.0.113.0/24"


async def _pair(conn_a: cf.ConnectionConf, conn_b: cf.ConnectionConf,
                kernels: tuple[FakeKernel, FakeKernel] | None = None) -> Gateways:
    return await start_pair(cf.DaemonConf(connections={"site-b": conn_a}),
                            cf.DaemonConf(connections={"site-a": conn_b}), kernels=kernels)


async def _child(c: Controller) -> ChildStatus:
    (status,) = (await c.status()).connections
    (child,) = status.children
    return child


async def _stop(gw: Gateways) -> None:
    await gw.a.stop()
    await gw.b.stop()


async def test_refused_selectors_show_the_child_down_on_both_ends(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "xfrmctl.daemon")
    gw = await _pair(connection(A, B, NET_A, "203.0.113.128/25", "start"),
                     connection(B, A, "192.0.2.128/25", NET_A))
    for c in (gw.a, gw.b):
        (status,) = (await c.status()).connections
        assert status.state is ConnectionState.UP  # the IKE_SA is up ...
        child = await _child(c)  # ... but its child is not, and says why
        assert (child.state, child.reason) == (ConnectionState.DOWN,
                                                DownReason.TS_UNACCEPTABLE)
    a_detail = (await _child(gw.a)).detail
    assert (a_detail["local_ts"], a_detail["remote_ts"]) == ([NET_A], ["203.0.113.128/25"])
    b_detail = (await _child(gw.b)).detail
    assert "192.0.2.128/25" in str(b_detail["ours"]) and NET_A in str(b_detail["theirs"])
    refusal = next(r.getMessage() for r in caplog.records
                   if "TS_UNACCEPTABLE" in r.getMessage() and r.name == "xfrmctl.daemon"
                   and "192.0.2.128/25" in r.getMessage())
    assert NET_A in refusal and "203.0.113.128/25" in refusal  # both sides' selectors
    assert not gw.ka.sas and not gw.kb.sas
    await _stop(gw)


async def test_refused_proposals_show_the_child_down_on_the_initiator() -> None:
    conn_b = connection(B, A, NET_B, NET_A)
    conn_b.children["lan"] = conn_b.children["lan"].model_copy(
        update={"esp_proposals": "aes256-sha256"})
    gw = await _pair(connection(A, B, NET_A, NET_B, "start"), conn_b)
    child = await _child(gw.a)
    assert (child.state, child.reason) == (ConnectionState.DOWN,
                                            DownReason.NO_PROPOSAL_CHOSEN)
    assert (await _child(gw.b)).reason is DownReason.NO_PROPOSAL_CHOSEN
    await _stop(gw)


async def test_failed_kernel_install_shows_the_child_down_with_the_error() -> None:
    gw = await make(kernels=(FakeKernel(fail_on={OpKind.ADD_POLICY}), FakeKernel()))
    child = await _child(gw.a)
    assert (child.state, child.reason) == (ConnectionState.DOWN,
                                            DownReason.KERNEL_INSTALL_FAILED)
    assert child.detail["message"]
    await _stop(gw)


async def test_an_established_child_is_up_with_its_sa() -> None:
    gw = await make()
    child = await _child(gw.a)
    assert child.state is ConnectionState.UP and child.reason is None
    (sa,) = await gw.a.list_child_sas()
    assert child.child_sa_ids == (sa.id,)
    # what `sa list` shows: the suite in proposal keywords, the reqid, the last packet
    assert sa.proposal == "aes128gcm16"  # no DH: the first CHILD_SA comes with IKE_AUTH
    assert sa.traffic.last_used_at is None
    assert sa.reqid == next(iter(gw.ka.sas.values())).spec.reqid
    (ike,) = await gw.a.list_ike_sas()
    assert ike.prf is not None and ike.prf.startswith("PRF_HMAC_SHA2_")
    assert ike.proposal is not None and "-prfsha" in ike.proposal
    gw.ka.now = 1_800_000_000.0
    gw.ka.account(next(e.spec.id for e in gw.ka.sas.values() if e.spec.spi == sa.spi_out), 100)
    (sa,) = await gw.a.list_child_sas()
    assert sa.traffic.last_used_at is not None
    assert sa.traffic.last_used_at.timestamp() == 1_800_000_000
    await _stop(gw)


async def test_unmatched_ike_sa_init_is_answered_counted_logged_and_shown(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "xfrmctl.daemon")
    seen: list[tuple[str, dict[str, object]]] = []
    # b only knows a peer at 192.0.2.99: a's IKE_SA_INIT from 192.0.2.1 matches nothing
    gw = await _pair(connection(A, B, NET_A, NET_B),
                     connection(B, "192.0.2.99", NET_B, NET_A))
    gw.b.event_listeners.append(lambda kind, fields: seen.append((kind, fields)))
    await gw.a.initiate(1)
    await gw.settle()
    (a_status,) = (await gw.a.status()).connections
    assert a_status.reason is DownReason.NO_PROPOSAL_CHOSEN  # b answered
    status = await gw.b.status()
    assert status.counters.failures == {"NO_MATCHING_CONFIG": 1}
    (failure,) = status.unmatched
    assert failure.reason is DownReason.NO_MATCHING_CONFIG
    assert (failure.remote, failure.local) == (f"{A}:500", f"{B}:500")
    assert [f["remote"] for k, f in seen if k == "UnmatchedPeer"] == [f"{A}:500"]
    assert any(A in r.getMessage() and B in r.getMessage() and
               "NO_MATCHING_CONFIG" in r.getMessage() for r in caplog.records)
    await gw.a.initiate(1)  # again: counted and kept, but not logged again at once
    await gw.settle()
    assert len((await gw.b.status()).unmatched) == 2
    assert [k for k, _ in seen] == ["UnmatchedPeer"]  # one event, not one per datagram
    assert f"from {A}:500 to {B}:500" in str(seen[0][1]["message"])
    await _stop(gw)


async def test_unmatched_identity_is_shown_with_the_addresses() -> None:
    conn_b = connection(B, A, NET_B, NET_A, remote_id="other.example")
    second = connection(B, A, NET_B, NET_A, remote_id="third.example")
    gw = await start_pair(
        cf.DaemonConf(connections={"site-b": connection(A, B, NET_A, NET_B, "start",
                                                        local_id="a.example")}),
        cf.DaemonConf(connections={"x": conn_b, "y": second}))
    (failure,) = (await gw.b.status()).unmatched
    assert failure.reason is DownReason.NO_MATCHING_CONFIG
    # IKE_AUTH (where the identity is) comes from port 4500: the initiator wants MOBIKE
    # (the default), which moves it there after IKE_SA_INIT (RFC 4555 3.3)
    assert failure.remote == f"{A}:4500" and "a.example" in failure.message
    await _stop(gw)


async def test_a_connection_that_cannot_load_says_why_and_the_others_load(
        tmp_path: Path) -> None:
    missing = tmp_path / "nope.psk"
    broken = cf.ConnectionConf(local_addrs=[A], remote_addrs=["192.0.2.9"],
                               psk_file=missing)
    conf = cf.DaemonConf(connections={"site-b": connection(A, B, NET_A, NET_B),
                                      "broken": broken})
    controller = Controller(conf, FakeKernel())
    status = await controller.status()
    assert [c.connection_id for c in status.connections] == [controller.connections[
        "site-b"].id]
    assert str(missing) in status.not_loaded["broken"]
    assert "No such file" in status.not_loaded["broken"]
    missing.write_text("a test-only psk\n")
    await controller.start()
    await controller.reload(conf)
    assert "broken" in controller.connections and not (await controller.status()).not_loaded
    await controller.stop()


async def test_a_failed_rekey_leaves_the_child_installed_not_rekeying() -> None:
    gw = await make()
    # b changes its ESP proposals: a's rekey is refused, the old CHILD_SA stays
    (sa_b,) = gw.b.manager.all()
    (child_b,) = sa_b.children.values()
    child_b.config = replace(child_b.config, proposals=parse_proposals(
        "aes256-sha512-modp4096", ProtocolId.ESP))
    assert sa_b.config is not None  # a rekey answers with the child's current configuration
    sa_b.config = replace(sa_b.config, children=(child_b.config,))
    (old,) = await gw.a.list_child_sas()
    gw.ka.inject(Expire(next(iter(gw.ka.sas.values())).spec.id, hard=False))
    await gw.settle()
    (child,) = await gw.a.list_child_sas()
    assert child.spi_in == old.spi_in
    assert child.state == "INSTALLED"
    assert (await _child(gw.a)).state is ConnectionState.UP
    await _stop(gw)


def _pubkey(local: str, remote: str, lnet: str, rnet: str, cred: Credential,
            ca: Credential, start: str = "none") -> cf.ConnectionConf:
    key = cred.key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()).decode()
    return connection(local, remote, lnet, rnet, start, auth="pubkey", psk=None,
                      certificate_pem=cred.cert.public_bytes(Encoding.PEM).decode(),
                      private_key_pem=key, ca_pem=[ca.cert.public_bytes(Encoding.PEM).decode()])


async def test_timers_on_a_monotonic_clock_certificates_and_display_on_the_wall_clock(
        ) -> None:
    """The IKE core runs on a monotonic clock far from the wall-clock time: a wall-clock
    step moves no deadline, certificates are still checked at the real time, and the
    times shown are wall-clock times."""
    ca = make_ca()
    mono, wall = [1000.0], [time.time()]
    conf_a = cf.DaemonConf(connections={"site-b": _pubkey(
        A, B, NET_A, NET_B, make_cert(ca, "a", sans=[A]), ca, "start")})
    conf_b = cf.DaemonConf(connections={"site-a": _pubkey(
        B, A, NET_B, NET_A, make_cert(ca, "b", sans=[B]), ca)})
    ka, kb = FakeKernel(), FakeKernel()
    a = Controller(conf_a, ka, clock=lambda: mono[0], wall_clock=lambda: wall[0])
    b = Controller(conf_b, kb, clock=lambda: mono[0], wall_clock=lambda: wall[0])
    wire(a, b)
    wire(b, a)
    gw = Gateways(a, b, ka, kb)
    await b.start()
    await a.start()
    await gw.settle()
    assert len(ka.sas) == 2, (await a.status()).connections  # certificates were valid
    (ike,) = await a.list_ike_sas()
    deadline = a.manager.get_timer()
    assert ike.established_at is not None
    assert ike.established_at.timestamp() == pytest.approx(wall[0])
    wall[0] += 86400.0  # the wall clock steps a day forward
    assert a.manager.get_timer() == deadline  # no deadline moved
    assert Controller(conf_b, FakeKernel()).clock is time.monotonic  # how the daemon runs
    await _stop(gw)


async def test_saved_deadlines_keep_their_distance_across_a_reboot(tmp_path: Path) -> None:
    """The monotonic clock restarts with the machine: a restored IKE_SA's rekey deadline
    is moved by the wall-clock time that passed, not left on the old boot's clock."""
    mono, wall = [50_000.0], [1_800_000_000.0]
    conf_a = cf.DaemonConf(connections={"site-b": connection(A, B, NET_A, NET_B, "start")})
    conf_b = cf.DaemonConf(connections={"site-a": connection(B, A, NET_B, NET_A)})
    state = StateFile(tmp_path / "state.bin", tmp_path / "state.key")
    ka, kb = FakeKernel(), FakeKernel()
    a = Controller(conf_a, ka, clock=lambda: mono[0], wall_clock=lambda: wall[0], state=state)
    a.boot_id = lambda: "boot-1"
    b = Controller(conf_b, kb)
    wire(a, b)
    wire(b, a)
    await b.start()
    await a.start()
    await Gateways(a, b, ka, kb).settle()
    (sa,) = a.manager.all()
    assert sa.rekey_deadline is not None
    left = sa.rekey_deadline - mono[0]
    await a.stop()  # keeps the tunnels, saves the state
    mono[0], wall[0] = 30.0, wall[0] + 100.0  # rebooted: 100 s later, a new monotonic clock
    a2 = Controller(conf_a, FakeKernel(sas=dict(ka.sas), policies=dict(ka.policies)),
                    clock=lambda: mono[0], wall_clock=lambda: wall[0], state=state)
    a2.boot_id = lambda: "boot-2"
    wire(a2, b)
    wire(b, a2)
    await a2.start()
    (restored,) = a2.manager.all()
    assert restored.rekey_deadline is not None
    assert restored.rekey_deadline - mono[0] == pytest.approx(left - 100.0)
    (ike,) = await a2.list_ike_sas()
    assert ike.established_at is not None
    assert ike.established_at.timestamp() == pytest.approx(wall[0] - 100.0)
    await a2.stop(keep_tunnels=False)
    await b.stop()
