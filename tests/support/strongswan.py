"""strongSwan's charon as a real IKEv2 peer for lab and interop tests.

One :class:`Charon` runs ``/usr/lib/ipsec/charon`` inside a network namespace, in a
private mount namespace with its own tmpfs on ``/run`` (so the pid file of several
instances does not collide), configured by a ``strongswan.conf`` written into the
instance's own directory:

* charon logs to ``<workdir>/charon.log`` (levels per subsystem are configurable,
  e.g. ``{"ike": 4}`` makes charon log the IKE key material);
* the VICI socket is ``<workdir>/charon.vici``: the test process talks to it directly
  (the ``vici`` package, or ``swanctl --uri``), no ``nsenter`` needed.

Connections are described with :class:`SwanConn` / :class:`SwanSecret` /
:class:`SwanPool` and rendered into a ``swanctl.conf`` by :func:`render_swanctl`;
:meth:`Charon.load` writes it (plus certificates and keys) into
``<workdir>/swanctl/`` and loads the same content over VICI (``use_swanctl=True``:
with ``swanctl --load-all``, ~30 s slower under TCG).

Typical use::

    with Charon("left", tmp_path / "left", log_levels={"ike": 2}) as left:
        left.load([SwanConn("gw", local_addrs=["192.0.2.1"], ...)],
                  secrets=[SwanSecret("psk-secret", ids=["left", "right"])])
        left.initiate("gw")
        left.wait_child_installed("gw")      # raises CharonError with the log tail

``build=STRONGSWAN6`` runs strongSwan 6.0.6 (unpacked to ``/opt/strongswan6`` by
``deploy/setup.sh``; RFC 9370 multiple key exchanges, ML-KEM) instead of Debian's 5.9.8.

Start several with ``start(wait=False)`` and then ``wait_ready()`` to overlap their
start-up; ``tests/lab/conftest.py`` has a ``charons`` fixture doing the bookkeeping.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import vici
import vici.exception

from tests.support.process import terminate

CHARON = Path("/usr/lib/ipsec/charon")
UNSHARE = ("unshare", "--mount", "--propagation", "private")
SWANCTL = Path(shutil.which("swanctl") or "/usr/sbin/swanctl")
PLUGIN_CONF_DIR = Path("/etc/strongswan.d/charon")

DEFAULT_LOG_LEVELS: dict[str, int] = {"default": 1, "ike": 2, "cfg": 2, "knl": 1}

# The plugins a test peer needs (PSK and X.509/ECDSA/RSA/Ed25519 auth, every IKE/ESP
# algorithm the project negotiates, kernel-netlink, VICI). Loading all ~75 installed
# plugins costs seconds under TCG; pass plugins=None to Charon to load them all.
DEFAULT_PLUGINS: tuple[str, ...] = (
    "random", "nonce", "openssl", "aes", "sha1", "sha2", "hmac", "kdf", "gcm", "chapoly",
    "curve25519", "gmp", "pem", "pkcs1", "pkcs8", "x509", "pubkey", "constraints",
    "revocation", "attr", "kernel-netlink", "socket-default", "vici", "updown",
)  # fmt: skip




@dataclass(frozen=True)
class Build:
    """One strongSwan installation: its binaries, plugin configurations and plugins."""

    name: str
    charon: Path
    swanctl: Path
    plugin_conf_dir: Path
    plugins: tuple[str, ...]
    install_hint: str
    run_dir: Path = Path("/run")  # pid file (made on the instance's private /run)


DEBIAN = Build("strongSwan 5.9.8 (Debian)", CHARON, SWANCTL, PLUGIN_CONF_DIR, DEFAULT_PLUGINS,
               "apt strongswan-charon strongswan-swanctl")
STRONGSWAN6_ROOT = Path("/opt/strongswan6")
STRONGSWAN6 = Build(
    "strongSwan 6.0.6", STRONGSWAN6_ROOT / "libexec/ipsec/charon",
    STRONGSWAN6_ROOT / "sbin/swanctl", STRONGSWAN6_ROOT / "etc/strongswan.d/charon",
    # openssl does the classic algorithms, ml the ML-KEM key exchanges
    ("random", "nonce", "openssl", "ml", "kdf", "chapoly", "curve25519", "pem", "pkcs1",
     "pkcs8", "x509", "pubkey", "constraints", "revocation", "attr", "kernel-netlink",
     "socket-default", "vici", "updown"),
    "deploy/setup.sh unpacks ../shared/peers/strongswan-6.0.6.tar.xz to /opt/strongswan6",
    run_dir=Path("/run/strongswan6"))


class CharonError(RuntimeError):
    """charon failed to start, refused a command, or did not reach a state in time."""


def available(build: Build = DEBIAN) -> str | None:
    """None when charon and swanctl are installed, else the reason they cannot run."""
    if not build.charon.exists():
        return f"{build.charon} not installed ({build.install_hint})"
    if not build.swanctl.exists():
        return f"{build.swanctl} not installed ({build.install_hint})"
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "unshare/ip (util-linux, iproute2) not installed"
    return None


# ----------------------------------------------------------------------------------------
# swanctl.conf rendering


def _q(value: str) -> str:
    """Quote a swanctl.conf value when it holds characters the parser would split on."""
    if value and all(c.isalnum() or c in "._-:/@,*=+%[]" for c in value):
        return value
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _plain(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def _value(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return _q(str(value))


def _section(name: str, body: Mapping[str, Any], indent: int) -> list[str]:
    pad = "    " * indent
    lines = [f"{pad}{name} {{"]
    for key, val in body.items():
        if val is None:
            continue
        if isinstance(val, Mapping):
            lines += _section(key, val, indent + 1)
        else:
            lines.append(f"{pad}    {key} = {_value(val)}")
    lines.append(f"{pad}}}")
    return lines


@dataclass
class SwanConn:
    """One swanctl connection with one CHILD_SA (``children.<child_name>``).

    Times are swanctl strings or seconds (``"1h"``, ``30``); None leaves charon's default.
    ``auth`` is ``"psk"`` or ``"pubkey"``; with ``"pubkey"`` give ``local_cert`` (a file
    name loaded by :meth:`Charon.load`) and optionally ``remote_cacert``.
    """

    name: str
    local_addrs: Sequence[str] = ()
    remote_addrs: Sequence[str] = ()
    local_id: str | None = None
    remote_id: str | None = None
    auth: str = "psk"
    local_cert: str | None = None
    remote_cacert: str | None = None
    proposals: Sequence[str] = ("aes128gcm16-prfsha256-x25519",)
    esp_proposals: Sequence[str] = ("aes128gcm16-x25519",)
    local_ts: Sequence[str] = ("dynamic",)
    remote_ts: Sequence[str] = ("dynamic",)
    mode: str = "tunnel"
    start_action: str = "none"
    close_action: str | None = None
    dpd_action: str | None = None
    child_name: str | None = None
    version: int = 2
    rekey_time: str | int | None = None
    reauth_time: str | int | None = None
    over_time: str | int | None = None
    rand_time: str | int | None = 0
    child_rekey_time: str | int | None = None
    child_life_time: str | int | None = None
    child_rand_time: str | int | None = 0
    dpd_delay: str | int | None = None
    dpd_timeout: str | int | None = None
    encap: bool | None = None
    mobike: bool = False
    fragmentation: str | None = None
    local_port: int | None = None
    remote_port: int | None = None
    vips: Sequence[str] = ()
    pools: Sequence[str] = ()
    send_cert: str | None = None
    send_certreq: bool | None = None
    if_id_in: str | int | None = None
    if_id_out: str | int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    child_extra: Mapping[str, Any] = field(default_factory=dict)
    # EAP (e.g. "eap-mschapv2") on one side instead of ``auth``; eap_id: ours (a client's
    # user name) / the one asked of the peer (a gateway's "%any": EAP-Identity)
    local_auth: str | None = None
    remote_auth: str | None = None
    eap_id: str | None = None
    remote_eap_id: str | None = None

    @property
    def child(self) -> str:
        return self.child_name or self.name

    def as_section(self) -> dict[str, Any]:
        local: dict[str, Any] = {"auth": self.local_auth or self.auth, "id": self.local_id,
                                 "eap_id": self.eap_id}
        remote: dict[str, Any] = {"auth": self.remote_auth or self.auth, "id": self.remote_id,
                                  "eap_id": self.remote_eap_id}
        if self.local_cert:
            local["certs"] = self.local_cert
        if self.remote_cacert:
            remote["cacerts"] = self.remote_cacert
        child: dict[str, Any] = {
            "local_ts": list(self.local_ts),
            "remote_ts": list(self.remote_ts),
            "esp_proposals": list(self.esp_proposals),
            "mode": self.mode,
            "start_action": self.start_action,
            "close_action": self.close_action,
            "dpd_action": self.dpd_action,
            "rekey_time": self.child_rekey_time,
            "life_time": self.child_life_time,
            "rand_time": self.child_rand_time,
            "if_id_in": self.if_id_in,
            "if_id_out": self.if_id_out,
            **self.child_extra,
        }
        conn: dict[str, Any] = {
            "version": self.version,
            "local_addrs": list(self.local_addrs) or None,
            "remote_addrs": list(self.remote_addrs) or None,
            "local_port": self.local_port,
            "remote_port": self.remote_port,
            "proposals": list(self.proposals),
            "rekey_time": self.rekey_time,
            "reauth_time": self.reauth_time,
            "over_time": self.over_time,
            "rand_time": self.rand_time,
            "dpd_delay": self.dpd_delay,
            "dpd_timeout": self.dpd_timeout,
            "encap": self.encap,
            "mobike": self.mobike,
            "fragmentation": self.fragmentation,
            "vips": list(self.vips) or None,
            "pools": list(self.pools) or None,
            "send_cert": self.send_cert,
            "send_certreq": self.send_certreq,
            **self.extra,
            "local": local,
            "remote": remote,
            "children": {self.child: child},
        }
        return conn


@dataclass
class SwanSecret:
    """A shared IKE secret (``secrets.ike-<n>``) for the given identities; ``kind="eap"``
    an EAP password (``secrets.eap-<n>``); ``kind="ppk"`` a postquantum preshared key
    (``secrets.ppk-<n>``, ids: its PPK_IDs). The kind is case-insensitive."""

    secret: str
    ids: Sequence[str] = ()
    kind: str = "ike"

    def as_section(self) -> dict[str, Any]:
        body: dict[str, Any] = {f"id-{i}": ident for i, ident in enumerate(self.ids, 1)}
        body["secret"] = self.secret
        return body


@dataclass
class SwanPool:
    """A virtual IP pool (``pools.<name>``) a responder hands out (``SwanConn.pools``)."""

    name: str
    addrs: str
    dns: Sequence[str] = ()

    def as_section(self) -> dict[str, Any]:
        return {"addrs": self.addrs, "dns": list(self.dns) or None}


def render_swanctl(
    conns: Iterable[SwanConn],
    secrets: Iterable[SwanSecret] = (),
    pools: Iterable[SwanPool] = (),
) -> str:
    """Render a complete swanctl.conf for ``swanctl --load-all --file``."""
    lines: list[str] = []
    lines += _section("connections", {c.name: c.as_section() for c in conns}, 0)
    lines += _section("secrets", {f"{s.kind.lower()}-{i}": s.as_section()
                                  for i, s in enumerate(secrets, 1)}, 0)
    lines += _section("pools", {p.name: p.as_section() for p in pools}, 0)
    return "\n".join(lines) + "\n"


def render_strongswan_conf(
    workdir: Path,
    log_levels: Mapping[str, int],
    plugins: Sequence[str] | None = DEFAULT_PLUGINS,
    plugin_conf_dir: Path = PLUGIN_CONF_DIR,
    options: Mapping[str, object] | None = None,
) -> str:
    """strongswan.conf for one instance: its plugins, file log, private VICI socket, and
    further ``charon.<key> = value`` ``options`` (e.g. ``{"fragment_size": 1024}``)."""
    levels = {**DEFAULT_LOG_LEVELS, **log_levels}
    extra = "".join(f"    {k} = {_plain(v)}\n" for k, v in (options or {}).items())
    level_lines = "\n".join(f"            {k} = {v}" for k, v in levels.items())
    load = "load_modular = yes" if plugins is None else f"load = {' '.join(plugins)}"
    return f"""\
