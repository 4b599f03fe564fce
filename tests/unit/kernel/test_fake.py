"""What only the fake does: its clock, traffic accounting and trap triggering."""

from __future__ import annotations

import errno
from ipaddress import ip_address

import pytest

from tests.support.kernel_contract import LEFT, RIGHT, child, next_event, policy, sa
from xfrmctl.kernel.fake import FakeKernel
from xfrmctl.kernel.interface import OpKind
from xfrmctl.kernel.types import Acquire, Expire, KernelError, Lifetime, SaNotify


async def test_time_drives_soft_then_hard_expire() -> None:
    kernel = FakeKernel()
    events = kernel.events()
    spec = sa(0xC0000001, lifetime=Lifetime(soft_add_expires_seconds=10,
                                           hard_add_expires_seconds=20))  # fmt: skip
    await kernel.add_sa(spec)
    assert isinstance(await next_event(events, SaNotify), SaNotify)
    kernel.advance(9)
    assert kernel._queue.empty()
    kernel.advance(1)
    assert await next_event(events, Expire) == Expire(spec.id, False, spec.reqid, spec.src)
    kernel.advance(5)
    assert kernel._queue.empty()  # soft fires once
    kernel.advance(5)
    assert await next_event(events, Expire) == Expire(spec.id, True, spec.reqid, spec.src)
    assert await kernel.dump_sas() == []


async def test_traffic_counts_and_byte_limits() -> None:
    kernel = FakeKernel()
    spec = sa(0xC0000002, lifetime=Lifetime(soft_bytes=1000, hard_bytes=2000))
    await kernel.add_sa(spec)
    kernel.account(spec.id, 600, 6)
    assert (await kernel.counters(spec.id)).packets == 6
    kernel.account(spec.id, 600, 6)
    events = kernel.events()
    assert (await next_event(events, Expire)).hard is False  # type: ignore[attr-defined]
    kernel.account(spec.id, 900, 1)
    assert (await next_event(events, Expire)).hard is True  # type: ignore[attr-defined]


async def test_trap_policy_acquire_until_sa_exists() -> None:
    kernel = FakeKernel()
    trap = policy()
    await kernel.add_policy(trap)
    acquire = kernel.trigger(
        ip_address("198.51.100.7"),
        ip_address("203.0.113.7"),
    )
    assert acquire is not None and (acquire.src, acquire.dst) == (LEFT, RIGHT)
    assert await next_event(kernel.events(), Acquire) == acquire
    await kernel.add_sa(sa(0xC0000003))
    assert kernel.trigger(acquire.selector.src.network_address, acquire.selector.dst[5]) is None


async def test_injected_policy_failure_rolls_back_sas() -> None:
    kernel = FakeKernel(fail_on={OpKind.ADD_POLICY})
    c = child(0xC0000011, 0xC0000012)
    with pytest.raises(KernelError) as info:
        await kernel.install_child(c)
    assert info.value.errno == errno.ENOMEM and info.value.op == "add policy"
    assert kernel.sas == {} and kernel.policies == {}
