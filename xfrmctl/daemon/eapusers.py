"""The EAP users the gateway's EAP-MSCHAPv2 checks logins against: name -> NT hash.

Read from the database (table eap_users, encrypted) with every configuration load, so a
user added, disabled or given a new password through the API counts from the next login
on; the IKE core asks `lookup` during the exchange (a dictionary read, no I/O). The
hashes stay in this process's memory only: never logged or shown.
"""

from __future__ import annotations

from collections.abc import Mapping


class EapUsers:
    __slots__ = ("_hashes",)

    def __init__(self) -> None:
        self._hashes: dict[str, bytes] = {}

    def replace(self, hashes: Mapping[str, bytes]) -> None:
        self._hashes = dict(hashes)  # one reference swap: readers see old or new

    def lookup(self, name: str) -> bytes | None:
        return self._hashes.get(name)

    def __len__(self) -> int:
        return len(self._hashes)

    def __repr__(self) -> str:
        return f"EapUsers({len(self._hashes)} users)"


EAP_USERS = EapUsers()