charon {{
    {load}
    install_virtual_ip = yes
    retransmit_timeout = 4.0
    retransmit_tries = 5
{extra}    plugins {{
        include {plugin_conf_dir}/*.conf
        vici {{
            socket = unix://{workdir}/charon.vici
        }}
    }}
    filelog {{
        charon {{
            path = {workdir}/charon.log
            time_format = %H:%M:%S
            ike_name = yes
            append = no
            flush_line = yes
{level_lines}
        }}
    }}
    syslog {{
        daemon {{
            default = -1
        }}
    }}
}}
swanctl {{
    socket = unix://{workdir}/charon.vici
}}
"""


# Keys whose swanctl.conf value is a comma-separated list: VICI wants a list.
_VICI_LISTS = {
    "local_addrs", "remote_addrs", "proposals", "esp_proposals", "ah_proposals",
    "local_ts", "remote_ts", "vips", "pools", "certs", "cacerts", "pubkeys", "dns",
}  # fmt: skip


def _vici_section(body: Mapping[str, Any], files: Mapping[str, bytes]) -> dict[str, Any]:
    """A swanctl.conf section as a VICI message: lists, yes/no, and for ``certs`` /
    ``cacerts`` the certificate data instead of the file name (what swanctl does)."""
    out: dict[str, Any] = {}
    for key, val in body.items():
        if val is None:
            continue
        if isinstance(val, Mapping):
            out[key] = _vici_section(val, files)
        elif key in _VICI_LISTS:
            items = [str(v) for v in val] if isinstance(val, (list, tuple)) else str(val).split(",")
            out[key] = [files[n] for n in items] if key in ("certs", "cacerts") else items
        else:
            out[key] = _plain(val)
    return out


# ----------------------------------------------------------------------------------------
# VICI values come back as bytes, lists and dicts (OrderedDict); make them plain str


def _decode(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, Mapping):
        return {str(k): _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


@dataclass
class SA:
    """One IKE_SA as listed by VICI ``list-sas`` (``raw`` holds every field, decoded)."""

    name: str
    raw: dict[str, Any]

    @property
    def state(self) -> str:
        return str(self.raw.get("state", ""))

    @property
    def uniqueid(self) -> str:
        return str(self.raw.get("uniqueid", ""))

    @property
    def children(self) -> dict[str, dict[str, Any]]:
        kids = self.raw.get("child-sas", {})
        return kids if isinstance(kids, dict) else {}

    def child_states(self) -> list[tuple[str, str]]:
        return [(str(c.get("name")), str(c.get("state"))) for c in self.children.values()]


class Charon:
    """One charon in network namespace ``netns``; all its files live in ``workdir``."""

    def __init__(
        self,
        netns: str,
        workdir: Path | str,
        *,
        log_levels: Mapping[str, int] | None = None,
        plugins: Sequence[str] | None = (),
        start_timeout: float = 240.0,  # charon loads its plugins slowly under TCG
        build: Build = DEBIAN,
        options: Mapping[str, object] | None = None,
    ) -> None:
        """``plugins``: the build's own list when empty (the default), None for every
        installed plugin."""
        self.build = build
        self.options = dict(options or {})
        self.netns = netns
        self.workdir = Path(workdir).resolve()
        self.log_levels = dict(log_levels or {})
        self.plugins = plugins if plugins is None or plugins else build.plugins
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self._started_at = 0.0
        self.conf = self.workdir / "strongswan.conf"
        self.vici_path = self.workdir / "charon.vici"
        self.log_path = self.workdir / "charon.log"
        self.stderr_path = self.workdir / "charon.stderr"
        self.swanctl_dir = self.workdir / "swanctl"

    # -- life cycle -----------------------------------------------------------------------

    def __enter__(self) -> Charon:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "STRONGSWAN_CONF": str(self.conf)}

    def start(self, wait: bool = True) -> None:
        """Start charon and (unless ``wait=False``) wait until its VICI socket answers.

        Starting several charons with ``wait=False`` then calling :meth:`wait_ready` on
        each lets them initialise in parallel.
        """
        if self.proc is not None:
            raise CharonError("charon already started")
        reason = available(self.build)
        if reason:
            raise CharonError(reason)
        self.workdir.mkdir(parents=True, exist_ok=True)
        for sub in ("x509", "x509ca", "private", "ecdsa", "rsa", "pkcs8", "conf.d"):
            (self.swanctl_dir / sub).mkdir(parents=True, exist_ok=True)
        self.vici_path.unlink(missing_ok=True)
        self.conf.write_text(render_strongswan_conf(self.workdir, self.log_levels,
                                                    self.plugins, self.build.plugin_conf_dir,
                                                    self.options))
        # ip netns exec already gives a fresh mount namespace; unshare -m makes sure the
        # tmpfs on /run stays private to this charon. exec keeps one pid to signal.
        script = (f"mount -t tmpfs tmpfs /run && mkdir -p {self.build.run_dir} "
                  f"&& exec {self.build.charon}")
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.netns, *UNSHARE, "sh", "-c", script],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._started_at = time.monotonic()
        if wait:
            self.wait_ready()

    def wait_ready(self) -> None:
        """Wait until the started charon answers on VICI; raise if it died or hangs."""
        if self.proc is None:
            raise CharonError("charon not started")
        deadline = self._started_at + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise CharonError(
                    f"charon in {self.netns} exited with {self.proc.returncode}: {self._tail()}"
                )
            if self.vici_path.exists():
                try:
                    self.version()
                    return
                except OSError:
                    pass
            time.sleep(0.2)
        self.stop()
        raise CharonError(f"charon in {self.netns}: no VICI after {self.start_timeout}s")

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM charon (it deletes its SAs and policies) and wait; SIGKILL if stuck."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        return terminate(proc, timeout)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _tail(self, n: int = 30) -> str:
        out = []
        for path in (self.stderr_path, self.log_path):
            if path.exists():
                out += path.read_text(errors="replace").splitlines()[-n:]
        return "\n".join(out)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # -- VICI -----------------------------------------------------------------------------

    def session(self, timeout: float = 120.0) -> Any:
        """A fresh ``vici.Session`` on this instance's socket (caller closes nothing)."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(str(self.vici_path))
        return vici.Session(sock)

    def _command(self, name: str, message: Mapping[str, Any] | None = None) -> Any:
        sess = self.session()
        try:
            return _decode(sess.request(name, dict(message) if message else None))
        except vici.exception.CommandException as exc:
            raise CharonError(f"{name} on {self.netns}: {exc}") from exc
        finally:
            sess.transport.socket.close()

    def _streamed(
        self, name: str, event: str, message: Mapping[str, Any], timeout: float
    ) -> list[str]:
        sess = self.session(timeout + 30)
        logs: list[str] = []
        try:
            for msg in sess.streamed_request(name, event, dict(message)):
                logs.append(str(_decode(msg).get("msg", "")))
        except vici.exception.CommandException as exc:
            raise CharonError(
                f"{name} {dict(message)} on {self.netns} failed: {exc}\n" + "\n".join(logs)
            ) from exc
        finally:
            sess.transport.socket.close()
        return logs

    def version(self) -> dict[str, Any]:
        result: dict[str, Any] = self._command("version")
        return result

    def swanctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``swanctl`` against this instance (its socket, its swanctl dir)."""
        env = {**self.env, "SWANCTL_DIR": str(self.swanctl_dir)}
        proc = subprocess.run(
            [str(self.build.swanctl), *args, "--uri", f"unix://{self.vici_path}"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if check and proc.returncode != 0:
            raise CharonError(
                f"swanctl {' '.join(args)} on {self.netns}: rc={proc.returncode}\n"
                f"{proc.stdout}{proc.stderr}"
            )
        return proc

    def load(
        self,
        conns: Iterable[SwanConn],
        secrets: Iterable[SwanSecret] = (),
        pools: Iterable[SwanPool] = (),
        *,
        certs: Mapping[str, bytes] | None = None,
        cacerts: Mapping[str, bytes] | None = None,
        keys: Mapping[str, bytes] | None = None,
        use_swanctl: bool = False,
    ) -> str:
        """Load connections, secrets, pools and credentials (PEM, by file name).

        Replaces what was loaded before (like ``swanctl --load-all``): connections and
        pools not given are unloaded, credentials cleared first, so one charon can serve
        several test cases. The rendered swanctl.conf is written to
        ``<workdir>/swanctl/swanctl.conf`` (and returned) either way; by default it is
        sent over VICI from this process, because each ``swanctl`` start costs ~30 s
        under TCG. ``use_swanctl=True`` loads it with ``swanctl --load-all`` instead.
        """
        conns, secrets, pools = list(conns), list(secrets), list(pools)
        text = render_swanctl(conns, secrets, pools)
        for sub, files in (("x509", certs), ("x509ca", cacerts), ("private", keys)):
            for fname, pem in (files or {}).items():
                path = self.swanctl_dir / sub / fname
                path.write_bytes(pem)
                if sub == "private":
                    path.chmod(0o600)
        conf = self.swanctl_dir / "swanctl.conf"
        conf.write_text(text)
        if use_swanctl:
            self.swanctl("--load-all", "--noprompt", "--file", str(conf))
            return text

        self._command("clear-creds")
        for pem in (certs or {}).values():
            self._command("load-cert", {"type": "X509", "flag": "NONE", "data": pem})
        for pem in (cacerts or {}).values():
            self._command("load-cert", {"type": "X509", "flag": "CA", "data": pem})
        for pem in (keys or {}).values():
            self._command("load-key", {"type": "any", "data": pem})
        for i, sec in enumerate(secrets, 1):
            self._command(
                "load-shared",
                {"id": f"{sec.kind.lower()}-{i}", "type": sec.kind.upper(), "data": sec.secret,
                 "owners": list(sec.ids)},
            )
        files = {**(certs or {}), **(cacerts or {})}
        loaded = self._command("get-conns").get("conns", [])
        for conn in conns:
            self._command("load-conn", {conn.name: _vici_section(conn.as_section(), files)})
        for name in set(loaded) - {c.name for c in conns}:
            self._command("unload-conn", {"name": name})
        old_pools = self._command("get-pools")
        for pool in pools:
            self._command("load-pool", {pool.name: _vici_section(pool.as_section(), files)})
        for name in set(old_pools) - {p.name for p in pools}:
            self._command("unload-pool", {"name": name})
        return text

    def initiate(self, child: str, ike: str | None = None, timeout: float = 90.0) -> list[str]:
        """Initiate CHILD_SA ``child`` (and its IKE_SA); blocks until up, raises if not."""
        msg: dict[str, Any] = {"child": child, "timeout": int(timeout * 1000)}
        if ike:
            msg["ike"] = ike
        return self._streamed("initiate", "control-log", msg, timeout)

    def terminate(
        self,
        *,
        ike: str | None = None,
        child: str | None = None,
        ike_id: str | int | None = None,
        timeout: float = 60.0,
    ) -> list[str]:
        """Terminate an IKE_SA (with its children) or one CHILD_SA, waiting for the peer."""
        msg: dict[str, Any] = {"timeout": int(timeout * 1000)}
        for key, val in (("ike", ike), ("child", child), ("ike-id", ike_id)):
            if val is not None:
                msg[key] = str(val)
        return self._streamed("terminate", "control-log", msg, timeout)

    def rekey(self, *, ike: str | None = None, child: str | None = None) -> None:
        """Start a rekey of an IKE_SA or a CHILD_SA (returns at once; poll list_sas)."""
        msg = {k: v for k, v in (("ike", ike), ("child", child)) if v is not None}
        self._command("rekey", msg)

    def list_sas(self, ike: str | None = None) -> list[SA]:
        """All IKE_SAs with their CHILD_SAs, as VICI reports them."""
        sess = self.session()
        out: list[SA] = []
        try:
            msg = {"ike": ike} if ike else {}
            for item in sess.list_sas(msg):
                for name, body in _decode(item).items():
                    out.append(SA(name, body))
        except vici.exception.CommandException as exc:
            raise CharonError(f"list-sas on {self.netns}: {exc}") from exc
        finally:
            sess.transport.socket.close()
        return out

    def wait_for(
        self,
        predicate: Callable[[list[SA]], bool],
        timeout: float = 60.0,
        what: str = "condition",
    ) -> list[SA]:
        """Poll ``list_sas`` until ``predicate`` holds; raise with the last state if not."""
        deadline = time.monotonic() + timeout
        sas: list[SA] = []
        while time.monotonic() < deadline:
            sas = self.list_sas()
            if predicate(sas):
                return sas
            time.sleep(0.5)
        raise CharonError(
            f"{self.netns}: {what} not reached in {timeout}s; SAs: "
            f"{[(s.name, s.state, s.child_states()) for s in sas]}\n{self._tail()}"
        )

    def wait_child_installed(self, child: str, timeout: float = 60.0) -> list[SA]:
        return self.wait_for(
            lambda sas: any(
                (name, state) == (child, "INSTALLED")
                for s in sas
                for name, state in s.child_states()
            ),
            timeout,
            f"CHILD_SA {child} INSTALLED",
        )

    def wait_ike_established(self, ike: str, timeout: float = 60.0) -> list[SA]:
        return self.wait_for(
            lambda sas: any(s.name == ike and s.state == "ESTABLISHED" for s in sas),
            timeout,
            f"IKE_SA {ike} ESTABLISHED",
        )
