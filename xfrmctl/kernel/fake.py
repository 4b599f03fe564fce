"""An in-memory kernel with the behaviour (and errnos) of the real XFRM code.

Errnos follow net/xfrm/xfrm_user.c: EEXIST for a duplicate SA or policy, ESRCH for
a missing SA, ENOENT for a missing policy, ENOSYS for an algorithm name the kernel
doesn't know, EINVAL for a key of the wrong size. Time only moves with `advance()`;
traffic only with `account()`; a trap fires with `trigger()`.
"""

from __future__ import annotations

import asyncio
import errno
import random
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace

from .algorithms import KERNEL_ALGORITHM_NAMES
from .interface import KernelIPsec, Op, OpKind
from .types import (
    Acquire,
    Algorithm,
    Counters,
    Direction,
    Expire,
    IPAddress,
    KernelError,
    KernelEvent,
    Mark,
    PolicyKey,
    PolicyNotify,
    PolicySpec,
    PolicyState,
    Proto,
    SaId,
    SaNotify,
    SaSpec,
    SaState,
    SpdInfo,
    SpdThresholds,
)

# Key sizes (bytes) the crypto API accepts, by kernel algorithm name.
KEY_SIZES: dict[str, frozenset[int]] = {
    "rfc4106(gcm(aes))": frozenset({20, 28, 36}),
    "rfc4309(ccm(aes))": frozenset({19, 27, 35}),
    "rfc4543(gcm(aes))": frozenset({20, 28, 36}),
    "rfc7539esp(chacha20,poly1305)": frozenset({36}),
    "cbc(aes)": frozenset({16, 24, 32}),
    "rfc3686(ctr(aes))": frozenset({20, 28, 36}),
    "cbc(des3_ede)": frozenset({24}),
    "ecb(cipher_null)": frozenset({0}),
}
AEAD_ICV_BITS = frozenset({64, 96, 128})

SaKey = tuple[IPAddress, int, Proto, Mark | None]


def _sa_key(sa: SaId) -> SaKey:
    return sa.dst, sa.spi, sa.proto, sa.mark


@dataclass
class _Sa:
    spec: SaSpec
    added: float
    bytes: int = 0
    packets: int = 0
    used: float = 0.0
    soft_fired: bool = False
    larval: bool = False


