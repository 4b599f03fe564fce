"""Certificate revocation against strongSwan 5.9.8: charon (right, 192.0.2.2) initiates
with a client certificate; our daemon (left, 192.0.2.1) checks it by the CRL at the
certificate's distribution point, by a CRL file in its configuration, or by OCSP at the
responder its AIA names (`openssl ocsp`, with a delegated OCSP signer). A revoked
certificate is refused (AUTHENTICATION_FAILED, "revoked" in our event); an unrevoked one
is accepted under `revocation: strict` (so only a real answer lets it in) and carries a
ping through ESP.

The CRL (python's http.server) and the OCSP responder listen on 198.51.100.1, the left
namespace's inner address: our daemon fetches them over HTTP inside that namespace.
One gateway pair, charon, daemon and servers for the whole module; each case loads its
client certificate into charon and a fresh connection into our daemon.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from tests.lab.conftest import GatewayPair
from tests.lab.interop_common import (
    LEFT_ID,
    Case,
    case_logs,
    check_traffic,
    routed_pair,
    wait_clean,
)
from tests.support import pki
from tests.support.strongswan import Charon, CharonError, SwanConn
from tests.support.xfrmctl_daemon import (
    XfrmctlDaemon,
    child,
    connection,
    daemon_conf,
    wait_installed,
    wait_until,
)

pytestmark = pytest.mark.lab

SERVER = "198.51.100.1"  # the left's inner address (tests/lab/conftest.py)
CRL_URL = f"http://{SERVER}:8080/ca.crl"
OCSP_URL = f"http://{SERVER}:8081"
CASE = Case("x509-revocation", we_initiate=False, x509=True)


def _pem_key(cred: pki.Credential) -> bytes:
    return cred.key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())


@dataclass
class RevocationLab:
    pair: GatewayPair
    charon: Charon
    daemon: XfrmctlDaemon
    work: Path
    ours_ca: pki.Credential  # charon trusts it (our certificate)
    clients: dict[str, pki.Credential]
    names: Iterator[int]


def _serial_hex(serial: int) -> str:
    text = f"{serial:X}"
    return text if len(text) % 2 == 0 else "0" + text


def _ocsp_index(clients: dict[str, pki.Credential], revoked: set[str]) -> str:
    """`openssl ca`'s index.txt: V(alid) or R(evoked) by serial."""
    lines = []
    for name, cred in clients.items():
        expiry = cred.cert.not_valid_after_utc.strftime("%y%m%d%H%M%SZ")
        subject = "/" + "/".join(cred.cert.subject.rfc4514_string().split(","))
        if name in revoked:
            when = time.strftime("%y%m%d%H%M%SZ", time.gmtime(time.time() - 3600))
            lines.append(f"R\t{expiry}\t{when}\t{_serial_hex(cred.cert.serial_number)}"
                         f"\tunknown\t{subject}")
        else:
            lines.append(f"V\t{expiry}\t\t{_serial_hex(cred.cert.serial_number)}"
                         f"\tunknown\t{subject}")
    return "\n".join(lines) + "\n"


