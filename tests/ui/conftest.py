"""Browser tests of the dashboard: headless Debian `chromium` driven by Playwright,
against `xfrmctl daemon --api --kernel memory` gateways in network namespaces.

The browser runs inside gateway A's namespace (its executable is a wrapper that does
`ip netns exec`; Playwright talks to it over pipes), so it reaches A's API on
127.0.0.1 there and nothing else. Screenshots go to `test-artifacts/ui/` (gitignored;
CI keeps the directory as the run's artifacts).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.netns import Netns, netns_pair, require_root
from tests.support.xfrmctl_daemon import PYTHON, XfrmctlDaemon, child, connection, daemon_conf

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "ui"
API_PORT = 8463
PSK = "dashboard test-only psk 7f3e"


class MemoryDaemon(XfrmctlDaemon):
    """The daemon on the in-memory kernel (no ESP needed: IKE is real, SAs are not)."""

    def argv(self) -> list[str]:
        return [*super().argv(), "--kernel", "memory"]


@dataclass
class Lab:
    a: Netns
    b: Netns
    gw_a: MemoryDaemon
    gw_b: MemoryDaemon
    tokens: dict[str, str] = field(default_factory=dict)
    base: str = f"http://127.0.0.1:{API_PORT}"

    def api(self, method: str, path: str, body: Any = None, token: str | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, Any]:
        """An API call from inside namespace A (curl), with the admin token by default."""
        argv = ["curl", "-sS", "-o", "-", "-w", "\n%{http_code}", "-X", method,
                f"{self.base}/api/v1{path}", "-H",
                f"Authorization: Bearer {token or self.tokens['admin']}"]
        for k, v in (headers or {}).items():
            argv += ["-H", f"{k}: {v}"]
        if body is not None:
            argv += ["-H", "Content-Type: application/json", "--data", json.dumps(body)]
        out = self.a.run(argv).stdout
        text, _, code = out.rpartition("\n")
        return int(code), json.loads(text) if text.strip() else None


def _token(daemon: XfrmctlDaemon, name: str, scope: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
           "XFRMCTL_DATABASE_URL": f"sqlite:///{daemon.workdir}/xfrmctl.db",
           "XFRMCTL_SECRET_KEY_FILE": str(daemon.workdir / "secret.key")}
    out = subprocess.run([str(PYTHON), "-m", "xfrmctl.cli", "--json", "token", "create", name,
                          "--scope", scope, "--local"], env=env, capture_output=True,
                         text=True, timeout=60, check=True)
    return str(json.loads(out.stdout)["token"])


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    """Gateway A (192.0.2.1, API, one file connection to an absent peer) and gateway B
    (192.0.2.2, answers A with the PSK for 198.51.100.0/24 <-> 203.0.113.0/24)."""
    require_root()
    if shutil.which("curl") is None:
        pytest.skip("needs curl")
    with netns_pair(prefix="ui") as (a, b):
        absent = connection("192.0.2.1", "192.0.2.3", {"lan": child(["198.51.100.0/24"],
                                                                     ["192.0.2.128/25"])},
                            psk=PSK, start_action="start")
        to_a = connection("192.0.2.2", "192.0.2.1", {"net": child(["203.0.113.0/24"],
                                                                  ["198.51.100.0/24"])},
                          psk=PSK)
        api_env = {"XFRMCTL_API_PORT": str(API_PORT),
                   "XFRMCTL_API_SOCKET": str(tmp_path / "a" / "api.sock")}
        gw_b = MemoryDaemon(b.name, tmp_path / "b", daemon_conf(["192.0.2.2"],
                                                               {"to-a": to_a}))
        gw_a = MemoryDaemon(a.name, tmp_path / "a",
                            daemon_conf(["192.0.2.1"], {"branch-c": absent}),
                            api=True, env=api_env)
        with gw_b, gw_a:
            lab = Lab(a, b, gw_a, gw_b)
            lab.tokens = {"admin": _token(gw_a, "ui-admin", "admin"),
                          "read": _token(gw_a, "ui-reader", "read")}
            deadline = time.monotonic() + 60
            while lab.a.run(["curl", "-s", "-o", "/dev/null", lab.base + "/ui/login"],
                            check=False).returncode != 0:
                assert time.monotonic() < deadline, gw_a.tail()
                time.sleep(0.3)
            yield lab


@pytest.fixture
def browser(lab: Lab, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (dev extra)")
    if not CHROMIUM.exists():
        pytest.skip("needs Debian's chromium (deploy/setup.sh installs it)")
    wrapper = tmp_path / "chromium-in-netns"
    wrapper.write_text(f'#!/bin/sh\nexec ip netns exec {lab.a.name} {CHROMIUM} "$@"\n')
    wrapper.chmod(0o755)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(wrapper), args=["--no-sandbox"])
        request.node.ui_browser = chromium  # for screenshots of a failed test
        try:
            yield chromium
        finally:
            chromium.close()


def never_other_hosts(url: str) -> bool:
    return url.startswith((f"http://127.0.0.1:{API_PORT}/", "data:", "about:", "blob:"))




@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        browser = getattr(item, "ui_browser", None)
        for n, ctx in enumerate(browser.contexts if browser else []):
            for i, page in enumerate(ctx.pages):
                with contextlib.suppress(Exception):
                    page.screenshot(path=str(ARTIFACTS / f"FAILED-{item.name}-{n}-{i}.png"),
                                    full_page=True)
