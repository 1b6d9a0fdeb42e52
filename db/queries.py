"""Every query jobline runs. Routes, actors and the sweeper call these functions only.

API functions take an ``AsyncConnection``; worker functions take a ``Connection``.
The caller owns the transaction: it commits at its boundary.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, TextClause, bindparam, select, text
from sqlalchemy.dialects.postgresql import ARRAY, BIGINT, TEXT
from sqlalchemy.ext.asyncio import AsyncConnection

from db.models import JobState, jobs_table

# One key for the sweeper's advisory lock, shared by every worker on every host.
SWEEPER_LOCK_KEY = 0x6A6F626C696E65  # "jobline"


# Announces a new message to the API processes following its job (api/events.py).
# The body rides along when it fits NOTIFY's 8000-byte payload; else followers fetch it.
_NOTIFY_MESSAGE = """pg_notify('jobline_events', json_build_object(
    'job', message.job_id, 'seq', message.seq, 'attempt', message.attempt,
    'created_at', message.created_at,
    'body', CASE WHEN octet_length(message.body) <= 6000 THEN message.body END)::text)"""


@dataclass(frozen=True, slots=True)
class NewJob:
    """A validated job about to be inserted."""

    fn: str
    deployment: str
    framework: str
    params_json: str
    max_attempts: int
    callback_url: str | None = None


@dataclass(frozen=True, slots=True)
class JobRecord:
    """A job as clients see it."""

    id: int
    fn: str
    deployment: str
    framework: str
    params: dict[str, Any]
    state: str
    attempts: int
    max_attempts: int
    message_count: int
    last_error: str | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    cancel_requested: bool
    callback_url: str | None
    callback_state: str | None
    callback_attempts: int


@dataclass(frozen=True, slots=True)
class MessageRecord:
    """One recorded message."""

    seq: int
    body: str
    created_at: datetime
    attempt: int


@dataclass(frozen=True, slots=True)
class DeliveryRecord:
    """One attempt to deliver a job's webhook."""

    attempt: int
    webhook_id: str
    status_code: int | None
    error: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class ClaimedJob:
    """A job a worker has just claimed, with what it needs to run the next step."""

    id: int
    fn: str
    params: dict[str, Any]
    attempts: int
    max_attempts: int
    steps_done: int
    cancel_requested: bool


@dataclass(frozen=True, slots=True)
class ReleasedJob:
    """Outcome of giving a failed attempt back: retry after ``delay_seconds``, or failed."""

    state: JobState
    delay_seconds: float


@dataclass(frozen=True, slots=True)
class PendingPublish:
    """A queued job no broker has confirmed yet, and how long its message should wait."""

    id: int
    delay_seconds: float


def _driver_sql(statement: TextClause) -> str:
    """``statement`` in the driver's own placeholder style (``%(name)s``)."""
    sql = statement.text.replace("%", "%%")
    return re.sub(r"(?<![:\w]):(\w+)", r"%(\1)s", sql)


def _fetch_one_on_driver(conn: Connection, sql: str, params: dict[str, Any]) -> Any:
    """Run ``sql`` on the psycopg connection under ``conn``: the worker's hot path, where
    SQLAlchemy's per-statement bookkeeping costs more than the statement itself."""
    driver = conn.connection.driver_connection
    assert driver is not None
    return driver.execute(sql, params).fetchone()


# --- API side -----------------------------------------------------------------------

_INSERT_JOBS = """
    INSERT INTO jobs (fn, deployment, framework, params, max_attempts, callback_url)
    SELECT fn, deployment, framework, params::jsonb, max_attempts, callback_url
    FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::int[], %s::text[])
         WITH ORDINALITY AS t(fn, deployment, framework, params, max_attempts, callback_url, ord)
    ORDER BY ord
    RETURNING id
"""


