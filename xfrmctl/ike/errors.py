"""Errors of the IKE core, split by whose fault they are (as h11 does).

- `ProtocolError`: the peer sent something wrong. It names what and where, and
  carries the notify type to answer with when the RFC says to answer.
- `IntegrityError`: an SK payload failed its ICV check; RFC 7296 2.21.2 says to
  drop such a message silently, so nothing is answered.
- `LocalError`: we (the caller of the core) misused it.
"""

from .constants import NotifyType


class IkeError(Exception):
    """Base of every error the IKE core raises on purpose."""


class ProtocolError(IkeError):
    """The peer's message is malformed or not allowed here."""

    def __init__(
        self,
        message: str,
        *,
        offset: int | None = None,
        notify: NotifyType = NotifyType.INVALID_SYNTAX,
        notify_data: bytes = b"",
    ) -> None:
        where = f" at offset {offset}" if offset is not None else ""
        super().__init__(f"{message}{where}")
        self.offset = offset
        self.notify = notify
        self.notify_data = notify_data


class IntegrityError(ProtocolError):
    """Integrity check of an encrypted payload failed: drop silently."""

    def __init__(self, message: str = "integrity check failed") -> None:
        super().__init__(message, notify=NotifyType.INVALID_SYNTAX)


class LocalError(IkeError):
    """The core was used wrongly by its caller (a bug or bad configuration)."""
