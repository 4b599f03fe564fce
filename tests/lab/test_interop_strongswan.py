"""xfrmctl against strongSwan 5.9.8 (charon) on a real kernel, ping through ESP every time.

One gateway pair, one charon (right, 192.0.2.2) and one xfrmctl daemon (left, 192.0.2.1)
for the whole module: a cold start of either costs minutes under TCG. Each case loads its
connection into charon (``swanctl --load-all`` replaces the previous one) and into our
daemon (SIGHUP with a configuration holding only this case's connection, under a fresh
name, so the previous case's SAs are deleted and this one starts clean), brings the
tunnel up from the side the case says, checks the kernel on both sides while pinging,
runs the case's extra steps (rekeys), and deletes from the side the case says: both
kernels must then be empty. A failing case keeps both logs in
``<results>/interop-logs/<case>/``.

Our daemon is policy-based and installs no routes: each gateway routes the remote subnet
to its peer (charon's own routes in table 220 take precedence on its side).
"""

from __future__ import annotations

import ipaddress
import itertools
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
)

from tests.lab.conftest import GatewayPair, make_pair, remove_pair
from tests.support import pki
from tests.support.strongswan import SA, Charon, SwanConn, SwanSecret
from tests.support.xfrmctl_daemon import (
    XfrmctlDaemon,
    child,
    connection,
    daemon_conf,
    wait_installed,
    xfrm_states,
)

PSK = "lab-interop-test-psk-not-secret"
LEFT_ID, RIGHT_ID = "left.example.org", "right.example.org"
POOL = "203.0.113.128/28"  # remote access: virtual IPs for charon (right) from our pool


@dataclass(frozen=True)
class Case:
    id: str
    we_initiate: bool = True
    ike: str = "aes128gcm16-prfsha256-x25519"
    esp: str = "aes128gcm16-x25519"
    kernel_alg: str = "rfc4106(gcm(aes))"
    mode: str = "tunnel"
    encap: bool = False  # on the initiator's side (ours: encap: true; charon: encap=yes)
    narrow: bool = False  # charon (responder) accepts only 198.51.100.1 <-> 203.0.113.1
    x509: bool = False
    vip: bool = False  # charon asks for a virtual IP from our pool
    swan_rekey_child: bool = False
    swan_rekey_ike: bool = False
    our_rekeys: bool = False  # CHILD_SA on the kernel's soft expire, IKE_SA on its timer
    delete_by_us: bool = True
    ours: dict[str, Any] = field(default_factory=dict)


CASES = [
    Case("psk-aes128gcm-x25519-we-initiate", delete_by_us=False),
    Case("psk-aes256gcm-ecp384-charon-initiates", we_initiate=False,
         ike="aes256gcm16-prfsha384-ecp384", esp="aes256gcm16-ecp384"),
    Case("psk-chacha20-x25519-we-initiate-charon-rekeys-child",
         ike="chacha20poly1305-prfsha256-x25519", esp="chacha20poly1305-x25519",
         kernel_alg="rfc7539esp(chacha20,poly1305)", swan_rekey_child=True,
         delete_by_us=False),
    Case("psk-aes256-sha256-modp2048-charon-initiates-we-rekey", we_initiate=False,
         ike="aes256-sha256-modp2048", esp="aes256-sha256-modp2048", kernel_alg="cbc(aes)",
         our_rekeys=True),
    Case("transport-we-initiate", mode="transport"),
    Case("ts-narrowed-by-charon", narrow=True, delete_by_us=False),
    Case("encap-we-initiate", encap=True),
    Case("encap-charon-initiates-and-rekeys-ike", we_initiate=False, encap=True,
         swan_rekey_ike=True, delete_by_us=False),
    Case("x509-ecdsa-we-initiate", x509=True),
    Case("x509-ecdsa-charon-initiates", we_initiate=False, x509=True, delete_by_us=False),
    Case("remote-access-charon-asks-vip", we_initiate=False, vip=True),
]


@dataclass
class Lab:
    pair: GatewayPair
    charon: Charon
    daemon: XfrmctlDaemon
    certs: dict[str, bytes]
    results: Path
    names: Iterator[int] = field(default_factory=lambda: itertools.count(1))


