"""A fake kernel whose netlink batches are slow, and a check that no packet would be lost."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from tests.support.gateways import Gateways
from xfrmctl.kernel.fake import FakeKernel
from xfrmctl.kernel.interface import Op
from xfrmctl.kernel.types import Direction


class SlowKernel(FakeKernel):
    """A FakeKernel whose netlink batches take `delay` seconds, checked after each."""

    delay: float = 0.0
    after: Callable[[], None] | None = None

    async def _execute(self, ops: Sequence[Op]) -> list[tuple[int, str]]:
        await asyncio.sleep(self.delay)
        results = await super()._execute(ops)
        if self.after is not None:
            self.after()
        return results


def unreachable(src: FakeKernel, dst: FakeKernel) -> list[str]:
    """Outbound SAs of `src` that `dst` does not have inbound: a packet sent now is lost."""
    inbound = {(e.spec.dst, e.spec.spi) for e in dst.sas.values() if not e.larval}
    lost = []
    for policy in src.policies.values():
        if policy.direction is not Direction.OUT or not policy.templates:
            continue
        t = policy.templates[0]
        assert t.src is not None and t.dst is not None
        sa = src.outbound_sa(t.src, t.dst, t.reqid)
        if sa is not None and (sa.dst, sa.spi) not in inbound:
            lost.append(f"{sa.src} -> {sa.dst} on SPI {sa.spi:08x}")
    return lost


async def settle_slow(gw: Gateways) -> None:
    """Until both job queues stay idle across a round trip of slow kernel work."""
    for _ in range(10):
        await gw.settle()
        await asyncio.sleep(0.05)
        if gw.a._jobs_idle.is_set() and gw.b._jobs_idle.is_set():
            await gw.settle()
            return
