"""Group commit for ``POST /schedule``: concurrent requests share one INSERT and one commit.

Under load, requests that arrive while an insert is in flight wait for the next
one, so a busy API makes few large transactions instead of many small ones. At
light load each request still gets its own insert at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from sqlalchemy.ext.asyncio import AsyncEngine

from db import queries
from db.errors import translate_errors

logger = logging.getLogger(__name__)

_Pending = tuple[queries.NewJob, "asyncio.Future[int]"]


class JobWriter:
    """Inserts jobs in batches; ``insert`` returns once the job's row is committed."""

    def __init__(self, engine: AsyncEngine, *, max_batch: int = 256, concurrency: int = 4) -> None:
        self._engine = engine
        self._max_batch = max_batch
        self._concurrency = concurrency
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        """Start the insert loops (``concurrency`` transactions may be in flight)."""
        self._tasks = [
            asyncio.create_task(self._run(), name=f"jobline-writer-{n}")
            for n in range(self._concurrency)
        ]

    async def close(self) -> None:
        """Stop the loops; requests still waiting get an error."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        while not self._queue.empty():
            _, future = self._queue.get_nowait()
            if not future.done():
                future.set_exception(RuntimeError("API shutting down"))

    async def insert(self, job: queries.NewJob) -> int:
        """Insert ``job`` and return its id once committed."""
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((job, future))
        return await future

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                with translate_errors():
                    async with self._engine.begin() as conn:
                        ids = await queries.insert_jobs(conn, jobs=[job for job, _ in batch])
            except Exception as error:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                continue
            for (_, future), job_id in zip(batch, ids, strict=True):
                if not future.done():  # the client may have gone; the job stays accepted
                    future.set_result(job_id)
