"""Shared pieces of the IKE benches (ike_setups.py, ike_memory.py).

* `topology()`: two fresh network namespaces joined by veth, 192.0.2.1 (initiator) and
  192.0.2.2 (responder), removed on exit;
* `XfrmctlResponder` / `CharonResponder`: the responder under test in the responder
  namespace, the same connection on both (PSK, aes128gcm16-prfsha256-x25519, ESP
  aes128gcm16-x25519, any initiator, no DPD, no cookies below 1M half-open SAs);
* `LoadGen`: our sans-I/O core (`IkeManager`) as initiator over a real UDP socket in the
  initiator namespace, with a bounded window of concurrent setups, each its own IKE SA.

A setup counts when the IKE_AUTH answer arrives: with AUTH and the CHILD_SA's SA payload
("child SA"), or with AUTH and a child error notify ("child refused"); anything else is
"failed". Without ESP in the kernel (the build hosts) charon's CHILD_SA install fails
before it answers (so it answers with a notify) while xfrmctl answers first, then fails to
install and deletes the CHILD_SA with an INFORMATIONAL: the IKE work compared is the same.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

from tests.support import strongswan  # noqa: E402
from tests.support.netns import Netns, netns_pair  # noqa: E402
from xfrmctl.ike.config import AuthMethodName, ChildConfig, IkeConfig, LocalAuth, RemoteAuth  # noqa: E402
from xfrmctl.ike.constants import ProtocolId  # noqa: E402
from xfrmctl.ike.events import (  # noqa: E402
    ChildSaDeleted,
    ChildSaNegotiated,
    Event,
    IkeSaDown,
    IkeSaUp,
    NegotiationFailed,
)
from xfrmctl.ike.manager import IkeManager  # noqa: E402
from xfrmctl.ike.proposals import parse_proposals  # noqa: E402
from xfrmctl.kernel.nsutil import open_socket  # noqa: E402

INITIATOR, RESPONDER = "192.0.2.1", "192.0.2.2"
PSK = "test-only bench pre-shared key 0123456789"
IKE_PROPOSAL = "aes128gcm16-prfsha256-x25519"
ESP_PROPOSAL = "aes128gcm16-x25519"
PYTHON = REPO / ".venv" / "bin" / "python"
HUGE = 1_000_000  # cookie / half-open thresholds: no cookies on either side
TICK = os.sysconf("SC_CLK_TCK")


def missing() -> str | None:
    """Why the benches cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    if shutil.which("ip") is None:
        return "needs iproute2 (ip)"
    return strongswan.available()


@contextmanager
def topology() -> Iterator[tuple[Netns, Netns]]:
    """(initiator namespace, responder namespace), joined by veth0; removed on exit."""
    with netns_pair(f"{INITIATOR}/24", f"{RESPONDER}/24", prefix="xb") as pair:
        yield pair


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def udp_drops(ns: Netns) -> int:
    """UDP datagrams the namespace dropped for a full receive buffer (RcvbufErrors)."""
    lines = [ln.split() for ln in ns.run(["cat", "/proc/net/snmp"]).stdout.splitlines()
             if ln.startswith("Udp:")]
    return int(dict(zip(lines[0], lines[1], strict=True))["RcvbufErrors"])


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def kernel_has_esp() -> bool:
    """Whether the running kernel can hold an ESP SA (needs root; uses a scratch netns)."""
    with netns_pair(prefix="xe") as (a, _):
        probe = a.ip("xfrm", "state", "add", "src", INITIATOR, "dst", RESPONDER, "proto",
                     "esp", "spi", "0x1000", "aead", "rfc4106(gcm(aes))", "0x" + "11" * 20,
                     "128", check=False)
        return probe.returncode == 0


# --------------------------------------------------------------------------- responders


class Responder:
    """A responder process; `pid` is the process whose CPU time and RSS are measured."""

    name = ""
    pid = 0

    def __enter__(self) -> Responder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        raise NotImplementedError

    def alive(self) -> bool:
        return Path(f"/proc/{self.pid}").exists()

    def describe(self) -> str:
        return self.name


def wait_udp_bound(ns: Netns, port: int, timeout: float, alive: Any) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError("responder exited during start-up")
        out = ns.run(["ss", "-Hlun", f"sport = :{port}"], check=False).stdout
        if out.strip():
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing bound UDP port {port} in {timeout} s")


