"""API fixtures: a SQLite database in a temp dir, the fake controller, tokens per scope."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from api.main import create_app
from tests.api.fakes import FakeController
from xfrmctl.config import Settings
from xfrmctl.store import repo
from xfrmctl.store.db import Database
from xfrmctl.store.models import Base
from xfrmctl.store.tokens import Scope


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(database_url=f"sqlite:///{tmp_path}/xfrmctl.db",
                    secret_key_file=tmp_path / "keys" / "secret.key", api_socket=None)


@pytest.fixture
def db(settings: Settings) -> Iterator[Database]:
    database = Database(settings.database_url)
    Base.metadata.create_all(database.engine)
    yield database
    database.dispose()


@pytest.fixture
def controller() -> FakeController:
    return FakeController()


@pytest.fixture
def app(settings: Settings, db: Database, controller: FakeController) -> FastAPI:
    return create_app(settings, controller, db=db)


def make_token(db: Database, name: str, scope: Scope) -> str:
    return db.call(repo.create_token, name=name, scopes=[scope], actor=None)[1]


@pytest.fixture
def tokens(db: Database) -> dict[Scope, str]:
    return {scope: make_token(db, f"t-{scope}", scope) for scope in Scope}


@pytest.fixture
async def client(app: FastAPI, tokens: dict[Scope, str]) -> AsyncIterator[httpx.AsyncClient]:
    """An admin client."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test/api/v1",
                                 headers={"authorization": f"Bearer {tokens[Scope.ADMIN]}"}
                                 ) as c:
        yield c


@pytest.fixture
async def anon(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


async def psk_secret(client: httpx.AsyncClient, name: str = "gw-psk") -> int:
    """A PSK secret (a psk connection needs one); returns its id."""
    r = await client.post("/secrets", json={"name": name, "kind": "psk",
                                            "value": "documentation-only-psk"})
    assert r.status_code == 201, r.text
    return int(r.json()["id"])
