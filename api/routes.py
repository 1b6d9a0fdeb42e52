"""HTTP routes."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from api.deps import ServicesDep
from api.errors import NotFound
from api.schemas import (
    ErrorBody,
    FunctionInfo,
    Health,
    JobResource,
    ScheduleRequest,
    ScheduleResponse,
)
from db import queries
from db.errors import translate_errors

router = APIRouter()

BIGINT_MAX = 2**63 - 1
OFFSET_NOT_FOUND = "Offset not found"

_errors: dict[int | str, dict[str, Any]] = {
    422: {"model": ErrorBody, "description": "The request is malformed or fails validation."},
    503: {"model": ErrorBody, "description": "Postgres is unreachable; try again."},
}
_not_found: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "No job has this offset."},
    **_errors,
}


def _check_offset(offset: int) -> int:
    # Out-of-range integers cannot name a job: same answer as a missing one.
    if not 1 <= offset <= BIGINT_MAX:
        raise NotFound(OFFSET_NOT_FOUND)
    return offset


def _validation_error(loc: tuple[str | int, ...], message: str, value: object) -> Exception:
    return RequestValidationError(
        [{"type": "value_error", "loc": loc, "msg": message, "input": value}]
    )


@router.post(
    "/schedule",
    status_code=202,
    response_model=ScheduleResponse,
    responses=_errors,
    summary="Schedule a job",
    description=(
        "Stores the job in Postgres and answers at once with its offset; a worker runs it. "
        "The `Location` header points at the job resource. Nothing is stored when the "
        "request fails validation (422)."
    ),
)
async def schedule(body: ScheduleRequest, response: Response, services: ServicesDep) -> Any:
    function = services.registry.get(body.fn)
    if function is None:
        known = ", ".join(services.registry.names)
        raise _validation_error(("body", "fn"), f"Unknown job function; known: {known}", body.fn)
    try:
        params = function.parse_params(body.params or {})
    except ValidationError as error:
        raise RequestValidationError(
            [{**e, "loc": ("body", "params", *e["loc"])} for e in error.errors(include_url=False)]
        ) from None
    job = queries.NewJob(
        fn=body.fn,
        deployment=body.deployment,
        framework=body.framework,
        params=params.model_dump(mode="json"),
        max_attempts=services.settings.max_attempts,
    )
    offset = await services.writer.insert(job)
    services.publisher.publish_soon(offset)
    response.headers["Location"] = f"/jobs/{offset}"
    return {"offset": offset}


@router.get(
    "/messages/{offset}",
    response_model=list[str],
    responses=_not_found,
    summary="A job's messages",
    description="The job's messages so far, in step order: `result1`, ... then `done`.",
)
async def read_messages(offset: int, services: ServicesDep) -> Any:
    with translate_errors():
        async with services.engine.connect() as conn:
            bodies = await queries.list_message_bodies(conn, job_id=_check_offset(offset))
    if bodies is None:
        raise NotFound(OFFSET_NOT_FOUND)
    return bodies


@router.get(
    "/jobs/{offset}",
    response_model=JobResource,
    responses=_not_found,
    summary="A job",
    description="The job with its state, attempts, timestamps, last error and message count.",
)
async def read_job(offset: int, services: ServicesDep) -> Any:
    with translate_errors():
        async with services.engine.connect() as conn:
            job = await queries.get_job(conn, job_id=_check_offset(offset))
    if job is None:
        raise NotFound(OFFSET_NOT_FOUND)
    return JobResource.from_record(job)


@router.get(
    "/functions",
    response_model=list[FunctionInfo],
    summary="Registered job functions",
    description="The job functions this API accepts in `fn`, with their params schema.",
)
async def list_functions(services: ServicesDep) -> Any:
    registry = services.registry
    return [
        FunctionInfo(
            name=name,
            description=function.description,
            steps=len(function.steps),
            params_schema=function.params.model_json_schema(),
        )
        for name in registry.names
        if (function := registry.get(name)) is not None
    ]


@router.get(
    "/health",
    response_model=Health,
    responses={503: {"model": Health, "description": "Postgres is unreachable."}},
    summary="Health",
    description="200 when the API can reach Postgres, else 503.",
)
async def health(services: ServicesDep, response: Response) -> Any:
    try:
        with translate_errors():
            async with services.engine.connect() as conn:
                await queries.ping(conn)
    except Exception:
        response.status_code = 503
        return Health(status="degraded", database="unavailable")
    return Health(status="ok", database="ok")
