"""Live job events: one LISTEN connection per API process, fanned out in memory.

Workers' inserts and state changes fire NOTIFY on ``jobline_events`` (triggers
in the schema). This module keeps one connection listening and hands each
notification to the followers of that job only. A follower waiting for news
costs no query; it queries only to catch up (a gap, a body too large for the
payload, or a reconnect of the listener, after which anything may be missed).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime

import psycopg
from sqlalchemy.engine import make_url

from db.models import FINAL_STATES, JobState
from db.queries import MessageRecord

logger = logging.getLogger(__name__)

CHANNEL = "jobline_events"
FOLLOWER_QUEUE_LIMIT = 1000
RECONNECT_MAX_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class MessageNote:
    """A message was recorded; ``body`` is None when it did not fit the payload."""

    seq: int
    body: str | None
    created_at: datetime
    attempt: int


@dataclass(frozen=True, slots=True)
class StateNote:
    """The job changed state; ``message_count`` is its message total at that moment."""

    state: JobState
    message_count: int


@dataclass(frozen=True, slots=True)
class Resync:
    """Notifications may have been lost: catch up with a query."""


Note = MessageNote | StateNote | Resync
RESYNC = Resync()


def parse_note(payload: str) -> tuple[int, Note]:
    """(job id, note) from a ``jobline_events`` payload."""
    data = json.loads(payload)
    job_id = int(data["job"])
    if "state" in data:
        return job_id, StateNote(JobState(data["state"]), int(data["message_count"]))
    return job_id, MessageNote(
        seq=int(data["seq"]),
        body=data["body"],
        created_at=datetime.fromisoformat(data["created_at"]),
        attempt=int(data["attempt"]),
    )


class JobEvents:
    """Listens on ``jobline_events`` and feeds the queues of the jobs' followers."""

    def __init__(self, database_url: str, *, connect_timeout: float) -> None:
        url = make_url(database_url).set(drivername="postgresql")
        self._conninfo = url.render_as_string(hide_password=False)
        self._connect_timeout = connect_timeout
        self._followers: dict[int, set[asyncio.Queue[Note]]] = {}
        self._task: asyncio.Task[None] | None = None
        self.listening = asyncio.Event()

    def start(self) -> None:
        """Start listening in the background (reconnecting as needed)."""
        self._task = asyncio.create_task(self._listen(), name="jobline-listen")

    async def close(self) -> None:
        """Stop listening."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @property
    def follower_count(self) -> int:
        """Followers subscribed right now, over all jobs."""
        return sum(len(queues) for queues in self._followers.values())

    @contextlib.contextmanager
    def follow(self, job_id: int) -> Iterator[asyncio.Queue[Note]]:
        """Subscribe to ``job_id``; subscribe before reading, so nothing falls in between."""
        queue: asyncio.Queue[Note] = asyncio.Queue()
        self._followers.setdefault(job_id, set()).add(queue)
        try:
            yield queue
        finally:
            queues = self._followers.get(job_id)
            if queues is not None:
                queues.discard(queue)
                if not queues:
                    del self._followers[job_id]

    def _deliver(self, job_id: int, note: Note) -> None:
        for queue in self._followers.get(job_id, ()):
            if queue.qsize() >= FOLLOWER_QUEUE_LIMIT:
                # A follower this far behind catches up with one query instead.
                while not queue.empty():
                    queue.get_nowait()
                queue.put_nowait(RESYNC)
            else:
                queue.put_nowait(note)

    def _resync_all(self) -> None:
        for job_id in list(self._followers):
            self._deliver(job_id, RESYNC)

    async def _listen(self) -> None:
        delay = 0.2
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._conninfo,
                    autocommit=True,
                    connect_timeout=max(1, round(self._connect_timeout)),
                ) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    self.listening.set()
                    delay = 0.2
                    self._resync_all()  # whatever happened while we were not listening
                    async for notify in conn.notifies():
                        try:
                            job_id, note = parse_note(notify.payload)
                        except (ValueError, KeyError) as error:
                            logger.warning("ignoring malformed notification %r: %s", notify, error)
                            continue
                        self._deliver(job_id, note)
            except (psycopg.Error, OSError) as error:
                logger.warning(
                    "job events: listener lost (%s); reconnecting in %.1fs", error, delay
                )
            self.listening.clear()
            self._resync_all()
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_SECONDS)


# Reads the job's state and its messages after a seq; None if the job is gone.
Fetch = Callable[[int], Awaitable[tuple[JobState, list[MessageRecord]] | None]]


async def job_updates(
    queue: asyncio.Queue[Note],
    fetch: Fetch,
    *,
    after: int,
    state: JobState,
    backlog: list[MessageRecord],
) -> AsyncIterator[MessageRecord | JobState]:
    """Yield the job's state, its messages after ``after``, then each change until it ends.

    ``state`` and ``backlog`` come from a fetch made after subscribing ``queue``;
    notes already covered by it are skipped by seq, so nothing repeats or goes missing.
    """
    last = after
    yield state
    for message in backlog:
        yield message
        last = message.seq
    while state not in FINAL_STATES:
        note = await queue.get()
        if isinstance(note, MessageNote):
            if note.seq <= last:
                continue
            if note.seq == last + 1 and note.body is not None:
                yield MessageRecord(note.seq, note.body, note.created_at, note.attempt)
                last = note.seq
                continue
        elif isinstance(note, StateNote) and note.message_count <= last:
            if note.state != state:
                state = note.state
                yield state
            continue
        # A gap, a body too big for the payload, or a resync: catch up with one query.
        fetched = await fetch(last)
        if fetched is None:
            return
        fetched_state, messages = fetched
        for message in messages:
            yield message
            last = message.seq
        if fetched_state != state:
            state = fetched_state
            yield state
