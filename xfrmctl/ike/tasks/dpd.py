"""Dead peer detection (RFC 7296 2.4): an empty INFORMATIONAL; an answer is all it asks.
No answer after the retransmissions and the window closes the SA (PEER_UNREACHABLE)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..constants import ExchangeType
from ..message import Message

if TYPE_CHECKING:
    from ..sa import IkeSa


class Dpd:
    __slots__ = ()
    name = "liveness"

    def build(self, sa: IkeSa, now: float) -> Message:
        return sa.message(ExchangeType.INFORMATIONAL, [])

    def process(self, sa: IkeSa, msg: Message, now: float) -> None:
        return None
