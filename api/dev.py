"""``jobline dev``: the whole service in one process, with an embedded Postgres if none is set."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dramatiq
import uvicorn

from actors.broker import build_worker_app
from api.app import create_app
from api.publisher import AmqpPublisher, InProcessPublisher, Publisher
from db import queries
from db.engine import make_engine
from db.migrate import upgrade
from db.settings import Settings, normalize_database_url

logger = logging.getLogger(__name__)

DEV_WORKER_THREADS = 4


def default_data_dir() -> Path:
    """Where the embedded Postgres keeps its files (``JOBLINE_DEV_DATA_DIR`` overrides)."""
    return Path(os.environ.get("JOBLINE_DEV_DATA_DIR", ".jobline/postgres")).resolve()


@contextmanager
def embedded_postgres(data_dir: Path) -> Iterator[str]:
    """Start (or reuse) a pgserver Postgres in ``data_dir``; yield its SQLAlchemy URL."""
    from pgserver.postgres_server import get_server

    data_dir.mkdir(parents=True, exist_ok=True)
    server = get_server(data_dir, cleanup_mode="stop")
    try:
        yield normalize_database_url(server.get_uri())
    finally:
        server.cleanup()


def run_dev(settings: Settings, *, host: str, port: int) -> None:
    """Migrate, start an in-process worker, and serve the API until interrupted."""
    with _database(settings) as database_url:
        settings = settings.model_copy(update={"database_url": database_url})
        upgrade(database_url)
        worker_app = build_worker_app(settings)
        if not settings.broker_url:
            # The in-process broker starts empty: what it held before is gone.
            engine = make_engine(settings, pool_size=1)
            with engine.begin() as conn:
                queries.forget_publications(conn)
            engine.dispose()
        worker = dramatiq.Worker(worker_app.broker, worker_threads=DEV_WORKER_THREADS)
        worker.start()
        publisher: Publisher
        if settings.broker_url:
            publisher = AmqpPublisher(
                url=settings.broker_url,
                queue_name=settings.queue_name,
                timeout_seconds=settings.connect_timeout_seconds,
            )
        else:
            publisher = InProcessPublisher(worker_app.publish)
        broker_name = _redact(settings.broker_url) if settings.broker_url else "in-process broker"
        logger.warning("jobline dev: Postgres %s, %s", _redact(database_url), broker_name)
        try:
            uvicorn.run(
                create_app(settings, registry=worker_app.runtime.registry, publisher=publisher),
                host=host,
                port=port,
                log_level="info",
            )
        finally:
            worker.stop()


@contextmanager
def _database(settings: Settings) -> Iterator[str]:
    if settings.database_url:
        yield settings.database_url
        return
    with embedded_postgres(default_data_dir()) as url:
        yield url


def _redact(url: str) -> str:
    head, sep, tail = url.rpartition("@")
    return f"{head.split('//')[0]}//***@{tail}" if sep else url
