"""NEWAE/GETAE: the request and answer bytes, and the fake's replay state and counters."""

from __future__ import annotations

import errno
import struct
from dataclasses import replace
from ipaddress import ip_address

import pytest

from tests.support.kernel_contract import LEFT, RIGHT, sa
from xfrmctl.kernel import codec
from xfrmctl.kernel import messages as m
from xfrmctl.kernel.fake import FakeKernel
from xfrmctl.kernel.interface import AeState
from xfrmctl.kernel.messages import AeFlag, Attr, MsgType
from xfrmctl.kernel.types import Counters, KernelError, Mark, Proto, ReplayState, SaId

SA4 = SaId(RIGHT, 0xC0000A01, Proto.ESP, Mark(0x10, 0xFF))
SA6 = SaId(ip_address("2001:db8::2"), 0xC0000B01, Proto.AH)


def _attrs(raw: bytes, body: int) -> dict[int, bytes]:
    """Attribute type -> payload, parsed independently of the codec."""
    out, pos = {}, 16 + body
    while pos + 4 <= len(raw):
        size, kind = struct.unpack_from("=HH", raw, pos)
        out[kind] = raw[pos + 4 : pos + size]
        pos += (size + 3) & ~3
    return out


def test_getae_request_layout() -> None:
    raw = codec.encode_getae(SA4, 7)
    length, kind, flags, seq, _ = struct.unpack_from("=IHHII", raw)
    assert (length, kind, flags, seq) == (len(raw), MsgType.GETAE, codec.NLM_F_REQUEST, 7)
    daddr, spi, family, proto, _saddr, ae_flags, reqid = codec.S_AEVENT_ID.unpack_from(raw, 16)
    assert daddr == RIGHT.packed + bytes(12) and spi == 0x010A00C0  # network order on the wire
    assert (family, proto, ae_flags, reqid) == (2, 50, 15, 0)
    assert ae_flags & AeFlag.RVAL and ae_flags & AeFlag.LVAL
    assert _attrs(raw, 48) == {Attr.MARK: struct.pack("=II", 0x10, 0xFF)}


def test_newae_request_flags_and_attributes() -> None:
    replay = ReplayState(oseq=1000, seq=5, bitmap=(0x1F,))
    cur = Counters(840, 10, 1_700_000_000, 1_700_000_100)
    raw = codec.encode_newae(SA4, 3, replay, cur, replay_threshold=4, timer_threshold=250)
    _, kind, flags, _, _ = struct.unpack_from("=IHHII", raw)
    assert kind == MsgType.NEWAE
    assert flags == codec.NLM_F_REQUEST | codec.NLM_F_ACK | codec.NLM_F_REPLACE
    ae_flags = codec.S_AEVENT_ID.unpack_from(raw, 16)[5]
    assert ae_flags == AeFlag.RVAL | AeFlag.LVAL | AeFlag.RTHR | AeFlag.ETHR
    attrs = _attrs(raw, 48)
    assert attrs[Attr.REPLAY_VAL] == struct.pack("=III", 1000, 5, 0x1F)
    assert attrs[Attr.LTIME_VAL] == struct.pack("=QQQQ", 840, 10, 1_700_000_000, 1_700_000_100)
    assert attrs[Attr.REPLAY_THRESH] == struct.pack("=I", 4)
    assert attrs[Attr.ETIMER_THRESH] == struct.pack("=I", 250)
    assert Attr.REPLAY_ESN_VAL not in attrs


def test_newae_only_what_is_given() -> None:
    raw = codec.encode_newae(SA6, 3, ReplayState(oseq=9, replay_window=64, bitmap=(1, 2)))
    assert codec.S_AEVENT_ID.unpack_from(raw, 16)[5] == AeFlag.RVAL
    attrs = _attrs(raw, 48)
    assert set(attrs) == {Attr.REPLAY_ESN_VAL}
    assert attrs[Attr.REPLAY_ESN_VAL] == struct.pack("=8I", 2, 9, 0, 0, 0, 64, 1, 2)


def test_legacy_replay_state_rejects_esn_values() -> None:
    with pytest.raises(ValueError):
        codec.replay_attr(ReplayState(oseq=1, oseq_hi=1))


