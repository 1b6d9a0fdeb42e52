"""Fan-out of job notifications and the catch-up logic of a follower, without servers."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

from api.events import (
    FOLLOWER_QUEUE_LIMIT,
    RESYNC,
    JobEvents,
    MessageNote,
    Note,
    StateNote,
    job_updates,
    parse_note,
)
from db.models import JobState
from db.queries import MessageRecord

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def note(seq: int, body: str | None = "x") -> MessageNote:
    return MessageNote(seq=seq, body=body, created_at=NOW, attempt=1)


def test_notifications_are_parsed() -> None:
    payload = json.dumps(
        {"job": 7, "seq": 2, "attempt": 1, "created_at": NOW.isoformat(), "body": "result2"}
    )
    assert parse_note(payload) == (7, MessageNote(2, "result2", NOW, 1))
    state = json.dumps({"job": 7, "state": "succeeded", "message_count": 4})
    assert parse_note(state) == (7, StateNote(JobState.SUCCEEDED, 4))


def test_a_slow_follower_resyncs_alone() -> None:
    async def scenario() -> tuple[list[Note], list[Note]]:
        events = JobEvents("postgresql+psycopg://u@127.0.0.1/db", connect_timeout=1)
        with events.follow(1) as slow, events.follow(1) as healthy:
            for _ in range(FOLLOWER_QUEUE_LIMIT):
                slow.put_nowait(note(0))
            events._deliver(1, note(1))
            return [slow.get_nowait() for _ in range(slow.qsize())], [healthy.get_nowait()]

    slow, healthy = asyncio.run(scenario())
    assert slow == [RESYNC]
    assert healthy == [note(1)]


def test_follower_catches_up_on_a_gap_and_stops_at_the_end() -> None:
    fetched: list[int] = []

    async def fetch(after: int) -> tuple[JobState, list[MessageRecord]]:
        fetched.append(after)
        return JobState.SUCCEEDED, [
            MessageRecord(seq, f"m{seq}", NOW, 1) for seq in range(after + 1, 5)
        ]

    async def scenario() -> list[object]:
        queue: asyncio.Queue[Note] = asyncio.Queue()
        for item in (note(1, "m1"), note(1, "again"), note(3, "m3")):
            queue.put_nowait(item)
        return [
            update
            async for update in job_updates(
                queue, fetch, after=0, state=JobState.RUNNING, backlog=[]
            )
        ]

    updates = asyncio.run(scenario())
    assert updates[0] is JobState.RUNNING
    bodies = [u.body for u in updates if isinstance(u, MessageRecord)]
    assert bodies == ["m1", "m2", "m3", "m4"]  # the duplicate skipped, the gap fetched
    assert updates[-1] is JobState.SUCCEEDED
    assert fetched == [1]
