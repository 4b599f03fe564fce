"""`xfrmctl eap-user`: passwords go in once (stdin, file or prompt) and never come out."""

from __future__ import annotations

from pathlib import Path

from tests.cli.conftest import Server

PASSWORD = "cli test-only eap password"


def test_eap_users_are_write_only(server: Server, tmp_path: Path) -> None:
    created = server.run("eap-user", "create", "carol", "--version", "1",
                         stdin=PASSWORD + "\n")
    assert created.returncode == 0, created.stderr
    assert "created EAP user carol" in created.stdout and PASSWORD not in created.stdout
    listed = server.run("eap-user", "list")
    assert listed.stdout.splitlines()[0].split()[:4] == ["ID", "NAME", "ENABLED", "VERSION"]
    assert "carol" in listed.stdout and PASSWORD not in listed.stdout
    new = tmp_path / "pw"
    new.write_text("another test-only password\n")
    changed = server.json("eap-user", "passwd", "carol", "--password-file", str(new))
    assert changed["name"] == "carol" and changed["version"] is None
    assert "password" not in changed and "nt_hash" not in changed
    assert server.json("eap-user", "enable", "carol", "--off")["enabled"] is False
    shown = server.run("eap-user", "show", "carol")
    assert "another" not in shown.stdout and PASSWORD not in shown.stdout
    assert server.run("eap-user", "delete", "carol").returncode == 0
    assert server.run("eap-user", "delete", "carol").returncode == 5
    assert server.run("eap-user", "create", "empty", stdin="\n").returncode == 2
