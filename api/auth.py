"""Authenticate before anything else: a request to a route that needs a token is
checked (and refused) from its headers alone, before its body is read or parsed."""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.routing import compile_path
from starlette.types import ASGIApp, Receive, Scope, Send

from .deps import AuthFailed, Services, authenticate, client_key, request_token


def public_paths(app: FastAPI) -> list[re.Pattern[str]]:
    """Paths served without a token: operations of the OpenAPI schema that declare no
    security requirement, and the documentation pages. Everything else, unknown paths
    included, needs a token (a new route is private unless it says otherwise)."""
    paths = [path for path, item in app.openapi().get("paths", {}).items()
             if not any(op.get("security") for op in item.values() if isinstance(op, dict))]
    paths += [url for url in (app.openapi_url, app.docs_url, app.redoc_url,
                              app.swagger_ui_oauth2_redirect_url) if url]
    # the dashboard's pages and assets: each page checks its session itself (sign-in
    # redirect); its data comes from the API, authenticated here like any client
    paths += ["/ui", "/ui/{path:path}"]
    return [compile_path(path)[0] for path in paths]


class AuthFirst:
    """Pure ASGI middleware: authenticate every request to a non-public path from its
    Authorization header, answering 401/429 without reading the body; on success the
    principal is left in `scope["state"]` for the route's dependencies."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._public: list[re.Pattern[str]] | None = None

    def _is_public(self, app: FastAPI, path: str) -> bool:
        if self._public is None:
            self._public = public_paths(app)
        return any(pattern.match(path) for pattern in self._public)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        app: Any = scope.get("app")
        if scope["type"] != "http" or app is None or self._is_public(app, scope["path"]):
            await self.app(scope, receive, send)
            return
        services: Services = app.state.services
        try:
            principal = await authenticate(services, client_key(scope), request_token(
                Headers(scope=scope), scope["method"]))
        except AuthFailed as exc:
            response = JSONResponse({"detail": exc.detail}, exc.status_code, exc.headers)
            await response(scope, receive, send)
            return
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)
