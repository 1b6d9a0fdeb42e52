"""A Python client for jobline's HTTP API: ``JoblineClient`` (sync) and ``AsyncJoblineClient``.

Both clients are thin drivers over one set of pure functions that build requests
and parse responses. The operations that take several requests (paging through
jobs, following a job live) are written once, as *plans*: generators that yield
what to do next (send a request, pause, hand an item to the caller) and receive
the responses. Each client only performs the I/O, so sync and async behave alike.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import AsyncIterator, Generator, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any, Generic, Self, TypeAlias, TypeVar

import httpx
from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

DEFAULT_URL = "http://127.0.0.1:8000"
URL_ENV = "JOBLINE_URL"
DEFAULT_DEPLOYMENT = "Docker"
DEFAULT_FRAMEWORK = "FastAPI"
DEFAULT_TIMEOUT_SECONDS = 10.0
FINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})
FOLLOW_WAIT_SECONDS = 30.0
# A long-poll may legitimately stay silent for its whole wait; only silence beyond it is a fault.
LONG_POLL_TIMEOUT_MARGIN_SECONDS = 10.0
# What a restarting server or a proxy in front of it answers; worth retrying while following.
RETRYABLE_STATUS_CODES = frozenset({502, 503, 504})
BACKOFF_FIRST_SECONDS = 0.1
BACKOFF_MAX_SECONDS = 5.0

T = TypeVar("T")


def default_url() -> str:
    """The API's base URL: ``$JOBLINE_URL``, else http://127.0.0.1:8000."""
    return os.environ.get(URL_ENV) or DEFAULT_URL


# --- errors ---------------------------------------------------------------------------


class JoblineError(Exception):
    """Base of every error the jobline client raises."""


class JoblineConnectionError(JoblineError):
    """The server could not be reached, or the connection broke before it answered."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(reason)
        self.url = url


class JoblineHTTPError(JoblineError):
    """The server answered with an error status, or with something that is not jobline's."""

    def __init__(self, status_code: int, detail: str | list[dict[str, Any]]) -> None:
        super().__init__(f"HTTP {status_code}: {describe_detail(detail)}")
        self.status_code = status_code
        self.detail = detail


def describe_detail(detail: str | list[dict[str, Any]]) -> str:
    """One line for an error's ``detail``: the text, or each validation problem with its field."""
    if isinstance(detail, str):
        return detail
    problems = []
    for problem in detail:
        # loc starts with where the value came from (body, query, header); the rest names it.
        where = ".".join(str(part) for part in problem.get("loc", ())[1:])
        message = str(problem.get("msg", problem))
        problems.append(f"{where}: {message}" if where else message)
    return "; ".join(problems)


def connection_error(url: str, error: httpx.TransportError) -> JoblineConnectionError:
    """The client's error for an httpx transport failure talking to ``url``."""
    if isinstance(error, httpx.ConnectError | httpx.ConnectTimeout):
        reason = f"server not reachable at {url}"
    elif isinstance(error, httpx.TimeoutException):
        reason = f"server at {url} did not answer in time"
    else:
        reason = f"connection to {url} broke"
    cause = str(error) or type(error).__name__
    return JoblineConnectionError(url, f"{reason} ({cause})")


# --- resources ------------------------------------------------------------------------


class _Resource(BaseModel):
    # Frozen: a resource is a snapshot. Fields this client does not know (from a newer
    # server) are kept, so dumping a resource gives back everything the server sent.
    model_config = ConfigDict(frozen=True, extra="allow")


class Message(_Resource):
    """One recorded message of a job."""

    seq: int
    body: str
    created_at: datetime
    attempt: int


class WebhookDelivery(_Resource):
    """One attempt to POST the job to its callback_url."""

    attempt: int
    webhook_id: str
    status_code: int | None
    error: str | None
    created_at: datetime


class Job(_Resource):
    """A job and where it stands, as ``GET /jobs/{offset}`` describes it."""

    offset: int
    fn: str
    deployment: str
    framework: str
    params: dict[str, Any]
    state: str
    attempts: int
    max_attempts: int
    message_count: int
    last_error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    cancel_requested: bool = False
    callback_url: str | None = None
    callback_state: str | None = None
    callback_attempts: int = 0
    webhook_deliveries: tuple[WebhookDelivery, ...] = ()

    @property
    def ended(self) -> bool:
        """True once the job is succeeded, failed or cancelled."""
        return self.state in FINAL_STATES


