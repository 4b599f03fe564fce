"""Helpers every exchange shares: notifies, error notifies and failure reasons."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ..config import Mode
from ..constants import NotifyType
from ..events import FailureReason
from ..message import Message
from ..payloads import NotifyPayload, Payload

if TYPE_CHECKING:
    from ..sa import IkeSa

# A peer's IKE rekey that collided with ours: (its lowest nonce, the IKE SA it made)
IkeCollision = tuple[bytes, "IkeSa"]
RETRY_DELAY = 2.0  # after TEMPORARY_FAILURE, plus up to as much again at random


def retry_delay() -> float:
    """A short random delay before retrying after TEMPORARY_FAILURE (RFC 7296 2.25)."""
    return RETRY_DELAY * (1 + int.from_bytes(os.urandom(2), "big") / 65535)


def notify(ntype: NotifyType, data: bytes = b"", protocol: int = 0,
           spi: bytes = b"") -> NotifyPayload:
    return NotifyPayload(ntype, protocol, spi, data)


def error_notify(msg: Message) -> NotifyPayload | None:
    return next((n for n in msg.notifies() if n.notify_type < 16384), None)


def tfc_notify(mode: Mode) -> list[Payload]:
    """ESP_TFC_PADDING_NOT_SUPPORTED (RFC 7296 3.10.1) where we cannot take TFC padding:
    in transport mode Linux has no inner header to find where the payload ends."""
    return [notify(NotifyType.ESP_TFC_PADDING_NOT_SUPPORTED)] if mode is Mode.TRANSPORT \
        else []


def peer_takes_tfc(msg: Message) -> bool:
    """False when the peer said it does not accept TFC padding on this CHILD_SA."""
    return msg.notify(NotifyType.ESP_TFC_PADDING_NOT_SUPPORTED) is None


def group_of(invalid_ke: NotifyPayload | None) -> int | None:
    """The group an INVALID_KE_PAYLOAD asks for (None: no notify or no group in it)."""
    if invalid_ke is None or len(invalid_ke.data) < 2:
        return None
    return int.from_bytes(invalid_ke.data[:2], "big")


class ChildFailure(Exception):
    def __init__(self, reason: FailureReason, message: str, ours: tuple[str, ...] = (),
                 theirs: tuple[str, ...] = (), child: str | None = None,
                 notify_data: bytes = b"") -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.ours = ours
        self.theirs = theirs
        self.child = child
        self.notify_data = notify_data


_REASON_FOR_NOTIFY: dict[int, FailureReason] = {
    NotifyType.NO_PROPOSAL_CHOSEN: FailureReason.NO_PROPOSAL_CHOSEN,
    NotifyType.INVALID_KE_PAYLOAD: FailureReason.INVALID_KE_PAYLOAD,
    NotifyType.AUTHENTICATION_FAILED: FailureReason.AUTHENTICATION_FAILED,
    NotifyType.TS_UNACCEPTABLE: FailureReason.TS_UNACCEPTABLE,
    NotifyType.INTERNAL_ADDRESS_FAILURE: FailureReason.INTERNAL_ADDRESS_FAILURE,
    NotifyType.SINGLE_PAIR_REQUIRED: FailureReason.SINGLE_PAIR_REQUIRED,
    NotifyType.CHILD_SA_NOT_FOUND: FailureReason.CHILD_SA_NOT_FOUND,
}
NOTIFY_FOR_REASON = {reason: NotifyType(n) for n, reason in _REASON_FOR_NOTIFY.items()}


def reason_of(notify_type: int) -> FailureReason:
    return _REASON_FOR_NOTIFY.get(notify_type, FailureReason.PEER_ERROR)
