"""Rekey collisions (RFC 7296 2.8.1, 2.8.2, 2.25), for CHILD_SAs and IKE SAs alike.

Rules:
- When both ends rekey the same SA at once, the exchange holding the lowest of the four
  nonces made the redundant SA: its initiator deletes that new SA. The other exchange's
  initiator deletes the old SA.
- A CHILD_SA rekey's outcome is known once our exchange is answered; the peer's rekey
  may come before or after that, so each side's (lowest nonce, new CHILD_SA) is kept on
  the old CHILD_SA until both are known or ours completes alone.
- An IKE SA rekey by the peer while ours is out is held by our outstanding IkeRekey task
  and decided when its answer comes; if the peer deletes the old IKE SA first, its new
  SA survives. A collision's loser that never deletes its redundant SA gets
  REDUNDANT_TIMEOUT, then we delete it ourselves.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..child import ChildSa
from ..state import ChildState
from .base import IkeCollision
from .child_delete import ChildDelete
from .rekeyed import adopt, delete_redundant, delete_rekeyed

if TYPE_CHECKING:
    from ..sa import IkeSa

REDUNDANT_TIMEOUT = 30.0  # a rekey collision's loser should have deleted its SA by then


def lost(ours_lowest: bytes, theirs_lowest: bytes) -> bool:
    """Did our exchange make the redundant SA?"""
    return ours_lowest < theirs_lowest


def our_child_rekey_done(sa: IkeSa, old: ChildSa, lowest: bytes, new: ChildSa,
                         now: float) -> None:
    """Our rekey of `old` made `new`."""
    old.rekeys = old.rekeys or {}
    old.rekeys["ours"] = (lowest, new)
    _resolve_child(sa, old, now)


def peer_child_rekey_done(sa: IkeSa, old: ChildSa, lowest: bytes, new: ChildSa,
                          now: float) -> None:
    """We answered the peer's rekey of `old`, which made `new`."""
    old.rekeys = old.rekeys or {}
    old.rekeys["theirs"] = (lowest, new)
    if old.state is ChildState.INSTALLED:
        old.move_to(ChildState.REKEYED)
    else:
        _resolve_child(sa, old, now)


def _resolve_child(sa: IkeSa, old: ChildSa, now: float) -> None:
    """After our rekey of `old` completed, or a collision became known: the CHILD_SA made
    by the exchange with the lowest nonce is deleted by its maker; the surviving
    exchange's initiator deletes the old CHILD_SA."""
    rekeys = old.rekeys or {}
    ours, theirs = rekeys.get("ours"), rekeys.get("theirs")
    if ours is None:
        return
    if old.state in (ChildState.INSTALLED, ChildState.REKEYING):
        old.move_to(ChildState.REKEYED)
    if theirs is not None and lost(ours[0], theirs[0]):
        # We lost: our new SA is redundant (never to be sent on: DELETING from now);
        # the peer deletes the old one.
        redundant = ours[1]
        redundant.move_to(ChildState.DELETING)
        sa.queue(ChildDelete(redundant, "rekey collision lost"), now)
        return
    if old.state is ChildState.REKEYED and old.child_id in sa.children:
        sa.queue(ChildDelete(old, "rekeyed"), now)


def peer_ike_rekey(sa: IkeSa, ours_out: bool, lowest: bytes, new: IkeSa,
                   now: float) -> IkeCollision | None:
    """We answered the peer's IKE rekey, which made `new`. With ours out (`ours_out`)
    that is a collision, returned to be held until our answer comes; else `new` takes
    over and the peer deletes the old SA."""
    if ours_out:
        return (lowest, new)
    adopt(sa, new, now)
    return None


def our_ike_rekey_done(sa: IkeSa, ours: IkeSa, lowest: bytes, theirs: IkeCollision | None,
                       now: float) -> None:
    """Our IKE rekey made `ours`; `theirs` is the peer's colliding rekey, if any."""
    if theirs is not None and lost(lowest, theirs[0]):
        # We lost: ours is redundant and we delete it; the peer deletes the old SA.
        adopt(sa, theirs[1], now)
        delete_redundant(ours, now)
        return
    # We won (or there was no collision): the peer deletes its redundant SA, if any;
    # as initiator of the surviving exchange we delete the old IKE SA.
    adopt(sa, ours, now)
    if theirs is not None:
        theirs[1].timers.redundant = now + REDUNDANT_TIMEOUT
    delete_rekeyed(sa, now)
