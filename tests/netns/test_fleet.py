"""A fleet of three gateways on one PostgreSQL database (a throwaway server started by the
test set-up): `xfrmctl daemon --db --gateway NAME --kernel memory --api` in three network
namespaces. IKE is real (UDP between the namespaces), the kernel is the in-memory one.

The daemons are shared by the module's cases, which run in order: registration, a
tunnel between two of them declared through the third's API, concurrent edits through two
APIs, a gateway killed (shown unreachable, its SAs stale, never deleted) and restarted
(it reconciles its own rows).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.netns import Netns, netns, netns_pair, require_root, veth
from tests.support.postgres import fresh_database
from tests.support.xfrmctl_daemon import PYTHON, REPO, XfrmctlDaemon, wait_until
from xfrmctl.daemon.dbconfig import prepare_database
from xfrmctl.store import repo
from xfrmctl.store.db import Database
from xfrmctl.store.secrets import SecretBox
from xfrmctl.store.tokens import Scope

pytestmark = pytest.mark.netns
PSK = "fleet test-only psk 41c9"
ADDRESSES = {"gw-a": "192.0.2.1", "gw-b": "192.0.2.2", "gw-c": "192.0.2.3"}
HEARTBEAT = 2  # seconds: unreachable after 3 missed (a loaded CI host stalls starts)


class FleetDaemon(XfrmctlDaemon):
    """A gateway of the fleet: configured by the shared database only."""

    def __init__(self, ns: Netns, workdir: Path, name: str, env: dict[str, str]) -> None:
        super().__init__(ns.name, workdir, {}, api=True, env={
            **env, "XFRMCTL_API_SOCKET": str(workdir / "api.sock")})
        self.name = name

    def argv(self) -> list[str]:
        argv = [arg for arg in super().argv() if arg not in ("-c", str(self.config_path))]
        return [*argv, "--db", "--kernel", "memory", "--gateway", self.name,
                "--listen", ADDRESSES[self.name]]

    def wait_api(self) -> None:
        """The API socket is bound a moment after "listening on"."""
        wait_until((self.workdir / "api.sock").exists, 30, lambda: f"no API\n{self.tail()}",
                   0.1)

    def client(self, token: str) -> httpx.Client:
        return httpx.Client(transport=httpx.HTTPTransport(uds=str(self.workdir / "api.sock")),
                            base_url="http://fleet/api/v1",
                            headers={"authorization": f"Bearer {token}"}, timeout=30)


@dataclass
class Fleet:
    daemons: dict[str, FleetDaemon]
    token: str
    db: Database

    def call(self, via: str, method: str, path: str, status: int = 200, **kw: Any) -> Any:
        with self.daemons[via].client(self.token) as client:
            r = client.request(method, path, **kw)
        assert r.status_code == status, r.text
        return r.json() if r.content else None

    def cli(self, *args: str, via: str = "gw-c") -> str:
        """`xfrmctl` against a gateway's API socket."""
        env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "250"}
        argv = [str(PYTHON), "-m", "xfrmctl.cli", "--url",
                f"unix://{self.daemons[via].workdir / 'api.sock'}", "--token", self.token,
                *args]
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60,
                              check=True).stdout

    def gateways(self, via: str = "gw-c") -> dict[str, dict[str, Any]]:
        return {g["name"]: g for g in self.call(via, "GET", "/gateways")["data"]}

    def ike_sas(self, gateway: str, via: str = "gw-c") -> list[dict[str, Any]]:
        data: list[dict[str, Any]] = self.call(
            via, "GET", "/ike-sas", params={"gateway": gateway})["data"]
        return data


