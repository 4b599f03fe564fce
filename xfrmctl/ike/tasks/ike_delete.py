"""IKE SA delete (RFC 7296 1.4.1): an INFORMATIONAL with a Delete payload for the IKE SA;
closed when answered (or when the peer stays silent: the window gives up)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..constants import ExchangeType, ProtocolId
from ..message import Message
from ..payloads import DeletePayload
from .base import IkeCollision

if TYPE_CHECKING:
    from ..sa import IkeSa


class IkeDelete:
    __slots__ = ("collision", "quiet", "reason")
    name = "delete IKE SA"

    def __init__(self, reason: str, quiet: bool = False,
                 collision: IkeCollision | None = None) -> None:
        self.reason = reason
        self.quiet = quiet  # no IkeSaDown (a rekeyed or redundant SA)
        # the peer's new IKE SA from a rekey collision our delete cut short: closed with us
        self.collision = collision

    def build(self, sa: IkeSa, now: float) -> Message:
        return sa.message(ExchangeType.INFORMATIONAL, [DeletePayload(ProtocolId.IKE, ())])

    def process(self, sa: IkeSa, msg: Message, now: float) -> None:
        sa.close(self.reason, quiet=self.quiet)
