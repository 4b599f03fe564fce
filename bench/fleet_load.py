"""A fleet's load on one PostgreSQL database: 50 gateways' worth of recorded state and
10,000 connections; how fast the API lists them, and how soon a change made through the
API is applied by the gateway that runs it (NOTIFY, then its configuration re-read).

    sudo .venv/bin/python bench/fleet_load.py [--gateways 50] [--connections 10000]
        [--requests 200] [--changes 30]

Starts its own throwaway PostgreSQL server (as the `postgres` user, unix socket only,
removed on exit). The API is the real app (no daemon: the fleet view), called in process
over ASGI, so the figures are the API's and the database's, without a network. See
bench/README.md for what was measured.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from sqlalchemy import insert, select  # noqa: E402

from api.main import create_app  # noqa: E402
from tests.support.postgres import fresh_database, throwaway_postgres  # noqa: E402
from xfrmctl.config import Settings  # noqa: E402
from xfrmctl.daemon.dbconfig import DbSource, prepare_database  # noqa: E402
from xfrmctl.daemon.fleet import Membership, libpq_url, listen_for_changes  # noqa: E402
from xfrmctl.store import fleet, repo  # noqa: E402
from xfrmctl.store import models as m  # noqa: E402
from xfrmctl.store.db import Database  # noqa: E402
from xfrmctl.store.secrets import SecretBox  # noqa: E402
from xfrmctl.store.tokens import Scope  # noqa: E402


def populate(db: Database, box: SecretBox, gateways: int, connections: int) -> list[int]:
    """Gateways, connections (each with a child, assigned round-robin) and, per gateway,
    one recorded IKE_SA and CHILD_SA per connection it runs. Returns the gateway ids."""
    ids = [db.call(fleet.register_gateway, f"gw-{n}", [f"192.0.2.{n + 1}"], "bench",
                   interval=5).id for n in range(gateways)]
    psk = db.call(repo.create_secret, box, name="bench-psk", kind=m.SecretKind.PSK,
                  value=b"bench only", actor="bench").id
    now = m.utcnow()
    conns = [{"name": f"c{n}", "gateway_id": ids[n % gateways], "secret_id": psk,
              "local_addrs": [f"192.0.2.{n % gateways + 1}"], "remote_addrs": ["203.0.113.9"],
              "created_at": now, "updated_at": now} for n in range(connections)]

    def load(session: Any) -> None:
        session.execute(insert(m.Connection), conns)
        by_name = {r.name: r.id for r in session.execute(
            select(m.Connection.id, m.Connection.name))}
        session.execute(insert(m.Child), [
            {"connection_id": by_name[c["name"]], "name": "lan",
             "local_ts": ["198.51.100.0/24"], "remote_ts": ["203.0.113.0/24"],
             "created_at": now, "updated_at": now} for c in conns])
        ikes, children = [], []
        for n, c in enumerate(conns):
            gw = c["gateway_id"]
            ikes.append({"id": f"gw-{gw}:{n}", "gateway_id": gw, "connection_id":
                         by_name[c["name"]], "state": "ESTABLISHED", "initiator": True,
                         "spi_i": f"{n:016x}", "spi_r": f"{n + 1:016x}",
                         "local_addr": c["local_addrs"][0], "local_port": 500,
                         "remote_addr": "203.0.113.9", "remote_port": 500,
                         "established_at": now, "updated_at": now})
            children.append({"id": f"gw-{gw}:{n:08x}", "gateway_id": gw,
                             "ike_sa_id": f"gw-{gw}:{n}", "name": "lan",
                             "state": "INSTALLED", "mode": "tunnel", "protocol": "esp",
                             "spi_in": f"{n:08x}", "spi_out": f"{n + 1:08x}",
                             "local_ts": ["198.51.100.0/24"], "remote_ts": ["203.0.113.0/24"],
                             "updated_at": now})
        session.execute(insert(m.IkeSaRecord), ikes)
        session.execute(insert(m.ChildSaRecord), children)

    db.call(load)
    return ids


def percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return (f"p50 {statistics.median(ordered) * 1000:7.1f} ms  p99 {p99 * 1000:7.1f} ms  "
            f"max {ordered[-1] * 1000:7.1f} ms  (n={len(ordered)})")


async def listings(api: httpx.AsyncClient, requests: int) -> None:
    for label, path, params in (
            ("GET /connections (page of 100)", "/connections", {"limit": 100}),
            ("GET /connections?gateway= (100)", "/connections",
             {"gateway": "gw-7", "limit": 100}),
            ("GET /gateways", "/gateways", {}),
            ("GET /ike-sas?gateway=", "/ike-sas", {"gateway": "gw-7", "limit": 100}),
            ("GET /child-sas?gateway=", "/child-sas", {"gateway": "gw-7", "limit": 100}),
            ("GET /status (fleet)", "/status", {})):
        samples = []
        for _ in range(requests):
            start = time.perf_counter()
            r = await api.get(path, params=params)
            samples.append(time.perf_counter() - start)
            assert r.status_code == 200, r.text
        print(f"{label:36s} {percentiles(samples)}")


async def changes(api: httpx.AsyncClient, url: str, source: DbSource, count: int) -> None:
    """PATCH a connection of gw-0 through the API; time until gw-0's re-read
    configuration (DbSource.load, as its daemon does on NOTIFY) has the new value."""
    seen: asyncio.Queue[tuple[float, int]] = asyncio.Queue()

    async def reload() -> None:
        conf = await source.load()
        seen.put_nowait((time.perf_counter(), conf.connections["c0"].dpd_delay))

    libpq = libpq_url(url)
    assert libpq is not None
    task = asyncio.get_running_loop().create_task(listen_for_changes(libpq, reload))
    await asyncio.wait_for(seen.get(), 60)  # the first (resync) load
    conn = (await api.get("/connections/c0")).json()
    samples = []
    for n in range(1, count + 1):
        start = time.perf_counter()
        r = await api.patch(f"/connections/{conn['id']}", json={"dpd_delay": n})
        assert r.status_code == 200, r.text
        while True:
            at, value = await asyncio.wait_for(seen.get(), 30)
            if value == n:
                samples.append(at - start)
                break
    task.cancel()
    print(f"{'change applied (API -> gateway conf)':36s} {percentiles(samples)}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gateways", type=int, default=50)
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--changes", type=int, default=30)
    args = parser.parse_args()
    with throwaway_postgres() as server, TemporaryDirectory() as tmp:
        url = fresh_database(server, "bench")
        prepare_database(url)
        key = Path(tmp) / "secret.key"
        box = SecretBox.from_file(key)
        db = Database(url)
        start = time.perf_counter()
        ids = populate(db, box, args.gateways, args.connections)
        print(f"populated {args.gateways} gateways, {args.connections} connections, as many "
              f"IKE_SA and CHILD_SA rows in {time.perf_counter() - start:.1f} s")
        token = db.call(repo.create_token, name="bench", scopes=[Scope.ADMIN], actor=None)[1]
        settings = Settings(database_url=url, secret_key_file=key, api_socket=None)
        app = create_app(settings, None, db=db)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://bench/api/v1",
                                     headers={"authorization": f"Bearer {token}"}) as api:
            await listings(api, args.requests)
            source = DbSource(Database(url), box, member=Membership(ids[0], "gw-0", 5))
            await changes(api, url, source, args.changes)
            source.db.dispose()
        db.dispose()


if __name__ == "__main__":
    asyncio.run(main())
