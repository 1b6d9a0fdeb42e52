"""The queries' guarantees, against real Postgres: claims, fencing, exactly-once steps."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine

from actors.sweeper import sweep_once
from db import queries
from db.engine import make_async_engine, make_engine
from db.settings import Settings
from tests.support.jobs import job_row, messages

pytestmark = pytest.mark.integration


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    engine = make_engine(settings, pool_size=4)
    yield engine
    engine.dispose()


def new_jobs(settings: Settings, count: int, fn: str = "default_fn") -> list[int]:
    async def insert() -> list[int]:
        engine = make_async_engine(settings)
        try:
            async with engine.begin() as conn:
                return await queries.insert_jobs(
                    conn,
                    jobs=[
                        queries.NewJob(
                            fn=fn,
                            deployment=f"d{n}",
                            framework="f",
                            params_json=json.dumps({"n": n}),
                            max_attempts=2,
                        )
                        for n in range(count)
                    ],
                )
        finally:
            await engine.dispose()

    return asyncio.run(insert())


def test_batch_insert_returns_ids_in_input_order(
    settings: Settings, db: psycopg.Connection[Any]
) -> None:
    ids = new_jobs(settings, 50)
    assert ids == sorted(ids)
    for n, job_id in enumerate(ids):
        row = job_row(db, job_id)
        assert (row["deployment"], row["params"]) == (f"d{n}", {"n": n})


def test_a_job_is_claimed_once(settings: Settings, engine: Engine) -> None:
    [job_id] = new_jobs(settings, 1)
    with engine.begin() as conn:
        first = queries.claim_job(conn, job_id=job_id, owner="h/1/a", lease_seconds=30)
    with engine.begin() as conn:
        second = queries.claim_job(conn, job_id=job_id, owner="h/2/b", lease_seconds=30)
    assert first is not None
    assert first.attempts == 1
    assert second is None


def test_a_step_is_recorded_exactly_once_and_only_by_the_lease_holder(
    settings: Settings, engine: Engine, db: psycopg.Connection[Any]
) -> None:
    [job_id] = new_jobs(settings, 1)
    with engine.begin() as conn:
        queries.claim_job(conn, job_id=job_id, owner="h/1/a", lease_seconds=30)

    def record(owner: str, step: int, body: str) -> bool:
        with engine.begin() as conn:
            return (
                queries.record_messages(
                    conn,
                    job_id=job_id,
                    owner=owner,
                    entries=[(step, body)],
                    final_state=None,
                    lease_seconds=30,
                )
                is not None
            )

    assert record("h/1/a", 1, "one")
    assert not record("h/1/a", 1, "one again")  # a replayed step
    assert not record("h/1/a", 3, "skipping two")  # out of order
    assert not record("h/9/z", 2, "intruder")  # not the lease holder
    assert record("h/1/a", 2, "two")
    assert messages(db, job_id) == [(1, "one", 1), (2, "two", 1)]


def test_an_expired_lease_fences_out_the_old_holder(
    settings: Settings, engine: Engine, db: psycopg.Connection[Any]
) -> None:
    [job_id] = new_jobs(settings, 1)
    with engine.begin() as conn:
        queries.claim_job(conn, job_id=job_id, owner="h/1/old", lease_seconds=30)
    db.execute("UPDATE jobs SET lease_expires_at = now() - interval '1 s' WHERE id = %s", (job_id,))

    with engine.begin() as conn:
        taken = queries.claim_job(conn, job_id=job_id, owner="h/2/new", lease_seconds=30)
    assert taken is not None
    assert taken.attempts == 2
    with engine.begin() as conn:
        late = queries.record_messages(
            conn,
            job_id=job_id,
            owner="h/1/old",
            entries=[(1, "late")],
            final_state=None,
            lease_seconds=30,
        )
        assert late is None
    assert (
        job_row(db, job_id)["last_error"] == "worker h/1 stopped during attempt 1 (lease expired)"
    )


def test_only_one_sweeper_works_at_a_time(settings: Settings, engine: Engine) -> None:
    published: list[int] = []
    with engine.begin() as holder:
        assert queries.try_sweeper_lock(holder)
        result = sweep_once(
            engine,
            publish=lambda job_id, delay: published.append(job_id) is None,
            grace_seconds=0,
            horizon_seconds=0,
        )
    assert result.locked is False
    assert published == []


def test_sweeper_publishes_only_jobs_past_their_grace(
    settings: Settings, engine: Engine, db: psycopg.Connection[Any]
) -> None:
    old, fresh = new_jobs(settings, 2)
    db.execute("UPDATE jobs SET updated_at = now() - interval '1 minute' WHERE id = %s", (old,))
    published: list[int] = []

    result = sweep_once(
        engine,
        publish=lambda job_id, delay: published.append(job_id) is None,
        grace_seconds=30,
        horizon_seconds=0,
    )

    assert (result.locked, result.published) == (True, 1)
    assert published == [old]
    assert job_row(db, old)["published_at"] is not None
    assert job_row(db, fresh)["published_at"] is None


def test_sweeper_leaves_jobs_unpublished_when_the_broker_refuses(
    settings: Settings, engine: Engine, db: psycopg.Connection[Any]
) -> None:
    [job_id] = new_jobs(settings, 1)
    db.execute("UPDATE jobs SET updated_at = now() - interval '1 minute'")

    result = sweep_once(
        engine, publish=lambda job_id, delay: False, grace_seconds=0, horizon_seconds=0
    )

    assert (result.published, result.unpublished) == (0, 1)
    assert job_row(db, job_id)["published_at"] is None