@dataclass
class FakeKernel(KernelIPsec):
    now: float = 1_700_000_000.0
    sas: dict[SaKey, _Sa] = field(default_factory=dict)
    policies: dict[PolicyKey, PolicySpec] = field(default_factory=dict)
    thresholds: SpdThresholds = field(default_factory=SpdThresholds)
    fail_on: set[OpKind] = field(default_factory=set)  # force a failure (tests)
    _queue: asyncio.Queue[KernelEvent] = field(default_factory=asyncio.Queue)
    _next_index: int = 8

    def __post_init__(self) -> None:
        KernelIPsec.__init__(self)

    # --- writes ----------------------------------------------------------------------

    async def _execute(self, ops: Sequence[Op]) -> list[tuple[int, str]]:
        return [self._apply(op) for op in ops]

    def _apply(self, op: Op) -> tuple[int, str]:
        if op.kind in self.fail_on:
            return errno.ENOMEM, "injected failure"
        handler = {
            OpKind.ADD_SA: self._add_sa,
            OpKind.UPDATE_SA: self._update_sa,
            OpKind.DELETE_SA: self._delete_sa,
            OpKind.ADD_POLICY: self._add_policy,
            OpKind.UPDATE_POLICY: self._update_policy,
            OpKind.DELETE_POLICY: self._delete_policy,
        }[op.kind]
        return handler(op.obj), ""  # type: ignore[operator]

    def _add_sa(self, sa: SaSpec) -> int:
        if _sa_key(sa.id) in self.sas:
            return errno.EEXIST
        return self._store_sa(sa, "new")

    def _update_sa(self, sa: SaSpec) -> int:
        if _sa_key(sa.id) not in self.sas:
            return errno.ESRCH
        return self._store_sa(sa, "update")

    def _store_sa(self, sa: SaSpec, kind: str) -> int:
        code = _check_sa(sa)
        if code == 0:
            self.sas[_sa_key(sa.id)] = _Sa(replace(sa, selector=sa.effective_selector()), self.now)
            self._queue.put_nowait(SaNotify(kind, sa.id, sa.reqid))
        return code

    def _delete_sa(self, sa: SaId) -> int:
        entry = self.sas.pop(_sa_key(sa), None)
        if entry is None:
            return errno.ESRCH
        self._queue.put_nowait(SaNotify("delete", sa, entry.spec.reqid))
        return 0

    def _add_policy(self, p: PolicySpec) -> int:
        if p.key in self.policies:
            return errno.EEXIST
        return self._store_policy(p, "new")

    def _update_policy(self, p: PolicySpec) -> int:
        return self._store_policy(p, "update")  # UPDPOLICY creates when absent, as the kernel

    def _store_policy(self, p: PolicySpec, kind: str) -> int:
        old = self.policies.get(p.key)
        index = old.index if old is not None else self._alloc_index(p.direction)
        self.policies[p.key] = replace(p, index=index)
        self._queue.put_nowait(PolicyNotify(kind, p.key, index))
        return 0

    def _alloc_index(self, direction: Direction) -> int:
        self._next_index += 8
        return self._next_index | int(direction)

    def _delete_policy(self, key: PolicyKey) -> int:
        old = self.policies.pop(key, None)
        if old is None:
            return errno.ENOENT
        self._queue.put_nowait(PolicyNotify("delete", key, old.index))
        return 0

    async def _allocate_spi(
        self, src: IPAddress, dst: IPAddress, proto: Proto, reqid: int, lo: int, hi: int,
        mark: Mark | None,
    ) -> int:  # fmt: skip
        for _ in range(64):
            spi = random.randint(lo, hi)
            key = (dst, spi, proto, mark)
            if key not in self.sas:
                larval = SaSpec(src, dst, spi, reqid, proto, mark=mark)
                self.sas[key] = _Sa(larval, self.now, larval=True)
                return spi
        raise KernelError("allocate SPI", f"{lo:#x}-{hi:#x}", errno.ENOENT)

    # --- reads -----------------------------------------------------------------------

    async def get_sa(self, sa: SaId) -> SaState:
        entry = self.sas.get(_sa_key(sa))
        if entry is None:
            raise KernelError("get SA", sa, errno.ESRCH)
        return self._state(entry)

    def _state(self, e: _Sa) -> SaState:
        counters = Counters(e.bytes, e.packets, int(e.added), int(e.used))
        return SaState(e.spec, counters)

    async def _dump_sas(self) -> list[SaState]:
        return [self._state(e) for e in self.sas.values() if not e.larval]

    async def _dump_policies(self) -> list[PolicyState]:
        return [PolicyState(p) for p in self.policies.values()]

    async def get_spdinfo(self) -> SpdInfo:
        count = {d: sum(1 for k in self.policies if k.direction == d) for d in Direction}
        return SpdInfo(
            count[Direction.IN], count[Direction.OUT], count[Direction.FWD],
            thresholds=self.thresholds,
        )  # fmt: skip

    async def set_spdinfo(self, thresholds: SpdThresholds) -> None:
        if thresholds.v4_local > 32 or thresholds.v4_remote > 32:
            raise KernelError("set spdinfo", thresholds, errno.EINVAL)
        if thresholds.v6_local > 128 or thresholds.v6_remote > 128:
            raise KernelError("set spdinfo", thresholds, errno.EINVAL)
        self.thresholds = thresholds

    async def events(self) -> AsyncIterator[KernelEvent]:
        while True:
            yield await self._queue.get()

    async def close(self) -> None:
        pass

    # --- driving the fake ----------------------------------------------------------

    def advance(self, seconds: float) -> None:
        """Let time pass: SAs past their soft/hard add-lifetime expire (hard deletes)."""
        self.now += seconds
        for key, e in list(self.sas.items()):
            lft = e.spec.lifetime
            age = self.now - e.added
            if lft.hard_add_expires_seconds and age >= lft.hard_add_expires_seconds:
                self._expire(key, e, hard=True)
            elif lft.soft_add_expires_seconds and age >= lft.soft_add_expires_seconds:
                self._expire(key, e, hard=False)

    def account(self, sa: SaId, nbytes: int, packets: int = 1) -> None:
        """Count traffic on an SA; byte/packet limits expire it like time does."""
        key = _sa_key(sa)
        e = self.sas[key]
        e.bytes += nbytes
        e.packets += packets
        e.used = self.now
        lft = e.spec.lifetime
        if e.bytes >= lft.hard_bytes or e.packets >= lft.hard_packets:
            self._expire(key, e, hard=True)
        elif e.bytes >= lft.soft_bytes or e.packets >= lft.soft_packets:
            self._expire(key, e, hard=False)

    def _expire(self, key: SaKey, e: _Sa, hard: bool) -> None:
        if hard:
            del self.sas[key]
        elif e.soft_fired:
            return
        e.soft_fired = True
        self._queue.put_nowait(Expire(e.spec.id, hard, e.spec.reqid, e.spec.src))

    def trigger(self, src: IPAddress, dst: IPAddress, proto: int = 0) -> Acquire | None:
        """A packet src -> dst leaves: if an outbound policy with a template matches
        and no SA for it exists, queue (and return) an ACQUIRE, as a trap does."""
        for p in sorted(self.policies.values(), key=lambda p: p.priority):
            sel = p.selector
            if p.direction != Direction.OUT or not p.templates:
                continue
            if src not in sel.src or dst not in sel.dst or sel.proto not in (0, proto):
                continue
            t = p.templates[0]
            if any(e.spec.reqid == t.reqid and not e.larval for e in self.sas.values()):
                return None
            event = Acquire(
                t.src or src, t.dst or dst, t.proto, t.reqid, sel, p.direction, p.index,
                if_id=p.if_id,
            )  # fmt: skip
            self._queue.put_nowait(event)
            return event
        return None

    def inject(self, event: KernelEvent) -> None:
        self._queue.put_nowait(event)


def _check_sa(sa: SaSpec) -> int:
    algos: list[Algorithm] = [a for a in (sa.aead, sa.crypt, sa.auth) if a is not None]
    needed = sa.aead or sa.crypt if sa.proto == Proto.ESP else sa.auth
    if needed is None:
        return errno.EINVAL
    for a in algos:
        if a.name not in KERNEL_ALGORITHM_NAMES:
            return errno.ENOSYS
        sizes = KEY_SIZES.get(a.name)
        if sizes is not None and len(a.key) not in sizes:
            return errno.EINVAL
    if sa.aead is not None and sa.aead.icv_bits not in AEAD_ICV_BITS:
        return errno.EINVAL
    if sa.encap is not None and sa.proto != Proto.ESP:
        return errno.EINVAL
    return 0
