"""API errors: one base class, one JSON shape (``{"detail": ...}``), one handler each."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from db.errors import DatabaseUnavailable

logger = logging.getLogger(__name__)


class APIError(Exception):
    """Base of every error the API answers with on purpose."""

    status_code = 500
    headers: dict[str, str] | None = None

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class NotFound(APIError):
    """The addressed resource does not exist."""

    status_code = 404


class Conflict(APIError):
    """The request contradicts the resource's current state."""

    status_code = 409


class ServiceUnavailable(APIError):
    """A server jobline depends on is away; the client may try again."""

    status_code = 503
    headers = {"Retry-After": "1"}


def _json(status_code: int, detail: object, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status_code, headers=headers)


async def _api_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, APIError)
    return _json(error.status_code, error.detail, error.headers)


async def _database_unavailable(request: Request, error: Exception) -> JSONResponse:
    logger.warning("database unavailable during %s %s: %s", request.method, request.url.path, error)
    return _json(503, "Database unavailable, try again shortly", ServiceUnavailable.headers)


async def _unexpected(request: Request, error: Exception) -> JSONResponse:
    logger.exception("unhandled error in %s %s", request.method, request.url.path)
    return _json(500, "Internal server error")


def install_error_handlers(app: FastAPI) -> None:
    """Render every error as ``{"detail": ...}`` JSON; never a traceback."""
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(DatabaseUnavailable, _database_unavailable)
    app.add_exception_handler(Exception, _unexpected)
