"""The run_job message and queue declarations match what Dramatiq itself uses."""

from __future__ import annotations

import json

from dramatiq.brokers.rabbitmq import RabbitmqBroker

from actors.messages import RUN_JOB_ACTOR, job_message, queue_declarations


def test_job_message_encodes_a_dramatiq_call_of_run_job() -> None:
    encoded = json.loads(job_message(queue_name="q", job_id=42).encode())
    assert encoded["queue_name"] == "q"
    assert encoded["actor_name"] == RUN_JOB_ACTOR
    assert encoded["args"] == [42]
    assert encoded["kwargs"] == {}


def test_queue_declarations_match_dramatiqs_own() -> None:
    # Constructing the broker opens no connection.
    broker = RabbitmqBroker(url="amqp://guest:guest@127.0.0.1:1/")
    declarations = queue_declarations("jobs")
    assert declarations["jobs"] == broker._build_queue_arguments("jobs")
    assert declarations["jobs.DQ"] == broker._build_queue_arguments("jobs")
    assert set(declarations["jobs.XQ"]) == {"x-message-ttl"}
