"""MOBIKE (RFC 4555): moving an IKE_SA and its CHILD_SAs to new addresses.

Rules:
- Negotiated in IKE_AUTH: each side that wants it sends MOBIKE_SUPPORTED (3.1); it is on
  when both did. An initiator that wants it sends IKE_AUTH to port 4500 already (3.3;
  ike_init.py), NAT or not, so that a NAT on a later path needs no port change.
- Only the original initiator of the IKE_SA decides which addresses are used (3.1):
  "our address set changed" comes in from the daemon (`addresses_changed`), and when the
  address towards the peer is a different one the initiator sends an INFORMATIONAL with
  UPDATE_SA_ADDRESSES, NAT detection for the new path (3.5) and a COOKIE2 (return
  routability, 4.2: the answer must echo it, else the IKE_SA is closed), from the new
  address. Its other addresses go along as ADDITIONAL_IP4/IP6_ADDRESS, or
  NO_ADDITIONAL_ADDRESSES (3.6).
- The responder takes the addresses of the UPDATE_SA_ADDRESSES request itself (its IP
  header), NAT detection from its notifies, answers with its own NAT detection and the
  COOKIE2, and moves the CHILD_SAs (IkeSaMoved). It refuses (answers, changes nothing)
  an UPDATE_SA_ADDRESSES when MOBIKE was not negotiated or from the IKE_SA's responder.
- With MOBIKE, a request from a new address does not move the IKE_SA by itself (3.5:
  only UPDATE_SA_ADDRESSES does); a new port at the same address still does (NAT).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..constants import ExchangeType, NotifyType
from ..errors import ProtocolError
from ..events import FailureReason, IkeSaMoved
from ..message import Message
from ..payloads import NotifyPayload, Payload
from ..state import IkeState
from .base import error_notify, notify
from .ike_init import nat_hash

if TYPE_CHECKING:
    from ..sa import Endpoint, IkeSa

COOKIE2_SIZE = 16  # RFC 4555 3.6: 8 to 64 octets


def auth_notifies(sa: IkeSa) -> list[Payload]:
    """MOBIKE_SUPPORTED for our IKE_AUTH message when the connection wants MOBIKE."""
    conf = sa.config or sa.candidates[0]
    return [notify(NotifyType.MOBIKE_SUPPORTED)] if conf.mobike else []


def read_auth(sa: IkeSa, msg: Message) -> None:
    """After the peer's IKE_AUTH message: MOBIKE is on when both ends offered it."""
    sa.mobike = sa.conf().mobike and msg.notify(NotifyType.MOBIKE_SUPPORTED) is not None
    if sa.mobike:
        read_peer_addresses(sa, msg)


def read_peer_addresses(sa: IkeSa, msg: Message) -> None:
    """ADDITIONAL_IP4/IP6_ADDRESS and NO_ADDITIONAL_ADDRESSES (RFC 4555 3.6): the peer's
    other addresses, kept for the daemon (status); a malformed one is skipped."""
    found: list[str] = []
    listed = False
    for n in msg.notifies():
        if n.notify_type == NotifyType.NO_ADDITIONAL_ADDRESSES:
            listed = True
        elif n.notify_type in (NotifyType.ADDITIONAL_IP4_ADDRESS,
                               NotifyType.ADDITIONAL_IP6_ADDRESS):
            listed = True
            size = 4 if n.notify_type == NotifyType.ADDITIONAL_IP4_ADDRESS else 16
            if len(n.data) == size:
                found.append(str(ipaddress.ip_address(n.data)))
    if listed:
        sa.peer_addresses = tuple(found)


def address_notifies(additional: Sequence[str]) -> list[Payload]:
    if not additional:
        return [notify(NotifyType.NO_ADDITIONAL_ADDRESSES)]
    out: list[Payload] = []
    for text in additional:
        addr = ipaddress.ip_address(text)
        kind = NotifyType.ADDITIONAL_IP4_ADDRESS if addr.version == 4 \
            else NotifyType.ADDITIONAL_IP6_ADDRESS
        out.append(notify(kind, addr.packed))
    return out


def nat_notifies(sa: IkeSa, local: Endpoint, remote: Endpoint) -> list[Payload]:
    return [notify(NotifyType.NAT_DETECTION_SOURCE_IP, nat_hash(sa.spi_i, sa.spi_r, local)),
            notify(NotifyType.NAT_DETECTION_DESTINATION_IP,
                   nat_hash(sa.spi_i, sa.spi_r, remote))]


def read_nat(sa: IkeSa, msg: Message, local: Endpoint, remote: Endpoint) -> bool:
    """NAT detection on the path (local, remote) from the peer's notifies (RFC 7296
    2.23); False when the message had none (the flags stay)."""
    src = [n.data for n in msg.notifies()
           if n.notify_type == NotifyType.NAT_DETECTION_SOURCE_IP]
    dst = [n.data for n in msg.notifies()
           if n.notify_type == NotifyType.NAT_DETECTION_DESTINATION_IP]
    if not src or not dst:
        return False
    sa.nat_remote = nat_hash(sa.spi_i, sa.spi_r, remote) not in src
    sa.nat_local = nat_hash(sa.spi_i, sa.spi_r, local) not in dst or sa.conf().force_encap
    return True


