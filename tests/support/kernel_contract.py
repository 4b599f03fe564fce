"""The KernelIPsec contract: one suite, run against the fake and the real kernel.

`KernelEnv` hides the two differences the suite needs: how a foreign entry (another
daemon's) gets in, and whether the kernel can hold ESP SAs at all. A test module runs
the suite with `from tests.support.kernel_contract import *` (the cases and the `env`
fixture: the fake, and the real kernel in a netns when root).
"""

from __future__ import annotations

import asyncio
import errno
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from ipaddress import ip_address, ip_network

import pytest

from tests.support.netns import netns, require_root
from xfrmctl.kernel.capabilities import Capabilities, probe
from xfrmctl.kernel.fake import FakeKernel
from xfrmctl.kernel.interface import OSEQ_MARGIN, KernelIPsec
from xfrmctl.kernel.netlink import NetlinkKernel
from xfrmctl.kernel.types import (
    REQID_MIN,
    Action,
    Algorithm,
    ChildInstall,
    Counters,
    Direction,
    Encap,
    KernelError,
    KernelEvent,
    Lifetime,
    Mark,
    Mode,
    PolicyNotify,
    PolicySpec,
    ReplayState,
    SaSpec,
    Selector,
    SpdThresholds,
    Template,
)

A = ip_address
N = ip_network
LEFT, RIGHT = A("192.0.2.1"), A("192.0.2.2")
NET_L, NET_R = N("198.51.100.0/24"), N("203.0.113.0/24")
GCM = Algorithm("rfc4106(gcm(aes))", bytes(range(20)), 128)


