"""Building the Dramatiq broker, its middleware and the ``run_job`` actor from settings."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import Retries, TimeLimit

from actors.messages import DELIVER_WEBHOOK_ACTOR, RUN_JOB_ACTOR
from actors.middleware import LeaseHeartbeat, Sweeper, WorkerLifecycle
from actors.publish import publish_job, publish_webhook
from actors.registry import JobRegistry, load_registry
from actors.runner import JobRunner, Publish
from actors.runtime import WorkerRuntime
from actors.webhooks import WebhookSender
from db.settings import Settings

# Errors escaping the actor are infrastructure (Postgres away): Dramatiq retries
# those. Job failures are retried by the runner itself, counted in Postgres.
INFRA_MAX_RETRIES = 1000
INFRA_MAX_BACKOFF_MS = 60_000


@dataclass(frozen=True)
class WorkerApp:
    """A broker with jobline's actor and middleware declared on it."""

    broker: dramatiq.Broker
    runtime: WorkerRuntime
    runner: JobRunner
    actor: dramatiq.Actor[..., None]
    publish: Publish


def make_broker(settings: Settings) -> dramatiq.Broker:
    """RabbitMQ with publisher confirms when a broker URL is set, else an in-process stub."""
    # Only what jobline's actors use: every middleware costs hooks on every message.
    middleware = [TimeLimit(), Retries()]
    if settings.broker_url:
        return RabbitmqBroker(url=settings.broker_url, confirm_delivery=True, middleware=middleware)
    return StubBroker(middleware=middleware)


def build_worker_app(
    settings: Settings,
    *,
    registry: JobRegistry | None = None,
    broker: dramatiq.Broker | None = None,
) -> WorkerApp:
    """Declare ``run_job`` and jobline's middleware on ``broker`` (built from settings if None)."""
    broker = broker or make_broker(settings)
    runtime = WorkerRuntime(settings, registry or load_registry(settings.job_modules))
    publish = partial(_publish, broker, settings.queue_name)
    send_webhook = partial(_publish_webhook, broker, settings.queue_name)
    runner = JobRunner(runtime, publish)
    webhooks = WebhookSender(runtime)
    for middleware in (
        WorkerLifecycle(runtime),
        LeaseHeartbeat(runtime),
        Sweeper(runtime, publish, send_webhook),
    ):
        broker.add_middleware(middleware)

    def run_job(job_id: int) -> None:
        runner.run(job_id)

    def deliver_webhook(job_id: int, attempt: int) -> None:
        webhooks.deliver(job_id, attempt)

    # The runner hands a job on after slice_seconds; one step may then run up to
    # step_time_limit_seconds. Both together stay under the RabbitMQ consumer
    # timeout (checked in Settings).
    actor = _declare(
        broker,
        run_job,
        name=RUN_JOB_ACTOR,
        queue_name=settings.queue_name,
        time_limit_seconds=settings.slice_seconds + settings.step_time_limit_seconds,
    )
    _declare(
        broker,
        deliver_webhook,
        name=DELIVER_WEBHOOK_ACTOR,
        queue_name=settings.queue_name,
        time_limit_seconds=settings.webhook_timeout_seconds + 30,
    )
    return WorkerApp(broker=broker, runtime=runtime, runner=runner, actor=actor, publish=publish)


def _declare(
    broker: dramatiq.Broker,
    fn: Callable[..., None],
    *,
    name: str,
    queue_name: str,
    time_limit_seconds: float,
) -> dramatiq.Actor[..., None]:
    """Declare ``fn`` as an actor whose escaping errors (infrastructure) Dramatiq retries."""
    return dramatiq.Actor(
        fn,
        broker=broker,
        actor_name=name,
        queue_name=queue_name,
        priority=0,
        options={
            "max_retries": INFRA_MAX_RETRIES,
            "max_backoff": INFRA_MAX_BACKOFF_MS,
            "time_limit": round(time_limit_seconds * 1000),
        },
    )


def _publish(broker: dramatiq.Broker, queue_name: str, job_id: int, delay_seconds: float) -> bool:
    return publish_job(broker, queue_name=queue_name, job_id=job_id, delay_seconds=delay_seconds)


def _publish_webhook(broker: dramatiq.Broker, queue_name: str, job_id: int, attempt: int) -> bool:
    return publish_webhook(broker, queue_name=queue_name, job_id=job_id, attempt=attempt)
