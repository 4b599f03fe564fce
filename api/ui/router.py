"""Dashboard pages under /ui/ and the API docs served from the package.

Pages are Jinja2 templates rendered for the signed-in token (its scopes decide which
buttons exist); their data comes from the JSON API, called by static/app.js with the
session cookie and the CSRF token the page carries. Nothing is loaded from another host.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs

from fastapi import APIRouter, FastAPI, Header, Query, Request, status
from fastapi import Path as PathParam
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.routing import Route

from xfrmctl.store import repo
from xfrmctl.store.models import EventKind
from xfrmctl.store.tokens import Scope, allows

from ..deps import Principal, Services
from ..routers import events as events_api
from . import session

HERE = Path(__file__).parent
STATIC = "/ui/static"
SWAGGER = f"{STATIC}/vendor/swagger-ui-dist-5.36.0"
REDOC = f"{STATIC}/vendor/redoc-2.5.4"
MAX_FORM_BODY = 4096
_EVENT_LINE = re.compile(r"^event: [^\n]*\n", re.MULTILINE)
templates = Jinja2Templates(directory=HERE / "templates")
router = APIRouter(prefix="/ui", include_in_schema=False)
SaIdPath = Annotated[str, PathParam(max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
IdPath = Annotated[int, PathParam(ge=1, le=2**31 - 1)]

# Pages run only our own scripts; inline styles set by scripts (uPlot) are allowed.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; "
                               "style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
                               "connect-src 'self'; frame-ancestors 'none'; "
                               "form-action 'self'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


async def _principal(request: Request) -> tuple[Principal, str] | None:
    token = session.session_of(request)
    if token is None:
        return None
    services: Services = request.app.state.services
    row = await services.db.run(repo.authenticate, token)
    return (Principal(row.id, row.name, tuple(row.scopes)), token) if row else None


async def _page(request: Request, template: str, **context: Any) -> Response:
    signed_in = await _principal(request)
    if signed_in is None:
        return RedirectResponse("/ui/login", status.HTTP_303_SEE_OTHER)
    who, token = signed_in
    scopes = list(who.scopes)
    context.update(who=who, csrf=session.csrf_token(token), page=template.removesuffix(".html"),
                   can_operate=allows(scopes, Scope.OPERATE),
                   can_admin=allows(scopes, Scope.ADMIN))
    return templates.TemplateResponse(request, template, context, headers=PAGE_HEADERS)


async def _small_form(request: Request) -> dict[str, list[str]] | None:
    """The urlencoded body of a sign-in or sign-out form; None if it is too large."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BODY:
            return None
    return parse_qs(body.decode("utf-8", "replace"))


def _login_form(request: Request, error: str | None, code: int = 200) -> Response:
    nonce = secrets.token_urlsafe(24)
    response = templates.TemplateResponse(
        request, "login.html", {"nonce": nonce, "error": error, "page": "login"},
        status_code=code, headers=PAGE_HEADERS)
    session.set_login_nonce(response, request, nonce)
    return response


@router.get("/login")
async def login_page(request: Request) -> Response:
    return _login_form(request, None)


@router.post("/login")
async def login(request: Request) -> Response:
    form = await _small_form(request)
    if form is None:
        return Response("form too large", 413)
    nonce = form.get("nonce", [""])[0]
    token = form.get("token", [""])[0].strip()
    expected = request.cookies.get(session.LOGIN_COOKIE, "")
    if not expected or not secrets.compare_digest(nonce, expected):
        return _login_form(request, "The sign-in form expired: please try again.",
                           status.HTTP_403_FORBIDDEN)
    services: Services = request.app.state.services
    row = None
    if token and token.isascii() and token.isprintable() and len(token) <= 512:
        row = await services.db.run(repo.authenticate, token)
    if row is None:
        return _login_form(request, "That token is not valid (unknown, expired or revoked).",
                           status.HTTP_401_UNAUTHORIZED)
    response = RedirectResponse("/ui/", status.HTTP_303_SEE_OTHER)
    session.set_session(response, request, token)
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    form = await _small_form(request)
    presented = (form or {}).get("csrf", [""])[0]
    token = session.session_of(request)
    if token is not None and not session.csrf_ok(token, presented):
        return Response("missing or wrong CSRF token", status.HTTP_403_FORBIDDEN)
    response = RedirectResponse("/ui/login", status.HTTP_303_SEE_OTHER)
    session.clear_session(response, request)
    return response


