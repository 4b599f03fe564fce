"""FreeRADIUS (Debian's `freeradius`, 3.2) started by a test: a minimal configuration in
a temporary directory (one client, a users file, EAP with MSCHAPv2), listening on
loopback (a free port; in a network namespace the test made, 1812); stopped after.
`available()` says why it cannot run. Passwords here are test-only."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

FREERADIUS = shutil.which("freeradius") or "/usr/sbin/freeradius"


def available() -> str | None:
    """Why FreeRADIUS cannot run here (None: it can)."""
    if not Path(FREERADIUS).exists():
        return "FreeRADIUS is not installed (deploy/setup.sh installs Debian's freeradius)"
    return None


_CONF = """\
prefix = /usr
exec_prefix = /usr
sysconfdir = /etc
localstatedir = /var
sbindir = /usr/sbin
logdir = {dir}
raddbdir = {dir}
confdir = {dir}
run_dir = {dir}
libdir = /usr/lib/freeradius
dictdir = /usr/share/freeradius
pidfile = {dir}/radiusd.pid
name = radiusd
max_request_time = 30
cleanup_delay = 5
max_requests = 1024
hostname_lookups = no
log {{
    destination = files
    file = {dir}/radius.log
    auth = yes
}}
security {{
    allow_core_dumps = no
    max_attributes = 200
    reject_delay = 0
    status_server = no
}}
client xfrmctl {{
    ipaddr = 127.0.0.1
    secret = "{secret}"
    require_message_authenticator = yes
}}
modules {{
    files {{
        filename = {dir}/users
    }}
    mschap {{
        use_mppe = yes
        require_encryption = yes
        require_strong = yes
    }}
    eap {{
        default_eap_type = mschapv2
        timer_expire = 60
        ignore_unknown_eap_types = no
        max_sessions = 4096
        mschapv2 {{
            send_error = no
        }}
    }}
}}
server default {{
    listen {{
        type = auth
        ipaddr = 127.0.0.1
        port = {port}
    }}
    authorize {{
        eap {{
            ok = return
        }}
        files
    }}
    authenticate {{
        Auth-Type MS-CHAP {{
            mschap
        }}
        Auth-Type EAP {{
            eap
        }}
    }}
}}
"""


@dataclass
class FreeRadius:
    address: str
    port: int
    secret: str
    directory: Path
    process: subprocess.Popen[bytes]

    def log_text(self) -> str:
        path = self.directory / "stdout.log"
        return path.read_text(errors="replace") if path.exists() else ""


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _users(users: Mapping[str, str]) -> str:
    return "".join(f'"{name}" Cleartext-Password := "{password}"\n'
                   for name, password in users.items())


@contextmanager
def freeradius(directory: Path, users: Mapping[str, str], secret: str,
               netns: str | None = None) -> Iterator[FreeRadius]:
    """FreeRADIUS on 127.0.0.1 (of `netns` if given) with these users (name -> password)."""
    directory.mkdir(parents=True, exist_ok=True)
    port = 1812 if netns else _free_udp_port()
    inside = ["ip", "netns", "exec", netns] if netns else []
    (directory / "radiusd.conf").write_text(_CONF.format(dir=directory, port=port,
                                                         secret=secret))
    (directory / "users").write_text(_users(users))
    check = subprocess.run([*inside, FREERADIUS, "-C", "-d", str(directory)],
                           capture_output=True,
                           text=True, timeout=60, check=False)
    if check.returncode != 0:
        raise RuntimeError(f"FreeRADIUS refused its configuration:\n{check.stdout}\n"
                           f"{check.stderr}")
    out = open(directory / "stdout.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen([*inside, FREERADIUS, "-f", "-xx", "-l", "stdout", "-d",
                                str(directory)], stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120  # minutes under TCG in the lab VM
        while "Ready to process requests" not in (directory / "stdout.log").read_text(
                errors="replace"):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("FreeRADIUS did not start:\n" +
                                   (directory / "stdout.log").read_text(errors="replace"))
            time.sleep(0.1)
        yield FreeRadius("127.0.0.1", port, secret, directory, process)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        out.close()
