"""The HTTP API against real Postgres and RabbitMQ: validation, errors, resources, OpenAPI."""

from __future__ import annotations

import time
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from tests.integration.conftest import MakeClient
from tests.support.jobs import count_jobs, job_row
from tests.support.proxy import TcpProxy, via_proxy
from tests.support.servers import queue_depth
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

VALID = {"deployment": "Docker", "framework": "FastAPI", "fn": "default_fn"}


def test_schedule_answers_202_with_offset_and_location(
    client: TestClient, db: psycopg.Connection[Any], broker_url: str, queue_name: str
) -> None:
    # When a valid job is posted
    response = client.post("/schedule", json={**VALID, "params": {"step_seconds": 0}})

    # Then it is accepted with its id, stored, and published for the workers
    assert response.status_code == 202
    offset = response.json()["offset"]
    assert isinstance(offset, int)
    assert response.headers["location"] == f"/jobs/{offset}"
    row = job_row(db, offset)
    assert row["state"] == "queued"
    assert row["params"] == {"step_seconds": 0}
    wait_for(lambda: job_row(db, offset)["published_at"] is not None, what="published_at")
    assert queue_depth(broker_url, queue_name) == 1


def test_offsets_come_from_one_sequence_in_order(client: TestClient) -> None:
    offsets = [client.post("/schedule", json=VALID).json()["offset"] for _ in range(5)]
    assert offsets == sorted(offsets)
    assert len(set(offsets)) == 5


def test_params_default_filled_in(client: TestClient) -> None:
    offset = client.post("/schedule", json=VALID).json()["offset"]
    job = client.get(f"/jobs/{offset}").json()
    assert job["params"] == {"step_seconds": 10.0}
    assert job["state"] == "queued"
    assert job["attempts"] == 0
    assert job["message_count"] == 0
    assert job["fn"] == "default_fn"
    assert job["deployment"] == "Docker"
    assert job["framework"] == "FastAPI"
    assert job["started_at"] is None
    assert job["finished_at"] is None
    assert job["last_error"] is None


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({**VALID, "fn": "no_such_fn"}, ["body", "fn"]),
        ({"deployment": "Docker", "framework": "FastAPI"}, ["body", "fn"]),
        ({**VALID, "deployment": 5}, ["body", "deployment"]),
        ({**VALID, "framework": None}, ["body", "framework"]),
        ({**VALID, "deployment": "x" * 201}, ["body", "deployment"]),
        ({**VALID, "deployment": ""}, ["body", "deployment"]),
        ({**VALID, "deployment": "a\x00b"}, ["body", "deployment"]),
        ({**VALID, "params": {"step_seconds": 61}}, ["body", "params", "step_seconds"]),
        ({**VALID, "params": {"step_seconds": -1}}, ["body", "params", "step_seconds"]),
        ({**VALID, "params": {"unknown": 1}}, ["body", "params", "unknown"]),
        ({**VALID, "params": [1, 2]}, ["body", "params"]),
        ({**VALID, "params": {"x": "\x00"}}, ["body", "params"]),
        ({**VALID, "fn": "traced_fn", "params": {"blob": "x" * 70_000}}, ["body", "params"]),
        ({**VALID, "extra_field": 1}, ["body", "extra_field"]),
        ([VALID], ["body"]),
    ],
)
def test_bad_input_is_422_json_and_stores_nothing(
    client: TestClient, db: psycopg.Connection[Any], body: object, where: list[str]
) -> None:
    response = client.post("/schedule", json=body)

    assert response.status_code == 422
    assert response.headers["content-type"] == "application/json"
    problems = response.json()["detail"]
    assert any(problem["loc"][: len(where)] == where for problem in problems), problems
    assert count_jobs(db) == 0


