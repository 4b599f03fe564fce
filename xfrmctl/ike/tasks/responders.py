"""Which module answers which exchange the peer starts (the responder's side)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ..constants import ExchangeType, NotifyType, ProtocolId
from ..message import Message
from ..payloads import SaPayload
from ..state import IkeState
from . import (
    child_create,
    child_rekey,
    followup_ke,
    ike_auth,
    ike_init,
    ike_intermediate,
    ike_rekey,
    informational,
)
from .base import notify

if TYPE_CHECKING:
    from ..sa import IkeSa


def _create_child_sa(sa: IkeSa, msg: Message, raw: bytes, now: float) -> None:
    """CREATE_CHILD_SA: an IKE SA rekey, a CHILD_SA rekey or a new CHILD_SA."""
    if sa.state is not IkeState.ESTABLISHED:
        sa.respond(msg, [notify(NotifyType.TEMPORARY_FAILURE)])
        return
    sa_payload = msg.find(SaPayload)
    if sa_payload is not None and sa_payload.proposals \
            and sa_payload.proposals[0].protocol == ProtocolId.IKE:
        ike_rekey.respond(sa, msg, sa_payload, now)
        return
    if ike_rekey.rekey_out(sa) is not None:
        # RFC 7296 2.25.2: no new CHILD_SAs on an IKE SA being rekeyed; retry later.
        sa.respond(msg, [notify(NotifyType.TEMPORARY_FAILURE)])
        return
    rekey = msg.notify(NotifyType.REKEY_SA)
    if rekey is not None:
        child_rekey.respond(sa, msg, rekey, now)
    else:
        child_create.respond(sa, msg, now)


RESPONDERS: dict[ExchangeType, Callable[[IkeSa, Message, bytes, float], None]] = {
    ExchangeType.IKE_SA_INIT: ike_init.respond,
    ExchangeType.IKE_INTERMEDIATE: ike_intermediate.respond,
    ExchangeType.IKE_AUTH: ike_auth.respond,
    ExchangeType.CREATE_CHILD_SA: _create_child_sa,
    ExchangeType.INFORMATIONAL: informational.respond,
    ExchangeType.IKE_FOLLOWUP_KE: followup_ke.respond,
}
