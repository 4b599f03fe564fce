"""IKE_FOLLOWUP_KE (RFC 9370 2.2.4): the additional key exchanges of a CREATE_CHILD_SA.

Rules:
- A CREATE_CHILD_SA whose chosen proposal has ADDKE transforms is answered with
  N(ADDITIONAL_KEY_EXCHANGE) carrying link data the responder picks. The initiator then
  sends one IKE_FOLLOWUP_KE per additional key exchange, in ADDKE order, each with its
  KE payload and the link of the last answer, before any other request of its own; the
  responder answers with its KE and, unless it was the last, a new link.
- Nothing is created before the last one: the new SA is keyed with the secrets of every
  exchange in order, SK(0) | SK(1) | ... | SK(n) (for a CHILD_SA,
  KEYMAT = prf+(SK_d, SK(0) | ... | SK(n) | Ni | Nr)).
- A request with an unknown link is answered STATE_NOT_FOUND; a wrong KE payload
  INVALID_SYNTAX, and the negotiation is forgotten. The responder holds at most
  MAX_PENDING negotiations per IKE SA (the oldest goes first).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .. import dh
from ..constants import DhId, ExchangeType, NotifyType, notify_name
from ..errors import ProtocolError
from ..events import FailureReason
from ..message import Message
from ..payloads import KePayload, Payload
from .base import error_notify, notify, reason_of

if TYPE_CHECKING:
    from ..sa import IkeSa

MAX_PENDING = 4
LINK_SIZE = 8

Finish = Callable[["IkeSa", bytes, float], None]  # (sa, SK(1) | ... | SK(n), now)
Fail = Callable[["IkeSa", FailureReason, str, float], None]


@dataclass(slots=True)
class Followups:
    """The additional key exchanges still to run for one new SA, and their secrets."""

    groups: list[int]
    finish: Finish
    fail: Fail | None = None  # initiator only: report a failed negotiation
    secrets: list[bytes] = field(default_factory=list, repr=False)


def link_of(msg: Message) -> bytes | None:
    found = msg.notify(NotifyType.ADDITIONAL_KEY_EXCHANGE)
    return found.data if found is not None else None


def start(sa: IkeSa, pending: Followups, response: Message) -> None:
    """Initiator: the CREATE_CHILD_SA answer chose additional key exchanges; the first
    IKE_FOLLOWUP_KE goes out before anything else we have queued."""
    link = link_of(response)
    if link is None:
        raise ProtocolError("additional key exchanges chosen without ADDITIONAL_KEY_EXCHANGE")
    sa.window.tasks.insert(0, FollowupKe(pending, link))


def offer(sa: IkeSa, pending: Followups) -> Payload:
    """Responder: keep `pending` under a new link; the notify announcing it."""
    held = sa.followups if sa.followups is not None else {}
    while len(held) >= MAX_PENDING:
        del held[next(iter(held))]
    link = os.urandom(LINK_SIZE)
    held[link] = pending
    sa.followups = held
    return notify(NotifyType.ADDITIONAL_KEY_EXCHANGE, link)


def _peer_ke(msg: Message, group: int) -> KePayload:
    ke = msg.find(KePayload)
    if ke is None or ke.group != group:
        got = "no KE payload" if ke is None else f"KE payload for method {ke.group}"
        raise ProtocolError(f"IKE_FOLLOWUP_KE: {got}, {DhId(group).name} negotiated",
                            notify=NotifyType.INVALID_SYNTAX)
    return ke


class FollowupKe:
    """The initiator's IKE_FOLLOWUP_KE with one additional key exchange."""

    __slots__ = ("ke", "link", "pending")
    name = "IKE_FOLLOWUP_KE"

    def __init__(self, pending: Followups, link: bytes) -> None:
        self.pending = pending
        self.link = link
        self.ke = dh.new_key_exchange(pending.groups[0])

    def build(self, sa: IkeSa, now: float) -> Message:
        return sa.message(ExchangeType.IKE_FOLLOWUP_KE, [
            KePayload(self.ke.group, self.ke.public_key),
            notify(NotifyType.ADDITIONAL_KEY_EXCHANGE, self.link)])

    def process(self, sa: IkeSa, msg: Message, now: float) -> None:
        pending = self.pending
        assert pending.fail is not None
        error = error_notify(msg)
        if error is not None:
            pending.fail(sa, reason_of(error.notify_type), "additional key exchange: peer "
                         f"answered {notify_name(error.notify_type)}", now)
            return
        try:
            ke = _peer_ke(msg, self.ke.group)
            pending.secrets.append(self.ke.shared_secret(ke.data))
            pending.groups.pop(0)
            if pending.groups:
                start(sa, pending, msg)
                return
        except ProtocolError as exc:
            pending.fail(sa, FailureReason.PROTOCOL_ERROR,
                         f"additional key exchange failed: {exc}", now)
            return
        pending.finish(sa, b"".join(pending.secrets), now)


def respond(sa: IkeSa, msg: Message, raw: bytes, now: float) -> None:
    """The responder's IKE_FOLLOWUP_KE."""
    link = link_of(msg)
    held = sa.followups or {}
    pending = held.pop(link, None) if link is not None else None
    if not held:
        sa.followups = None
    if pending is None:
        sa.respond(msg, [notify(NotifyType.STATE_NOT_FOUND)])
        return
    group = pending.groups.pop(0)
    ours, secret = dh.respond(group, _peer_ke(msg, group).data)  # errors: INVALID_SYNTAX
    pending.secrets.append(secret)
    payloads: list[Payload] = [KePayload(group, ours)]
    if pending.groups:
        payloads.append(offer(sa, pending))
    else:
        pending.finish(sa, b"".join(pending.secrets), now)
    sa.respond(msg, payloads)
