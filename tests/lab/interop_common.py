"""The interop cases and their checks, shared by the modules that run them against a peer:
test_interop_strongswan.py (charon on the right) and test_pair_interop.py (a second
xfrmctl daemon on the right). Our daemon is always on the left, on the gateway pair of
conftest.py, policy-based: each gateway routes the remote subnet to its peer.

A case says who initiates, the suites, the mode and what happens on the way: rekeys from
either side, forced UDP encapsulation, narrowing, X.509, remote access, and who deletes.
"""

from __future__ import annotations

import ipaddress
import re
import subprocess
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
)

from tests.lab.conftest import Gateway, GatewayPair, make_pair, remove_pair
from tests.support import pki
from tests.support.xfrmctl_daemon import (
    Event,
    XfrmctlDaemon,
    child,
    connection,
    daemon_conf,
    wait_installed,
    wait_until,
    xfrm_policies,
    xfrm_states,
)

PSK = "lab-interop-test-psk-not-secret"
LEFT_ID, RIGHT_ID = "left.example.org", "right.example.org"
POOL = "203.0.113.128/28"  # remote access: virtual IPs for the right (client) from our pool
# a side that rekeys by itself: CHILD_SA soft expire at 27-30 s (kernel, 10% jitter), hard
# expire at 60 s; its IKE_SA at 31.5-35 s, after the CHILD_SA
CHILD_REKEY, CHILD_LIFE, IKE_REKEY = 30, 60, 35
# the key exchange group of each case's ESP proposal, as our events name it
DH_NAMES = {"x25519": "CURVE25519", "ecp384": "ECP_384", "modp2048": "MODP_2048"}


@dataclass(frozen=True)
class Case:
    id: str
    we_initiate: bool = True
    ike: str = "aes128gcm16-prfsha256-x25519"
    esp: str = "aes128gcm16-x25519"
    kernel_alg: str = "rfc4106(gcm(aes))"
    mode: str = "tunnel"
    encap: bool = False  # forced UDP encapsulation, configured on the initiator's side
    narrow: bool = False  # the responder (right) accepts only 198.51.100.1 <-> 203.0.113.1
    x509: bool = False
    vip: bool = False  # the right asks for a virtual IP from our pool
    peer_rekeys_child: bool = False
    peer_rekeys_ike: bool = False
    we_rekey: bool = False  # CHILD_SA on our kernel's soft expire, then IKE_SA on its timer
    delete_by_us: bool = True

    @property
    def dh(self) -> str:
        """Our events' name of the ESP proposal's key exchange group (PFS on rekey)."""
        # the main key exchange: the last group keyword (keN_ additional ones follow it)
        return next(DH_NAMES[w] for w in reversed(self.esp.split("-")) if w in DH_NAMES)


CASES = [
    Case("psk-aes128gcm-x25519-we-initiate", delete_by_us=False),
    Case("psk-aes256gcm-ecp384-peer-initiates", we_initiate=False,
         ike="aes256gcm16-prfsha384-ecp384", esp="aes256gcm16-ecp384"),
    Case("psk-chacha20-x25519-we-initiate-peer-rekeys-child",
         ike="chacha20poly1305-prfsha256-x25519", esp="chacha20poly1305-x25519",
         kernel_alg="rfc7539esp(chacha20,poly1305)", peer_rekeys_child=True,
         delete_by_us=False),
    Case("psk-aes256-sha256-modp2048-peer-initiates-we-rekey", we_initiate=False,
         ike="aes256-sha256-modp2048", esp="aes256-sha256-modp2048", kernel_alg="cbc(aes)",
         we_rekey=True),
    Case("transport-we-initiate", mode="transport"),
    Case("ts-narrowed-by-peer", narrow=True, delete_by_us=False),
    Case("encap-we-initiate", encap=True),
    Case("encap-peer-initiates-and-rekeys-ike", we_initiate=False, encap=True,
         peer_rekeys_ike=True, delete_by_us=False),
    Case("x509-ecdsa-we-initiate", x509=True),
    Case("x509-ecdsa-peer-initiates", we_initiate=False, x509=True, delete_by_us=False),
    Case("remote-access-peer-asks-vip", we_initiate=False, vip=True),
]


