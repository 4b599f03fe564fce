"""API fixtures: the app, database, fake controller and tokens (tests/support/api_app.py),
and clients over them."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from tests.support.api_app import app, controller, db, settings, tokens
from xfrmctl.store.tokens import Scope

__all__ = ["app", "controller", "db", "settings", "tokens"]  # fixtures, shared


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
