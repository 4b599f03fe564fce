"""IKE SA rekey (RFC 7296 1.3.2, 2.18): CREATE_CHILD_SA with an IKE proposal.

The new IKE SA is keyed from the old one's SK_d and stays silent until adopted
(rekeyed.py): CHILD_SAs move over, then the old SA is deleted by the initiator of
the surviving exchange. Simultaneous rekeys are decided in collisions.py. With
additional key exchanges (RFC 9370) the new IKE SA is made after the IKE_FOLLOWUP_KE
exchanges (followup_ke.py): SKEYSEED = prf(SK_d (old), SK(0) | Ni | Nr | SK(1) ... | SK(n)).

A rekey keeps the IKE SA's PRF wherever the proposals allow (proposals.keeping_prf): with
a new PRF strongSwan derives the keys with the old one, RFC 7296 2.18 and Libreswan with
the new one, and the new IKE SA would fail its integrity checks against one of them.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from .. import dh, proposals
from ..constants import ExchangeType, NotifyType, ProtocolId
from ..errors import ProtocolError
from ..events import FailureReason
from ..keys import new_nonce, new_spi
from ..message import Message
from ..payloads import KePayload, NoncePayload, Payload, Proposal, SaPayload
from ..state import ChildState, IkeState
from . import collisions, followup_ke
from .base import IkeCollision, error_notify, group_of, notify, retry_delay
from .rekeyed import adopt, spawn

if TYPE_CHECKING:
    from ..sa import IkeSa


class IkeRekey:
    """Our rekey of the IKE SA; holds the peer's colliding rekey while it is out."""

    __slots__ = ("collision", "group", "ke", "nonce", "spi", "wire")
    name = "rekey IKE"

    def __init__(self, group: int | None = None) -> None:
        self.group = group  # the peer's choice after INVALID_KE_PAYLOAD
        self.collision: IkeCollision | None = None
        self.wire: tuple[Proposal, ...] = ()
        self.spi = b""
        self.ke: dh.KeyExchange | None = None
        self.nonce = b""

    def build(self, sa: IkeSa, now: float) -> Message | None:
        if sa.state is not IkeState.ESTABLISHED or rekey_out(sa):
            return None  # rekeyed or deleted meanwhile
        assert sa.suite is not None
        specs = proposals.keeping_prf(sa.conf().proposals, sa.suite.prf) \
            or sa.conf().proposals
        self.spi = new_spi()
        self.wire = tuple(spec.to_wire(i + 1, self.spi, with_addke=True)
                          for i, spec in enumerate(specs))
        groups = [g for spec in specs for g in spec.dh_groups]
        # the current group while configured, else the first of the (changed) proposals
        self.ke = dh.new_key_exchange(self.group or (sa.suite.dh if sa.suite.dh in groups
                                                     else groups[0]))
        self.nonce = new_nonce()
        return sa.message(ExchangeType.CREATE_CHILD_SA, [
            SaPayload(self.wire), NoncePayload(self.nonce),
            KePayload(self.ke.group, self.ke.public_key)])

    def process(self, sa: IkeSa, msg: Message, now: float) -> None:
        ke = self.ke
        assert ke is not None
        theirs, self.collision = self.collision, None
        group = group_of(msg.notify(NotifyType.INVALID_KE_PAYLOAD))
        if theirs is None and group is not None and group != ke.group:
            sa.window.tasks.insert(0, IkeRekey(group))
            return
        error = error_notify(msg)
        sa_payload, nonce = msg.find(SaPayload), msg.find(NoncePayload)
        peer_ke = msg.find(KePayload)
        if error is not None or sa_payload is None or nonce is None or peer_ke is None:
            if theirs is not None:
                adopt(sa, theirs[1], now)  # the peer's rekey stands; it deletes us
            else:
                temporary = error is not None and \
                    error.notify_type == NotifyType.TEMPORARY_FAILURE
                sa.timers.rekey = now + (retry_delay() if temporary else 60)
            return
        chosen = sa_payload.proposals[0] if len(sa_payload.proposals) == 1 else None
        if chosen is None or not proposals.accept_chosen(self.wire, chosen) \
                or len(chosen.spi) != 8:
            raise ProtocolError("bad IKE rekey response")
        suite = proposals.suite_of(chosen)
        if suite.dh != ke.group or peer_ke.group != ke.group:
            raise ProtocolError("IKE rekey response key exchange group mismatch")
        shared, nonce_r = ke.shared_secret(peer_ke.data), nonce.data

        def make(sa_: IkeSa, extra: bytes, now_: float) -> None:
            assert sa_.keys is not None
            keys = sa_.keys.rekeyed(suite, shared, self.nonce, nonce_r, self.spi,
                                    chosen.spi, True, extra)
            ours = spawn(sa_, True, self.spi, chosen.spi, suite, keys, now_)
            collisions.our_ike_rekey_done(sa_, ours, min(self.nonce, nonce_r), theirs, now_)

        if not suite.addke:
            make(sa, b"", now)
            return

        def failed(sa_: IkeSa, reason: FailureReason, why: str, now_: float) -> None:
            if theirs is not None:
                adopt(sa_, theirs[1], now_)
            else:
                sa_.timers.rekey = now_ + 60

        try:
            followup_ke.start(sa, followup_ke.Followups(list(suite.addke), make, failed), msg)
        except ProtocolError as exc:
            failed(sa, FailureReason.PROTOCOL_ERROR, str(exc), now)