async def insert_jobs(conn: AsyncConnection, *, jobs: Sequence[NewJob]) -> list[int]:
    """Insert ``jobs`` in one statement and return their ids in input order."""
    # The hot path of POST /schedule: run it on the driver connection, inside the
    # caller's transaction, to skip SQLAlchemy's statement handling.
    driver = (await conn.get_raw_connection()).driver_connection
    assert driver is not None
    cursor = await driver.execute(
        _INSERT_JOBS,
        (
            [job.fn for job in jobs],
            [job.deployment for job in jobs],
            [job.framework for job in jobs],
            [job.params_json for job in jobs],
            [job.max_attempts for job in jobs],
            [job.callback_url for job in jobs],
        ),
    )
    # Rows take ids from the sequence in ORDER BY ord order, so ascending ids
    # line up with the input even if RETURNING were to come back shuffled.
    return sorted(row[0] for row in await cursor.fetchall())


_JOB_COLUMNS = [
    jobs_table.c.id,
    jobs_table.c.fn,
    jobs_table.c.deployment,
    jobs_table.c.framework,
    jobs_table.c.params,
    jobs_table.c.state,
    jobs_table.c.attempts,
    jobs_table.c.max_attempts,
    jobs_table.c.message_count,
    jobs_table.c.last_error,
    jobs_table.c.created_at,
    jobs_table.c.updated_at,
    jobs_table.c.started_at,
    jobs_table.c.finished_at,
    jobs_table.c.cancel_requested,
    jobs_table.c.callback_url,
    jobs_table.c.callback_state,
    jobs_table.c.callback_attempts,
]


async def get_job(conn: AsyncConnection, *, job_id: int) -> JobRecord | None:
    """Return the job with ``job_id``, or None."""
    result = await conn.execute(select(*_JOB_COLUMNS).where(jobs_table.c.id == job_id))
    row = result.one_or_none()
    return JobRecord(**row._mapping) if row else None


def load_job(conn: Connection, *, job_id: int) -> JobRecord | None:
    """Return the job with ``job_id``, or None (worker side)."""
    row = conn.execute(select(*_JOB_COLUMNS).where(jobs_table.c.id == job_id)).one_or_none()
    return JobRecord(**row._mapping) if row else None


async def list_jobs(
    conn: AsyncConnection,
    *,
    state: str | None,
    fn: str | None,
    created_after: datetime | None,
    created_before: datetime | None,
    before_id: int | None,
    limit: int,
) -> list[JobRecord]:
    """Jobs newest first, filtered; keyset pagination on id (``before_id`` from the cursor)."""
    query = select(*_JOB_COLUMNS).order_by(jobs_table.c.id.desc()).limit(limit)
    if state is not None:
        query = query.where(jobs_table.c.state == state)
    if fn is not None:
        query = query.where(jobs_table.c.fn == fn)
    if created_after is not None:
        query = query.where(jobs_table.c.created_at > created_after)
    if created_before is not None:
        query = query.where(jobs_table.c.created_at < created_before)
    if before_id is not None:
        query = query.where(jobs_table.c.id < before_id)
    result = await conn.execute(query)
    return [JobRecord(**row._mapping) for row in result]


_LIST_DELIVERIES = text(
    """
    SELECT attempt, webhook_id, status_code, error, created_at
    FROM webhook_deliveries WHERE job_id = :job_id ORDER BY id
    """
)


async def list_deliveries(conn: AsyncConnection, *, job_id: int) -> list[DeliveryRecord]:
    """Webhook delivery attempts of a job, oldest first."""
    result = await conn.execute(_LIST_DELIVERIES, {"job_id": job_id})
    return [DeliveryRecord(**row._mapping) for row in result]


_LIST_MESSAGES = text(
    """
    SELECT j.state, m.seq, m.body, m.created_at, m.attempt
    FROM jobs j
    LEFT JOIN LATERAL (
        SELECT seq, body, created_at, attempt FROM messages
        WHERE job_id = j.id AND seq > :after
        ORDER BY seq
        LIMIT :limit
    ) m ON true
    WHERE j.id = :job_id
    """
)


_FOLLOW = text("UPDATE jobs SET followed = true WHERE id = :job_id AND NOT followed")