class JobPage(_Resource):
    """One page of ``GET /jobs``."""

    items: tuple[Job, ...]
    next_cursor: str | None


@dataclass(frozen=True)
class Reconnecting:
    """Following lost the server; it tries again from the last message after ``delay`` s."""

    error: JoblineError
    delay: float


Update: TypeAlias = Message | Job | Reconnecting

_messages = TypeAdapter(list[Message])
_offset = TypeAdapter(dict[str, int])
_error_body = TypeAdapter(dict[str, Any])


# --- requests and responses (pure) ----------------------------------------------------


@dataclass(frozen=True)
class ApiRequest:
    """One request to the API, described without doing any I/O."""

    method: str
    path: str
    params: Mapping[str, str | int | float] = field(default_factory=dict)
    json: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    timeout: float | None = None  # None: the client's own timeout


def schedule_request(
    fn: str,
    *,
    deployment: str,
    framework: str,
    params: Mapping[str, Any] | None,
    callback_url: str | None,
    idempotency_key: str | None,
) -> ApiRequest:
    """``POST /schedule`` for ``fn``."""
    body: dict[str, Any] = {"deployment": deployment, "framework": framework, "fn": fn}
    if params is not None:
        body["params"] = dict(params)
    if callback_url is not None:
        body["callback_url"] = callback_url
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key is not None else {}
    return ApiRequest("POST", "/schedule", json=body, headers=headers)


def job_request(offset: int) -> ApiRequest:
    """``GET /jobs/{offset}``."""
    return ApiRequest("GET", f"/jobs/{offset}")


def cancel_request(offset: int) -> ApiRequest:
    """``POST /jobs/{offset}/cancel``."""
    return ApiRequest("POST", f"/jobs/{offset}/cancel")


def retry_request(offset: int) -> ApiRequest:
    """``POST /jobs/{offset}/retry``."""
    return ApiRequest("POST", f"/jobs/{offset}/retry")


def jobs_request(
    *,
    state: str | None,
    fn: str | None,
    created_after: datetime | None,
    created_before: datetime | None,
    limit: int,
    cursor: str | None,
) -> ApiRequest:
    """``GET /jobs``: one page of jobs, newest first."""
    query: dict[str, str | int | float] = {"limit": limit}
    if state is not None:
        query["state"] = state
    if fn is not None:
        query["fn"] = fn
    if created_after is not None:
        query["created_after"] = created_after.isoformat()
    if created_before is not None:
        query["created_before"] = created_before.isoformat()
    if cursor is not None:
        query["cursor"] = cursor
    return ApiRequest("GET", "/jobs", params=query)


def messages_request(offset: int, *, after: int, limit: int, wait: float) -> ApiRequest:
    """``GET /jobs/{offset}/messages``: messages after seq ``after``, long-polling ``wait`` s."""
    query: dict[str, str | int | float] = {"after": after, "limit": limit}
    if wait > 0:
        query["wait"] = wait
    timeout = wait + LONG_POLL_TIMEOUT_MARGIN_SECONDS if wait > 0 else None
    return ApiRequest("GET", f"/jobs/{offset}/messages", params=query, timeout=timeout)


def http_error(response: httpx.Response) -> JoblineHTTPError:
    """The error an unsuccessful ``response`` stands for."""
    try:
        detail = _error_body.validate_json(response.content)["detail"]
    except (ValidationError, KeyError):
        detail = response.text.strip()[:200] or response.reason_phrase
    if not isinstance(detail, str | list):
        detail = str(detail)
    return JoblineHTTPError(response.status_code, detail)


def _parse(response: httpx.Response, adapter: TypeAdapter[T]) -> T:
    """The body of a successful ``response`` as ``adapter``'s type; else the error it means."""
    if not response.is_success:
        raise http_error(response)
    try:
        return adapter.validate_json(response.content)
    except ValidationError:
        body = response.text.strip()[:200]
        raise JoblineHTTPError(
            response.status_code, f"unexpected response from {response.url}: {body}"
        ) from None


