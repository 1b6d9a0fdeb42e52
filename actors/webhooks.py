"""Delivering a finished job to its callback_url, signed as Standard Webhooks.

The sweeper finds webhooks that are due and sends ``deliver_webhook(job_id,
attempt)``; each attempt number is claimed once in Postgres, tried once, and
recorded. A failure schedules the next attempt with exponential backoff, until
``webhook_max_attempts``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import time

import httpx

from actors.runner import retry_delay
from actors.runtime import WorkerRuntime
from api.schemas import JobResource
from db import queries
from db.errors import translate_errors

logger = logging.getLogger(__name__)

SECRET_PREFIX = "whsec_"  # noqa: S105 (a format prefix, not a secret)


def secret_key(secret: str) -> bytes:
    """The HMAC key of a Standard Webhooks secret (``whsec_`` + base64, or raw text)."""
    if secret.startswith(SECRET_PREFIX):
        return base64.b64decode(secret[len(SECRET_PREFIX) :])
    return secret.encode()


def sign(*, secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value: ``v1,`` + base64 HMAC-SHA256."""
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def webhook_id_for(job: queries.JobRecord) -> str:
    """One id per ending of a job: the same on every retry, new if the job runs again."""
    finished = job.finished_at.timestamp() if job.finished_at else 0
    return f"job_{job.id}_{round(finished * 1000)}"


class WebhookSender:
    """Runs ``deliver_webhook`` deliveries for one worker process."""

    def __init__(self, runtime: WorkerRuntime) -> None:
        self.runtime = runtime

    def deliver(self, job_id: int, attempt: int) -> None:
        """Try delivery number ``attempt`` of the job's webhook, once."""
        settings = self.runtime.settings
        if settings.webhook_secret is None:
            logger.error("job %s has a callback but JOBLINE_WEBHOOK_SECRET is unset", job_id)
            return
        with translate_errors(), self.runtime.engine.begin() as conn:
            if not queries.claim_callback(conn, job_id=job_id, attempt=attempt):
                return
            job = queries.load_job(conn, job_id=job_id)
        if job is None or job.callback_url is None:
            return
        webhook_id = webhook_id_for(job)
        body = JobResource.from_record(job).model_dump_json().encode()
        timestamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "user-agent": "jobline-webhooks",
            "webhook-id": webhook_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(
                secret=settings.webhook_secret.get_secret_value(),
                webhook_id=webhook_id,
                timestamp=timestamp,
                body=body,
            ),
        }
        status_code: int | None = None
        error: str | None = None
        try:
            response = httpx.post(
                job.callback_url,
                content=body,
                headers=headers,
                timeout=settings.webhook_timeout_seconds,
                follow_redirects=False,
            )
            status_code = response.status_code
            if not response.is_success:
                error = f"receiver answered {status_code}"
        except httpx.HTTPError as failure:
            error = f"{type(failure).__name__}: {failure}"[:500]
        if error:
            logger.warning("webhook for job %s, attempt %s: %s", job_id, attempt, error)
        with translate_errors(), self.runtime.engine.begin() as conn:
            queries.record_delivery(
                conn,
                job_id=job_id,
                attempt=attempt,
                webhook_id=webhook_id,
                status_code=status_code,
                error=error,
                max_attempts=settings.webhook_max_attempts,
                retry_seconds=retry_delay(
                    attempt=attempt,
                    base_seconds=settings.webhook_backoff_seconds,
                    max_seconds=settings.retry_backoff_max_seconds,
                ),
            )