def rekey_out(sa: IkeSa) -> IkeRekey | None:
    """Our IKE rekey request, if it is out."""
    out = sa.window.outstanding
    return out.task if out is not None and isinstance(out.task, IkeRekey) else None


def respond(sa: IkeSa, msg: Message, sa_payload: SaPayload, now: float) -> None:
    """The responder's IKE rekey."""
    nonce, peer_ke = msg.find(NoncePayload), msg.find(KePayload)
    if nonce is None or peer_ke is None:
        raise ProtocolError("IKE rekey request lacks Nonce or KE")
    ours = rekey_out(sa)
    if ours is None and any(c.state is ChildState.REKEYING for c in sa.children.values()):
        # Finish our CHILD_SA rekey first; the peer retries (RFC 7296 2.25.2).
        sa.respond(msg, [notify(NotifyType.TEMPORARY_FAILURE)])
        return
    assert sa.suite is not None
    local = sa.conf().proposals
    chosen = proposals.select(proposals.keeping_prf(local, sa.suite.prf),
                              sa_payload.proposals, addke=True) \
        or proposals.select(local, sa_payload.proposals, addke=True)
    if chosen is None or len(chosen.spi) != 8:
        sa.respond(msg, [notify(NotifyType.NO_PROPOSAL_CHOSEN)])
        return
    suite = proposals.suite_of(chosen)
    if suite.dh != peer_ke.group:
        assert suite.dh is not None
        sa.respond(msg, [notify(NotifyType.INVALID_KE_PAYLOAD, struct.pack("!H", suite.dh))])
        return
    our_data, shared = dh.respond(suite.dh, peer_ke.data)
    nonce_i, nonce_r = nonce.data, new_nonce()
    spi_r = new_spi()
    answer = Proposal(chosen.number, ProtocolId.IKE, spi_r, chosen.transforms)

    def make(sa_: IkeSa, extra: bytes, now_: float) -> None:
        assert sa_.keys is not None
        keys = sa_.keys.rekeyed(suite, shared, nonce_i, nonce_r, chosen.spi, spi_r, False,
                                extra)
        new = spawn(sa_, False, chosen.spi, spi_r, suite, keys, now_)
        ours_now = rekey_out(sa_)
        collision = collisions.peer_ike_rekey(sa_, ours_now is not None,
                                              min(nonce_i, nonce_r), new, now_)
        if ours_now is not None:
            ours_now.collision = collision  # decided when the answer to ours arrives

    payloads: list[Payload] = [SaPayload((answer,)), NoncePayload(nonce_r),
                               KePayload(suite.dh, our_data)]
    if suite.addke:  # the new IKE SA is made after the IKE_FOLLOWUP_KE exchanges
        payloads.append(followup_ke.offer(sa, followup_ke.Followups(list(suite.addke), make)))
        sa.respond(msg, payloads)
        return
    sa.respond(msg, payloads)
    make(sa, b"", now)
