"""Kernel faults under the real controller: two IKE stacks on fake kernels whose writes fail
(EEXIST, ESRCH, ENOBUFS, EPERM, ENOMEM, anywhere in a batch) and whose events get lost
(ENOBUFS on the monitor socket), while CHILD_SAs are installed, rekeyed, expired and
deleted. Afterwards each kernel holds exactly the SAs and policies its daemon believes
in: none orphaned, none missing."""

from __future__ import annotations

import asyncio
import errno
import functools
import random
from pathlib import Path

import pytest

from tests.support.consistency import mismatch
from tests.support.gateways import PSK, A, B, Gateways, connection, start_pair, wire
from xfrmctl.daemon import conf as cf
from xfrmctl.daemon import controller
from xfrmctl.daemon.controller import Controller
from xfrmctl.daemon.state import StateFile
from xfrmctl.ike.sa import IkeSa, IkeState
from xfrmctl.kernel.fake import FakeKernel, FaultPlan
from xfrmctl.kernel.interface import OpKind
from xfrmctl.kernel.types import EventsLost
from xfrmctl.port import Target


async def converge(gw: Gateways, seconds: float = 3.0) -> str:
    """Let the daemons repair (resync, retries); '' once both kernels match them."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while True:
        await gw.settle()
        problems = [f"{n}: {m}" for n, c, k in (("a", gw.a, gw.ka), ("b", gw.b, gw.kb))
                    if (m := mismatch(c, k))]
        if not problems or loop.time() > deadline:
            return "; ".join(problems)
        await asyncio.sleep(0.02)


@pytest.fixture(autouse=True)
def _quick(monkeypatch: pytest.MonkeyPatch) -> None:
    """Resync and install retries after milliseconds, not seconds."""
    monkeypatch.setattr(controller, "RESYNC_DELAY", 0.01)
    monkeypatch.setattr(controller, "INSTALL_RETRY", 0.01)


async def _pair(plan_a: FaultPlan, plan_b: FaultPlan) -> Gateways:
    """Two connections (c0, c1) between a and b, on two address pairs."""
    nets = [(A, B, "198.51.100.0/26", "203.0.113.0/26"),
            ("192.0.2.3", "192.0.2.4", "198.51.100.64/26", "203.0.113.64/26")]
    conf_a = cf.DaemonConf(delete_rekeyed_delay=0.05, connections={
        f"c{i}": connection(a, b, lnet, rnet, "start")
        for i, (a, b, lnet, rnet) in enumerate(nets)})
    conf_b = cf.DaemonConf(delete_rekeyed_delay=0.05, connections={
        f"c{i}": connection(b, a, rnet, lnet, psk=PSK)
        for i, (a, b, lnet, rnet) in enumerate(nets)})
    return await start_pair(conf_a, conf_b, kernels=(FakeKernel(faults=plan_a),
                                                     FakeKernel(faults=plan_b)))


async def _step(gw: Gateways, rng: random.Random) -> None:
    """One thing a running gateway does: a rekey, a delete, an expiry, a re-initiation."""
    ctrl, kernel = rng.choice([(gw.a, gw.ka), (gw.b, gw.kb)])
    children = list(ctrl.children.values())
    action = rng.randrange(7)
    if action <= 1 and children:
        child = rng.choice(children)
        with _ignore():
            await ctrl.rekey(Target("child_sa", str(child.event.child_id)))
    elif action == 2 and children:
        with _ignore():
            await ctrl.terminate(Target("child_sa", str(rng.choice(children).event.child_id)))
    elif action == 3:  # time passes: soft expiries (rekeys), or hard ones
        kernel.advance(rng.choice([3300.0, 4000.0]))
    elif action == 4 and ctrl.manager.all():
        with _ignore():
            await ctrl.rekey(Target("ike_sa", str(rng.choice(ctrl.manager.all()).id)))
    elif action == 5:
        await bring_up(gw)
    await gw.settle()


async def bring_up(gw: Gateways) -> None:
    """What an operator's `conn up` does: a connection without an IKE SA is initiated,
    one without a CHILD_SA gets one."""
    a = gw.a
    for record in a.connections.values():
        sas = [sa for sa in a._sas_of(record) if sa.state is IkeState.ESTABLISHED]
        if not a._sas_of(record):
            with _ignore():
                await a.initiate(record.id)
        elif sas and not any(c.event.connection == record.name for c in a.children.values()):
            with _ignore():
                a.manager.act(sas[0], functools.partial(_create_child, now=a.clock()))
                a._flush()


def _create_child(sa: IkeSa, now: float) -> None:
    sa.create_child("lan", now)


class _ignore:
    """An API action on something that just went away is refused: that is fine here."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, *rest: object) -> bool:
        return kind is not None and issubclass(kind, Exception)  # type: ignore[arg-type]


INJECTED: list[int] = []
SEEDS = 24


