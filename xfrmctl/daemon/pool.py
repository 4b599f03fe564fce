"""Virtual IP pools for remote access: one address per peer identity, stable while the
peer holds it (a reconnecting client gets the same address back)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

from xfrmctl.ike.config import AddressPoolLike

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class AddressPool(AddressPoolLike):
    def __init__(self, prefix: str) -> None:
        self.network = ipaddress.ip_network(prefix, strict=False)
        self._leases: dict[str, IPAddress] = {}
        self._taken: set[IPAddress] = set()
        self._free: Iterator[IPAddress] = self.network.hosts()

    def acquire(self, owner: str) -> IPAddress | None:
        if owner in self._leases:
            return self._leases[owner]
        address = next((a for a in self._free if a not in self._taken), None)
        if address is None:  # ran off the end: look again for released addresses
            self._free = self.network.hosts()
            address = next((a for a in self._free if a not in self._taken), None)
        if address is None:
            return None
        self._leases[owner] = address
        self._taken.add(address)
        return address

    def release(self, owner: str) -> None:
        address = self._leases.pop(owner, None)
        if address is not None:
            self._taken.discard(address)

    @property
    def leases(self) -> dict[str, IPAddress]:
        return dict(self._leases)
