"""Dependencies: the app's services, authentication with scopes, pagination."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Path, Query, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from xfrmctl.config import Settings
from xfrmctl.port import Controller
from xfrmctl.store import repo
from xfrmctl.store.bus import EventBus
from xfrmctl.store.db import Database
from xfrmctl.store.secrets import SecretBox
from xfrmctl.store.tokens import Scope, allows

from .throttle import AuthThrottle
from .ui.session import CSRF_HEADER, CsrfRefused, browser_token


@dataclass
class Services:
    """Everything the routers need, held on `app.state.services`."""

    settings: Settings
    db: Database
    box: SecretBox
    bus: EventBus
    controller: Controller | None
    throttle: AuthThrottle = field(default_factory=AuthThrottle)
    gateway: str | None = None  # the daemon's name in the fleet (None: no daemon)


@dataclass(frozen=True)
class Principal:
    token_id: int
    name: str
    scopes: tuple[str, ...]

    @property
    def actor(self) -> str:
        return f"token:{self.name}"


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def get_db(services: ServicesDep) -> Database:
    return services.db


DbDep = Annotated[Database, Depends(get_db)]


def get_controller(services: ServicesDep) -> Controller:
    if services.controller is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "the daemon is not running")
    return services.controller


ControllerDep = Annotated[Controller, Depends(get_controller)]
_bearer = HTTPBearer(auto_error=False, description="API token (`xfrmctl token create`)")


class AuthFailed(Exception):
    """Authentication refused: the HTTP status, detail and headers to answer with."""

    def __init__(self, status_code: int, detail: str, headers: dict[str, str]) -> None:
        super().__init__(detail)
        self.status_code, self.detail, self.headers = status_code, detail, headers


def client_key(scope: Mapping[str, Any]) -> str:
    """Who is asking, for the back-off: the peer's IP address, or `uid:N` on the unix
    socket (set from SO_PEERCRED by api.server)."""
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


def bearer_token(headers: Mapping[str, str]) -> str | None:
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def request_token(headers: Mapping[str, str], method: str) -> str | None:
    """The bearer token; without one, the dashboard session's token (a state-changing
    request must carry the session's CSRF token: AuthFailed 403 otherwise)."""
    token = bearer_token(headers)
    if token is not None:
        return token
    try:
        return browser_token(headers.get("cookie"), headers.get(CSRF_HEADER), method)
    except CsrfRefused as exc:
        raise AuthFailed(status.HTTP_403_FORBIDDEN, str(exc), {}) from None


async def authenticate(services: Services, client: str, token: str | None) -> Principal:
    """The principal for `token`, or AuthFailed: 429 while `client` is backing off after
    failures (its token is not even checked), 401 for a missing or invalid token."""
    wait = services.throttle.retry_after(client)
    if wait > 0:
        raise AuthFailed(status.HTTP_429_TOO_MANY_REQUESTS,
                         "too many failed authentications from this client; retry later",
                         {"Retry-After": str(math.ceil(wait))})
    row = None
    if token is not None and token.isascii() and token.isprintable() and len(token) <= 512:
        row = await services.db.run(repo.authenticate, token)
    if row is None:
        services.throttle.failed(client)
        raise AuthFailed(status.HTTP_401_UNAUTHORIZED, "missing or invalid token",
                         {"WWW-Authenticate": "Bearer"})
    services.throttle.succeeded(client)
    return Principal(row.id, row.name, tuple(row.scopes))


async def get_principal(
    request: Request, services: ServicesDep,
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """Set by api.auth.AuthFirst before the body is read; authenticated here only when
    the app runs without that middleware."""
    principal = getattr(request.state, "principal", None)
    if isinstance(principal, Principal):
        return principal
    try:
        return await authenticate(services, client_key(request.scope),
                                  request_token(request.headers, request.method))
    except AuthFailed as exc:
        raise HTTPException(exc.status_code, exc.detail, headers=exc.headers) from None


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def _need(principal: Principal, scope: Scope) -> Principal:
    if not allows(list(principal.scopes), scope):
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"this needs the {scope} scope")
    return principal


async def _read(principal: PrincipalDep) -> Principal:
    return _need(principal, Scope.READ)


async def _operate(principal: PrincipalDep) -> Principal:
    return _need(principal, Scope.OPERATE)


async def _admin(principal: PrincipalDep) -> Principal:
    return _need(principal, Scope.ADMIN)


ReadDep = Annotated[Principal, Depends(_read)]
OperateDep = Annotated[Principal, Depends(_operate)]
AdminDep = Annotated[Principal, Depends(_admin)]


@dataclass(frozen=True)
class Paging:
    offset: int
    limit: int


def get_paging(
    services: ServicesDep,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> Paging:
    return Paging(offset, min(limit, services.settings.page_limit_max))


PagingDep = Annotated[Paging, Depends(get_paging)]


IdPath = Annotated[int, Path(ge=1, le=2**31 - 1, description="numeric id")]
IdQuery = Annotated[int | None, Query(ge=1, le=2**31 - 1)]
GatewayQuery = Annotated[str | None, Query(
    min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
    description="a gateway of the fleet, by name (GET /gateways)")]