async def follow_job(conn: AsyncConnection, *, job_id: int) -> None:
    """Make the job announce its messages and state changes from now on.

    Run it in the same transaction as, and before, the read that starts following:
    the UPDATE waits out any step being recorded, and the read's fresh snapshot then
    sees it, while every later step finds the flag set and notifies.
    """
    await conn.execute(_FOLLOW, {"job_id": job_id})


async def list_messages(
    conn: AsyncConnection, *, job_id: int, after: int, limit: int | None
) -> tuple[JobState, list[MessageRecord]] | None:
    """The job's state and its messages with seq > ``after`` (keyset); None if no such job."""
    rows = (
        await conn.execute(_LIST_MESSAGES, {"job_id": job_id, "after": after, "limit": limit})
    ).all()
    if not rows:
        return None
    found = [
        MessageRecord(seq=row.seq, body=row.body, created_at=row.created_at, attempt=row.attempt)
        for row in rows
        if row.seq is not None
    ]
    return JobState(rows[0].state), found


_LOCK_JOB_STATE = text("SELECT state FROM jobs WHERE id = :job_id FOR UPDATE")

_CANCEL_QUEUED = text(
    f"""
    WITH job AS (
        UPDATE jobs SET state = 'cancelled', finished_at = now(), updated_at = now(),
            message_count = message_count + 1
        WHERE id = :job_id AND state = 'queued'
        RETURNING id, message_count, attempts, followed
    ),
    message AS (
        INSERT INTO messages (job_id, seq, step, body, attempt)
        SELECT id, message_count, NULL, :body, attempts FROM job
        RETURNING job_id, seq, attempt, created_at, body
    )
    SELECT {_NOTIFY_MESSAGE} FROM message, job WHERE job.followed
    """
)

_REQUEST_CANCEL = text(
    "UPDATE jobs SET cancel_requested = true, updated_at = now() WHERE id = :job_id"
)


async def cancel_job(conn: AsyncConnection, *, job_id: int, message: str) -> JobState | None:
    """Cancel a queued job at once, or ask a running one to stop at its next step boundary.

    Returns the state the job was in (None if it does not exist); a job already in
    a final state is left alone.
    """
    row = (await conn.execute(_LOCK_JOB_STATE, {"job_id": job_id})).one_or_none()
    if row is None:
        return None
    state = JobState(row.state)
    if state is JobState.QUEUED:
        await conn.execute(_CANCEL_QUEUED, {"job_id": job_id, "body": message})
    elif state is JobState.RUNNING:
        await conn.execute(_REQUEST_CANCEL, {"job_id": job_id})
    return state


_RETRY = text(
    """
    UPDATE jobs SET state = 'queued', cancel_requested = false, handed_off = false,
        max_attempts = attempts + :extra_attempts, finished_at = NULL, run_after = now(),
        published_at = NULL, lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
    WHERE id = :job_id AND state IN ('failed', 'cancelled')
    RETURNING id
    """
)


async def retry_job(conn: AsyncConnection, *, job_id: int, extra_attempts: int) -> bool:
    """Queue a failed or cancelled job again with ``extra_attempts`` more runs allowed."""
    result = await conn.execute(_RETRY, {"job_id": job_id, "extra_attempts": extra_attempts})
    return result.one_or_none() is not None


_FIND_IDEMPOTENCY_KEY = text(
    """
    SELECT job_id, request_hash FROM idempotency_keys
    WHERE key = :key AND expires_at > now()
    """
)

_CLAIM_IDEMPOTENCY_KEY = text(
    """
    INSERT INTO idempotency_keys (key, request_hash, job_id, expires_at)
    VALUES (:key, :request_hash, :job_id, now() + make_interval(secs => :ttl_seconds))
    ON CONFLICT (key) DO UPDATE SET
        request_hash = EXCLUDED.request_hash,
        job_id = EXCLUDED.job_id,
        expires_at = EXCLUDED.expires_at
    WHERE idempotency_keys.expires_at <= now()
    RETURNING job_id
    """
)


