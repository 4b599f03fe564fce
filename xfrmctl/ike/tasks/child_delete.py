"""CHILD_SA delete (RFC 7296 1.4.1): our INFORMATIONAL with a Delete payload; the
peer's deletes are answered in informational.py."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..child import ChildSa
from ..constants import ExchangeType
from ..message import Message
from ..payloads import DeletePayload
from ..state import ChildState

if TYPE_CHECKING:
    from ..sa import IkeSa


class ChildDelete:
    __slots__ = ("child", "reason")

    def __init__(self, child: ChildSa, reason: str) -> None:
        self.child = child
        self.reason = reason

    @property
    def name(self) -> str:
        return f"delete {self.child.spi_in:08x}"

    def build(self, sa: IkeSa, now: float) -> Message | None:
        child = self.child
        if child.child_id not in sa.children:
            return None
        child.move_to(ChildState.DELETING)
        return sa.message(ExchangeType.INFORMATIONAL,
                          [DeletePayload(child.protocol, (child.spi_in_bytes,))])

    def process(self, sa: IkeSa, msg: Message, now: float) -> None:
        sa.remove_child(self.child, self.reason)
