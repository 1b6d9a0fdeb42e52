"""Shared fixtures: real servers, a database and queue names of this run's own."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import psycopg
import pytest

from db.migrate import upgrade
from db.settings import Settings, normalize_database_url
from tests.support.proxy import TcpProxy
from tests.support.servers import (
    database_name,
    delete_queues,
    postgres_server,
    rabbitmq_server,
    scratch_database,
)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A Postgres server (libpq URL) where this run may create databases."""
    with postgres_server() as url:
        yield url


@pytest.fixture(scope="session")
def broker_url() -> Iterator[str]:
    """A RabbitMQ server (amqp:// URL)."""
    with rabbitmq_server() as url:
        yield url


@pytest.fixture(scope="session")
def migrated_database(postgres_url: str) -> Iterator[str]:
    """A database migrated to head once per session, used only as a template (libpq URL)."""
    with scratch_database(postgres_url) as url:
        upgrade(normalize_database_url(url))
        yield url


@pytest.fixture
def database_url(postgres_url: str, migrated_database: str) -> Iterator[str]:
    """A fresh migrated database for this test alone (libpq URL).

    A copy per test, not a truncated shared one: a process or thread a test leaves
    behind can then never touch the next test's jobs.
    """
    with scratch_database(postgres_url, template=database_name(migrated_database)) as url:
        yield url


@pytest.fixture
def db(database_url: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """An autocommit connection for looking at what jobline wrote."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn


@pytest.fixture
def queue_name(broker_url: str) -> Iterator[str]:
    """A queue name only this test uses; its queues are deleted afterwards."""
    name = f"jobline_test_{uuid.uuid4().hex[:12]}"
    yield name
    delete_queues(broker_url, name)


@pytest.fixture
def settings(database_url: str, broker_url: str, queue_name: str) -> Settings:
    """Settings for this test, with timers short enough for tests to watch them fire."""
    return Settings(
        database_url=database_url,
        broker_url=broker_url,
        queue_name=queue_name,
        job_modules=["tests.jobfns"],
        max_attempts=3,
        retry_backoff_seconds=0.1,
        retry_backoff_max_seconds=0.5,
        lease_seconds=2.0,
        sweep_interval_seconds=0.2,
        publish_grace_seconds=0.5,
    )


@pytest.fixture
def broker_proxy(broker_url: str) -> Iterator[TcpProxy]:
    """A cuttable loopback proxy in front of RabbitMQ."""
    parts = urlsplit(broker_url)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5672)
    proxy.start()
    yield proxy
    proxy.close()


@pytest.fixture
def database_proxy(postgres_url: str) -> Iterator[TcpProxy]:
    """A cuttable loopback proxy in front of Postgres."""
    parts = urlsplit(postgres_url)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    proxy.start()
    yield proxy
    proxy.close()