@pytest.fixture(scope="module")
def fleet(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    require_root()
    url = fresh_database(postgres_url, "fleet")
    prepare_database(url)
    work = tmp_path_factory.mktemp("fleet")
    SecretBox.from_file(work / "secret.key")  # one key for the fleet's secrets
    db = Database(url)
    token = db.call(repo.create_token, name="fleet-test", scopes=[Scope.ADMIN], actor=None)[1]
    env = {"XFRMCTL_DATABASE_URL": url, "XFRMCTL_SECRET_KEY_FILE": str(work / "secret.key"),
           "XFRMCTL_HEARTBEAT_INTERVAL": str(HEARTBEAT), "XFRMCTL_CONFIG": "/nonexistent"}
    with netns_pair(prefix="fl") as (a, b), netns("flc") as c:
        veth(a, c, None, f"{ADDRESSES['gw-c']}/24", name="vethc")  # (no dummy module)
        daemons = {name: FleetDaemon(ns, work / name, name, env)
                   for name, ns in (("gw-a", a), ("gw-b", b), ("gw-c", c))}
        try:
            for daemon in daemons.values():
                daemon.start(wait=False)
            for daemon in daemons.values():
                daemon.wait_ready(120)
                daemon.wait_api()
            yield Fleet(daemons, token, db)
        finally:
            for daemon in daemons.values():
                daemon.stop()
            db.dispose()


def test_every_daemon_registers_and_heartbeats(fleet: Fleet) -> None:
    wait_until(lambda: all(g["reachable"] for g in fleet.gateways().values()), 10,
               lambda: f"not all reachable: {fleet.gateways()}")
    first = fleet.gateways()
    assert set(first) == set(ADDRESSES)
    for name, gateway in first.items():
        assert gateway["reachable"] and gateway["addresses"] == [ADDRESSES[name]]
        assert gateway["heartbeat_interval"] == HEARTBEAT and gateway["version"]
    time.sleep(HEARTBEAT * 1.5)
    later = fleet.gateways(via="gw-a")  # any gateway's API serves the fleet view
    assert all(later[n]["heartbeat_at"] > first[n]["heartbeat_at"] for n in ADDRESSES)
    status = fleet.call("gw-b", "GET", "/status")
    assert status["gateway"] == "gw-b"
    assert {g["name"] for g in status["gateways"]} == set(ADDRESSES)


def _declare_tunnel(fleet: Fleet) -> dict[str, int]:
    """The tunnel gw-a <-> gw-b, declared through gw-c's API: one end per gateway, each
    reaching its gateway through the database (NOTIFY); then gw-a starts it."""
    gw = fleet.gateways()
    secret = fleet.call("gw-c", "POST", "/secrets", 201,
                        json={"name": "a-b-psk", "kind": "psk", "value": PSK})["id"]
    ends = {}
    for name, here, there, lan, far in (
            ("b-to-a", "gw-b", "gw-a", "203.0.113.0/24", "198.51.100.0/24"),
            ("a-to-b", "gw-a", "gw-b", "198.51.100.0/24", "203.0.113.0/24")):
        mark = fleet.daemons[here].mark()
        conn = fleet.call("gw-c", "POST", "/connections", 201, json={
            "name": name, "gateway_id": gw[here]["id"], "secret_id": secret,
            "local_addrs": [ADDRESSES[here]], "remote_addrs": [ADDRESSES[there]]})
        fleet.call("gw-c", "POST", f"/connections/{conn['id']}/children", 201,
                   json={"name": "lan", "local_ts": [lan], "remote_ts": [far]})
        loaded = f"{name}: new children lan"  # the child reached its running gateway
        fleet.daemons[here].wait_line(lambda e: e.get("message") == loaded,  # noqa: B023
                                      10, loaded, mark)
        ends[here] = conn["id"]
    fleet.call("gw-a", "POST", f"/connections/{ends['gw-a']}/initiate", 202)
    return ends


def test_a_tunnel_declared_through_a_third_gateway_comes_up(fleet: Fleet) -> None:
    marks = {n: d.mark() for n, d in fleet.daemons.items()}
    ends = _declare_tunnel(fleet)
    fleet.daemons["gw-a"].wait_event("ChildSaNegotiated", 60, marks["gw-a"],
                                     connection="a-to-b")
    fleet.daemons["gw-b"].wait_event("ChildSaNegotiated", 60, marks["gw-b"],
                                     connection="b-to-a")
    # the third sees both ends in the fleet view, recorded by their gateways
    wait_until(lambda: all(fleet.ike_sas(g) for g in ("gw-a", "gw-b")), 10,
               lambda: f"fleet view: {fleet.ike_sas('gw-a')} {fleet.ike_sas('gw-b')}")
    (sa_a,), (sa_b,) = fleet.ike_sas("gw-a"), fleet.ike_sas("gw-b")
    assert sa_a["id"].startswith("gw-a:") and sa_b["id"].startswith("gw-b:")
    assert (sa_a["connection_id"], sa_b["connection_id"]) == (ends["gw-a"], ends["gw-b"])
    assert (sa_a["spi_i"], sa_a["spi_r"]) == (sa_b["spi_i"], sa_b["spi_r"])
    assert sa_a["state"] == sa_b["state"] == "ESTABLISHED" and not sa_a["stale"]
    children = fleet.call("gw-c", "GET", "/child-sas", params={"gateway": "gw-b"})["data"]
    assert [c["name"] for c in children] == ["lan"] and children[0]["gateway"] == "gw-b"
    # each gateway runs only its own end; the third runs neither
    assert fleet.call("gw-c", "GET", "/ike-sas")["count"] == 0
    assert not fleet.daemons["gw-c"].events("IkeSaUp", after=marks["gw-c"])
    assert [c["name"] for c in fleet.call("gw-a", "GET", "/connections",
                                          params={"gateway": "gw-a"})["data"]] == ["a-to-b"]
    status = {c["name"]: c for c in fleet.call("gw-c", "GET", "/status")["connections"]}
    assert status["a-to-b"]["gateway"] == "gw-a"
    assert status["a-to-b"]["detail"] == {"message": "runs on gateway gw-a"}
    assert fleet.gateways()["gw-a"]["ike_sas"] == 1
    # the tunnel's PSK never leaves through the fleet view
    assert PSK not in str(fleet.call("gw-c", "GET", "/connections"))


def test_concurrent_edits_through_two_apis_lose_no_write(fleet: Fleet) -> None:
    """Two operators read the same version through two gateways' APIs and both write:
    the second gets 409 (not a silent overwrite), reads again and re-applies."""
    secret = fleet.call("gw-a", "GET", "/secrets")["data"][0]["id"]
    conn = fleet.call("gw-a", "POST", "/connections", 201, json={
        "name": "shared-edit", "enabled": False, "secret_id": secret})
    path = f"/connections/{conn['id']}"
    with fleet.daemons["gw-a"].client(fleet.token) as a, \
            fleet.daemons["gw-b"].client(fleet.token) as b:
        etag_a, etag_b = a.get(path).headers["ETag"], b.get(path).headers["ETag"]
        assert etag_a == etag_b == f'"{conn["version"]}"'
        first = a.patch(path, json={"dpd_delay": 30}, headers={"If-Match": etag_a})
        assert first.status_code == 200 and first.json()["version"] == conn["version"] + 1
        second = b.patch(path, json={"rekey_time": 7200}, headers={"If-Match": etag_b})
        assert second.status_code == 409 and "changed since version" in second.json()["detail"]
        again = b.get(path)
        assert again.json()["dpd_delay"] == 30
        retried = b.patch(path, json={"rekey_time": 7200},
                          headers={"If-Match": again.headers["ETag"]})
        assert retried.status_code == 200, retried.text
        bad = b.patch(path, json={"rekey_time": 1}, headers={"If-Match": "soon"})
        assert bad.status_code == 422 and "If-Match" in bad.text
        assert b.delete(path, headers={"If-Match": etag_a}).status_code == 409
    final = fleet.call("gw-c", "GET", path)
    assert (final["dpd_delay"], final["rekey_time"]) == (30, 7200)  # both writes kept
    fleet.call("gw-c", "DELETE", path, 204)


def test_a_killed_gateway_is_unreachable_with_stale_sas_then_reconciles(
        fleet: Fleet) -> None:
    gw_b = fleet.daemons["gw-b"]
    (before,) = fleet.ike_sas("gw-b")
    assert gw_b.proc is not None
    gw_b.proc.kill()  # no goodbye: the heartbeat just stops
    gw_b.proc.wait(10)
    gw_b.proc = None
    wait_until(lambda: not fleet.gateways()["gw-b"]["reachable"], 4 * HEARTBEAT + 5,
               lambda: f"gw-b still reachable: {fleet.gateways()['gw-b']}")
    (kept,) = fleet.ike_sas("gw-b")  # shown stale, never deleted
    assert kept["id"] == before["id"] and kept["stale"]
    listed = fleet.cli("--gateway", "gw-b", "sa", "list")  # the CLI's fleet view
    assert before["id"] in listed and "ESTABLISHED (stale)" in listed
    assert "gw-a:" not in listed
    assert "UNREACHABLE (SAs stale): gw-b" in fleet.cli("status").splitlines()[0]
    assert fleet.gateways()["gw-a"]["reachable"] and not fleet.ike_sas("gw-a")[0]["stale"]
    with fleet.daemons["gw-c"].client(fleet.token) as c:  # metrics labelled by gateway
        metrics = c.get("http://fleet/metrics").text
    assert 'xfrmctl_gateway_up{gateway="gw-b"} 0.0' in metrics
    assert 'xfrmctl_gateway_up{gateway="gw-a"} 1.0' in metrics
    assert 'xfrmctl_gateway_ike_sas{gateway="gw-b"} 1.0' in metrics

    mark_a = fleet.daemons["gw-a"].mark()
    (gw_b.workdir / "api.sock").unlink(missing_ok=True)  # left behind by the kill
    gw_b.start()  # the same name: it takes its row back and replaces its own SA rows
    gw_b.wait_api()
    wait_until(lambda: fleet.gateways()["gw-b"]["reachable"], 10,
               lambda: f"{fleet.gateways()['gw-b']}\n{gw_b.tail()}")
    wait_until(lambda: before["id"] not in {s["id"] for s in fleet.ike_sas("gw-b")}, 10,
               lambda: f"gw-b's old SA still recorded: {fleet.ike_sas('gw-b')}")
    assert len(fleet.ike_sas("gw-a")) == 1  # another gateway's rows are not its to touch
    # gw-a brings the tunnel up again (the restarted gw-b lost its SAs with its memory)
    a_conn = fleet.ike_sas("gw-a")[0]["connection_id"]
    fleet.call("gw-a", "POST", f"/connections/{a_conn}/terminate", 202)
    fleet.call("gw-a", "POST", f"/connections/{a_conn}/initiate", 202)
    fleet.daemons["gw-a"].wait_event("ChildSaNegotiated", 60, mark_a, connection="a-to-b")
    wait_until(lambda: [s["state"] for s in fleet.ike_sas("gw-b")] == ["ESTABLISHED"], 10,
               lambda: f"gw-b after the restart: {fleet.ike_sas('gw-b')}")
    assert not fleet.ike_sas("gw-b")[0]["stale"]