# ---------------------------------------------------------------------------- setup


@contextmanager
def routed_pair(prefix: str) -> Iterator[GatewayPair]:
    """The gateway pair, each side routing the other's subnet to it; removed after."""
    pair = make_pair(prefix)
    try:
        pair.left.run("ip", "route", "add", pair.right.subnet, "via", pair.right.outer)
        pair.right.run("ip", "route", "add", pair.left.subnet, "via", pair.left.outer)
        yield pair
    finally:
        remove_pair(pair)


def write_credentials(directory: Path) -> dict[str, bytes]:
    """A test CA and an ECDSA P-256 certificate and key for each side, written to
    ``directory`` (ca.pem, left.pem, left.key, right.pem, right.key) and returned."""
    ca = pki.make_ca("xfrmctl interop test CA")
    files = {"ca.pem": ca.cert.public_bytes(Encoding.PEM)}
    for side, identity in (("left", LEFT_ID), ("right", RIGHT_ID)):
        cred = pki.make_cert(ca, identity, sans=[identity])
        files[f"{side}.pem"] = cred.cert.public_bytes(Encoding.PEM)
        files[f"{side}.key"] = cred.key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8,
                                                      NoEncryption())
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (directory / name).write_bytes(data)
        (directory / name).chmod(0o600)
    return files


def xfrmctl_conf(pair: GatewayPair, case: Case, name: str, credentials: Path, *,
                 right: bool = False) -> dict[str, Any]:
    """The daemon configuration of ``case`` for our daemon on the left, or with ``right``
    for an xfrmctl peer on the right, each holding only connection ``name``."""
    me, peer = (pair.right, pair.left) if right else (pair.left, pair.right)
    my_id, peer_id = (RIGHT_ID, LEFT_ID) if right else (LEFT_ID, RIGHT_ID)
    initiator = case.we_initiate is not right
    if case.mode == "transport":
        kid = child(esp_proposals=case.esp, mode="transport")
    elif case.vip:  # the client's side is its virtual IP: dynamic
        kid = child([], [peer.subnet]) if right else child([me.subnet], [])
        kid["esp_proposals"] = case.esp
    elif case.narrow and right:
        kid = child([f"{me.inner}/32"], [f"{peer.inner}/32"], esp_proposals=case.esp)
    else:
        kid = child([me.subnet], [peer.subnet], esp_proposals=case.esp)
    extra: dict[str, Any] = {}
    if (case.we_rekey and not right) or (case.peer_rekeys_child and right):
        kid.update(rekey_time=CHILD_REKEY, life_time=CHILD_LIFE)
    if (case.we_rekey and not right) or (case.peer_rekeys_ike and right):
        extra["rekey_time"] = IKE_REKEY
    if case.encap and initiator:
        extra["encap"] = True
    if case.vip:
        extra.update({"request_virtual_ip": True} if right else {"pool": POOL})
    side = "right" if right else "left"
    if case.x509:
        extra.update(auth="pubkey", certificate=str(credentials / f"{side}.pem"),
                     private_key=str(credentials / f"{side}.key"),
                     ca=[str(credentials / "ca.pem")])
    conn = connection(
        me.outer, peer.outer, {"net": kid}, psk=None if case.x509 else PSK, local_id=my_id,
        remote_id=peer_id, ike_proposals=case.ike,
        start_action="start" if initiator else "none", **extra)
    return daemon_conf([me.outer], {name: conn})


# ---------------------------------------------------------------------------- traffic


def endpoints(pair: GatewayPair, case: Case, vip: str | None) -> tuple[Gateway, str, str]:
    """(gateway to ping from, source, destination) of the case's protected traffic."""
    left, right = pair.left, pair.right
    if case.mode == "transport":
        return left, left.outer, right.outer
    if vip:
        return right, vip, left.inner
    return left, left.inner, right.inner


def ping(pair: GatewayPair, case: Case, vip: str | None, count: int,
         interval: float = 0.2) -> subprocess.Popen[str]:
    return ping_from(*endpoints(pair, case, vip), count, interval)


