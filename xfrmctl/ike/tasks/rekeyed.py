"""An IKE SA made by a rekey (RFC 7296 2.18) and how it takes over from the old one.

It is keyed and reachable at once but silent (no events, no CHILD_SAs) until `adopt`
makes it the old SA's successor; the old SA then waits for its delete (ours, queued by
`delete_rekeyed`, or the peer's). A collision's redundant SA deletes itself
(`delete_redundant`), or is deleted by us when the peer forgets to.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..events import IkeSaRekeyed
from ..keys import KeyState
from ..proposals import Suite
from ..state import ChildState, IkeState
from .base import retry_delay
from .ike_delete import IkeDelete

if TYPE_CHECKING:
    from ..sa import IkeSa


def spawn(sa: IkeSa, initiator: bool, spi_i: bytes, spi_r: bytes, suite: Suite,
          keys: KeyState, now: float) -> IkeSa:
    """The IKE SA a rekey exchange of `sa` made: silent until adopted."""
    new = type(sa)(initiator=initiator, local=sa.local, remote=sa.remote, now=now,
                   config=sa.conf(), spi_allocator=sa.alloc_spi)
    new.spi_i, new.spi_r, new.suite, new.keys, new.setup = spi_i, spi_r, suite, keys, None
    new.local_id, new.remote_id = sa.local_id, sa.remote_id
    new.nat_local, new.nat_remote = sa.nat_local, sa.nat_remote
    new.peer_fragmentation, new.peer_hashes = sa.peer_fragmentation, sa.peer_hashes
    new.virtual_ip, new.remote_eap_id = sa.virtual_ip, sa.remote_eap_id
    new.mobike, new.original_initiator = sa.mobike, sa.original_initiator
    new.own_addresses, new.peer_addresses = sa.own_addresses, sa.peer_addresses
    new.silent = True
    new.move_to(IkeState.INIT_DONE)
    new.move_to(IkeState.ESTABLISHED)
    new.established_at = now
    new.arm_dpd(now)
    sa.spawned.append(new)
    return new


def adopt(sa: IkeSa, new: IkeSa, now: float) -> None:
    """`new` replaces `sa`: CHILD_SAs and pending CHILD_SA retries move over; `sa` waits
    for the delete (ours or the peer's)."""
    sa.move_to(IkeState.REKEYED)
    new.children, sa.children = sa.children, {}
    for child in new.children.values():
        if child.state is ChildState.REKEYING:  # its queued rekey dies with our tasks
            child.move_to(ChildState.INSTALLED)
            new.timers.child_retries.append((now + retry_delay(), child.config.name,
                                             child.child_id))
    new.timers.child_retries += sa.timers.child_retries
    sa.timers.child_retries = []
    new.silent = False
    conf = sa.conf()
    if conf.rekey_time:
        new.timers.rekey = now + conf.rekey_time * 0.9
    new.timers.arm_lifetime(conf, now, sa.timers.reauth)  # a rekey does not reauthenticate
    sa.successor = new
    sa.timers.rekey = sa.timers.reauth = sa.timers.expire = sa.timers.dpd = None
    assert new.suite is not None
    sa.emit(IkeSaRekeyed(sa.id, new.id, new.spi_i, new.spi_r, new.suite))


def delete_rekeyed(sa: IkeSa, now: float) -> None:
    """As initiator of the surviving rekey exchange, delete the old IKE SA."""
    sa.window.tasks.clear()
    sa.queue(IkeDelete("rekeyed", quiet=True), now)


def delete_redundant(sa: IkeSa, now: float) -> None:
    """Delete this never-announced IKE SA, the loser of a rekey collision."""
    sa.window.tasks.clear()
    sa.move_to(IkeState.DELETING)
    sa.send_request(IkeDelete("rekey collision lost", quiet=True), now)
