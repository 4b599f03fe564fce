"""`ansible-test sanity` passes for the collection: documentation against argument specs
(validate-modules, ansible-doc), imports limited to what Ansible ships, pylint, pep8,
yamllint, runtime metadata. Offline: the sanity environments come from this venv
(support/ansible_test_offline.py); no sanity test needs the network then."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import COLLECTIONS

OFFLINE = Path(__file__).resolve().parent / "support" / "ansible_test_offline.py"
COLLECTION = COLLECTIONS / "ansible_collections" / "xfrmctl" / "ipsec"
MUST_RUN = ("ansible-doc", "compile", "import", "pep8", "pylint", "runtime-metadata",
            "validate-modules", "yamllint")


def test_ansible_test_sanity_passes(tmp_path: Path) -> None:
    pytest.importorskip("ansible_test", reason="ansible-core is not installed")
    for tool in ("pylint", "voluptuous", "yamllint", "pycodestyle", "antsibull_docs_parser"):
        pytest.importorskip(tool, reason=f"{tool} (dev extras) is needed by ansible-test sanity")
    # ansible-test wants the collection at ansible_collections/NS/NAME and writes
    # tests/output inside it: a copy keeps the repository clean
    copy = tmp_path / "ansible_collections" / "xfrmctl" / "ipsec"
    shutil.copytree(COLLECTION, copy, ignore=shutil.ignore_patterns("__pycache__", "output"))
    proc = subprocess.run([sys.executable, str(OFFLINE), str(tmp_path / "venvs"), "sanity",
                           "--python", f"{sys.version_info.major}.{sys.version_info.minor}",
                           "--color", "no"],
                          cwd=copy, capture_output=True, text=True, timeout=900, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-8000:]
    for test in MUST_RUN:
        assert f'Running sanity test "{test}"' in output, output
    assert "ERROR" not in output and "skipped" not in output.lower(), output
