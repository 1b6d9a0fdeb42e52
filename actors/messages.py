"""The broker message that asks a worker to run a job. Shared by the API and the workers."""

from __future__ import annotations

import dramatiq
from dramatiq.brokers.rabbitmq import DEAD_MESSAGE_TTL
from dramatiq.common import dq_name, xq_name

RUN_JOB_ACTOR = "run_job"
DELIVER_WEBHOOK_ACTOR = "deliver_webhook"


def job_message(*, queue_name: str, job_id: int) -> dramatiq.Message[None]:
    """Build the Dramatiq message for ``run_job(job_id)`` on ``queue_name``."""
    return dramatiq.Message(
        queue_name=queue_name, actor_name=RUN_JOB_ACTOR, args=(job_id,), kwargs={}, options={}
    )


def webhook_message(*, queue_name: str, job_id: int, attempt: int) -> dramatiq.Message[None]:
    """Build the Dramatiq message for ``deliver_webhook(job_id, attempt)``."""
    return dramatiq.Message(
        queue_name=queue_name,
        actor_name=DELIVER_WEBHOOK_ACTOR,
        args=(job_id, attempt),
        kwargs={},
        options={},
    )


def queue_declarations(queue_name: str) -> dict[str, dict[str, object]]:
    """Queues Dramatiq's RabbitMQ broker declares for ``queue_name``, with their arguments.

    Publishers that do not go through Dramatiq declare the same queues, so a job
    sent before any worker ever started is kept rather than dropped.
    """
    dead_letter: dict[str, object] = {
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": xq_name(queue_name),
    }
    return {
        queue_name: dead_letter,
        dq_name(queue_name): dead_letter,
        xq_name(queue_name): {"x-message-ttl": DEAD_MESSAGE_TTL},
    }
