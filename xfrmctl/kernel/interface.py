"""`KernelIPsec`: the only way the daemon reaches the kernel's SAD/SPD.

Implementations (`netlink.NetlinkKernel`, `fake.FakeKernel`) supply a handful of
primitives: a batch executor (`_execute`: ordered operations in, one errno each
out), lookups, dumps and the event queue. Everything with policy in it lives here,
once, so both behave the same:

- Ownership: the daemon's SAs and policy templates carry a reqid in
  [REQID_MIN, REQID_MAX] (types.py). Dumps return only those entries; nothing is
  ever flushed, and a policy that exists in the kernel but is not ours is reported
  as EEXIST and left alone.
- Policies are reference counted by their kernel identity (selector, direction,
  mark, if_id): two CHILD_SAs sharing a selector during a rekey each hold a
  reference; the newest spec is the one installed; the last release deletes it.
- `install_child` is transactional: the SAs and policies of one CHILD_SA go down in
  one batch; if any fails, what succeeded is undone and KernelError is raised.
- An SPI reserved with `allocate_spi` is filled by UPDSA (the kernel holds a larval
  SA for it), any other SA is added with NEWSA.
"""

from __future__ import annotations

import contextlib
import errno
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum

from .modules import missing_support
from .types import (
    REQID_MAX,
    REQID_MIN,
    Action,
    ChildInstall,
    Counters,
    IPAddress,
    KernelError,
    KernelEvent,
    Mark,
    PolicyKey,
    PolicySpec,
    PolicyState,
    Proto,
    ReplayState,
    SaId,
    SaSpec,
    SaState,
    SpdInfo,
    SpdThresholds,
    owns_reqid,
)

SPI_MIN = 0xC0000000
SPI_MAX = 0xCFFFFFFF


class OpKind(Enum):
    ADD_SA = "add SA"
    UPDATE_SA = "update SA"
    DELETE_SA = "delete SA"
    ADD_POLICY = "add policy"
    UPDATE_POLICY = "update policy"
    DELETE_POLICY = "delete policy"


@dataclass(frozen=True)
class Op:
    """One kernel write. `obj` is a SaSpec, SaId, PolicySpec or PolicyKey."""

    kind: OpKind
    obj: SaSpec | SaId | PolicySpec | PolicyKey

    def error(self, code: int, detail: str = "") -> KernelError:
        obj = self.obj.id if isinstance(self.obj, SaSpec) else self.obj
        if isinstance(obj, PolicySpec):
            obj = obj.key
        error = KernelError(self.kind.value, obj, code, detail)
        if isinstance(self.obj, SaSpec):
            error.hint = missing_support(self.obj, code)
        return error


@dataclass
class _Step:
    """An op, how to undo it, and the bookkeeping to keep once the batch succeeded."""

    op: Op
    undo: Op | None
    commit: Callable[[], None] = field(default=lambda: None)


@dataclass(frozen=True)
class AeState:
    """An SA's async-event state (GETAE): its replay state and current lifetime.

    `replay` comes in one of two shapes, as the kernel keeps it: the legacy
    xfrm_replay_state (replay_window 0, one bitmap word) or, for ESN SAs and
    windows over 32, xfrm_replay_state_esn (replay_window > 0, the whole bitmap).
    Thresholds are None when not asked for; the timer one is in ms (100 ms steps)."""

    sa: SaId
    src: IPAddress | None
    reqid: int
    replay: ReplayState
    lifetime: Counters
    replay_threshold: int | None = None
    timer_threshold_ms: int | None = None
    flags: int = 0

    @property
    def esn_format(self) -> bool:
        return self.replay.replay_window > 0

    @property
    def oseq64(self) -> int:
        return self.replay.oseq_hi << 32 | self.replay.oseq


def _sa_key(sa: SaId) -> tuple[IPAddress, int, Proto]:
    return sa.dst, sa.spi, sa.proto


