"""The Vagrant lab and the gateway playbook it provisions with: syntax checked here
(Vagrant itself cannot run on the CI host); the lab VM runs the same modules for real."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import ANSIBLE_PLAYBOOK, COLLECTIONS, REPO

VAGRANTFILE = REPO / "Vagrantfile"


def test_vagrantfile_is_valid_ruby() -> None:
    ruby = shutil.which("ruby")
    if ruby is None:
        pytest.skip("ruby is not installed (deploy/setup.sh installs it)")
    proc = subprocess.run([ruby, "-c", str(VAGRANTFILE)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0 and "Syntax OK" in proc.stdout, proc.stderr


def test_vagrantfile_provisions_the_gateways_with_the_collections_playbook() -> None:
    text = VAGRANTFILE.read_text()
    assert '"ansible_local"' in text
    playbook = re.search(r'ansible\.playbook = "([^"]+)"', text)
    base = re.search(r'ansible\.provisioning_path = "/vagrant/([^"]+)"', text)
    assert playbook and base, "the ansible_local provisioner names its playbook"
    assert (REPO / base.group(1) / playbook.group(1)).is_file()


def test_gateway_playbook_and_role_pass_the_syntax_check() -> None:
    if not ANSIBLE_PLAYBOOK.exists():
        pytest.skip("ansible-core is not installed (pip install -e '.[dev]')")
    env = dict(os.environ, ANSIBLE_CONFIG=str(COLLECTIONS / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    proc = subprocess.run([str(ANSIBLE_PLAYBOOK), "-i", "gw1,gw2,", "--syntax-check",
                           "gateway.yml"], cwd=COLLECTIONS, env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "playbook: gateway.yml" in proc.stdout


def test_readme_playbook_passes_the_syntax_check(tmp_path: Path) -> None:
    if not ANSIBLE_PLAYBOOK.exists():
        pytest.skip("ansible-core is not installed (pip install -e '.[dev]')")
    section = (REPO / "README.md").read_text().split("## Ansible", 1)[1]
    playbook = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    assert len(playbook.strip().splitlines()) <= 10
    (tmp_path / "tunnel.yml").write_text(playbook)
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS), ANSIBLE_NOCOLOR="1")
    proc = subprocess.run([str(ANSIBLE_PLAYBOOK), "-i", "gw1,", "--syntax-check", "tunnel.yml"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