def _wait_listening(netns: str, port: int) -> None:
    def listening() -> bool:
        out = subprocess.run(["ip", "netns", "exec", netns, "ss", "-ltnH"],
                             capture_output=True, text=True, check=False).stdout
        return f":{port} " in out
    wait_until(listening, 60, lambda: f"nothing listens on {port} in {netns}")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RevocationLab]:
    work = tmp_path_factory.mktemp("revocation")
    # one CA per way of knowing (each consistent: its CRL or responder knows all it
    # revoked), and one for our own certificate
    ours_ca = pki.make_ca("xfrmctl revocation lab gateway CA")
    cas = {kind: pki.make_ca(f"xfrmctl revocation lab {kind} CA")
           for kind in ("crl", "file", "ocsp")}
    ours = pki.make_cert(ours_ca, LEFT_ID, sans=[LEFT_ID])
    signer = pki.make_ocsp_signer(cas["ocsp"], "xfrmctl lab OCSP signer")

    def client(tag: str, **kw: str) -> pki.Credential:
        ident = f"{tag}.right.example.org"
        return pki.make_cert(cas[tag.partition("-")[0]], ident, sans=[ident], **kw)

    clients = {"crl-good": client("crl-good", crl_url=CRL_URL),
               "crl-revoked": client("crl-revoked", crl_url=CRL_URL),
               "file-revoked": client("file-revoked"),
               "ocsp-good": client("ocsp-good", ocsp_url=OCSP_URL),
               "ocsp-revoked": client("ocsp-revoked", ocsp_url=OCSP_URL)}
    crl = pki.make_crl(cas["crl"], [clients["crl-revoked"].cert])
    file_crl = pki.make_crl(cas["file"], [clients["file-revoked"].cert])
    web = work / "web"
    web.mkdir()
    (web / "ca.crl").write_bytes(crl.public_bytes(Encoding.DER))
    ocsp_clients = {k: v for k, v in clients.items() if k.startswith("ocsp")}
    files = {"ours-ca.pem": pki.pem(ours_ca.cert), "left.pem": pki.pem(ours.cert),
             "left.key": _pem_key(ours), "file-ca.crl": file_crl.public_bytes(Encoding.PEM),
             "ocsp.pem": pki.pem(signer.cert), "ocsp.key": _pem_key(signer),
             "index.txt": _ocsp_index(ocsp_clients, {"ocsp-revoked"}).encode(),
             **{f"{kind}-ca.pem": pki.pem(ca.cert) for kind, ca in cas.items()}}
    for fname, data in files.items():
        (work / fname).write_bytes(data)
    (work / "index.txt.attr").write_text("unique_subject = no\n")
    ocsp_log = (work / "ocsp.log").open("wb")
    with routed_pair("xv") as pair, ocsp_log:
        ns = pair.left.netns
        servers = [
            subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", "http.server",
                              "8080", "--bind", SERVER, "--directory", str(web)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
            subprocess.Popen(["ip", "netns", "exec", ns, "openssl", "ocsp",
                              "-index", str(work / "index.txt"), "-port", "8081",
                              "-rsigner", str(work / "ocsp.pem"), "-rkey",
                              str(work / "ocsp.key"), "-CA", str(work / "ocsp-ca.pem"),
                              "-ndays", "1"],
                             stdout=ocsp_log, stderr=subprocess.STDOUT)]
        daemon = XfrmctlDaemon(ns, work / "daemon", daemon_conf([pair.left.outer], {}))
        charon = Charon(pair.right.netns, work / "charon")
        daemon.start(wait=False)
        try:
            charon.start()
            daemon.wait_ready()
            _wait_listening(ns, 8080)
            _wait_listening(ns, 8081)
            yield RevocationLab(pair, charon, daemon, work, ours_ca, clients,
                                iter(range(1, 99)))
        finally:
            charon.stop()
            daemon.stop()
            for server in servers:
                server.terminate()
                server.wait(10)


@pytest.fixture(autouse=True)
def keep_logs(request: pytest.FixtureRequest, lab: RevocationLab,
              lab_results: Path) -> Iterator[None]:
    """A failing case keeps both logs and the OCSP responder's; and leaves nothing up."""
    failed = yield from case_logs(
        request, lab_results, "revocation-logs",
        [(lab.daemon.log_path, "xfrmctl.log"), (lab.charon.log_path, "charon.log"),
         (lab.work / "ocsp.log", "ocsp.log")],
        [(lab.daemon.config_path, "xfrmctl.yaml")])
    if failed:
        for sa in lab.charon.list_sas():
            lab.charon.terminate(ike_id=sa.uniqueid, timeout=30)


def our_conf(lab: RevocationLab, name: str, client: str, **extra: object) -> dict[str, object]:
    pair = lab.pair
    kid = child([pair.left.subnet], [pair.right.subnet],
                esp_proposals=CASE.esp)
    conn = connection(
        pair.left.outer, pair.right.outer, {"net": kid},
        local_id=LEFT_ID, remote_id=f"{client}.right.example.org",
        ike_proposals=CASE.ike, auth="pubkey", certificate=str(lab.work / "left.pem"),
        private_key=str(lab.work / "left.key"),
        ca=[str(lab.work / f"{client.partition('-')[0]}-ca.pem")], **extra)
    return daemon_conf([pair.left.outer], {name: conn})


