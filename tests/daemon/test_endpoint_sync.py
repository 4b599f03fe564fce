"""The IKE sockets follow the addresses (a daemon without `listen`, for MOBIKE): new
addresses get sockets on both ports, gone ones lose theirs, one that cannot be bound is
left out with a warning."""

from __future__ import annotations

import socket

from xfrmctl.daemon.endpoint import Endpoints


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_sockets_follow_the_addresses() -> None:
    endpoints = Endpoints(lambda data, local, remote: None)
    ike, nat = _free_port(), _free_port()
    try:
        assert await endpoints.sync(["127.0.0.1"], ike, nat) == ["127.0.0.1"]
        assert set(endpoints.protocols) == {("127.0.0.1", ike), ("127.0.0.1", nat)}
        kept = endpoints.protocols[("127.0.0.1", ike)]
        # an address this host does not have cannot be bound: left out, the rest stays
        assert await endpoints.sync(["127.0.0.1", "192.0.2.99"], ike, nat) == ["127.0.0.1"]
        assert endpoints.protocols[("127.0.0.1", ike)] is kept
        assert await endpoints.sync([], ike, nat) == []
        assert not endpoints.protocols and kept.transport is not None
        assert kept.transport.is_closing()
    finally:
        endpoints.close()
