"""Reading and following a job: keyset reads, long-polls and SSE over LISTEN/NOTIFY."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from sqlalchemy import event

from tests.integration.conftest import LiveServer, StartWorker
from tests.support.jobs import is_final, schedule
from tests.support.sse import Event, read_events
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration


def count_queries(api: LiveServer) -> list[str]:
    """Every SQL statement the API's engine runs from now on."""
    statements: list[str] = []
    engine = api.server.config.app.state.services.engine.sync_engine

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    return statements


def test_messages_are_read_by_keyset_with_limit(
    live_api: LiveServer, start_worker: StartWorker, db: psycopg.Connection[Any]
) -> None:
    start_worker()
    offset = schedule(live_api.client, step_seconds=0)
    wait_for(lambda: is_final(db, offset), what="job to finish")

    page = httpx.get(f"{live_api.url}/jobs/{offset}/messages", params={"after": 1, "limit": 2})

    assert page.status_code == 200
    assert [(m["seq"], m["body"], m["attempt"]) for m in page.json()] == [
        (2, "result2", 1),
        (3, "result3", 1),
    ]
    assert all(m["created_at"] for m in page.json())
    rest = httpx.get(f"{live_api.url}/jobs/{offset}/messages", params={"after": 3}).json()
    assert [m["body"] for m in rest] == ["done"]
    assert httpx.get(f"{live_api.url}/messages/{offset}", params={"after": 2}).json() == [
        "result3",
        "done",
    ]


def test_long_poll_answers_within_a_few_hundred_ms_of_the_commit(
    live_api: LiveServer, start_worker: StartWorker, db: psycopg.Connection[Any], tmp_path: Path
) -> None:
    start_worker()
    offset = schedule(live_api.client, "traced_fn", trace_dir=str(tmp_path), sleep_seconds=1.0)

    # When a client long-polls for the first message while the step still runs
    response = httpx.get(
        f"{live_api.url}/jobs/{offset}/messages", params={"after": 0, "wait": 10}, timeout=15
    )
    arrived = time.time()

    # Then it gets it shortly after the row was committed
    [message] = response.json()
    assert message["body"] == "fetch"
    # created_at is the recording transaction's start; its commit follows within ms.
    row = db.execute(
        "SELECT extract(epoch FROM created_at) FROM messages WHERE job_id = %s AND seq = 1",
        (offset,),
    ).fetchone()
    assert row is not None
    assert arrived - float(row[0]) < 0.3


def test_long_poll_times_out_with_an_empty_list(live_api: LiveServer) -> None:
    offset = schedule(live_api.client)  # no worker: nothing will happen
    started = time.monotonic()
    response = httpx.get(f"{live_api.url}/jobs/{offset}/messages", params={"wait": 0.5})
    assert response.json() == []
    assert 0.5 <= time.monotonic() - started < 2
    plain = httpx.get(f"{live_api.url}/messages/{offset}", params={"wait": 0.3})
    assert plain.json() == []


def test_long_poll_returns_when_the_job_ends(start_server: Any, start_worker: StartWorker) -> None:
    api = start_server(max_attempts=1)
    start_worker(max_attempts=1)
    offset = schedule(api.client, "always_fails")
    started = time.monotonic()
    response = httpx.get(f"{api.url}/jobs/{offset}/messages", params={"wait": 20}, timeout=30)
    assert response.json() == []
    assert time.monotonic() - started < 10
    assert httpx.get(f"{api.url}/jobs/{offset}").json()["state"] == "failed"


@pytest.mark.parametrize("query", [{"wait": 61}, {"wait": -1}, {"after": -1}, {"limit": 0}])
def test_bad_read_parameters_are_422(live_api: LiveServer, query: dict[str, int]) -> None:
    offset = schedule(live_api.client)
    response = httpx.get(f"{live_api.url}/jobs/{offset}/messages", params=query)
    assert response.status_code == 422
    assert response.json()["detail"]


def test_missing_job_is_404_for_reads_and_streams(live_api: LiveServer) -> None:
    for path in ("/jobs/999/messages", "/jobs/999/events", "/messages/999?wait=1"):
        response = httpx.get(live_api.url + path)
        assert response.status_code == 404
        assert response.json() == {"detail": "Offset not found"}


def collect(url: str, *, headers: dict[str, str] | None = None, stop_after: int = 0) -> list[Event]:
    """Read an SSE stream to its end, or until ``stop_after`` message events."""
    events: list[Event] = []
    with httpx.stream("GET", url, headers=headers, timeout=30) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for item in read_events(response):
            events.append(item)
            if stop_after and sum(e.event == "message" for e in events) == stop_after:
                break
    return events


def test_event_stream_sends_messages_and_states_then_closes(
    live_api: LiveServer, start_worker: StartWorker
) -> None:
    start_worker()
    offset = schedule(live_api.client, step_seconds=0.1)

    events = collect(f"{live_api.url}/jobs/{offset}/events")

    messages = [e for e in events if e.event == "message"]
    assert [m.data["body"] for m in messages] == ["result1", "result2", "result3", "done"]
    assert [m.id for m in messages] == ["1", "2", "3", "4"]
    states = [e.data["state"] for e in events if e.event == "state"]
    assert states[-1] == "succeeded"
    assert "running" in states
    assert events[-1].event == "state"


def test_stream_reconnecting_with_last_event_id_gets_exactly_what_it_missed(
    live_api: LiveServer, start_worker: StartWorker, tmp_path: Path
) -> None:
    start_worker()
    offset = schedule(live_api.client, "traced_fn", trace_dir=str(tmp_path), sleep_seconds=0.4)
    url = f"{live_api.url}/jobs/{offset}/events"

    first = collect(url, stop_after=1)
    last_id = [e.id for e in first if e.event == "message"][-1]
    time.sleep(0.5)  # miss a message while disconnected
    second = collect(url, headers={"Last-Event-ID": str(last_id)})

    seen = [e.data["seq"] for e in first + second if e.event == "message"]
    assert seen == [1, 2, 3, 4]
    assert [e.data["body"] for e in second if e.event == "message"] == ["compute", "store", "done"]


def test_idle_streams_cost_no_queries(live_api: LiveServer) -> None:
    offsets = [schedule(live_api.client) for _ in range(20)]  # no worker: they stay queued
    opened = threading.Barrier(len(offsets) + 1)
    stop = threading.Event()

    def follow(offset: int) -> None:
        with httpx.stream("GET", f"{live_api.url}/jobs/{offset}/events", timeout=30) as response:
            lines = response.iter_lines()
            next(lines)  # the first state event has arrived
            opened.wait()
            stop.wait(10)

    threads = [threading.Thread(target=follow, args=(offset,)) for offset in offsets]
    for thread in threads:
        thread.start()
    opened.wait(timeout=20)
    time.sleep(0.3)  # let the publisher's bookkeeping finish

    statements = count_queries(live_api)
    time.sleep(2)
    stop.set()
    for thread in threads:
        thread.join(15)

    assert statements == []
    events = live_api.server.config.app.state.services.events
    wait_for(lambda: events.follower_count == 0, timeout=5, what="followers to unsubscribe")
