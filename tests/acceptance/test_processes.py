"""Promises kept by real processes: uvicorn API, Dramatiq workers, signals, outages."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pika
import psycopg
import pytest
from alembic.script import ScriptDirectory

from actors.messages import job_message
from db.migrate import alembic_config
from tests.acceptance.conftest import JOBLINE, REPO_ROOT, Stack, poll_job, wait_until_serving
from tests.support.jobs import count_jobs, job_row, messages
from tests.support.proxy import TcpProxy, free_port, via_proxy
from tests.support.servers import queue_depth, scratch_database
from tests.support.waiting import wait_for

pytestmark = pytest.mark.acceptance

DEFAULT = {"deployment": "Docker", "framework": "FastAPI", "fn": "default_fn"}


def test_job_runs_to_done_with_exactly_four_messages(stack: Stack) -> None:
    client = stack.api()
    stack.worker()

    response = client.post("/schedule", json={**DEFAULT, "params": {"step_seconds": 0.2}})
    assert response.status_code == 202
    offset = response.json()["offset"]

    job = wait_for(poll_job(client, offset), what="job to finish")
    assert job["state"] == "succeeded"
    assert job["attempts"] == 1
    assert client.get(f"/messages/{offset}").json() == ["result1", "result2", "result3", "done"]


def test_two_workers_never_duplicate_a_job(
    stack: Stack, db: psycopg.Connection[Any], broker_url: str, queue_name: str, tmp_path: Path
) -> None:
    # Given two worker groups on different "hosts" with eager sweepers, and every
    # job's message published three times (as redeliveries and sweeps can)
    client = stack.api()
    for _ in range(2):
        stack.worker(processes=2, threads=4, JOBLINE_PUBLISH_GRACE_SECONDS="0")
    offsets = [
        client.post(
            "/schedule",
            json={**DEFAULT, "fn": "traced_fn", "params": {"trace_dir": str(tmp_path)}},
        ).json()["offset"]
        for _ in range(40)
    ]
    connection = pika.BlockingConnection(pika.URLParameters(broker_url))
    channel = connection.channel()
    for offset in offsets:
        for _ in range(2):
            body = job_message(queue_name=queue_name, job_id=offset).encode()
            channel.basic_publish("", queue_name, body, pika.BasicProperties(delivery_mode=2))
    connection.close()

    for offset in offsets:
        wait_for(poll_job(client, offset), what=f"job {offset}")

    # Then each step of each job ran once and was recorded once
    for offset in offsets:
        trace = (tmp_path / f"job-{offset}.log").read_text().splitlines()
        assert [line.split()[0] for line in trace] == ["fetch", "compute", "store"]
        assert [body for _, body, _ in messages(db, offset)] == [
            "fetch",
            "compute",
            "store",
            "done",
        ]
        assert job_row(db, offset)["attempts"] == 1
    pids = {
        line.rsplit("pid=", 1)[1]
        for p in tmp_path.glob("job-*.log")
        for line in p.read_text().splitlines()
    }
    assert len(pids) > 1  # the work really was shared


def test_worker_killed_mid_job_is_replaced_and_the_job_completes(
    stack: Stack, db: psycopg.Connection[Any], tmp_path: Path
) -> None:
    client = stack.api()
    worker = stack.worker()
    offset = client.post(
        "/schedule",
        json={
            **DEFAULT,
            "fn": "traced_fn",
            "params": {"trace_dir": str(tmp_path), "sleep_seconds": 1.0},
        },
    ).json()["offset"]
    wait_for(lambda: job_row(db, offset)["message_count"] >= 1, what="first step recorded")

    # When the process running the job is killed with SIGKILL mid-step
    victim = int(job_row(db, offset)["lease_owner"].split("/")[1])
    os.kill(victim, signal.SIGKILL)

    # Then the group is replaced, the job resumes after its last step, nothing is duplicated
    job = wait_for(poll_job(client, offset), timeout=40, what="job to finish")
    assert job["state"] == "succeeded"
    assert job["attempts"] == 2
    assert "stopped during attempt 1 (lease expired)" in job["last_error"]
    assert [seq for seq, _, _ in messages(db, offset)] == [1, 2, 3, 4]
    assert [body for _, body, _ in messages(db, offset)] == ["fetch", "compute", "store", "done"]
    trace = (tmp_path / f"job-{offset}.log").read_text().splitlines()
    assert trace[0].startswith("fetch attempt=1")
    assert not any(line.startswith("fetch") for line in trace[1:])
    assert all(f"pid={victim}" not in line for line in trace[-2:])
    assert worker.popen.poll() is None  # the supervisor lives on
    assert "restarting" in worker.output()


def test_job_scheduled_while_rabbitmq_is_down_completes_when_it_is_back(
    stack: Stack, broker_url: str, broker_proxy: TcpProxy, db: psycopg.Connection[Any]
) -> None:
    # Given an API and workers that reach RabbitMQ through a link we can cut
    proxied = via_proxy(broker_url, broker_proxy)
    client = stack.api(JOBLINE_BROKER_URL=proxied)
    stack.worker(JOBLINE_BROKER_URL=proxied)
    broker_proxy.stop()

    # When a job is scheduled while RabbitMQ is unreachable
    started = time.monotonic()
    response = client.post("/schedule", json={**DEFAULT, "params": {"step_seconds": 0}})
    assert time.monotonic() - started < 1.0
    assert response.status_code == 202
    offset = response.json()["offset"]
    time.sleep(2)
    assert job_row(db, offset)["state"] == "queued"

    # Then it completes once RabbitMQ is back
    broker_proxy.start()
    job = wait_for(poll_job(client, offset), timeout=40, what="job to finish")
    assert job["state"] == "succeeded"
    assert client.get(f"/messages/{offset}").json() == ["result1", "result2", "result3", "done"]


def test_poison_job_that_kills_its_worker_ends_failed(
    stack: Stack, db: psycopg.Connection[Any]
) -> None:
    client = stack.api(JOBLINE_MAX_ATTEMPTS="2")
    stack.worker(JOBLINE_MAX_ATTEMPTS="2")

    offset = client.post("/schedule", json={**DEFAULT, "fn": "kills_worker"}).json()["offset"]

    job = wait_for(poll_job(client, offset), timeout=60, what="job to fail")
    assert job["state"] == "failed"
    assert job["attempts"] == 2
    assert "stopped during attempt 2 (lease expired)" in job["last_error"]
    assert client.get(f"/messages/{offset}").json() == []


def test_job_that_raises_ends_failed_with_its_error(stack: Stack) -> None:
    client = stack.api()
    stack.worker()

    offset = client.post("/schedule", json={**DEFAULT, "fn": "always_fails"}).json()["offset"]

    job = wait_for(poll_job(client, offset), timeout=30, what="job to fail")
    assert job["state"] == "failed"
    assert job["attempts"] == 3
    assert job["last_error"] == "attempt 3: ValueError: this job always fails"


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({**DEFAULT, "fn": "nope"}, 422),
        ({"deployment": "Docker"}, 422),
        ({**DEFAULT, "framework": 3}, 422),
        ({**DEFAULT, "deployment": "x" * 500}, 422),
        ({**DEFAULT, "params": {"step_seconds": 1000}}, 422),
        ("not json", 422),
    ],
)
def test_bad_input_gets_4xx_json_and_leaves_nothing_behind(
    stack: Stack,
    db: psycopg.Connection[Any],
    broker_url: str,
    queue_name: str,
    body: object,
    status: int,
) -> None:
    client = stack.api()
    if isinstance(body, str):
        response = client.post(
            "/schedule", content=body, headers={"content-type": "application/json"}
        )
    else:
        response = client.post("/schedule", json=body)

    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert "detail" in response.json()
    assert "Traceback" not in response.text
    assert client.get("/messages/-5").status_code == 404
    assert client.get("/jobs/abc").status_code == 422
    assert count_jobs(db) == 0
    assert queue_depth(broker_url, queue_name) == 0


def test_migrate_is_safe_twice_and_from_several_hosts_at_once(
    postgres_url: str, stack_env: dict[str, str]
) -> None:
    with scratch_database(postgres_url) as url:
        env = {**stack_env, "JOBLINE_DATABASE_URL": url}
        racers = [subprocess.Popen([JOBLINE, "migrate"], env=env, cwd=REPO_ROOT) for _ in range(3)]
        assert [racer.wait(60) for racer in racers] == [0, 0, 0]
        assert subprocess.run([JOBLINE, "migrate"], env=env, cwd=REPO_ROOT).returncode == 0
        head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [(head,)]


def test_dev_runs_a_job_with_no_servers_configured(stack: Stack, tmp_path: Path) -> None:
    # Given no database or broker configured at all
    env = {k: v for k, v in stack.env.items() if not k.startswith("JOBLINE_")}
    env["JOBLINE_DEV_DATA_DIR"] = str(tmp_path / "pg")
    port = free_port()
    process = stack.run("dev", [JOBLINE, "dev", "--port", str(port)], base_env=env)
    client = wait_until_serving(process, port, timeout=90)

    # When a job is scheduled, an embedded Postgres and in-process worker run it
    response = client.post("/schedule", json={**DEFAULT, "params": {"step_seconds": 0}})
    assert response.status_code == 202
    job = wait_for(poll_job(client, response.json()["offset"]), what="job to finish")
    assert job["state"] == "succeeded"
    assert client.get(f"/messages/{job['offset']}").json() == [
        "result1",
        "result2",
        "result3",
        "done",
    ]
    assert (tmp_path / "pg" / "PG_VERSION").exists()
    assert "in-process broker" in process.output()


def test_dev_uses_configured_servers(stack: Stack, db: psycopg.Connection[Any]) -> None:
    # Given JOBLINE_DATABASE_URL and JOBLINE_BROKER_URL (the stack's environment)
    port = free_port()
    process = stack.run("dev", [JOBLINE, "dev", "--port", str(port)])
    client = wait_until_serving(process, port, timeout=60)

    response = client.post("/schedule", json={**DEFAULT, "params": {"step_seconds": 0}})
    job = wait_for(poll_job(client, response.json()["offset"]), what="job to finish")

    # Then the job ran through RabbitMQ and lives in the configured database
    assert job["state"] == "succeeded"
    assert job_row(db, job["offset"])["state"] == "succeeded"
    assert "amqp://" in process.output()
