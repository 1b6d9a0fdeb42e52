"""Publishing accepted jobs to the broker from the API process, after their commit.

The request never waits for the broker: it answers once Postgres has the job.
Publishing runs in a background task that pipelines publisher confirms (many
messages in flight, each confirmed), then marks the confirmed jobs published in
one UPDATE. A job the broker did not confirm stays unpublished in Postgres, and
the workers' sweeper publishes it once the broker is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection
from sqlalchemy.ext.asyncio import AsyncEngine

from actors.messages import job_message, queue_declarations
from db import queries
from db.errors import translate_errors

logger = logging.getLogger(__name__)

MAX_BATCH = 1000
RECONNECT_MIN_SECONDS = 0.5
RECONNECT_MAX_SECONDS = 5.0


class Publisher(Protocol):
    """Sends ``run_job`` messages for committed jobs, in the background."""

    def start(self, engine: AsyncEngine) -> None: ...

    def publish_soon(self, job_id: int) -> None: ...

    async def close(self) -> None: ...


class _BatchingPublisher:
    """Collects job ids and hands them to ``_publish_batch`` one batch at a time."""

    def __init__(self) -> None:
        self._pending: list[int] = []
        self._wakeup = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._engine: AsyncEngine | None = None
        # Bookkeeping must not take the connections the request path needs.
        self._marking = asyncio.Semaphore(2)

    def start(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._spawn(self._run(), "jobline-publisher")

    def publish_soon(self, job_id: int) -> None:
        self._pending.append(job_id)
        self._wakeup.set()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _spawn(self, coroutine: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
                confirmed = await self._publish_batch(batch)
                if confirmed:
                    self._spawn(self._mark_published(confirmed), "jobline-mark-published")

    async def _publish_batch(self, job_ids: list[int]) -> list[int]:
        raise NotImplementedError

    async def _mark_published(self, job_ids: list[int]) -> None:
        assert self._engine is not None
        try:
            with translate_errors():
                async with self._marking, self._engine.begin() as conn:
                    await queries.mark_published_async(conn, job_ids=job_ids)
        except Exception as error:
            # Harmless: the sweeper publishes them again and the claim drops the duplicate.
            logger.warning("could not mark %d jobs published: %s", len(job_ids), error)


class AmqpPublisher(_BatchingPublisher):
    """Publishes to RabbitMQ over one connection with publisher confirms."""

    def __init__(self, *, url: str, queue_name: str, timeout_seconds: float) -> None:
        super().__init__()
        self._url = url
        self._queue_name = queue_name
        self._timeout = timeout_seconds
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self.connected = asyncio.Event()
        self._closing = False

    def start(self, engine: AsyncEngine) -> None:
        super().start(engine)
        self._spawn(self._keep_connected(), "jobline-amqp-connection")

    async def close(self) -> None:
        self._closing = True
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await self._connection.close()
        await super().close()

    async def _keep_connected(self) -> None:
        delay = RECONNECT_MIN_SECONDS
        while not self._closing:
            try:
                connection = await aio_pika.connect(self._url, timeout=self._timeout)
                channel = await connection.channel(publisher_confirms=True)
                for name, arguments in queue_declarations(self._queue_name).items():
                    await channel.declare_queue(name, durable=True, arguments=arguments)  # type: ignore[arg-type]
            except (TimeoutError, OSError, aio_pika.exceptions.AMQPError) as error:
                logger.warning("RabbitMQ unreachable (%s); retrying in %.1fs", error, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX_SECONDS)
                continue
            delay = RECONNECT_MIN_SECONDS
            self._connection, self._channel = connection, channel
            self.connected.set()
            await connection.closed()
            self.connected.clear()
            self._connection = self._channel = None
            logger.warning("RabbitMQ connection lost; reconnecting")

    async def _publish_batch(self, job_ids: list[int]) -> list[int]:
        if not self.connected.is_set():
            # Starting up or reconnecting: wait a little rather than leave every
            # job of the first moments to the sweeper.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.connected.wait(), self._timeout)
        channel = self._channel
        if channel is None or channel.is_closed:
            # Left unpublished in Postgres; the sweeper sends them once the broker is
            # back. Dropping the backlog too keeps an outage from growing memory.
            self._pending.clear()
            return []
        exchange = channel.default_exchange

        async def send(job_id: int) -> None:
            body = job_message(queue_name=self._queue_name, job_id=job_id).encode()
            message = aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
            await exchange.publish(message, routing_key=self._queue_name, timeout=self._timeout)

        results = await asyncio.gather(
            *(send(job_id) for job_id in job_ids), return_exceptions=True
        )
        failures = [result for result in results if isinstance(result, BaseException)]
        if failures:
            logger.warning(
                "%d of %d publishes unconfirmed (the sweeper will send them): %s",
                len(failures),
                len(job_ids),
                failures[0],
            )
        return [
            job_id
            for job_id, result in zip(job_ids, results, strict=True)
            if not isinstance(result, BaseException)
        ]


class InProcessPublisher(_BatchingPublisher):
    """Hands jobs to an in-process Dramatiq broker (``jobline dev`` without RabbitMQ)."""

    def __init__(self, publish: Callable[[int, float], bool]) -> None:
        super().__init__()
        self._publish = publish

    async def _publish_batch(self, job_ids: list[int]) -> list[int]:
        return [job_id for job_id in job_ids if self._publish(job_id, 0)]
