"""HTTP routes."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from sse_starlette import EventSourceResponse, ServerSentEvent

from api.deps import Services, ServicesDep
from api.errors import Conflict, NotFound
from api.events import job_updates
from api.schemas import (
    MAX_PARAMS_BYTES,
    ErrorBody,
    FunctionInfo,
    Health,
    JobPage,
    JobResource,
    MessageOut,
    ScheduleRequest,
    ScheduleResponse,
)
from db import queries
from db.errors import translate_errors
from db.models import FINAL_STATES, JobState

router = APIRouter()

BIGINT_MAX = 2**63 - 1
OFFSET_NOT_FOUND = "Offset not found"
MAX_WAIT_SECONDS = 60
CANCELLED_MESSAGE = "cancelled"
SSE_PING_SECONDS = 15

_errors: dict[int | str, dict[str, Any]] = {
    422: {"model": ErrorBody, "description": "The request is malformed or fails validation."},
    503: {"model": ErrorBody, "description": "Postgres is unreachable; try again."},
}
_not_found: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "No job has this offset."},
    **_errors,
}
_conflict: dict[int | str, dict[str, Any]] = {
    409: {"model": ErrorBody, "description": "The job's state does not allow this."},
    **_not_found,
}


async def job_offset(offset: int) -> int:
    """The ``offset`` path parameter; an integer that cannot name a job is a 404."""
    if not 1 <= offset <= BIGINT_MAX:
        raise NotFound(OFFSET_NOT_FOUND)
    return offset


JobOffset = Annotated[int, Depends(job_offset)]
After = Annotated[int, Query(ge=0, le=BIGINT_MAX, description="Only messages with a greater seq.")]
Wait = Annotated[
    float,
    Query(
        ge=0,
        le=MAX_WAIT_SECONDS,
        description="Long-poll: seconds to wait for a newer message or the job's end.",
    ),
]


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
        "request fails validation (422). With an `Idempotency-Key`, a repeat of the same "
        "request returns the first offset (header `Idempotent-Replayed: true`); the same "
        "key with a different request is a 422."
    ),
)
async def schedule(
    body: ScheduleRequest,
    services: ServicesDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            min_length=1,
            max_length=255,
            pattern=r"^[\x21-\x7e]+$",
            description="Makes retries of this request safe: same key, same job.",
        ),
    ] = None,
) -> Any:
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
    params_json = json.dumps(params.model_dump(mode="json"), separators=(",", ":"))
    if len(params_json) > MAX_PARAMS_BYTES:  # ensure_ascii: characters are bytes
        raise _validation_error(
            ("body", "params"), f"params must be at most {MAX_PARAMS_BYTES} bytes as JSON", None
        )
    if "\\u0000" in params_json:  # Postgres jsonb cannot hold NUL
        raise _validation_error(("body", "params"), "params must not contain NUL characters", None)
    callback_url = str(body.callback_url) if body.callback_url else None
    if callback_url and services.settings.webhook_secret is None:
        raise _validation_error(
            ("body", "callback_url"),
            "Callbacks are not enabled on this server (JOBLINE_WEBHOOK_SECRET is unset)",
            callback_url,
        )
    job = queries.NewJob(
        fn=body.fn,
        deployment=body.deployment,
        framework=body.framework,
        params_json=params_json,
        max_attempts=services.settings.max_attempts,
        callback_url=callback_url,
    )
    headers = {}
    if idempotency_key is None:
        offset = await services.writer.insert(job)
    else:
        offset, replayed = await _schedule_once(services, job, idempotency_key)
        if replayed:
            headers["Idempotent-Replayed"] = "true"
    if "Idempotent-Replayed" not in headers:
        services.publisher.publish_soon(offset)
    headers["Location"] = f"/jobs/{offset}"
    # A prebuilt response: this is the hot path, and the body is one integer.
    return Response(
        b'{"offset":%d}' % offset, status_code=202, media_type="application/json", headers=headers
    )


async def _schedule_once(services: Services, job: queries.NewJob, key: str) -> tuple[int, bool]:
    """Insert ``job`` under ``key`` unless the key is known: (offset, replayed)."""
    request_hash = hashlib.sha256(
        json.dumps(
            [job.fn, job.deployment, job.framework, job.params_json, job.callback_url]
        ).encode()
    ).hexdigest()
    with translate_errors():
        async with services.engine.connect() as conn:
            # Two rounds at most: a lost race finds the winner's key on the second.
            for _ in range(2):
                transaction = await conn.begin()
                found = await queries.find_idempotency_key(conn, key=key)
                if found is None:
                    [offset] = await queries.insert_jobs(conn, jobs=[job])
                    if await queries.claim_idempotency_key(
                        conn,
                        key=key,
                        request_hash=request_hash,
                        job_id=offset,
                        ttl_seconds=services.settings.idempotency_ttl_seconds,
                    ):
                        await transaction.commit()
                        return offset, False
                    found = await queries.find_idempotency_key(conn, key=key)
                await transaction.rollback()  # our job, if any, never existed
                if found is not None:
                    offset, known_hash = found
                    if known_hash != request_hash:
                        raise _validation_error(
                            ("header", "idempotency-key"),
                            "This Idempotency-Key was used with a different request",
                            key,
                        )
                    return offset, True
    raise RuntimeError("Idempotency-Key neither claimed nor found")  # pragma: no cover


@router.get(
    "/messages/{offset}",
    response_model=list[str],
    responses=_not_found,
    summary="A job's messages, as text",
    description=(
        "The job's messages in step order: `result1`, ... then `done`. With `after`, only "
        "those after that seq; with `wait`, long-polls like `/jobs/{offset}/messages`."
    ),
)
async def read_message_bodies(
    offset: JobOffset, services: ServicesDep, after: After = 0, wait: Wait = 0
) -> Any:
    messages = await _messages_after(services, offset, after=after, limit=None, wait=wait)
    return [message.body for message in messages]


@router.get(
    "/jobs/{offset}/messages",
    response_model=list[MessageOut],
    responses=_not_found,
    summary="A job's messages after a seq",
    description=(
        "Messages with seq greater than `after`, oldest first, at most `limit` (keyset "
        "pagination: pass the last seq you got). With `wait` it long-polls: it answers "
        "as soon as a newer message exists or the job has ended, else `[]` after `wait` s."
    ),
)
async def read_messages(
    offset: JobOffset,
    services: ServicesDep,
    after: After = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    wait: Wait = 0,
) -> Any:
    messages = await _messages_after(services, offset, after=after, limit=limit, wait=wait)
    return [MessageOut.from_record(message) for message in messages]


async def _messages_after(
    services: Services, job_id: int, *, after: int, limit: int | None, wait: float
) -> list[queries.MessageRecord]:
    async def fetch(*, follow: bool = False) -> tuple[JobState, list[queries.MessageRecord]]:
        found = await _fetch_messages(services, job_id, after, limit=limit, follow=follow)
        if found is None:
            raise NotFound(OFFSET_NOT_FOUND)
        return found

    if wait <= 0:
        return (await fetch())[1]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    with services.events.follow(job_id) as notes:
        state, messages = await fetch(follow=True)
        while not messages and state not in FINAL_STATES:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return []
            try:
                await asyncio.wait_for(notes.get(), remaining)
            except TimeoutError:
                return []
            state, messages = await fetch()
        return messages


@router.get(
    "/jobs/{offset}/events",
    responses={
        200: {
            "content": {"text/event-stream": {}},
            "description": (
                "`event: state` (data `{offset, state}`) first and on every change; "
                "`event: message` (id = seq, data = a message object) for each message. "
                "The stream ends after the job does."
            ),
        },
        **_not_found,
    },
    summary="Follow a job (Server-Sent Events)",
    description=(
        "Streams the job's messages after `after` (or the `Last-Event-ID` header, which "
        "browsers send on reconnect) and its state changes, live, until it ends. An idle "
        "stream costs no database queries."
    ),
)
async def stream_events(
    offset: JobOffset,
    services: ServicesDep,
    after: After = 0,
    last_event_id: Annotated[str | None, Header()] = None,
) -> EventSourceResponse:
    if last_event_id is not None:
        try:
            after = max(0, min(int(last_event_id), BIGINT_MAX))
        except ValueError:
            raise _validation_error(
                ("header", "last-event-id"), "Last-Event-ID must be a message seq", last_event_id
            ) from None
    subscription = services.events.follow(offset)
    notes = subscription.__enter__()
    try:
        found = await _fetch_messages(services, offset, after, follow=True)
        if found is None:
            raise NotFound(OFFSET_NOT_FOUND)
    except BaseException:
        subscription.__exit__(None, None, None)
        raise
    state, backlog = found

    async def fetch(seq: int) -> tuple[JobState, list[queries.MessageRecord]] | None:
        return await _fetch_messages(services, offset, seq)

    async def events() -> AsyncIterator[ServerSentEvent]:
        try:
            async for update in job_updates(
                notes, fetch, after=after, state=state, backlog=backlog
            ):
                if isinstance(update, JobState):
                    data = json.dumps({"offset": offset, "state": update.value})
                    yield ServerSentEvent(data=data, event="state")
                else:
                    data = _message_event_data(update)
                    yield ServerSentEvent(data=data, event="message", id=str(update.seq))
        finally:
            subscription.__exit__(None, None, None)

    return EventSourceResponse(events(), ping=SSE_PING_SECONDS)


@functools.lru_cache(maxsize=4096)
def _message_event_data(message: queries.MessageRecord) -> str:
    """A message's event data, encoded once however many streams follow its job."""
    return MessageOut.from_record(message).model_dump_json()


