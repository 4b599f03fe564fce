"""Exchanges as tasks: a task lives only while its exchange is queued or out; an idle
IKE SA holds no per-exchange state (nonces, key exchanges, requests in the making)."""

from __future__ import annotations

from tests.support.ike_pair import Pair, child, make_pair, mirrored, psk_config, up
from xfrmctl.ike.events import ChildSaNegotiated, IkeSaRekeyed
from xfrmctl.ike.sa import IkeSa, IkeState
from xfrmctl.ike.tasks.child_rekey import ChildRekey
from xfrmctl.ike.tasks.ike_rekey import IkeRekey


def pair_up() -> Pair:
    lan = child()
    pair = make_pair(psk_config(children=(lan,)), psk_config(children=(mirrored(lan),)))
    up(pair)
    return pair


def assert_idle(sa: IkeSa) -> None:
    assert sa.state is IkeState.ESTABLISHED
    assert sa.setup is None  # IKE_SA_INIT/IKE_AUTH state (nonces, DH key, messages) freed
    assert sa.window.outstanding is None and sa.window.tasks == []
    assert not hasattr(sa, "__dict__")  # slots only: nothing can hang off it unseen
    assert all(c.rekeys is None for c in sa.children.values())


def test_an_established_sa_keeps_no_exchange_state() -> None:
    pair = pair_up()
    for sa in (*pair.a.all(), *pair.b.all()):
        assert_idle(sa)


def test_rekey_tasks_exist_while_in_flight_and_are_gone_after() -> None:
    pair = pair_up()
    sa = pair.a.all()[0]
    (kid,) = pair.of("a", ChildSaNegotiated)
    pair.a.act(sa, lambda s: s.rekey_child(kid.spi_in, pair.now))
    out = sa.window.outstanding
    assert out is not None and isinstance(out.task, ChildRekey)
    assert out.task.request is not None and out.task.request.nonce  # its nonce, not the SA's
    pair.pump()
    assert_idle(sa)
    pair.a.act(sa, lambda s: s.rekey(pair.now))
    out = sa.window.outstanding
    assert out is not None and isinstance(out.task, IkeRekey) and out.task.ke is not None
    pair.pump()
    (rekeyed,) = pair.of("a", IkeSaRekeyed)
    new = pair.a.get(rekeyed.new_ike_sa)
    assert new is not None and sa.state is IkeState.CLOSED
    assert_idle(new)
    assert sa.window.outstanding is None and sa.window.tasks == []
