"""Dependencies: the app's services, authentication with scopes, pagination."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Query, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from xfrmctl.config import Settings
from xfrmctl.daemon.ports import Controller
from xfrmctl.kernel.interface import KernelIPsec
from xfrmctl.store import repo
from xfrmctl.store.bus import EventBus
from xfrmctl.store.db import Database
from xfrmctl.store.secrets import SecretBox
from xfrmctl.store.tokens import Scope, allows

from .ui.session import cookie_token


@dataclass
class Services:
    """Everything the routers need, held on `app.state.services`."""

    settings: Settings
    db: Database
    box: SecretBox
    bus: EventBus
    controller: Controller | None
    kernel: KernelIPsec | None


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


async def get_principal(
    request: Request, services: ServicesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    unauthorized = HTTPException(status.HTTP_401_UNAUTHORIZED, "missing or invalid token",
                                 headers={"WWW-Authenticate": "Bearer"})
    # No bearer token: the dashboard's session cookie (with its CSRF check).
    presented = credentials.credentials if credentials else cookie_token(request)
    if presented is None or not presented.isprintable():
        raise unauthorized
    token = await services.db.run(repo.authenticate, presented)
    if token is None:
        raise unauthorized
    return Principal(token.id, token.name, tuple(token.scopes))


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
