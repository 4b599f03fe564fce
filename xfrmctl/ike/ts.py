"""Traffic selectors: parsing, narrowing (RFC 7296 2.9), and conversion to prefixes.

A selector is an address range, a port range and an IP protocol (0 = any). Written as
strongSwan does: "198.51.100.0/24", "198.51.100.7", "2001:db8::/32[tcp/443]",
"0.0.0.0/0[udp/500-4500]".
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from .constants import TsType
from .payloads import TrafficSelector

Address = IPv4Address | IPv6Address
Network = IPv4Network | IPv6Network

ANY_PROTOCOL = 0
# IANA protocol numbers by name (a table, not /etc/protocols: the core does no I/O).
_PROTOCOL_NAMES = {"any": 0, "icmp": 1, "igmp": 2, "ipencap": 4, "ipip": 4, "tcp": 6,
                   "udp": 17, "ipv6": 41, "gre": 47, "esp": 50, "ah": 51, "ipv6-icmp": 58,
                   "icmpv6": 58, "ospf": 89, "pim": 103, "l2tp": 115, "sctp": 132}
_NUMBER_TO_NAME = {6: "tcp", 17: "udp", 1: "icmp", 58: "ipv6-icmp", 132: "sctp", 47: "gre"}


def _ts_type(addr: Address) -> TsType:
    return TsType.IPV4_ADDR_RANGE if addr.version == 4 else TsType.IPV6_ADDR_RANGE


def from_network(net: Network | str, protocol: int = ANY_PROTOCOL, start_port: int = 0,
                 end_port: int = 65535) -> TrafficSelector:
    network = ipaddress.ip_network(net, strict=False) if isinstance(net, str) else net
    return TrafficSelector(_ts_type(network.network_address), protocol, start_port, end_port,
                           network.network_address, network.broadcast_address)


def from_address(addr: Address) -> TrafficSelector:
    return TrafficSelector(_ts_type(addr), ANY_PROTOCOL, 0, 65535, addr, addr)


def any_of(version: int) -> TrafficSelector:
    return from_network("0.0.0.0/0" if version == 4 else "::/0")


def parse(text: str) -> TrafficSelector:
    """Parse "net[proto/port]"; raise ValueError saying what is wrong."""
    text = text.strip()
    proto, start, end = ANY_PROTOCOL, 0, 65535
    if text.endswith("]") and "[" in text:
        text, _, spec = text[:-1].partition("[")
        proto, start, end = _parse_port_spec(spec)
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError as exc:
        raise ValueError(f"traffic selector {text!r}: {exc}") from None
    return from_network(network, proto, start, end)


def _parse_port_spec(spec: str) -> tuple[int, int, int]:
    proto_text, _, port_text = spec.partition("/")
    proto = _parse_protocol(proto_text)
    if not port_text or port_text == "any":
        return proto, 0, 65535
    low, _, high = port_text.partition("-")
    try:
        start, end = int(low), int(high or low)
    except ValueError:
        raise ValueError(f"bad port range {port_text!r}") from None
    if not 0 <= start <= end <= 65535:
        raise ValueError(f"bad port range {port_text!r}")
    return proto, start, end


def _parse_protocol(text: str) -> int:
    if not text:
        return ANY_PROTOCOL
    if text.lower() in _PROTOCOL_NAMES:
        return _PROTOCOL_NAMES[text.lower()]
    if not text.isdigit():
        raise ValueError(f"unknown protocol {text!r}")
    number = int(text)
    if not 0 <= number <= 255:
        raise ValueError(f"protocol {number} out of range")
    return number


def format_ts(ts: TrafficSelector) -> str:
    nets = list(ipaddress.summarize_address_range(ts.start_addr, ts.end_addr)) \
        if int(ts.start_addr) <= int(ts.end_addr) else []  # a peer may send an empty range
    addr = str(nets[0]) if len(nets) == 1 else f"{ts.start_addr}..{ts.end_addr}"
    if ts.ip_protocol == ANY_PROTOCOL and (ts.start_port, ts.end_port) == (0, 65535):
        return addr
    proto = _NUMBER_TO_NAME.get(ts.ip_protocol, str(ts.ip_protocol))
    if (ts.start_port, ts.end_port) == (0, 65535):
        return f"{addr}[{proto}]"
    ports = str(ts.start_port) if ts.start_port == ts.end_port else \
        f"{ts.start_port}-{ts.end_port}"
    return f"{addr}[{proto}/{ports}]"


@functools.lru_cache(maxsize=4096)
def address(text: str) -> IPv4Address | IPv6Address:
    """An address from its text, parsed once: peers' and our own addresses recur in every
    exchange (NAT detection hashes, dynamic selectors, identities). The objects are
    immutable, so sharing them is safe."""
    return ipaddress.ip_address(text)


def intersect(a: TrafficSelector, b: TrafficSelector) -> TrafficSelector | None:
    """The selector both allow, or None."""
    if a.ts_type != b.ts_type:
        return None
    if a.ip_protocol and b.ip_protocol and a.ip_protocol != b.ip_protocol:
        return None
    start_addr = max(int(a.start_addr), int(b.start_addr))
    end_addr = min(int(a.end_addr), int(b.end_addr))
    start_port, end_port = max(a.start_port, b.start_port), min(a.end_port, b.end_port)
    if start_addr > end_addr or start_port > end_port:
        return None
    make = IPv4Address if a.ts_type == TsType.IPV4_ADDR_RANGE else IPv6Address
    return TrafficSelector(a.ts_type, a.ip_protocol or b.ip_protocol, start_port, end_port,
                           make(start_addr), make(end_addr))


def covers(outer: TrafficSelector, inner: TrafficSelector) -> bool:
    return intersect(outer, inner) == inner


def narrow(proposed: Sequence[TrafficSelector],
           configured: Sequence[TrafficSelector]) -> list[TrafficSelector]:
    """Responder narrowing: every non-empty intersection of a proposed and a configured
    selector, in the configured order, without duplicates or selectors another covers."""
    found: list[TrafficSelector] = []
    for conf in configured:
        for prop in proposed:
            common = intersect(conf, prop)
            if common is not None and common not in found:
                found.append(common)
    return [ts for ts in found
            if not any(other != ts and covers(other, ts) for other in found)]


def all_covered(inner: Iterable[TrafficSelector], outer: Sequence[TrafficSelector]) -> bool:
    """Initiator check: everything the responder chose lies inside what we proposed."""
    return all(any(covers(o, i) for o in outer) for i in inner)


def to_networks(ts: TrafficSelector) -> tuple[Network, ...]:
    """The address range as CIDR prefixes (what an XFRM selector can hold). Cached: the
    same ranges come back with every CHILD_SA of a connection (and its policies, routes
    and MSS rules share the network objects)."""
    return _range_networks(ts.start_addr, ts.end_addr)


@functools.lru_cache(maxsize=4096)
def _range_networks(start: IPv4Address | IPv6Address, end: IPv4Address | IPv6Address
                    ) -> tuple[Network, ...]:
    return tuple(ipaddress.summarize_address_range(start, end))


def port_masks(start: int, end: int) -> list[tuple[int, int]]:
    """A port range as (port, mask) pairs, as the kernel selector expresses ports."""
    if (start, end) == (0, 65535):
        return [(0, 0)]
    out = []
    while start <= end:
        size = start & -start if start else 1 << 16
        while start + size - 1 > end:
            size >>= 1
        out.append((start, 0xFFFF & ~(size - 1)))
        start += size
    return out
