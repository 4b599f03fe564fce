"""A restarted daemon answers IKE requests while it restores: a CHILD_SA the peer rekeys in
that window must not be taken for an orphan of the previous process (its SAs deleted)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from tests.support.consistency import mismatch
from tests.support.gateways import pair_with_state, wire
from xfrmctl.daemon.controller import Controller
from xfrmctl.kernel.fake import FakeKernel
from xfrmctl.kernel.types import SaState
from xfrmctl.port import Target


@dataclass
class SlowDumpKernel(FakeKernel):
    """A kernel whose SA dumps take a while (many SAs, a loaded machine): the list is
    what the kernel holds when the dump ends."""

    dump_seconds: float = 0.05

    async def _dump_sas(self) -> list[SaState]:
        await asyncio.sleep(self.dump_seconds)
        return await super()._dump_sas()


async def test_a_rekey_answered_during_the_restore_keeps_its_sas(tmp_path: Path) -> None:
    gw, state = await pair_with_state(tmp_path)
    (old,) = await gw.b.list_child_sas()
    await gw.a.stop()  # keeps the tunnel, saves the state
    kernel = SlowDumpKernel(sas=dict(gw.ka.sas), policies=dict(gw.ka.policies))
    a2 = Controller(gw.a.conf, kernel, state=state)
    wire(a2, gw.b)
    wire(gw.b, a2)
    gw.a, gw.ka = a2, kernel

    async def peer_rekeys_once_restored_sas_are_known() -> None:
        while not a2.manager.all():  # the IKE SA is adopted; orphans not yet removed
            await asyncio.sleep(0)
        await gw.b.rekey(Target("child_sa", old.id))

    rekey = asyncio.create_task(peer_rekeys_once_restored_sas_are_known())
    await a2.start()
    await rekey
    await gw.settle()
    await asyncio.sleep(0.1)
    await gw.settle()
    (new,) = await gw.b.list_child_sas()
    assert new.spi_in != old.spi_in  # the rekey went through
    (mine,) = a2.children.values()
    assert (mine.event.spi_in, mine.event.spi_out) == (new.spi_out, new.spi_in)
    assert not mismatch(a2, kernel), mismatch(a2, kernel)  # its SAs are in the kernel
    assert {e.spec.spi for e in kernel.sas.values()} >= {new.spi_in, new.spi_out}
    await a2.stop(keep_tunnels=False)
    await gw.b.stop(keep_tunnels=False)