def ping_from(gw: Gateway, src: str, dst: str, count: int,
              interval: float = 0.2) -> subprocess.Popen[str]:
    """`count` pings from `src` (in `gw`'s namespace) to `dst`, running in the background."""
    return subprocess.Popen(
        ["ip", "netns", "exec", gw.netns, "ping", "-c", str(count), "-i", str(interval),
         "-W", "5", "-I", src, dst], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def ping_done(proc: subprocess.Popen[str], timeout: float = 120) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert re.search(r" 0% packet loss", out), out
    return out


@contextmanager
def pinging(pair: GatewayPair, case: Case, vip: str | None, seconds: float) -> Iterator[None]:
    """Ping through the tunnel for ``seconds`` around the block: none may be lost."""
    proc = ping(pair, case, vip, int(seconds / 0.2))
    try:
        yield
        ping_done(proc, seconds + 60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def check_traffic(pair: GatewayPair, case: Case, event: Event, vip: str | None) -> None:
    """5 pings through the CHILD_SA of our ``event``: both SAs count 5 more packets on
    both sides, encapsulated in UDP 4500 in both kernels when the case forces it."""
    spis = (int(event["spi_in"]), int(event["spi_out"]))
    before = {s.spi: s for s in xfrm_states(pair.left.netns)}
    peer_before = {s.spi: s for s in xfrm_states(pair.right.netns)}
    for sa in [before[spi] for spi in spis] + [peer_before[spi] for spi in spis]:
        assert sa.mode == case.mode, sa
        assert case.kernel_alg in sa.algorithms, sa
        assert sa.encap == ("espinudp sport 4500 dport 4500" if case.encap else None), sa
    ping_done(ping(pair, case, vip, 5))
    after = {s.spi: s for s in xfrm_states(pair.left.netns)}
    peer_after = {s.spi: s for s in xfrm_states(pair.right.netns)}
    for spi in spis:
        assert after[spi].packets - before[spi].packets == 5, (spi, before, after)
        # the peer's kernel: our outbound SA is its inbound one and the reverse
        assert peer_after[spi].packets == after[spi].packets, (spi, peer_after, after)


def wait_clean(pair: GatewayPair, peer_clean: Callable[[], bool] = lambda: True,
               timeout: float = 60) -> None:
    """Both kernels without SAs and "tmpl" policies (and ``peer_clean()`` true)."""
    deadline = time.monotonic() + timeout
    while True:
        left, right = xfrm_states(pair.left.netns), xfrm_states(pair.right.netns)
        policies = [xfrm_policies(gw.netns) for gw in (pair.left, pair.right)]
        if not left and not right and all("tmpl" not in p for p in policies) and peer_clean():
            return
        assert time.monotonic() < deadline, f"left over: ours {left}, peer's {right}, {policies}"
        time.sleep(0.5)


# ---------------------------------------------------------------------------- checks


def wait_sas_gone(netns: Sequence[str], event: Event, timeout: float = 30) -> None:
    """The SAs of ``event``'s CHILD_SA leave every kernel in ``netns``: a rekeyed one's
    inbound SA lingers a few seconds (delete_rekeyed_delay, ours and charon's)."""
    spis = {int(event["spi_in"]), int(event["spi_out"])}

    def left() -> dict[str, set[int]]:
        return {ns: found for ns in netns if (found := spis & {s.spi for s in xfrm_states(ns)})}

    wait_until(lambda: not left(), timeout, lambda: f"still in the kernel: {left()}")


def until(start: float, seconds: float) -> float:
    """Seconds from now until ``seconds`` after ``start`` (a time.monotonic()), plus 5:
    how long to ping for a timer of ``seconds`` started at ``start``."""
    return seconds + 5 - (time.monotonic() - start)


def ip_in(address: str, network: str) -> bool:
    return ipaddress.ip_address(address) in ipaddress.ip_network(network)


def rekey_child_while_pinging(pair: GatewayPair, case: Case, daemon: XfrmctlDaemon,
                              event: Event, vip: str | None, mark: int, *, by_peer: bool,
                              seconds: float, trigger: Callable[[], None] | None = None
                              ) -> Event:
    """A CHILD_SA rekey during a ping that must lose nothing (make-before-break):
    ``trigger()`` (a peer's command) or a timer starts it: the peer's, or with
    ``case.we_rekey`` ours, followed by our IKE_SA rekey. The new CHILD_SA ran a key
    exchange of the proposal's group (PFS), the old one is gone, the new one carries the
    traffic. ``mark``: the case's start in our log (a soft expire may come early)."""
    with pinging(pair, case, vip, seconds):
        if trigger is not None:
            time.sleep(3)
            trigger()
        new = wait_installed(daemon, mark, seconds + 60, rekey_of=int(event["spi_in"]))
        assert new["initiator"] is not by_peer
        if case.we_rekey:
            rekeyed = daemon.wait_event("IkeSaRekeyed", seconds + 60, mark)
            assert rekeyed["ike_sa"] != rekeyed["new_ike_sa"]
        daemon.wait_event("ChildSaDeleted", 60, mark, spi_in=int(event["spi_in"]))
    assert case.dh in new["suite"].split("/"), new  # no KE, no group in the suite
    assert case.dh not in event["suite"].split("/"), event  # IKE_AUTH's: no KE
    wait_sas_gone((pair.left.netns, pair.right.netns), event)
    check_traffic(pair, case, new, vip)
    return new


def rekey_ike_while_pinging(pair: GatewayPair, case: Case, daemon: XfrmctlDaemon,
                            event: Event, vip: str | None, *, seconds: float,
                            trigger: Callable[[], None] | None = None) -> Event:
    """An IKE_SA rekey (``trigger()`` or the peer's timer) while pinging through the
    CHILD_SA of ``event``, which keeps carrying the traffic; our IkeSaRekeyed event."""
    mark = daemon.mark()
    with pinging(pair, case, vip, seconds):
        if trigger is not None:
            time.sleep(2)
            trigger()
        rekeyed = daemon.wait_event("IkeSaRekeyed", seconds + 60, mark)
    assert rekeyed["ike_sa"] == event["ike_sa"] != rekeyed["new_ike_sa"]
    check_traffic(pair, case, event, vip)
    return rekeyed


def wait_child_deleted(daemon: XfrmctlDaemon, mark: int, event: Event) -> Event:
    """The ChildSaDeleted of ``event``'s CHILD_SA: it went down with the IKE_SA it was on
    last, the newest IKE_SA a rekey since ``mark`` made (it moved over)."""
    deleted = daemon.wait_event("ChildSaDeleted", 60, mark, spi_in=int(event["spi_in"]))
    rekeys = [e for e in daemon.lines()[mark:] if e.get("event") == "IkeSaRekeyed"]
    if rekeys:
        assert deleted["ike_sa"] == rekeys[-1]["new_ike_sa"], (deleted, rekeys)
    return deleted


def case_logs(request: pytest.FixtureRequest, results: Path, folder: str,
              logs: Sequence[tuple[Path, str]], files: Sequence[tuple[Path, str]]
              ) -> Generator[None, None, bool]:
    """A log-keeping fixture's body (``failed = yield from case_logs(...)``): when the case
    fails, what each of ``logs`` (path, name) got during it and a copy of each of
    ``files`` go to ``<results>/<folder>/<case>/``. Returns whether the case failed."""
    marks = [path.stat().st_size if path.exists() else 0 for path, _ in logs]
    yield
    rep = getattr(request.node, "rep_call", None)
    if rep is None or not rep.failed:
        return False
    dest = results / folder / re.sub(r"[^\w.-]+", "_", request.node.name)
    dest.mkdir(parents=True, exist_ok=True)
    for (path, name), mark in zip(logs, marks, strict=True):
        if path.exists():
            with open(path, "rb") as src:
                src.seek(mark)
                (dest / name).write_bytes(src.read())
    for path, name in files:
        if path.exists():
            (dest / name).write_bytes(path.read_bytes())
    return True


def assert_mirrored(ours: Event, theirs: Event) -> None:
    """Both ends of one CHILD_SA: SPIs and selectors crossed, same mode and suite."""
    assert (ours["spi_in"], ours["spi_out"]) == (theirs["spi_out"], theirs["spi_in"])
    assert (ours["local_ts"], ours["remote_ts"]) == (theirs["remote_ts"], theirs["local_ts"])
    assert ours["initiator"] is not theirs["initiator"]
    for key in ("mode", "suite", "encap"):
        assert ours[key] == theirs[key], (key, ours, theirs)
