"""The request window of an IKE SA (RFC 7296 2.3): message IDs, the one request we have
out and its retransmissions, the cached answer to the peer's last request, and the queue
of exchanges (tasks) waiting for their turn.

Rules:
- Window size 1: one request of ours is outstanding at a time; further tasks queue and
  build their request only when their turn comes (so it reflects the state by then).
- A request is retransmitted unchanged with exponential back-off; its answer is matched
  by message ID, anything else is late or spoofed and ignored.
- The peer's request with the expected message ID is processed once; a retransmission of
  the last one is answered from the cache, never processed twice.
- A task lives while it is queued or outstanding and is dropped after its answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from .constants import ExchangeType
from .message import Message

if TYPE_CHECKING:
    from .sa import IkeSa


class Task(Protocol):
    """One exchange we initiate (strongSwan's task): `build` makes the request when its
    turn comes (None: nothing to do any more), `process` takes the peer's answer."""

    @property
    def name(self) -> str: ...

    def build(self, sa: IkeSa, now: float) -> Message | None: ...

    def process(self, sa: IkeSa, msg: Message, now: float) -> None: ...


@dataclass(slots=True)
class Outstanding:
    """Our request in flight: what to resend and which task takes the answer."""

    message_id: int
    exchange: ExchangeType
    datagrams: list[bytes]
    task: Task
    attempt: int
    deadline: float


class RequestWindow:
    __slots__ = ("cached_response", "expected_peer_id", "next_request_id", "outstanding",
                 "tasks")

    def __init__(self) -> None:
        self.next_request_id = 0  # of our next request
        self.expected_peer_id = 0  # of the peer's next request
        self.outstanding: Outstanding | None = None
        self.cached_response: tuple[int, list[bytes]] | None = None
        self.tasks: list[Task] = []  # queued, not yet built (a list: most SAs have none)

    def claim_id(self) -> int:
        """The message ID of our next request."""
        message_id = self.next_request_id
        self.next_request_id += 1
        return message_id

    def cached_answer(self, message_id: int) -> list[bytes] | None:
        cached = self.cached_response
        return cached[1] if cached is not None and cached[0] == message_id else None

    def answered(self, message_id: int) -> Outstanding | None:
        """The outstanding request this answer is for (then no longer outstanding)."""
        out = self.outstanding
        if out is None or message_id != out.message_id:
            return None
        self.outstanding = None
        return out

    def busy_with(self, kind: type) -> bool:
        """Is a task of this kind outstanding?"""
        return self.outstanding is not None and isinstance(self.outstanding.task, kind)

    def clear(self) -> None:
        """Forget the queue and the outstanding request (the SA is deleted or closed)."""
        self.tasks.clear()
        self.outstanding = None
