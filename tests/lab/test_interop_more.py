"""More xfrmctl <-> strongSwan 5.9.8 interop on a real kernel: X.509 with Ed25519 and
RSA-PSS, DPD when charon dies, route-based (XFRM interface, VTI) on our side, and a real
NAT (nftables masquerade) between the two. Every case pings through ESP and checks the
packet counters of both SAs in both kernels.

One charon (right) and one xfrmctl daemon (left) for the module, as in
test_interop_strongswan.py: each case loads its connection into charon over VICI and
into our daemon by SIGHUP, under a fresh name, and removes it at the end.

    ns L (xfrmctl)                                    ns R (charon)
    inner 198.51.100.1/24 + .129/32                   inner 203.0.113.1/24 + .129/32
    ld 192.0.2.1/25   <--------------------------->   rd 192.0.2.2/25, 192.0.2.3/25 (DPD)
    ln 192.0.2.130/26 <-> nin .129/26 [ns N] nout .193/26 <-> rn 192.0.2.194/26
                          masquerade out of "nout"

DPD: the DPD connection (our side: dpd_delay 5, dpd_action clear; charon at 192.0.2.3)
comes up first; then charon is SIGKILLed and 192.0.2.3 removed (the peer is gone from
the wire). The daemon gives up after its retransmissions: 4 s * 1.8^n, five retries,
~165 s after the first DPD request, too long to wait for in a case of its own. So charon
is restarted (with a clean kernel on its side) and the other cases run while the daemon
retransmits to the dead peer; the last test of the module checks the give-up
(NegotiationFailed PEER_UNREACHABLE, IkeSaDown, SAs and policies gone) and the number
of DPD transmissions the dead peer was sent. The DPD child protects .128/25 of the inner
subnets, so its left-over SAs do not capture the other cases' traffic (.1 <-> .1).

Route-based cases: our daemon creates the interface (xfrmi if_id 42, or a VTI with
marks 43) with its address and route to 203.0.113.0/24; charon stays policy-based. The
left namespace routes everything else via 192.0.2.2 by default, so the daemon's route
is the only one for 203.0.113.0/24. A failing case keeps both logs in
``<results>/interop-more-logs/<case>/``.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
)

from tests.lab.conftest import ip_batch, run
from tests.support import pki
from tests.support.strongswan import SA, Charon, SwanConn, SwanSecret
from tests.support.xfrmctl_daemon import (
    DaemonError,
    Event,
    XfrmctlDaemon,
    XfrmState,
    child,
    connection,
    daemon_conf,
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
GIVE_UP_BUDGET = 240.0  # s after the kill: first DPD <= 5 s, give-up ~165 s later


# --------------------------------------------------------------------------- topology


@dataclass(frozen=True)
class Topology:
    left: str
    right: str
    nat: str

    def run(self, netns: str, *args: str, check: bool = True) -> str:
        return run(*args, netns=netns, check=check)


def make_topology(prefix: str) -> Topology:
    topo = Topology(f"{prefix}l", f"{prefix}r", f"{prefix}n")
    try:
        for ns in (topo.left, topo.right, topo.nat):
            run("ip", "netns", "add", ns)
        for a, a_ns, b, b_ns in (("ld", topo.left, "rd", topo.right),
                                 ("ln", topo.left, "nin", topo.nat),
                                 ("nout", topo.nat, "rn", topo.right)):
            run("ip", "link", "add", a, "netns", a_ns, "type", "veth", "peer", "name", b,
                "netns", b_ns)
        ip_batch(topo.left, f"""\
link set lo up
addr add {L_DIRECT}/25 dev ld
link set ld up
addr add {L_NAT}/26 dev ln
link set ln up
link add inner type dummy
addr add {L_HOST}/24 dev inner
addr add {L_DPD_HOST}/32 dev inner
link set inner up
route add default via {R_DIRECT}
route add 192.0.2.192/26 via {NAT_INSIDE}
""")
        ip_batch(topo.right, f"""\
link set lo up
addr add {R_DIRECT}/25 dev rd
addr add {R_DPD}/25 dev rd
link set rd up
addr add {R_NAT}/26 dev rn
link set rn up
link add inner type dummy
addr add {R_HOST}/24 dev inner
addr add {R_DPD_HOST}/32 dev inner
link set inner up
route add {L_NET} via {L_DIRECT}
""")
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
        # what the left side sends to the DPD peer's IKE port
        nft(topo.left, f"""\
