"""Finding Postgres and RabbitMQ for the tests: environment, then local servers, then containers."""

from __future__ import annotations

import contextlib
import os
import socket
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import pika
import psycopg

LOCAL_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
LOCAL_BROKER_URL = "amqp://guest:guest@127.0.0.1:5672/"


def _reachable(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or default_port), 1
        ):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """Yield a libpq URL of a Postgres server where the tests may create databases."""
    url = os.environ.get("JOBLINE_TEST_DATABASE_URL")
    if url:
        yield url
        return
    if _reachable(LOCAL_DATABASE_URL, 5432):
        yield LOCAL_DATABASE_URL
        return
    from testcontainers.postgres import PostgresContainer

    with PostgresContainer("postgres:16-alpine", driver=None) as container:
        yield container.get_connection_url()


@contextlib.contextmanager
def rabbitmq_server() -> Iterator[str]:
    """Yield an amqp:// URL of a RabbitMQ server."""
    url = os.environ.get("JOBLINE_TEST_BROKER_URL")
    if url:
        yield url
        return
    if _reachable(LOCAL_BROKER_URL, 5672):
        yield LOCAL_BROKER_URL
        return
    from testcontainers.rabbitmq import RabbitMqContainer

    with RabbitMqContainer("rabbitmq:3.13-alpine") as container:
        params = container.get_connection_params()
        credentials = params.credentials
        yield (f"amqp://{credentials.username}:{credentials.password}@{params.host}:{params.port}/")


def database_name(url: str) -> str:
    """The database a libpq URL names."""
    return urlsplit(url).path.lstrip("/")


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return parts._replace(path=f"/{name}").geturl()


@contextlib.contextmanager
def scratch_database(server_url: str, *, template: str | None = None) -> Iterator[str]:
    """Create a database only its caller uses (a copy of ``template``); drop it afterwards."""
    name = f"jobline_test_{uuid.uuid4().hex[:12]}"
    copy = f' TEMPLATE "{template}"' if template else ""
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"{copy}')
    try:
        yield _with_database(server_url, name)
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def delete_queues(broker_url: str, queue_name: str) -> None:
    """Delete a queue and Dramatiq's delay and dead-letter queues beside it."""
    connection = pika.BlockingConnection(pika.URLParameters(broker_url))
    try:
        channel = connection.channel()
        for name in (queue_name, f"{queue_name}.DQ", f"{queue_name}.XQ"):
            channel.queue_delete(name)
    finally:
        connection.close()


def queue_depth(broker_url: str, queue_name: str) -> int:
    """Messages ready in ``queue_name`` (0 if it does not exist)."""
    connection = pika.BlockingConnection(pika.URLParameters(broker_url))
    try:
        channel = connection.channel()
        try:
            frame = channel.queue_declare(queue_name, passive=True)
        except pika.exceptions.ChannelClosedByBroker:
            return 0
        return int(frame.method.message_count)
    finally:
        connection.close()
