"""The CLI starts without loading the daemon: `xfrmctl --help` lists every subcommand
(click imports each one for its summary), so the `daemon` and `db` commands must import
the daemon's modules inside the command, when it runs (issue 12: they used to live in
xfrmctl/daemon/ and pull in the controller, the IKE core and netlink for any --help)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

_PROBE = """
import json, sys
from xfrmctl.cli import main
try:
    main(sys.argv[2:], prog_name="xfrmctl")
except SystemExit:
    pass
with open(sys.argv[1], "w") as out:
    json.dump(sorted(sys.modules), out)
"""


def _modules_after(tmp_path: Path, *args: str) -> set[str]:
    out = tmp_path / "modules.json"
    result = subprocess.run([sys.executable, "-c", _PROBE, str(out), *args],
                            capture_output=True, text=True, check=False, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "Usage: xfrmctl" in result.stdout
    return set(json.loads(out.read_text()))


def _under(modules: set[str], *packages: str) -> list[str]:
    return sorted(m for m in modules if any(m == p or m.startswith(p + ".") for p in packages))


@pytest.mark.parametrize("args", [("--help",), ("daemon", "--help"), ("db", "--help"),
                                  ("db", "import", "--help")])
def test_help_loads_no_daemon_kernel_or_api(tmp_path: Path, args: tuple[str, ...]) -> None:
    loaded = _modules_after(tmp_path, *args)
    assert _under(loaded, "xfrmctl.daemon", "xfrmctl.kernel", "api", "uvicorn",
                  "pyroute2") == []


def test_the_cli_package_registers_db_and_daemon(tmp_path: Path) -> None:
    loaded = _modules_after(tmp_path, "--help")
    assert {"xfrmctl.cli.daemon", "xfrmctl.cli.db"} <= loaded  # listed, so imported
