"""The sweeper: publishes jobs nobody published, and requeues jobs whose worker died.

Every worker process runs one. A transaction-scoped advisory lock lets only one
sweeper on all hosts work at a time; row locks and claims keep even an overlap
from running a job twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Engine

from db import queries
from db.errors import translate_errors

logger = logging.getLogger(__name__)

BATCH_LIMIT = 500

# Publishes run_job(job_id) after a delay; returns True once the broker confirmed.
Publish = Callable[[int, float], bool]


@dataclass(frozen=True, slots=True)
class SweepResult:
    """What one pass did."""

    locked: bool
    requeued: int = 0
    published: int = 0
    unpublished: int = 0


def sweep_once(
    engine: Engine,
    *,
    publish: Publish,
    grace_seconds: float,
    horizon_seconds: float,
) -> SweepResult:
    """Run one pass: requeue expired leases, then publish queued jobs nobody published."""
    with translate_errors(), engine.begin() as conn:
        if not queries.try_sweeper_lock(conn):
            return SweepResult(locked=False)
        requeued = queries.requeue_expired_leases(conn, limit=BATCH_LIMIT)
        pending = [queries.PendingPublish(id=job_id, delay_seconds=0) for job_id in requeued]
        pending += queries.list_unpublished(
            conn, grace_seconds=grace_seconds, horizon_seconds=horizon_seconds, limit=BATCH_LIMIT
        )
        confirmed: list[int] = []
        for job in pending:
            if not publish(job.id, job.delay_seconds):
                break  # the broker is away; the rest wait for the next pass
            confirmed.append(job.id)
        if confirmed:
            queries.mark_published(conn, job_ids=confirmed)
    if requeued or pending:
        logger.info(
            "sweeper: requeued %d expired, published %d of %d waiting",
            len(requeued),
            len(confirmed),
            len(pending),
        )
    return SweepResult(
        locked=True,
        requeued=len(requeued),
        published=len(confirmed),
        unpublished=len(pending) - len(confirmed),
    )


def dispatch_webhooks(
    engine: Engine, *, publish: Callable[[int, int], bool], dispatch_seconds: float
) -> int:
    """Send a delivery for every webhook that is due; return how many were sent."""
    with translate_errors(), engine.begin() as conn:
        due = queries.dispatch_due_callbacks(
            conn, dispatch_seconds=dispatch_seconds, limit=BATCH_LIMIT
        )
    # A send that fails is retried when the dispatch hold runs out.
    return sum(publish(callback.job_id, callback.attempt) for callback in due)


def forget_expired_keys(engine: Engine) -> int:
    """Delete a batch of Idempotency-Keys past their time."""
    with translate_errors(), engine.begin() as conn:
        return queries.delete_expired_idempotency_keys(conn, limit=BATCH_LIMIT)