async def _fetch_messages(
    services: Services,
    job_id: int,
    after: int,
    *,
    limit: int | None = None,
    follow: bool = False,
) -> tuple[JobState, list[queries.MessageRecord]] | None:
    """The job's state and messages after ``after``; with ``follow``, start its notifications."""
    with translate_errors():
        async with services.engine.begin() as conn:
            if follow:
                await queries.follow_job(conn, job_id=job_id)
            return await queries.list_messages(conn, job_id=job_id, after=after, limit=limit)


@router.get(
    "/jobs/{offset}",
    response_model=JobResource,
    responses=_not_found,
    summary="A job",
    description=(
        "The job with its state, attempts, timestamps, last error, message count, and its "
        "webhook deliveries."
    ),
)
async def read_job(offset: JobOffset, services: ServicesDep) -> Any:
    return await _job_resource(services, offset)


async def _job_resource(services: Services, job_id: int) -> JobResource:
    with translate_errors():
        async with services.engine.connect() as conn:
            job = await queries.get_job(conn, job_id=job_id)
            if job is None:
                raise NotFound(OFFSET_NOT_FOUND)
            deliveries = (
                await queries.list_deliveries(conn, job_id=job_id) if job.callback_url else []
            )
    return JobResource.from_record(job, deliveries)