def moved(sa: IkeSa, old_local: Endpoint, old_remote: Endpoint, old_nat: tuple[bool, bool]
          ) -> None:
    if (sa.local, sa.remote, (sa.nat_local, sa.nat_remote)) == (old_local, old_remote,
                                                                 old_nat):
        return
    sa.emit(IkeSaMoved(ike_sa=sa.id, connection=sa.name, old_local=old_local,
                       old_remote=old_remote, local=sa.local, remote=sa.remote,
                       nat_local=sa.nat_local, nat_remote=sa.nat_remote))


# ----------------------------------------------------------------- the initiator


def decides(sa: IkeSa) -> bool:
    """Whether we may move this IKE_SA: MOBIKE is on and we are its original initiator."""
    return sa.mobike and sa.original_initiator and sa.state is IkeState.ESTABLISHED


def addresses_changed(sa: IkeSa, local: str | None, additional: Sequence[str],
                      now: float) -> bool:
    """The daemon's input: `local` is the address the kernel now uses towards the peer
    (None: none, wait for one), `additional` our other usable addresses. Returns whether
    an exchange was queued."""
    if not decides(sa) or local is None:
        return False
    others = tuple(a for a in additional if a != local
                   and ipaddress.ip_address(a).version == ipaddress.ip_address(local).version)
    pending = next((t for t in sa.window.tasks if isinstance(t, MobikeUpdate)), None)
    if local == sa.local[0] and pending is None:
        if others == sa.own_addresses:  # (None until we first listed them)
            return False
        sa.own_addresses = others
        sa.queue(MobikeUpdate(update=False), now)
        return True
    sa.own_addresses = others
    old = sa.local
    # Retransmissions of a request already out leave from the new address too (the old
    # path may be gone); the update follows it.
    sa.local = (local, sa.local[1])
    if pending is not None:
        pending.update = True
        return True
    if sa.local != old:
        out = sa.window.outstanding
        if out is not None:
            sa.emit_datagrams(out.datagrams)
    sa.queue(MobikeUpdate(update=True, old_local=old), now)
    return True


class MobikeUpdate:
    """The initiator's INFORMATIONAL with UPDATE_SA_ADDRESSES (or only its address list)."""

    __slots__ = ("cookie2", "old_local", "update")
    name = "MOBIKE"

    def __init__(self, update: bool, old_local: Endpoint | None = None) -> None:
        self.update = update
        self.old_local = old_local
        self.cookie2 = os.urandom(COOKIE2_SIZE)

    def build(self, sa: IkeSa, now: float) -> Message:
        payloads: list[Payload] = []
        if self.update:
            payloads += [notify(NotifyType.UPDATE_SA_ADDRESSES),
                         *nat_notifies(sa, sa.local, sa.remote)]
        payloads += address_notifies(sa.own_addresses or ())
        payloads.append(notify(NotifyType.COOKIE2, self.cookie2))
        return sa.message(ExchangeType.INFORMATIONAL, payloads)

    def process(self, sa: IkeSa, msg: Message, now: float) -> None:
        cookie2 = msg.notify(NotifyType.COOKIE2)
        if cookie2 is None or cookie2.data != self.cookie2:
            # RFC 4555 4.2: a missing or wrong COOKIE2 fails the return routability check
            sa.fail(FailureReason.PROTOCOL_ERROR,
                    "MOBIKE answer without our COOKIE2 (return routability check failed)")
            return
        if error_notify(msg) is not None or not self.update:  # e.g. UNACCEPTABLE_ADDRESSES
            return
        old_nat = (sa.nat_local, sa.nat_remote)
        read_nat(sa, msg, sa.local, sa.remote)
        moved(sa, self.old_local or sa.local, sa.remote, old_nat)


# ----------------------------------------------------------------- the responder


def respond_update(sa: IkeSa, msg: Message, path: tuple[Endpoint, Endpoint]) -> list[Payload]:
    """The answer's payloads to an INFORMATIONAL carrying MOBIKE notifies."""
    answer: list[Payload] = []
    cookie2 = msg.notify(NotifyType.COOKIE2)
    if cookie2 is not None:
        if not 8 <= len(cookie2.data) <= 64:
            raise ProtocolError("COOKIE2 of a size outside 8..64 octets")
        answer.append(NotifyPayload(NotifyType.COOKIE2, 0, b"", cookie2.data))
    if not sa.mobike or sa.original_initiator:
        return answer  # refused: not negotiated, or the peer does not decide (3.1)
    read_peer_addresses(sa, msg)
    if msg.notify(NotifyType.UPDATE_SA_ADDRESSES) is None:
        return answer
    local, remote = path
    old_local, old_remote, old_nat = sa.local, sa.remote, (sa.nat_local, sa.nat_remote)
    sa.local, sa.remote = local, remote
    read_nat(sa, msg, local, remote)
    moved(sa, old_local, old_remote, old_nat)
    return [*nat_notifies(sa, local, remote), *answer]


def has_mobike_notify(msg: Message) -> bool:
    return any(n.notify_type in _MOBIKE_NOTIFIES for n in msg.notifies())


_MOBIKE_NOTIFIES = frozenset({
    NotifyType.UPDATE_SA_ADDRESSES, NotifyType.COOKIE2, NotifyType.ADDITIONAL_IP4_ADDRESS,
    NotifyType.ADDITIONAL_IP6_ADDRESS, NotifyType.NO_ADDITIONAL_ADDRESSES})