@router.get("/")
async def overview(request: Request) -> Response:
    return await _page(request, "overview.html")


@router.get("/sas")
async def sa_table(request: Request) -> Response:
    return await _page(request, "sas.html")


@router.get("/sas/{sa_id}")
async def sa_detail(request: Request, sa_id: SaIdPath) -> Response:
    return await _page(request, "sa.html", sa_id=sa_id)


@router.get("/connections/new")
async def connection_new(request: Request) -> Response:
    return await _page(request, "connection_form.html", connection_id=None)


@router.get("/connections/{connection_id}")
async def connection_detail(request: Request, connection_id: IdPath) -> Response:
    return await _page(request, "connection.html", connection_id=connection_id)


@router.get("/connections/{connection_id}/edit")
async def connection_edit(request: Request, connection_id: IdPath) -> Response:
    return await _page(request, "connection_form.html", connection_id=connection_id)


@router.get("/events")
async def events(request: Request) -> Response:
    return await _page(request, "events.html", kind="protocol", title="Events")


@router.get("/audit")
async def audit(request: Request) -> Response:
    return await _page(request, "events.html", kind="audit", title="Audit trail")


@router.get("/pki")
async def pki(request: Request) -> Response:
    return await _page(request, "pki.html")


@router.get("/stream")
async def event_stream(
    request: Request, kind: EventKind | None = None,
    type: Annotated[str | None, Query(max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")] = None,
    connection_id: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
    after_id: Annotated[int | None, Query(ge=0, le=2**31 - 1)] = None,
    last_event_id: Annotated[str | None, Header(max_length=20)] = None,
) -> Response:
    """The API's event stream for the pages, every event as an unnamed message: an
    EventSource cannot listen to all named events, and audit types are open-ended.
    A gap (events lost to a slow reader) arrives as a message without an id."""
    if await _principal(request) is None:
        return Response("sign in first", status.HTTP_401_UNAUTHORIZED)
    if after_id is None and last_event_id is not None and last_event_id.isdigit():
        after_id = int(last_event_id)

    def wanted(event: dict[str, Any]) -> bool:
        return ((kind is None or event["kind"] == kind)
                and (type is None or event["type"] == type)
                and (connection_id is None or event["connection_id"] == connection_id))

    async def unnamed() -> AsyncIterator[str]:
        async for frame in events_api._frames(request.app.state.services, after_id, wanted,
                                              None):
            yield _EVENT_LINE.sub("", frame)

    return StreamingResponse(unnamed(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.get("", include_in_schema=False)
async def root() -> Response:
    return RedirectResponse("/ui/", status.HTTP_308_PERMANENT_REDIRECT)


def _local_docs(app: FastAPI) -> None:
    """/docs and /redoc from the vendored Swagger UI and ReDoc instead of a public CDN."""
    docs, redoc = app.docs_url or "/docs", app.redoc_url or "/redoc"
    app.router.routes[:] = [r for r in app.router.routes
                            if not (isinstance(r, Route) and r.path in (docs, redoc))]
    openapi_url = app.openapi_url or "/openapi.json"

    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url, title=f"{app.title} - API",
            swagger_js_url=f"{SWAGGER}/swagger-ui-bundle.js",
            swagger_css_url=f"{SWAGGER}/swagger-ui.css",
            swagger_favicon_url=f"{STATIC}/favicon.svg",
            swagger_ui_parameters={"validatorUrl": None})

    async def redoc_ui() -> HTMLResponse:
        return get_redoc_html(openapi_url=openapi_url, title=f"{app.title} - API",
                              redoc_js_url=f"{REDOC}/redoc.standalone.js",
                              redoc_favicon_url=f"{STATIC}/favicon.svg",
                              with_google_fonts=False)

    app.add_api_route(docs, swagger_ui, include_in_schema=False)
    app.add_api_route(redoc, redoc_ui, include_in_schema=False)


def install(app: FastAPI) -> None:
    app.include_router(router)
    app.mount(STATIC, StaticFiles(directory=HERE / "static"), name="ui-static")
    _local_docs(app)
