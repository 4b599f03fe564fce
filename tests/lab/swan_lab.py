"""Our daemon against strongSwan in the lab: the module-scoped lab (a gateway pair, charon,
our daemon), the charon side of each interop case, and log keeping on failure."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.lab.conftest import GatewayPair
from tests.lab.interop_common import (
    LEFT_ID,
    RIGHT_ID,
    Case,
    case_logs,
    routed_pair,
    write_credentials,
)
from tests.support.strongswan import SA, Charon, SwanConn
from tests.support.xfrmctl_daemon import XfrmctlDaemon, daemon_conf

# charon's names of the ESP proposals' key exchange groups
SWAN_DH = {"CURVE25519": "CURVE_25519", "ECP_384": "ECP_384", "MODP_2048": "MODP_2048"}


@dataclass
class Lab:
    pair: GatewayPair
    charon: Charon
    daemon: XfrmctlDaemon
    certs: dict[str, bytes]
    credentials: Path
    results: Path
    names: Iterator[int] = field(default_factory=lambda: itertools.count(1))


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, lab_results: Path) -> Iterator[Lab]:
    work = tmp_path_factory.mktemp("interop")
    certs = write_credentials(work / "credentials")
    with routed_pair("xi") as pair:
        daemon = XfrmctlDaemon(pair.left.netns, work / "daemon",
                               daemon_conf([pair.left.outer], {}))
        charon = Charon(pair.right.netns, work / "charon")
        daemon.start(wait=False)  # both cold starts at once
        try:
            charon.start()
            daemon.wait_ready()
            yield Lab(pair, charon, daemon, certs, work / "credentials", lab_results)
        finally:
            charon.stop()
            daemon.stop()


def swan_conn(lab: Lab, case: Case) -> SwanConn:
    me, peer = lab.pair.right, lab.pair.left
    if case.mode == "transport":
        local_ts, remote_ts = ["dynamic"], ["dynamic"]
    elif case.narrow:
        local_ts, remote_ts = [f"{me.inner}/32"], [f"{peer.inner}/32"]
    elif case.vip:
        local_ts, remote_ts = ["dynamic"], [peer.subnet]  # the client's virtual IP
    else:
        local_ts, remote_ts = [me.subnet], [peer.subnet]
    return SwanConn(
        "gw", child_name="net", local_addrs=[me.outer], remote_addrs=[peer.outer],
        local_id=RIGHT_ID, remote_id=LEFT_ID, proposals=[case.ike], esp_proposals=[case.esp],
        local_ts=local_ts, remote_ts=remote_ts, mode=case.mode,
        encap=True if case.encap and not case.we_initiate else None,
        auth="pubkey" if case.x509 else "psk",
        local_cert="right.pem" if case.x509 else None,
        remote_cacert="ca.pem" if case.x509 else None,
        vips=["0.0.0.0"] if case.vip else (),
        child_rekey_time="1h", child_life_time="2h", rekey_time="4h")


def swan_child(sas: list[SA]) -> dict[str, Any]:
    kids = [c for sa in sas for c in sa.children.values() if c.get("state") == "INSTALLED"]
    assert kids, [(s.name, s.state, s.child_states()) for s in sas]
    return kids[-1]


@pytest.fixture
def keep_logs(request: pytest.FixtureRequest, lab: Lab) -> Iterator[None]:
    failed = yield from case_logs(
        request, lab.results, "interop-logs",
        [(lab.daemon.log_path, "xfrmctl.log"), (lab.charon.log_path, "charon.log")],
        [(lab.daemon.config_path, "xfrmctl.yaml"),
         (lab.charon.swanctl_dir / "swanctl.conf", "swanctl.conf")])
    if failed:  # leave nothing up for the next case
        for sa in lab.charon.list_sas():
            lab.charon.terminate(ike_id=sa.uniqueid, timeout=30)