async def find_idempotency_key(conn: AsyncConnection, *, key: str) -> tuple[int, str] | None:
    """(job id, request hash) remembered for a live ``key``, or None."""
    row = (await conn.execute(_FIND_IDEMPOTENCY_KEY, {"key": key})).one_or_none()
    return (row.job_id, row.request_hash) if row else None


async def claim_idempotency_key(
    conn: AsyncConnection, *, key: str, request_hash: str, job_id: int, ttl_seconds: float
) -> bool:
    """Remember ``key`` for ``job_id``; False when a live key exists (it may have just won a race).

    A concurrent insert of the same key makes this wait for that transaction to end.
    """
    result = await conn.execute(
        _CLAIM_IDEMPOTENCY_KEY,
        {"key": key, "request_hash": request_hash, "job_id": job_id, "ttl_seconds": ttl_seconds},
    )
    return result.one_or_none() is not None


async def ping(conn: AsyncConnection) -> None:
    """Round-trip to Postgres."""
    await conn.execute(text("SELECT 1"))


_MESSAGE_BODIES = text(
    """
    SELECT array(SELECT body FROM messages WHERE job_id = jobs.id ORDER BY seq)
    FROM jobs WHERE id = :job_id
    """
)


async def list_message_bodies(conn: AsyncConnection, *, job_id: int) -> list[str] | None:
    """Return the job's message bodies in step order, or None when the job does not exist."""
    result = await conn.execute(_MESSAGE_BODIES, {"job_id": job_id})
    row = result.one_or_none()
    return list(row[0]) if row else None


_MARK_PUBLISHED = text(
    """
    UPDATE jobs SET published_at = now()
    WHERE id = ANY(:ids) AND state = 'queued'
    """
).bindparams(bindparam("ids", type_=ARRAY(BIGINT)))


async def mark_published_async(conn: AsyncConnection, *, job_ids: Sequence[int]) -> None:
    """Record that the broker confirmed a message for each of ``job_ids``."""
    await conn.execute(_MARK_PUBLISHED, {"ids": list(job_ids)})


# --- worker side --------------------------------------------------------------------

# The error recorded when a worker stopped renewing its lease (lease_owner is host/pid/token).
_LEASE_EXPIRED_ERROR = """format('worker %s/%s stopped during attempt %s (lease expired)',
    split_part(lease_owner, '/', 1), split_part(lease_owner, '/', 2), attempts)"""

_CLAIM = text(
    f"""
    UPDATE jobs SET
        state = 'running',
        attempts = attempts + CASE WHEN handed_off THEN 0 ELSE 1 END,
        handed_off = false,
        lease_owner = :owner,
        lease_expires_at = now() + make_interval(secs => :lease_seconds),
        started_at = coalesce(started_at, now()),
        published_at = coalesce(published_at, now()),
        last_error = CASE WHEN state = 'running' THEN {_LEASE_EXPIRED_ERROR} ELSE last_error END,
        updated_at = now()
    WHERE id = :job_id
      AND (state = 'queued'
           -- A redelivery may find the lease expired before the sweeper does. On
           -- the last attempt, the sweeper fails the job instead.
           OR (state = 'running' AND lease_expires_at < now() AND attempts < max_attempts))
    RETURNING id, fn, params, attempts, max_attempts, steps_done, cancel_requested
    """
)


_CLAIM_SQL = _driver_sql(_CLAIM)


def claim_job(
    conn: Connection, *, job_id: int, owner: str, lease_seconds: float
) -> ClaimedJob | None:
    """Take the job's lease if it is queued or its lease has expired; None if taken or done."""
    row = _fetch_one_on_driver(
        conn, _CLAIM_SQL, {"job_id": job_id, "owner": owner, "lease_seconds": lease_seconds}
    )
    return ClaimedJob(*row) if row else None


