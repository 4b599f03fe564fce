"""`xfrmctl` as swanctl users expect: `conn up` waits and says why it failed, lists show
children, reqids, PRFs and "any", CHILD_SA actions by name, credentials commands, and
ordinary mistakes get one sentence (no traceback) with the documented exit code."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from tests.cli.conftest import Server
from tests.support.pki import make_ca, make_cert, make_crl
from xfrmctl.port import (
    ChildStatus,
    ConnectionState,
    ConnectionStatus,
    DownReason,
    FailureInfo,
    PolicyInfo,
    Target,
)
from xfrmctl.store.tokens import Scope

PSK = "Tr0ub4dor-and-3-more-words"


def _add(server: Server, name: str = "gw2") -> int:
    added = server.json("conn", "add", name, "--remote-addr", "198.51.100.1", "--child", "net",
                        "--local-ts", "192.0.2.0/24", "--remote-ts", "198.51.100.0/24",
                        "--esp-proposals", "aes128gcm16-x25519",
                        "--ike-proposals", "aes256gcm16-prfsha384-x25519", "--psk-stdin",
                        stdin=PSK + "\n")
    return int(added["id"])


def _up(ike: str = "ike-9") -> ConnectionStatus:
    return ConnectionStatus(0, ConnectionState.UP, ike_sa_ids=(ike,), children=(
        ChildStatus("net", 1, ConnectionState.UP, child_sa_ids=("child-9",)),))


def test_conn_up_waits_for_the_connection_and_its_children(server: Server) -> None:
    conn_id = _add(server)
    server.controller.outcome = _up()
    result = server.run("conn", "up", "gw2", "--timeout", "5")
    assert result.returncode == 0, result.stderr
    assert "gw2 up" in result.stdout and "ike-9" in result.stdout and "net" in result.stdout
    assert server.controller.calls[-1] == ("initiate", (conn_id, None))
    assert server.json("conn", "up", "gw2")["children"][0]["state"] == "up"


def test_conn_up_fails_with_the_childs_reason(server: Server) -> None:
    _add(server)
    server.controller.outcome = ConnectionStatus(
        0, ConnectionState.UP, ike_sa_ids=("ike-9",), children=(ChildStatus(
            "net", 1, ConnectionState.DOWN, DownReason.TS_UNACCEPTABLE,
            {"message": "peer refused CHILD_SA net: TS_UNACCEPTABLE",
             "local_ts": ["192.0.2.0/24"], "remote_ts": ["198.51.100.0/24"]}),))
    result = server.run("conn", "up", "gw2", "--timeout", "5")
    assert result.returncode == 1
    assert "child net: TS_UNACCEPTABLE" in result.stderr
    assert "192.0.2.0/24 === 198.51.100.0/24" in result.stderr
    assert "Traceback" not in result.stderr
    server.controller.outcome = ConnectionStatus(
        0, ConnectionState.DOWN, DownReason.AUTHENTICATION_FAILED,
        {"message": "peer answered AUTHENTICATION_FAILED"})
    result = server.run("conn", "up", "gw2")
    assert result.returncode == 1 and "AUTHENTICATION_FAILED" in result.stderr
    status = server.run("status")
    assert "AUTHENTICATION_FAILED: peer answered AUTHENTICATION_FAILED" in status.stdout


def test_conn_up_times_out_or_does_not_wait(server: Server) -> None:
    _add(server)
    server.controller.outcome = ConnectionStatus(0, ConnectionState.CONNECTING)
    result = server.run("conn", "up", "gw2", "--timeout", "0.5")
    assert result.returncode == 1 and "not up after 0.5s (state connecting" in result.stderr
    assert server.run("conn", "up", "gw2", "--no-wait").returncode == 0


def test_status_shows_children_and_unmatched_peers(server: Server) -> None:
    conn_id = _add(server)
    server.controller.states[conn_id] = ConnectionStatus(
        conn_id, ConnectionState.UP, ike_sa_ids=("ike-1",), children=(ChildStatus(
            "net", 1, ConnectionState.DOWN, DownReason.NO_PROPOSAL_CHOSEN,
            {"message": "peer refused CHILD_SA net: NO_PROPOSAL_CHOSEN"}),))
    lines = server.run("status").stdout.splitlines()
    child = next(line for line in lines if "gw2/net" in line)
    assert "down" in child and "NO_PROPOSAL_CHOSEN" in child
    data = server.json("status")
    assert data["connections"][0]["children"][0]["reason"] == "NO_PROPOSAL_CHOSEN"
    server.controller.unmatched.append(FailureInfo(
        datetime.now(UTC), DownReason.NO_MATCHING_CONFIG, "IKE_SA_INIT matches no connection",
        "192.0.2.1:500", "203.0.113.9:500"))
    shown = server.run("status").stdout
    assert "matched no connection" in shown
    line = next(line for line in shown.splitlines() if "203.0.113.9:500" in line)
    assert "192.0.2.1:500" in line and "NO_MATCHING_CONFIG" in line
    assert server.json("status")["unmatched"][0]["remote"] == "203.0.113.9:500"


def test_lists_show_children_proposals_reqid_prf_and_any(server: Server) -> None:
    _add(server)
    listing = server.run("conn", "list").stdout
    assert "aes256gcm16-prfsha384-x25519" in listing
    child_line = next(line for line in listing.splitlines() if line.split()[:2] == ["gw2", "net"])
    assert "192.0.2.0/24 === 198.51.100.0/24" in child_line
    assert "aes128gcm16-x25519" in child_line
    assert server.json("conn", "list")[0]["children"][0]["name"] == "net"
    sas = server.run("sa", "list").stdout
    header = sas.splitlines()[0].split()
    assert "PRF" in header and "PRF_HMAC_SHA2_384" in sas
    child_header = next(line for line in sas.splitlines() if line.startswith("CHILD_SA"))
    assert {"REQID", "LAST_USED", "PROPOSAL"} <= set(child_header.split())
    assert "16385" in sas
    server.controller.extra_policies = [PolicyInfo("out", "0.0.0.0/0", "0.0.0.0/0", proto=0),
                                        PolicyInfo("out", "192.0.2.0/24", "0.0.0.0/0",
                                                   proto=17)]
    policies = server.run("policy", "list").stdout.splitlines()
    rows = [line.split() for line in policies[1:]]
    assert all(row[3] != "0" for row in rows)
    assert ["out", "0.0.0.0/0", "0.0.0.0/0", "any"] in [row[:4] for row in rows]
    assert ["out", "192.0.2.0/24", "0.0.0.0/0", "udp"] in [row[:4] for row in rows]


def test_child_sa_rekey_and_terminate_by_id_or_name(server: Server) -> None:
    conn_id = _add(server)
    assert server.run("sa", "rekey", "--child", "net").returncode == 0
    assert server.controller.calls[-1] == ("rekey", Target("child_sa", "child-1"))
    assert server.run("sa", "terminate", "--child", "child-1").returncode == 0
    assert server.controller.calls[-1] == ("terminate", Target("child_sa", "child-1"))
    assert server.run("sa", "rekey", "ike-1").returncode == 0
    assert server.controller.calls[-1] == ("rekey", Target("ike_sa", "ike-1"))
    assert server.run("sa", "terminate", "--ike", "ike-1").returncode == 0
    assert server.controller.calls[-1] == ("terminate", Target("ike_sa", "ike-1"))
    missing = server.run("sa", "rekey", "--child", "nope")
    assert missing.returncode == 5 and "no CHILD_SA 'nope'" in missing.stderr
    assert server.run("sa", "rekey").returncode == 2  # which SA?
    server.controller.children[0] = replace(server.controller.children[0],
                                            connection_id=conn_id)
    assert server.run("conn", "rekey", "gw2", "--child", "net").returncode == 0
    assert server.controller.calls[-1] == ("rekey", Target("child_sa", "child-1"))


def test_secrets_are_write_only(server: Server, tmp_path: Path) -> None:
    created = server.run("secret", "create", "gw2-psk", stdin=PSK + "\n")
    assert created.returncode == 0, created.stderr
    assert PSK not in created.stdout + created.stderr
    listed = server.run("secret", "list")
    assert "gw2-psk" in listed.stdout and "psk" in listed.stdout and PSK not in listed.stdout
    new = tmp_path / "new.psk"
    new.write_text("another-test-only-psk\n")
    replaced = server.run("secret", "replace", "gw2-psk", "--from-file", str(new))
    assert replaced.returncode == 0 and "another" not in replaced.stdout
    assert server.json("secret", "list")[0]["name"] == "gw2-psk"
    assert server.run("secret", "delete", "gw2-psk").returncode == 0
    assert server.run("secret", "delete", "gw2-psk").returncode == 5
    assert server.run("secret", "create", "empty", stdin="\n").returncode == 2


def test_ca_and_certificate_commands(server: Server, tmp_path: Path) -> None:
    ca = make_ca("xfrmctl CLI test CA")
    ca_pem = tmp_path / "ca.pem"
    ca_pem.write_bytes(ca.cert.public_bytes(Encoding.PEM))
    added = server.run("ca", "add", "root", str(ca_pem))
    assert added.returncode == 0, added.stderr
    assert "xfrmctl CLI test CA" in added.stdout
    assert server.json("ca", "list")[0]["name"] == "root"
    renewed = make_ca("xfrmctl CLI test CA 2")
    ca_pem.write_bytes(renewed.cert.public_bytes(Encoding.PEM))
    assert "CA 2" in server.run("ca", "replace", "root", str(ca_pem)).stdout
    gw = make_cert(renewed, "gw1.example", sans=["gw1.example"])
    cert_pem, key_pem = tmp_path / "gw1.pem", tmp_path / "gw1.key"
    cert_pem.write_bytes(gw.cert.public_bytes(Encoding.PEM))
    key_text = gw.key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    key_pem.write_bytes(key_text)
    result = server.run("cert", "add", "gw1", str(cert_pem), "--key-file", str(key_pem),
                        "--ca", "root")
    assert result.returncode == 0, result.stderr
    (cert,) = server.json("cert", "list")
    assert cert["key_secret_id"] and cert["ca_id"]
    assert {s["name"] for s in server.json("secret", "list")} == {"gw1-key"}
    everything = "".join(server.run(*a).stdout for a in (
        ("cert", "list"), ("cert", "show", "gw1"), ("secret", "list"), ("--json", "cert",
                                                                        "show", "gw1")))
    assert key_text.decode().splitlines()[1] not in everything
    dup = server.run("cert", "add", "gw1", str(cert_pem), "--key-file", str(key_pem))
    assert dup.returncode == 6  # refused ...
    assert len(server.json("secret", "list")) == 1  # ... and no orphaned key secret
    assert server.run("cert", "delete", "gw1").returncode == 0
    assert server.run("ca", "delete", "root").returncode == 0
    assert server.json("cert", "list") == [] and server.json("ca", "list") == []


def test_ordinary_mistakes_get_a_sentence_and_the_exit_code(server: Server,
                                                            tmp_path: Path) -> None:
    sock = tmp_path / "nothing.sock"
    down = server.run("status", url=f"unix://{sock}")
    assert down.returncode == 3
    assert str(sock) in down.stderr and "xfrmctl daemon --api" in down.stderr
    port = server.run("status", url="http://127.0.0.1:9")
    assert port.returncode == 3 and "http://127.0.0.1:9" in port.stderr
    anonymous = server.run("conn", "list", token=None)
    assert anonymous.returncode == 4
    assert "xfrmctl token create NAME --scope" in anonymous.stderr and "--local" in \
        anonymous.stderr
    env = {**server.env, "XFRMCTL_TOKEN": "xfc_not-a-real-token"}
    refused = subprocess.run([sys.executable, "-m", "xfrmctl.cli", "--url", server.url, "conn",
                              "list"], env=env, capture_output=True, text=True, check=False)
    assert refused.returncode == 4 and "refused" in refused.stderr
    fresh = f"sqlite:///{tmp_path}/fresh.db"
    early = server.run("token", "create", "root", "--scope", "admin", "--local",
                       "--database-url", fresh, token=None)
    assert early.returncode == 1
    assert "xfrmctl db upgrade" in early.stderr and "Traceback" not in early.stderr
    for result in (down, port, anonymous, refused, early):
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert re.match(r"^error: ", result.stderr)
    assert server.run("token", "create", "x", "--scope", "read", "--local", "--database-url",
                      server.settings.database_url, token=Scope.READ).returncode == 0


def test_a_bad_setting_is_one_sentence_and_exit_78(server: Server, tmp_path: Path) -> None:
    """A bad XFRMCTL_* value or YAML settings file names the setting, never echoes the value
    (it may be a secret), and exits EX_CONFIG, which the systemd unit does not restart."""
    bad_yaml = tmp_path / "xfrmctl.yaml"
    bad_yaml.write_text("api_port: [\n")
    cases = [
        ({"XFRMCTL_API_PORT": "0"}, "XFRMCTL_API_PORT"),
        ({"XFRMCTL_PAGE_LIMIT_MAX": "s3cret-looking-value"}, "XFRMCTL_PAGE_LIMIT_MAX"),
        ({"XFRMCTL_CONFIG": str(bad_yaml)}, f"{bad_yaml}: not valid YAML at line"),
    ]
    for extra, named in cases:
        for command in (["status"], ["daemon", "--kernel", "memory"]):
            result = subprocess.run([sys.executable, "-m", "xfrmctl.cli", *command],
                                    env={**server.env, **extra}, capture_output=True,
                                    text=True, check=False, timeout=60)
            assert result.returncode == 78, (extra, command, result.stderr)
            assert result.stderr.startswith("error: ") and named in result.stderr
            assert len(result.stderr.strip().splitlines()) == 1, result.stderr
            assert "s3cret-looking-value" not in result.stderr


def test_crl_commands(server: Server, tmp_path: Path) -> None:
    ca = make_ca("xfrmctl CLI CRL CA")
    ca_pem = tmp_path / "ca.pem"
    ca_pem.write_bytes(ca.cert.public_bytes(Encoding.PEM))
    assert server.run("ca", "add", "crl-root", str(ca_pem)).returncode == 0
    peer = make_cert(ca, "peer.example")
    der = tmp_path / "ca.crl"
    der.write_bytes(make_crl(ca, [peer.cert]).public_bytes(Encoding.DER))  # as CAs publish
    added = server.run("crl", "add", "root-crl", "crl-root", str(der))
    assert added.returncode == 0, added.stderr
    assert "1 revoked" in added.stdout
    (listed,) = server.json("crl", "list")
    assert listed["name"] == "root-crl" and listed["revoked"] == 1
    pem = tmp_path / "new.crl"
    pem.write_bytes(make_crl(ca, []).public_bytes(Encoding.PEM))
    assert "0 revoked" in server.run("crl", "replace", "root-crl", str(pem)).stdout
    forged = tmp_path / "forged.crl"
    forged.write_bytes(make_crl(make_ca("xfrmctl CLI CRL CA")).public_bytes(Encoding.DER))
    refused = server.run("crl", "add", "forged", "crl-root", str(forged))
    assert refused.returncode != 0 and "not signed by CA" in refused.stderr
    assert server.run("crl", "delete", "root-crl").returncode == 0
    assert server.json("crl", "list") == []