class KernelIPsec(ABC):
    def __init__(self) -> None:
        self._policy_refs: dict[PolicyKey, list[PolicySpec]] = {}
        self._larval: set[tuple[IPAddress, int, Proto]] = set()

    # --- primitives every implementation provides -----------------------------------

    @abstractmethod
    async def _execute(self, ops: Sequence[Op]) -> list[tuple[int, str]]:
        """Apply `ops` in order (all are attempted); (errno or 0, detail) for each."""

    @abstractmethod
    async def _allocate_spi(
        self, src: IPAddress, dst: IPAddress, proto: Proto, reqid: int, lo: int, hi: int,
        mark: Mark | None,
    ) -> int: ...  # fmt: skip

    @abstractmethod
    async def get_sa(self, sa: SaId) -> SaState:
        """The SA with its counters; KernelError(ESRCH) when absent."""

    @abstractmethod
    async def _dump_sas(self) -> list[SaState]: ...

    @abstractmethod
    async def _dump_policies(self) -> list[PolicyState]: ...

    @abstractmethod
    async def get_spdinfo(self) -> SpdInfo: ...

    @abstractmethod
    async def set_spdinfo(self, thresholds: SpdThresholds) -> None: ...

    @abstractmethod
    async def get_ae(self, sa: SaId) -> AeState:
        """GETAE: the SA's replay state and current lifetime; KernelError(ESRCH) when
        absent."""

    @abstractmethod
    async def set_ae(
        self, sa: SaId, replay: ReplayState | None = None, lifetime_cur: Counters | None = None,
        replay_threshold: int | None = None, timer_threshold_ms: int | None = None,
    ) -> None:  # fmt: skip
        """NEWAE: overwrite what is given (e.g. restore an outbound sequence number after
        a restart). `replay` must have the SA's shape (see AeState); nothing given, or a
        larval SA: EINVAL; a missing SA: ESRCH."""

    @abstractmethod
    def events(self) -> AsyncIterator[KernelEvent]:
        """Kernel events (ACQUIRE, EXPIRE, ..., and AddressChange/RouteChange when opened
        to watch addresses) in the order they arrived."""

    # --- addresses and routes (MOBIKE) -----------------------------------------------

    @abstractmethod
    async def source_address(self, dst: IPAddress) -> IPAddress | None:
        """The address the kernel sends from towards `dst` (`ip route get`'s src); None
        when there is no route."""

    @abstractmethod
    async def local_addresses(self) -> list[IPAddress]:
        """The usable addresses of this namespace (no loopback, link-local, tentative)."""

    @abstractmethod
    async def close(self) -> None: ...

    # --- SAs -------------------------------------------------------------------------

    async def allocate_spi(
        self, src: IPAddress, dst: IPAddress, proto: Proto = Proto.ESP, reqid: int = REQID_MIN,
        spi_min: int = SPI_MIN, spi_max: int = SPI_MAX, mark: Mark | None = None,
    ) -> int:  # fmt: skip
        """Reserve an inbound SPI (dst is our address); fill it with add_sa."""
        spi = await self._allocate_spi(src, dst, proto, reqid, spi_min, spi_max, mark)
        self._larval.add((dst, spi, proto))
        return spi

    async def add_sa(self, sa: SaSpec) -> None:
        await self._run([self._add_sa_step(sa)])

    async def update_sa(self, sa: SaSpec) -> None:
        _check_owned(sa)
        await self._run([_Step(Op(OpKind.UPDATE_SA, sa), None)])

    async def delete_sa(self, sa: SaId) -> None:
        await self._run([_Step(Op(OpKind.DELETE_SA, sa), None, self._forget_larval(sa))])

    async def counters(self, sa: SaId) -> Counters:
        return (await self.get_sa(sa)).counters

    async def dump_sas(self) -> list[SaState]:
        """Our SAs only (reqid in the owned range)."""
        return [s for s in await self._dump_sas() if owns_reqid(s.spec.reqid)]

    # --- policies --------------------------------------------------------------------

    async def dump_policies(self) -> list[PolicyState]:
        """Our policies: all templates in the owned range, or template-less ones this
        instance installed (those are not recognised after a restart)."""
        return [p for p in await self._dump_policies() if self._owned_policy(p.spec)]

    def _owned_policy(self, spec: PolicySpec) -> bool:
        return spec.owned() or (not spec.templates and spec.key in self._policy_refs)

    def policy_refcount(self, key: PolicyKey) -> int:
        return len(self._policy_refs.get(key, ()))

    async def add_policy(self, policy: PolicySpec) -> None:
        await self._run([self._add_policy_step(policy)])

    async def add_policies(self, policies: Sequence[PolicySpec]) -> list[KernelError | None]:
        """add_policy for many, in one batch; each succeeds or fails on its own."""
        planned: dict[PolicyKey, list[PolicySpec]] = {}
        steps = [self._add_policy_step(p, planned) for p in policies]
        results = await self._execute([s.op for s in steps])
        out: list[KernelError | None] = []
        for step, (code, detail) in zip(steps, results, strict=True):
            if code:
                out.append(step.op.error(code, detail))
            else:
                step.commit()
                out.append(None)
        return out

    async def remove_policies(self, policies: Sequence[PolicySpec]) -> None:
        """remove_policy for many, in one batch (first failure raised at the end)."""
        steps = []
        for p in policies:
            step = self._remove_policy_step(p)
            if step is not None:
                step.commit()
                steps.append(step)
        await self._run(steps, all_or_nothing=False)

    async def remove_policy(self, policy: PolicySpec) -> None:
        step = self._remove_policy_step(policy)
        if step is not None:
            await self._run([step])

    # --- CHILD_SAs -------------------------------------------------------------------

    async def install_child(self, child: ChildInstall) -> None:
        """Both SAs and all policies, or nothing (KernelError names the failed step)."""
        await self.install_children([child], raise_first=True)

    async def install_children(
        self, children: Sequence[ChildInstall], raise_first: bool = False, *,
        outbound: bool = True,
    ) -> list[KernelError | None]:
        """Many CHILD_SAs in one batch; each is all-or-nothing on its own. With
        `outbound=False` the outbound SAs stay out (a rekey's responder adds them with
        `add_sa` once the peer deleted the old CHILD_SA and takes the new one inbound)."""
        planned: dict[PolicyKey, list[PolicySpec]] = {}  # shared: children may share keys
        plans = [self._child_steps(c, planned, outbound) for c in children]
        flat = [s for plan in plans for s in plan]
        results = await self._execute([s.op for s in flat])
        out: list[KernelError | None] = []
        undo: list[Op] = []
        pos = 0
        for plan in plans:
            mine = results[pos : pos + len(plan)]
            pos += len(plan)
            failed = next(((s, r) for s, r in zip(plan, mine, strict=True) if r[0]), None)
            if failed is None:
                for s in plan:
                    s.commit()
                out.append(None)
                continue
            done = [s for s, r in zip(plan, mine, strict=True) if not r[0]]
            undo.extend(s.undo for s in reversed(done) if s.undo is not None)
            out.append(failed[0].op.error(*failed[1]))
        await self._undo(undo)
        first = next((e for e in out if e is not None), None)
        if raise_first and first is not None:
            raise first
        return out

    async def remove_child(self, child: ChildInstall, *, inbound: bool = True,
                           outbound: bool = True) -> None:
        """Release the policies (reference counted) and delete both SAs, or only those
        asked for (an inbound SA kept a while for packets still in flight, an outbound
        one never added). Every step is attempted; the first failure is raised after."""
        await self.remove_children([child], inbound=inbound, outbound=outbound)

    async def move_child(self, old: ChildInstall, new: ChildInstall) -> None:
        """Re-address an installed CHILD_SA (the peer's NAT mapping moved, or MOBIKE moved
        either end): the same SPIs, keys and reqid at the new addresses, ports or UDP
        encapsulation. Sequence numbers, the replay window and counters carry over (the
        new SAs are added with the old ones' replay state, outbound a margin further on,
        as strongSwan's kernel-netlink does without XFRM_MSG_MIGRATE).

        Make-before-break where the kernel allows it: an SA whose (destination, SPI)
        changes is added before the policies point to it and the old one goes after; one
        keeping them (the kernel allows one) is replaced within the same batch. Only new
        ports on an encapsulated SA are an update in place. All or nothing: on failure
        the old CHILD_SA is put back, with its replay state, and KernelError raised."""
        if _ports_only(old, new):
            await self._run([
                _Step(Op(OpKind.UPDATE_SA, new.outbound), Op(OpKind.UPDATE_SA, old.outbound)),
                _Step(Op(OpKind.UPDATE_SA, new.inbound), Op(OpKind.UPDATE_SA, old.inbound))])
            return
        out_ae, in_ae = await self.get_ae(old.outbound.id), await self.get_ae(old.inbound.id)
        # packets the old SA sends until the switch must not reuse a sequence number
        out_new = replace(new.outbound, replay=_advance(out_ae.replay, OSEQ_MARGIN))
        in_new = replace(new.inbound, replay=in_ae.replay)
        old_out = replace(old.outbound, replay=out_ae.replay)
        old_in = replace(old.inbound, replay=in_ae.replay)
        before: list[_Step] = []  # SAs that can exist beside the old ones: first
        after: list[_Step] = []  # the old SAs (and same-id replacements): last
        for o, n in ((old_out, out_new), (old_in, in_new)):
            if o.id == n.id:
                step = [_Step(Op(OpKind.DELETE_SA, o.id), Op(OpKind.ADD_SA, o)),
                        _Step(Op(OpKind.ADD_SA, n), Op(OpKind.DELETE_SA, n.id))]
                (before if o is old_out else after).extend(step)
            else:
                before.append(_Step(Op(OpKind.ADD_SA, n), Op(OpKind.DELETE_SA, n.id)))
                after.append(_Step(Op(OpKind.DELETE_SA, o.id), Op(OpKind.ADD_SA, o)))
        steps = before + self._repoint_policy_steps(old.policies, new.policies) + after
        await self._run(steps)
        self._swap_policy_refs(old.policies, new.policies)
        for sa, ae in ((new.outbound, out_ae), (new.inbound, in_ae)):
            with contextlib.suppress(KernelError):  # the counters only (shown, lifetimes)
                await self.set_ae(sa.id, lifetime_cur=ae.lifetime)

    def _repoint_policy_steps(self, old: Sequence[PolicySpec], new: Sequence[PolicySpec]
                              ) -> list[_Step]:
        """The policy updates a move needs: where `old`'s reference is the installed one
        (the last holder of its key), the kernel gets `new`'s templates."""
        return [_Step(Op(OpKind.UPDATE_POLICY, after), Op(OpKind.UPDATE_POLICY, before))
                for before, after in zip(old, new, strict=True)
                if _installed(self._policy_refs.get(before.key, [])) == before]

    def _swap_policy_refs(self, old: Sequence[PolicySpec], new: Sequence[PolicySpec]) -> None:
        for before, after in zip(old, new, strict=True):
            refs = self._policy_refs.get(before.key, [])
            if before in refs:
                refs[refs.index(before)] = after

    # --- taking state back after a daemon restart -------------------------------------

    def adopt_policy(self, policy: PolicySpec) -> None:
        """Count a reference to a policy that is already in the kernel (installed by the
        previous daemon process), without writing anything."""
        self._policy_refs.setdefault(policy.key, []).append(policy)

    def adopt_child(self, child: ChildInstall) -> None:
        """A CHILD_SA the previous daemon process installed: hold its policies again."""
        for policy in child.policies:
            self.adopt_policy(policy)

    async def remove_orphans(self, keep_sas: set[tuple[IPAddress, int, Proto]],
                             among: set[tuple[IPAddress, int, Proto]] | None = None
                             ) -> tuple[int, int]:
        """Delete our SAs (reqid in the owned range) not in `keep_sas` ((dst, spi, proto))
        and our policies nobody holds a reference to: what a previous process left behind.
        With `among` (a snapshot taken before any request was answered) only SAs in it
        can be orphans. Never touches another daemon's state. Returns (SAs, policies)
        removed; KernelError when a delete failed (after trying all)."""
        sas = [s.spec.id for s in await self.dump_sas()
               if (s.spec.dst, s.spec.spi, s.spec.proto) not in keep_sas
               and (among is None or (s.spec.dst, s.spec.spi, s.spec.proto) in among)]
        policies = [p.spec.key for p in await self.dump_policies()
                    if p.spec.owned() and p.spec.key not in self._policy_refs]
        ops = [Op(OpKind.DELETE_SA, sa) for sa in sas]
        ops += [Op(OpKind.DELETE_POLICY, key) for key in policies]
        results = await self._execute(ops) if ops else []
        errors = [op.error(code, detail) for op, (code, detail) in zip(ops, results, strict=True)
                  if code and not _already_gone(op, code)]
        if errors:  # every delete was tried; what failed is left for a resync
            raise errors[0]
        return len(sas), len(policies)

    async def resync(self, keep_sas: set[tuple[IPAddress, int, Proto]],
                     policies: Sequence[PolicySpec]) -> Resync:
        """Make the kernel hold exactly what the daemon believes in, after events were lost
        or writes failed: the SAs `keep_sas` ((dst, spi, proto)) and the `policies` (one
        entry per reference, oldest first: the newest of a key is the one installed, a
        BLOCK fence only while no allowing one holds it). Our
        other SAs and policies are deleted; held policies that are missing or differ are
        written again. SAs to keep that the kernel lacks are reported, not re-added (their
        sequence numbers are lost: the caller replaces those CHILD_SAs). A failed write
        raises KernelError after every other write was tried: call again later."""
        refs: dict[PolicyKey, list[PolicySpec]] = {}
        for p in policies:
            refs.setdefault(p.key, []).append(p)
        self._policy_refs = refs
        sas = [s.spec for s in await self.dump_sas() if s.spec.spi]  # spi 0: acquire state
        present = {(s.dst, s.spi, s.proto) for s in sas}
        current = {p.spec.key: p.spec for p in await self._dump_policies()}
        ops = [Op(OpKind.DELETE_SA, s.id) for s in sas if (s.dst, s.spi, s.proto) not in keep_sas]
        ops += [Op(OpKind.DELETE_POLICY, key) for key, spec in current.items()
                if spec.owned() and key not in refs]
        installed = {key: _installed(held) for key, held in refs.items()}
        ops += [Op(OpKind.UPDATE_POLICY, spec) for key, spec in installed.items()
                if spec is not None
                and (key not in current or not _same_policy(current[key], spec))]
        results = await self._execute(ops) if ops else []
        errors = [op.error(code, detail) for op, (code, detail) in zip(ops, results, strict=True)
                  if code and not _already_gone(op, code)]
        if errors:
            raise errors[0]
        kinds = [op.kind for op in ops]
        return Resync(kinds.count(OpKind.DELETE_SA), kinds.count(OpKind.DELETE_POLICY),
                      kinds.count(OpKind.UPDATE_POLICY), frozenset(keep_sas - present))

    async def remove_children(self, children: Sequence[ChildInstall], *, inbound: bool = True,
                              outbound: bool = True) -> None:
        """remove_child for many, in one batch."""
        steps: list[_Step] = []
        for child in children:
            for p in child.policies:
                step = self._remove_policy_step(p)
                if step is not None:
                    steps.append(step)
                    step.commit()  # later children sharing the key see the release
            for sa, wanted in ((child.outbound, outbound), (child.inbound, inbound)):
                if not wanted:
                    continue
                steps.append(_Step(Op(OpKind.DELETE_SA, sa.id), None, self._forget_larval(sa.id)))
        await self._run(steps, all_or_nothing=False)

    # --- step planning ---------------------------------------------------------------

    def _child_steps(
        self, child: ChildInstall, planned: dict[PolicyKey, list[PolicySpec]], outbound: bool
    ) -> list[_Step]:
        steps = [self._add_sa_step(child.inbound)]
        if outbound:
            steps.append(self._add_sa_step(child.outbound))
        for p in child.policies:
            steps.append(self._add_policy_step(p, planned))
        return steps

    def _add_sa_step(self, sa: SaSpec) -> _Step:
        _check_owned(sa)
        larval = _sa_key(sa.id) in self._larval
        kind = OpKind.UPDATE_SA if larval else OpKind.ADD_SA
        return _Step(Op(kind, sa), Op(OpKind.DELETE_SA, sa.id), self._forget_larval(sa.id))

    def _forget_larval(self, sa: SaId) -> Callable[[], None]:
        return lambda: self._larval.discard(_sa_key(sa))

    def _add_policy_step(
        self, p: PolicySpec, planned: dict[PolicyKey, list[PolicySpec]] | None = None
    ) -> _Step:
        if p.templates and not p.owned():
            raise ValueError(f"policy templates must use reqids {REQID_MIN:#x}-{REQID_MAX:#x}")
        key = p.key
        # `planned` holds only what this batch adds per key (no copy of the references:
        # thousands of CHILD_SAs may share one policy)
        added = planned.setdefault(key, []) if planned is not None else []
        held = self._policy_refs.get(key, [])
        previous = _installed(held, added)
        added.append(p)
        after = _installed(held, added) or p

        def commit() -> None:
            self._policy_refs.setdefault(key, []).append(p)

        if previous is None:
            return _Step(Op(OpKind.ADD_POLICY, p), Op(OpKind.DELETE_POLICY, key), commit)
        if after is previous:  # a fence behind a child's policy: the kernel keeps that
            return _Step(Op(OpKind.UPDATE_POLICY, previous), None, commit)
        return _Step(Op(OpKind.UPDATE_POLICY, after), Op(OpKind.UPDATE_POLICY, previous), commit)

    def _remove_policy_step(self, p: PolicySpec) -> _Step | None:
        key = p.key
        refs = self._policy_refs.get(key)
        if not refs:
            raise KernelError("remove policy", key, errno.ENOENT, "not held by this daemon")
        remaining = list(refs)
        remaining.remove(p if p in remaining else remaining[-1])

        def commit() -> None:
            if remaining:
                self._policy_refs[key] = remaining
            else:
                self._policy_refs.pop(key, None)

        if not remaining:
            return _Step(Op(OpKind.DELETE_POLICY, key), None, commit)
        now = _installed(remaining)
        if now == _installed(refs):
            commit()  # the installed spec stays: only the count drops
            return None
        assert now is not None
        return _Step(Op(OpKind.UPDATE_POLICY, now), None, commit)

    async def _undo(self, ops: list[Op]) -> None:
        """Roll back a failed batch's writes; a failed undo is tried again (ENOMEM and
        ENOBUFS pass). What still fails stays until the caller's `resync`."""
        for _ in range(UNDO_ATTEMPTS):
            if not ops:
                return
            results = await self._execute(ops)
            ops = [op for op, (code, _) in zip(ops, results, strict=True)
                   if code and not _already_gone(op, code)]

    async def _run(self, steps: list[_Step], all_or_nothing: bool = True) -> None:
        results = await self._execute([s.op for s in steps])
        failures = [(s, r) for s, r in zip(steps, results, strict=True) if r[0]]
        if failures and all_or_nothing:
            done = [s for s, r in zip(steps, results, strict=True) if not r[0]]
            await self._undo([s.undo for s in reversed(done) if s.undo is not None])
        else:
            for s, r in zip(steps, results, strict=True):
                if not r[0] or _already_gone(s.op, r[0]):
                    s.commit()
        if failures:
            step, (code, detail) = failures[0]
            raise step.op.error(code, detail)


