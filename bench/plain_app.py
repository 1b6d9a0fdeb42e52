"""The plain composition the baselines describe: FastAPI + INSERT + Dramatiq send, and an
actor that inserts four message rows. No claims, leases, retries, resume or notifications.

API:    uvicorn bench.plain_app:app        (env PLAIN_DATABASE_URL, PLAIN_BROKER_URL)
Worker: dramatiq bench.plain_app --processes 2 --threads 8
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import dramatiq
import psycopg
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from fastapi import FastAPI
from psycopg_pool import AsyncConnectionPool, ConnectionPool
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

DATABASE_URL = os.environ.get("PLAIN_DATABASE_URL", "postgresql://postgres@127.0.0.1/postgres")
QUEUE = os.environ.get("PLAIN_QUEUE", "plain")
broker = RabbitmqBroker(url=os.environ.get("PLAIN_BROKER_URL", "amqp://guest:guest@127.0.0.1/"))
dramatiq.set_broker(broker)
worker_pool: ConnectionPool | None = None

SCHEMA = """
CREATE TABLE IF NOT EXISTS plain_jobs (id bigserial PRIMARY KEY, body jsonb NOT NULL);
CREATE TABLE IF NOT EXISTS plain_messages (job_id bigint NOT NULL, body text NOT NULL);
"""


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def run_plain_job(job_id: int) -> None:
    """Four inserts, one per message, like the original's steps plus done."""
    global worker_pool
    if worker_pool is None:
        worker_pool = ConnectionPool(DATABASE_URL, min_size=2, max_size=10, open=True)
    with worker_pool.connection() as conn:
        for body in ("result1", "result2", "result3", "done"):
            conn.execute(
                "INSERT INTO plain_messages (job_id, body) VALUES (%s, %s)", (job_id, body)
            )
            conn.commit()


class InferenceRequest(BaseModel):
    """The original request body."""

    deployment: str
    framework: str
    fn: str
    params: dict[str, Any] | None = None


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """One connection pool per API process."""
    with psycopg.connect(DATABASE_URL, autocommit=True) as conn:
        conn.execute(SCHEMA)
    async with AsyncConnectionPool(DATABASE_URL, min_size=4, max_size=10) as pool:
        app.state.pool = pool
        yield


app = FastAPI(lifespan=lifespan)


@app.post("/schedule", status_code=202)
async def schedule(request: InferenceRequest) -> dict[str, int]:
    """INSERT the job, commit, then send it to Dramatiq."""
    async with app.state.pool.connection() as conn:
        cursor = await conn.execute(
            "INSERT INTO plain_jobs (body) VALUES (%s) RETURNING id",
            (request.model_dump_json(),),
        )
        row = await cursor.fetchone()
    job_id = int(row[0])
    await run_in_threadpool(run_plain_job.send, job_id)
    return {"offset": job_id}


@app.get("/health")
async def health() -> dict[str, str]:
    """Ready once the pool is up."""
    return {"status": "ok"}
