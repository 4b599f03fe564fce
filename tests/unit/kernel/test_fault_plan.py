"""The fake kernel's fault injection: seeded and replayable, a failed write changes
nothing (a delete answered ESRCH means the SA went meanwhile), lost events become one
EventsLost per overrun, and the kernel layer's resync puts things right afterwards."""

from __future__ import annotations

import errno

import pytest

from tests.support.kernel_contract import LEFT, child, sa
from xfrmctl.kernel.fake import FakeKernel, FaultPlan
from xfrmctl.kernel.interface import OpKind
from xfrmctl.kernel.types import EventsLost, KernelError, Proto, SaNotify


async def _run(seed: int) -> list[tuple[int, OpKind, int]]:
    kernel = FakeKernel(faults=FaultPlan(seed=seed, rate=0.3))
    for i in range(20):
        await kernel.install_children([child(0xC0000100 + 2 * i, 0xC0000101 + 2 * i)])
    assert kernel.faults is not None
    return kernel.faults.injected


async def test_a_seed_replays_the_same_faults() -> None:
    first = await _run(7)
    assert first == await _run(7) and first != await _run(8)
    assert {code for _, _, code in first} <= {errno.EEXIST, errno.ESRCH, errno.ENOBUFS,
                                              errno.EPERM, errno.ENOMEM}


async def test_a_failed_write_changes_nothing_and_is_rolled_back() -> None:
    kernel = FakeKernel(faults=FaultPlan(at={3: errno.EPERM}))  # the second policy
    with pytest.raises(KernelError) as failed:
        await kernel.install_child(child(0xC0000001, 0xC0000002))
    assert failed.value.errno == errno.EPERM and failed.value.op == "add policy"
    assert not kernel.sas and not kernel.policies  # undone: both SAs, the first policy


async def test_esrch_on_delete_means_the_sa_went_meanwhile() -> None:
    kernel = FakeKernel()
    await kernel.add_sa(sa(0xC0000005))
    kernel.faults = FaultPlan(at={0: errno.ESRCH})
    with pytest.raises(KernelError) as gone:  # as the kernel answers a delete that raced
        await kernel.delete_sa(sa(0xC0000005).id)
    assert gone.value.errno == errno.ESRCH and not kernel.sas


async def test_lost_events_give_one_events_lost_per_overrun() -> None:
    kernel = FakeKernel(faults=FaultPlan(lose_events=1.0))
    for spi in (0xC0000007, 0xC0000008, 0xC0000009):
        await kernel.add_sa(sa(spi))
    events = kernel.events()
    assert await anext(events) == EventsLost(errno.ENOBUFS)
    assert kernel.faults is not None and kernel.faults.lost_events == 3
    kernel.faults.stop()
    await kernel.add_sa(sa(0xC000000A))
    assert isinstance(await anext(events), SaNotify)  # read again: events flow


async def test_a_kernel_without_esp_refuses_esp_sas() -> None:
    kernel = FakeKernel(missing_protocols=frozenset({Proto.ESP}))
    with pytest.raises(KernelError) as refused:
        await kernel.add_sa(sa(0xC000000B))
    assert refused.value.errno == errno.EPROTONOSUPPORT
    assert refused.value.hint == "the kernel has no ESP support: modprobe esp4 (CONFIG_INET_ESP)"


async def test_resync_removes_orphans_and_restores_held_policies() -> None:
    kernel = FakeKernel()
    kept, orphan = child(0xC0000011, 0xC0000012), sa(0xC0000013, dst=LEFT)
    await kernel.install_child(kept)
    await kernel.add_sa(orphan)
    lost = kept.policies[1]
    del kernel.policies[lost.key]  # gone behind our back
    keep = {(s.dst, s.spi, s.proto) for s in (kept.inbound, kept.outbound)}
    result = await kernel.resync(keep | {(LEFT, 0xC00000FF, Proto.ESP)}, kept.policies)
    assert (result.sas_removed, result.policies_removed, result.policies_restored) == (1, 0, 1)
    assert result.missing_sas == {(LEFT, 0xC00000FF, Proto.ESP)}
    assert {k[1] for k in kernel.sas} == {0xC0000011, 0xC0000012}
    assert set(kernel.policies) == {p.key for p in kept.policies}
    # and when a write of the resync fails, it says so (to be called again)
    await kernel.add_sa(orphan)
    kernel.faults = FaultPlan(at={0: errno.ENOMEM})
    with pytest.raises(KernelError):
        await kernel.resync(keep, kept.policies)
    kernel.faults.stop()
    assert (await kernel.resync(keep, kept.policies)).sas_removed == 1