# `xfrmctl daemon` with a null kernel instead of netlink: the in-memory kernel
# (xfrmctl/kernel/fake.py) with every write accepted and nothing stored, so CHILD_SA
# installs succeed at no kernel cost and only the daemon's IKE work is measured.
NULL_KERNEL_LAUNCHER = """
import sys
import xfrmctl.daemon.main as daemon_main
from xfrmctl.cli import main
from xfrmctl.kernel.fake import FakeKernel

class NullKernel(FakeKernel):
    async def _execute(self, ops):
        return [(0, "")] * len(ops)

async def open_null_kernel():
    return NullKernel()

daemon_main.open_kernel = open_null_kernel
sys.argv[0] = "xfrmctl"
main()
"""


class XfrmctlResponder(Responder):
    """`xfrmctl daemon -c FILE --log-level error` in the responder namespace; with
    `null_kernel` its kernel accepts every write at no cost (IKE work only)."""

    name = "xfrmctl"

    def __init__(self, ns: Netns, workdir: Path, *, log_level: str = "error",
                 null_kernel: bool = False) -> None:
        self.null_kernel = null_kernel
        workdir.mkdir(parents=True, exist_ok=True)
        conf = {
            "listen": [RESPONDER],
            "cookie_threshold": HUGE,
            "connections": {"bench": {
                "local_addrs": [RESPONDER], "remote_addrs": [], "auth": "psk", "psk": PSK,
                "ike_proposals": IKE_PROPOSAL, "dpd_delay": 0, "rekey_time": 0,
                "children": {"net": {"esp_proposals": ESP_PROPOSAL}},
            }},
        }
        path = workdir / "xfrmctl.yaml"
        path.write_text(yaml.safe_dump(conf))
        self.log = workdir / "xfrmctl.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", ns.name, str(PYTHON),
                 *(["-c", NULL_KERNEL_LAUNCHER] if null_kernel else ["-m", "xfrmctl.cli"]),
                 "daemon", "-c", str(path), "--no-record", "--log-level", log_level],
                cwd=REPO, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, "XFRMCTL_DATABASE_URL": f"sqlite:///{workdir}/x.db",
                     "XFRMCTL_SECRET_KEY_FILE": str(workdir / "secret.key")},
                start_new_session=True)
        self.pid = self.proc.pid  # ip netns exec execs: this is Python itself
        try:
            wait_udp_bound(ns, 500, 60, lambda: self.proc.poll() is None)
        except RuntimeError as exc:
            self.stop()
            raise RuntimeError(f"xfrmctl: {exc}: {self.log.read_text()[-2000:]}") from None

    def stop(self) -> None:
        if self.proc.poll() is None:
            # SIGKILL: a SIGTERM would delete every SA, telling the initiator (slow at 100k)
            self.proc.kill()
        self.proc.wait(30)

    def describe(self) -> str:
        kernel = "null kernel: IKE work only" if self.null_kernel else "netlink kernel"
        return f"xfrmctl daemon (Python {sys.version.split()[0]}, --log-level error, {kernel})"


class _TunedCharon(strongswan.Charon):
    """charon with `tuning.conf` (includes the rendered strongswan.conf, then overrides)."""

    TUNING = f"""\
charon {{
    # many IKE SAs from one address: hash table sized for them, no DoS limits (our
    # daemon gets the same: cookie_threshold {HUGE})
    ikesa_table_size = 65536
    ikesa_table_segments = 16
    block_threshold = {HUGE}
    cookie_threshold = {HUGE}
    init_limit_half_open = 0
}}
"""

    @property
    def env(self) -> dict[str, str]:
        tuning = self.workdir / "tuning.conf"
        if not tuning.exists():
            self.workdir.mkdir(parents=True, exist_ok=True)
            tuning.write_text(f"include {self.conf}\n{self.TUNING}")
        return {**os.environ, "STRONGSWAN_CONF": str(tuning)}