def _pem_key(cred: pki.Credential) -> bytes:
    return cred.key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, lab_results: Path) -> Iterator[Lab]:
    work = tmp_path_factory.mktemp("interop")
    ca = pki.make_ca("xfrmctl interop test CA")
    left = pki.make_cert(ca, LEFT_ID, sans=[LEFT_ID])
    right = pki.make_cert(ca, RIGHT_ID, sans=[RIGHT_ID])
    certs = {"ca.pem": ca.cert.public_bytes(Encoding.PEM),
             "left.pem": left.cert.public_bytes(Encoding.PEM), "left.key": _pem_key(left),
             "right.pem": right.cert.public_bytes(Encoding.PEM), "right.key": _pem_key(right)}
    for name in ("ca.pem", "left.pem", "left.key"):
        (work / name).write_bytes(certs[name])
        (work / name).chmod(0o600)

    pair = make_pair("xi")
    try:
        pair.left.run("ip", "route", "add", pair.right.subnet, "via", pair.right.outer)
        pair.right.run("ip", "route", "add", pair.left.subnet, "via", pair.left.outer)
        daemon = XfrmctlDaemon(pair.left.netns, work / "daemon",
                               daemon_conf([pair.left.outer], {}))
        charon = Charon(pair.right.netns, work / "charon")
        daemon.start(wait=False)  # both cold starts at once
        try:
            charon.start()
            daemon.wait_ready()
            yield Lab(pair, charon, daemon, certs, lab_results)
        finally:
            charon.stop()
            daemon.stop()
    finally:
        remove_pair(pair)


# ---------------------------------------------------------------------------- configs


def swan_conn(lab: Lab, case: Case) -> SwanConn:
    me, peer = lab.pair.right, lab.pair.left
    if case.mode == "transport":
        local_ts, remote_ts = ["dynamic"], ["dynamic"]
    elif case.narrow:
        local_ts, remote_ts = [f"{me.inner}/32"], [f"{peer.inner}/32"]
    elif case.vip:
        local_ts, remote_ts = ["dynamic"], [peer.subnet]  # the client's virtual IP
    else:
        local_ts, remote_ts = [me.subnet], [peer.subnet]
    return SwanConn(
        "gw", child_name="net", local_addrs=[me.outer], remote_addrs=[peer.outer],
        local_id=RIGHT_ID, remote_id=LEFT_ID, proposals=[case.ike], esp_proposals=[case.esp],
        local_ts=local_ts, remote_ts=remote_ts, mode=case.mode,
        encap=True if case.encap and not case.we_initiate else None,
        auth="pubkey" if case.x509 else "psk",
        local_cert="right.pem" if case.x509 else None,
        remote_cacert="ca.pem" if case.x509 else None,
        vips=["0.0.0.0"] if case.vip else (),
        child_rekey_time="1h", child_life_time="2h", rekey_time="4h")


def load_charon(lab: Lab, case: Case) -> None:
    conn = swan_conn(lab, case)
    if case.x509:
        lab.charon.load([conn], certs={"right.pem": lab.certs["right.pem"]},
                        cacerts={"ca.pem": lab.certs["ca.pem"]},
                        keys={"right.key": lab.certs["right.key"]})
    else:
        lab.charon.load([conn], [SwanSecret(PSK, ids=[LEFT_ID, RIGHT_ID])])


def our_conf(lab: Lab, case: Case, name: str) -> dict[str, Any]:
    me, peer = lab.pair.left, lab.pair.right
    work = lab.daemon.workdir.parent
    if case.mode == "transport":
        kid = child(esp_proposals=case.esp, mode="transport")
    elif case.vip:
        kid = child([me.subnet], [], esp_proposals=case.esp)
    else:
        kid = child([me.subnet], [peer.subnet], esp_proposals=case.esp)
    extra: dict[str, Any] = dict(case.ours)
    if case.our_rekeys:
        kid.update(rekey_time=40, life_time=80)
        extra["rekey_time"] = 45  # the IKE_SA
    if case.encap and case.we_initiate:
        extra["encap"] = True
    if case.vip:
        extra["pool"] = POOL
    if case.x509:
        extra.update(auth="pubkey", certificate=str(work / "left.pem"),
                     private_key=str(work / "left.key"), ca=[str(work / "ca.pem")])
    conn = connection(
        me.outer, peer.outer, {"net": kid}, psk=None if case.x509 else PSK, local_id=LEFT_ID,
        remote_id=RIGHT_ID, ike_proposals=case.ike,
        start_action="start" if case.we_initiate else "none", **extra)
    return daemon_conf([me.outer], {name: conn})


# ---------------------------------------------------------------------------- checks


