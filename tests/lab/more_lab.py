"""What test_interop_more.py (xfrmctl <-> charon) and test_pair_more.py (xfrmctl <->
xfrmctl) share: the three-namespace topology with its nftables NAT and counters, the
certificates, the left daemon's DPD connection, waiting, the traffic check and the DPD
give-up check. The right-hand peer (charon or a second daemon) is each module's own.

    ns L (xfrmctl)                                    ns R (the peer)
    inner 198.51.100.1/24 + .129/32                   inner 203.0.113.1/24 + .129/32
    ld 192.0.2.1/25   <--------------------------->   rd 192.0.2.2/25, 192.0.2.3/25 (DPD)
    ln 192.0.2.130/26 <-> nin .129/26 [ns N] nout .193/26 <-> rn 192.0.2.194/26
                          masquerade out of "nout"

Each gateway routes everything else by default via the other's direct address, so a
route-based side's interface route (to the other inner /24) is the only specific one.
The DPD connection protects the .128/25 halves of the inner subnets, so the SAs it leaves
behind while the dead peer is retried do not capture the other cases' traffic (.1 <-> .1).
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pytest
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
)

from tests.lab.conftest import ip_batch, run
from tests.support import pki
from tests.support.xfrmctl_daemon import (
    DaemonError,
    Event,
    XfrmctlDaemon,
    XfrmState,
    child,
    connection,
    daemon_conf,
    wait_until,
    xfrm_policies,
    xfrm_states,
)

PSK = "lab-interop-more-psk-not-secret"
LEFT_ID, RIGHT_ID, DPD_ID = "left.example.org", "right.example.org", "dpd.example.org"
IKE, ESP, KERNEL_ALG = "aes128gcm16-prfsha256-x25519", "aes128gcm16-x25519", "rfc4106(gcm(aes))"

# outer addresses: 192.0.2.0/25 direct link, .128/26 inside the NAT, .192/26 outside it
L_DIRECT, R_DIRECT, R_DPD = "192.0.2.1", "192.0.2.2", "192.0.2.3"
L_NAT, NAT_INSIDE, NAT_OUTSIDE, R_NAT = "192.0.2.130", "192.0.2.129", "192.0.2.193", "192.0.2.194"
L_NET, R_NET = "198.51.100.0/24", "203.0.113.0/24"
L_HOST, R_HOST = "198.51.100.1", "203.0.113.1"
L_DPD_NET, R_DPD_NET = "198.51.100.128/25", "203.0.113.128/25"
L_DPD_HOST, R_DPD_HOST = "198.51.100.129", "203.0.113.129"
XFRMI_IF_ID, VTI_MARK = 42, 43
LINKS = {"xfrmi": "ipsec-m", "vti": "vti-m"}  # route-based interface names, either side
GIVE_UP_BUDGET = 240.0  # s after the kill: first DPD <= 5 s, give-up ~165 s later
PINGS, PING_BYTES = 5, 84  # echo requests per check; an inner IPv4 echo is 84 octets
NAT_MODULES = ("nf_tables", "nft_chain_nat", "nft_masq", "nf_nat", "nf_conntrack")


# --------------------------------------------------------------------------- topology


@dataclass(frozen=True)
class Topology:
    left: str
    right: str
    nat: str

    def run(self, netns: str, *args: str, check: bool = True) -> str:
        return run(*args, netns=netns, check=check)


def make_topology(prefix: str) -> Topology:
    for mod in NAT_MODULES:
        subprocess.run(["modprobe", "-q", mod], check=False, capture_output=True)
    topo = Topology(f"{prefix}l", f"{prefix}r", f"{prefix}n")
    try:
        for ns in (topo.left, topo.right, topo.nat):
            run("ip", "netns", "add", ns)
        for a, a_ns, b, b_ns in (("ld", topo.left, "rd", topo.right),
                                 ("ln", topo.left, "nin", topo.nat),
                                 ("nout", topo.nat, "rn", topo.right)):
            run("ip", "link", "add", a, "netns", a_ns, "type", "veth", "peer", "name", b,
                "netns", b_ns)
        ip_batch(topo.left, _gateway_batch(
            "ld", [L_DIRECT], "ln", L_NAT, [L_HOST, L_DPD_HOST],
            [f"default via {R_DIRECT}", f"192.0.2.192/26 via {NAT_INSIDE}"]))
        ip_batch(topo.right, _gateway_batch(
            "rd", [R_DIRECT, R_DPD], "rn", R_NAT, [R_HOST, R_DPD_HOST],
            [f"default via {L_DIRECT}"]))
        ip_batch(topo.nat, f"""\
