"""The FastAPI application: ``create_app(settings)``."""

from __future__ import annotations

import gc
import logging
import resource
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from actors.registry import JobRegistry, load_registry
from api.deps import Services
from api.errors import install_error_handlers
from api.events import JobEvents
from api.publisher import AmqpPublisher, Publisher
from api.routes import router
from api.writer import JobWriter
from db.engine import make_async_engine
from db.settings import Settings

logger = logging.getLogger(__name__)

DESCRIPTION = """
Schedule a job with `POST /schedule` and get its **offset** at once. Workers run it
over RabbitMQ; every step is recorded once in Postgres. Read the messages with
`GET /messages/{offset}` and the job's state with `GET /jobs/{offset}`.
"""


def create_app(
    settings: Settings,
    *,
    registry: JobRegistry | None = None,
    publisher: Publisher | None = None,
) -> FastAPI:
    """Build the API for ``settings``; connections open in the lifespan, not here."""
    registry = registry or load_registry(settings.job_modules)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        raise_open_file_limit()
        engine = make_async_engine(settings)
        writer = JobWriter(engine)
        chosen = publisher or _amqp_publisher(settings)
        assert settings.database_url is not None  # make_async_engine checked it
        events = JobEvents(settings.database_url, connect_timeout=settings.connect_timeout_seconds)
        writer.start()
        chosen.start(engine)
        events.start()
        app.state.services = Services(
            settings=settings,
            registry=registry,
            engine=engine,
            writer=writer,
            publisher=chosen,
            events=events,
        )
        # Start-up objects live as long as the process: keep the collector off them.
        gc.freeze()
        try:
            yield
        finally:
            await events.close()
            await chosen.close()
            await writer.close()
            await engine.dispose()

    app = FastAPI(title="jobline", version="0.1.0", description=DESCRIPTION, lifespan=lifespan)
    install_error_handlers(app)
    app.include_router(router)
    return app


def raise_open_file_limit() -> None:
    """Lift the soft limit on open files to the hard one: each event stream holds a socket,
    and the common default of 1024 would cap a process well below a few thousand."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as error:
            logger.warning("could not raise the open-file limit from %s: %s", soft, error)


def _amqp_publisher(settings: Settings) -> Publisher:
    if not settings.broker_url:
        raise ValueError("JOBLINE_BROKER_URL is not set (or run `jobline dev`)")
    return AmqpPublisher(
        url=settings.broker_url,
        queue_name=settings.queue_name,
        timeout_seconds=settings.connect_timeout_seconds,
    )


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory api.app:app_from_env``: settings from the environment."""
    return create_app(Settings())