UNDO_ATTEMPTS = 3
OSEQ_MARGIN = 1024  # sequence numbers skipped when an outbound SA is re-addressed


def _advance(replay: ReplayState, by: int) -> ReplayState:
    """The replay state with the outbound sequence number `by` further on (ESN: 64 bits)."""
    oseq = (replay.oseq_hi << 32 | replay.oseq) + by
    if not replay.replay_window:  # legacy 32-bit format
        return replace(replay, oseq=min(oseq, 0xFFFFFFFF))
    return replace(replay, oseq=oseq & 0xFFFFFFFF, oseq_hi=oseq >> 32)


@dataclass(frozen=True)
class Resync:
    """What `KernelIPsec.resync` changed, and which SAs to keep it found missing."""

    sas_removed: int
    policies_removed: int
    policies_restored: int
    missing_sas: frozenset[tuple[IPAddress, int, Proto]]


def _ports_only(old: ChildInstall, new: ChildInstall) -> bool:
    """Only the UDP ports of encapsulated SAs differ: UPDSA changes them in place (the
    kernel's update takes new encap ports, never new addresses or encap on/off)."""
    return all(a.encap is not None and b.encap is not None
               and replace(a, encap=b.encap) == b
               for a, b in ((old.outbound, new.outbound), (old.inbound, new.inbound)))


