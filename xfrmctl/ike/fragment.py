"""IKEv2 message fragmentation (RFC 7383).

`encode_fragments` splits the inner payloads of an encrypted message over SKF payloads
that each fit `max_size` octets (the IKE message, without IP/UDP headers or the
non-ESP marker). `Reassembler` collects the fragments `message.decode` returns (each
already integrity-checked) and gives back the whole message once all are there.

Reassembly rules (RFC 7383 2.6): fragments of another message ID start a new
reassembly; a larger Total Fragments restarts it (the sender re-fragmented for a
smaller PMTU), a smaller one is dropped; duplicates are dropped. The caller filters
message IDs against its window before `add` (an unauthenticated peer could otherwise open
one buffer per message ID). With a `Budget`, every fragment held is charged to it and a
fragment the budget has no room for is dropped; the charge is given back when the message
completes, fails, is replaced or `clear()`ed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import rules
from .constants import IKE_HEADER_SIZE, PAYLOAD_HEADER_SIZE, PayloadType
from .errors import LocalError, ProtocolError
from .limits import Budget
from .message import FRAGMENT_FIELDS, Message, SkFragment, seal
from .payloads import pull_chain, push_chain
from .sk import SkCipher

__all__ = ["Reassembler", "SkFragment", "encode_fragments", "fragment_capacity"]

MAX_FRAGMENTS = 0xFFFF
SKF_OVERHEAD = IKE_HEADER_SIZE + PAYLOAD_HEADER_SIZE + FRAGMENT_FIELDS.size


def fragment_capacity(cipher: SkCipher, max_size: int) -> int:
    """Inner octets one fragment of at most `max_size` octets can carry."""
    room = max_size - SKF_OVERHEAD - cipher.iv_size - cipher.icv_size
    return room // cipher.block_size * cipher.block_size - 1  # minus the Pad Length octet


def encode_fragments(message: Message, cipher: SkCipher, max_size: int) -> list[bytes]:
    """Protect `message` as SKF datagrams numbered from 1, each at most max_size octets."""
    if message.protected is None or message.payloads or message.fragment is not None:
        raise LocalError("only a message with protected payloads alone can be fragmented")
    capacity = fragment_capacity(cipher, max_size)
    if capacity < 1:
        raise LocalError(f"fragments of {max_size} octets cannot carry data")
    inner = push_chain(message.protected)
    first = message.protected[0].payload_type if message.protected else PayloadType.NONE
    chunks = [inner[i : i + capacity] for i in range(0, len(inner), capacity)] or [b""]
    total = len(chunks)
    if total > MAX_FRAGMENTS:
        raise LocalError(f"{total} fragments exceed {MAX_FRAGMENTS}")
    return [
        seal(
            message, (), chunk, cipher,
            enc_type=PayloadType.SKF,
            enc_next=first if number == 1 else PayloadType.NONE,
            extra=FRAGMENT_FIELDS.pack(number, total),
        )
        for number, chunk in enumerate(chunks, 1)
    ]  # fmt: skip


@dataclass(slots=True)
class _Pending:
    message: Message  # the first fragment received; supplies the header fields
    total: int
    parts: dict[int, bytes] = field(default_factory=dict)
    size: int = 0
    first_type: int = PayloadType.NONE


class Reassembler:
    """Collects the fragments of one message at a time (one instance per direction)."""

    __slots__ = ("_budget", "_pending", "max_bytes", "max_fragments")

    def __init__(self, max_fragments: int = 64, max_bytes: int = 65535,
                 budget: Budget | None = None) -> None:
        self.max_fragments = max_fragments
        self.max_bytes = max_bytes
        self._budget = budget
        self._pending: _Pending | None = None

    @property
    def pending_message_id(self) -> int | None:
        return None if self._pending is None else self._pending.message.message_id

    @property
    def held_bytes(self) -> int:
        return 0 if self._pending is None else self._pending.size

    def clear(self) -> None:
        """Forget the message being reassembled and give its octets back to the budget."""
        pending, self._pending = self._pending, None
        if pending is not None and self._budget is not None:
            self._budget.release_fragments(len(pending.parts), pending.size)

    def add(self, msg: Message) -> Message | None:
        """Add one decoded datagram; return the whole message when it is complete.

        A message that is not a fragment is returned as it is. Raises ProtocolError
        (and forgets the message) when limits are broken or the result is malformed.
        """
        frag = msg.fragment
        if frag is None:
            return msg
        if frag.total > self.max_fragments:
            self.clear()
            raise ProtocolError(f"{frag.total} fragments exceed the limit {self.max_fragments}")
        pending = self._pending
        if pending is None or not _same_message(pending.message, msg) or frag.total > pending.total:
            self.clear()
            pending = self._pending = _Pending(msg, frag.total)
        elif frag.total < pending.total or frag.number in pending.parts:
            return None  # stale re-fragmentation or duplicate
        size = len(frag.plaintext)
        if pending.size + size > self.max_bytes:
            self.clear()
            raise ProtocolError(f"fragments exceed {self.max_bytes} octets")
        if self._budget is not None and not self._budget.reserve_fragment(size):
            return None  # no room: dropped (the sender retransmits every fragment)
        pending.size += size
        pending.parts[frag.number] = frag.plaintext
        if frag.number == 1:
            pending.first_type = frag.next_payload
        if len(pending.parts) < pending.total:
            return None
        self.clear()
        return _assemble(pending)


def _same_message(a: Message, b: Message) -> bool:
    return (a.message_id, a.exchange, a.is_response, a.is_initiator, a.spi_i, a.spi_r) == (
        b.message_id, b.exchange, b.is_response, b.is_initiator, b.spi_i, b.spi_r,
    )  # fmt: skip


def _assemble(pending: _Pending) -> Message:
    inner = b"".join(pending.parts[n] for n in range(1, pending.total + 1))
    try:
        protected = pull_chain(inner, 0, len(inner), pending.first_type)[0]
    except ProtocolError as exc:
        raise ProtocolError(f"reassembled message: {exc}", notify=exc.notify,
                            notify_data=exc.notify_data) from None  # fmt: skip
    m = pending.message
    whole = Message(m.exchange, m.spi_i, m.spi_r, m.message_id, m.is_initiator, m.is_response,
                    [], protected, inner=inner)  # fmt: skip
    rules.check(whole)
    return whole
