"""The client's pure parts: requests, responses, errors, and its plans driven by hand."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from api.client import (
    Backoff,
    Call,
    Emit,
    Job,
    JoblineConnectionError,
    JoblineHTTPError,
    Message,
    Pause,
    Reconnecting,
    describe_detail,
    job_request,
    list_jobs_plan,
    messages_request,
    parse_job,
    parse_offset,
    schedule_request,
    watch_plan,
)

CREATED = "2026-11-28T14:03:58.226814Z"


def respond(body: Any, status_code: int = 200) -> httpx.Response:
    """A response as the API would send it."""
    return httpx.Response(
        status_code, json=body, request=httpx.Request("GET", "http://jobline.test/")
    )


def job(offset: int, state: str, **fields: Any) -> dict[str, Any]:
    """A job resource body."""
    return {
        "offset": offset,
        "fn": "default_fn",
        "deployment": "Docker",
        "framework": "FastAPI",
        "params": {},
        "state": state,
        "attempts": 1,
        "max_attempts": 5,
        "message_count": 0,
        "last_error": None,
        "created_at": CREATED,
        "started_at": None,
        "finished_at": None,
        "updated_at": CREATED,
        **fields,
    }


def message(seq: int, body: str) -> dict[str, Any]:
    """A message body."""
    return {"seq": seq, "body": body, "created_at": CREATED, "attempt": 1}


def test_schedule_request_sends_only_what_was_given() -> None:
    plain = schedule_request(
        "default_fn",
        deployment="Docker",
        framework="FastAPI",
        params=None,
        callback_url=None,
        idempotency_key=None,
    )
    full = schedule_request(
        "default_fn",
        deployment="D",
        framework="F",
        params={"step_seconds": 1},
        callback_url="https://example.com/hook",
        idempotency_key="k-1",
    )

    assert (plain.method, plain.path, plain.headers) == ("POST", "/schedule", {})
    assert plain.json == {"deployment": "Docker", "framework": "FastAPI", "fn": "default_fn"}
    assert full.json == {
        "deployment": "D",
        "framework": "F",
        "fn": "default_fn",
        "params": {"step_seconds": 1},
        "callback_url": "https://example.com/hook",
    }
    assert full.headers == {"Idempotency-Key": "k-1"}


def test_a_long_poll_may_take_its_wait_before_it_times_out() -> None:
    assert messages_request(1, after=3, limit=10, wait=0).timeout is None
    polled = messages_request(1, after=3, limit=10, wait=30)
    assert polled.params == {"after": 3, "limit": 10, "wait": 30}
    assert polled.timeout is not None
    assert polled.timeout > 30


def test_errors_carry_status_and_detail_in_one_line() -> None:
    with pytest.raises(JoblineHTTPError) as missing:
        parse_job(respond({"detail": "Offset not found"}, 404))
    assert (missing.value.status_code, missing.value.detail) == (404, "Offset not found")
    assert str(missing.value) == "HTTP 404: Offset not found"

    problems = [
        {"loc": ["body", "params", "step_seconds"], "msg": "too big"},
        {"loc": ["body"], "msg": "bad"},
    ]
    assert describe_detail(problems) == "params.step_seconds: too big; bad"

    not_json = httpx.Response(502, text="Bad Gateway", request=httpx.Request("GET", "http://x/"))
    with pytest.raises(JoblineHTTPError) as proxy:
        parse_job(not_json)
    assert (proxy.value.status_code, proxy.value.detail) == (502, "Bad Gateway")

    with pytest.raises(JoblineHTTPError, match="unexpected response"):
        parse_offset(respond(["not", "an", "offset"], 202))


def test_a_job_keeps_fields_it_does_not_know() -> None:
    parsed = parse_job(respond(job(1, "succeeded", new_field=[1, 2])))

    assert parsed.ended
    assert parsed.model_dump(mode="json")["new_field"] == [1, 2]


def test_backoff_doubles_up_to_its_maximum_and_starts_over_after_a_success() -> None:
    backoff = Backoff(first=1, maximum=8)
    delays = [backoff.next_delay() for _ in range(2000)]  # no overflow in a long outage

    assert 0.5 <= delays[0] <= 1
    assert 4 <= delays[3] <= 8
    assert max(delays) <= 8
    backoff.reset()
    assert backoff.next_delay() <= 1


def test_list_jobs_plan_follows_next_cursor_to_the_last_page() -> None:
    plan = list_jobs_plan(state="failed", fn=None, created_after=None, created_before=None, limit=2)

    first = next(plan)
    assert isinstance(first, Call)
    assert first.request.params == {"limit": 2, "state": "failed"}
    step = plan.send(respond({"items": [job(9, "failed"), job(8, "failed")], "next_cursor": "8"}))
    assert [step, next(plan)] == [Emit(parse_job(respond(job(o, "failed")))) for o in (9, 8)]
    second = next(plan)
    assert isinstance(second, Call)
    assert second.request.params == {"limit": 2, "state": "failed", "cursor": "8"}
    step = plan.send(respond({"items": [job(3, "failed")], "next_cursor": None}))
    assert isinstance(step, Emit)
    with pytest.raises(StopIteration):
        next(plan)


def test_watch_plan_resumes_from_the_last_yielded_seq_and_ends_after_the_job() -> None:
    plan = watch_plan(7, after=0, wait=5, limit=100)

    # It looks at the job first, then long-polls for messages.
    assert next(plan) == Call(job_request(7))
    first = plan.send(respond(job(7, "running")))
    assert isinstance(first, Emit)
    assert isinstance(first.item, Job)
    assert next(plan) == Call(messages_request(7, after=0, limit=100, wait=5))
    emitted = [plan.send(respond([message(1, "a"), message(2, "b")])), next(plan)]
    assert [e.item.seq for e in emitted if isinstance(e, Emit) and isinstance(e.item, Message)] == [
        1,
        2,
    ]
    resume = Call(messages_request(7, after=2, limit=100, wait=5))
    assert next(plan) == resume

    # The connection breaks, then the API answers 503: each time it backs off and asks
    # again from seq 2.
    for failure in (JoblineConnectionError("http://x", "down"), None):
        step = (
            plan.throw(failure)
            if failure
            else plan.send(respond({"detail": "Database unavailable"}, 503))
        )
        assert isinstance(step, Emit)
        assert isinstance(step.item, Reconnecting)
        assert isinstance(next(plan), Pause)
        assert next(plan) == resume

    # A repeated message is never yielded twice.
    step = plan.send(respond([message(2, "b"), message(3, "c")]))
    assert isinstance(step, Emit)
    assert isinstance(step.item, Message)
    assert step.item.seq == 3

    # An empty answer: it looks at the job, sees it ended, reads what is left, and stops.
    assert next(plan) == Call(messages_request(7, after=3, limit=100, wait=5))
    assert plan.send(respond([])) == Call(job_request(7))
    ended = plan.send(respond(job(7, "succeeded", message_count=4)))
    assert isinstance(ended, Emit)
    assert next(plan) == Call(messages_request(7, after=3, limit=100, wait=0))
    last_message = plan.send(respond([message(4, "done")]))
    assert isinstance(last_message, Emit)
    # The ended job comes last, after the messages recorded before the end.
    assert next(plan) == ended
    with pytest.raises(StopIteration):
        next(plan)


def test_watch_plan_does_not_retry_its_first_look() -> None:
    plan = watch_plan(7, after=0, wait=5, limit=100)
    next(plan)

    with pytest.raises(JoblineConnectionError):
        plan.throw(JoblineConnectionError("http://x", "server not reachable"))
