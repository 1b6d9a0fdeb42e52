"""Reading what jobline wrote, straight from Postgres."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import psycopg
from psycopg.rows import dict_row

FINAL_STATES = ("succeeded", "failed", "cancelled")


def job_row(db: psycopg.Connection[Any], job_id: int) -> dict[str, Any]:
    """The jobs row, as a dict."""
    with db.cursor(row_factory=dict_row) as cursor:
        row = cursor.execute("SELECT * FROM jobs WHERE id = %s", (job_id,)).fetchone()
    assert row is not None, f"job {job_id} does not exist"
    return row


def messages(db: psycopg.Connection[Any], job_id: int) -> list[tuple[int, str, int]]:
    """(seq, body, attempt) of every message of the job, in order."""
    rows = db.execute(
        "SELECT seq, body, attempt FROM messages WHERE job_id = %s ORDER BY seq", (job_id,)
    ).fetchall()
    return [(int(seq), str(body), int(attempt)) for seq, body, attempt in rows]


def is_final(db: psycopg.Connection[Any], job_id: int) -> bool:
    """True once the job reached succeeded, failed or cancelled."""
    return job_row(db, job_id)["state"] in FINAL_STATES


def count_jobs(db: psycopg.Connection[Any]) -> int:
    """Rows in jobs."""
    row = db.execute("SELECT count(*) FROM jobs").fetchone()
    assert row is not None
    return int(row[0])


def traces(trace_dir: Path, job_id: int) -> list[str]:
    """Executions of a traced job's steps, as 'name attempt=N' lines (see tests/jobfns.py)."""
    path = trace_dir / f"job-{job_id}.log"
    lines = path.read_text().splitlines() if path.exists() else []
    return [line.rsplit(" pid=", 1)[0] for line in lines]


class Poster(Protocol):
    """Anything that POSTs JSON to a path: httpx.Client with a base_url, or TestClient."""

    def post(self, url: str, *, json: Any = ...) -> Any: ...


def schedule(client: Poster, fn: str = "default_fn", **params: Any) -> int:
    """POST /schedule for ``fn`` with ``params``; the offset of the accepted job."""
    body = {"deployment": "Docker", "framework": "FastAPI", "fn": fn, "params": params}
    response = client.post("/schedule", json=body)
    assert response.status_code == 202, response.text
    return int(response.json()["offset"])
