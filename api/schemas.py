"""Request and response bodies, with the descriptions OpenAPI shows."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    HttpUrl,
    StringConstraints,
    UrlConstraints,
)

from db.models import JobState
from db.queries import DeliveryRecord, JobRecord, MessageRecord

MAX_NAME_LENGTH = 200
MAX_PARAMS_BYTES = 64 * 1024


def _no_nul(value: str) -> str:
    # Postgres text cannot hold NUL; refuse it here rather than fail at INSERT.
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


Name = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_NAME_LENGTH),
    AfterValidator(_no_nul),
]


class ScheduleRequest(BaseModel):
    """An inference request: which job function to run, for which deployment, with what."""

    model_config = ConfigDict(extra="forbid")

    deployment: Name = Field(description="Where the model is deployed.", examples=["Docker"])
    framework: Name = Field(description="The serving framework.", examples=["FastAPI"])
    fn: Name = Field(
        description="Name of a registered job function (`GET /functions` lists them).",
        examples=["default_fn"],
    )
    params: dict[str, Any] | None = Field(
        None,
        description=(
            "Arguments for the job function, checked against its schema. "
            f"At most {MAX_PARAMS_BYTES} bytes as JSON. `default_fn` takes `step_seconds` (0-60)."
        ),
        examples=[{"step_seconds": 1}],
    )
    callback_url: Annotated[HttpUrl, UrlConstraints(max_length=2000)] | None = Field(
        None,
        description=(
            "When the job ends, its resource is POSTed here, signed as Standard Webhooks "
            "(`webhook-id`, `webhook-timestamp`, `webhook-signature`), with retries."
        ),
        examples=["https://example.com/hooks/jobline"],
    )


class ScheduleResponse(BaseModel):
    """The accepted job's id."""

    offset: int = Field(description="The job's id; use it with `/jobs/{offset}`.", examples=[1])


class WebhookDelivery(BaseModel):
    """One attempt to POST the job to its callback_url."""

    attempt: int
    webhook_id: str = Field(description="The `webhook-id` header; the same on every retry.")
    status_code: int | None = Field(description="The receiver's answer, if any.")
    error: str | None = Field(description="Why the delivery failed, if it did.")
    created_at: datetime


class JobResource(BaseModel):
    """A job and where it stands."""

    offset: int = Field(description="The job's id.")
    fn: str = Field(description="The job function.")
    deployment: str
    framework: str
    params: dict[str, Any] = Field(description="Params as validated, defaults filled in.")
    state: JobState = Field(description="queued, running, succeeded, failed or cancelled.")
    attempts: int = Field(description="Runs started so far (a retry or a crashed run counts).")
    max_attempts: int = Field(description="Runs allowed before the job ends `failed`.")
    message_count: int = Field(description="Messages recorded so far.")
    last_error: str | None = Field(description="The most recent failure, if any.")
    created_at: datetime
    started_at: datetime | None = Field(description="When the first run began.")
    finished_at: datetime | None = Field(description="When the job reached a final state.")
    updated_at: datetime
    cancel_requested: bool = Field(
        description="A cancel was asked for; a running job stops at its next step boundary."
    )
    callback_url: str | None = Field(description="Where the job is POSTed when it ends.")
    callback_state: str | None = Field(
        description="pending, delivered or failed once the job ended with a callback_url."
    )
    callback_attempts: int = Field(description="Webhook deliveries tried so far.")
    webhook_deliveries: list[WebhookDelivery] = Field(
        default_factory=list,
        description="Each delivery attempt (on `GET /jobs/{offset}`; empty in lists).",
    )

    @classmethod
    def from_record(
        cls, job: JobRecord, deliveries: list[DeliveryRecord] | None = None
    ) -> JobResource:
        """The resource for a stored job."""
        fields = dataclasses.asdict(job)
        return cls(
            offset=fields.pop("id"),
            webhook_deliveries=[
                WebhookDelivery(**dataclasses.asdict(delivery)) for delivery in deliveries or []
            ],
            **fields,
        )


class JobPage(BaseModel):
    """One page of jobs, newest first."""

    items: list[JobResource]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null on the last page."
    )


class MessageOut(BaseModel):
    """One recorded message of a job."""

    seq: int = Field(description="Position in the job's log, from 1; use it as `after`.")
    body: str
    created_at: datetime
    attempt: int = Field(description="The attempt that recorded it.")

    @classmethod
    def from_record(cls, message: MessageRecord) -> MessageOut:
        """The representation of a stored message."""
        return cls(
            seq=message.seq,
            body=message.body,
            created_at=message.created_at,
            attempt=message.attempt,
        )


class FunctionInfo(BaseModel):
    """A registered job function."""

    name: str
    description: str
    steps: int = Field(description="Steps, each producing one message (then `done`).")
    params_schema: dict[str, Any] = Field(description="JSON Schema of its params.")


class ErrorBody(BaseModel):
    """Every error response."""

    detail: str | list[dict[str, Any]] = Field(
        description="A message, or for 422 the list of validation problems."
    )


class Health(BaseModel):
    """Liveness and the database's reachability."""

    status: str = Field(examples=["ok"])
    database: str = Field(examples=["ok"])