@router.get(
    "/jobs",
    response_model=JobPage,
    responses=_errors,
    summary="List jobs",
    description=(
        "Jobs newest first, filtered by state, function and creation time, in pages of "
        "`limit`; pass `next_cursor` back as `cursor` for the next page."
    ),
)
async def list_jobs(
    services: ServicesDep,
    state: JobState | None = None,
    fn: Annotated[str | None, Query(max_length=200)] = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[
        str | None, Query(pattern=r"^[0-9]{1,19}$", description="From `next_cursor`.")
    ] = None,
) -> Any:
    with translate_errors():
        async with services.engine.connect() as conn:
            jobs = await queries.list_jobs(
                conn,
                state=state.value if state else None,
                fn=fn,
                created_after=created_after,
                created_before=created_before,
                before_id=int(cursor) if cursor else None,
                limit=limit + 1,
            )
    page = jobs[:limit]
    return JobPage(
        items=[JobResource.from_record(job) for job in page],
        next_cursor=str(page[-1].id) if len(jobs) > limit else None,
    )


@router.post(
    "/jobs/{offset}/cancel",
    response_model=JobResource,
    responses=_conflict,
    summary="Cancel a job",
    description=(
        "A queued job is cancelled at once and never runs. A running job stops at its "
        "next step boundary (`cancel_requested` is true until then). Either way it ends "
        "`cancelled` with a final `cancelled` message. A job that already ended is a 409."
    ),
)
async def cancel_job(offset: JobOffset, services: ServicesDep) -> Any:
    with translate_errors():
        async with services.engine.begin() as conn:
            previous = await queries.cancel_job(conn, job_id=offset, message=CANCELLED_MESSAGE)
    if previous is None:
        raise NotFound(OFFSET_NOT_FOUND)
    if previous in FINAL_STATES:
        raise Conflict(f"Job already {previous.value}")
    return await _job_resource(services, offset)


@router.post(
    "/jobs/{offset}/retry",
    response_model=JobResource,
    responses=_conflict,
    summary="Run a failed or cancelled job again",
    description=(
        "Queues a `failed` or `cancelled` job again as a new attempt, resuming after its "
        "last recorded step, with `JOBLINE_MAX_ATTEMPTS` more runs allowed. Any other "
        "state is a 409."
    ),
)
async def retry_job(offset: JobOffset, services: ServicesDep) -> Any:
    with translate_errors():
        async with services.engine.begin() as conn:
            retried = await queries.retry_job(
                conn, job_id=offset, extra_attempts=services.settings.max_attempts
            )
    if retried:
        services.publisher.publish_soon(offset)
        return await _job_resource(services, offset)
    job = await _job_resource(services, offset)  # 404 if it does not exist
    raise Conflict(f"Only failed or cancelled jobs can be retried; this one is {job.state}")


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
