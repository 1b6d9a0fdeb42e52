"""Jobs running on in-process Dramatiq workers over real RabbitMQ and Postgres."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from actors.messages import job_message
from db.settings import Settings
from tests.integration.conftest import MakeClient, StartWorker
from tests.support.jobs import is_final, job_row, messages, schedule, traces
from tests.support.proxy import TcpProxy, via_proxy
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration


def test_default_fn_runs_to_done_with_exactly_four_messages(
    client: TestClient, start_worker: StartWorker, db: psycopg.Connection[Any]
) -> None:
    start_worker()
    offset = schedule(client, step_seconds=0)

    wait_for(lambda: is_final(db, offset), what="job to finish")

    assert client.get(f"/messages/{offset}").json() == ["result1", "result2", "result3", "done"]
    job = client.get(f"/jobs/{offset}").json()
    assert job["state"] == "succeeded"
    assert job["attempts"] == 1
    assert job["message_count"] == 4
    assert job["started_at"] is not None
    assert job["finished_at"] >= job["started_at"] >= job["created_at"]
    assert [attempt for _, _, attempt in messages(db, offset)] == [1, 1, 1, 1]


def test_step_pause_follows_step_seconds(
    client: TestClient, start_worker: StartWorker, db: psycopg.Connection[Any]
) -> None:
    start_worker()
    offset = schedule(client, step_seconds=0.3)

    wait_for(lambda: is_final(db, offset), what="job to finish")

    row = job_row(db, offset)
    assert (row["finished_at"] - row["started_at"]).total_seconds() >= 0.9


def test_duplicate_deliveries_run_the_job_once(
    client: TestClient,
    start_worker: StartWorker,
    db: psycopg.Connection[Any],
    settings: Settings,
    tmp_path: Path,
) -> None:
    # Given a job whose message RabbitMQ delivers four times
    offset = schedule(client, "traced_fn", trace_dir=str(tmp_path), sleep_seconds=0.05)
    wait_for(lambda: job_row(db, offset)["published_at"] is not None, what="publish")
    worker = start_worker(threads=4)
    for _ in range(3):
        worker.app.broker.enqueue(job_message(queue_name=settings.queue_name, job_id=offset))

    wait_for(lambda: is_final(db, offset), what="job to finish")
    time.sleep(0.5)  # give the duplicates time to be (not) processed

    # Then every step ran and was recorded exactly once
    assert traces(tmp_path, offset) == ["fetch attempt=1", "compute attempt=1", "store attempt=1"]
    assert [body for _, body, _ in messages(db, offset)] == ["fetch", "compute", "store", "done"]
    assert job_row(db, offset)["attempts"] == 1


def test_failed_step_retries_with_backoff_and_resumes_after_last_recorded_step(
    client: TestClient, start_worker: StartWorker, db: psycopg.Connection[Any], tmp_path: Path
) -> None:
    start_worker()
    offset = schedule(
        client, "traced_fn", trace_dir=str(tmp_path), fail_step=2, fail_until_attempt=3
    )

    wait_for(lambda: is_final(db, offset), what="job to finish")

    assert traces(tmp_path, offset) == [
        "fetch attempt=1",
        "compute attempt=1",
        "compute attempt=2",
        "compute attempt=3",
        "store attempt=3",
    ]
    assert messages(db, offset) == [
        (1, "fetch", 1),
        (2, "compute", 3),
        (3, "store", 3),
        (4, "done", 3),
    ]
    row = job_row(db, offset)
    assert row["state"] == "succeeded"
    assert row["attempts"] == 3
    assert "RuntimeError: compute fails on attempt 2" in row["last_error"]


def test_job_that_keeps_failing_ends_failed_with_its_error(
    client: TestClient, start_worker: StartWorker, db: psycopg.Connection[Any]
) -> None:
    start_worker()
    offset = schedule(client, "always_fails")

    wait_for(lambda: is_final(db, offset), what="job to fail")

    job = client.get(f"/jobs/{offset}").json()
    assert job["state"] == "failed"
    assert job["attempts"] == 3  # max_attempts in the test settings
    assert job["last_error"] == "attempt 3: ValueError: this job always fails"
    assert job["finished_at"] is not None
    assert client.get(f"/messages/{offset}").json() == []


def test_long_job_is_handed_on_between_deliveries_without_a_new_attempt(
    client: TestClient, start_worker: StartWorker, db: psycopg.Connection[Any], tmp_path: Path
) -> None:
    # Given deliveries that may run steps for only a moment (the consumer-timeout guard)
    start_worker(slice_seconds=0.01)
    offset = schedule(client, "traced_fn", trace_dir=str(tmp_path), sleep_seconds=0.1)

    wait_for(lambda: is_final(db, offset), what="job to finish")

    assert traces(tmp_path, offset) == ["fetch attempt=1", "compute attempt=1", "store attempt=1"]
    assert [body for _, body, _ in messages(db, offset)] == ["fetch", "compute", "store", "done"]
    row = job_row(db, offset)
    assert row["state"] == "succeeded"
    assert row["attempts"] == 1


def test_worker_shutdown_hands_the_job_on_and_another_worker_finishes_it(
    client: TestClient, start_worker: StartWorker, db: psycopg.Connection[Any], tmp_path: Path
) -> None:
    first = start_worker()
    offset = schedule(client, "traced_fn", trace_dir=str(tmp_path), sleep_seconds=1.5)
    wait_for(lambda: job_row(db, offset)["message_count"] >= 1, what="first step")

    # When the worker shuts down mid-step, it stops at once and gives the job back
    started = time.monotonic()
    first.stop()
    assert time.monotonic() - started < 5
    row = job_row(db, offset)
    assert row["state"] == "queued"
    assert row["lease_owner"] is None

    # Then another worker carries on after the last recorded step, in the same attempt
    start_worker()
    wait_for(lambda: is_final(db, offset), what="job to finish")
    assert [body for _, body, _ in messages(db, offset)] == ["fetch", "compute", "store", "done"]
    assert job_row(db, offset)["attempts"] == 1


def test_job_committed_but_never_published_is_published_by_the_sweeper(
    client: TestClient,
    start_worker: StartWorker,
    db: psycopg.Connection[Any],
) -> None:
    # Given a job the API committed but died before publishing
    row = db.execute(
        "INSERT INTO jobs (fn, deployment, framework, params, max_attempts)"
        " VALUES ('default_fn', 'Docker', 'FastAPI', '{\"step_seconds\": 0}', 3) RETURNING id"
    ).fetchone()
    assert row is not None
    offset = row[0]

    # When workers run, their sweeper publishes it after the grace period
    start_worker()
    wait_for(lambda: is_final(db, offset), what="job to finish")
    assert client.get(f"/messages/{offset}").json() == ["result1", "result2", "result3", "done"]


def test_job_of_a_dead_worker_is_requeued_once_its_lease_expires(
    client: TestClient, start_worker: StartWorker, db: psycopg.Connection[Any]
) -> None:
    # Given a job whose worker died after recording its first step
    row = db.execute(
        "INSERT INTO jobs (fn, deployment, framework, params, max_attempts, state, attempts,"
        " message_count, steps_done, lease_owner, lease_expires_at, published_at, started_at)"
        " VALUES ('default_fn', 'Docker', 'FastAPI', '{\"step_seconds\": 0}', 3, 'running', 1,"
        " 1, 1, 'gone-host/4242/abc', now() - interval '1 second', now(), now()) RETURNING id"
    ).fetchone()
    assert row is not None
    offset = row[0]
    db.execute(
        "INSERT INTO messages (job_id, seq, step, body, attempt) VALUES (%s, 1, 1, 'result1', 1)",
        (offset,),
    )

    start_worker()
    wait_for(lambda: is_final(db, offset), what="job to finish")

    assert messages(db, offset) == [
        (1, "result1", 1),
        (2, "result2", 2),
        (3, "result3", 2),
        (4, "done", 2),
    ]
    job = job_row(db, offset)
    assert job["attempts"] == 2
    assert job["last_error"] == "worker gone-host/4242 stopped during attempt 1 (lease expired)"


def test_dead_worker_on_the_last_attempt_fails_the_job(
    start_worker: StartWorker, db: psycopg.Connection[Any]
) -> None:
    row = db.execute(
        "INSERT INTO jobs (fn, deployment, framework, max_attempts, state, attempts,"
        " lease_owner, lease_expires_at, published_at)"
        " VALUES ('default_fn', 'Docker', 'FastAPI', 3, 'running', 3,"
        " 'gone-host/4242/abc', now() - interval '1 second', now()) RETURNING id"
    ).fetchone()
    assert row is not None

    start_worker()
    wait_for(lambda: is_final(db, row[0]), what="job to fail")

    job = job_row(db, row[0])
    assert job["state"] == "failed"
    assert job["last_error"] == "worker gone-host/4242 stopped during attempt 3 (lease expired)"


def test_job_scheduled_while_rabbitmq_is_down_runs_once_it_is_back(
    make_client: MakeClient,
    start_worker: StartWorker,
    broker_url: str,
    broker_proxy: TcpProxy,
    db: psycopg.Connection[Any],
) -> None:
    # Given an API and a worker whose RabbitMQ goes away
    proxied = via_proxy(broker_url, broker_proxy)
    client = make_client(broker_url=proxied)
    start_worker(broker_url=proxied)
    broker_proxy.stop()

    # When a job is scheduled, it is accepted at once and waits in Postgres
    started = time.monotonic()
    offset = schedule(client, step_seconds=0)
    assert time.monotonic() - started < 1.0
    time.sleep(1.0)
    assert job_row(db, offset)["state"] == "queued"

    # Then it runs to done once RabbitMQ is back
    broker_proxy.start()
    wait_for(lambda: is_final(db, offset), timeout=30, what="job to finish")
    assert client.get(f"/messages/{offset}").json() == ["result1", "result2", "result3", "done"]
    assert job_row(db, offset)["attempts"] == 1


def test_job_whose_message_was_lost_is_published_again(
    client: TestClient, start_worker: StartWorker, db: psycopg.Connection[Any]
) -> None:
    # Given a queued job marked published long ago whose message no broker holds
    # (a purged queue, an in-process broker that restarted)
    row = db.execute(
        "INSERT INTO jobs (fn, deployment, framework, params, max_attempts, published_at)"
        " VALUES ('default_fn', 'Docker', 'FastAPI', '{\"step_seconds\": 0}', 3,"
        " now() - interval '1 hour') RETURNING id"
    ).fetchone()
    assert row is not None

    start_worker()
    wait_for(lambda: is_final(db, row[0]), what="job to finish")

    assert job_row(db, row[0])["state"] == "succeeded"
    assert [body for _, body, _ in messages(db, row[0])][-1] == "done"