link set lo up
addr add {NAT_INSIDE}/26 dev nin
link set nin up
addr add {NAT_OUTSIDE}/26 dev nout
link set nout up
""")
        topo.run(topo.nat, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        # the NAT router masquerades out of "nout"; counters tell ESP-in-UDP (non-zero
        # SPI after the UDP header) from IKE on 4500 (zero marker) and from plain ESP
        nft(topo.nat, """\
table ip nat {
  chain post {
    type nat hook postrouting priority srcnat; policy accept;
    oifname "nout" masquerade
  }
}
table ip lab {
  counter esp_in_udp_out { }
  counter esp_in_udp_back { }
  counter plain_esp { }
  chain forward_count {
    type filter hook forward priority filter; policy accept;
    iifname "nin" udp dport 4500 @th,64,32 != 0 counter name "esp_in_udp_out"
    iifname "nout" udp sport 4500 @th,64,32 != 0 counter name "esp_in_udp_back"
    meta l4proto esp counter name "plain_esp"
  }
}
""")
        # what the left side sends to the DPD peer's IKE ports (4500 too: with MOBIKE, on
        # by default, IKE moves there after IKE_SA_INIT)
        nft(topo.left, f"""\
table ip lab {{
  counter to_dpd_peer {{ }}
  chain out {{
    type filter hook output priority filter; policy accept;
    ip daddr {R_DPD} udp dport {{ 500, 4500 }} counter name "to_dpd_peer"
  }}
}}
""")
    except Exception:
        remove_topology(topo)
        raise
    return topo


def _gateway_batch(direct_dev: str, direct: Sequence[str], nat_dev: str, nat_addr: str,
                   inner: Sequence[str], routes: Sequence[str]) -> str:
    """A gateway's ``ip -batch``: the direct link's /25 addresses, the NAT-side /26,
    a dummy "inner" with the inner /24 and the DPD /32, and its routes."""
    lines = ["link set lo up", *(f"addr add {a}/25 dev {direct_dev}" for a in direct),
             f"link set {direct_dev} up", f"addr add {nat_addr}/26 dev {nat_dev}",
             f"link set {nat_dev} up", "link add inner type dummy",
             f"addr add {inner[0]}/24 dev inner", f"addr add {inner[1]}/32 dev inner",
             "link set inner up", *(f"route add {r}" for r in routes)]
    return "\n".join(lines) + "\n"


def remove_topology(topo: Topology) -> None:
    for ns in (topo.left, topo.right, topo.nat):
        for pid in run("ip", "netns", "pids", ns, check=False).split():
            subprocess.run(["kill", "-9", pid], check=False)
        run("ip", "netns", "del", ns, check=False)


@contextmanager
def topology(prefix: str) -> Iterator[Topology]:
    """The topology for a module: made, then removed with everything in it."""
    topo = make_topology(prefix)
    try:
        yield topo
    finally:
        remove_topology(topo)


def nft(netns: str, ruleset: str) -> None:
    proc = subprocess.run(["ip", "netns", "exec", netns, "nft", "-f", "-"], input=ruleset,
                          capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"nft in {netns}: {proc.stderr}\n{ruleset}")


def nft_counters(netns: str) -> dict[str, int]:
    """Packets of each named counter of table ip lab."""
    out = run("nft", "-j", "list", "counters", "table", "ip", "lab", netns=netns)
    return {item["counter"]["name"]: int(item["counter"]["packets"])
            for item in json.loads(out)["nftables"] if "counter" in item}


def link_packets(netns: str, name: str) -> tuple[int, int]:
    """(tx, rx) packets of a link, from ``ip -s -j link show``."""
    info = json.loads(run("ip", "-s", "-j", "link", "show", "dev", name, netns=netns))[0]
    stats = info["stats64"]
    return int(stats["tx"]["packets"]), int(stats["rx"]["packets"])


def link_exists(netns: str, name: str) -> bool:
    proc = subprocess.run(["ip", "-n", netns, "link", "show", "dev", name],
                          capture_output=True, text=True, timeout=60, check=False)
    return proc.returncode == 0


# --------------------------------------------------------------------------- configuration


def _pem_key(cred: pki.Credential) -> bytes:
    return cred.key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())


def make_certs(work: Path) -> dict[str, dict[str, bytes]]:
    """A CA and both gateways' certificates per key type ("ed25519", "rsa2048"), also
    written into ``work`` as ``<kind>-<ca.pem|left.pem|left.key|right.pem|right.key>``."""
    certs: dict[str, dict[str, bytes]] = {}
    for kind in ("ed25519", "rsa2048"):
        ca = pki.make_ca(f"xfrmctl interop {kind} CA", key_type=kind)
        files = {"ca.pem": ca.cert.public_bytes(Encoding.PEM)}
        for side, ident in (("left", LEFT_ID), ("right", RIGHT_ID)):
            cred = pki.make_cert(ca, ident, key_type=kind, sans=[ident])
            files[f"{side}.pem"] = cred.cert.public_bytes(Encoding.PEM)
            files[f"{side}.key"] = _pem_key(cred)
        for name, data in files.items():
            path = work / f"{kind}-{name}"
            path.write_bytes(data)
            path.chmod(0o600)
        certs[kind] = files
    return certs


def cert_auth(work: Path, key_type: str, side: str) -> dict[str, Any]:
    """The daemon's connection fields for X.509 auth with ``side``'s files of make_certs."""
    prefix = work / key_type
    return {"auth": "pubkey", "certificate": f"{prefix}-{side}.pem",
            "private_key": f"{prefix}-{side}.key", "ca": [f"{prefix}-ca.pem"]}


def route_child(kind: str | None, local_ts: str, remote_ts: str, address: str) -> dict[str, Any]:
    """A child: policy-based between the subnets (``kind`` None), or route-based with
    0.0.0.0/0 selectors through the daemon's interface (``xfrmi`` if_id 42 or ``vti``
    marks 43) holding ``address`` and the route to ``remote_ts``."""
    if kind is None:
        return child([local_ts], [remote_ts], esp_proposals=ESP)
    keys: dict[str, Any] = ({"if_id": XFRMI_IF_ID} if kind == "xfrmi"
                            else {"mark_in": VTI_MARK, "mark_out": VTI_MARK})
    return child(["0.0.0.0/0"], ["0.0.0.0/0"], esp_proposals=ESP, interface_kind=kind,
                 interface_name=LINKS[kind], interface_addresses=[address],
                 routes=[remote_ts], **keys)


def dpd_connection() -> dict[str, Any]:
    """Ours: started by the peer (so dpd_action clear means no re-initiation), DPD every 5 s."""
    return connection(
        L_DIRECT, R_DPD, {"dpd": child([L_DPD_NET], [R_DPD_NET], esp_proposals=ESP)},
        psk=PSK, local_id=LEFT_ID, remote_id=DPD_ID, ike_proposals=IKE, start_action="none",
        dpd_delay=5, dpd_action="clear")


def with_dpd(conns: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Our configuration: the DPD connection (unchanged, so reloads leave it alone) + conns."""
    return daemon_conf([L_DIRECT, L_NAT], {"dpd": dpd_connection(), **conns})