class CharonResponder(Responder):
    """strongSwan's charon (DEFAULT_PLUGINS, logging off) with the equivalent swanctl conn."""

    name = "charon"

    def __init__(self, ns: Netns, workdir: Path, *, log_level: int = -1) -> None:
        levels = dict.fromkeys(("default", "ike", "cfg", "knl", "net", "enc", "job"), log_level)
        self.charon = _TunedCharon(ns.name, workdir, log_levels=levels)
        self.charon.start()
        assert self.charon.proc is not None
        self.pid = self.charon.proc.pid  # ip netns exec, unshare and sh all exec charon
        comm = Path(f"/proc/{self.pid}/comm").read_text().strip()
        if comm != "charon":
            self.stop()
            raise RuntimeError(f"expected pid {self.pid} to be charon, it is {comm}")
        self.charon.load(
            [strongswan.SwanConn(
                "bench", local_addrs=[RESPONDER], proposals=[IKE_PROPOSAL],
                esp_proposals=[ESP_PROPOSAL], child_name="net", rekey_time=0)],
            secrets=[strongswan.SwanSecret(PSK)])

    def stop(self) -> None:
        if self.charon.proc is not None and self.charon.proc.poll() is None:
            self.charon.proc.kill()  # SIGTERM would delete every SA first
        self.charon.stop()

    def describe(self) -> str:
        version = self.charon.version() if self.charon.running else {}
        return (f"charon {version.get('version', '?')} (logging {self.charon.log_levels['ike']}, "
                f"ikesa_table_size 65536, no DoS thresholds)")


# --------------------------------------------------------------------------- load generator


