"""Virtual IP pools for remote access: one address per owner (the peer's EAP user, else
its IKE identity), kept while any IKE SA of that owner holds it (a reconnecting client
gets the same address back; its old SA closing does not free it under the new one)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

from xfrmctl.ike.config import AddressPoolLike

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class AddressPool(AddressPoolLike):
    def __init__(self, prefix: str) -> None:
        self.network = ipaddress.ip_network(prefix, strict=False)
        self._leases: dict[str, IPAddress] = {}
        self._holders: dict[str, int] = {}  # owner -> IKE SAs holding its lease
        self._taken: set[IPAddress] = set()
        self._free: Iterator[IPAddress] = self.network.hosts()

    def acquire(self, owner: str) -> IPAddress | None:
        if owner in self._leases:
            self._holders[owner] += 1
            return self._leases[owner]
        address = next((a for a in self._free if a not in self._taken), None)
        if address is None:  # ran off the end: look again for released addresses
            self._free = self.network.hosts()
            address = next((a for a in self._free if a not in self._taken), None)
        if address is None:
            return None
        self._lease(owner, address)
        return address

    def claim(self, owner: str, address: IPAddress) -> bool:
        """Take `address` for `owner` again (an IKE SA restored after a restart); False if
        it is outside the pool or leased to somebody else."""
        if self._leases.get(owner) == address:
            self._holders[owner] += 1
            return True
        if address not in self.network or address in self._taken or owner in self._leases:
            return False
        self._lease(owner, address)
        return True

    def release(self, owner: str) -> None:
        held = self._holders.get(owner, 0) - 1
        if held > 0:
            self._holders[owner] = held
            return
        self._holders.pop(owner, None)
        address = self._leases.pop(owner, None)
        if address is not None:
            self._taken.discard(address)

    def _lease(self, owner: str, address: IPAddress) -> None:
        self._leases[owner] = address
        self._holders[owner] = 1
        self._taken.add(address)

    @property
    def leases(self) -> dict[str, IPAddress]:
        return dict(self._leases)