def swan_child(sas: list[SA]) -> dict[str, Any]:
    kids = [c for sa in sas for c in sa.children.values() if c.get("state") == "INSTALLED"]
    assert kids, [(s.name, s.state, s.child_states()) for s in sas]
    return kids[-1]


def endpoints(lab: Lab, case: Case, vip: str | None) -> tuple[str, str, str]:
    """(namespace to ping from, source, destination) of the case's protected traffic."""
    left, right = lab.pair.left, lab.pair.right
    if case.mode == "transport":
        return left.netns, left.outer, right.outer
    if vip:
        return right.netns, vip, left.inner
    if case.narrow:
        return left.netns, left.inner, right.inner
    return left.netns, left.inner, right.inner


def ping(netns: str, src: str, dst: str, count: int, interval: float = 0.2
         ) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["ip", "netns", "exec", netns, "ping", "-c", str(count), "-i", str(interval), "-W", "5",
         "-I", src, dst], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def ping_done(proc: subprocess.Popen[str], timeout: float = 120) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert re.search(r" 0% packet loss", out), out
    return out


def check_traffic(lab: Lab, case: Case, event: dict[str, Any], vip: str | None) -> None:
    """5 pings through the CHILD_SA of ``event``: both SAs count 5 more packets on both
    sides, encapsulated in UDP 4500 when the case forces it."""
    left_ns, right_ns = lab.pair.left.netns, lab.pair.right.netns
    spi_in, spi_out = int(event["spi_in"]), int(event["spi_out"])
    before = {s.spi: s for s in xfrm_states(left_ns)}
    for spi in (spi_in, spi_out):
        sa = before[spi]
        assert sa.mode == case.mode, sa
        assert case.kernel_alg in sa.algorithms, sa
        if case.encap:
            assert sa.encap == "espinudp sport 4500 dport 4500", sa
        else:
            assert sa.encap is None, sa
    ping_done(ping(*endpoints(lab, case, vip), 5))
    after_left = {s.spi: s for s in xfrm_states(left_ns)}
    after_right = {s.spi: s for s in xfrm_states(right_ns)}
    assert after_left[spi_out].packets - before[spi_out].packets == 5
    assert after_left[spi_in].packets - before[spi_in].packets == 5
    # charon's kernel: our outbound SA is its inbound one and the reverse
    assert after_right[spi_out].packets == after_left[spi_out].packets
    assert after_right[spi_in].packets == after_left[spi_in].packets