@dataclass
class Phase:
    """One measured run of `count` setups."""

    count: int
    seconds: float = 0.0
    child_ok: int = 0  # IKE_AUTH answered with AUTH and the CHILD_SA's SA payload
    child_refused: int = 0  # ... with AUTH and a child error notify
    failed: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    responder_cpu: float = 0.0
    loadgen_cpu: float = 0.0
    drops_responder: int = 0  # UDP receive buffer overflows in the responder's namespace
    drops_initiator: int = 0
    timed_out: bool = False

    @property
    def setups(self) -> int:
        return self.child_ok + self.child_refused

    @property
    def rate(self) -> float:
        return self.setups / self.seconds if self.seconds else 0.0

    def latency_ms(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        if len(self.latencies) == 1:
            return self.latencies[0] * 1000
        cuts = statistics.quantiles(self.latencies, n=100, method="inclusive")
        return cuts[round(q * 100) - 1] * 1000


def initiator_config() -> IkeConfig:
    """The load generator's connection: quiet once up (no DPD, rekey, INITIAL_CONTACT, so
    the responder keeps every SA we make from the same identity)."""
    psk = PSK.encode()
    return IkeConfig(
        name="bench",
        local_auth=LocalAuth(AuthMethodName.PSK, psk=psk),
        remote_auth=RemoteAuth(AuthMethodName.PSK, psk=psk),
        proposals=parse_proposals(IKE_PROPOSAL, ProtocolId.IKE),
        children=(ChildConfig("net", proposals=parse_proposals(ESP_PROPOSAL, ProtocolId.ESP),
                              rekey_time=0, life_time=0),),
        rekey_time=0, dpd_delay=0, initial_contact=False, half_open_timeout=60.0,
    )


class LoadGen(asyncio.DatagramProtocol):
    """Many concurrent IKE_SA + CHILD_SA initiations from INITIATOR:500, `window` at once."""

    def __init__(self, ns: Netns, window: int = 64, responder_ns: Netns | None = None) -> None:
        self.ns, self.window, self.responder_ns = ns, window, responder_ns
        self.local, self.remote = (INITIATOR, 500), (RESPONDER, 500)
        self.manager = IkeManager([initiator_config()], cookie_threshold=HUGE)
        self.transport: asyncio.DatagramTransport | None = None
        self.started: dict[int, float] = {}  # IKE SA id -> when initiated, until it counts
        self.up: set[int] = set()
        self.alive: set[int] = set()  # IKE SAs established and not down since
        self.children_deleted_by_peer = 0
        self.ike_down_after_setup: Counter[str] = Counter()
        self._phase: Phase | None = None
        self._to_start = 0
        self._done: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    async def open(self) -> None:
        sock = open_socket(self.ns.name, socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
        sock.bind(self.local)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: self, sock=sock)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self.transport is not None:
            self.transport.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.manager.receive_datagram(data, self.local, (str(addr[0]), int(addr[1])),
                                      time.time())
        self._pump()

    async def run(self, count: int, responder_pid: int, timeout: float) -> Phase:
        """Make `count` setups (at most `window` in flight); return when all have an
        outcome or after `timeout` seconds."""
        phase = self._phase = Phase(count)
        loop = asyncio.get_running_loop()
        self._done = loop.create_future()
        self._to_start = count
        drops0 = self._drops()
        cpu0, own0, t0 = cpu_seconds(responder_pid), time.process_time(), time.perf_counter()
        self._pump()
        try:
            await asyncio.wait_for(asyncio.shield(self._done), timeout)
        except TimeoutError:
            phase.timed_out = True
            self._to_start = 0
        phase.seconds = time.perf_counter() - t0
        phase.responder_cpu = cpu_seconds(responder_pid) - cpu0
        phase.loadgen_cpu = time.process_time() - own0
        drops1 = self._drops()
        phase.drops_initiator = drops1[0] - drops0[0]
        phase.drops_responder = drops1[1] - drops0[1]
        phase.failed += len(self.started) if phase.timed_out else 0
        self.started.clear()
        self._phase = None
        return phase

    def _drops(self) -> tuple[int, int]:
        return udp_drops(self.ns), udp_drops(self.responder_ns) if self.responder_ns else 0

    # ------------------------------------------------------------------ internals

    def _pump(self) -> None:
        while (event := self.manager.next_event()) is not None:
            self._on_event(event)
        now = time.time()
        while self._to_start and len(self.started) < self.window:
            self._to_start -= 1
            sa = self.manager.initiate("bench", self.local, self.remote, now)
            self.started[sa.id] = time.perf_counter()
        while (event := self.manager.next_event()) is not None:
            self._on_event(event)
        assert self.transport is not None
        for d in self.manager.datagrams_to_send():
            self.transport.sendto(d.data, d.remote)
        self._arm_timer()
        if self._done is not None and not self._done.done() and not self._to_start \
                and not self.started:
            self._done.set_result(None)

    def _finish(self, sa_id: int, outcome: str, reason: str = "") -> None:
        started = self.started.pop(sa_id, None)
        phase = self._phase
        if started is None or phase is None:
            return
        if outcome == "ok":
            phase.child_ok += 1
        elif outcome == "refused":
            phase.child_refused += 1
            phase.reasons[f"child refused: {reason}"] += 1
        else:
            phase.failed += 1
            phase.reasons[f"failed: {reason}"] += 1
        if outcome != "failed":
            phase.latencies.append(time.perf_counter() - started)

    def _on_event(self, event: Event) -> None:
        if isinstance(event, IkeSaUp):
            self.up.add(event.ike_sa)
            self.alive.add(event.ike_sa)
        elif isinstance(event, ChildSaNegotiated):
            self._finish(event.ike_sa, "ok")
        elif isinstance(event, NegotiationFailed):
            kind = "refused" if event.child is not None and event.ike_sa in self.up \
                else "failed"
            self._finish(event.ike_sa, kind, event.reason.value)
        elif isinstance(event, ChildSaDeleted):
            self.children_deleted_by_peer += 1
        elif isinstance(event, IkeSaDown):
            self._finish(event.ike_sa, "failed", event.reason)
            if event.ike_sa in self.alive:
                self.alive.discard(event.ike_sa)
                self.ike_down_after_setup[event.reason] += 1

    def _arm_timer(self) -> None:
        deadline = self.manager.get_timer()
        if deadline is None or (self._timer is not None and self._timer_at <= deadline):
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = asyncio.get_running_loop().call_later(
            max(0.0, deadline - time.time()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.manager.handle_timer(time.time())
        self._pump()


def start_responder(kind: str, ns: Netns, workdir: Path, *,
                    null_kernel: bool = False) -> Responder:
    if kind == "xfrmctl":
        return XfrmctlResponder(ns, workdir / "xfrmctl", null_kernel=null_kernel)
    return CharonResponder(ns, workdir / "charon")


def machine() -> str:
    """One line about where this ran (CPU model, cores, load, kernel)."""
    model = next((line.split(":", 1)[1].strip()
                  for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "?")
    load = os.getloadavg()
    return (f"{model}, {os.cpu_count()} cores, load {load[0]:.2f} {load[1]:.2f}, "
            f"kernel {os.uname().release}")


def side_by_side(rows: list[tuple[str, str, str, str]]) -> str:
    """Rows of (label, xfrmctl, charon, ratio) as aligned columns."""
    head = ("", "xfrmctl", "charon", "xfrmctl/charon")
    table = [head, *rows]
    widths = [max(len(r[i]) for r in table) for i in range(4)]
    return "\n".join(f"{r[0]:<{widths[0]}}  " + "  ".join(f"{r[i]:>{widths[i]}}"
                                                           for i in range(1, 4))
                     for r in table)


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else "n/a"
