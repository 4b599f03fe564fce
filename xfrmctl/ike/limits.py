"""What a peer that has not authenticated may make the daemon hold, and the account of it.

`Limits` are the settings (the daemon configuration maps onto them); `Budget` is the
manager-wide account that every half-open IKE SA and every fragment buffer is charged to.
Rules:
- One cap, `memory`, bounds the octets charged for half-open IKE SAs (a fixed estimate
  of each SA's state plus the IKE_SA_INIT request it keeps for AUTH) and for fragments
  held for reassembly (of any SA: a message in pieces has not been processed yet).
- Half-open IKE SAs: at most `half_open` in total; when the table or the memory cap is
  full the oldest is dropped for a new one (as a SYN cache does: a legitimate initiator
  completes within a round trip, a flood's entries are the old ones). From an address
  with `cookie_threshold_per_address` half-open SAs a COOKIE is required (so a spoofed
  source cannot use up a victim's quota); at most `half_open_per_address` per source
  address, counted even when the peer returned a cookie; further IKE_SA_INITs from it
  are dropped unanswered, and after `block_after` such refusals the address is blocked
  for `block_time` seconds. Addresses in `block_networks` are never answered.
- Fragments (RFC 7383): reassembled only for the message ID the window expects; per SA
  at most `fragments_per_sa` pieces and `fragment_bytes_per_sa` octets; in total at most
  `fragments` pieces and `fragment_bytes` octets. A fragment over a cap is dropped.
- Cookies are stateless (one secret, rotated); error answers to unauthenticated requests
  (INVALID_MAJOR_VERSION, UNSUPPORTED_CRITICAL_PAYLOAD, NO_PROPOSAL_CHOSEN outside an
  SA) are rate-limited to `answers_per_second`.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Estimated octets one half-open responder IKE SA holds besides the IKE_SA_INIT request it
# keeps: the IkeSa object and its containers, keys, ciphers, DH state and cached response
# (measured with tracemalloc in tests/unit/ike/test_limits.py, rounded up).
HALF_OPEN_COST = 8192
MAX_BLOCKED = 4096  # temporarily blocked addresses remembered at once (oldest forgotten)


@dataclass(frozen=True, slots=True)
class Limits:
    memory: int = 64 * 1024 * 1024
    half_open: int = 5000
    half_open_per_address: int = 10
    cookie_threshold_per_address: int = 3
    block_after: int = 50
    block_time: float = 60.0
    block_networks: tuple[Network, ...] = ()
    fragments_per_sa: int = 64
    fragment_bytes_per_sa: int = 65535
    fragments: int = 16384
    fragment_bytes: int = 16 * 1024 * 1024
    answers_per_second: float = 100.0

    def __post_init__(self) -> None:
        for name in ("memory", "half_open", "half_open_per_address", "block_after",
                     "fragments_per_sa", "fragment_bytes_per_sa", "fragments",
                     "fragment_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"limit {name} must be at least 1")
        if self.block_time < 0 or self.answers_per_second < 0 \
                or self.cookie_threshold_per_address < 0:
            raise ValueError("block_time, answers_per_second and "
                             "cookie_threshold_per_address cannot be negative")

    def blocked_network(self, address: str) -> bool:
        if not self.block_networks:
            return False
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        return any(ip in net for net in self.block_networks)


class Budget:
    """The octets and fragments held for unauthenticated peers, against `Limits`."""

    __slots__ = ("fragment_bytes", "fragments", "half_open_bytes", "limits")

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self.half_open_bytes = 0
        self.fragment_bytes = 0
        self.fragments = 0

    @property
    def held(self) -> int:
        return self.half_open_bytes + self.fragment_bytes

    def room(self, size: int) -> bool:
        return self.held + size <= self.limits.memory

    def reserve_fragment(self, size: int) -> bool:
        limits = self.limits
        if self.fragments + 1 > limits.fragments \
                or self.fragment_bytes + size > limits.fragment_bytes or not self.room(size):
            return False
        self.fragments += 1
        self.fragment_bytes += size
        return True

    def release_fragments(self, count: int, size: int) -> None:
        self.fragments -= count
        self.fragment_bytes -= size