_job = TypeAdapter(Job)
_page = TypeAdapter(JobPage)


def parse_offset(response: httpx.Response) -> int:
    """The offset of a job ``POST /schedule`` accepted."""
    found = _parse(response, _offset)
    if "offset" not in found:
        raise JoblineHTTPError(response.status_code, f"no offset in {response.text[:200]}")
    return found["offset"]


def parse_job(response: httpx.Response) -> Job:
    """The job resource in ``response``."""
    return _parse(response, _job)


def parse_job_page(response: httpx.Response) -> JobPage:
    """A page of ``GET /jobs``."""
    return _parse(response, _page)


def parse_messages(response: httpx.Response) -> list[Message]:
    """The messages of ``GET /jobs/{offset}/messages``."""
    return _parse(response, _messages)


# --- plans: multi-request operations, written once for both clients ---------------------


@dataclass(frozen=True)
class Call:
    """Send ``request``; the plan receives the response, or the connection error thrown in."""

    request: ApiRequest


@dataclass(frozen=True)
class Pause:
    """Sleep ``seconds`` before the plan goes on."""

    seconds: float


@dataclass(frozen=True)
class Emit(Generic[T]):
    """Hand ``item`` to the caller."""

    item: T


Plan: TypeAlias = Generator[Call | Pause | Emit[T], httpx.Response, None]


class Backoff:
    """Exponential delays with jitter, starting over after a success."""

    def __init__(
        self, first: float = BACKOFF_FIRST_SECONDS, maximum: float = BACKOFF_MAX_SECONDS
    ) -> None:
        self.first = first
        self.maximum = maximum
        self.failures = 0

    def next_delay(self) -> float:
        """The delay before the next try; each failure doubles it, up to the maximum."""
        delay = min(self.maximum, self.first * 2.0**self.failures)
        self.failures = min(self.failures + 1, 60)  # 2.0**n would overflow during a long outage
        # Jitter, so clients cut off together do not come back together.
        return delay * random.uniform(0.5, 1.0)

    def reset(self) -> None:
        """The last try worked."""
        self.failures = 0


def list_jobs_plan(
    *,
    state: str | None,
    fn: str | None,
    created_after: datetime | None,
    created_before: datetime | None,
    limit: int,
) -> Plan[Job]:
    """Every job matching the filters, newest first, a page of ``limit`` at a time."""
    cursor: str | None = None
    while True:
        request = jobs_request(
            state=state,
            fn=fn,
            created_after=created_after,
            created_before=created_before,
            limit=limit,
            cursor=cursor,
        )
        page = parse_job_page((yield Call(request)))
        for job in page.items:
            yield Emit(job)
        if page.next_cursor is None:
            return
        cursor = page.next_cursor


def _call_resuming(
    request: ApiRequest, backoff: Backoff
) -> Generator[Call | Pause | Emit[Update], httpx.Response, httpx.Response]:
    """Send ``request`` until it gets an answer that is not a transient failure."""
    while True:
        failure: JoblineError
        try:
            response = yield Call(request)
        except JoblineConnectionError as error:
            failure = error
        else:
            if response.status_code not in RETRYABLE_STATUS_CODES:
                backoff.reset()
                return response
            failure = http_error(response)
        delay = backoff.next_delay()
        yield Emit(Reconnecting(failure, delay))
        yield Pause(delay)


def watch_plan(offset: int, *, after: int, wait: float, limit: int) -> Plan[Update]:
    """The job's messages after seq ``after`` as they are recorded, with snapshots of the job.

    Yields the job first, each message once in seq order, a fresh job whenever it
    looked, a ``Reconnecting`` before each retry; ends once the job has ended and
    every message was yielded, with the ended job last.
    """
    backoff = Backoff()
    # The first look is not retried: a server that is away from the start is an error.
    job = parse_job((yield Call(job_request(offset))))
    yield Emit(job)
    job_is_last = True
    while True:
        # Once the job was seen ended, every message is committed: read without waiting.
        request = messages_request(offset, after=after, limit=limit, wait=0 if job.ended else wait)
        page = parse_messages((yield from _call_resuming(request, backoff)))
        for message in page:
            if message.seq > after:  # keyset reads never repeat; this guards a misbehaving proxy
                yield Emit(message)
                after = message.seq
                job_is_last = False
        if len(page) == limit:
            continue  # a full page: more may be waiting
        if job.ended:
            if not job_is_last:
                yield Emit(job)  # the snapshot that saw the end, after the messages before it
            return
        if page and job.state == "running":
            continue  # still running; a message carries no news about the state
        job = parse_job((yield from _call_resuming(job_request(offset), backoff)))
        yield Emit(job)
        job_is_last = True


