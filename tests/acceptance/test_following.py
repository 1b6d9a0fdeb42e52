"""Following and steering jobs across real processes: SSE, long-poll, cancel, keys, webhooks."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.acceptance.conftest import Stack, poll_job
from tests.support.jobs import count_jobs, job_row, messages, traces
from tests.support.sse import Event, read_events
from tests.support.waiting import wait_for
from tests.support.webhooks import SECRET, Receiver, expected_signature

pytestmark = pytest.mark.acceptance

TRACED = {"deployment": "Docker", "framework": "FastAPI", "fn": "traced_fn"}


def traced(trace_dir: Path, **params: Any) -> dict[str, Any]:
    return {**TRACED, "params": {"trace_dir": str(trace_dir), **params}}


def stream(client: httpx.Client, offset: int, **headers: str) -> Iterator[Event]:
    with client.stream("GET", f"/jobs/{offset}/events", headers=headers, timeout=60) as response:
        assert response.status_code == 200
        yield from read_events(response)


def test_stream_follows_a_job_across_a_reconnect_without_loss_or_repeat(
    stack: Stack, tmp_path: Path
) -> None:
    client = stack.api()
    stack.worker()
    offset = client.post("/schedule", json=traced(tmp_path, sleep_seconds=0.5)).json()["offset"]

    # When the client drops the stream after the first message and comes back later
    received: list[Event] = []
    for item in stream(client, offset):
        received.append(item)
        if item.event == "message":
            break
    time.sleep(0.7)
    last_id = received[-1].id
    assert last_id is not None
    received += list(stream(client, offset, **{"Last-Event-ID": last_id}))

    # Then it saw every message exactly once, in order, and the final state
    bodies = [e.data["body"] for e in received if e.event == "message"]
    assert bodies == ["fetch", "compute", "store", "done"]
    assert received[-1].event == "state"
    assert received[-1].data == {"offset": offset, "state": "succeeded"}


def test_long_poll_wakes_up_on_the_next_message(stack: Stack, tmp_path: Path) -> None:
    client = stack.api()
    stack.worker()
    offset = client.post("/schedule", json=traced(tmp_path, sleep_seconds=1.0)).json()["offset"]

    started = time.monotonic()
    first = client.get(f"/jobs/{offset}/messages", params={"wait": 20}, timeout=30).json()
    second = client.get(
        f"/jobs/{offset}/messages", params={"after": first[-1]["seq"], "wait": 20}, timeout=30
    ).json()

    assert [m["body"] for m in first] == ["fetch"]
    assert [m["body"] for m in second] == ["compute"]
    assert time.monotonic() - started < 5


def test_cancel_queued_and_running_jobs(
    stack: Stack, db: psycopg.Connection[Any], tmp_path: Path
) -> None:
    client = stack.api()
    queued = client.post("/schedule", json=traced(tmp_path)).json()["offset"]
    assert client.post(f"/jobs/{queued}/cancel").json()["state"] == "cancelled"

    stack.worker()
    running = client.post("/schedule", json=traced(tmp_path, sleep_seconds=2)).json()["offset"]
    wait_for(lambda: job_row(db, running)["state"] == "running", what="job to start")
    started = time.monotonic()
    assert client.post(f"/jobs/{running}/cancel").json()["cancel_requested"] is True

    job = wait_for(poll_job(client, running), timeout=20, what="job to stop")
    assert job["state"] == "cancelled"
    # The step was interrupted within a heartbeat, well before its 2 s pause ended twice over.
    assert time.monotonic() - started < 3
    assert [body for _, body, _ in messages(db, running)][-1] == "cancelled"
    assert client.get(f"/messages/{queued}").json() == ["cancelled"]
    assert traces(tmp_path, queued) == []
    assert client.post(f"/jobs/{queued}/cancel").status_code == 409


def test_two_racing_requests_with_one_key_create_one_job(
    stack: Stack, db: psycopg.Connection[Any]
) -> None:
    client = stack.api()
    body = {"deployment": "Docker", "framework": "FastAPI", "fn": "default_fn"}
    barrier = threading.Barrier(2)

    def post(_: int) -> httpx.Response:
        with httpx.Client(base_url=client.base_url) as own:
            barrier.wait()
            return own.post("/schedule", json=body, headers={"Idempotency-Key": "k-1"})

    with ThreadPoolExecutor(2) as pool:
        responses = list(pool.map(post, range(2)))

    assert {r.status_code for r in responses} == {202}
    assert len({r.json()["offset"] for r in responses}) == 1
    assert count_jobs(db) == 1


def test_webhook_reaches_a_receiver_that_fails_twice(stack: Stack) -> None:
    receiver = Receiver(failures=2)
    try:
        settings = {
            "JOBLINE_WEBHOOK_SECRET": SECRET,
            "JOBLINE_WEBHOOK_BACKOFF_SECONDS": "0.1",
        }
        client = stack.api(**settings)
        stack.worker(**settings)
        body = {
            "deployment": "Docker",
            "framework": "FastAPI",
            "fn": "default_fn",
            "params": {"step_seconds": 0},
            "callback_url": receiver.url,
        }
        offset = client.post("/schedule", json=body).json()["offset"]

        job = wait_for(
            lambda: (
                (j := client.get(f"/jobs/{offset}").json())["callback_state"] == "delivered" and j
            ),
            timeout=30,
            what="webhook delivered",
        )
    finally:
        receiver.close()

    assert [d["status_code"] for d in job["webhook_deliveries"]] == [500, 500, 204]
    headers, payload = receiver.requests[-1]
    assert headers["webhook-signature"] == expected_signature(headers, payload)
