"""Publishing job messages from worker processes (retries, hand-offs, the sweeper)."""

from __future__ import annotations

import logging

import dramatiq

from actors.messages import job_message, webhook_message

logger = logging.getLogger(__name__)


def publish_job(
    broker: dramatiq.Broker, *, queue_name: str, job_id: int, delay_seconds: float = 0
) -> bool:
    """Send ``run_job(job_id)``; True once the broker confirmed it, False if it could not."""
    delay_ms = round(delay_seconds * 1000) if delay_seconds > 0 else None
    try:
        broker.enqueue(job_message(queue_name=queue_name, job_id=job_id), delay=delay_ms)
    except dramatiq.DramatiqError as error:
        logger.warning("could not publish job %s (the sweeper will): %s", job_id, error)
        return False
    return True


def publish_webhook(broker: dramatiq.Broker, *, queue_name: str, job_id: int, attempt: int) -> bool:
    """Send ``deliver_webhook(job_id, attempt)``; True once the broker confirmed it."""
    try:
        broker.enqueue(webhook_message(queue_name=queue_name, job_id=job_id, attempt=attempt))
    except dramatiq.DramatiqError as error:
        logger.warning("could not publish webhook of job %s (retried later): %s", job_id, error)
        return False
    return True
