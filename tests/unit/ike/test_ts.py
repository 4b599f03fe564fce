"""Traffic selectors: strongSwan syntax, set operations, narrowing, kernel forms."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xfrmctl.ike import ts
from xfrmctl.ike.constants import TsType
from xfrmctl.ike.payloads import TrafficSelector


def p(text: str) -> TrafficSelector:
    return ts.parse(text)


@pytest.mark.parametrize(("text", "ts_type", "proto", "ports", "first", "last"), [
    ("198.51.100.0/24", TsType.IPV4_ADDR_RANGE, 0, (0, 65535), "198.51.100.0",
     "198.51.100.255"),
    ("198.51.100.7", TsType.IPV4_ADDR_RANGE, 0, (0, 65535), "198.51.100.7", "198.51.100.7"),
    ("198.51.100.9/24", TsType.IPV4_ADDR_RANGE, 0, (0, 65535), "198.51.100.0",
     "198.51.100.255"),
    ("203.0.113.0/25[tcp/443]", TsType.IPV4_ADDR_RANGE, 6, (443, 443), "203.0.113.0",
     "203.0.113.127"),
    ("0.0.0.0/0[udp/500-4500]", TsType.IPV4_ADDR_RANGE, 17, (500, 4500), "0.0.0.0",
     "255.255.255.255"),
    ("192.0.2.0/24[tcp]", TsType.IPV4_ADDR_RANGE, 6, (0, 65535), "192.0.2.0", "192.0.2.255"),
    ("192.0.2.0/24[47]", TsType.IPV4_ADDR_RANGE, 47, (0, 65535), "192.0.2.0", "192.0.2.255"),
    ("192.0.2.0/24[udp/any]", TsType.IPV4_ADDR_RANGE, 17, (0, 65535), "192.0.2.0",
     "192.0.2.255"),
    ("2001:db8::/32", TsType.IPV6_ADDR_RANGE, 0, (0, 65535), "2001:db8::",
     "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff"),
    ("2001:db8::1[ipv6-icmp]", TsType.IPV6_ADDR_RANGE, 58, (0, 65535), "2001:db8::1",
     "2001:db8::1"),
])
def test_parse(text: str, ts_type: TsType, proto: int, ports: tuple[int, int], first: str,
               last: str) -> None:
    sel = p(text)
    assert sel.ts_type == ts_type and sel.ip_protocol == proto
    assert (sel.start_port, sel.end_port) == ports
    assert (str(sel.start_addr), str(sel.end_addr)) == (first, last)


@pytest.mark.parametrize(("text", "message"), [
    ("198.51.100.0/33", "198.51.100.0/33"),
    ("gateway.example", "gateway.example"),
    ("192.0.2.0/24[tcp/80-70]", "bad port range '80-70'"),
    ("192.0.2.0/24[tcp/70000]", "bad port range '70000'"),
    ("192.0.2.0/24[tcp/http]", "bad port range 'http'"),
    ("192.0.2.0/24[nosuchproto]", "unknown protocol 'nosuchproto'"),
    ("192.0.2.0/24[300]", "protocol 300 out of range"),
])
def test_parse_errors_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ts.parse(text)


@pytest.mark.parametrize("text", [
    "198.51.100.0/24", "198.51.100.7/32", "203.0.113.0/25[tcp/443]",
    "0.0.0.0/0[udp/500-4500]", "192.0.2.0/24[tcp]", "192.0.2.0/24[gre]",
    "192.0.2.0/24[99]", "2001:db8::/32", "2001:db8::1/128[ipv6-icmp]", "::/0[sctp/1-2]",
])
def test_format_round_trips(text: str) -> None:
    assert ts.format_ts(p(text)) == text
    assert p(ts.format_ts(p(text))) == p(text)


def test_format_names_known_protocols() -> None:
    assert ts.format_ts(p("192.0.2.0/24[47]")) == "192.0.2.0/24[gre]"
    assert ts.format_ts(p("192.0.2.0/24[icmpv6]")) == "192.0.2.0/24[ipv6-icmp]"


def test_format_of_a_range_that_is_no_prefix() -> None:
    sel = TrafficSelector(TsType.IPV4_ADDR_RANGE, 0, 0, 65535,
                          ipaddress.IPv4Address("192.0.2.10"),
                          ipaddress.IPv4Address("192.0.2.20"))
    assert ts.format_ts(sel) == "192.0.2.10..192.0.2.20"
    assert [str(n) for n in ts.to_networks(sel)] == [
        "192.0.2.10/31", "192.0.2.12/30", "192.0.2.16/30", "192.0.2.20/32"]
    empty = TrafficSelector(TsType.IPV4_ADDR_RANGE, 0, 0, 65535, sel.end_addr, sel.start_addr)
    assert ts.format_ts(empty) == "192.0.2.20..192.0.2.10"  # as a peer may send it
    assert ts.intersect(empty, p("0.0.0.0/0")) is None


def test_intersect() -> None:
    assert ts.intersect(p("198.51.100.0/24"), p("198.51.100.128/25")) == p("198.51.100.128/25")
    assert ts.intersect(p("198.51.100.0/25"), p("198.51.100.128/25")) is None
    assert ts.intersect(p("0.0.0.0/0[tcp]"), p("192.0.2.0/24[udp]")) is None
    assert ts.intersect(p("0.0.0.0/0[tcp]"), p("192.0.2.0/24")) == p("192.0.2.0/24[tcp]")
    assert ts.intersect(p("0.0.0.0/0[tcp/1-1000]"), p("192.0.2.0/24[tcp/500-2000]")) == \
        p("192.0.2.0/24[tcp/500-1000]")
    assert ts.intersect(p("0.0.0.0/0[tcp/1-10]"), p("0.0.0.0/0[tcp/11-20]")) is None
    assert ts.intersect(p("::/0"), p("0.0.0.0/0")) is None
    assert ts.intersect(p("2001:db8::/32"), p("2001:db8:1::/48[udp/53]")) == \
        p("2001:db8:1::/48[udp/53]")


def test_covers() -> None:
    assert ts.covers(p("198.51.100.0/24"), p("198.51.100.7[tcp/22]"))
    assert not ts.covers(p("198.51.100.0/24[tcp]"), p("198.51.100.7"))
    assert not ts.covers(p("198.51.100.128/25"), p("198.51.100.0/24"))
    assert ts.covers(p("::/0"), p("2001:db8::/32"))
    assert not ts.covers(p("::/0"), p("192.0.2.1"))


def test_narrow_keeps_configured_order_and_drops_covered() -> None:
    proposed = [p("198.51.100.0/24"), p("198.51.100.0/25")]
    configured = [p("198.51.100.128/26"), p("0.0.0.0/0[tcp]"), p("198.51.100.64/26")]
    assert ts.narrow(proposed, configured) == [
        p("198.51.100.128/26"), p("198.51.100.0/24[tcp]"), p("198.51.100.64/26")]
    # the /25 x tcp intersection lies inside the /24 x tcp one and is dropped
    assert p("198.51.100.0/25[tcp]") not in ts.narrow(proposed, configured)
    assert ts.narrow([p("192.0.2.0/24")], [p("203.0.113.0/24")]) == []
    assert ts.narrow([p("2001:db8::/32")], [p("2001:db8:5::/48"), p("192.0.2.0/24")]) == [
        p("2001:db8:5::/48")]


def test_all_covered() -> None:
    ours = [p("198.51.100.0/24"), p("2001:db8::/32")]
    assert ts.all_covered([p("198.51.100.0/25"), p("2001:db8:1::/48[tcp]")], ours)
    assert not ts.all_covered([p("198.51.100.0/23")], ours)
    assert ts.all_covered([], ours)


def test_helpers_for_dynamic_selectors() -> None:
    assert ts.from_address(ipaddress.ip_address("192.0.2.1")) == p("192.0.2.1/32")
    assert ts.any_of(4) == p("0.0.0.0/0") and ts.any_of(6) == p("::/0")
    assert ts.from_network("2001:db8::/64", 6, 80, 80) == p("2001:db8::/64[tcp/80]")


@pytest.mark.parametrize(("start", "end", "masks"), [
    (0, 65535, [(0, 0)]),
    (443, 443, [(443, 0xFFFF)]),
    (1024, 2047, [(1024, 0xFC00)]),
    (0, 1023, [(0, 0xFC00)]),
    (500, 503, [(500, 0xFFFC)]),
    (1, 3, [(1, 0xFFFF), (2, 0xFFFE)]),
])
def test_port_masks(start: int, end: int, masks: list[tuple[int, int]]) -> None:
    assert ts.port_masks(start, end) == masks


@given(st.integers(0, 65535), st.integers(0, 65535))
def test_port_masks_cover_exactly_the_range(a: int, b: int) -> None:
    start, end = min(a, b), max(a, b)
    masks = ts.port_masks(start, end)
    covered: set[int] = set()
    for port, mask in masks:
        block = (~mask & 0xFFFF) + 1
        assert port & ~mask & 0xFFFF == 0  # aligned
        block_ports = set(range(port, port + block))
        assert not covered & block_ports  # no overlaps
        covered |= block_ports
    if (start, end) != (0, 65535):
        assert covered == set(range(start, end + 1))
    assert len(masks) <= 32


addresses = st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address)


@st.composite
def selectors(draw: st.DrawFn) -> TrafficSelector:
    a, b = sorted((draw(addresses), draw(addresses)))
    pa, pb = sorted((draw(st.integers(0, 65535)), draw(st.integers(0, 65535))))
    proto = draw(st.sampled_from([0, 6, 17]))
    return TrafficSelector(TsType.IPV4_ADDR_RANGE, proto, pa, pb, a, b)


@given(selectors(), selectors())
def test_intersection_is_symmetric_and_inside_both(x: TrafficSelector,
                                                   y: TrafficSelector) -> None:
    common = ts.intersect(x, y)
    assert common == ts.intersect(y, x)
    if common is not None:
        assert ts.covers(x, common) and ts.covers(y, common)
        assert ts.intersect(common, x) == common


def test_narrow_to_a_protocol_and_port() -> None:
    """A responder configured for web only narrows a peer's whole-subnet proposal to it;
    one configured wide keeps what a web-only initiator proposes."""
    web = p("203.0.113.0/24[tcp/443]")
    assert ts.narrow([p("203.0.113.0/24")], [web]) == [web]
    assert ts.narrow([p("0.0.0.0/0")], [web]) == [web]
    assert ts.narrow([web], [p("203.0.113.0/24")]) == [web]
    assert ts.narrow([p("203.0.113.0/24[tcp/1-1024]")], [web]) == [web]
    assert ts.narrow([p("203.0.113.0/24[udp]")], [web]) == []
    assert ts.narrow([p("203.0.113.0/24[tcp/80]")], [web]) == []
    assert ts.all_covered([web], [p("203.0.113.0/24")])
    assert not ts.all_covered([p("203.0.113.0/24")], [web])
