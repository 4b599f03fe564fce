"""The API app over a SQLite database in a temp dir and the fake controller: fixtures
(settings, db, controller, app, tokens) and helpers (make_token, psk_secret)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from api.main import create_app
from tests.support.fake_controller import FakeController
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


async def psk_secret(client: httpx.AsyncClient, name: str = "gw-psk") -> int:
    """A PSK secret (a psk connection needs one); returns its id."""
    r = await client.post("/secrets", json={"name": name, "kind": "psk",
                                            "value": "documentation-only-psk"})
    assert r.status_code == 201, r.text
    return int(r.json()["id"])