# --- clients --------------------------------------------------------------------------


def _build(http: httpx.Client | httpx.AsyncClient, request: ApiRequest) -> httpx.Request:
    """The httpx request for ``request`` on ``http``."""
    return http.build_request(
        request.method,
        request.path,
        params=dict(request.params),
        json=request.json,
        headers=dict(request.headers),
        timeout=request.timeout if request.timeout is not None else httpx.USE_CLIENT_DEFAULT,
    )


class JoblineClient:
    """A blocking client for the jobline API at ``base_url`` (default ``$JOBLINE_URL``)."""

    def __init__(
        self, base_url: str | None = None, *, timeout: float = DEFAULT_TIMEOUT_SECONDS
    ) -> None:
        self.base_url = (base_url or default_url()).rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout)

    def close(self) -> None:
        """Close the client's connections."""
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def schedule(
        self,
        fn: str,
        *,
        deployment: str = DEFAULT_DEPLOYMENT,
        framework: str = DEFAULT_FRAMEWORK,
        params: Mapping[str, Any] | None = None,
        callback_url: str | None = None,
        idempotency_key: str | None = None,
    ) -> int:
        """Schedule a job of ``fn``; its offset (the first one's, for a repeated key)."""
        request = schedule_request(
            fn,
            deployment=deployment,
            framework=framework,
            params=params,
            callback_url=callback_url,
            idempotency_key=idempotency_key,
        )
        return parse_offset(self._send(request))

    def get(self, offset: int) -> Job:
        """The job at ``offset``."""
        return parse_job(self._send(job_request(offset)))

    def list_jobs(
        self,
        *,
        state: str | None = None,
        fn: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        limit: int = 100,
    ) -> Iterator[Job]:
        """Every matching job, newest first, fetched ``limit`` (1-500) per request."""
        return self._run(
            list_jobs_plan(
                state=state,
                fn=fn,
                created_after=created_after,
                created_before=created_before,
                limit=limit,
            )
        )

    def cancel(self, offset: int) -> Job:
        """Cancel the job; a running one stops at its next step (``cancel_requested``)."""
        return parse_job(self._send(cancel_request(offset)))

    def retry(self, offset: int) -> Job:
        """Queue a failed or cancelled job again."""
        return parse_job(self._send(retry_request(offset)))

    def messages(
        self, offset: int, *, after: int = 0, limit: int = 100, wait: float = 0
    ) -> list[Message]:
        """Up to ``limit`` messages after seq ``after``; with ``wait``, long-poll for them."""
        return parse_messages(
            self._send(messages_request(offset, after=after, limit=limit, wait=wait))
        )

    def watch(
        self, offset: int, *, after: int = 0, wait: float = FOLLOW_WAIT_SECONDS, limit: int = 100
    ) -> Iterator[Update]:
        """The job's messages live, with job snapshots and reconnects (see ``watch_plan``)."""
        return self._run(watch_plan(offset, after=after, wait=wait, limit=limit))

    def follow(
        self, offset: int, *, after: int = 0, wait: float = FOLLOW_WAIT_SECONDS
    ) -> Iterator[Message]:
        """Each message after seq ``after`` as it is recorded, until the job has ended."""
        return (
            update
            for update in self.watch(offset, after=after, wait=wait)
            if isinstance(update, Message)
        )

    def _send(self, request: ApiRequest) -> httpx.Response:
        """Send ``request``; a transport failure becomes a ``JoblineConnectionError``."""
        try:
            return self._http.send(_build(self._http, request))
        except httpx.TransportError as error:
            raise connection_error(self.base_url, error) from error

    def _run(self, plan: Plan[T]) -> Iterator[T]:
        """Carry out ``plan``: perform its calls and pauses, yield what it emits."""
        try:
            step = next(plan)
            while True:
                if isinstance(step, Call):
                    try:
                        response = self._send(step.request)
                    except JoblineConnectionError as error:
                        step = plan.throw(error)
                    else:
                        step = plan.send(response)
                elif isinstance(step, Pause):
                    time.sleep(step.seconds)
                    step = next(plan)
                else:
                    yield step.item
                    step = next(plan)
        except StopIteration:
            return
        finally:
            plan.close()


