"""What arrives for an IKE SA before an exchange sees it.

Rules:
- Fragments (RFC 7383 2.6) are reassembled only for the message the window expects: the
  answer to our outstanding request, or the peer's next request; fragment 1 of a request
  already answered resends the answer. At most one buffer per direction, within the
  per-SA caps (charged to the manager's budget); anything else is dropped.
- A malformed request is answered with the notify the RFC asks for only when its SK
  payload verifies (and it then uses up its message ID): anything else could be forged.
  A datagram failing its integrity check is dropped silently (RFC 7296 2.21.2).
- Once keyed, every message is protected (RFC 7296 3.14): a plaintext one is a
  retransmitted IKE_SA_INIT request (answered from the cache), or forged.
- The peer's port is followed when a NAT moves it (RFC 7296 2.23), once keyed; with
  MOBIKE a new address is taken only from UPDATE_SA_ADDRESSES (tasks/mobike.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .constants import IKE_HEADER_SIZE, PAYLOAD_HEADER_SIZE, ExchangeType, PayloadType
from .errors import ProtocolError
from .fragment import Reassembler
from .limits import Limits
from .message import Message, parse_header
from .payloads import pull_chain
from .state import IkeState
from .tasks.base import notify

if TYPE_CHECKING:
    from .sa import Endpoint, IkeSa

_DEFAULT_LIMITS = Limits()  # fragment caps of an SA made without a manager's budget


def reassemble(sa: IkeSa, msg: Message) -> Message | None:
    """Add an (integrity-checked) fragment; the whole message once complete."""
    frag = msg.fragment
    assert frag is not None
    if not _fragment_in_window(sa, msg, frag.number):
        return None
    store = sa.reassembly if sa.reassembly is not None else {}
    sa.reassembly = store
    reassembler = store.get(msg.is_response)
    if reassembler is None:
        limits = sa.budget.limits if sa.budget is not None else _DEFAULT_LIMITS
        reassembler = store[msg.is_response] = Reassembler(
            limits.fragments_per_sa, limits.fragment_bytes_per_sa, sa.budget)
    other = store.get(not msg.is_response)
    if other is not None and other.held_bytes + reassembler.held_bytes \
            + len(frag.plaintext) > reassembler.max_bytes:
        return None  # both directions together stay within the per-SA cap
    try:
        full = reassembler.add(msg)
    except ProtocolError:
        full = None
    if reassembler.pending_message_id is None:
        del store[msg.is_response]
        if not store:
            sa.reassembly = None
    return full


def _fragment_in_window(sa: IkeSa, msg: Message, number: int) -> bool:
    if sa.state is IkeState.CLOSED:
        return False
    window = sa.window
    if msg.is_response:
        return window.outstanding is not None \
            and msg.message_id == window.outstanding.message_id
    cached = window.cached_answer(msg.message_id)
    if cached is not None:
        # (an IKE_SA_INIT answer is never fragmented: an SKF cannot ask for it again)
        init_response = sa.setup.init_response if sa.setup is not None else b""
        if number == 1 and cached[0] is not init_response:
            sa.emit_datagrams(cached)
        return False
    return msg.message_id == window.expected_peer_id


def clear_reassembly(sa: IkeSa) -> None:
    for reassembler in (sa.reassembly or {}).values():
        reassembler.clear()
    sa.reassembly = None


def answer_malformed(sa: IkeSa, data: bytes, exc: ProtocolError) -> None:
    """Answer a malformed request with the notify the RFC asks for; ignore the rest."""
    if sa.keys is None or sa.state is IkeState.CLOSED:
        return
    try:
        header = parse_header(data)
    except ProtocolError:
        return
    if header.is_response or header.message_id != sa.window.expected_peer_id \
            or not _authentic(sa, data, header.next_payload):
        return
    sa.window.expected_peer_id += 1
    request = Message(ExchangeType(header.exchange) if header.exchange in
                      ExchangeType._value2member_map_ else ExchangeType.INFORMATIONAL,
                      header.spi_i, header.spi_r, header.message_id,
                      header.is_initiator, False, [], [])
    sa.respond(request, [notify(exc.notify, exc.notify_data)])


def _authentic(sa: IkeSa, data: bytes, first_payload: int) -> bool:
    """Does the datagram's SK payload pass our integrity check?"""
    cipher = sa.keys.cipher_in if sa.keys is not None else None
    try:
        _, enc_type, at = pull_chain(data, IKE_HEADER_SIZE, len(data), first_payload,
                                     stop_at_encrypted=True)
        body_at = at + PAYLOAD_HEADER_SIZE
        size = len(data) - body_at - (cipher.iv_size + cipher.icv_size if cipher else 0)
        if cipher is None or enc_type != PayloadType.SK or size <= 0 \
                or size % cipher.block_size:
            return False
        cipher.open(data[:body_at], data[body_at:])
    except ProtocolError:
        return False
    return True


def plaintext_once_keyed(sa: IkeSa, msg: Message, raw: bytes) -> None:
    """A plaintext message to a keyed SA: resend our IKE_SA_INIT answer if it is that
    request again, else ignore it."""
    cached = sa.window.cached_answer(0)
    if msg.exchange == ExchangeType.IKE_SA_INIT and not msg.is_response \
            and sa.state is IkeState.INIT_DONE and cached and sa.setup is not None \
            and raw == sa.setup.init_request:
        sa.emit_datagrams(cached)


def follow_peer(sa: IkeSa, remote: Endpoint, local: Endpoint, msg: Message) -> None:
    if sa.mobike and remote[0] != sa.remote[0]:
        return  # RFC 4555 3.5: with MOBIKE only UPDATE_SA_ADDRESSES changes the address
    if sa.keys is not None and msg.protected is not None and remote != sa.remote \
            and (sa.nat_remote or remote[0] == sa.remote[0]):
        sa.local = local
        sa.move_peer(remote)
