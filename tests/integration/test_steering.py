"""Steering jobs: cancel, retry, Idempotency-Key, callbacks, listing."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from pydantic import SecretStr

from tests.integration.conftest import LiveServer, StartServer, StartWorker
from tests.support.jobs import count_jobs, is_final, job_row, messages, schedule, traces
from tests.support.waiting import wait_for
from tests.support.webhooks import SECRET, Receiver, expected_signature

pytestmark = pytest.mark.integration

DEFAULT = {"deployment": "Docker", "framework": "FastAPI", "fn": "default_fn"}


# --- cancel ---------------------------------------------------------------------------


def test_cancelling_a_queued_job_ends_it_at_once_and_it_never_runs(
    live_api: LiveServer, start_worker: StartWorker, db: psycopg.Connection[Any], tmp_path: Path
) -> None:
    offset = schedule(live_api.client, "traced_fn", trace_dir=str(tmp_path))

    response = httpx.post(f"{live_api.url}/jobs/{offset}/cancel")

    assert response.status_code == 200
    assert response.json()["state"] == "cancelled"
    assert response.json()["finished_at"] is not None
    start_worker()
    wait_for(lambda: job_row(db, offset)["published_at"] is not None or True)
    assert httpx.get(f"{live_api.url}/messages/{offset}").json() == ["cancelled"]
    assert traces(tmp_path, offset) == []
    assert job_row(db, offset)["state"] == "cancelled"


def test_cancelling_a_running_job_stops_it_at_the_next_step_boundary(
    live_api: LiveServer, start_worker: StartWorker, db: psycopg.Connection[Any], tmp_path: Path
) -> None:
    start_worker()
    offset = schedule(live_api.client, "traced_fn", trace_dir=str(tmp_path), sleep_seconds=1.5)
    wait_for(lambda: job_row(db, offset)["steps_done"] >= 1, what="first step")

    response = httpx.post(f"{live_api.url}/jobs/{offset}/cancel")

    assert response.status_code == 200
    assert response.json()["state"] == "running"
    assert response.json()["cancel_requested"] is True
    wait_for(lambda: is_final(db, offset), what="job to stop")
    bodies = [body for _, body, _ in messages(db, offset)]
    assert job_row(db, offset)["state"] == "cancelled"
    assert bodies[-1] == "cancelled"
    assert "done" not in bodies
    assert bodies[:-1] in (["fetch"], ["fetch", "compute"])
    assert "store attempt=1" not in traces(tmp_path, offset)


def test_cancelling_a_finished_job_is_409(
    live_api: LiveServer, start_worker: StartWorker, db: psycopg.Connection[Any]
) -> None:
    start_worker()
    offset = schedule(live_api.client, step_seconds=0)
    wait_for(lambda: is_final(db, offset), what="job to finish")

    response = httpx.post(f"{live_api.url}/jobs/{offset}/cancel")

    assert response.status_code == 409
    assert response.json() == {"detail": "Job already succeeded"}
    assert httpx.post(f"{live_api.url}/jobs/424242/cancel").status_code == 404


# --- retry ----------------------------------------------------------------------------


def test_retrying_a_failed_job_resumes_after_its_last_recorded_step(
    live_api: LiveServer, start_worker: StartWorker, db: psycopg.Connection[Any], tmp_path: Path
) -> None:
    start_worker()
    offset = schedule(
        live_api.client, "traced_fn", trace_dir=str(tmp_path), fail_step=2, fail_until_attempt=4
    )
    wait_for(lambda: is_final(db, offset), what="job to fail")
    assert job_row(db, offset)["state"] == "failed"  # 3 attempts allowed in the test settings

    response = httpx.post(f"{live_api.url}/jobs/{offset}/retry")

    assert response.status_code == 200
    assert response.json()["state"] == "queued"
    assert response.json()["max_attempts"] == 6
    wait_for(lambda: is_final(db, offset), what="job to finish")
    assert job_row(db, offset)["state"] == "succeeded"
    assert messages(db, offset) == [
        (1, "fetch", 1),
        (2, "compute", 4),
        (3, "store", 4),
        (4, "done", 4),
    ]
    assert traces(tmp_path, offset).count("fetch attempt=1") == 1
    assert not any(line.startswith("fetch attempt=4") for line in traces(tmp_path, offset))


def test_retrying_a_cancelled_job_runs_it(
    live_api: LiveServer, start_worker: StartWorker, db: psycopg.Connection[Any]
) -> None:
    offset = schedule(live_api.client, step_seconds=0)
    httpx.post(f"{live_api.url}/jobs/{offset}/cancel")
    start_worker()

    assert httpx.post(f"{live_api.url}/jobs/{offset}/retry").status_code == 200
    wait_for(lambda: is_final(db, offset), what="job to finish")

    assert httpx.get(f"{live_api.url}/messages/{offset}").json() == [
        "cancelled",
        "result1",
        "result2",
        "result3",
        "done",
    ]


def test_retrying_a_queued_or_succeeded_job_is_409(live_api: LiveServer) -> None:
    offset = schedule(live_api.client)
    response = httpx.post(f"{live_api.url}/jobs/{offset}/retry")
    assert response.status_code == 409
    assert "queued" in response.json()["detail"]
    assert httpx.post(f"{live_api.url}/jobs/424242/retry").status_code == 404


# --- Idempotency-Key ------------------------------------------------------------------


def test_same_key_same_body_returns_the_original_offset(
    live_api: LiveServer, db: psycopg.Connection[Any]
) -> None:
    headers = {"Idempotency-Key": "order-17"}
    first = httpx.post(f"{live_api.url}/schedule", json=DEFAULT, headers=headers)
    second = httpx.post(f"{live_api.url}/schedule", json=DEFAULT, headers=headers)

    assert first.status_code == second.status_code == 202
    assert first.json() == second.json()
    assert second.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert count_jobs(db) == 1


def test_same_key_different_body_is_422(live_api: LiveServer, db: psycopg.Connection[Any]) -> None:
    headers = {"Idempotency-Key": "order-18"}
    httpx.post(f"{live_api.url}/schedule", json=DEFAULT, headers=headers)
    other = {**DEFAULT, "deployment": "Kubernetes"}

    response = httpx.post(f"{live_api.url}/schedule", json=other, headers=headers)

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["header", "idempotency-key"]
    assert count_jobs(db) == 1


def test_racing_requests_with_one_key_create_one_job(
    live_api: LiveServer, db: psycopg.Connection[Any]
) -> None:
    headers = {"Idempotency-Key": "race-1"}
    start = threading.Barrier(12)

    def post(_: int) -> int:
        with httpx.Client() as client:
            start.wait()
            response = client.post(f"{live_api.url}/schedule", json=DEFAULT, headers=headers)
        assert response.status_code == 202, response.text
        return int(response.json()["offset"])

    with ThreadPoolExecutor(12) as pool:
        offsets = set(pool.map(post, range(12)))

    assert len(offsets) == 1
    assert count_jobs(db) == 1


def test_expired_key_schedules_a_new_job(
    start_server: StartServer, db: psycopg.Connection[Any]
) -> None:
    api = start_server(idempotency_ttl_seconds=0.2)
    headers = {"Idempotency-Key": "short-lived"}
    first = httpx.post(f"{api.url}/schedule", json=DEFAULT, headers=headers).json()
    wait_for(
        lambda: httpx.post(f"{api.url}/schedule", json=DEFAULT, headers=headers).json() != first,
        timeout=5,
        what="key to expire",
    )
    assert count_jobs(db) == 2


@pytest.mark.parametrize("key", ["", "x" * 256, "has space"])
def test_malformed_idempotency_key_is_422(
    live_api: LiveServer, db: psycopg.Connection[Any], key: str
) -> None:
    response = httpx.post(
        f"{live_api.url}/schedule", json=DEFAULT, headers={"Idempotency-Key": key}
    )
    assert response.status_code == 422
    assert count_jobs(db) == 0


# --- callbacks ------------------------------------------------------------------------


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver(failures=2)
    yield server
    server.close()


def test_callback_is_signed_retried_and_recorded(
    start_server: StartServer,
    start_worker: StartWorker,
    db: psycopg.Connection[Any],
    receiver: Receiver,
) -> None:
    overrides = {"webhook_secret": SecretStr(SECRET), "webhook_backoff_seconds": 0.1}
    api = start_server(**overrides)
    start_worker(**overrides)

    response = httpx.post(
        f"{api.url}/schedule",
        json={**DEFAULT, "params": {"step_seconds": 0}, "callback_url": receiver.url},
    )
    offset = response.json()["offset"]

    job = wait_for(
        lambda: (
            (j := httpx.get(f"{api.url}/jobs/{offset}").json())["callback_state"] == "delivered"
            and j
        ),
        timeout=30,
        what="webhook delivered",
    )
    assert len(receiver.requests) == 3
    assert [d["status_code"] for d in job["webhook_deliveries"]] == [500, 500, 204]
    assert [d["attempt"] for d in job["webhook_deliveries"]] == [1, 2, 3]
    assert job["callback_attempts"] == 3
    ids = {headers["webhook-id"] for headers, _ in receiver.requests}
    assert len(ids) == 1
    for headers, body in receiver.requests:
        assert headers["webhook-signature"] == expected_signature(headers, body)
        payload = json.loads(body)
        assert payload["offset"] == offset
        assert payload["state"] == "succeeded"
        assert payload["message_count"] == 4


def test_callback_url_needs_a_configured_secret(
    live_api: LiveServer, db: psycopg.Connection[Any]
) -> None:
    response = httpx.post(
        f"{live_api.url}/schedule",
        json={**DEFAULT, "callback_url": "http://127.0.0.1:9/hook"},
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "callback_url"]
    assert count_jobs(db) == 0


@pytest.mark.parametrize("url", ["not a url", "ftp://example.com/x", "http://" + "a" * 2000])
def test_bad_callback_url_is_422(start_server: StartServer, url: str) -> None:
    api = start_server(webhook_secret=SecretStr(SECRET))
    response = httpx.post(f"{api.url}/schedule", json={**DEFAULT, "callback_url": url})
    assert response.status_code == 422


# --- listing --------------------------------------------------------------------------


def test_jobs_are_listed_newest_first_with_filters_and_cursor(
    live_api: LiveServer, db: psycopg.Connection[Any]
) -> None:
    offsets = [schedule(live_api.client) for _ in range(5)]
    traced = schedule(live_api.client, "traced_fn", trace_dir="/tmp")
    httpx.post(f"{live_api.url}/jobs/{offsets[0]}/cancel")

    first = httpx.get(f"{live_api.url}/jobs", params={"limit": 4}).json()
    second = httpx.get(
        f"{live_api.url}/jobs", params={"limit": 4, "cursor": first["next_cursor"]}
    ).json()

    listed = [job["offset"] for job in first["items"] + second["items"]]
    assert listed == sorted([*offsets, traced], reverse=True)
    assert second["next_cursor"] is None
    by_fn = httpx.get(f"{live_api.url}/jobs", params={"fn": "traced_fn"}).json()
    assert [job["offset"] for job in by_fn["items"]] == [traced]
    cancelled = httpx.get(f"{live_api.url}/jobs", params={"state": "cancelled"}).json()
    assert [job["offset"] for job in cancelled["items"]] == [offsets[0]]
    created = job_row(db, offsets[2])["created_at"].isoformat()
    before = httpx.get(f"{live_api.url}/jobs", params={"created_before": created}).json()
    assert [job["offset"] for job in before["items"]] == [offsets[1], offsets[0]]


@pytest.mark.parametrize(
    "query", [{"state": "sleeping"}, {"cursor": "abc"}, {"limit": 0}, {"created_after": "soon"}]
)
def test_bad_list_parameters_are_422(live_api: LiveServer, query: dict[str, str]) -> None:
    response = httpx.get(f"{live_api.url}/jobs", params=query)
    assert response.status_code == 422