_RECORD_MESSAGES = text(
    f"""
    WITH job AS (
        UPDATE jobs SET
            message_count = message_count + :count,
            steps_done = steps_done + :step_count,
            state = coalesce(CAST(:final_state AS text), state),
            finished_at = CASE WHEN CAST(:final_state AS text) IS NOT NULL THEN now() END,
            lease_owner = CASE WHEN CAST(:final_state AS text) IS NOT NULL
                               THEN NULL ELSE lease_owner END,
            lease_expires_at = CASE WHEN CAST(:final_state AS text) IS NOT NULL THEN NULL
                                    ELSE now() + make_interval(secs => :lease_seconds) END,
            updated_at = now()
        WHERE id = :job_id AND state = 'running' AND lease_owner = :owner
          AND (CAST(:first_step AS integer) IS NULL
               OR steps_done = CAST(:first_step AS integer) - 1)
        RETURNING id, attempts, message_count, cancel_requested, followed
    ),
    inserted AS (
        INSERT INTO messages (job_id, seq, step, body, attempt)
        SELECT job.id, job.message_count - :count + entry.ord, entry.step, entry.body,
               job.attempts
        FROM job, unnest(CAST(:steps AS integer[]), CAST(:bodies AS text[]))
             WITH ORDINALITY AS entry(step, body, ord)
        RETURNING job_id, seq, attempt, created_at, body
    )
    SELECT job.cancel_requested,
           (SELECT count({_NOTIFY_MESSAGE}) FROM (SELECT * FROM inserted ORDER BY seq) AS message
            WHERE job.followed) AS notified
    FROM job
    """
)


_RECORD_MESSAGES_SQL = _driver_sql(_RECORD_MESSAGES)


def record_messages(
    conn: Connection,
    *,
    job_id: int,
    owner: str,
    entries: Sequence[tuple[int | None, str]],
    final_state: JobState | None,
    lease_seconds: float,
) -> bool | None:
    """Append messages ``(step, body)`` (step None for a closing message) and advance the job.

    One statement, so atomic without a transaction around it. With ``final_state``
    the job ends in that state. Returns None when ``owner`` no longer holds the
    lease or the first step is already recorded (nothing is written then), else
    whether a cancel has been requested.
    """
    steps = [step for step, _ in entries if step is not None]
    row = _fetch_one_on_driver(
        conn,
        _RECORD_MESSAGES_SQL,
        {
            "job_id": job_id,
            "owner": owner,
            "count": len(entries),
            "step_count": len(steps),
            "first_step": steps[0] if steps else None,
            "steps": [step for step, _ in entries],
            "bodies": [body for _, body in entries],
            "final_state": final_state.value if final_state else None,
            "lease_seconds": lease_seconds,
        },
    )
    return None if row is None else bool(row[0])


_RELEASE_FOR_RETRY = text(
    """
    UPDATE jobs SET
        state = CASE WHEN attempts >= max_attempts THEN 'failed' ELSE 'queued' END,
        finished_at = CASE WHEN attempts >= max_attempts THEN now() END,
        run_after = now() + make_interval(secs => :delay_seconds),
        last_error = :error,
        lease_owner = NULL,
        lease_expires_at = NULL,
        published_at = NULL,
        updated_at = now()
    WHERE id = :job_id AND state = 'running' AND lease_owner = :owner
    RETURNING state
    """
)


def release_for_retry(
    conn: Connection, *, job_id: int, owner: str, error: str, delay_seconds: float
) -> ReleasedJob | None:
    """End the current attempt with ``error``: queue a retry, or fail when attempts are spent."""
    row = conn.execute(
        _RELEASE_FOR_RETRY,
        {"job_id": job_id, "owner": owner, "error": error, "delay_seconds": delay_seconds},
    ).one_or_none()
    if row is None:
        return None
    state = JobState(row.state)
    return ReleasedJob(state=state, delay_seconds=delay_seconds if state is JobState.QUEUED else 0)


_FAIL_SPENT = text(
    """
    UPDATE jobs SET state = 'failed', finished_at = now(), updated_at = now(),
        last_error = :error, lease_owner = NULL, lease_expires_at = NULL
    WHERE id = :job_id AND lease_owner = :owner
    """
)


def fail_job(conn: Connection, *, job_id: int, owner: str, error: str) -> None:
    """Mark a claimed job `failed` with ``error``."""
    conn.execute(_FAIL_SPENT, {"job_id": job_id, "owner": owner, "error": error})


