"""`xfrmctl secret --version`: the operator's label for a value, stored with it, listed,
replaced with the value (a replace without one clears it); a bad one is refused with
the field named and exit code 7. The value is still never printed."""

from __future__ import annotations

from tests.cli.conftest import Server

PSK = "cli-version-test-psk-1"
PSK2 = "cli-version-test-psk-2"


def test_secret_version_is_stored_listed_and_replaced(server: Server) -> None:
    created = server.run("secret", "create", "branch-psk", "--version", "2026-12",
                         stdin=PSK + "\n")
    assert created.returncode == 0, created.stderr
    assert "version 2026-12" in created.stdout and PSK not in created.stdout
    listed = server.run("secret", "list")
    assert listed.stdout.splitlines()[0].split()[:4] == ["ID", "NAME", "KIND", "VERSION"]
    assert listed.stdout.splitlines()[1].split()[1:4] == ["branch-psk", "psk", "2026-12"]
    assert [s["version"] for s in server.json("secret", "list")] == ["2026-12"]

    replaced = server.json("secret", "replace", "branch-psk", "--version", "2027-01",
                           stdin=PSK2 + "\n")
    assert replaced["version"] == "2027-01" and "value" not in replaced
    unlabelled = server.json("secret", "replace", "branch-psk", stdin=PSK2 + "\n")
    assert unlabelled["version"] is None

    bad = server.run("secret", "replace", "branch-psk", "--version", "v 2", stdin=PSK + "\n")
    assert bad.returncode == 7 and "version" in bad.stderr, bad.stderr
    assert "Traceback" not in bad.stderr and PSK not in bad.stdout + bad.stderr
    assert [s["version"] for s in server.json("secret", "list")] == [None]
