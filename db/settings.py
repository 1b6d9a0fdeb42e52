"""Configuration shared by every jobline process, read from ``JOBLINE_*`` variables."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# RabbitMQ closes a channel whose delivery stays unacknowledged for 30 minutes
# (consumer_timeout). Every timer that can hold a delivery open stays below it.
CONSUMER_TIMEOUT_SECONDS = 30 * 60
MAX_TIMER_SECONDS = 25 * 60


def normalize_database_url(url: str) -> str:
    """Return ``url`` with the psycopg 3 driver named, as SQLAlchemy needs it."""
    for prefix in ("postgres://", "postgresql://", "postgresql+psycopg2://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


class Settings(BaseSettings):
    """Everything an operator can set. One instance per process, passed down."""

    model_config = SettingsConfigDict(env_prefix="JOBLINE_", extra="ignore")

    database_url: str | None = Field(
        None,
        description="Postgres URL. Unset: `jobline dev` starts an embedded Postgres.",
    )
    broker_url: str | None = Field(
        None,
        description="RabbitMQ URL (amqp://). Unset: `jobline dev` runs an in-process broker.",
    )
    queue_name: str = Field(
        "jobline", pattern=r"^[A-Za-z0-9_.-]{1,100}$", description="RabbitMQ queue for jobs."
    )
    job_modules: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated Python modules whose JobFunction objects are registered.",
    )
    max_attempts: int = Field(5, ge=1, le=1000, description="Runs before a job ends `failed`.")
    retry_backoff_seconds: float = Field(
        1.0, gt=0, le=MAX_TIMER_SECONDS, description="First retry delay; doubles per attempt."
    )
    retry_backoff_max_seconds: float = Field(
        300.0, gt=0, le=MAX_TIMER_SECONDS, description="Cap on the retry delay."
    )
    lease_seconds: float = Field(
        30.0, ge=0.5, le=MAX_TIMER_SECONDS, description="A claim expires unless renewed this often."
    )
    sweep_interval_seconds: float = Field(
        1.0, gt=0, le=600, description="How often each worker process's sweeper looks."
    )
    publish_grace_seconds: float = Field(
        5.0,
        ge=0,
        le=MAX_TIMER_SECONDS,
        description="An unpublished queued job older than this is published by the sweeper.",
    )
    slice_seconds: float = Field(
        300.0,
        gt=0,
        le=MAX_TIMER_SECONDS,
        description="A delivery runs steps for at most this long, then hands the job on.",
    )
    step_time_limit_seconds: float = Field(
        15 * 60,
        gt=0,
        le=MAX_TIMER_SECONDS,
        description="One step running longer than this is interrupted and retried.",
    )
    idempotency_ttl_seconds: float = Field(
        24 * 3600, gt=0, description="How long an Idempotency-Key is remembered."
    )
    webhook_secret: SecretStr | None = Field(
        None,
        description="Standard Webhooks signing secret (`whsec_` + base64). "
        "Needed to accept a callback_url.",
    )
    webhook_max_attempts: int = Field(
        8, ge=1, le=100, description="Deliveries tried before a callback is given up."
    )
    webhook_backoff_seconds: float = Field(
        1.0, gt=0, le=MAX_TIMER_SECONDS, description="First redelivery delay; doubles each time."
    )
    webhook_timeout_seconds: float = Field(
        10.0, gt=0, le=120, description="How long a receiver may take to answer."
    )
    database_pool_size: int = Field(10, ge=1, le=200, description="Connections per process.")
    connect_timeout_seconds: float = Field(
        3.0, gt=0, le=60, description="How long to wait for Postgres or RabbitMQ to answer."
    )

    @model_validator(mode="after")
    def _delivery_fits_consumer_timeout(self) -> Settings:
        if self.slice_seconds + self.step_time_limit_seconds > MAX_TIMER_SECONDS:
            raise ValueError(
                "slice_seconds + step_time_limit_seconds must stay under "
                f"{MAX_TIMER_SECONDS} s (RabbitMQ's consumer timeout is "
                f"{CONSUMER_TIMEOUT_SECONDS} s)"
            )
        return self

    @field_validator("database_url")
    @classmethod
    def _normalize_database_url(cls, value: str | None) -> str | None:
        return normalize_database_url(value) if value else None

    @field_validator("broker_url")
    @classmethod
    def _empty_broker_is_none(cls, value: str | None) -> str | None:
        return value or None

    @field_validator("job_modules", mode="before")
    @classmethod
    def _split_modules(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value
