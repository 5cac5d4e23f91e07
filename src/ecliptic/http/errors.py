"""One error shape for every 4xx and 5xx, in the format the client asked for where possible."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        loc: list[str | int] | None = None,
        details: list[dict[str, Any]] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details or ([{"loc": loc, "msg": message, "type": "value_error"}] if loc else [])
        self.extra = extra or {}


def error_body(
    status: int, message: str, details: list[dict[str, Any]] | None = None, **extra: Any
) -> dict[str, Any]:
    return {
        "status": status,
        "error": HTTPStatus(status).phrase,
        "message": message,
        "details": details or [],
        **{key: value for key, value in extra.items() if value is not None},
    }


def respond_error(
    request: Request, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> Response:
    from ecliptic.http.negotiation import choose_format, render

    try:
        fmt = choose_format(request.headers.get("accept"))
    except ApiError:
        fmt = "json"
    return render(body, fmt, status, headers)


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> Response:
        return respond_error(
            request, exc.status, error_body(exc.status, exc.message, exc.details, **exc.extra)
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        details = [
            {
                "loc": [str(p) for p in err.get("loc", [])],
                "msg": err.get("msg", ""),
                "type": err.get("type", ""),
            }
            for err in exc.errors()
        ]
        summary = "; ".join(f"{'.'.join(d['loc'])}: {d['msg']}" for d in details)
        return respond_error(request, 400, error_body(400, f"Invalid request: {summary}", details))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        message = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
        if exc.status_code == 404 and message == "Not Found":
            message = f"There is nothing at {request.url.path}"
        if exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        return respond_error(
            request, exc.status_code, error_body(exc.status_code, message), dict(exc.headers or {})
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return respond_error(
            request, 500, error_body(500, f"Internal error ({type(exc).__name__}); it has been logged")
        )
