"""IKE_SA and CHILD_SA states and the transitions between them, as data (h11's style).

Rules:
- A state changes only through `ike_move` / `child_move`, which check the tables below
  (IkeSa.move_to and ChildSa.move_to call them); `state` is read-only
  everywhere else. A transition not in the table is our bug (LocalError), never the
  peer's: a peer's message that does not fit the current state is refused before any
  transition is tried.
- Moving to the state one is already in is a no-op only where the table lists it
  (INIT_SENT -> INIT_SENT: a new IKE_SA_INIT after COOKIE or INVALID_KE_PAYLOAD;
  DELETING -> DELETING: a CHILD_SA already marked redundant gets its delete queued).
- IKE SA: CREATED, then INIT_SENT/AUTH_SENT (initiator) or INIT_DONE (responder), then
  ESTABLISHED; a rekey's new IKE SA goes CREATED -> INIT_DONE -> ESTABLISHED at once, and
  a restored one (persist) CREATED -> ESTABLISHED. ESTABLISHED -> REKEYED when a successor
  takes over, -> DELETING when our delete is out. Every state may close; CLOSED is final.
- CHILD_SA: INSTALLED; REKEYING while our rekey is out (back to INSTALLED when it fails or
  is deferred); REKEYED when a successor exists (ours or the peer's); DELETING when it is
  to be deleted (our delete is queued or out, or it lost a rekey collision); CLOSED once
  removed from its IKE SA. CLOSED is final.
"""

from __future__ import annotations

from enum import Enum

from .errors import LocalError


class IkeState(Enum):
    CREATED = "created"
    INIT_SENT = "init-sent"  # initiator: IKE_SA_INIT request out
    AUTH_SENT = "auth-sent"  # initiator: IKE_AUTH request out
    INIT_DONE = "init-done"  # responder: IKE_SA_INIT answered, waiting for IKE_AUTH
    ESTABLISHED = "established"
    REKEYED = "rekeyed"  # replaced by a new IKE SA, waiting for the old one's delete
    DELETING = "deleting"
    CLOSED = "closed"


class ChildState(Enum):
    INSTALLED = "installed"
    REKEYING = "rekeying"  # our rekey request is out
    REKEYED = "rekeyed"  # a successor exists; this one waits for its delete
    DELETING = "deleting"
    CLOSED = "closed"  # removed from its IKE SA


_I = IkeState
TRANSITIONS: dict[IkeState, frozenset[IkeState]] = {
    _I.CREATED: frozenset({_I.INIT_SENT, _I.INIT_DONE, _I.ESTABLISHED, _I.CLOSED}),
    _I.INIT_SENT: frozenset({_I.INIT_SENT, _I.AUTH_SENT, _I.CLOSED}),
    _I.AUTH_SENT: frozenset({_I.ESTABLISHED, _I.CLOSED}),
    _I.INIT_DONE: frozenset({_I.ESTABLISHED, _I.CLOSED}),
    _I.ESTABLISHED: frozenset({_I.REKEYED, _I.DELETING, _I.CLOSED}),
    _I.REKEYED: frozenset({_I.DELETING, _I.CLOSED}),
    _I.DELETING: frozenset({_I.CLOSED}),
    _I.CLOSED: frozenset(),
}

_C = ChildState
CHILD_TRANSITIONS: dict[ChildState, frozenset[ChildState]] = {
    _C.INSTALLED: frozenset({_C.REKEYING, _C.REKEYED, _C.DELETING, _C.CLOSED}),
    _C.REKEYING: frozenset({_C.INSTALLED, _C.REKEYED, _C.DELETING, _C.CLOSED}),
    _C.REKEYED: frozenset({_C.DELETING, _C.CLOSED}),
    _C.DELETING: frozenset({_C.DELETING, _C.CLOSED}),
    _C.CLOSED: frozenset(),
}

# The IKE SA states in which it has keys and talks to its peer.
UP = frozenset({_I.ESTABLISHED, _I.REKEYED, _I.DELETING})
# Before IKE_AUTH completed (a half-open SA on the responder).
SETTING_UP = frozenset({_I.CREATED, _I.INIT_SENT, _I.AUTH_SENT, _I.INIT_DONE})


def ike_move(current: IkeState, new: IkeState, owner: object = "") -> IkeState:
    """`new`, if `TRANSITIONS` allows it from `current` (else our bug: LocalError)."""
    if new not in TRANSITIONS[current]:
        raise LocalError(f"IKE SA {owner}: no transition {current.name} -> {new.name}")
    return new


def child_move(current: ChildState, new: ChildState, owner: object = "") -> ChildState:
    """`new`, if `CHILD_TRANSITIONS` allows it from `current` (else our bug: LocalError)."""
    if new not in CHILD_TRANSITIONS[current]:
        raise LocalError(f"CHILD_SA {owner}: no transition {current.name} -> {new.name}")
    return new