def wait_clean(lab: Lab, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        left = xfrm_states(lab.pair.left.netns)
        right = xfrm_states(lab.pair.right.netns)
        if not left and not right and not lab.charon.list_sas():
            break
        assert time.monotonic() < deadline, f"SAs left over: ours {left}, charon's {right}"
        time.sleep(0.5)
    assert "tmpl" not in lab.pair.left.run("ip", "xfrm", "policy")


@pytest.fixture
def keep_logs(request: pytest.FixtureRequest, lab: Lab) -> Iterator[None]:
    daemon_mark = lab.daemon.log_path.stat().st_size if lab.daemon.log_path.exists() else 0
    charon_mark = lab.charon.log_path.stat().st_size if lab.charon.log_path.exists() else 0
    yield
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        dest = lab.results / "interop-logs" / re.sub(r"[^\w.-]+", "_", request.node.name)
        dest.mkdir(parents=True, exist_ok=True)
        for path, mark, name in ((lab.daemon.log_path, daemon_mark, "xfrmctl.log"),
                                 (lab.charon.log_path, charon_mark, "charon.log")):
            if path.exists():
                with open(path, "rb") as src:
                    src.seek(mark)
                    (dest / name).write_bytes(src.read())
        shutil.copy(lab.daemon.config_path, dest / "xfrmctl.yaml")
        shutil.copy(lab.charon.swanctl_dir / "swanctl.conf", dest / "swanctl.conf")
        # leave nothing up for the next case
        for sa in lab.charon.list_sas():
            lab.charon.terminate(ike_id=sa.uniqueid, timeout=30)


# ---------------------------------------------------------------------------- the cases


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_interop(lab: Lab, case: Case, keep_logs: None) -> None:
    name = f"c{next(lab.names)}"
    daemon, charon = lab.daemon, lab.charon
    mark = daemon.mark()
    load_charon(lab, case)
    daemon.reload(our_conf(lab, case, name))  # the previous case's connection goes away
    if not case.we_initiate:
        charon.initiate("net", "gw", timeout=90)
    up = daemon.wait_event("IkeSaUp", 120, mark, connection=name)
    assert up["initiator"] is case.we_initiate
    event = wait_installed(daemon, mark, connection=name)
    sas = charon.wait_child_installed("net")
    kid = swan_child(sas)
    assert {int(kid["spi-in"], 16), int(kid["spi-out"], 16)} == {
        int(event["spi_out"]), int(event["spi_in"])}
    assert kid["mode"] == case.mode.upper()
    if case.encap:
        assert kid.get("encap") == "yes", kid
    if case.narrow:
        assert event["local_ts"] == [f"{lab.pair.left.inner}/32"]
        assert event["remote_ts"] == [f"{lab.pair.right.inner}/32"]
    vip = None
    if case.vip:
        vip = charon_vip(sas)
        assert ipaddress_in(vip, POOL), vip
        assert event["remote_ts"] == [f"{vip}/32"]
    check_traffic(lab, case, event, vip)

    if case.swan_rekey_child:
        event = rekey_child_while_pinging(lab, case, event, vip, mark, by_charon=True)
    if case.swan_rekey_ike:
        rekey_ike_by_charon(lab, case, event, vip)
    if case.our_rekeys:
        event = rekey_child_while_pinging(lab, case, event, vip, mark, by_charon=False)

    if case.delete_by_us:
        daemon.reload(daemon_conf([lab.pair.left.outer], {}))
    else:
        before = daemon.mark()
        charon.terminate(ike="gw", timeout=60)
        daemon.wait_event("IkeSaDown", 60, before, connection=name)
    wait_clean(lab)
    assert not daemon.errors(mark), daemon.tail()


def charon_vip(sas: list[SA]) -> str:
    vips = [str(v) for sa in sas for v in sa.raw.get("local-vips", [])]
    assert vips, sas[0].raw
    return vips[0]


def ipaddress_in(address: str, network: str) -> bool:
    return ipaddress.ip_address(address) in ipaddress.ip_network(network)


def rekey_child_while_pinging(lab: Lab, case: Case, event: dict[str, Any], vip: str | None,
                              mark: int, *, by_charon: bool) -> dict[str, Any]:
    """A CHILD_SA rekey (charon's `rekey` command, or our kernel soft expire 36-40 s after
    the install, and then our IKE_SA rekey at 45 s) during a ping that must lose nothing.
    ``mark``: the case's start in our log (a soft expire may come early under TCG)."""
    daemon = lab.daemon
    seconds = 12 if by_charon else 50
    proc = ping(*endpoints(lab, case, vip), int(seconds / 0.2))
    try:
        if by_charon:
            time.sleep(3)
            lab.charon.rekey(child="net")
        new = wait_installed(daemon, mark, 90 if by_charon else 120,
                             rekey_of=int(event["spi_in"]))
        assert new["initiator"] is not by_charon
        if not by_charon:
            rekeyed = daemon.wait_event("IkeSaRekeyed", 90, mark)
            assert rekeyed["ike_sa"] != rekeyed["new_ike_sa"]
        daemon.wait_event("ChildSaDeleted", 60, mark, spi_in=int(event["spi_in"]))
        ping_done(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    # PFS: the rekey ran a key exchange with the proposal's group
    kid = next(c for sa in lab.charon.list_sas() for c in sa.children.values()
               if int(c["spi-in"], 16) == int(new["spi_out"]))
    group = case.esp.rsplit("-", 1)[1]
    expected = {"x25519": "CURVE_25519", "ecp384": "ECP_384", "modp2048": "MODP_2048"}[group]
    assert kid.get("dh-group") == expected, kid
    states = {s.spi: s for s in xfrm_states(lab.pair.left.netns)}
    assert int(event["spi_in"]) not in states  # the old SA is gone
    check_traffic(lab, case, new, vip)
    return new


def rekey_ike_by_charon(lab: Lab, case: Case, event: dict[str, Any], vip: str | None) -> None:
    daemon = lab.daemon
    mark = daemon.mark()
    old = lab.charon.list_sas()[0].uniqueid
    lab.charon.rekey(ike="gw")
    rekeyed = daemon.wait_event("IkeSaRekeyed", 90, mark)
    lab.charon.wait_for(lambda sas: bool(sas) and sas[0].uniqueid != old
                        and sas[0].state == "ESTABLISHED", 60, "IKE_SA rekeyed")
    assert rekeyed["new_ike_sa"] != rekeyed["ike_sa"]
    check_traffic(lab, case, event, vip)  # the CHILD_SA moved to the new IKE_SA
