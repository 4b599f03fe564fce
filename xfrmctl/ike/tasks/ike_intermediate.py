"""IKE_INTERMEDIATE (RFC 9242) carrying the additional key exchanges of RFC 9370.

Rules:
- IKE_SA_INIT chose ADDKE transforms (both sides sent INTERMEDIATE_EXCHANGE_SUPPORTED):
  then one IKE_INTERMEDIATE exchange per additional key exchange, in ADDKE order, with
  message IDs 1..n, and IKE_AUTH after the last. The initiator sends its KE data (for
  ML-KEM the encapsulation key), the responder answers with its own (the ciphertext).
- Each exchange is protected with the keys in force before it; once it is done both
  sides derive every SK_* anew (RFC 9370 2.2.2, keys.KeyState.after_additional_exchange).
  The responder keeps the previous inbound cipher until IKE_AUTH, so a retransmitted
  request (sent under the old keys) still gets the cached answer.
- Every IKE_INTERMEDIATE message is folded into IntAuth as it was sent (before
  fragmentation) or received (after reassembly):
      IntAuth_i(n) = prf(SK_pi(n), IntAuth_i(n-1) | A | P)  (requests)
      IntAuth_r(n) = prf(SK_pr(n), IntAuth_r(n-1) | A | P)  (responses)
  with SK_p* the keys protecting that message (message.intermediate_octets has A | P);
  IKE_AUTH's AUTH then signs IntAuth_iN | IntAuth_rN | its message ID (RFC 9242 3.3.2).
- A wrong or missing KE payload is INVALID_SYNTAX: the method was fixed by IKE_SA_INIT.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .. import dh
from ..constants import DhId, ExchangeType, NotifyType
from ..errors import ProtocolError
from ..message import Message, decode, intermediate_octets
from ..payloads import KePayload, Payload, push_chain
from ..sk import SkCipher
from ..state import IkeState
from .base import error_notify

if TYPE_CHECKING:
    from ..sa import IkeSa
    from .ike_init import Setup


@dataclass(slots=True)
class Intermediate:
    """The additional key exchanges of one IKE SA's setup and their IntAuth chains."""

    pending: list[int] = field(default_factory=list)  # methods still to exchange, in order
    int_auth_i: bytes = field(default=b"", repr=False)
    int_auth_r: bytes = field(default=b"", repr=False)
    exchanges: int = 0  # IKE_INTERMEDIATE exchanges done
    old_cipher_in: SkCipher | None = None  # responder: the keys before the last update


def int_auth(setup: Setup, auth_message_id: int) -> bytes:
    """IntAuth_iN | IntAuth_rN | IKE_AUTH's message ID, or nothing without
    IKE_INTERMEDIATE exchanges."""
    state = setup.intermediate
    if state is None or not state.exchanges:
        return b""
    return state.int_auth_i + state.int_auth_r + struct.pack("!I", auth_message_id)


def _fold(sa: IkeSa, state: Intermediate, msg: Message, inner: bytes) -> None:
    keys = sa.keys
    assert keys is not None
    octets = intermediate_octets(msg, inner)
    if msg.is_response:
        state.int_auth_r = keys.prf(keys.keys.sk_pr, state.int_auth_r + octets)
    else:
        state.int_auth_i = keys.prf(keys.keys.sk_pi, state.int_auth_i + octets)


def _update_keys(sa: IkeSa, setup: Setup, shared: bytes) -> None:
    assert sa.keys is not None and sa.suite is not None
    sa.keys = sa.keys.after_additional_exchange(sa.suite, shared, setup.nonce_i,
                                                setup.nonce_r, sa.spi_i, sa.spi_r,
                                                sa.is_initiator)


def _peer_ke(msg: Message, group: int) -> KePayload:
    ke = msg.find(KePayload)
    if ke is None or ke.group != group:
        got = "no KE payload" if ke is None else f"KE payload for method {ke.group}"
        raise ProtocolError(f"IKE_INTERMEDIATE: {got}, {DhId(group).name} negotiated",
                            notify=NotifyType.INVALID_SYNTAX)
    return ke


def start(sa: IkeSa, now: float) -> None:
    """After IKE_SA_INIT (initiator): the first additional key exchange, or IKE_AUTH."""
    setup = sa.setup
    assert setup is not None
    state = setup.intermediate
    if state is not None and state.pending:
        sa.send_request(IkeIntermediate(state.pending[0]), now)
    else:
        sa.start_auth(now)


class IkeIntermediate:
    """The initiator's IKE_INTERMEDIATE with one additional key exchange."""

    __slots__ = ("group", "ke")
    name = "IKE_INTERMEDIATE"

    def __init__(self, group: int) -> None:
        self.group = group
        self.ke = dh.new_key_exchange(group)

    def build(self, sa: IkeSa, now: float) -> Message:
        setup = sa.setup
        assert setup is not None and setup.intermediate is not None
        protected: list[Payload] = [KePayload(self.group, self.ke.public_key)]
        msg = sa.message(ExchangeType.IKE_INTERMEDIATE, protected)
        msg.message_id = sa.window.next_request_id  # the ID send_request gives it
        _fold(sa, setup.intermediate, msg, push_chain(protected))
        return msg

    def process(self, sa: IkeSa, msg: Message, now: float) -> None:
        setup = sa.setup
        assert setup is not None and setup.intermediate is not None
        error = error_notify(msg)
        if error is not None:
            sa.fail_from_notify(error)
            return
        state = setup.intermediate
        ke = _peer_ke(msg, self.group)
        _fold(sa, state, msg, msg.inner)
        shared = self.ke.shared_secret(ke.data)
        _update_keys(sa, setup, shared)
        state.pending.pop(0)
        state.exchanges += 1
        start(sa, now)


def respond(sa: IkeSa, msg: Message, raw: bytes, now: float) -> None:
    """The responder's IKE_INTERMEDIATE: answer under the current keys, then update them."""
    setup = sa.setup
    state = setup.intermediate if setup is not None else None
    if sa.state is not IkeState.INIT_DONE or setup is None or state is None \
            or not state.pending:
        raise ProtocolError("unexpected IKE_INTERMEDIATE", notify=NotifyType.INVALID_SYNTAX)
    group = state.pending[0]
    ke = _peer_ke(msg, group)
    ours, shared = dh.respond(group, ke.data)
    _fold(sa, state, msg, msg.inner)
    payloads: list[Payload] = [KePayload(group, ours)]
    answer = sa.message(ExchangeType.IKE_INTERMEDIATE, payloads, response=True,
                        message_id=msg.message_id)
    _fold(sa, state, answer, push_chain(payloads))
    sa.respond(msg, payloads)
    assert sa.keys is not None
    state.old_cipher_in = sa.keys.cipher_in
    _update_keys(sa, setup, shared)
    state.pending.pop(0)
    state.exchanges += 1


def resend_for_old_keys(sa: IkeSa, data: bytes) -> None:
    """A datagram that failed the current keys: the initiator's retransmission of the
    IKE_INTERMEDIATE request we answered just before updating them? Then resend the
    answer (for a fragmented request, once, on its first fragment); else drop it."""
    state = sa.setup.intermediate if sa.setup is not None else None
    if state is None or state.old_cipher_in is None:
        return
    try:
        msg = decode(data, state.old_cipher_in)
    except ProtocolError:  # IntegrityError included: not that either
        return
    cached = sa.window.cached_answer(msg.message_id)
    if msg.is_response or cached is None or msg.exchange != ExchangeType.IKE_INTERMEDIATE:
        return
    if msg.fragment is None or msg.fragment.number == 1:
        sa.emit_datagrams(cached)