@pytest.mark.parametrize(
    "raw", [b"not json", b"", b'{"deployment": "Docker",', b"\xff\xfe", b"null"]
)
def test_non_json_body_is_422(client: TestClient, db: psycopg.Connection[Any], raw: bytes) -> None:
    response = client.post("/schedule", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert "detail" in response.json()
    assert count_jobs(db) == 0


@pytest.mark.parametrize("path", ["/messages", "/jobs"])
@pytest.mark.parametrize(
    "offset", ["0", "-1", "999999", "9223372036854775807", "99999999999999999999"]
)
def test_unknown_offset_is_404(client: TestClient, path: str, offset: str) -> None:
    response = client.get(f"{path}/{offset}")
    assert response.status_code == 404
    assert response.json() == {"detail": "Offset not found"}


@pytest.mark.parametrize("path", ["/messages", "/jobs"])
@pytest.mark.parametrize("offset", ["abc", "1.5", "1e3"])
def test_non_numeric_offset_is_422(client: TestClient, path: str, offset: str) -> None:
    response = client.get(f"{path}/{offset}")
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["path", "offset"]


def test_messages_of_a_queued_job_is_empty_list(client: TestClient) -> None:
    offset = client.post("/schedule", json=VALID).json()["offset"]
    response = client.get(f"/messages/{offset}")
    assert response.status_code == 200
    assert response.json() == []


def test_schedule_while_rabbitmq_down_answers_202_within_a_second(
    make_client: MakeClient,
    broker_url: str,
    broker_proxy: TcpProxy,
    db: psycopg.Connection[Any],
) -> None:
    # Given an API whose RabbitMQ goes away after start-up
    client = make_client(broker_url=via_proxy(broker_url, broker_proxy))
    broker_proxy.stop()

    # When a job is scheduled
    started = time.monotonic()
    response = client.post("/schedule", json=VALID)
    elapsed = time.monotonic() - started

    # Then it is accepted at once and waits in Postgres, unpublished
    assert response.status_code == 202
    assert elapsed < 1.0
    offset = response.json()["offset"]
    time.sleep(0.5)
    row = job_row(db, offset)
    assert row["state"] == "queued"
    assert row["published_at"] is None


def test_schedule_while_postgres_down_answers_503_json(
    make_client: MakeClient, database_url: str, database_proxy: TcpProxy
) -> None:
    client = make_client(
        database_url=via_proxy(database_url, database_proxy).replace(
            "postgresql://", "postgresql+psycopg://"
        )
    )
    assert client.post("/schedule", json=VALID).status_code == 202

    database_proxy.stop()
    response = client.post("/schedule", json=VALID)
    assert response.status_code == 503
    assert response.json() == {"detail": "Database unavailable, try again shortly"}
    assert client.get("/jobs/1").status_code == 503
    assert client.get("/health").status_code == 503

    # And it recovers when Postgres is back
    database_proxy.start()
    assert wait_for(
        lambda: client.post("/schedule", json=VALID).status_code == 202, what="recovery"
    )
    assert client.get("/health").json() == {"status": "ok", "database": "ok"}


def test_openapi_documents_fields_examples_and_status_codes(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    schedule = spec["paths"]["/schedule"]["post"]
    assert set(schedule["responses"]) >= {"202", "422", "503"}
    request_schema = spec["components"]["schemas"]["ScheduleRequest"]["properties"]
    assert request_schema["deployment"]["examples"] == ["Docker"]
    assert request_schema["framework"]["examples"] == ["FastAPI"]
    assert request_schema["fn"]["examples"] == ["default_fn"]
    for name in ("deployment", "framework", "fn", "params"):
        assert request_schema[name]["description"]
    for path in ("/messages/{offset}", "/jobs/{offset}"):
        assert set(spec["paths"][path]["get"]["responses"]) >= {"200", "404", "422"}
    job_schema = spec["components"]["schemas"]["JobResource"]["properties"]
    assert {"state", "attempts", "created_at", "started_at", "finished_at", "last_error"} <= set(
        job_schema
    )
    assert client.get("/docs").status_code == 200


def test_functions_lists_registered_job_functions(client: TestClient) -> None:
    functions = {f["name"]: f for f in client.get("/functions").json()}
    assert functions["default_fn"]["steps"] == 3
    assert functions["default_fn"]["params_schema"]["properties"]["step_seconds"]["maximum"] == 60
    assert "traced_fn" in functions