table ip lab {{
  counter to_dpd_peer {{ }}
  chain out {{
    type filter hook output priority filter; policy accept;
    ip daddr {R_DPD} udp dport 500 counter name "to_dpd_peer"
  }}
}}
""")
    except Exception:
        remove_topology(topo)
        raise
    return topo


def remove_topology(topo: Topology) -> None:
    for ns in (topo.left, topo.right, topo.nat):
        for pid in run("ip", "netns", "pids", ns, check=False).split():
            subprocess.run(["kill", "-9", pid], check=False)
        run("ip", "netns", "del", ns, check=False)


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


# --------------------------------------------------------------------------- the lab


@dataclass
class DpdRun:
    """The DPD connection after charon was killed: when, and the SAs left behind."""

    killed_at: float
    sent_before: int  # packets to the dead peer's port 500 before the kill
    spis: set[int]
    mark: int  # our log index at the kill


@dataclass
class Lab:
    topo: Topology
    charon: Charon
    daemon: XfrmctlDaemon
    work: Path
    certs: dict[str, dict[str, bytes]]
    results: Path
    names: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    dpd: DpdRun | None = None


def _pem_key(cred: pki.Credential) -> bytes:
    return cred.key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())


def make_certs(work: Path) -> dict[str, dict[str, bytes]]:
    """A CA and both gateways' certificates per key type; ours written into ``work``."""
    certs: dict[str, dict[str, bytes]] = {}
    for kind in ("ed25519", "rsa2048"):
        ca = pki.make_ca(f"xfrmctl interop {kind} CA", key_type=kind)
        left = pki.make_cert(ca, LEFT_ID, key_type=kind, sans=[LEFT_ID])
        right = pki.make_cert(ca, RIGHT_ID, key_type=kind, sans=[RIGHT_ID])
        files = {"ca.pem": ca.cert.public_bytes(Encoding.PEM),
                 "left.pem": left.cert.public_bytes(Encoding.PEM), "left.key": _pem_key(left),
                 "right.pem": right.cert.public_bytes(Encoding.PEM),
                 "right.key": _pem_key(right)}
        for name in ("ca.pem", "left.pem", "left.key"):
            path = work / f"{kind}-{name}"
            path.write_bytes(files[name])
            path.chmod(0o600)
        certs[kind] = files
    return certs


def dpd_connection() -> dict[str, Any]:
    """Ours: started by charon (so dpd_action clear means no re-initiation), DPD every 5 s."""
    return connection(
        L_DIRECT, R_DPD, {"dpd": child([L_DPD_NET], [R_DPD_NET], esp_proposals=ESP)},
        psk=PSK, local_id=LEFT_ID, remote_id=DPD_ID, ike_proposals=IKE, start_action="none",
        dpd_delay=5, dpd_action="clear")