# --------------------------------------------------------------------------- waiting


def wait_event(daemon: XfrmctlDaemon, kind: str, conn: str, after: int,
               timeout: float = 120.0, **fields: Any) -> Event:
    """Like XfrmctlDaemon.wait_event, but only a NegotiationFailed of ``conn`` fails it:
    the DPD connection gives up (NegotiationFailed) while other cases run."""
    def match(e: Event) -> bool:
        if (e.get("event") == "NegotiationFailed" and kind != "NegotiationFailed"
                and e.get("connection") == conn):
            raise DaemonError(f"negotiation of {conn} failed while waiting for {kind}: {e}\n"
                              f"{daemon.tail()}")
        return (e.get("event") == kind and e.get("connection") == conn
                and all(e.get(k) == v for k, v in fields.items()))
    return daemon.wait_line(match, timeout, f"{kind} of {conn} {fields or ''}", after)


def wait_installed(daemon: XfrmctlDaemon, conn: str, after: int) -> Event:
    """The next ChildSaNegotiated of ``conn`` with both SAs in the daemon's kernel."""
    event = wait_event(daemon, "ChildSaNegotiated", conn, after)
    spis = {int(event["spi_in"]), int(event["spi_out"])}
    wait_until(lambda: spis <= {s.spi for s in xfrm_states(daemon.netns)}, 30,
               lambda: f"SAs {spis} not in the kernel of {daemon.netns}\n{daemon.tail()}")
    return event


