"""An IKE SA saved in one process and restored in another keeps working with its peer."""

from __future__ import annotations

import json

import pytest

from tests.support.ike_pair import Pair, make_pair, psk_config
from xfrmctl.ike import persist, ts
from xfrmctl.ike.config import ChildConfig
from xfrmctl.ike.constants import ExchangeType
from xfrmctl.ike.errors import LocalError
from xfrmctl.ike.events import ChildSaDeleted, ChildSaNegotiated
from xfrmctl.ike.manager import IkeManager
from xfrmctl.ike.message import parse_header
from xfrmctl.ike.sa import IkeState

LAN_A = ChildConfig("lan", (ts.parse("198.51.100.0/24"),), (ts.parse("203.0.113.0/24"),))
LAN_B = ChildConfig("lan", (ts.parse("203.0.113.0/24"),), (ts.parse("198.51.100.0/24"),))


def established() -> Pair:
    pair = make_pair(psk_config(children=(LAN_A,)), psk_config(children=(LAN_B,)))
    pair.a.initiate("net", pair.endpoint("a"), pair.endpoint("b"), pair.now)
    pair.pump()
    return pair


def restart_a(pair: Pair) -> IkeManager:
    """Snapshot a's SA through JSON, as the daemon stores it, into a fresh manager."""
    (sa,) = pair.a.all()
    data = json.loads(json.dumps(persist.snapshot(sa)))
    fresh = IkeManager([psk_config(children=(LAN_A,))])
    fresh.adopt(persist.restore(data, fresh.configs["net"], pair.now))
    pair.a = fresh
    return fresh


def test_restored_sa_answers_the_peer_and_rekeys() -> None:
    pair = established()
    (old_child,) = pair.of("a", ChildSaNegotiated)
    before = pair.a.all()[0]
    a2 = restart_a(pair)
    (sa,) = a2.all()
    assert sa.state is IkeState.ESTABLISHED and (sa.spi_i, sa.spi_r) == (before.spi_i,
                                                                        before.spi_r)
    assert [c.spi_in for c in sa.children.values()] == [old_child.spi_in]
    # The peer's next request (a liveness check) is answered by the restored SA.
    pair.b.act(pair.b.all()[0], lambda s: s.liveness_check(pair.now))
    pair.pump()
    info = [d for _, d in pair.wire if parse_header(d.data).exchange ==
            ExchangeType.INFORMATIONAL]
    assert len(info) == 2 and parse_header(info[1].data).is_response
    # Our own requests continue the message IDs: rekey the child from the restored side.
    a2.act(sa, lambda s: s.rekey_child(old_child.spi_in, pair.now))
    pair.pump()
    new_a = pair.of("a", ChildSaNegotiated)[-1]
    new_b = pair.of("b", ChildSaNegotiated)[-1]
    assert new_a.rekey_of == old_child.spi_in
    assert new_a.spi_out == new_b.spi_in and new_a.encr_key_out == new_b.encr_key_in
    assert pair.of("b", ChildSaDeleted)[0].spi_out == old_child.spi_in
    assert pair.b.all()[0].state is IkeState.ESTABLISHED


def test_snapshot_moves_the_aead_iv_past_what_was_used() -> None:
    pair = established()
    (sa,) = pair.a.all()
    used = persist.snapshot(sa)["iv_out"]
    assert used >= 1  # IKE_AUTH went out under this key
    restored = persist.restore(persist.snapshot(sa), sa.config, pair.now)  # type: ignore[arg-type]
    assert persist.snapshot(restored)["iv_out"] == used + persist.IV_MARGIN


def test_only_established_sas_are_saved() -> None:
    pair = make_pair(psk_config(children=(LAN_A,)), psk_config(children=(LAN_B,)))
    sa = pair.a.initiate("net", pair.endpoint("a"), pair.endpoint("b"), pair.now)
    with pytest.raises(LocalError, match="not established"):
        persist.snapshot(sa)
