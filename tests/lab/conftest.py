"""Lab tests: they run inside the real-kernel VM started by ``deploy/lab/run``.

Outside the VM (``XFRMCTL_LAB`` unset) every test in this directory is skipped with the
reason. Inside, ``gateway_pair`` gives two network namespaces wired as in LAB.md:

    ns "left"                                   ns "right"
    dummy 198.51.100.1/24                       dummy 203.0.113.1/24
    veth  192.0.2.1/24  <--------------------->  veth 192.0.2.2/24

The namespaces are made with plain ``ip netns`` commands (small on purpose; the
project's ``tests/support/netns.py`` helpers can take over later) and removed after
the test, with everything in them.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.strongswan import Charon

IN_LAB = os.environ.get("XFRMCTL_LAB") == "1"
_counter = itertools.count()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    lab_dir = Path(__file__).parent
    skip = pytest.mark.skip(
        reason="lab test: needs the real-kernel VM (run deploy/lab/run; XFRMCTL_LAB unset)"
    )
    for item in items:
        if lab_dir in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.lab)
            if not IN_LAB:
                item.add_marker(skip)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def run(*args: str, netns: str | None = None, check: bool = True) -> str:
    """Run a command (in ``netns`` if given); return stdout, raise with output on error."""
    cmd = ["ip", "netns", "exec", netns, *args] if netns else list(args)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: rc={proc.returncode}\n{proc.stdout}{proc.stderr}")
    return proc.stdout


def ip_batch(netns: str, commands: str) -> None:
    """Run ``ip`` commands (one per line) in one process inside ``netns``."""
    proc = subprocess.run(
        ["ip", "-n", netns, "-batch", "-"],
        input=commands, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"ip -n {netns} -batch: {proc.stderr}\n{commands}")


@dataclass(frozen=True)
class Gateway:
    """One side of the pair: its netns, outer (veth) and inner (dummy) addresses."""

    netns: str
    outer: str
    inner: str
    subnet: str
    veth: str

    def run(self, *args: str, check: bool = True) -> str:
        return run(*args, netns=self.netns, check=check)


@dataclass(frozen=True)
class GatewayPair:
    left: Gateway
    right: Gateway


def make_pair(prefix: str) -> GatewayPair:
    """Create the two namespaces of LAB.md; on failure, remove what was made."""
    left = Gateway(f"{prefix}l", "192.0.2.1", "198.51.100.1", "198.51.100.0/24", "vl")
    right = Gateway(f"{prefix}r", "192.0.2.2", "203.0.113.1", "203.0.113.0/24", "vr")
    try:
        for gw in (left, right):
            run("ip", "netns", "add", gw.netns)
        veth = f"{left.veth} netns {left.netns} type veth peer name {right.veth}"
        run("ip", "link", "add", *veth.split(), "netns", right.netns)
        # one `ip -batch` per side: process starts are what costs under TCG
        for gw in (left, right):
            batch = (
                "link set lo up\n"
                f"addr add {gw.outer}/24 dev {gw.veth}\n"
                f"link set {gw.veth} up\n"
                "link add inner type dummy\n"
                f"addr add {gw.inner}/24 dev inner\n"
                "link set inner up\n"
            )
            ip_batch(gw.netns, batch)
            gw.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
    except Exception:
        remove_pair(GatewayPair(left, right))
        raise
    return GatewayPair(left, right)


def remove_pair(pair: GatewayPair) -> None:
    for gw in (pair.left, pair.right):
        # deleting the netns removes its links, SAs and policies with it
        for pid in run("ip", "netns", "pids", gw.netns, check=False).split():
            subprocess.run(["kill", "-9", pid], check=False)
        run("ip", "netns", "del", gw.netns, check=False)


@pytest.fixture
def gateway_pair() -> Iterator[GatewayPair]:
    """Two fresh namespaces per test (unique names, so cases can run side by side)."""
    pair = make_pair(f"x{os.getpid()}n{next(_counter)}")
    try:
        yield pair
    finally:
        remove_pair(pair)


@pytest.fixture(scope="session")
def lab_results() -> Path:
    """The results directory shared with the host (``XFRMCTL_LAB_RESULTS``)."""
    path = Path(os.environ.get("XFRMCTL_LAB_RESULTS", "/tmp/xfrmctl-lab-results"))
    path.mkdir(parents=True, exist_ok=True)
    return path


CharonFactory = Callable[..., Charon]


@pytest.fixture
def charons(
    request: pytest.FixtureRequest, tmp_path: Path, lab_results: Path
) -> Iterator[CharonFactory]:
    """Start charons: ``charons(netns, "left", log_levels={...})``; all stopped after.

    ``wait=False`` returns at once (call ``.wait_ready()``), so two charons can start
    in parallel: that halves the ~10 s each takes under TCG.

    When the test fails, each charon's log is copied to
    ``<results>/charon-logs/<test>/<name>.log`` (the results directory of deploy/lab/run).
    """
    started: list[tuple[str, Charon]] = []

    def start(netns: str, name: str | None = None, wait: bool = True, **kwargs: object) -> Charon:
        name = name or f"charon{len(started)}"
        charon = Charon(netns, tmp_path / name, **kwargs)  # type: ignore[arg-type]
        started.append((name, charon))
        charon.start(wait=wait)
        return charon

    try:
        yield start
    finally:
        for _, charon in reversed(started):
            charon.stop()
        rep = getattr(request.node, "rep_call", None)
        if rep is not None and rep.failed:
            dest = lab_results / "charon-logs" / re.sub(r"[^\w.-]+", "_", request.node.nodeid)
            dest.mkdir(parents=True, exist_ok=True)
            for name, charon in started:
                if charon.log_path.exists():
                    shutil.copy(charon.log_path, dest / f"{name}.log")
