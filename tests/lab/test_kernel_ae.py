"""Real kernel: GETAE reads an SA's replay state and current lifetime after traffic,
NEWAE writes them back (e.g. an outbound sequence number restored after a restart).
Topology and SA pair as in test_kernel_traffic.py."""

from __future__ import annotations

import errno
import re
from dataclasses import replace

import pytest

from tests.lab import kernel_pair as kt
from tests.lab.kernel_pair import (
    ALGOS,
    HOST_L,
    HOST_R,
    PINGS,
    RIGHT,
    Pair,
    install_pair,
    ip_counters,
    ping,
)
from tests.support.netns import Netns
from xfrmctl.kernel.types import KernelError, SaId, SaSpec

# the SA pair fixtures (tests/lab/kernel_pair.py)
caps, topology, pair = kt.caps, kt.topology, kt.pair


def ip_oseq(ns: Netns, sa: SaSpec) -> tuple[int, int]:
    """(seq, oseq) as iproute2 prints the anti-replay context: an independent decoder."""
    out = ns.ip(
        "-s", "xfrm", "state", "get", "src", str(sa.src), "dst", str(sa.dst), "proto", "esp",
        "spi", hex(sa.spi),
    ).stdout  # fmt: skip
    found = re.search(r"seq 0x([0-9a-f]+), oseq 0x([0-9a-f]+)", out)
    assert found, out
    return int(found.group(1), 16), int(found.group(2), 16)


async def test_get_ae_after_traffic_then_restore_oseq(pair: Pair) -> None:
    _, algos = ALGOS["aes-gcm-128"]
    cl, cr = await install_pair(pair, algos)
    assert ping(pair.left.ns, HOST_R, HOST_L), "ping through the SAs failed"
    left, right = pair.left.kernel, pair.right.kernel

    out = await left.get_ae(cl.outbound.id)
    assert not out.esn_format
    assert out.replay.oseq == PINGS
    assert (out.src, out.reqid) == (cl.outbound.src, cl.outbound.reqid)
    counters = await left.counters(cl.outbound.id)
    assert (out.lifetime.bytes, out.lifetime.packets) == (counters.bytes, counters.packets)
    assert (out.lifetime.bytes, out.lifetime.packets) == ip_counters(pair.left.ns, cl.outbound)
    assert out.lifetime.packets == PINGS and out.lifetime.add_time > 0
    assert out.replay_threshold is not None and out.timer_threshold_ms is not None

    inbound = await right.get_ae(cr.inbound.id)
    assert inbound.replay.seq == PINGS and inbound.replay.bitmap[0] != 0

    await left.set_ae(cl.outbound.id, replace(out.replay, oseq=1000), replay_threshold=7,
                      timer_threshold_ms=2000)  # fmt: skip
    back = await left.get_ae(cl.outbound.id)
    assert back.replay.oseq == 1000
    assert ip_oseq(pair.left.ns, cl.outbound)[1] == 1000
    assert (back.replay_threshold, back.timer_threshold_ms) == (7, 2000)

    # the peer's window slides forward: traffic keeps flowing from the restored number
    assert ping(pair.left.ns, HOST_R, HOST_L), "ping after restoring oseq failed"
    assert (await left.get_ae(cl.outbound.id)).replay.oseq == 1000 + PINGS
    assert (await right.get_ae(cr.inbound.id)).replay.seq == 1000 + PINGS


async def test_esn_replay_state(pair: Pair) -> None:
    _, algos = ALGOS["aes-gcm-128"]
    cl, _ = await install_pair(pair, algos, esn=True, replay_window=128)
    assert ping(pair.left.ns, HOST_R, HOST_L), "ping through the ESN SAs failed"
    left = pair.left.kernel
    out = await left.get_ae(cl.outbound.id)
    assert out.esn_format and out.replay.replay_window == 128 and len(out.replay.bitmap) == 4
    assert (out.replay.oseq, out.replay.oseq_hi) == (PINGS, 0)
    await left.set_ae(cl.outbound.id, replace(out.replay, oseq=5, oseq_hi=2))
    back = await left.get_ae(cl.outbound.id)
    assert (back.replay.oseq_hi, back.replay.oseq) == (2, 5)
    with pytest.raises(KernelError) as err:  # the bitmap length is the SA's
        await left.set_ae(cl.outbound.id, replace(out.replay, bitmap=(0, 0)))
    assert err.value.errno == errno.EINVAL


async def test_missing_sa_is_esrch(pair: Pair) -> None:
    missing = SaId(RIGHT, 0xC0000FFF)
    with pytest.raises(KernelError) as err:
        await pair.left.kernel.get_ae(missing)
    assert err.value.errno == errno.ESRCH
    with pytest.raises(KernelError) as err:
        await pair.left.kernel.set_ae(missing, lifetime_cur=None, replay_threshold=3)
    assert err.value.errno == errno.ESRCH