@pytest.mark.parametrize(
    "state",
    [
        AeState(
            SA4, LEFT, 0x7F000010, ReplayState(7, 3, bitmap=(5,)),
            Counters(100, 2, 1_700_000_000, 1_700_000_005), 2, 1000, int(codec.AE_GET_FLAGS),
        ),
        AeState(
            SA6, ip_address("2001:db8::1"), 1, ReplayState(7, 3, 1, 2, 128, (1, 2, 3, 4)),
            Counters(), None, None, int(AeFlag.RVAL | AeFlag.LVAL),
        ),
    ],
)  # fmt: skip
def test_ae_answer_round_trip(state: AeState) -> None:
    decoded = codec.decode_ae(m.decode(codec.encode_ae_state(state, 11)))
    assert decoded == state


async def test_fake_get_ae_tracks_sent_packets_and_counters() -> None:
    kernel = FakeKernel()
    spec = sa(0xC0000001)
    await kernel.add_sa(spec)
    kernel.account(spec.id, 84 * 3, 3)
    ae = await kernel.get_ae(spec.id)
    assert ae.replay == ReplayState(oseq=3, bitmap=(0,))
    assert not ae.esn_format
    assert ae.lifetime == await kernel.counters(spec.id)
    assert (ae.lifetime.bytes, ae.lifetime.packets) == (252, 3)
    assert (ae.src, ae.reqid, ae.sa) == (spec.src, spec.reqid, spec.id)
    assert (ae.replay_threshold, ae.timer_threshold_ms) == (2, 1000)  # sysctl defaults
    kernel.account(spec.id, 84, 1, inbound=True)
    assert (await kernel.get_ae(spec.id)).replay.seq == 1


async def test_fake_set_ae_restores_oseq_and_thresholds() -> None:
    kernel = FakeKernel()
    spec = sa(0xC0000002)
    await kernel.add_sa(spec)
    await kernel.set_ae(spec.id, ReplayState(oseq=5000), replay_threshold=8,
                        timer_threshold_ms=2000)  # fmt: skip
    kernel.account(spec.id, 84, 1)
    ae = await kernel.get_ae(spec.id)
    assert ae.replay.oseq == 5001
    assert (ae.replay_threshold, ae.timer_threshold_ms) == (8, 2000)
    await kernel.set_ae(spec.id, lifetime_cur=Counters(1, 1, 1_700_000_000, 0))
    assert (await kernel.counters(spec.id)).bytes == 1


async def test_fake_esn_replay_state() -> None:
    kernel = FakeKernel()
    spec = sa(0xC0000003, esn=True, replay_window=128)
    await kernel.add_sa(spec)
    ae = await kernel.get_ae(spec.id)
    assert ae.esn_format and ae.replay == ReplayState(replay_window=128, bitmap=(0,) * 4)
    await kernel.set_ae(spec.id, replace(ae.replay, oseq=0xFFFFFFFF))
    kernel.account(spec.id, 84, 2)
    ae = await kernel.get_ae(spec.id)
    assert (ae.replay.oseq_hi, ae.replay.oseq, ae.oseq64) == (1, 1, 1 << 32 | 1)
    with pytest.raises(KernelError) as err:  # the bitmap must keep its length
        await kernel.set_ae(spec.id, replace(ae.replay, bitmap=(0,) * 2))
    assert err.value.errno == errno.EINVAL


async def test_fake_ae_errors_like_the_kernel() -> None:
    kernel = FakeKernel()
    missing = SaId(RIGHT, 0xC0000999)
    for call in (kernel.get_ae(missing), kernel.set_ae(missing, ReplayState(oseq=1))):
        with pytest.raises(KernelError) as err:
            await call
        assert err.value.errno == errno.ESRCH
        assert "0xc0000999" in str(err.value)
    spec = sa(0xC0000004)
    await kernel.add_sa(spec)
    with pytest.raises(KernelError) as err:  # nothing to set
        await kernel.set_ae(spec.id)
    assert err.value.errno == errno.EINVAL
    with pytest.raises(KernelError) as err:  # an ESN state on a legacy SA
        await kernel.set_ae(spec.id, ReplayState(replay_window=64, bitmap=(0, 0)))
    assert err.value.errno == errno.EINVAL
    spi = await kernel.allocate_spi(RIGHT, LEFT)
    with pytest.raises(KernelError) as err:  # larval: not a valid state yet
        await kernel.set_ae(SaId(LEFT, spi), ReplayState(oseq=1))
    assert err.value.errno == errno.EINVAL