def case_errors(daemon: XfrmctlDaemon, after: int) -> list[Event]:
    """Error lines since ``after``, but those of the DPD connection (its peer is dead)."""
    return [e for e in daemon.errors(after) if e.get("connection") != "dpd"]


# --------------------------------------------------------------------------- traffic


def ping(netns: str, src: str, dst: str, count: int = PINGS) -> str:
    out = run("ping", "-c", str(count), "-i", "0.2", "-W", "5", "-I", src, dst, netns=netns,
              check=False)
    assert re.search(r" 0% packet loss", out), out
    return out


def by_spi(netns: str) -> dict[int, XfrmState]:
    return {s.spi: s for s in xfrm_states(netns)}


def check_traffic(topo: Topology, event: Event, src: str, dst: str, *, encap: bool = False,
                  links: Mapping[str, str] | None = None) -> None:
    """PINGS pings ``src`` -> ``dst`` from the left, 0% loss; both SAs of ``event`` (the
    left's ChildSaNegotiated) count exactly PINGS packets (PINGS * 84 octets) more in both
    kernels, and each route-based interface of ``links`` ({netns: name}) PINGS each way."""
    links = links or {}
    spis = (int(event["spi_in"]), int(event["spi_out"]))
    kernels = (topo.left, topo.right)
    before = {ns: by_spi(ns) for ns in kernels}
    for ns in kernels:
        for spi in spis:
            sa = before[ns][spi]
            assert sa.mode == "tunnel" and KERNEL_ALG in sa.algorithms, (ns, sa)
            if encap:
                assert sa.encap is not None and sa.encap.startswith("espinudp"), (ns, sa)
            else:
                assert sa.encap is None, (ns, sa)
    link_before = {ns: link_packets(ns, name) for ns, name in links.items()}
    ping(topo.left, src, dst)
    after = {ns: by_spi(ns) for ns in kernels}
    for ns in kernels:
        for spi in spis:
            old, new = before[ns][spi], after[ns][spi]
            assert (new.packets - old.packets, new.bytes - old.bytes) == (
                PINGS, PINGS * PING_BYTES), (ns, old, new)
    # the right's inbound SA is our outbound one and the reverse: the same counts
    for spi in spis:
        assert after[topo.right][spi].packets == after[topo.left][spi].packets, (
            after[topo.left][spi], after[topo.right][spi])
    for ns, name in links.items():
        tx, rx = link_packets(ns, name)
        delta = (tx - link_before[ns][0], rx - link_before[ns][1])
        assert delta == (PINGS, PINGS), (ns, name, delta)


