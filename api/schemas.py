"""Request and response bodies, with the descriptions OpenAPI shows."""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
)

from db.models import JobState
from db.queries import JobRecord

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

    @field_validator("params")
    @classmethod
    def _params_fit_postgres(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return None
        encoded = json.dumps(value)
        if len(encoded.encode()) > MAX_PARAMS_BYTES:
            raise ValueError(f"params must be at most {MAX_PARAMS_BYTES} bytes as JSON")
        if "\\u0000" in encoded:
            raise ValueError("params must not contain NUL characters")
        return value


class ScheduleResponse(BaseModel):
    """The accepted job's id."""

    offset: int = Field(description="The job's id; use it with `/jobs/{offset}`.", examples=[1])


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

    @classmethod
    def from_record(cls, job: JobRecord) -> JobResource:
        """The resource for a stored job."""
        fields = dataclasses.asdict(job)
        return cls(offset=fields.pop("id"), **fields)


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
