"""Map domain errors to HTTP: unknown id 404, conflict 409, bad input 422 naming the field."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from xfrmctl.port import ActionRejected, UnknownTarget
from xfrmctl.store.repo import Conflict, InvalidField, NotFound

log = logging.getLogger(__name__)


def field_error(field: str, message: str, where: str = "body") -> dict[str, object]:
    """One entry of a 422 `detail`, shaped like FastAPI's own validation errors."""
    return {"loc": [where, field], "msg": message, "type": "value_error"}


def unprocessable(field: str, message: str) -> JSONResponse:
    return JSONResponse({"detail": [field_error(field, message)]}, status_code=422)


async def _not_found(_request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=404)


async def _conflict(_request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=409)


async def _invalid(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, InvalidField)
    return unprocessable(exc.field, str(exc))


async def _validation(_request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422 without the `input` of each error: it may be a secret (a PSK, a key,
    a token, or a whole body holding one, or a misnamed field's value). The field is
    named by `loc` and the problem by `msg`."""
    assert isinstance(exc, RequestValidationError)
    errors = [{k: v for k, v in e.items() if k != "input"} for e in exc.errors()]
    return JSONResponse({"detail": jsonable_encoder(errors)}, status_code=422)


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(NotFound, _not_found)
    app.add_exception_handler(UnknownTarget, _not_found)
    app.add_exception_handler(Conflict, _conflict)
    app.add_exception_handler(ActionRejected, _conflict)
    app.add_exception_handler(InvalidField, _invalid)