def with_dpd(conns: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Our configuration: the DPD connection (unchanged, so reloads leave it alone) + conns."""
    return daemon_conf([L_DIRECT, L_NAT], {"dpd": dpd_connection(), **conns})


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, lab_results: Path) -> Iterator[Lab]:
    work = tmp_path_factory.mktemp("interop-more")
    certs = make_certs(work)
    for mod in ("nf_tables", "nft_chain_nat", "nft_masq", "nf_nat", "nf_conntrack"):
        subprocess.run(["modprobe", "-q", mod], check=False, capture_output=True)
    topo = make_topology(f"xm{os.getpid() % 1000}")
    try:
        daemon = XfrmctlDaemon(topo.left, work / "daemon", with_dpd({}))
        charon = Charon(topo.right, work / "charon")
        daemon.start(wait=False)  # both cold starts at once
        try:
            charon.start()
            daemon.wait_ready()
            yield Lab(topo, charon, daemon, work, certs, lab_results)
        finally:
            charon.stop()
            daemon.stop()
    finally:
        remove_topology(topo)


@pytest.fixture
def keep_logs(request: pytest.FixtureRequest, lab: Lab) -> Iterator[None]:
    marks = {path: path.stat().st_size if path.exists() else 0
             for path in (lab.daemon.log_path, lab.charon.log_path)}
    yield
    rep = getattr(request.node, "rep_call", None)
    if rep is None or not rep.failed:
        return
    dest = lab.results / "interop-more-logs" / re.sub(r"[^\w.-]+", "_", request.node.name)
    dest.mkdir(parents=True, exist_ok=True)
    for path, name in ((lab.daemon.log_path, "xfrmctl.log"), (lab.charon.log_path, "charon.log")):
        if path.exists():
            with open(path, "rb") as src:
                src.seek(marks[path] if path.stat().st_size >= marks[path] else 0)
                (dest / name).write_bytes(src.read())
    for path in (lab.daemon.config_path, lab.charon.swanctl_dir / "swanctl.conf",
                 lab.work / "charon-killed.log"):
        if path.exists():
            shutil.copy(path, dest / path.name)
    if lab.charon.running:  # leave nothing up for the next case
        for sa in lab.charon.list_sas():
            lab.charon.terminate(ike_id=sa.uniqueid, timeout=30)


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
    """The next ChildSaNegotiated of ``conn`` with both SAs in our kernel."""
    event = wait_event(daemon, "ChildSaNegotiated", conn, after)
    spis = {int(event["spi_in"]), int(event["spi_out"])}
    wait_until(lambda: spis <= {s.spi for s in xfrm_states(daemon.netns)}, 30,
               lambda: f"SAs {spis} not in our kernel\n{daemon.tail()}")
    return event


def wait_until(predicate: Callable[[], bool], timeout: float, what: Callable[[], str],
               interval: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(what())
        time.sleep(interval)


def ping(netns: str, src: str, dst: str, count: int = 5) -> str:
    out = run("ping", "-c", str(count), "-i", "0.2", "-W", "5", "-I", src, dst, netns=netns,
              check=False)
    assert re.search(r" 0% packet loss", out), out
    return out


def by_spi(netns: str) -> dict[int, XfrmState]:
    return {s.spi: s for s in xfrm_states(netns)}


def check_traffic(lab: Lab, event: Event, src: str, dst: str, *, encap: bool = False,
                  link: str | None = None) -> None:
    """5 pings ``src`` -> ``dst`` from the left: both SAs of ``event`` count 5 packets more
    in both kernels (and the link ``link`` 5 each way, when route-based)."""
    left, right = lab.topo.left, lab.topo.right
    spi_in, spi_out = int(event["spi_in"]), int(event["spi_out"])
    before = by_spi(left)
    for spi in (spi_in, spi_out):
        sa = before[spi]
        assert sa.mode == "tunnel" and KERNEL_ALG in sa.algorithms, sa
        if encap:
            assert sa.encap is not None and sa.encap.startswith("espinudp"), sa
        else:
            assert sa.encap is None, sa
    link_before = link_packets(left, link) if link else (0, 0)
    ping(left, src, dst)
    after_left, after_right = by_spi(left), by_spi(right)
    assert after_left[spi_out].packets - before[spi_out].packets == 5, after_left[spi_out]
    assert after_left[spi_in].packets - before[spi_in].packets == 5, after_left[spi_in]
    # charon's kernel: our outbound SA is its inbound one and the reverse
    assert after_right[spi_out].packets == after_left[spi_out].packets, after_right
    assert after_right[spi_in].packets == after_left[spi_in].packets, after_right
    if link:
        tx, rx = link_packets(left, link)
        assert (tx - link_before[0], rx - link_before[1]) == (5, 5), (link, tx, rx, link_before)


def swan_child(sas: list[SA]) -> dict[str, Any]:
    kids = [c for sa in sas for c in sa.children.values() if c.get("state") == "INSTALLED"]
    assert kids, [(s.name, s.state, s.child_states()) for s in sas]
    return kids[-1]


def check_same_child(lab: Lab, child_name: str, event: Event) -> list[SA]:
    sas = lab.charon.wait_child_installed(child_name)
    kid = swan_child(sas)
    assert {int(kid["spi-in"], 16), int(kid["spi-out"], 16)} == {
        int(event["spi_out"]), int(event["spi_in"])}, kid
    return sas


def is_dpd_state(sa: XfrmState) -> bool:
    return R_DPD in (sa.src, sa.dst)


def wait_clean(lab: Lab, timeout: float = 60) -> None:
    """No SA of the case left in either kernel (the DPD connection's may linger on ours)."""
    def clean() -> bool:
        return (not [s for s in xfrm_states(lab.topo.left) if not is_dpd_state(s)]
                and not xfrm_states(lab.topo.right) and not lab.charon.list_sas())
    wait_until(clean, timeout, lambda: f"SAs left over: ours {xfrm_states(lab.topo.left)}, "
                                       f"charon's {xfrm_states(lab.topo.right)}")
    policies = lab.topo.run(lab.topo.left, "ip", "xfrm", "policy")
    assert f"dst {R_NET}" not in policies and f"dst {L_NET}" not in policies, policies


# --------------------------------------------------------------------------- DPD, part 1


def test_dpd_charon_killed(lab: Lab, keep_logs: None) -> None:
    """The DPD connection up (charon initiates), ping, liveness answered; then charon is
    SIGKILLed and its address removed, and our daemon retransmits its DPD request. Charon
    is restarted on a clean kernel for the next cases; test_dpd_gave_up checks the end."""
    daemon, charon, topo = lab.daemon, lab.charon, lab.topo
    mark = daemon.mark()
    charon.load([SwanConn("dpd", child_name="dpd", local_addrs=[R_DPD], remote_addrs=[L_DIRECT],
                          local_id=DPD_ID, remote_id=LEFT_ID, proposals=[IKE],
                          esp_proposals=[ESP], local_ts=[R_DPD_NET], remote_ts=[L_DPD_NET])],
                [SwanSecret(PSK, ids=[LEFT_ID, DPD_ID])])
    charon.initiate("dpd", "dpd", timeout=90)
    up = wait_event(daemon, "IkeSaUp", "dpd", mark)
    assert up["initiator"] is False
    event = wait_installed(daemon, "dpd", mark)
    check_same_child(lab, "dpd", event)
    check_traffic(lab, event, L_DPD_HOST, R_DPD_HOST)

    # a DPD exchange while charon lives: we ask (after 5 s without ESP from it), it answers
    sent = nft_counters(topo.left)["to_dpd_peer"]
    wait_until(lambda: nft_counters(topo.left)["to_dpd_peer"] > sent, 30,
               lambda: f"no DPD request to the peer in 30 s\n{daemon.tail()}")
    time.sleep(2)
    assert charon.list_sas(), "charon lost the IKE_SA"
    assert not daemon.events("NegotiationFailed", connection="dpd")

    # the peer dies: charon killed, its address gone from the wire
    assert charon.proc is not None
    charon.proc.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    charon.proc.wait(30)
    charon.proc = None
    topo.run(topo.right, "ip", "addr", "del", f"{R_DPD}/25", "dev", "rd")
    dpd = lab.dpd = DpdRun(killed_at, nft_counters(topo.left)["to_dpd_peer"],
                           {int(event["spi_in"]), int(event["spi_out"])}, daemon.mark())
    if charon.log_path.exists():
        shutil.copy(charon.log_path, lab.work / "charon-killed.log")
    # charon left its SAs, policies and routes behind: clean its kernel, start it again
    ip_batch(topo.right, "xfrm state flush\nxfrm policy flush\nroute flush table 220\n")
    charon.start(wait=False)
    # meanwhile: our daemon keeps asking the dead peer (first try within 5 s, the first
    # retransmission 4 s later)
    wait_until(lambda: nft_counters(topo.left)["to_dpd_peer"] >= dpd.sent_before + 2, 30,
               lambda: f"DPD not retransmitted: {nft_counters(topo.left)}\n{daemon.tail()}")
    assert dpd.spis <= set(by_spi(topo.left)), "SAs gone before DPD gave up"
    charon.wait_ready()


# --------------------------------------------------------------------------- the cases


@dataclass(frozen=True)
class Case:
    id: str
    we_initiate: bool = True
    key_type: str | None = None  # X.509 with certificates of this pki key type
    swan_auth: str = "pubkey"
    swan_scheme: str | None = None  # the signature scheme charon's log names, both ways
    route: str | None = None  # "xfrmi" | "vti" on our side
    nat: bool = False
    delete_by_us: bool = True


PSS_AUTH = "ike:rsa/pss-sha256"  # charon signs with RSASSA-PSS and accepts only that
CASES = [
    Case("x509-ed25519-we-initiate", key_type="ed25519", swan_scheme="ED25519"),
    Case("x509-ed25519-charon-initiates", we_initiate=False, key_type="ed25519",
         swan_scheme="ED25519", delete_by_us=False),
    Case("x509-rsa-pss-we-initiate", key_type="rsa2048", swan_auth=PSS_AUTH,
         swan_scheme="RSA_EMSA_PSS", delete_by_us=False),
    Case("x509-rsa-pss-charon-initiates", we_initiate=False, key_type="rsa2048",
         swan_auth=PSS_AUTH, swan_scheme="RSA_EMSA_PSS"),
    Case("route-xfrmi-we-initiate", route="xfrmi"),
    Case("route-vti-charon-initiates", route="vti", we_initiate=False),
    Case("nat-masquerade-we-initiate", nat=True),
]

LINKS = {"xfrmi": "ipsec-m", "vti": "vti-m"}


def swan_conn(case: Case) -> SwanConn:
    local, remote = (R_NAT, None) if case.nat else (R_DIRECT, L_DIRECT)
    return SwanConn(
        "gw", child_name="net", local_addrs=[local], remote_addrs=[remote] if remote else [],
        local_id=RIGHT_ID, remote_id=LEFT_ID, proposals=[IKE], esp_proposals=[ESP],
        local_ts=[R_NET], remote_ts=[L_NET],
        auth=case.swan_auth if case.key_type else "psk",
        local_cert="right.pem" if case.key_type else None,
        remote_cacert="ca.pem" if case.key_type else None,
        child_rekey_time="1h", child_life_time="2h", rekey_time="4h")


def load_charon(lab: Lab, case: Case) -> None:
    conn = swan_conn(case)
    if case.key_type:
        files = lab.certs[case.key_type]
        lab.charon.load([conn], certs={"right.pem": files["right.pem"]},
                        cacerts={"ca.pem": files["ca.pem"]}, keys={"right.key": files["right.key"]})
    else:
        lab.charon.load([conn], [SwanSecret(PSK, ids=[LEFT_ID, RIGHT_ID])])


def our_connection(lab: Lab, case: Case) -> dict[str, Any]:
    if case.route == "xfrmi":
        kid = child(["0.0.0.0/0"], ["0.0.0.0/0"], esp_proposals=ESP, interface_kind="xfrmi",
                    interface_name=LINKS["xfrmi"], if_id=XFRMI_IF_ID,
                    interface_addresses=["198.51.100.254/32"], routes=[R_NET])
    elif case.route == "vti":
        kid = child(["0.0.0.0/0"], ["0.0.0.0/0"], esp_proposals=ESP, interface_kind="vti",
                    interface_name=LINKS["vti"], mark_in=VTI_MARK, mark_out=VTI_MARK,
                    interface_addresses=["198.51.100.253/32"], routes=[R_NET])
    else:
        kid = child([L_NET], [R_NET], esp_proposals=ESP)
    extra: dict[str, Any] = {}
    if case.key_type:
        prefix = lab.work / case.key_type
        extra.update(auth="pubkey", certificate=f"{prefix}-left.pem",
                     private_key=f"{prefix}-left.key", ca=[f"{prefix}-ca.pem"])
    return connection(
        L_NAT if case.nat else L_DIRECT, R_NAT if case.nat else R_DIRECT, {"net": kid},
        psk=None if case.key_type else PSK, local_id=LEFT_ID, remote_id=RIGHT_ID,
        ike_proposals=IKE, start_action="start" if case.we_initiate else "none", **extra)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_interop_more(lab: Lab, case: Case, keep_logs: None) -> None:
    name = f"m{next(lab.names)}"
    daemon, charon, left = lab.daemon, lab.charon, lab.topo.left
    link = LINKS.get(case.route or "")
    mark = daemon.mark()
    charon_log_mark = len(charon.log_text())
    load_charon(lab, case)
    daemon.reload(with_dpd({name: our_connection(lab, case)}))
    if link:  # created with the connection, before any SA
        wait_until(lambda: link_exists(left, link), 30,
                   lambda: f"no {link} in {left}\n{daemon.tail()}")
    if not case.we_initiate:
        charon.initiate("net", "gw", timeout=90)
    up = wait_event(daemon, "IkeSaUp", name, mark)
    assert up["initiator"] is case.we_initiate
    event = wait_installed(daemon, name, mark)
    sas = check_same_child(lab, "net", event)
    assert event["local_ts"] == [L_NET] and event["remote_ts"] == [R_NET], event

    if case.swan_scheme:  # both signatures of the scheme the case is about
        log = charon.log_text()[charon_log_mark:]
        for who in (f"'{RIGHT_ID}' (myself)", f"'{LEFT_ID}'"):
            assert re.search(rf"authentication of {re.escape(who)} with "
                             rf"{case.swan_scheme}\S* successful", log), (who, log[-3000:])
    nat_before: dict[str, int] = {}
    if case.nat:
        assert up["nat_local"] is True and up["nat_remote"] is False, up
        assert event["encap"] is True, event
        ike = sas[0].raw
        assert ike.get("remote-host") == NAT_OUTSIDE, ike
        assert ike.get("nat-remote") == "yes" and ike.get("nat-local") != "yes", ike
        assert swan_child(sas).get("encap") == "yes"
        nat_before = nft_counters(lab.topo.nat)
    check_traffic(lab, event, L_HOST, R_HOST, encap=case.nat, link=link)
    if case.nat:
        nat_after = nft_counters(lab.topo.nat)
        delta = {k: nat_after[k] - nat_before[k] for k in nat_after}
        assert delta == {"esp_in_udp_out": 5, "esp_in_udp_back": 5, "plain_esp": 0}, delta
    if case.route == "xfrmi":
        details = lab.topo.run(left, "ip", "-d", "link", "show", "dev", LINKS["xfrmi"])
        assert f"if_id {hex(XFRMI_IF_ID)}" in details, details
    route = lab.topo.run(left, "ip", "route", "get", R_HOST, "from", L_HOST)
    assert f"dev {link or 'ld'} " in route, route

    if case.delete_by_us:
        daemon.reload(with_dpd({}))  # the connection is gone from the file
    else:
        before = daemon.mark()
        charon.terminate(ike="gw", timeout=60)
        wait_event(daemon, "IkeSaDown", name, before, 60)
        if link:
            assert link_exists(left, link), "the interface went with the SA"
        daemon.reload(with_dpd({}))
    wait_clean(lab)
    if link:
        wait_until(lambda: not link_exists(left, link), 30,
                   lambda: f"{link} still there after the connection was removed")
    errors = [e for e in daemon.errors(mark) if e.get("connection") != "dpd"]
    assert not errors, daemon.tail()


# --------------------------------------------------------------------------- DPD, part 2


def test_dpd_gave_up(lab: Lab, keep_logs: None) -> None:
    """The end of test_dpd_charon_killed: the daemon gives up on the dead peer
    (NegotiationFailed PEER_UNREACHABLE, IkeSaDown) and removes the DPD SAs and policies."""
    if lab.dpd is None:
        pytest.skip("test_dpd_charon_killed did not get to kill charon")
    dpd, daemon, left = lab.dpd, lab.daemon, lab.topo.left
    remaining = dpd.killed_at + GIVE_UP_BUDGET - time.monotonic()
    failed = daemon.wait_line(
        lambda e: e.get("event") == "NegotiationFailed" and e.get("connection") == "dpd",
        max(remaining, 1.0), "NegotiationFailed of dpd", dpd.mark)
    gave_up_after = time.monotonic() - dpd.killed_at
    assert failed["reason"] == "PEER_UNREACHABLE", failed
    down = daemon.wait_line(
        lambda e: e.get("event") == "IkeSaDown" and e.get("connection") == "dpd", 30,
        "IkeSaDown of dpd", dpd.mark)
    assert down["reason"] == "PEER_UNREACHABLE", down
    wait_until(lambda: not dpd.spis & set(by_spi(left)), 30,
               lambda: f"DPD SAs still in our kernel: {xfrm_states(left)}")
    assert f"dst {R_DPD_NET}" not in lab.topo.run(left, "ip", "xfrm", "policy")
    # the first DPD request and its five retransmissions went to the dead peer, no more
    sent = nft_counters(left)["to_dpd_peer"] - dpd.sent_before
    print(f"DPD gave up {gave_up_after:.0f} s after the kill; {sent} requests to the dead peer")
    assert 5 <= sent <= 6, sent
    assert not daemon.events("IkeSaUp", connection="dpd")[1:], "dpd re-initiated"
