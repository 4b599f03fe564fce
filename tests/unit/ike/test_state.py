"""The IKE_SA and CHILD_SA state tables: every change goes through them, none bypasses."""

from __future__ import annotations

import pytest

from tests.support.ike_pair import child, make_pair, mirrored, psk_config, up
from xfrmctl.ike.errors import LocalError
from xfrmctl.ike.state import CHILD_TRANSITIONS, TRANSITIONS, ChildState, IkeState


def test_closed_is_final_and_every_state_can_close() -> None:
    assert TRANSITIONS[IkeState.CLOSED] == frozenset()
    assert CHILD_TRANSITIONS[ChildState.CLOSED] == frozenset()
    assert all(IkeState.CLOSED in allowed for state, allowed in TRANSITIONS.items()
               if state is not IkeState.CLOSED)
    assert all(ChildState.CLOSED in allowed for state, allowed in CHILD_TRANSITIONS.items()
               if state is not ChildState.CLOSED)


def test_state_is_read_only_and_moves_only_along_the_tables() -> None:
    lan = child()
    pair = make_pair(psk_config(children=(lan,)), psk_config(children=(mirrored(lan),)))
    up(pair)
    sa = pair.a.all()[0]
    (kid,) = sa.children.values()
    with pytest.raises(AttributeError):
        sa.state = IkeState.CREATED  # type: ignore[misc]
    with pytest.raises(AttributeError):
        kid.state = ChildState.REKEYED  # type: ignore[misc]
    with pytest.raises(LocalError, match="ESTABLISHED -> INIT_SENT"):
        sa.move_to(IkeState.INIT_SENT)
    with pytest.raises(LocalError, match="INSTALLED -> INSTALLED"):
        kid.move_to(ChildState.INSTALLED)
    assert sa.state is IkeState.ESTABLISHED and kid.state is ChildState.INSTALLED


def test_a_deleted_sa_and_its_children_end_closed() -> None:
    lan = child()
    pair = make_pair(psk_config(children=(lan,)), psk_config(children=(mirrored(lan),)))
    up(pair)
    sa = pair.a.all()[0]
    (kid,) = sa.children.values()
    pair.a.act(sa, lambda s: s.delete(pair.now))
    pair.pump()
    assert sa.state is IkeState.CLOSED and kid.state is ChildState.CLOSED