_HAND_OFF = text(
    """
    UPDATE jobs SET state = 'queued', handed_off = true, run_after = now(),
        lease_owner = NULL, lease_expires_at = NULL, published_at = NULL, updated_at = now()
    WHERE id = :job_id AND state = 'running' AND lease_owner = :owner
    RETURNING id
    """
)


def hand_off_job(conn: Connection, *, job_id: int, owner: str) -> bool:
    """Give a running job back to the queue mid-attempt (same attempt continues)."""
    return conn.execute(_HAND_OFF, {"job_id": job_id, "owner": owner}).one_or_none() is not None


_RENEW_LEASES = text(
    """
    UPDATE jobs SET lease_expires_at = now() + make_interval(secs => :lease_seconds)
    WHERE lease_owner = ANY(:owners) AND state = 'running'
    RETURNING lease_owner, cancel_requested
    """
).bindparams(bindparam("owners", type_=ARRAY(TEXT)))


def renew_leases(conn: Connection, *, owners: Sequence[str], lease_seconds: float) -> list[str]:
    """Push out the lease of every job held by ``owners``; return those asked to cancel."""
    rows = conn.execute(
        _RENEW_LEASES, {"owners": list(owners), "lease_seconds": lease_seconds}
    ).all()
    return [row.lease_owner for row in rows if row.cancel_requested]


def try_sweeper_lock(conn: Connection) -> bool:
    """Take the transaction-scoped sweeper lock; False if another sweeper holds it."""
    return bool(
        conn.execute(
            text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": SWEEPER_LOCK_KEY}
        ).scalar_one()
    )


_REQUEUE_EXPIRED = text(
    f"""
    UPDATE jobs SET
        state = CASE WHEN attempts >= max_attempts THEN 'failed' ELSE 'queued' END,
        finished_at = CASE WHEN attempts >= max_attempts THEN now() END,
        last_error = {_LEASE_EXPIRED_ERROR},
        run_after = now(), lease_owner = NULL, lease_expires_at = NULL,
        published_at = NULL, updated_at = now()
    WHERE id IN (
        SELECT id FROM jobs
        WHERE state = 'running' AND lease_expires_at < now()
        ORDER BY lease_expires_at
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    )
    RETURNING id, state
    """
)


def requeue_expired_leases(conn: Connection, *, limit: int) -> list[int]:
    """Queue again (or fail, when attempts are spent) jobs whose worker stopped renewing."""
    rows = conn.execute(_REQUEUE_EXPIRED, {"limit": limit}).all()
    return [row.id for row in rows if row.state == JobState.QUEUED]


_LIST_UNPUBLISHED = text(
    """
    SELECT id, greatest(0, extract(epoch FROM run_after - now()))::float8 AS delay_seconds
    FROM jobs
    WHERE state = 'queued'
      AND run_after < now() + make_interval(secs => :horizon_seconds)
      AND ((published_at IS NULL
            AND updated_at < now() - make_interval(secs => :grace_seconds))
           -- A message the broker lost (a purged queue, an in-process broker that
           -- restarted): publish again; the claim drops any duplicate.
           OR published_at < now() - make_interval(secs => :republish_seconds))
    ORDER BY run_after
    LIMIT :limit
    FOR UPDATE SKIP LOCKED
    """
)


def list_unpublished(
    conn: Connection,
    *,
    grace_seconds: float,
    horizon_seconds: float,
    limit: int,
    republish_seconds: float = 15 * 60,
) -> list[PendingPublish]:
    """Queued jobs nobody published within ``grace_seconds``, or whose message is long gone."""
    rows = conn.execute(
        _LIST_UNPUBLISHED,
        {
            "grace_seconds": grace_seconds,
            "horizon_seconds": horizon_seconds,
            "limit": limit,
            "republish_seconds": republish_seconds,
        },
    ).all()
    return [PendingPublish(id=row.id, delay_seconds=row.delay_seconds) for row in rows]


