"""Engine construction. Called from the API lifespan and the worker boot, never at import.

No pre-ping: it doubles the round trips of every checkout. A connection that
died with its server fails one operation, SQLAlchemy then drops the whole pool,
and the caller's own recovery (503 to the client, retry or lease expiry for a
worker) takes over.
"""

from __future__ import annotations

from sqlalchemy import Engine, create_engine
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from db.settings import Settings


def _require_url(settings: Settings) -> str:
    if not settings.database_url:
        raise ValueError(
            "JOBLINE_DATABASE_URL is not set (or run `jobline dev` for an embedded one)"
        )
    return settings.database_url


def _connect_args(settings: Settings) -> dict[str, object]:
    return {"connect_timeout": max(1, round(settings.connect_timeout_seconds))}


def make_engine(settings: Settings, *, pool_size: int | None = None) -> Engine:
    """Build the synchronous engine a worker process shares across its threads."""
    return create_engine(
        _require_url(settings),
        pool_size=pool_size or settings.database_pool_size,
        max_overflow=4,
        pool_timeout=settings.connect_timeout_seconds,
        connect_args=_connect_args(settings),
    )


def make_async_engine(settings: Settings) -> AsyncEngine:
    """Build the asyncio engine the API process uses."""
    return create_async_engine(
        _require_url(settings),
        pool_size=settings.database_pool_size,
        max_overflow=4,
        pool_timeout=settings.connect_timeout_seconds,
        connect_args=_connect_args(settings),
    )