class AsyncJoblineClient:
    """An asyncio client for the jobline API at ``base_url`` (default ``$JOBLINE_URL``)."""

    def __init__(
        self, base_url: str | None = None, *, timeout: float = DEFAULT_TIMEOUT_SECONDS
    ) -> None:
        self.base_url = (base_url or default_url()).rstrip("/")
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout)

    async def aclose(self) -> None:
        """Close the client's connections."""
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def schedule(
        self,
        fn: str,
        *,
        deployment: str = DEFAULT_DEPLOYMENT,
        framework: str = DEFAULT_FRAMEWORK,
        params: Mapping[str, Any] | None = None,
        callback_url: str | None = None,
        idempotency_key: str | None = None,
    ) -> int:
        """Schedule a job of ``fn``; its offset (the first one's, for a repeated key)."""
        request = schedule_request(
            fn,
            deployment=deployment,
            framework=framework,
            params=params,
            callback_url=callback_url,
            idempotency_key=idempotency_key,
        )
        return parse_offset(await self._send(request))

    async def get(self, offset: int) -> Job:
        """The job at ``offset``."""
        return parse_job(await self._send(job_request(offset)))

    def list_jobs(
        self,
        *,
        state: str | None = None,
        fn: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        limit: int = 100,
    ) -> AsyncIterator[Job]:
        """Every matching job, newest first, fetched ``limit`` (1-500) per request."""
        return self._run(
            list_jobs_plan(
                state=state,
                fn=fn,
                created_after=created_after,
                created_before=created_before,
                limit=limit,
            )
        )

    async def cancel(self, offset: int) -> Job:
        """Cancel the job; a running one stops at its next step (``cancel_requested``)."""
        return parse_job(await self._send(cancel_request(offset)))

    async def retry(self, offset: int) -> Job:
        """Queue a failed or cancelled job again."""
        return parse_job(await self._send(retry_request(offset)))

    async def messages(
        self, offset: int, *, after: int = 0, limit: int = 100, wait: float = 0
    ) -> list[Message]:
        """Up to ``limit`` messages after seq ``after``; with ``wait``, long-poll for them."""
        return parse_messages(
            await self._send(messages_request(offset, after=after, limit=limit, wait=wait))
        )

    def watch(
        self, offset: int, *, after: int = 0, wait: float = FOLLOW_WAIT_SECONDS, limit: int = 100
    ) -> AsyncIterator[Update]:
        """The job's messages live, with job snapshots and reconnects (see ``watch_plan``)."""
        return self._run(watch_plan(offset, after=after, wait=wait, limit=limit))

    def follow(
        self, offset: int, *, after: int = 0, wait: float = FOLLOW_WAIT_SECONDS
    ) -> AsyncIterator[Message]:
        """Each message after seq ``after`` as it is recorded, until the job has ended."""
        return (
            update
            async for update in self.watch(offset, after=after, wait=wait)
            if isinstance(update, Message)
        )

    async def _send(self, request: ApiRequest) -> httpx.Response:
        """Send ``request``; a transport failure becomes a ``JoblineConnectionError``."""
        try:
            return await self._http.send(_build(self._http, request))
        except httpx.TransportError as error:
            raise connection_error(self.base_url, error) from error

    async def _run(self, plan: Plan[T]) -> AsyncIterator[T]:
        """Carry out ``plan``: perform its calls and pauses, yield what it emits."""
        try:
            step = next(plan)
            while True:
                if isinstance(step, Call):
                    try:
                        response = await self._send(step.request)
                    except JoblineConnectionError as error:
                        step = plan.throw(error)
                    else:
                        step = plan.send(response)
                elif isinstance(step, Pause):
                    await asyncio.sleep(step.seconds)
                    step = next(plan)
                else:
                    yield step.item
                    step = next(plan)
        except StopIteration:
            return
        finally:
            plan.close()
