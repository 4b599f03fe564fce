"""Capture strongSwan <-> strongSwan exchanges for golden fixtures (runs in the lab VM).

    python deploy/lab/capture.py OUTDIR [CASE...]

For each case: two namespaces (tests/lab/conftest.make_pair), tcpdump on the left
veth (UDP 500/4500 only), two charons logging IKE and CHILD key material (ike=4,
chd=4), the scripted exchanges, then tcpdump stopped with SIGINT. Leaves in
OUTDIR/<case>/: capture.pcap, left.log, right.log, case.json (parameters), certs/.
deploy/lab/fixtures.py turns that into tests/fixtures/strongswan/<case>.json.

Test secrets only: at these log levels charon writes every key it derives.
"""

from __future__ import annotations

import datetime
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.lab.conftest import GatewayPair, make_pair, remove_pair
from tests.support.strongswan import Charon, SwanConn, SwanSecret

LOG_LEVELS = {"ike": 4, "chd": 4, "cfg": 1, "net": 1, "enc": 1, "knl": 1}
LEFT_ID, RIGHT_ID = "left.example.org", "right.example.org"


@dataclass
class Case:
    name: str
    proposals: str
    esp_proposals: str
    psk: str | None = None
    steps: list[str] = field(default_factory=list)
    dpd_delay: int | None = None


CASES = {
    c.name: c
    for c in [
        Case(
            "psk_aes128gcm16_x25519",
            "aes128gcm16-prfsha256-x25519",
            "aes128gcm16-x25519",
            psk="golden-fixture-psk-aes128gcm16",
            steps=["ping", "rekey_child", "rekey_ike", "dpd", "delete"],
            dpd_delay=3,
        ),
        Case(
            "psk_aes256_sha256_modp2048",
            "aes256-sha256-modp2048",
            "aes256-sha256",
            psk="golden-fixture-psk-aes256-modp2048",
            steps=["delete"],
        ),
        Case(
            "psk_chacha20poly1305_x25519",
            "chacha20poly1305-prfsha256-x25519",
            "chacha20poly1305",
            psk="golden-fixture-psk-chacha20poly1305",
            steps=["delete"],
        ),
        Case(
            "ecdsa_p256_aes128gcm16_x25519",
            "aes128gcm16-prfsha256-x25519",
            "aes128gcm16",
            steps=["delete"],
        ),
    ]
}


# -- test PKI (ECDSA P-256), generated per capture ------------------------------------------


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def make_pki() -> dict[str, bytes]:
    """A test CA and two end-entity certs (SAN = the IKE identities). Test-only keys."""
    now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "xfrmctl test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    out = {"ca.pem": ca.public_bytes(serialization.Encoding.PEM), "ca.key": _pem_key(ca_key)}
    for side, ident in (("left", LEFT_ID), ("right", RIGHT_ID)):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ident)]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(ident)]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        out[f"{side}.pem"] = cert.public_bytes(serialization.Encoding.PEM)
        out[f"{side}.key"] = _pem_key(key)
    return out


# -- the capture ------------------------------------------------------------------------------


def wait(pred: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.3)
    raise TimeoutError(f"{what} not seen in {timeout}s")


def conns(case: Case, pair: GatewayPair, side: str) -> SwanConn:
    me, peer = (pair.left, pair.right) if side == "left" else (pair.right, pair.left)
    ids = (LEFT_ID, RIGHT_ID) if side == "left" else (RIGHT_ID, LEFT_ID)
    pubkey = case.psk is None
    return SwanConn(
        "gw",
        local_addrs=[me.outer],
        remote_addrs=[peer.outer],
        local_id=ids[0],
        remote_id=ids[1],
        auth="pubkey" if pubkey else "psk",
        local_cert=f"{side}.pem" if pubkey else None,
        remote_cacert="ca.pem" if pubkey else None,
        send_certreq=True if pubkey else None,
        proposals=[case.proposals],
        esp_proposals=[case.esp_proposals],
        local_ts=[me.subnet],
        remote_ts=[peer.subnet],
        dpd_delay=case.dpd_delay if side == "left" else None,
    )


def child_spi(charon: Charon) -> str:
    for sa in charon.list_sas():
        for child in sa.children.values():
            if child.get("state") == "INSTALLED":
                return str(child.get("spi-in"))
    return ""


def ike_uid(charon: Charon) -> str:
    return next((s.uniqueid for s in charon.list_sas() if s.state == "ESTABLISHED"), "")


