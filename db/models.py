"""The schema: jobs and their ordered message log."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Identity,
    Index,
    Integer,
    MetaData,
    Text,
    false,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, TIMESTAMP
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

Timestamp = TIMESTAMP(timezone=True)


class JobState(enum.StrEnum):
    """Where a job is in its life."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})


class Base(DeclarativeBase):
    """Declarative base carrying the naming convention for constraints."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Job(Base):
    """One accepted job; its id is the offset clients see."""

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    fn: Mapped[str] = mapped_column(Text)
    deployment: Mapped[str] = mapped_column(Text)
    framework: Mapped[str] = mapped_column(Text)
    params: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    state: Mapped[str] = mapped_column(Text, server_default=JobState.QUEUED.value)
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    max_attempts: Mapped[int] = mapped_column(Integer)
    # Number of message rows: the last recorded seq.
    message_count: Mapped[int] = mapped_column(Integer, server_default="0")
    # Steps recorded so far; a run resumes with step steps_done + 1.
    steps_done: Mapped[int] = mapped_column(Integer, server_default="0")
    # Set once a client follows the job live; only followed jobs NOTIFY (see migration 0002).
    followed: Mapped[bool] = mapped_column(server_default=false())
    # Set by POST /jobs/{offset}/cancel on a running job: stop at the next step boundary.
    cancel_requested: Mapped[bool] = mapped_column(server_default=false())
    callback_url: Mapped[str | None] = mapped_column(Text)
    # pending -> delivered | failed, for jobs with a callback_url that have ended.
    callback_state: Mapped[str | None] = mapped_column(Text)
    callback_attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    # When the next delivery may start; also a short lease while one is in flight.
    callback_due_at: Mapped[datetime | None] = mapped_column(Timestamp)
    # Set when a worker passes a running job on (slice over, shutdown): the next
    # claim continues the same attempt instead of counting a new one.
    handed_off: Mapped[bool] = mapped_column(server_default=false())
    lease_owner: Mapped[str | None] = mapped_column(Text)
    lease_expires_at: Mapped[datetime | None] = mapped_column(Timestamp)
    # Earliest moment the job may run (later than now while a retry backs off).
    run_after: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())
    # NULL while no broker has confirmed a message for the job's current run.
    published_at: Mapped[datetime | None] = mapped_column(Timestamp)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())
    started_at: Mapped[datetime | None] = mapped_column(Timestamp)
    finished_at: Mapped[datetime | None] = mapped_column(Timestamp)

    __table_args__ = (
        CheckConstraint(
            "state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')", name="state"
        ),
        CheckConstraint("attempts >= 0 AND message_count >= 0", name="counters"),
        Index(
            "ix_jobs_unpublished",
            "run_after",
            postgresql_where=text("state = 'queued' AND published_at IS NULL"),
        ),
        # Partial: listing succeeded jobs walks the primary key; the few running
        # jobs (for the sweeper) and the rarer states are found here. Step updates
        # touch no indexed column and stay HOT (see fillfactor below).
        Index("ix_jobs_state_id", "state", "id", postgresql_where=text("state <> 'succeeded'")),
        Index(
            "ix_jobs_callback_due",
            "callback_due_at",
            postgresql_where=text("callback_state = 'pending'"),
        ),
        CheckConstraint(
            "callback_state IN ('pending', 'delivered', 'failed')", name="callback_state"
        ),
        {"postgresql_with": {"fillfactor": 80}},
    )


class Message(Base):
    """One recorded step of a job; (job_id, seq) is unique, so no step is written twice."""

    __tablename__ = "messages"

    job_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    # The job function's step this message reports; NULL for `done` and `cancelled`.
    step: Mapped[int | None] = mapped_column(Integer)
    body: Mapped[str] = mapped_column(Text)
    attempt: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())

    __table_args__ = (
        CheckConstraint("seq >= 1", name="seq_positive"),
        # A step is recorded once, however often it is delivered or retried.
        Index("uq_messages_job_id_step", "job_id", "step", unique=True),
    )


class IdempotencyKey(Base):
    """An ``Idempotency-Key`` seen on ``POST /schedule``, with the job it created."""

    __tablename__ = "idempotency_keys"

    key: Mapped[str] = mapped_column(Text, primary_key=True)
    request_hash: Mapped[str] = mapped_column(Text)
    job_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("jobs.id", ondelete="CASCADE"))
    expires_at: Mapped[datetime] = mapped_column(Timestamp, index=True)


class WebhookDelivery(Base):
    """One attempt to POST a finished job to its ``callback_url``."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    job_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("jobs.id", ondelete="CASCADE"), index=True
    )
    attempt: Mapped[int] = mapped_column(Integer)
    webhook_id: Mapped[str] = mapped_column(Text)
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())


jobs_table = Job.__table__
messages_table = Message.__table__
webhook_deliveries_table = WebhookDelivery.__table__