def mark_published(conn: Connection, *, job_ids: Sequence[int]) -> None:
    """Record that the broker confirmed a message for each of ``job_ids``."""
    conn.execute(_MARK_PUBLISHED, {"ids": list(job_ids)})


@dataclass(frozen=True, slots=True)
class DueCallback:
    """A webhook to deliver now, as delivery number ``attempt``."""

    job_id: int
    attempt: int


_DISPATCH_DUE_CALLBACKS = text(
    """
    UPDATE jobs SET callback_due_at = now() + make_interval(secs => :dispatch_seconds)
    WHERE id IN (
        SELECT id FROM jobs
        WHERE callback_state = 'pending' AND callback_due_at <= now()
        ORDER BY callback_due_at
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    )
    RETURNING id, callback_attempts
    """
)


def dispatch_due_callbacks(
    conn: Connection, *, dispatch_seconds: float, limit: int
) -> list[DueCallback]:
    """Webhooks due now; each is held back ``dispatch_seconds`` while its delivery runs."""
    rows = conn.execute(
        _DISPATCH_DUE_CALLBACKS, {"dispatch_seconds": dispatch_seconds, "limit": limit}
    ).all()
    return [DueCallback(job_id=row.id, attempt=row.callback_attempts + 1) for row in rows]


_CLAIM_CALLBACK = text(
    """
    UPDATE jobs SET callback_attempts = :attempt
    WHERE id = :job_id AND callback_state = 'pending' AND callback_attempts = :attempt - 1
    RETURNING id
    """
)


def claim_callback(conn: Connection, *, job_id: int, attempt: int) -> bool:
    """Take delivery number ``attempt``; False if it was taken or the webhook is settled."""
    params = {"job_id": job_id, "attempt": attempt}
    return conn.execute(_CLAIM_CALLBACK, params).one_or_none() is not None


_RECORD_DELIVERY = text(
    """
    WITH delivery AS (
        INSERT INTO webhook_deliveries (job_id, attempt, webhook_id, status_code, error)
        VALUES (:job_id, :attempt, :webhook_id, :status_code, :error)
    )
    UPDATE jobs SET
        callback_state = CASE WHEN :delivered THEN 'delivered'
                              WHEN :attempt >= :max_attempts THEN 'failed'
                              ELSE 'pending' END,
        callback_due_at = CASE WHEN :delivered OR :attempt >= :max_attempts THEN NULL
                               ELSE now() + make_interval(secs => :retry_seconds) END
    WHERE id = :job_id AND callback_attempts = :attempt
    """
)


def record_delivery(
    conn: Connection,
    *,
    job_id: int,
    attempt: int,
    webhook_id: str,
    status_code: int | None,
    error: str | None,
    max_attempts: int,
    retry_seconds: float,
) -> None:
    """Store one delivery attempt; settle the webhook or schedule the next try."""
    conn.execute(
        _RECORD_DELIVERY,
        {
            "job_id": job_id,
            "attempt": attempt,
            "webhook_id": webhook_id,
            "status_code": status_code,
            "error": error,
            "delivered": status_code is not None and 200 <= status_code < 300,
            "max_attempts": max_attempts,
            "retry_seconds": retry_seconds,
        },
    )


_DELETE_EXPIRED_KEYS = text(
    """
    DELETE FROM idempotency_keys WHERE key IN (
        SELECT key FROM idempotency_keys WHERE expires_at < now() LIMIT :limit
    )
    """
)


def delete_expired_idempotency_keys(conn: Connection, *, limit: int) -> int:
    """Forget up to ``limit`` Idempotency-Keys past their time."""
    return conn.execute(_DELETE_EXPIRED_KEYS, {"limit": limit}).rowcount


_FORGET_PUBLICATIONS = text("UPDATE jobs SET published_at = NULL WHERE state = 'queued'")


def forget_publications(conn: Connection) -> int:
    """Mark every queued job unpublished: its broker lost its messages (in-process restart)."""
    return conn.execute(_FORGET_PUBLICATIONS).rowcount
