"""A CHILD_SA as the IKE core keeps it, and the ids IKE and CHILD SAs share."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from .config import ChildConfig, Mode
from .constants import ProtocolId
from .payloads import TrafficSelector
from .proposals import Suite
from .state import ChildState, child_move

_ids = itertools.count(1)


def new_id() -> int:
    """A process-wide unique id for an IKE SA or CHILD_SA."""
    return next(_ids)


@dataclass(slots=True)
class ChildSa:
    child_id: int
    config: ChildConfig
    protocol: ProtocolId
    mode: Mode
    spi_in: int
    spi_out: int
    local_ts: tuple[TrafficSelector, ...]
    remote_ts: tuple[TrafficSelector, ...]
    suite: Suite
    created: float
    _state: ChildState = field(default=ChildState.INSTALLED, init=False)
    # Rekey collision bookkeeping (RFC 7296 2.8.1, collisions.py): per side, the exchange's
    # lowest nonce and the CHILD_SA it created. None until a rekey of this one completes.
    rekeys: dict[str, tuple[bytes, ChildSa]] | None = field(default=None, init=False)

    @property
    def state(self) -> ChildState:
        return self._state

    def move_to(self, new: ChildState) -> None:
        """Change state along `CHILD_TRANSITIONS` (state.py)."""
        self._state = child_move(self._state, new, f"{self.spi_in:08x}")

    @property
    def spi_in_bytes(self) -> bytes:
        return self.spi_in.to_bytes(4, "big")