@pytest.mark.parametrize("seed", range(SEEDS))
async def test_kernel_matches_the_daemon_after_injected_faults(seed: int) -> None:
    plans = (FaultPlan(seed=seed, rate=0.12, lose_events=0.05),
             FaultPlan(seed=seed + 1000, rate=0.12, lose_events=0.05))
    gw = await _pair(*plans)
    rng = random.Random(seed)
    for _ in range(100):
        await _step(gw, rng)
    for plan in plans:
        plan.stop()
    problem = await converge(gw)
    assert not problem, f"seed {seed}: {problem}"
    injected = sum(len(p.injected) for p in plans)
    INJECTED.append(injected)
    assert injected >= 30, injected  # the run did meet faults, of every kind
    assert {code for p in plans for _, _, code in p.injected} >= {
        errno.EEXIST, errno.ESRCH, errno.ENOBUFS, errno.EPERM, errno.ENOMEM}
    assert sum(p.lost_events for p in plans) > 0
    # and the tunnels still work: both connections come (or are) up with a CHILD_SA each
    await bring_up(gw)
    assert not await converge(gw)
    assert {c.event.connection for c in gw.a.children.values()} == {"c0", "c1"}
    spis_a = {c.event.spi_in for c in gw.a.children.values()}
    assert spis_a == {c.event.spi_out for c in gw.b.children.values()}  # the peers agree
    await gw.a.stop(keep_tunnels=False)
    await gw.b.stop(keep_tunnels=False)
    assert not gw.ka.sas and not gw.ka.policies


async def _restart_a(gw: Gateways, state: StateFile, plan: FaultPlan) -> None:
    """Stop a keeping its tunnels and start a new process on the same kernel state (the
    faults go on: the restore itself meets them)."""
    await gw.a.stop()
    kernel = FakeKernel(now=gw.ka.now, sas=dict(gw.ka.sas), policies=dict(gw.ka.policies),
                        faults=plan)
    a2 = Controller(gw.a.conf, kernel, state=state)
    wire(a2, gw.b)
    wire(gw.b, a2)
    gw.a, gw.ka = a2, kernel
    await a2.start()
    await gw.settle()


@pytest.mark.parametrize("seed", range(6))
async def test_restarts_amid_faults_leave_nothing_orphaned(seed: int, tmp_path: Path) -> None:
    plans = (FaultPlan(seed=seed, rate=0.12, lose_events=0.05),
             FaultPlan(seed=seed + 1000, rate=0.12, lose_events=0.05))
    gw = await _pair(*plans)
    state = StateFile(tmp_path / "state.bin", tmp_path / "state.key")
    gw.a.state = state
    rng = random.Random(seed)
    restarts = 0
    for step in range(48):
        await _step(gw, rng)
        if step % 8 == 7:
            await _restart_a(gw, state, plans[0])
            restarts += 1
    for plan in plans:
        plan.stop()
    problem = await converge(gw)
    assert not problem, f"seed {seed}: {problem}"
    assert restarts == 6 and sum(len(p.injected) for p in plans) >= 10
    await bring_up(gw)
    assert not await converge(gw)
    assert {c.event.connection for c in gw.a.children.values()} == {"c0", "c1"}
    await gw.a.stop(keep_tunnels=False)
    await gw.b.stop(keep_tunnels=False)
    assert not gw.ka.sas and not gw.ka.policies


def test_thousands_of_faults_were_injected() -> None:
    """Runs after the seeded runs (file order): together they met over a thousand."""
    if len(INJECTED) < SEEDS:
        pytest.skip("the seeded runs did not all run (selected alone?)")
    assert sum(INJECTED) >= 1000, INJECTED


async def test_a_failure_in_the_middle_of_a_batch_leaves_nothing_half_installed() -> None:
    # the first batch installs both connections' CHILD_SAs: writes 0-1 add c0's SAs, 2-4
    # its policies, 5-9 c1's. Write 2 fails; c1 stays. The undo of c0 (10-13) deletes its
    # policies, then its SAs; the inbound SA's delete (13) fails, and so do both retries
    # (14, 15): that SA is left for the resync to remove.
    plan = FaultPlan(at={2: errno.ENOMEM, 13: errno.ENOBUFS, 14: errno.ENOMEM,
                         15: errno.EPERM})
    gw = await _pair(plan, FaultPlan())
    assert [(n, k) for n, k, _ in plan.injected] == [
        (2, OpKind.ADD_POLICY), (13, OpKind.DELETE_SA), (14, OpKind.DELETE_SA),
        (15, OpKind.DELETE_SA)]
    assert not await converge(gw)
    assert gw.a.failures["KERNEL_INSTALL"] == 1
    # the failed child was negotiated again (back-off) and is up on both ends
    assert {c.event.connection for c in gw.a.children.values()} == {"c0", "c1"}
    assert not gw.a.install_failures
    await gw.a.stop(keep_tunnels=False)
    await gw.b.stop(keep_tunnels=False)


async def test_lost_events_are_resynchronised_by_a_dump() -> None:
    """A hard expire whose event the overrun socket lost: the SA is gone, the daemon
    still believes in its CHILD_SA until EventsLost makes it compare: then it replaces
    the CHILD_SA with the peer."""
    gw = await _pair(FaultPlan(), FaultPlan())
    (child, _) = gw.a.children.values()
    spec = child.install.outbound
    del gw.ka.sas[(spec.dst, spec.spi, spec.proto, spec.mark)]  # expired, event lost
    gw.ka.inject(EventsLost(errno.ENOBUFS))
    assert not await converge(gw)
    assert child.event.spi_in not in gw.a.children  # replaced, on both ends
    assert {c.event.connection for c in gw.a.children.values()} == {"c0", "c1"}
    assert {c.event.spi_in for c in gw.a.children.values()} == \
        {c.event.spi_out for c in gw.b.children.values()}
    await gw.a.stop(keep_tunnels=False)
    await gw.b.stop(keep_tunnels=False)
