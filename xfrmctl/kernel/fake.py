"""An in-memory kernel with the behaviour (and errnos) of the real XFRM code.

Errnos follow net/xfrm/xfrm_user.c: EEXIST for a duplicate SA or policy, ESRCH for
a missing SA, ENOENT for a missing policy, ENOSYS for an algorithm name the kernel
doesn't know, EINVAL for a key of the wrong size, EPROTONOSUPPORT for an SA of a
protocol the kernel was built without (`missing_protocols`). Time only moves with
`advance()`; traffic only with `account()`; a trap fires with `trigger()`.

Faults: a `FaultPlan` (seeded, so a failing run can be replayed) makes chosen writes
fail, anywhere in a batch, and drops events as a monitor socket overrun does.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import random
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace

from .algorithms import AEAD_ICV_BITS, KERNEL_ALGORITHM_NAMES, KEY_SIZES
from .codec import AE_GET_FLAGS
from .interface import AeState, KernelIPsec, Op, OpKind
from .types import (
    Acquire,
    AddressChange,
    Algorithm,
    Counters,
    Direction,
    EventsLost,
    Expire,
    IPAddress,
    IPNetwork,
    KernelError,
    KernelEvent,
    Mark,
    PolicyKey,
    PolicyNotify,
    PolicySpec,
    PolicyState,
    Proto,
    ReplayState,
    RouteChange,
    SaId,
    SaNotify,
    SaSpec,
    SaState,
    SpdInfo,
    SpdThresholds,
)

SaKey = tuple[IPAddress, int, Proto, Mark | None]
FAULT_ERRNOS = (errno.EEXIST, errno.ESRCH, errno.ENOBUFS, errno.EPERM, errno.ENOMEM)


@dataclass
class FaultPlan:
    """Which kernel writes fail with which errno, and which events get lost.

    Every write (one operation of a batch, counted from 0 in `writes`) fails with
    probability `rate` (if its kind is in `kinds`), with an errno drawn from `errnos`;
    `at` names exact writes and their errno. A failed write changes nothing, except
    that ESRCH/ENOENT on a delete means the object vanished meanwhile (an expire raced
    the delete): it is gone and the error is returned. An event is lost with
    probability `lose_events`; the reader then gets EventsLost(ENOBUFS) in its place,
    as from an overrun netlink socket. `injected` lists (write, kind, errno)."""

    seed: int = 0
    rate: float = 0.0
    errnos: tuple[int, ...] = FAULT_ERRNOS
    kinds: frozenset[OpKind] = frozenset(OpKind)
    at: dict[int, int] = field(default_factory=dict)
    lose_events: float = 0.0
    writes: int = 0
    lost_events: int = 0
    injected: list[tuple[int, OpKind, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._random = random.Random(self.seed)

    def fault(self, op: Op) -> int:
        """The errno this write fails with, or 0."""
        n, self.writes = self.writes, self.writes + 1
        code = self.at.get(n, 0)
        if not code and op.kind in self.kinds and self._random.random() < self.rate:
            code = self._random.choice(self.errnos)
        if code:
            self.injected.append((n, op.kind, code))
        return code

    def lose(self) -> bool:
        lost = self.lose_events > 0 and self._random.random() < self.lose_events
        self.lost_events += lost
        return lost

    def stop(self) -> None:
        """No more faults from now on (the plan's record stays)."""
        self.rate, self.lose_events, self.at = 0.0, 0.0, {}


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
    replay: ReplayState | None = None  # None: the fresh state of the SA's shape
    replay_threshold: int = 2  # net.core.xfrm_aevent_rseqth
    timer_threshold_ms: int = 1000  # net.core.xfrm_aevent_etime (10 x 100 ms)

    def replay_state(self) -> ReplayState:
        if self.replay is not None:
            return self.replay
        spec = self.spec
        if spec.esn or spec.replay_window > 32:  # the kernel keeps xfrm_replay_state_esn
            words = (spec.replay_window + 31) // 32
            return ReplayState(replay_window=spec.replay_window, bitmap=(0,) * words)
        return ReplayState(bitmap=(0,))


@dataclass
class FakeKernel(KernelIPsec):
    now: float = 1_700_000_000.0
    sas: dict[SaKey, _Sa] = field(default_factory=dict)
    policies: dict[PolicyKey, PolicySpec] = field(default_factory=dict)
    thresholds: SpdThresholds = field(default_factory=SpdThresholds)
    fail_on: set[OpKind] = field(default_factory=set)  # force a failure (tests)
    faults: FaultPlan | None = None
    missing_protocols: frozenset[Proto] = frozenset()  # built without ESP (or AH)
    # The namespace's addresses (with their prefix and interface) and routes (destination
    # -> preferred source): what MOBIKE reads; changed with add/delete_address and
    # add/delete_route, which queue the events rtnetlink would send.
    addresses: dict[IPAddress, tuple[int, int]] = field(default_factory=dict)
    routes: dict[IPNetwork, IPAddress] = field(default_factory=dict)
    _queue: asyncio.Queue[KernelEvent] = field(default_factory=asyncio.Queue)
    _next_index: int = 8
    _overrun: bool = False

    def __post_init__(self) -> None:
        KernelIPsec.__init__(self)

    # --- writes ----------------------------------------------------------------------

    async def _execute(self, ops: Sequence[Op]) -> list[tuple[int, str]]:
        return [self._apply(op) for op in ops]

    def _apply(self, op: Op) -> tuple[int, str]:
        if op.kind in self.fail_on:
            return errno.ENOMEM, "injected failure"
        code = self.faults.fault(op) if self.faults is not None else 0
        if code:
            if (op.kind, code) in {(OpKind.DELETE_SA, errno.ESRCH),
                                   (OpKind.DELETE_POLICY, errno.ENOENT)}:
                self._apply_handler(op)  # gone meanwhile
            return code, "injected failure"
        return self._apply_handler(op), ""

    def _apply_handler(self, op: Op) -> int:
        handler = {
            OpKind.ADD_SA: self._add_sa,
            OpKind.UPDATE_SA: self._update_sa,
            OpKind.DELETE_SA: self._delete_sa,
            OpKind.ADD_POLICY: self._add_policy,
            OpKind.UPDATE_POLICY: self._update_policy,
            OpKind.DELETE_POLICY: self._delete_policy,
        }[op.kind]
        return int(handler(op.obj))  # type: ignore[operator]

    def _add_sa(self, sa: SaSpec) -> int:
        if _sa_key(sa.id) in self.sas:
            return errno.EEXIST
        return self._store_sa(sa, "new")

    def _update_sa(self, sa: SaSpec) -> int:
        if _sa_key(sa.id) not in self.sas:
            return errno.ESRCH
        return self._store_sa(sa, "update")

    def _store_sa(self, sa: SaSpec, kind: str) -> int:
        code = errno.EPROTONOSUPPORT if sa.proto in self.missing_protocols else _check_sa(sa)
        if code == 0:
            spec = replace(sa, selector=sa.effective_selector(), replay=None)
            old = self.sas.get(_sa_key(sa.id))
            if kind == "update" and old is not None and not old.larval:
                # UPDSA keeps the SA's state (counters, sequence numbers) and, as the
                # kernel's xfrm_state_update, takes only new encap ports (when both have
                # encap) and lifetimes: never a new source address or encap on/off
                encap = spec.encap if old.spec.encap and spec.encap else old.spec.encap
                spec = replace(old.spec, encap=encap, lifetime=spec.lifetime)
                self.sas[_sa_key(sa.id)] = replace(old, spec=spec)
            else:
                self.sas[_sa_key(sa.id)] = _Sa(spec, self.now, replay=sa.replay)
            self._notify(SaNotify(kind, sa.id, sa.reqid))
        return code

    def _delete_sa(self, sa: SaId) -> int:
        entry = self.sas.pop(_sa_key(sa), None)
        if entry is None:
            return errno.ESRCH
        self._notify(SaNotify("delete", sa, entry.spec.reqid))
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
        self._notify(PolicyNotify(kind, p.key, index))
        return 0

    def _alloc_index(self, direction: Direction) -> int:
        self._next_index += 8
        return self._next_index | int(direction)

    def _delete_policy(self, key: PolicyKey) -> int:
        old = self.policies.pop(key, None)
        if old is None:
            return errno.ENOENT
        self._notify(PolicyNotify("delete", key, old.index))
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

    async def get_ae(self, sa: SaId) -> AeState:
        e = self.sas.get(_sa_key(sa))
        if e is None:
            raise KernelError("get AE", sa, errno.ESRCH)
        return AeState(
            sa=SaId(e.spec.dst, e.spec.spi, e.spec.proto, e.spec.mark),
            src=e.spec.src,
            reqid=e.spec.reqid,
            replay=e.replay_state(),
            lifetime=self._state(e).counters,
            replay_threshold=e.replay_threshold,
            timer_threshold_ms=e.timer_threshold_ms // 100 * 100,
            flags=int(AE_GET_FLAGS),
        )

    async def set_ae(
        self, sa: SaId, replay: ReplayState | None = None, lifetime_cur: Counters | None = None,
        replay_threshold: int | None = None, timer_threshold_ms: int | None = None,
    ) -> None:  # fmt: skip
        given = (replay, lifetime_cur, replay_threshold, timer_threshold_ms)
        if all(v is None for v in given):
            raise KernelError("set AE", sa, errno.EINVAL, "nothing to set")
        e = self.sas.get(_sa_key(sa))
        if e is None:
            raise KernelError("set AE", sa, errno.ESRCH)
        if e.larval:  # not XFRM_STATE_VALID
            raise KernelError("set AE", sa, errno.EINVAL)
        current = e.replay_state()
        if replay is not None:
            if current.replay_window and replay.replay_window:
                if len(replay.bitmap) != len(current.bitmap):  # xfrm_replay_verify_len
                    raise KernelError("set AE", sa, errno.EINVAL, "bitmap length differs")
                if replay.replay_window > 32 * len(replay.bitmap):
                    raise KernelError("set AE", sa, errno.EINVAL, "window exceeds bitmap")
                e.replay = replay
            elif replay.replay_window:
                raise KernelError("set AE", sa, errno.EINVAL, "SA has no ESN replay state")
            elif not current.replay_window:
                e.replay = ReplayState(replay.oseq, replay.seq, bitmap=(replay.bitmap or (0,))[:1])
            # a legacy state given to an ESN SA lands where nobody reads it, as in the kernel
        if lifetime_cur is not None:
            e.bytes, e.packets = lifetime_cur.bytes, lifetime_cur.packets
            e.added, e.used = float(lifetime_cur.add_time), float(lifetime_cur.use_time)
        if replay_threshold is not None:
            e.replay_threshold = replay_threshold
        if timer_threshold_ms is not None:
            e.timer_threshold_ms = timer_threshold_ms

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

    async def source_address(self, dst: IPAddress) -> IPAddress | None:
        """The longest matching route's source, as `ip route get` gives it."""
        found = [(net.prefixlen, src) for net, src in self.routes.items()
                 if dst.version == net.version and dst in net and src in self.addresses]
        return max(found, key=lambda f: f[0])[1] if found else None

    async def local_addresses(self) -> list[IPAddress]:
        return list(self.addresses)

    def add_address(self, address: IPAddress, prefix: int, ifindex: int = 2) -> None:
        """An address appears, with its connected route (as `ip addr add`)."""
        self.addresses[address] = (prefix, ifindex)
        self._notify(AddressChange(True, address, ifindex))
        net = ipaddress.ip_network(f"{address}/{prefix}", strict=False)
        self.routes[net] = address
        self._notify(RouteChange(True))

    def delete_address(self, address: IPAddress) -> None:
        """The address goes, and with it the routes using it as their source."""
        _, ifindex = self.addresses.pop(address)
        self._notify(AddressChange(False, address, ifindex))
        for net in [n for n, src in self.routes.items() if src == address]:
            del self.routes[net]
            self._notify(RouteChange(False))

    def add_route(self, dst: str, src: IPAddress) -> None:
        self.routes[ipaddress.ip_network(dst)] = src
        self._notify(RouteChange(True))

    def delete_route(self, dst: str) -> None:
        del self.routes[ipaddress.ip_network(dst)]
        self._notify(RouteChange(False))

    async def events(self) -> AsyncIterator[KernelEvent]:
        while True:
            event = await self._queue.get()
            if isinstance(event, EventsLost):
                self._overrun = False
            yield event

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

    def account(self, sa: SaId, nbytes: int, packets: int = 1, inbound: bool = False) -> None:
        """Count traffic on an SA; byte/packet limits expire it like time does. Sent
        packets (default) advance its output sequence number, received ones its seq."""
        key = _sa_key(sa)
        e = self.sas[key]
        e.bytes += nbytes
        e.packets += packets
        e.used = self.now
        e.replay = _advance(e.replay_state(), packets, inbound)
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
        self._notify(Expire(e.spec.id, hard, e.spec.reqid, e.spec.src))

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
            self._notify(event)
            return event
        return None

    def outbound_sa(self, src: IPAddress, dst: IPAddress, reqid: int) -> SaSpec | None:
        """The SA a packet of a policy with this template leaves by, as xfrm_state_find
        picks it: of the valid SAs, one not soft-expired (dying) before one that is, then
        the most recently added."""
        candidates = [(not e.soft_fired, e.added, order, e.spec)
                      for order, e in enumerate(self.sas.values())
                      if not e.larval and e.spec.reqid == reqid
                      and (e.spec.src, e.spec.dst) == (src, dst)]
        return max(candidates, key=lambda c: c[:3])[3] if candidates else None

    def inject(self, event: KernelEvent) -> None:
        self._queue.put_nowait(event)

    def _notify(self, event: KernelEvent) -> None:
        """Queue an event for the reader, unless the fault plan loses it (overrun)."""
        if self.faults is None or not self.faults.lose():
            self._queue.put_nowait(event)
        elif not self._overrun:  # one notice per overrun, as the socket gives
            self._overrun = True
            self._queue.put_nowait(EventsLost(errno.ENOBUFS))


def _advance(r: ReplayState, packets: int, inbound: bool) -> ReplayState:
    esn = r.replay_window > 0
    mask = (1 << 64 if esn else 1 << 32) - 1
    if inbound:
        seq = ((r.seq_hi << 32 | r.seq) + packets) & mask
        return replace(r, seq=seq & 0xFFFFFFFF, seq_hi=seq >> 32)
    oseq = ((r.oseq_hi << 32 | r.oseq) + packets) & mask
    return replace(r, oseq=oseq & 0xFFFFFFFF, oseq_hi=oseq >> 32)


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