def check_nat_traffic(topo: Topology, event: Event) -> None:
    """check_traffic through the NAT: ESP in UDP both ways in the NAT's forward counters,
    no plain ESP."""
    before = nft_counters(topo.nat)
    check_traffic(topo, event, L_HOST, R_HOST, encap=True)
    after = nft_counters(topo.nat)
    delta = {k: after[k] - before[k] for k in after}
    assert delta == {"esp_in_udp_out": PINGS, "esp_in_udp_back": PINGS, "plain_esp": 0}, delta


def check_route(topo: Topology, netns: str, src: str, dst: str, link: str | None) -> None:
    """The kernel routes ``src`` -> ``dst`` through ``link`` (route-based), or through no
    route-based interface (policy-based: the policy picks the packet up)."""
    route = topo.run(netns, "ip", "route", "get", dst, "from", src)
    if link:
        assert f"dev {link} " in route, route
    else:
        assert not any(f"dev {name} " in route for name in LINKS.values()), route


def check_interface(topo: Topology, netns: str, kind: str) -> None:
    """The interface carries the keys of the configuration: if_id, or VTI ikey/okey."""
    details = topo.run(netns, "ip", "-d", "link", "show", "dev", LINKS[kind])
    if kind == "xfrmi":
        assert f"if_id {hex(XFRMI_IF_ID)}" in details, details
    else:
        mark = f"0.0.0.{VTI_MARK}"
        assert f"ikey {mark}" in details and f"okey {mark}" in details, details


# --------------------------------------------------------------------------- clean kernels


def is_dpd_state(sa: XfrmState) -> bool:
    return R_DPD in (sa.src, sa.dst)


def case_policies(netns: str) -> list[str]:
    """The policies of ``ip xfrm policy`` (in, out, fwd: not the IKE sockets' bypass
    policies it lists too), but the DPD connection's."""
    blocks = re.split(r"\n(?=src )", xfrm_policies(netns).strip())
    return [b for b in blocks if re.search(r"\bdir (in|out|fwd)\b", b)
            and L_DPD_NET not in b and R_DPD_NET not in b]


def wait_clean(topo: Topology, also: Callable[[], bool] = lambda: True,
               timeout: float = 60) -> None:
    """No SA and no policy of the case left in either kernel (the DPD connection's may
    linger on the left while the dead peer is retried), and ``also``."""
    def clean() -> bool:
        return (not [s for s in xfrm_states(topo.left) if not is_dpd_state(s)]
                and not xfrm_states(topo.right) and not case_policies(topo.left)
                and not case_policies(topo.right) and also())
    wait_until(clean, timeout, lambda: (
        f"left over: left SAs {xfrm_states(topo.left)} policies {case_policies(topo.left)}; "
        f"right SAs {xfrm_states(topo.right)} policies {case_policies(topo.right)}"))


# --------------------------------------------------------------------------- DPD


@dataclass
class DpdRun:
    """The DPD connection after its peer was killed: when, and the SAs left behind."""

    killed_at: float
    sent_before: int  # packets to the dead peer's IKE ports before the kill
    spis: set[int]
    mark: int  # the left daemon's log index at the kill


def wait_dpd_answered(topo: Topology, daemon: XfrmctlDaemon) -> None:
    """A DPD exchange while the peer lives: we ask (after 5 s without ESP from it), it
    answers, and the connection stays up."""
    sent = nft_counters(topo.left)["to_dpd_peer"]
    wait_until(lambda: nft_counters(topo.left)["to_dpd_peer"] > sent, 30,
               lambda: f"no DPD request to the peer in 30 s\n{daemon.tail()}")
    time.sleep(2)
    assert not daemon.events("NegotiationFailed", connection="dpd"), daemon.tail()
    assert not daemon.events("IkeSaDown", connection="dpd"), daemon.tail()