def _same_policy(a: PolicySpec, b: PolicySpec) -> bool:
    return (a.priority, a.action, [t.reqid for t in a.templates]) == \
        (b.priority, b.action, [t.reqid for t in b.templates])


def _already_gone(op: Op, code: int) -> bool:
    return (op.kind, code) in {
        (OpKind.DELETE_SA, errno.ESRCH),
        (OpKind.DELETE_POLICY, errno.ENOENT),
    }


def _check_owned(sa: SaSpec) -> None:
    if not owns_reqid(sa.reqid):
        raise ValueError(f"{sa.id}: reqid {sa.reqid:#x} outside {REQID_MIN:#x}-{REQID_MAX:#x}")


def _installed(*parts: Sequence[PolicySpec]) -> PolicySpec | None:
    """Which of the references to one key the kernel holds (`parts` in order, oldest
    first): the newest allowing one. A BLOCK fence (a protocol- or port-limited child's
    "no clear text for the rest", install.fences) shares its key with a sibling child
    that takes all traffic of those subnets; installed over it, it would drop that
    child's traffic, so a fence is installed only while no allowing policy holds the key."""
    for part in reversed(parts):
        for spec in reversed(part):
            if spec.action is not Action.BLOCK:
                return spec
    return next((part[-1] for part in reversed(parts) if part), None)