def load_charon(lab: RevocationLab, client: str) -> None:
    cred = lab.clients[client]
    me, peer = lab.pair.right, lab.pair.left
    conn = SwanConn(
        "gw", child_name="net", local_addrs=[me.outer], remote_addrs=[peer.outer],
        local_id=f"{client}.right.example.org", remote_id=LEFT_ID, proposals=[CASE.ike],
        esp_proposals=[CASE.esp], local_ts=[me.subnet], remote_ts=[peer.subnet],
        auth="pubkey", local_cert="right.pem", remote_cacert="ca.pem")
    lab.charon.load([conn], certs={"right.pem": pki.pem(cred.cert)},
                    cacerts={"ca.pem": pki.pem(lab.ours_ca.cert)},
                    keys={"right.key": _pem_key(cred)})


def start_case(lab: RevocationLab, client: str, **extra: object) -> tuple[str, int]:
    name = f"r{next(lab.names)}"
    mark = lab.daemon.mark()
    load_charon(lab, client)
    lab.daemon.reload(our_conf(lab, name, client, **extra))
    return name, mark


def refused(lab: RevocationLab, client: str, **extra: object) -> None:
    name, mark = start_case(lab, client, **extra)
    with pytest.raises(CharonError):
        lab.charon.initiate("net", "gw", timeout=60)
    failed = lab.daemon.wait_event("NegotiationFailed", 60, mark, connection=name)
    assert failed["reason"] == "AUTHENTICATION_FAILED", failed
    assert "revoked" in str(failed["message"]), failed
    # fetched (CRL at the distribution point, OCSP) or held (the file's CRL)
    fetched = lab.daemon.events("RevocationFetch", connection=name)
    assert bool(fetched) is not ("crl" in extra), fetched
    assert not lab.daemon.events("IkeSaUp", connection=name)
    wait_clean(lab.pair, lambda: not lab.charon.list_sas())


def accepted(lab: RevocationLab, client: str) -> None:
    name, mark = start_case(lab, client, revocation="strict")
    lab.charon.initiate("net", "gw", timeout=90)
    lab.daemon.wait_event("IkeSaUp", 60, mark, connection=name)  # strict: a known answer
    # fetched for this case, or (the CRL) once for the module: kept until its nextUpdate
    url = OCSP_URL if client.startswith("ocsp") else CRL_URL
    fetches = [e for e in lab.daemon.events("RevocationFetch")
               if url in f"{e.get('crls')} {e.get('ocsp')}"]
    mine = [e for e in fetches if e.get("connection") == name]
    assert len(mine) == 1 if url == OCSP_URL else len(fetches) == 1, fetches
    event = wait_installed(lab.daemon, mark, connection=name)
    lab.charon.wait_child_installed("net")
    check_traffic(lab.pair, CASE, event, None)
    lab.charon.terminate(ike="gw", timeout=60)
    lab.daemon.wait_event("IkeSaDown", 60, mark, connection=name)
    wait_clean(lab.pair, lambda: not lab.charon.list_sas())
    assert not lab.daemon.errors(mark), lab.daemon.tail()


def test_crl_from_distribution_point_refuses_revoked(lab: RevocationLab) -> None:
    refused(lab, "crl-revoked")


def test_crl_from_distribution_point_accepts_unrevoked(lab: RevocationLab) -> None:
    accepted(lab, "crl-good")


def test_crl_file_refuses_revoked(lab: RevocationLab) -> None:
    refused(lab, "file-revoked", crl=[str(lab.work / "file-ca.crl")])


def test_ocsp_refuses_revoked(lab: RevocationLab) -> None:
    refused(lab, "ocsp-revoked")


def test_ocsp_accepts_unrevoked(lab: RevocationLab) -> None:
    accepted(lab, "ocsp-good")
