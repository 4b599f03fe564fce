"""The daemon's revocation fetches (xfrmctl/daemon/revocation.py) over real HTTP on
loopback: a CRL from a distribution point, OCSP answered by `openssl ocsp` (with the
nonce we sent), a time limit that resumes the IKE_SA anyway, one slow URL not holding
up another IKE_SA, and CRLs from a connection's configuration."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from tests.support.gateways import NET_A, NET_B, A, B, Gateways, connection, start_pair
from tests.support.pki import Credential, make_ca, make_cert, make_crl, make_ocsp_signer, pem
from xfrmctl.daemon import conf as cf
from xfrmctl.daemon.revocation import RevocationFetcher, add_configured, configured_crls
from xfrmctl.ike.events import RevocationFetch
from xfrmctl.ike.revocation import (
    CertStatus,
    CrlQuery,
    OcspQuery,
    RevocationPolicy,
    RevocationStore,
)
from xfrmctl.port import ConnectionState


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Slow(SimpleHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path.startswith("/slow"):
            time.sleep(3)
        super().do_GET()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    root = tmp_path_factory.mktemp("web")
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Slow, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()


def serial_hex(serial: int) -> str:
    text = f"{serial:X}"
    return text if len(text) % 2 == 0 else "0" + text


@pytest.fixture(scope="module")
def responder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Credential,
                                                                          dict[str, Credential]]]:
    """`openssl ocsp` on loopback for a CA with a delegated signer: "good" and "revoked"."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    work = tmp_path_factory.mktemp("ocsp")
    ca = make_ca("OCSP test CA")
    signer = make_ocsp_signer(ca)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    certs = {k: make_cert(ca, f"{k}.example", ocsp_url=url) for k in ("good", "revoked")}
    rows = []
    for k, cred in certs.items():
        expiry = cred.cert.not_valid_after_utc.strftime("%y%m%d%H%M%SZ")
        state, when = ("R", time.strftime("%y%m%d%H%M%SZ", time.gmtime())) if k == "revoked" \
            else ("V", "")
        rows.append(f"{state}\t{expiry}\t{when}\t{serial_hex(cred.cert.serial_number)}"
                    f"\tunknown\t/CN={k}.example")
    (work / "index.txt").write_text("\n".join(rows) + "\n")
    (work / "ca.pem").write_bytes(pem(ca.cert))
    (work / "ocsp.pem").write_bytes(pem(signer.cert))
    (work / "ocsp.key").write_bytes(signer.key.private_bytes(
        Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    proc = subprocess.Popen(
        ["openssl", "ocsp", "-index", str(work / "index.txt"), "-port", str(port),
         "-rsigner", str(work / "ocsp.pem"), "-rkey", str(work / "ocsp.key"),
         "-CA", str(work / "ca.pem"), "-ndays", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    # not a probe connection: `openssl ocsp` would wait on it for a request
    while f":{port} " not in subprocess.run(["ss", "-ltnH"], capture_output=True,
                                             text=True, check=False).stdout:
        assert time.monotonic() < deadline, "openssl ocsp did not start"
        time.sleep(0.1)
    yield url, ca, certs
    proc.terminate()
    proc.wait(10)


def fetch_event(crls: tuple[CrlQuery, ...] = (), ocsp: tuple[OcspQuery, ...] = (),
                sa: int = 1) -> RevocationFetch:
    return RevocationFetch(ike_sa=sa, connection="net", crls=crls, ocsp=ocsp)


async def run_fetch(fetcher: RevocationFetcher, *events: RevocationFetch,
                    resumed: list[tuple[int, float]]) -> None:
    for event in events:
        fetcher.on_fetch(event)
    while len(resumed) < len(events):
        await asyncio.sleep(0.02)
    await fetcher.close()


def make_fetcher(store: RevocationStore, resumed: list[tuple[int, float]],
                 timeout: float = 5.0) -> RevocationFetcher:
    return RevocationFetcher(store, lambda sa: resumed.append((sa, time.monotonic())),
                             timeout=timeout)


def test_crl_fetched_verified_and_cached(web: tuple[str, Path]) -> None:
    base, root = web
    ca = make_ca("CRL test CA")
    revoked = make_cert(ca, "revoked.example", crl_url=f"{base}/ca.crl")
    (root / "ca.crl").write_bytes(make_crl(ca, [revoked.cert]).public_bytes(Encoding.DER))
    store, resumed = RevocationStore(), []
    fetcher = make_fetcher(store, resumed)
    asyncio.run(run_fetch(fetcher, fetch_event((CrlQuery(f"{base}/ca.crl", ca.cert),)),
                          resumed=resumed))
    assert [sa for sa, _ in resumed] == [1]
    assert store.status(revoked.cert, ca.cert, datetime.now(UTC))[0] is CertStatus.REVOKED
    verdict = store.check([(revoked.cert, ca.cert)], RevocationPolicy.RELAXED,
                          datetime.now(UTC), fetched=False)
    assert verdict.why is not None and not verdict.wants_fetch  # held until nextUpdate


def test_crl_signed_by_another_ca_is_not_kept(web: tuple[str, Path]) -> None:
    base, root = web
    ca, other = make_ca("Real CA"), make_ca("Real CA")  # same name, other key
    (root / "forged.crl").write_bytes(make_crl(other).public_bytes(Encoding.DER))
    store, resumed = RevocationStore(), []
    fetcher = make_fetcher(store, resumed)
    asyncio.run(run_fetch(fetcher, fetch_event((CrlQuery(f"{base}/forged.crl", ca.cert),)),
                          resumed=resumed))
    assert resumed and not store.crls()
    assert fetcher.counters["failures"] == 1


def test_ocsp_with_openssl_responder(responder: tuple[str, Credential,
                                                      dict[str, Credential]]) -> None:
    url, ca, certs = responder
    store, resumed = RevocationStore(), []
    fetcher = make_fetcher(store, resumed)
    queries = tuple(OcspQuery(url, c.cert, ca.cert) for c in certs.values())
    asyncio.run(run_fetch(fetcher, fetch_event(ocsp=queries), resumed=resumed))
    now = datetime.now(UTC)
    assert store.status(certs["good"].cert, ca.cert, now)[0] is CertStatus.GOOD
    assert store.status(certs["revoked"].cert, ca.cert, now)[0] is CertStatus.REVOKED
    assert fetcher.counters == {"fetches": 2, "failures": 0}


def test_time_limit_resumes_and_a_slow_url_does_not_hold_up_others(
        web: tuple[str, Path]) -> None:
    base, root = web
    ca = make_ca("Slow CA")
    (root / "fast.crl").write_bytes(make_crl(ca).public_bytes(Encoding.DER))
    store, resumed = RevocationStore(), []
    fetcher = make_fetcher(store, resumed, timeout=1.0)
    start = time.monotonic()
    slow = fetch_event((CrlQuery(f"{base}/slow.crl", ca.cert),), sa=1)
    fast = fetch_event((CrlQuery(f"{base}/fast.crl", ca.cert),), sa=2)
    asyncio.run(run_fetch(fetcher, slow, fast, resumed=resumed))
    when = dict(resumed)
    assert when[2] - start < 0.9  # not behind the slow one
    assert 0.9 < when[1] - start < 2.5  # the time limit, not the server's 3 s
    assert len(store.crls()) == 1


def test_unreachable_url_fails_fast_and_is_not_retried_at_once() -> None:
    ca = make_ca("Unreachable CA")
    url = f"http://127.0.0.1:{free_port()}/ca.crl"  # nothing listens
    store, resumed = RevocationStore(), []
    fetcher = make_fetcher(store, resumed)

    async def twice() -> None:
        fetcher.on_fetch(fetch_event((CrlQuery(url, ca.cert),), sa=1))
        while not resumed:
            await asyncio.sleep(0.02)
        fetcher.on_fetch(fetch_event((CrlQuery(url, ca.cert),), sa=2))
        while len(resumed) < 2:
            await asyncio.sleep(0.02)
        await fetcher.close()

    asyncio.run(twice())
    assert fetcher.counters == {"fetches": 1, "failures": 1}


def test_configured_crls_verified_against_the_connections_cas(tmp_path: Path) -> None:
    ca, other = make_ca("Conf CA"), make_ca("Other CA")
    gw = make_cert(ca, "gw.example")
    peer = make_cert(ca, "peer.example")
    for name, data in (("ca.pem", pem(ca.cert)), ("gw.pem", pem(gw.cert)),
                       ("gw.key", gw.key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8,
                                                       NoEncryption())),
                       ("good.crl", make_crl(ca, [peer.cert]).public_bytes(Encoding.DER)),
                       ("other.crl", make_crl(other).public_bytes(Encoding.PEM))):
        (tmp_path / name).write_bytes(data)
    conn = cf.ConnectionConf(auth="pubkey", certificate=tmp_path / "gw.pem",
                             private_key=tmp_path / "gw.key", ca=[tmp_path / "ca.pem"],
                             crl=[tmp_path / "good.crl"], revocation="strict")
    store = RevocationStore()
    ike = cf.ike_config("net", conn, crls=store)
    assert ike.remote_auth.revocation is RevocationPolicy.STRICT
    assert ike.remote_auth.crls is store
    add_configured(store, "net", ike, configured_crls(conn.crl_pem, conn.crl))
    assert store.status(peer.cert, ca.cert, datetime.now(UTC))[0] is CertStatus.REVOKED
    bad = conn.model_copy(update={"crl": [tmp_path / "other.crl"]})
    with pytest.raises(ValueError, match="not signed by any CA"):
        add_configured(store, "net", ike, configured_crls(bad.crl_pem, bad.crl))
    with pytest.raises(ValueError, match="not a CRL"):
        configured_crls(["not a crl"], [])


def test_certificate_file_with_chain_gives_intermediates(tmp_path: Path) -> None:
    root = make_ca("Chain Root")
    sub = make_ca("Chain Sub", issuer=root)
    gw = make_cert(sub, "gw.example")
    (tmp_path / "chain.pem").write_bytes(pem(gw.cert) + pem(sub.cert))
    (tmp_path / "gw.key").write_bytes(gw.key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8,
                                                           NoEncryption()))
    (tmp_path / "ca.pem").write_bytes(pem(root.cert))
    conn = cf.ConnectionConf(auth="pubkey", certificate=tmp_path / "chain.pem",
                             private_key=tmp_path / "gw.key", ca=[tmp_path / "ca.pem"])
    ike = cf.ike_config("net", conn)
    assert ike.local_auth.certificate == gw.cert
    assert ike.local_auth.intermediates == (sub.cert,)
    assert ike.remote_auth.revocation is RevocationPolicy.RELAXED  # strongSwan's default


# ----------------------------------------------------------------- two daemons


def write_pubkey(tmp_path: Path, tag: str, cred: Credential, ca: Credential) -> dict[str, Path]:
    files = {"certificate": tmp_path / f"{tag}.pem", "private_key": tmp_path / f"{tag}.key",
             "ca": tmp_path / "ca.pem"}
    files["certificate"].write_bytes(pem(cred.cert))
    files["private_key"].write_bytes(cred.key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8,
                                                            NoEncryption()))
    files["ca"].write_bytes(pem(ca.cert))
    return files


async def pubkey_pair(tmp_path: Path, cred_a: Credential, cred_b: Credential, ca: Credential,
                      revocation: str) -> Gateways:
    fa, fb = write_pubkey(tmp_path, "a", cred_a, ca), write_pubkey(tmp_path, "b", cred_b, ca)
    conn_a = connection(A, B, NET_A, NET_B, "start", auth="pubkey", psk=None,
                        certificate=fa["certificate"], private_key=fa["private_key"],
                        ca=[fa["ca"]], revocation="none")
    conn_b = connection(B, A, NET_B, NET_A, auth="pubkey", psk=None,
                        certificate=fb["certificate"], private_key=fb["private_key"],
                        ca=[fb["ca"]], revocation=revocation)
    return await start_pair(cf.DaemonConf(connections={"b": conn_a}),
                            cf.DaemonConf(connections={"a": conn_b}))


async def until_settled(gw: Gateways, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        await gw.settle()
        if gw.b.connections["a"].state is not ConnectionState.CONNECTING and \
                gw.a.connections["b"].state is not ConnectionState.CONNECTING:
            return
        await asyncio.sleep(0.05)


@pytest.mark.parametrize(("revoked", "state"), [(True, ConnectionState.DOWN),
                                                (False, ConnectionState.UP)])
async def test_daemon_fetches_the_crl_and_decides(web: tuple[str, Path], tmp_path: Path,
                                                  revoked: bool,
                                                  state: ConnectionState) -> None:
    base, root = web
    ca = make_ca("Daemon CRL CA")
    url = f"{base}/daemon-{revoked}.crl"
    cred_a = make_cert(ca, "a.example", crl_url=url)
    (root / f"daemon-{revoked}.crl").write_bytes(
        make_crl(ca, [cred_a.cert] if revoked else []).public_bytes(Encoding.DER))
    gw = await pubkey_pair(tmp_path, cred_a, make_cert(ca, "b.example"), ca, "strict")
    try:
        gw.a.connections["b"].wanted = True
        await until_settled(gw)
        assert gw.b.revocation.counters["fetches"] == 1
        assert gw.b.connections["a"].state is state
        if revoked:  # `status` says why
            record = gw.b.connections["a"]
            assert "revoked" in f"{record.reason} {record.detail}", (record.reason, record.detail)
    finally:
        await gw.a.stop()
        await gw.b.stop()
