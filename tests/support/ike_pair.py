"""Two IKE managers wired together in memory, with a virtual clock and a lossy link."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from cryptography import x509

from tests.support.pki import Credential
from xfrmctl.ike import ts
from xfrmctl.ike.certs import TrustStore
from xfrmctl.ike.config import AuthMethodName, ChildConfig, IkeConfig, LocalAuth, RemoteAuth
from xfrmctl.ike.events import (
    ChildSaNegotiated,
    Event,
)
from xfrmctl.ike.manager import IkeManager
from xfrmctl.ike.sa import Datagram

ADDR_A = "192.0.2.1"
ADDR_B = "192.0.2.2"
PSK = b"test-only pre-shared key 0123456789"


def psk_config(name: str = "net", *, psk: bytes = PSK, peer_psk: bytes | None = None,
               children: tuple[ChildConfig, ...] = (), **kwargs: object) -> IkeConfig:
    return IkeConfig(
        name=name,
        local_auth=LocalAuth(AuthMethodName.PSK, psk=psk),
        remote_auth=RemoteAuth(AuthMethodName.PSK, psk=peer_psk or psk),
        children=children,
        **kwargs,  # type: ignore[arg-type]
    )


def cert_config(name: str = "net", *, cred: Credential, trust: Sequence[x509.Certificate],
                intermediates: Sequence[x509.Certificate] = (),
                children: tuple[ChildConfig, ...] = (), **kwargs: object) -> IkeConfig:
    """A connection authenticated by `cred` (key and certificate), trusting the CAs `trust`."""
    return IkeConfig(
        name=name,
        local_auth=LocalAuth(AuthMethodName.PUBKEY, private_key=cred.key,
                             certificate=cred.cert, intermediates=tuple(intermediates)),
        remote_auth=RemoteAuth(AuthMethodName.PUBKEY, trust=TrustStore(trust)),
        children=children,
        **kwargs,  # type: ignore[arg-type]
    )


@dataclass
class Pair:
    """`a` initiates towards `b`; `now` is the shared virtual clock."""

    a: IkeManager
    b: IkeManager
    now: float = 1_700_000_000.0
    events_a: list[Event] = field(default_factory=list)
    events_b: list[Event] = field(default_factory=list)
    wire: list[tuple[str, Datagram]] = field(default_factory=list)
    drop: Callable[[str, Datagram], bool] = lambda side, d: False

    def endpoint(self, side: str, port: int = 500) -> tuple[str, int]:
        return (ADDR_A if side == "a" else ADDR_B, port)

    def pump(self, rounds: int = 50) -> None:
        """Deliver datagrams both ways until nothing moves."""
        for _ in range(rounds):
            moved = False
            for side, src, dst in (("a", self.a, self.b), ("b", self.b, self.a)):
                for d in src.datagrams_to_send():
                    moved = True
                    self.wire.append((side, d))
                    if not self.drop(side, d):
                        dst.receive_datagram(d.data, d.remote, d.local, self.now)
            self._drain()
            if not moved:
                return
        raise AssertionError("exchange did not settle")

    def step(self, side: str) -> list[Datagram]:
        """Deliver what `side` has queued (in order) and nothing more; returns it. For
        tests that check state after each message."""
        src, dst = (self.a, self.b) if side == "a" else (self.b, self.a)
        sent = src.datagrams_to_send()
        for d in sent:
            self.wire.append((side, d))
            if not self.drop(side, d):
                dst.receive_datagram(d.data, d.remote, d.local, self.now)
        self._drain()
        return sent

    def _drain(self) -> None:
        while (e := self.a.next_event()) is not None:
            self.events_a.append(e)
        while (e := self.b.next_event()) is not None:
            self.events_b.append(e)

    def advance(self, seconds: float) -> None:
        """Move the clock, firing timers in order, and deliver what they send."""
        end = self.now + seconds
        while True:
            due = [t for t in (self.a.get_timer(), self.b.get_timer())
                   if t is not None and t <= end]
            if not due:
                break
            self.now = max(self.now, min(due))
            self.a.handle_timer(self.now)
            self.b.handle_timer(self.now)
            self.pump()
        self.now = end

    def of(self, side: str, kind: type) -> list:  # type: ignore[type-arg]
        events = self.events_a if side == "a" else self.events_b
        return [e for e in events if isinstance(e, kind)]


def make_pair(conf_a: IkeConfig, conf_b: IkeConfig, *, wall_clock: bool = False,
              **manager_b: object) -> Pair:
    """`wall_clock`: start the virtual clock at the real time (certificates made by
    tests/support/pki.py are valid around now)."""
    pair = Pair(IkeManager([conf_a]), IkeManager([conf_b], **manager_b))  # type: ignore[arg-type]
    if wall_clock:
        pair.now = time.time()
    return pair


NET_A = "198.51.100.0/24"
NET_B = "203.0.113.0/24"


def child(name: str = "lan", local: str = NET_A, remote: str = NET_B,
          **kwargs: object) -> ChildConfig:
    return ChildConfig(name, (ts.parse(local),), (ts.parse(remote),), **kwargs)  # type: ignore[arg-type]


def mirrored(c: ChildConfig) -> ChildConfig:
    return ChildConfig(c.name, c.remote_ts, c.local_ts, c.mode, c.proposals)


def up(pair: Pair, children: list[str] | None = None) -> None:
    pair.a.initiate("net", pair.endpoint("a"), pair.endpoint("b"), pair.now, children)
    pair.pump()


def assert_child_pair(a: ChildSaNegotiated, b: ChildSaNegotiated) -> None:
    """Both ends of one CHILD_SA: SPIs crossed, keys crossed, selectors mirrored."""
    assert a.spi_out == b.spi_in and a.spi_in == b.spi_out
    assert a.encr_key_out == b.encr_key_in and a.encr_key_in == b.encr_key_out
    assert a.integ_key_out == b.integ_key_in and a.integ_key_in == b.integ_key_out
    assert a.encr_key_in != a.encr_key_out
    assert a.local_ts == b.remote_ts and a.remote_ts == b.local_ts
    assert a.suite == b.suite and a.mode == b.mode
