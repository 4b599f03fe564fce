"""Run ansible-test with the sanity tests' Python environments made from this venv.

ansible-test builds one virtualenv per sanity test and pip-installs pinned tools into
it, bootstrapping pip from ci-files.testing.ansible.com: impossible offline. Here each
of those environments is a venv whose site-packages point (a .pth file) at this venv,
which holds the tools (pylint, voluptuous, yamllint, pycodestyle, antsibull-docs-parser:
pyproject's dev extras). The import test's minimal environments stay bare, so it still
proves that modules import nothing beyond what Ansible ships.

    python ansible_test_offline.py VENV_DIR sanity --python 3.11 ...
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from typing import Any

from ansible_test._internal.commands import sanity
from ansible_test._internal.host_configs import VirtualPythonConfig
from ansible_test._internal.io import write_json_file
from ansible_test._internal.util_common import yamlcheck
from ansible_test._util.target.cli.ansible_test_cli_stub import main as cli

QUIET_DSA = ("import warnings; warnings.filterwarnings('ignore', "
             "message='DSA is deprecated', module='ansible')")


def environment(root: str, with_tools: bool) -> str:
    path = os.path.join(root, "tools" if with_tools else "bare")
    python = os.path.join(path, "bin", "python")
    if not os.path.exists(python):
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", path], check=True)
        if with_tools:
            site = subprocess.check_output(
                [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                text=True).strip()
            with open(os.path.join(site, "xfrmctl-dev.pth"), "w") as pth:
                pth.write(sysconfig.get_paths()["purelib"] + "\n")
                # ansible-core imports DSA support that this cryptography deprecates; the
                # warning on stderr would fail every sanity test that runs ansible code
                pth.write(QUIET_DSA + "\n")
        # what ansible-test records after its own installs: does PyYAML have libyaml
        write_json_file(os.path.join(path, "meta.yaml.json"),
                        yamlcheck(VirtualPythonConfig(path=python)))
    return python


def main() -> None:
    root = sys.argv.pop(1)

    def offline(_args: Any, python: Any, _name: str, coverage: bool = False,
                minimize: bool = False) -> VirtualPythonConfig:
        return VirtualPythonConfig(version=python.version,
                                   path=environment(root, with_tools=not minimize))

    sanity.create_sanity_virtualenv = offline  # type: ignore[assignment]
    cli()


if __name__ == "__main__":
    main()
