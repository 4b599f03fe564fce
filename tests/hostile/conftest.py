"""One live responder (`xfrmctl daemon`) per module, in its own namespace, and hostile
peers in another: each case gets a source address of its own, so per-address limits
from one case do not shape the next. After every case the daemon must still answer a
legitimate IKE_SA_INIT and its RSS stay under `RSS_BOUND_KIB`.

Needs root and iproute2 (skips otherwise); the host kernel's lack of ESP does not
matter: the legitimate initiator asks for no CHILD_SA.
"""

from __future__ import annotations

import itertools
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.hostile.peer import PSK, RESPONDER, Peer, Reply
from tests.support.netns import Netns, netns, require_root, veth
from tests.support.xfrmctl_daemon import XfrmctlDaemon, child, connection, daemon_conf
from xfrmctl.ike.constants import NotifyType
from xfrmctl.ike.message import encode
from xfrmctl.ike.payloads import NotifyPayload

LEGIT = "192.0.2.2"
NAMED_RESPONDER, NAMED_PEER = "192.0.2.5", "peer.example.org"
CASE_ADDRS = [f"192.0.2.{i}" for i in range(10, 250)]
RSS_BOUND_KIB = 200 * 1024  # the responder after the hostile cases (it starts near 70 MiB)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


@dataclass
class HostileLab:
    responder: Netns
    attacker: Netns
    daemon: XfrmctlDaemon
    _addrs: Iterator[str] = field(default_factory=lambda: iter(CASE_ADDRS))
    _peers: list[Peer] = field(default_factory=list)

    def peer(self, addr: str | None = None, port: int = 500, target: str = RESPONDER) -> Peer:
        """A hostile peer on an address no other case used (talking to `target`)."""
        p = Peer(self.attacker, addr or next(self._addrs), port, target)
        self._peers.append(p)
        return p

    def legit(self) -> Peer:
        p = Peer(self.attacker, LEGIT, 500)
        self._peers.append(p)
        return p

    def close_peers(self) -> None:
        for p in self._peers:
            p.close()
        self._peers.clear()

    @property
    def pid(self) -> int:
        assert self.daemon.proc is not None
        return self.daemon.proc.pid

    def rss_kib(self) -> int:
        return rss_kib(self.pid)

    def assert_healthy(self, after: int = 0) -> None:
        """Alive, answers a legitimate IKE_SA_INIT (after a COOKIE if it asks for one) and
        completes its IKE_AUTH, no traceback logged, memory bounded."""
        assert self.daemon.running, f"daemon died\n{self.daemon.tail()}"
        legit = Peer(self.attacker, LEGIT, 500)
        try:
            legit.setup()  # IKE_SA_INIT (with a cookie if asked) and IKE_AUTH
        finally:
            legit.close()
        tracebacks = [e for e in self.daemon.lines()[after:] if "exception" in e
                      or "Traceback" in str(e.get("message", ""))]
        assert not tracebacks, f"the daemon logged a traceback: {tracebacks[:2]}"
        assert self.rss_kib() < RSS_BOUND_KIB, f"RSS {self.rss_kib()} KiB"


def legit_init(peer: Peer, timeout: float = 5.0) -> Reply | None:
    """A legitimate IKE_SA_INIT; sent again with the cookie when the responder asks
    for one (RFC 7296 2.6: a responder under load answers with COOKIE)."""
    _, request = peer.init_request()
    reply = peer.ask(encode(request), timeout=timeout)
    cookie = reply.message.notify(NotifyType.COOKIE) if reply and reply.message else None
    if cookie is not None:
        request.payloads.insert(0, NotifyPayload(NotifyType.COOKIE, 0, b"", cookie.data))
        reply = peer.ask(encode(request), timeout=timeout)
    return reply


def responder_conf(**extra: Any) -> dict[str, Any]:
    """`gw` on RESPONDER takes any peer identity; `named` on NAMED_RESPONDER only
    NAMED_PEER (so a peer of another identity gets no connection)."""
    net = {"net": child(["198.51.100.0/24"], ["203.0.113.0/24"])}
    gw = connection(RESPONDER, None, net, psk=PSK.decode())
    named = connection(NAMED_RESPONDER, None, net, psk=PSK.decode(), remote_id=NAMED_PEER)
    return daemon_conf([RESPONDER, NAMED_RESPONDER], {"gw": gw, "named": named},
                       install_routes=False, **extra)


_ns_ids = itertools.count()


def start_lab(stack: ExitStack, workdir: Path, conf: dict[str, Any]) -> HostileLab:
    require_root()
    resp = stack.enter_context(netns("xh-r"))
    att = stack.enter_context(netns("xh-a"))
    veth(resp, att, f"{RESPONDER}/24", f"{LEGIT}/24")
    resp.add_addr("veth0", f"{NAMED_RESPONDER}/24")
    batch = "".join(f"address add {a}/24 dev veth0\n" for a in CASE_ADDRS)
    subprocess.run(["ip", "-n", att.name, "-batch", "-"], input=batch, text=True,
                   check=True, capture_output=True)
    daemon = XfrmctlDaemon(resp.name, workdir, conf)
    stack.callback(daemon.stop)
    daemon.start()
    lab = HostileLab(resp, att, daemon)
    stack.callback(lab.close_peers)
    return lab


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostileLab]:
    with ExitStack() as stack:
        yield start_lab(stack, tmp_path_factory.mktemp("hostile"), responder_conf())


@pytest.fixture
def healthy(lab: HostileLab) -> Iterator[HostileLab]:
    """The module's lab, checked healthy after the case (the log: since it started)."""
    mark = lab.daemon.mark()
    yield lab
    lab.close_peers()
    lab.assert_healthy(after=mark)