def capture(case: Case, out: Path, index: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    pair = make_pair(f"cap{index}")
    work = Path(f"/tmp/capture-{case.name}")
    shutil.rmtree(work, ignore_errors=True)
    pcap = out / "capture.pcap"
    dump_err = work / "tcpdump.err"
    work.mkdir(parents=True)
    dump = subprocess.Popen(
        ["ip", "netns", "exec", pair.left.netns, "tcpdump", "-U", "-n", "-s", "0",
         "-i", pair.left.veth, "-w", str(pcap), "udp port 500 or udp port 4500"],
        stdout=subprocess.DEVNULL,
        stderr=dump_err.open("wb"),
    )  # fmt: skip
    try:
        wait(lambda: "listening on" in dump_err.read_text(), 60, "tcpdump listening")
        left = Charon(pair.left.netns, work / "left", log_levels=LOG_LEVELS)
        right = Charon(pair.right.netns, work / "right", log_levels=LOG_LEVELS)
        left.start(wait=False)
        right.start(wait=False)
        try:
            left.wait_ready()
            right.wait_ready()
            creds: dict[str, dict[str, bytes]] = {}
            secrets = []
            meta: dict[str, object] = {
                "case": case.name,
                "proposals": case.proposals,
                "esp_proposals": case.esp_proposals,
                "steps": ["ike_sa_init", "ike_auth", *case.steps],
                "left": {"id": LEFT_ID, "addr": pair.left.outer, "ts": pair.left.subnet},
                "right": {"id": RIGHT_ID, "addr": pair.right.outer, "ts": pair.right.subnet},
                "initiator": "left",
            }
            if case.psk:
                secrets = [SwanSecret(case.psk, ids=[LEFT_ID, RIGHT_ID])]
                meta["psk"] = case.psk
            else:
                pki = make_pki()
                (out / "certs").mkdir(exist_ok=True)
                for fname, data in pki.items():
                    (out / "certs" / fname).write_bytes(data)
                meta["certs"] = {
                    "ca": "ca.pem",
                    "left": {"cert": "left.pem", "key": "left.key"},
                    "right": {"cert": "right.pem", "key": "right.key"},
                }
            for charon, side in ((left, "left"), (right, "right")):
                if not case.psk:
                    creds = {
                        "certs": {f"{side}.pem": pki[f"{side}.pem"]},
                        "cacerts": {"ca.pem": pki["ca.pem"]},
                        "keys": {f"{side}.key": pki[f"{side}.key"]},
                    }
                charon.load(
                    [conns(case, pair, side)],
                    secrets,
                    certs=creds.get("certs"),
                    cacerts=creds.get("cacerts"),
                    keys=creds.get("keys"),
                )
            t0 = time.monotonic()
            left.initiate("gw", timeout=120)
            left.wait_child_installed("gw", 60)
            print(f"capture {case.name}: up in {time.monotonic() - t0:.1f}s", flush=True)
            for step in case.steps:
                run_step(step, left, right, pair)
                print(f"capture {case.name}: {step} done", flush=True)
            (out / "case.json").write_text(json.dumps(meta, indent=2) + "\n")
        finally:
            right.stop()
            left.stop()
    finally:
        time.sleep(1)  # let the last datagram reach tcpdump
        dump.send_signal(signal.SIGINT)
        try:
            dump.wait(30)
        except subprocess.TimeoutExpired:
            dump.kill()
        for side in ("left", "right"):
            log = work / side / "charon.log"
            if log.exists():
                shutil.copy(log, out / f"{side}.log")
        remove_pair(pair)


def run_step(step: str, left: Charon, right: Charon, pair: GatewayPair) -> None:
    if step == "ping":
        res = pair.left.run("ping", "-c", "3", "-i", "0.2", "-W", "5",
                            "-I", pair.left.inner, pair.right.inner)  # fmt: skip
        assert " 0% packet loss" in res, res
    elif step == "rekey_child":
        old = child_spi(left)
        left.rekey(child="gw")
        wait(lambda: child_spi(left) not in ("", old), 90, "CHILD_SA rekeyed")
        right.wait_child_installed("gw", 30)
    elif step == "rekey_ike":
        old = ike_uid(left)
        left.rekey(ike="gw")
        wait(lambda: ike_uid(left) not in ("", old), 90, "IKE_SA rekeyed")
    elif step == "dpd":
        empty_info = re.compile(r"generating INFORMATIONAL request \d+ \[ \]")
        wait(lambda: bool(empty_info.search(left.log_text())), 60, "DPD request")
        empty_reply = re.compile(r"parsed INFORMATIONAL response \d+ \[ \]")
        wait(lambda: bool(empty_reply.search(left.log_text())), 60, "DPD response")
    elif step == "delete":
        left.terminate(ike="gw", timeout=60)
        wait(lambda: not right.list_sas(), 30, "IKE_SA deleted on the responder")
    else:
        raise ValueError(step)


def main(argv: list[str]) -> int:
    out = Path(argv[1])
    names = argv[2:] or list(CASES)
    failed = 0
    for i, name in enumerate(names):
        t0 = time.monotonic()
        try:
            capture(CASES[name], out / name, i)
            print(f"capture {name}: ok in {time.monotonic() - t0:.1f}s", flush=True)
        except Exception as exc:
            failed += 1
            print(f"capture {name}: FAILED: {exc!r}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
