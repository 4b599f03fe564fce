"""CHILD_SA rekey (RFC 7296 1.3.3, 2.8): CREATE_CHILD_SA with REKEY_SA. The new CHILD_SA
is made as in child_create.py; who deletes what afterwards is decided in collisions.py."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..child import ChildSa
from ..config import ChildConfig
from ..constants import NotifyType
from ..message import Message
from ..payloads import NotifyPayload
from ..state import ChildState
from .base import notify
from .child_create import ChildCreate, answer_child_request

if TYPE_CHECKING:
    from ..sa import IkeSa


class ChildRekey(ChildCreate):
    """Our rekey of `rekey_of` (REKEYING from when it is queued), with `config`: the
    child's configuration as it is now, or a changed one (make-before-break)."""

    __slots__ = ()

    def __init__(self, config: ChildConfig, rekey_of: ChildSa | None = None,
                 group: int | None = None) -> None:
        assert rekey_of is not None
        super().__init__(config, rekey_of, group)

    @property
    def name(self) -> str:
        assert self.rekey_of is not None
        return f"rekey {self.rekey_of.spi_in:08x}"

    def build(self, sa: IkeSa, now: float) -> Message | None:
        assert self.rekey_of is not None
        if self.rekey_of.state not in (ChildState.REKEYING, ChildState.CLOSED):
            return None  # rekeyed by the peer meanwhile (a deleted one: the peer says so)
        return super().build(sa, now)


def respond(sa: IkeSa, msg: Message, rekey: NotifyPayload, now: float) -> None:
    """The responder's CHILD_SA rekey."""
    old = sa.child_by_spi_out(int.from_bytes(rekey.spi, "big"), rekey.protocol) \
        if len(rekey.spi) == 4 else None
    if old is None:
        sa.respond(msg, [notify(NotifyType.CHILD_SA_NOT_FOUND, protocol=rekey.protocol,
                                spi=rekey.spi)])
        return
    if old.state is ChildState.DELETING:
        # RFC 7296 2.25.1: we are closing it; the peer will see our delete.
        sa.respond(msg, [notify(NotifyType.TEMPORARY_FAILURE)])
        return
    sa.respond(msg, answer_child_request(sa, msg, old, now))
