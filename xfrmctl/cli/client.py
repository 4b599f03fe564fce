"""The CLI's REST client: URL (http(s):// or unix://), token, TLS; errors -> exit codes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx  # imported where used: `xfrmctl daemon` and `db` need no HTTP client

# Exit codes (documented in `xfrmctl --help`).
EXIT_ERROR = 1  # server error or unexpected failure
EXIT_UNREACHABLE = 3  # cannot connect to the API
EXIT_AUTH = 4  # 401/403: missing, invalid or insufficient token
EXIT_NOT_FOUND = 5
EXIT_CONFLICT = 6
EXIT_INVALID = 7  # 422: bad input (the field is named)
EXIT_NO_DAEMON = 8  # 503: the API runs but the daemon is not attached
_STATUS_EXIT = {401: EXIT_AUTH, 403: EXIT_AUTH, 404: EXIT_NOT_FOUND, 409: EXIT_CONFLICT,
                422: EXIT_INVALID, 503: EXIT_NO_DAEMON}


class ApiError(Exception):
    """A failed API call; the CLI prints it and exits with `exit_code`."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class ClientOptions:
    url: str
    token: str | None
    ca_file: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    timeout: float = 30.0


def _describe(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail")
    except (json.JSONDecodeError, AttributeError):
        return f"HTTP {response.status_code}"
    if isinstance(detail, list):  # validation errors: name each field
        return "; ".join(f"{'.'.join(str(p) for p in e.get('loc', [])[1:])}: {e.get('msg')}"
                         for e in detail)
    return str(detail)


START_HINT = "is the daemon running with its API? start it with `xfrmctl daemon --api` " \
    "(or set --url / XFRMCTL_URL to where the API listens)"
TOKEN_HINT = "create one on the gateway with `xfrmctl token create NAME --scope " \
    "read|operate|admin --local` and pass it as --token or XFRMCTL_TOKEN"


def _unreachable(url: str, exc: httpx.TransportError) -> ApiError:
    where = f"socket {url.removeprefix('unix://')}" if url.startswith("unix://") else url
    why = str(exc) or type(exc).__name__
    return ApiError(f"cannot reach the API at {where} ({why}); {START_HINT}", EXIT_UNREACHABLE)


def _failure(response: httpx.Response, token: str | None) -> ApiError:
    message = f"{_describe(response)} (HTTP {response.status_code})"
    if response.status_code == 401:
        message += "; " + ("the token was refused (unknown, revoked or expired): "
                           if token else "no API token given: ") + TOKEN_HINT
    return ApiError(message, _STATUS_EXIT.get(response.status_code, EXIT_ERROR))


class Api:
    """Thin wrapper over httpx.Client that raises ApiError with a meaningful exit code."""

    def __init__(self, options: ClientOptions) -> None:
        import httpx  # noqa: PLC0415 - see the import at the top

        self._url, self._token = options.url, options.token
        url, transport = options.url, None
        if url.startswith("unix://"):
            transport = httpx.HTTPTransport(uds=url.removeprefix("unix://"))
            url = "http://localhost"
        verify: Any = str(options.ca_file) if options.ca_file else True
        cert = None
        if options.client_cert is not None:
            cert = (str(options.client_cert), str(options.client_key)) if options.client_key \
                else str(options.client_cert)
        headers = {"authorization": f"Bearer {options.token}"} if options.token else {}
        self._http = httpx.Client(base_url=url.rstrip("/") + "/api/v1", transport=transport,
                                  verify=verify, cert=cert, headers=headers,
                                  timeout=options.timeout)

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        import httpx  # noqa: PLC0415

        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise _unreachable(self._url, exc) from None
        if response.is_success:
            return response.json() if response.content else None
        raise _failure(response, self._token)

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items()
                                                 if v is not None})

    def all(self, path: str, **params: Any) -> list[dict[str, Any]]:
        """Every item of a paginated list."""
        items: list[dict[str, Any]] = []
        while True:
            page = self.get(path, offset=len(items), limit=500, **params)
            items += page["data"]
            if not page["data"] or len(items) >= page["count"]:
                return items

    def stream(self, path: str, **params: Any) -> Iterator[dict[str, Any]]:
        """Events from a text/event-stream endpoint."""
        import httpx  # noqa: PLC0415

        query = {k: v for k, v in params.items() if v is not None}
        try:
            with self._http.stream("GET", path, params=query,
                                   timeout=httpx.Timeout(10.0, read=None)) as response:
                if not response.is_success:
                    response.read()
                    raise _failure(response, self._token)
                for line in response.iter_lines():
                    if line.startswith("data: ") and line != "data: {}":
                        yield json.loads(line.removeprefix("data: "))
        except httpx.TransportError as exc:
            raise _unreachable(self._url, exc) from None

    def close(self) -> None:
        self._http.close()
