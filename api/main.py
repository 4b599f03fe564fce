"""The FastAPI application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI
from pydantic import BaseModel

from xfrmctl.config import Settings
from xfrmctl.port import Controller
from xfrmctl.store.bus import EventBus
from xfrmctl.store.db import Database
from xfrmctl.store.secrets import SecretBox

from . import errors
from .auth import AuthFirst
from .deps import Services
from .routers import (
    certificates,
    children,
    connections,
    eap_users,
    events,
    gateways,
    peers,
    policies,
    proposals,
    sas,
    secrets,
    status,
    system,
    tokens,
)
from .throttle import AuthThrottle
from .ui import router as dashboard

API_PREFIX = "/api/v1"


class ErrorPublic(BaseModel):
    detail: str


# Documented on every API operation (422 comes from FastAPI itself).
COMMON_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorPublic, "description": "missing, invalid or revoked token"},
    403: {"model": ErrorPublic, "description": "the token lacks the needed scope"},
    404: {"model": ErrorPublic, "description": "unknown id"},
    409: {"model": ErrorPublic, "description": "conflict: name in use, still referenced, "
                                                "or action not possible now"},
    429: {"model": ErrorPublic, "description": "this client failed to authenticate too "
                                                "often: wait Retry-After seconds"},
    503: {"model": ErrorPublic, "description": "the daemon is not running"},
}


def api_router() -> APIRouter:
    router = APIRouter(prefix=API_PREFIX, responses=COMMON_RESPONSES)
    for sub in (peers.router, connections.router, children.router, proposals.router,
                secrets.router, eap_users.router, certificates.ca_router, certificates.router,
                certificates.crl_router,
                sas.ike_router, sas.child_router, policies.router, policies.kernel_router,
                status.router, events.router, tokens.router, gateways.router):
        router.include_router(sub)
    return router


def create_app(settings: Settings, controller: Controller | None = None, *,
               db: Database | None = None, bus: EventBus | None = None,
               gateway: str | None = None) -> FastAPI:
    """Build the app. The daemon passes its own `db` and `bus` so that protocol events it
    records reach the SSE stream; standalone, the app makes its own."""
    own_db = db is None
    database = db if db is not None else Database(settings.database_url)
    event_bus = bus if bus is not None else EventBus()
    database.listeners.append(event_bus.publish)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        if own_db:
            database.dispose()

    app = FastAPI(title="xfrmctl", version="0.1.0", lifespan=lifespan,
                  description="Linux IPsec control plane: desired state, live SAs, actions.")
    app.state.services = Services(
        settings=settings, db=database, box=SecretBox.from_file(settings.secret_key_file),
        bus=event_bus, controller=controller,
        throttle=AuthThrottle(maximum=settings.auth_backoff_max), gateway=gateway)
    app.add_middleware(AuthFirst)
    errors.install(app)
    app.include_router(api_router())
    app.include_router(system.router, responses={
        code: COMMON_RESPONSES[code] for code in (401, 403, 429)})
    dashboard.install(app)
    return app
