"""The responder's INFORMATIONAL (RFC 7296 1.4, 1.5): deletes of CHILD_SAs and of the IKE
SA, a peer's AUTHENTICATION_FAILED, empty liveness checks (answered empty) and MOBIKE's
address updates (tasks/mobike.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..constants import NotifyType, ProtocolId
from ..events import FailureReason
from ..message import Message
from ..payloads import DeletePayload, Payload
from ..state import ChildState, IkeState
from . import mobike
from .ike_rekey import rekey_out
from .rekeyed import adopt

if TYPE_CHECKING:
    from ..sa import IkeSa


def respond(sa: IkeSa, msg: Message, raw: bytes, now: float) -> None:
    if msg.notify(NotifyType.AUTHENTICATION_FAILED) is not None:
        sa.respond(msg, [])
        sa.fail(FailureReason.AUTHENTICATION_FAILED,
                "peer rejected our authentication (AUTHENTICATION_FAILED)")
        return
    response: list[Payload] = []
    if mobike.has_mobike_notify(msg):
        response += mobike.respond_update(sa, msg, sa.path or (sa.local, sa.remote))
    ike_deleted = False
    for delete in msg.find_all(DeletePayload):
        if delete.protocol == ProtocolId.IKE:
            ike_deleted = True
            continue
        for spi in delete.spis:
            child = sa.child_by_spi_out(int.from_bytes(spi, "big"), delete.protocol)
            if child is None:
                continue
            if child.state is not ChildState.DELETING:
                response.append(DeletePayload(child.protocol, (child.spi_in_bytes,)))
            sa.remove_child(child, "deleted by peer")
    sa.respond(msg, [] if ike_deleted else response)
    if not ike_deleted:
        return
    ours = rekey_out(sa)
    if ours is not None and ours.collision is not None:
        # The peer finished its rekey (which we answered) before it saw ours: its new
        # SA is the survivor; ours, when answered, finds this SA gone.
        theirs, ours.collision = ours.collision, None
        adopt(sa, theirs[1], now)
    rekeyed = sa.state is IkeState.REKEYED
    sa.close("rekeyed" if rekeyed else "deleted by peer", quiet=rekeyed)