@dataclass
class KernelEnv:
    kernel: KernelIPsec
    netns: str | None  # None: the fake
    esp_reason: str  # "" when ESP SAs work

    def require_esp(self) -> None:
        if self.esp_reason:
            pytest.skip(self.esp_reason)

    def add_foreign_policy(
        self, sel: Selector, direction: Direction, reqid: int, prio: int
    ) -> None:
        """A policy someone else (ip xfrm, strongSwan) installed."""
        if self.netns is None:
            assert isinstance(self.kernel, FakeKernel)
            tmpl = (Template(reqid, src=LEFT, dst=RIGHT),)
            spec = PolicySpec(sel, direction, tmpl, priority=prio)
            self.kernel.policies[spec.key] = spec
            return
        subprocess.run(
            ["ip", "-n", self.netns, "xfrm", "policy", "add", "src", str(sel.src), "dst",
             str(sel.dst), "dir", direction.name.lower(), "priority", str(prio), "tmpl",
             "src", str(LEFT), "dst", str(RIGHT), "proto", "esp", "reqid", str(reqid),
             "mode", "tunnel"],
            check=True, capture_output=True,
        )  # fmt: skip

    def foreign_policy_count(self) -> int:
        if self.netns is None:
            assert isinstance(self.kernel, FakeKernel)
            return sum(1 for p in self.kernel.policies.values() if not p.owned())
        out = subprocess.run(
            ["ip", "-n", self.netns, "xfrm", "policy", "list"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        return sum(1 for line in out.splitlines() if "reqid 1 " in line + " ")


def policy(
    direction: Direction = Direction.OUT, reqid: int = REQID_MIN + 1, prio: int = 1000,
    src: str = "198.51.100.0/24", dst: str = "203.0.113.0/24", mark: Mark | None = None,
) -> PolicySpec:  # fmt: skip
    sel = Selector(N(src), N(dst))
    tmpl = (Template(reqid, src=LEFT, dst=RIGHT),)
    return PolicySpec(sel, direction, tmpl, priority=prio, mark=mark)


def sa(spi: int, src: A = LEFT, dst: A = RIGHT, reqid: int = REQID_MIN + 1, **kw: object) -> SaSpec:  # type: ignore[valid-type]
    if "crypt" not in kw:
        kw.setdefault("aead", GCM)
    return SaSpec(src, dst, spi, reqid, **kw)  # type: ignore[arg-type]


def child(spi_in: int, spi_out: int, reqid: int = REQID_MIN + 1) -> ChildInstall:
    sel_out = Selector(NET_L, NET_R)
    sel_in = Selector(NET_R, NET_L)
    pols = (
        PolicySpec(sel_out, Direction.OUT, (Template(reqid, src=LEFT, dst=RIGHT),), 1000),
        PolicySpec(sel_in, Direction.IN, (Template(reqid, src=RIGHT, dst=LEFT),), 1000),
        PolicySpec(sel_in, Direction.FWD, (Template(reqid, src=RIGHT, dst=LEFT),), 1000),
    )
    return ChildInstall(
        inbound=sa(spi_in, RIGHT, LEFT, reqid), outbound=sa(spi_out, LEFT, RIGHT, reqid),
        policies=pols,
    )  # fmt: skip


def strip_index(p: PolicySpec) -> PolicySpec:
    return replace(p, index=0)


async def next_event(
    events: AsyncIterator[KernelEvent], kind: type, timeout: float = 2.0
) -> KernelEvent:
    async def find() -> KernelEvent:
        async for ev in events:
            if isinstance(ev, kind):
                return ev
        raise AssertionError("event stream ended")

    return await asyncio.wait_for(find(), timeout)


# --- policies (run everywhere) ----------------------------------------------------------


async def test_policy_round_trip(env: KernelEnv) -> None:
    back = policy(Direction.IN, src="203.0.113.0/24", dst="198.51.100.0/24")
    specs = [policy(Direction.OUT), back,
             policy(Direction.FWD, mark=Mark(7, 0xFF))]  # fmt: skip
    for p in specs:
        await env.kernel.add_policy(p)
    dumped = {strip_index(s.spec) for s in await env.kernel.dump_policies()}
    assert dumped == set(specs)
    for p in specs:
        await env.kernel.remove_policy(p)
    assert await env.kernel.dump_policies() == []


async def test_block_policy_is_ours_while_held(env: KernelEnv) -> None:
    block = PolicySpec(Selector(NET_L, NET_R), Direction.OUT, action=Action.BLOCK, priority=5)
    await env.kernel.add_policy(block)
    assert [strip_index(s.spec) for s in await env.kernel.dump_policies()] == [block]
    await env.kernel.remove_policy(block)
    assert await env.kernel.dump_policies() == []


async def test_foreign_policy_is_never_touched(env: KernelEnv) -> None:
    sel = Selector(NET_L, NET_R)
    env.add_foreign_policy(sel, Direction.OUT, reqid=1, prio=50)
    assert await env.kernel.dump_policies() == []
    ours = policy(Direction.OUT)
    with pytest.raises(KernelError) as info:
        await env.kernel.add_policy(ours)  # same selector: the kernel's EEXIST, nothing replaced
    assert info.value.errno == errno.EEXIST
    assert "add policy" in str(info.value) and "EEXIST" in str(info.value)
    assert env.foreign_policy_count() == 1
    assert env.kernel.policy_refcount(ours.key) == 0


async def test_remove_unknown_policy_raises(env: KernelEnv) -> None:
    with pytest.raises(KernelError) as info:
        await env.kernel.remove_policy(policy())
    assert info.value.errno == errno.ENOENT


async def test_policy_reference_counting(env: KernelEnv) -> None:
    first = policy(reqid=REQID_MIN + 1)
    again = policy(reqid=REQID_MIN + 1)
    await env.kernel.add_policy(first)
    await env.kernel.add_policy(again)
    assert env.kernel.policy_refcount(first.key) == 2
    await env.kernel.remove_policy(first)
    assert [strip_index(s.spec) for s in await env.kernel.dump_policies()] == [again]
    await env.kernel.remove_policy(again)
    assert await env.kernel.dump_policies() == []


async def test_rekey_overlap_installs_newest_then_reverts(env: KernelEnv) -> None:
    old = policy(reqid=REQID_MIN + 1)
    new = policy(reqid=REQID_MIN + 2)
    await env.kernel.add_policy(old)
    await env.kernel.add_policy(new)
    assert [strip_index(s.spec) for s in await env.kernel.dump_policies()] == [new]
    await env.kernel.remove_policy(new)
    assert [strip_index(s.spec) for s in await env.kernel.dump_policies()] == [old]
    await env.kernel.remove_policy(old)
    assert await env.kernel.dump_policies() == []


async def test_policy_templates_outside_our_range_are_refused(env: KernelEnv) -> None:
    with pytest.raises(ValueError):
        await env.kernel.add_policy(policy(reqid=1))


async def test_spdinfo(env: KernelEnv) -> None:
    await env.kernel.add_policy(policy(Direction.OUT))
    await env.kernel.add_policy(policy(Direction.IN, src="203.0.113.0/24", dst="198.51.100.0/24"))
    info = await env.kernel.get_spdinfo()
    assert (info.incnt, info.outcnt, info.fwdcnt) == (1, 1, 0)
    wanted = SpdThresholds(24, 16, 64, 48)
    await env.kernel.set_spdinfo(wanted)
    assert (await env.kernel.get_spdinfo()).thresholds == wanted
    with pytest.raises(KernelError):
        await env.kernel.set_spdinfo(SpdThresholds(33, 32, 128, 128))


async def test_policy_events(env: KernelEnv) -> None:
    events = env.kernel.events()
    p = policy()
    await env.kernel.add_policy(p)
    ev = await next_event(events, PolicyNotify)
    assert ev.kind == "new" and ev.key == p.key  # type: ignore[attr-defined]


async def test_child_rollback_when_sa_fails(env: KernelEnv) -> None:
    """The SAs fail (bad algorithm, or no ESP at all): no policy may stay behind."""
    bad = child(0xC0000101, 0xC0000102)
    bad = replace(
        bad, outbound=replace(bad.outbound, aead=Algorithm("nonesuch(aes)", bytes(20), 128))
    )
    with pytest.raises(KernelError) as info:
        await env.kernel.install_child(bad)
    assert info.value.errno in (errno.ENOSYS, errno.EPROTONOSUPPORT)
    assert await env.kernel.dump_policies() == []
    assert await env.kernel.dump_sas() == []
    assert all(env.kernel.policy_refcount(p.key) == 0 for p in bad.policies)


# --- SAs (need ESP) --------------------------------------------------------------------


async def test_sa_round_trip(env: KernelEnv) -> None:
    env.require_esp()
    specs = [
        sa(0xC0000001),
        sa(0xC0000002, mode=Mode.TRANSPORT, replay_window=128, esn=True, mark=Mark(3, 0xF)),
        SaSpec(LEFT, RIGHT, 0xC0000003, REQID_MIN + 3,
               crypt=Algorithm("cbc(aes)", bytes(16)),
               auth=Algorithm("hmac(sha256)", bytes(32), 128),
               encap=Encap(4500, 4500), lifetime=Lifetime(soft_add_expires_seconds=100,
               hard_add_expires_seconds=200), if_id=42, tfcpad=16),
    ]  # fmt: skip
    for s in specs:
        await env.kernel.add_sa(s)
    for s in specs:
        got = await env.kernel.get_sa(s.id)
        assert got.spec == replace(s, selector=s.effective_selector())
        assert got.counters.bytes == 0
    assert {d.spec.spi for d in await env.kernel.dump_sas()} == {s.spi for s in specs}
    for s in specs:
        await env.kernel.delete_sa(s.id)
    assert await env.kernel.dump_sas() == []


async def test_sa_errors(env: KernelEnv) -> None:
    env.require_esp()
    s = sa(0xC0000010)
    await env.kernel.add_sa(s)
    with pytest.raises(KernelError) as dup:
        await env.kernel.add_sa(s)
    assert dup.value.errno == errno.EEXIST and "0xc0000010" in str(dup.value)
    await env.kernel.delete_sa(s.id)
    with pytest.raises(KernelError) as gone:
        await env.kernel.delete_sa(s.id)
    assert gone.value.errno == errno.ESRCH
    with pytest.raises(KernelError) as missing:
        await env.kernel.get_sa(s.id)
    assert missing.value.errno == errno.ESRCH
    with pytest.raises(KernelError) as bad:
        await env.kernel.add_sa(sa(0xC0000011, aead=Algorithm("nonesuch(aes)", bytes(20), 128)))
    assert bad.value.errno == errno.ENOSYS
    with pytest.raises(KernelError) as short:
        await env.kernel.add_sa(sa(0xC0000012, aead=Algorithm("rfc4106(gcm(aes))", bytes(7), 128)))
    assert short.value.errno == errno.EINVAL


async def test_allocate_spi_then_fill(env: KernelEnv) -> None:
    env.require_esp()
    spi = await env.kernel.allocate_spi(RIGHT, LEFT, spi_min=0xC1000000, spi_max=0xC1FFFFFF)
    assert 0xC1000000 <= spi <= 0xC1FFFFFF
    inbound = sa(spi, RIGHT, LEFT)
    await env.kernel.add_sa(inbound)
    assert (await env.kernel.get_sa(inbound.id)).spec.aead == GCM


async def test_child_install_remove(env: KernelEnv) -> None:
    env.require_esp()
    c = child(0xC0000021, 0xC0000022)
    await env.kernel.install_child(c)
    assert len(await env.kernel.dump_sas()) == 2
    assert len(await env.kernel.dump_policies()) == 3
    await env.kernel.remove_child(c)
    assert await env.kernel.dump_sas() == []
    assert await env.kernel.dump_policies() == []


async def test_child_rollback_when_outbound_sa_exists(env: KernelEnv) -> None:
    env.require_esp()
    c = child(0xC0000031, 0xC0000032)
    await env.kernel.add_sa(c.outbound)
    with pytest.raises(KernelError) as info:
        await env.kernel.install_child(c)
    assert info.value.errno == errno.EEXIST
    assert [s.spec.spi for s in await env.kernel.dump_sas()] == [c.outbound.spi]
    assert await env.kernel.dump_policies() == []


async def test_foreign_sa_not_dumped(env: KernelEnv) -> None:
    env.require_esp()
    if env.netns is None:
        assert isinstance(env.kernel, FakeKernel)
        env.kernel._add_sa(replace(sa(0xC0000041), reqid=5))
    else:
        subprocess.run(
            ["ip", "-n", env.netns, "xfrm", "state", "add", "src", str(LEFT), "dst", str(RIGHT),
             "proto", "esp", "spi", "0xc0000041", "reqid", "5", "mode", "tunnel", "aead",
             "rfc4106(gcm(aes))", "0x" + "11" * 20, "128"],
            check=True, capture_output=True,
        )  # fmt: skip
    await env.kernel.add_sa(sa(0xC0000042))
    assert [s.spec.spi for s in await env.kernel.dump_sas()] == [0xC0000042]


async def test_children_sharing_policies_in_one_batch(env: KernelEnv) -> None:
    env.require_esp()
    old, new = child(0xC0000051, 0xC0000052), child(0xC0000053, 0xC0000054)
    assert await env.kernel.install_children([old, new]) == [None, None]
    assert all(env.kernel.policy_refcount(p.key) == 2 for p in old.policies)
    await env.kernel.remove_child(old)
    assert len(await env.kernel.dump_policies()) == 3
    await env.kernel.remove_child(new)
    assert await env.kernel.dump_policies() == []
    assert await env.kernel.dump_sas() == []


async def test_rekey_responder_steps_inbound_first_outbound_later(env: KernelEnv) -> None:
    """A rekey's responder: the new inbound SA and policies now, the outbound SA once the
    old CHILD_SA is deleted; the old inbound SA outlives the rest of it for a while."""
    env.require_esp()
    old, new = child(0xC0000061, 0xC0000062), child(0xC0000063, 0xC0000064)
    await env.kernel.install_child(old)
    assert await env.kernel.install_children([new], outbound=False) == [None]
    assert {s.spec.spi for s in await env.kernel.dump_sas()} == {0xC0000061, 0xC0000062,
                                                                 0xC0000063}
    await env.kernel.add_sa(new.outbound)
    await env.kernel.remove_child(old, inbound=False)
    assert {s.spec.spi for s in await env.kernel.dump_sas()} == {0xC0000061, 0xC0000063,
                                                                 0xC0000064}
    assert all(env.kernel.policy_refcount(p.key) == 1 for p in new.policies)
    assert len(await env.kernel.dump_policies()) == 3
    await env.kernel.delete_sa(old.inbound.id)
    # a CHILD_SA whose outbound SA never went in leaves without it
    await env.kernel.install_child(old)
    await env.kernel.remove_child(new)
    pending = child(0xC0000065, 0xC0000066)
    assert await env.kernel.install_children([pending], outbound=False) == [None]
    await env.kernel.remove_child(pending, outbound=False)
    await env.kernel.remove_child(old)
    assert await env.kernel.dump_sas() == [] and await env.kernel.dump_policies() == []


def natted_child(spi_in: int, spi_out: int, peer: A, port: int) -> ChildInstall:  # type: ignore[valid-type]
    """`child` with the peer at `peer`:`port` behind a NAT (ESP in UDP)."""
    c = child(spi_in, spi_out)
    templates = {Direction.OUT: Template(c.outbound.reqid, src=LEFT, dst=peer),
                 Direction.IN: Template(c.inbound.reqid, src=peer, dst=LEFT),
                 Direction.FWD: Template(c.inbound.reqid, src=peer, dst=LEFT)}
    return ChildInstall(
        inbound=replace(c.inbound, src=peer, encap=Encap(port, 4500)),
        outbound=replace(c.outbound, dst=peer, encap=Encap(4500, port)),
        policies=tuple(replace(p, templates=(templates[p.direction],)) for p in c.policies),
    )  # fmt: skip


async def test_move_child_to_the_peers_new_mapping(env: KernelEnv) -> None:
    env.require_esp()
    old = natted_child(0xC0000061, 0xC0000062, RIGHT, 4500)
    await env.kernel.install_child(old)
    await env.kernel.set_ae(old.outbound.id, ReplayState(oseq=77), Counters(1000, 10))
    new = natted_child(0xC0000061, 0xC0000062, A("192.0.2.12"), 40000)
    await env.kernel.move_child(old, new)
    sas = {s.spec.spi: s.spec for s in await env.kernel.dump_sas()}
    assert (sas[0xC0000062].dst, sas[0xC0000062].encap) == (new.outbound.dst, Encap(4500, 40000))
    assert (sas[0xC0000061].src, sas[0xC0000061].encap) == (new.inbound.src, Encap(40000, 4500))
    assert len(sas) == 2
    out_ae = await env.kernel.get_ae(new.outbound.id)
    assert out_ae.replay.oseq == 77 + OSEQ_MARGIN and out_ae.lifetime.packets == 10
    policies = {p.spec.direction: p.spec for p in await env.kernel.dump_policies()}
    assert policies[Direction.OUT].templates[0].dst == new.outbound.dst
    assert policies[Direction.IN].templates[0].src == new.inbound.src
    # only the port moves next: the SAs are updated in place
    newer = natted_child(0xC0000061, 0xC0000062, A("192.0.2.12"), 40001)
    await env.kernel.move_child(new, newer)
    sas = {s.spec.spi: s.spec for s in await env.kernel.dump_sas()}
    assert sas[0xC0000062].encap == Encap(4500, 40001)
    assert (await env.kernel.get_ae(newer.outbound.id)).replay.oseq == 77 + OSEQ_MARGIN
    await env.kernel.remove_child(newer)  # the moved references release cleanly
    assert await env.kernel.dump_sas() == [] and await env.kernel.dump_policies() == []


def roamed_child(c: ChildInstall, ours: A, encap: bool) -> ChildInstall:  # type: ignore[valid-type]
    """`child` with our end at `ours` (MOBIKE moved it), ESP in UDP when `encap`."""
    reqid = c.outbound.reqid
    templates = {Direction.OUT: Template(reqid, src=ours, dst=RIGHT),
                 Direction.IN: Template(reqid, src=RIGHT, dst=ours),
                 Direction.FWD: Template(reqid, src=RIGHT, dst=ours)}
    udp = Encap(4500, 4500) if encap else None
    return ChildInstall(
        inbound=replace(c.inbound, dst=ours, encap=udp),
        outbound=replace(c.outbound, src=ours, encap=udp),
        policies=tuple(replace(p, templates=(templates[p.direction],)) for p in c.policies),
    )  # fmt: skip


async def test_move_child_to_our_new_address_keeps_sequence_numbers(env: KernelEnv) -> None:
    """MOBIKE: our address changes (the outbound SA keeps its destination and SPI, so it
    is replaced in one batch; the inbound one is added before the old goes), NAT or not;
    both carry their replay state over."""
    env.require_esp()
    old = child(0xC0000081, 0xC0000082)
    await env.kernel.install_child(old)
    await env.kernel.set_ae(old.outbound.id, ReplayState(oseq=500, bitmap=(0,)),
                            Counters(5000, 50))
    await env.kernel.set_ae(old.inbound.id, ReplayState(seq=40, bitmap=(0xFF,)))
    new = roamed_child(old, A("192.0.2.12"), encap=True)
    await env.kernel.move_child(old, new)
    sas = {s.spec.spi: s.spec for s in await env.kernel.dump_sas()}
    assert len(sas) == 2
    assert (sas[0xC0000082].src, sas[0xC0000082].encap) == (A("192.0.2.12"), Encap(4500, 4500))
    assert (sas[0xC0000081].dst, sas[0xC0000081].encap) == (A("192.0.2.12"), Encap(4500, 4500))
    out_ae = await env.kernel.get_ae(new.outbound.id)
    in_ae = await env.kernel.get_ae(new.inbound.id)
    assert out_ae.replay.oseq == 500 + OSEQ_MARGIN and out_ae.lifetime.packets == 50
    assert (in_ae.replay.seq, in_ae.replay.bitmap) == (40, (0xFF,))
    policies = {p.spec.direction: p.spec for p in await env.kernel.dump_policies()}
    assert policies[Direction.OUT].templates[0].src == A("192.0.2.12")
    assert policies[Direction.IN].templates[0].dst == A("192.0.2.12")
    # and back, without the NAT: encapsulation goes off again
    await env.kernel.move_child(new, old)
    sas = {s.spec.spi: s.spec for s in await env.kernel.dump_sas()}
    assert (sas[0xC0000082].src, sas[0xC0000082].encap) == (LEFT, None)
    assert (sas[0xC0000081].dst, sas[0xC0000081].encap) == (LEFT, None)
    assert (await env.kernel.get_ae(old.outbound.id)).replay.oseq == 500 + 2 * OSEQ_MARGIN
    await env.kernel.remove_child(old)
    assert await env.kernel.dump_sas() == [] and await env.kernel.dump_policies() == []


# --- the kernels the suite runs on: `env` (star-imported with the cases) --------------

_caps: list[Capabilities] = []


def _capabilities() -> Capabilities:
    if not _caps:
        _caps.append(asyncio.run(probe()))
    return _caps[0]


@pytest.fixture(params=["fake", pytest.param("netlink", marks=pytest.mark.netns)])
async def env(request: pytest.FixtureRequest) -> AsyncIterator[KernelEnv]:
    if request.param == "fake":
        yield KernelEnv(FakeKernel(), None, "")
        return
    require_root()
    caps = await asyncio.to_thread(_capabilities)
    if not caps.xfrm_netlink:
        pytest.skip(caps.xfrm_netlink.reason)
    with netns("kc") as ns:
        kernel = await NetlinkKernel.open(ns.name)
        try:
            yield KernelEnv(kernel, ns.name, "" if caps.esp else caps.esp.reason)
        finally:
            await kernel.close()
