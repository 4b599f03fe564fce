"""The dashboard's browser session: the API token in an HttpOnly cookie, and a CSRF
token derived from it (synchronizer pattern without server state).

The cookie is `HttpOnly`, `SameSite=Strict`, and `Secure` when the request came over
TLS. The CSRF token is an HMAC of the session's token, so only a page that the server
rendered for this session knows it; every state-changing request authenticated by the
cookie must carry it in the `X-CSRF-Token` header (or the form field `csrf`).
A request with an `Authorization: Bearer` header is not a browser session and needs none.
"""

from __future__ import annotations

import hashlib
import hmac

from fastapi import Request, Response
from starlette.requests import cookie_parser

SESSION_COOKIE = "xfrmctl_session"
LOGIN_COOKIE = "xfrmctl_login"  # double-submit token of the sign-in form (no session yet)
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def csrf_token(session_token: str) -> str:
    return hmac.new(session_token.encode(), b"xfrmctl dashboard csrf",
                    hashlib.sha256).hexdigest()


def csrf_ok(session_token: str, presented: str | None) -> bool:
    return presented is not None and hmac.compare_digest(csrf_token(session_token),
                                                         presented)


def _valid(token: str | None) -> str | None:
    return token if token and token.isascii() and token.isprintable() else None


def session_of(request: Request) -> str | None:
    return _valid(request.cookies.get(SESSION_COOKIE))


class CsrfRefused(Exception):
    """A cookie-authenticated request changes state without the session's CSRF token."""


def browser_token(cookie_header: str | None, csrf_header: str | None,
                  method: str) -> str | None:
    """The session's API token from a request's raw headers (for code that runs before
    routing, such as an authentication middleware), or None without a session cookie.
    Raises CsrfRefused for a state-changing method without the right CSRF token."""
    token = _valid(cookie_parser(cookie_header or "").get(SESSION_COOKIE))
    if token is None:
        return None
    if method not in SAFE_METHODS and not csrf_ok(token, csrf_header):
        raise CsrfRefused("missing or wrong CSRF token (X-CSRF-Token header): reload the "
                          "page and try again")
    return token


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def set_session(response: Response, request: Request, token: str) -> None:
    response.set_cookie(SESSION_COOKIE, token, httponly=True, samesite="strict",
                        secure=_secure(request), path="/")
    response.delete_cookie(LOGIN_COOKIE, path="/ui/")


def clear_session(response: Response, request: Request) -> None:
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict",
                           secure=_secure(request))


def set_login_nonce(response: Response, request: Request, nonce: str) -> None:
    response.set_cookie(LOGIN_COOKIE, nonce, httponly=True, samesite="strict",
                        secure=_secure(request), path="/ui/")