class Peer(Protocol):
    """The DPD peer's process: charon or a daemon of ours."""

    proc: subprocess.Popen[bytes] | None
    log_path: Path

    def start(self, wait: bool = True) -> None: ...
    def wait_ready(self) -> None: ...
    def stop(self) -> int | None: ...


@contextmanager
def running(*peers: Peer) -> Iterator[None]:
    """The peers started at once (each cold start costs 30-100 s under TCG), stopped after."""
    try:
        for peer in peers:
            peer.start(wait=False)
        for peer in peers:
            peer.wait_ready()
        yield
    finally:
        for peer in reversed(peers):
            peer.stop()


def kill_dpd_peer(topo: Topology, daemon: XfrmctlDaemon, event: Event, peer: Peer,
                  keep_log: Path) -> DpdRun:
    """The DPD peer dies: SIGKILLed (its log kept in ``keep_log``), its address gone from
    the wire. Then its kernel is cleaned and it is started again while our daemon keeps
    asking the dead peer (the first try within 5 s, the first retransmission 4 s later,
    the SAs still in place). Returns what check_dpd_gave_up needs."""
    assert peer.proc is not None
    peer.proc.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    peer.proc.wait(30)
    peer.proc = None
    if peer.log_path.exists():
        shutil.copy(peer.log_path, keep_log)  # a start truncates it
    topo.run(topo.right, "ip", "addr", "del", f"{R_DPD}/25", "dev", "rd")
    dpd = DpdRun(killed_at, nft_counters(topo.left)["to_dpd_peer"],
                 {int(event["spi_in"]), int(event["spi_out"])}, daemon.mark())
    # what a SIGKILLed IKE daemon leaves behind: SAs, policies, table 220 routes
    ip_batch(topo.right, "xfrm state flush\nxfrm policy flush\nroute flush table 220\n")
    peer.start(wait=False)
    wait_until(lambda: nft_counters(topo.left)["to_dpd_peer"] >= dpd.sent_before + 2, 30,
               lambda: f"DPD not retransmitted: {nft_counters(topo.left)}\n{daemon.tail()}")
    assert dpd.spis <= set(by_spi(topo.left)), "SAs gone before DPD gave up"
    peer.wait_ready()
    return dpd


def check_dpd_gave_up(topo: Topology, daemon: XfrmctlDaemon, dpd: DpdRun | None) -> None:
    """The daemon gave up on the dead peer (NegotiationFailed PEER_UNREACHABLE, IkeSaDown)
    after its five retransmissions, removed the DPD SAs and policies, did not re-initiate."""
    if dpd is None:
        pytest.skip("the DPD test did not get to kill the peer")
    left = topo.left
    remaining = dpd.killed_at + GIVE_UP_BUDGET - time.monotonic()
    failure = daemon.wait_line(
        lambda e: e.get("event") == "NegotiationFailed" and e.get("connection") == "dpd",
        max(remaining, 1.0), "NegotiationFailed of dpd", dpd.mark)
    gave_up_after = time.monotonic() - dpd.killed_at
    assert failure["reason"] == "PEER_UNREACHABLE", failure
    down = daemon.wait_line(
        lambda e: e.get("event") == "IkeSaDown" and e.get("connection") == "dpd", 30,
        "IkeSaDown of dpd", dpd.mark)
    assert down["reason"] == "PEER_UNREACHABLE", down
    wait_until(lambda: not dpd.spis & set(by_spi(left)), 30,
               lambda: f"DPD SAs still in our kernel: {xfrm_states(left)}")
    assert f"dst {R_DPD_NET}" not in xfrm_policies(left)
    # the first DPD request and its five retransmissions went to the dead peer, no more
    sent = nft_counters(left)["to_dpd_peer"] - dpd.sent_before
    print(f"DPD gave up {gave_up_after:.0f} s after the kill; {sent} requests to the dead peer")
    assert 5 <= sent <= 6, sent
    assert not daemon.events("IkeSaUp", connection="dpd")[1:], "dpd re-initiated"
