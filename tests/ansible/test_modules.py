"""The collection's resource modules against a running daemon: idempotence, check mode,
diffs that show only what changes, the API's field errors, and secrets kept out of every
output (the playbook runs with -vvv and a log file)."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from tests.support import pki

from .conftest import Api, Run, run_playbook

PSK1 = "ansible-psk-Zq8v1-first"
PSK2 = "ansible-psk-Wm3k9-second"
PSK3 = "ansible-psk-Hx5r2-third"


@pytest.fixture(scope="module")
def pem() -> dict[str, str]:
    ca = pki.make_ca("Ansible Test Root")
    leaf = pki.make_cert(ca, "gw1.example.net", sans=["gw1.example.net"])
    key = leaf.key.private_bytes(serialization.Encoding.PEM,
                                 serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption()).decode()
    return {"ca_pem": ca.cert.public_bytes(serialization.Encoding.PEM).decode(),
            "cert_pem": leaf.cert.public_bytes(serialization.Encoding.PEM).decode(),
            "key_pem": key}


@pytest.fixture(scope="module")
def run(api: Api, pem: dict[str, str]) -> Run:
    result = run_playbook(api, "resources.yml", {"psk1": PSK1, "psk2": PSK2, "psk3": PSK3,
                                                 **pem}, "-vvv")
    assert result.proc.returncode == 0, result.output[-6000:]
    return result


def changed(run: Run, *names: str) -> dict[str, bool]:
    return {n: run.results[f"r_{n}"]["changed"] for n in names}


def diff(run: Run, name: str) -> dict[str, Any]:
    d = run.results[f"r_{name}"]["diff"]
    return {"before": d["before"], "after": d["after"]}


def error(run: Run, name: str) -> str:
    result = run.results[f"r_{name}"]
    assert result.get("failed"), result
    return str(result["msg"])


def test_peer_lifecycle(run: Run, api: Api) -> None:
    assert changed(run, "peer_create", "peer_again", "peer_check", "peer_update",
                   "peer_update_again", "peer_delete_check", "peer_delete",
                   "peer_delete_again") == {
        "peer_create": True, "peer_again": False, "peer_check": True, "peer_update": True,
        "peer_update_again": False, "peer_delete_check": True, "peer_delete": True,
        "peer_delete_again": False}
    # check mode wrote nothing: the real update after it still had to change the field
    assert diff(run, "peer_check") == diff(run, "peer_update") == {
        "before": {"description": "first"}, "after": {"description": "second"}}
    assert run.results["r_peer_update"]["peer"]["description"] == "second"
    assert run.results["r_peer_update"]["peer"]["addresses"] == ["192.0.2.2"]
    assert "branch1" not in api.names("/peers")


def test_peer_bad_address_fails_naming_the_field(run: Run, api: Api) -> None:
    msg = error(run, "peer_bad")
    assert "422" in msg and "addresses" in msg, msg
    assert "branch2" not in api.names("/peers")


def test_proposal_lifecycle(run: Run, api: Api) -> None:
    assert changed(run, "proposal_create", "proposal_again", "proposal_update",
                   "proposal_delete", "proposal_delete_again") == {
        "proposal_create": True, "proposal_again": False, "proposal_update": True,
        "proposal_delete": True, "proposal_delete_again": False}
    assert diff(run, "proposal_update") == {
        "before": {"text": "aes256gcm16-prfsha384-x25519"},
        "after": {"text": "aes128gcm16-prfsha256-x25519"}}
    assert "text" in error(run, "proposal_bad")
    assert "suite" not in api.names("/proposals")


def test_secret_is_write_only_and_idempotent_by_name(run: Run) -> None:
    assert changed(run, "secret_create", "secret_again", "secret_check", "secret_update",
                   "secret_delete", "secret_delete_again") == {
        "secret_create": True, "secret_again": False, "secret_check": True,
        "secret_update": True, "secret_delete": True, "secret_delete_again": False}
    assert diff(run, "secret_update") == {"before": {"value": "(previous value)"},
                                          "after": {"value": "(new value)"}}
    assert "kind" in error(run, "secret_bad") and "private_key" in error(run, "secret_bad")
    for name in ("secret_create", "secret_update"):
        assert set(run.results[f"r_{name}"]["secret"]) >= {"id", "name", "kind"}
        assert "value" not in run.results[f"r_{name}"]["secret"]


def test_secret_is_idempotent_by_version(run: Run, api: Api) -> None:
    assert changed(run, "ver_create", "ver_again", "ver_same", "ver_check", "ver_update",
                   "ver_update_again", "ver_none") == {
        "ver_create": True, "ver_again": False, "ver_same": False, "ver_check": True,
        "ver_update": True, "ver_update_again": False, "ver_none": False}
    assert run.results["r_ver_create"]["secret"]["version"] == "1"  # an integer as text
    # check mode wrote nothing: the real run after it still found version 1
    assert diff(run, "ver_check") == diff(run, "ver_update") == {
        "before": {"version": "1", "value": "(previous value)"},
        "after": {"version": "2", "value": "(new value)"}}
    assert run.results["r_ver_update"]["secret"]["version"] == "2"
    assert "value" not in run.results["r_ver_update"]["secret"]
    assert "422" in error(run, "ver_bad") and "version" in error(run, "ver_bad")
    assert "version must be text or an integer" in error(run, "ver_float")
    (stored,) = [s for s in api.get("/secrets")["data"] if s["name"] == "rotated-psk"]
    assert stored["version"] == "2"
    # the value went with its version: version 2's value, not the unversioned run's
    assert api.secret_value("rotated-psk") == PSK2


def test_secret_values_appear_in_no_output_or_log(run: Run, api: Api, pem: dict[str, str]
                                                  ) -> None:
    logs = {"ansible-playbook -vvv": run.output,
            "ANSIBLE_LOG_PATH": (api.workdir / "ansible.log").read_text(),
            "daemon log": (api.workdir / "daemon.log").read_text()}
    key_body = pem["key_pem"].splitlines()[1]
    for where, text in logs.items():
        assert "branch1-psk" in text or where == "daemon log"  # the log is the real one
        for value in (PSK1, PSK2, PSK3, key_body, api.token):
            assert value not in text, f"{where} shows a secret value"
    for value in (PSK1, PSK2, PSK3):
        assert value not in str(run.results)


def test_ca_and_certificate_lifecycle(run: Run, api: Api) -> None:
    assert changed(run, "ca_create", "ca_again", "cert_create", "cert_again", "cert_check",
                   "cert_update", "cert_delete", "cert_delete_again", "ca_delete",
                   "ca_delete_again") == {
        "ca_create": True, "ca_again": False, "cert_create": True, "cert_again": False,
        "cert_check": True, "cert_update": True, "cert_delete": True,
        "cert_delete_again": False, "ca_delete": True, "ca_delete_again": False}
    ca_id = run.results["r_ca_create"]["ca"]["id"]
    assert diff(run, "cert_check") == diff(run, "cert_update") == {
        "before": {"ca_id": None}, "after": {"ca_id": ca_id}}
    assert "CN=Ansible Test Root" in run.results["r_ca_create"]["ca"]["subject"]
    assert "pem" in error(run, "ca_bad")
    assert "ca 'nosuch' does not exist" in error(run, "cert_bad")
    assert api.names("/cas") == [] and api.names("/certificates") == []


def test_token_lifecycle(run: Run, api: Api) -> None:
    assert changed(run, "token_check", "token_create", "token_again", "token_delete",
                   "token_delete_again") == {
        "token_check": True, "token_create": True, "token_again": False,
        "token_delete": True, "token_delete_again": False}
    assert "value" not in run.results["r_token_check"]  # check mode created nothing
    created = run.results["r_token_create"]
    assert created["value"].startswith(created["token"]["prefix"])
    assert "value" not in run.results["r_token_again"]
    assert "scopes" in error(run, "token_bad") and "new name" in error(run, "token_bad")
    live = [t for t in api.get("/tokens")["data"] if t["name"] == "monitor"]
    assert live and all(t["revoked_at"] for t in live)


def test_connection_with_children_lifecycle(run: Run, api: Api) -> None:
    # the API's canonical forms (a selector's /32, case of proposals) are no change
    assert run.results["r_conn_spelling"]["changed"] is False, run.results["r_conn_spelling"]
    assert changed(run, "conn_create", "conn_again", "conn_check", "conn_update",
                   "conn_field", "conn_purge", "conn_delete", "conn_delete_again") == {
        "conn_create": True, "conn_again": False, "conn_check": True, "conn_update": True,
        "conn_field": True, "conn_purge": True, "conn_delete": True,
        "conn_delete_again": False}
    created = run.results["r_conn_create"]["connection"]
    assert created["peer_id"] is not None and created["secret_id"] is not None
    assert sorted(c["name"] for c in created["children"]) == ["lan", "mgmt"]
    child_change = {"before": {"children": {"lan": {"remote_ts": ["203.0.113.0/24"]}}},
                    "after": {"children": {"lan": {"remote_ts": ["203.0.113.0/25"]}}}}
    assert diff(run, "conn_check") == diff(run, "conn_update") == child_change
    assert diff(run, "conn_field") == {"before": {"dpd_delay": 0}, "after": {"dpd_delay": 30}}
    assert diff(run, "conn_purge") == {"before": {"children": {"mgmt": {"state": "present"}}},
                                       "after": {"children": {"mgmt": {"state": "absent"}}}}
    info = run.results["r_info"]
    assert [c["name"] for c in info["connections"]] == ["gw-branch1"]
    assert [c["name"] for c in info["connections"][0]["children"]] == ["lan"]
    assert info["connections"][0]["children"][0]["remote_ts"] == ["203.0.113.0/25"]
    assert info["connections"][0]["dpd_delay"] == 30
    assert info["installed_children"] == [] and info["ike_sas"] == []
    assert [c["name"] for c in info["status"]["connections"]] == ["gw-branch1"]
    assert "gw-branch1" not in api.names("/connections")


def test_connection_bad_input_names_the_field(run: Run) -> None:
    assert "local_ts" in error(run, "conn_bad")
    assert "secret 'nosuch' does not exist" in error(run, "conn_badref")


def test_sa_actions(run: Run) -> None:
    assert run.results["r_sa_down"]["changed"] is False
    assert run.results["r_sa_rekey_check"]["changed"] is True
    assert "nosuch" in error(run, "sa_bad")
