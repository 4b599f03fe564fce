"""Virtual IP pools: an owner keeps its address while any of its IKE SAs holds it, and a
restored SA takes its address back so no new client is given it."""

from __future__ import annotations

import ipaddress

from xfrmctl.daemon.pool import AddressPool


def pool() -> AddressPool:
    return AddressPool("198.51.100.0/29")


def test_a_reconnecting_owner_keeps_its_address_when_its_old_sa_closes() -> None:
    p = pool()
    first = p.acquire("carol")
    assert p.acquire("carol") == first  # the new IKE SA of the same user, old one still up
    p.release("carol")  # the old SA closes
    assert p.leases == {"carol": first}
    assert p.acquire("dave") != first
    p.release("carol")
    assert "carol" not in p.leases


def test_a_restored_lease_is_not_given_to_anybody_else() -> None:
    p = pool()
    address = ipaddress.IPv4Address("198.51.100.1")
    assert p.claim("carol", address)
    assert p.acquire("dave") == ipaddress.IPv4Address("198.51.100.2")
    assert not p.claim("erin", address)  # somebody else's
    assert not p.claim("erin", ipaddress.IPv4Address("203.0.113.1"))  # not in the pool
    assert p.claim("carol", address)  # a second SA of carol restored too
    p.release("carol")
    assert p.leases["carol"] == address


def test_an_exhausted_pool_gives_nothing_then_reuses_released_addresses() -> None:
    p = pool()  # a /29: six hosts
    addresses = [p.acquire(f"user{i}") for i in range(6)]
    assert None not in addresses and len(set(addresses)) == 6
    assert p.acquire("late") is None
    p.release("user3")
    assert p.acquire("late") == addresses[3]
