"""Per-address limits, cookies and the memory an unauthenticated peer can make the
responder hold (RFC 7296 2.6; RFC 7383 2.6; README "Security"). A daemon of its own, with
the default limits, so the memory measured here is this module's."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import ExitStack

import pytest

from tests.hostile.conftest import HostileLab, responder_conf, start_lab
from tests.hostile.peer import (
    Peer,
    establish,
    established,
    is_init_accept,
    skf,
)
from xfrmctl.ike.constants import NotifyType
from xfrmctl.ike.limits import Limits
from xfrmctl.ike.message import Message, encode
from xfrmctl.ike.payloads import NotifyPayload

pytestmark = [pytest.mark.netns, pytest.mark.hostile]
NT = NotifyType
DEFAULTS = Limits()
FRAGMENT_GROWTH_KIB = 16 * 1024  # RSS growth allowed for the fragment flood below


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostileLab]:
    with ExitStack() as stack:
        yield start_lab(stack, tmp_path_factory.mktemp("limits"), responder_conf())


def with_cookie(request: Message, cookie: bytes) -> bytes:
    """RFC 7296 2.6: the COOKIE notify first, then the request as it was."""
    return encode(Message(request.exchange, request.spi_i, request.spi_r, 0, True, False,
                          [NotifyPayload(NT.COOKIE, 0, b"", cookie), *request.payloads]))


def cookie_of(peer: Peer, request: Message) -> bytes:
    reply = peer.ask(encode(request))
    assert reply is not None and reply.message is not None, "no answer"
    cookie = reply.message.notify(NT.COOKIE)
    assert cookie is not None, f"no COOKIE asked: {reply.notify_types()}"
    assert reply.message.find(NotifyPayload) == cookie and len(reply.message.payloads) == 1
    return cookie.data


def fill_cookie_quota(peer: Peer) -> None:
    """Half-open SAs from `peer` up to the point where its address needs cookies."""
    for _ in range(DEFAULTS.cookie_threshold_per_address):
        _, request = peer.init_request()
        assert is_init_accept(peer.ask(encode(request)))


def test_cookie_required_after_per_address_threshold(healthy: HostileLab) -> None:
    """From the address's `cookie_threshold_per_address`-th half-open SA on, a COOKIE is
    asked (nothing kept); the request again with that cookie is accepted."""
    peer = healthy.peer()
    fill_cookie_quota(peer)
    _, request = peer.init_request()
    cookie = cookie_of(peer, request)
    assert is_init_accept(peer.ask(with_cookie(request, cookie)))


def test_wrong_cookie_is_not_accepted(healthy: HostileLab) -> None:
    peer = healthy.peer()
    fill_cookie_quota(peer)
    _, request = peer.init_request()
    cookie = bytearray(cookie_of(peer, request))
    cookie[-1] ^= 0xFF
    reply = peer.ask(with_cookie(request, bytes(cookie)))
    assert reply is None or not is_init_accept(reply)
    if reply is not None:
        assert reply.message is not None and reply.message.notify(NT.COOKIE) is not None


def test_cookie_replayed_with_another_spi_is_not_accepted(healthy: HostileLab) -> None:
    """A cookie binds the initiator's SPI (and nonce, address): reusing it for a new
    request gets no SA."""
    peer = healthy.peer()
    fill_cookie_quota(peer)
    _, request = peer.init_request()
    cookie = cookie_of(peer, request)
    _, other = peer.init_request()
    assert not is_init_accept(peer.ask(with_cookie(other, cookie)))


def test_cookie_replayed_from_another_address_is_not_accepted(healthy: HostileLab) -> None:
    owner, thief = healthy.peer(), healthy.peer()
    fill_cookie_quota(owner)
    fill_cookie_quota(thief)
    _, request = owner.init_request()
    cookie = cookie_of(owner, request)
    assert not is_init_accept(thief.ask(with_cookie(request, cookie)))


def test_replayed_cookie_request_makes_no_second_sa(healthy: HostileLab) -> None:
    """The same cookie'd request twice: one SA (the second answered from its cache)."""
    peer = healthy.peer()
    fill_cookie_quota(peer)
    _, request = peer.init_request()
    data = with_cookie(request, cookie_of(peer, request))
    one, two = peer.ask(data), peer.ask(data)
    assert is_init_accept(one) and one is not None and two is not None
    assert two.data == one.data


def test_half_open_per_address_limit_and_block(healthy: HostileLab) -> None:
    """One address returning every cookie: at most `half_open_per_address` half-open SAs;
    after `block_after` refusals it is blocked (silence even for valid requests), while
    another address is still served."""
    peer = healthy.peer()
    accepted = refused = 0
    for _ in range(DEFAULTS.half_open_per_address + DEFAULTS.block_after + 5):
        _, request = peer.init_request()
        reply = peer.ask(encode(request), timeout=0.5)
        if reply is not None and reply.message is not None \
                and (cookie := reply.message.notify(NT.COOKIE)) is not None:
            reply = peer.ask(with_cookie(request, cookie.data), timeout=0.5)
        if is_init_accept(reply):
            accepted += 1
        else:
            refused += 1
    assert accepted == DEFAULTS.half_open_per_address
    _, request = peer.init_request()
    assert peer.silent(encode(request))  # blocked: not even a COOKIE
    other = healthy.peer()
    _, request = other.init_request()
    assert is_init_accept(other.ask(encode(request)))


def test_fragments_of_future_message_ids_hold_no_memory(healthy: HostileLab) -> None:
    """The issue's attack: after IKE_SA_INIT, "fragment 1 of 2" of message IDs 2..N,
    60 kB each (48 MB in all): not kept (outside the window), RSS bounded."""
    keyed = healthy.peer().handshake()
    before = healthy.rss_kib()
    chunk = os.urandom(60_000)
    for mid in range(2, 802):
        keyed.peer.send(skf(keyed, mid, 1, 2, chunk))
        if mid % 20 == 0:
            time.sleep(0.01)  # let the responder read: the socket buffer would drop them
    assert keyed.peer.recv(1.0) is None
    growth = healthy.rss_kib() - before
    assert growth < FRAGMENT_GROWTH_KIB, f"RSS grew {growth} KiB"
    assert established(establish(keyed))
