"""The Python client (sync and async) against the real API on a real port, with real workers."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pydantic import SecretStr

from api.client import (
    AsyncJoblineClient,
    Job,
    JoblineClient,
    JoblineConnectionError,
    JoblineHTTPError,
    Message,
    Reconnecting,
)
from tests.integration.conftest import LiveServer, StartServer, StartWorker
from tests.support.jobs import job_row, messages
from tests.support.proxy import TcpProxy, free_port, via_proxy
from tests.support.waiting import wait_for
from tests.support.webhooks import SECRET

pytestmark = pytest.mark.integration

DEFAULT_BODIES = ["result1", "result2", "result3", "done"]


@pytest.fixture
def sync_client(live_api: LiveServer) -> Iterator[JoblineClient]:
    """A sync client for the live API."""
    with JoblineClient(live_api.url) as jobline:
        yield jobline


@pytest.fixture
def api_proxy(live_api: LiveServer) -> Iterator[TcpProxy]:
    """A cuttable loopback proxy in front of the live API."""
    proxy = TcpProxy("127.0.0.1", live_api.port)
    proxy.start()
    yield proxy
    proxy.close()


def cut(proxy: TcpProxy, *, after: float, for_seconds: float) -> threading.Thread:
    """In the background: wait ``after`` s, cut every connection, restore ``for_seconds`` later."""

    def outage() -> None:
        threading.Event().wait(after)
        proxy.stop()
        threading.Event().wait(for_seconds)
        proxy.start()

    thread = threading.Thread(target=outage, daemon=True)
    thread.start()
    return thread


def assert_each_message_once(
    received: list[Message], db: psycopg.Connection[Any], offset: int
) -> None:
    """``received`` is exactly the job's recorded messages: in order, none repeated or missing."""
    assert [(m.seq, m.body, m.attempt) for m in received] == messages(db, offset)


# --- sync client ----------------------------------------------------------------------


def test_schedule_get_and_follow_a_job_to_its_end(
    sync_client: JoblineClient, start_worker: StartWorker, db: psycopg.Connection[Any]
) -> None:
    start_worker()

    offset = sync_client.schedule("default_fn", params={"step_seconds": 0.1})
    job = sync_client.get(offset)
    received = list(sync_client.follow(offset))

    assert job.offset == offset
    assert (job.fn, job.deployment, job.framework) == ("default_fn", "Docker", "FastAPI")
    assert job.params == {"step_seconds": 0.1}
    assert job.state in ("queued", "running")
    assert [m.body for m in received] == DEFAULT_BODIES
    assert [m.seq for m in received] == [1, 2, 3, 4]
    assert_each_message_once(received, db, offset)
    finished = sync_client.get(offset)
    assert finished.state == "succeeded"
    assert finished.ended
    assert finished.message_count == 4
    assert finished.finished_at is not None


def test_follow_from_a_seq_yields_only_later_messages(
    sync_client: JoblineClient, start_worker: StartWorker
) -> None:
    start_worker()
    offset = sync_client.schedule("default_fn", params={"step_seconds": 0})

    assert [m.body for m in sync_client.follow(offset, after=2)] == ["result3", "done"]
    assert [m.body for m in sync_client.follow(offset, after=4)] == []


def test_watch_reports_the_job_first_and_its_final_state_last(
    sync_client: JoblineClient, start_worker: StartWorker
) -> None:
    start_worker()
    offset = sync_client.schedule("always_fails")

    updates = list(sync_client.watch(offset, wait=1))

    assert isinstance(updates[0], Job)
    assert isinstance(updates[-1], Job)
    assert updates[-1].state == "failed"
    assert updates[-1].last_error is not None
    assert "this job always fails" in updates[-1].last_error
    assert not [u for u in updates if isinstance(u, Message | Reconnecting)]


def test_idempotency_key_returns_the_first_offset(sync_client: JoblineClient) -> None:
    first = sync_client.schedule("default_fn", idempotency_key="order-42")
    again = sync_client.schedule("default_fn", idempotency_key="order-42")
    other = sync_client.schedule("default_fn", idempotency_key="order-43")

    assert again == first
    assert other != first


def test_callback_url_is_sent_with_the_job(
    start_server: StartServer, db: psycopg.Connection[Any]
) -> None:
    api = start_server(webhook_secret=SecretStr(SECRET))
    with JoblineClient(api.url) as jobline:
        offset = jobline.schedule("default_fn", callback_url="http://127.0.0.1:9/hook")

        assert jobline.get(offset).callback_url == "http://127.0.0.1:9/hook"


def test_api_errors_raise_jobline_http_error_with_status_and_detail(
    sync_client: JoblineClient,
) -> None:
    with pytest.raises(JoblineHTTPError) as missing:
        sync_client.get(999_999)
    assert missing.value.status_code == 404
    assert missing.value.detail == "Offset not found"

    with pytest.raises(JoblineHTTPError) as invalid:
        sync_client.schedule("no_such_fn")
    assert invalid.value.status_code == 422
    assert isinstance(invalid.value.detail, list)
    assert "fn: Unknown job function" in str(invalid.value)

    with pytest.raises(JoblineHTTPError) as bad_params:
        sync_client.schedule("default_fn", params={"step_seconds": 99})
    assert bad_params.value.status_code == 422
    assert "params.step_seconds" in str(bad_params.value)

    with pytest.raises(JoblineHTTPError) as missing_follow:
        list(sync_client.follow(999_999))
    assert missing_follow.value.status_code == 404


def test_unreachable_server_is_a_connection_error() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with JoblineClient(url) as jobline:
        with pytest.raises(JoblineConnectionError) as error:
            jobline.get(1)
        # Following a job on a server that is away from the start fails at once too.
        with pytest.raises(JoblineConnectionError):
            next(iter(jobline.follow(1)))
    assert error.value.url == url
    assert f"server not reachable at {url}" in str(error.value)


def test_base_url_defaults_to_the_environment(
    live_api: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOBLINE_URL", live_api.url)
    with JoblineClient() as jobline:
        assert jobline.base_url == live_api.url
        assert jobline.get(jobline.schedule("default_fn")).state == "queued"


def test_list_jobs_pages_through_every_job_newest_first_with_filters(
    sync_client: JoblineClient,
) -> None:
    defaults = [sync_client.schedule("default_fn") for _ in range(5)]
    failing = [sync_client.schedule("always_fails") for _ in range(2)]
    sync_client.cancel(defaults[0])

    # Pages of two: seven jobs take four requests, chained by next_cursor.
    listed = list(sync_client.list_jobs(limit=2))

    assert [job.offset for job in listed] == sorted(defaults + failing, reverse=True)
    assert [j.offset for j in sync_client.list_jobs(fn="always_fails", limit=1)] == failing[::-1]
    assert [j.offset for j in sync_client.list_jobs(state="cancelled")] == [defaults[0]]
    third = sync_client.get(defaults[2])
    assert [j.offset for j in sync_client.list_jobs(created_before=third.created_at, limit=1)] == [
        defaults[1],
        defaults[0],
    ]
    after_third = sync_client.list_jobs(created_after=third.created_at, fn="default_fn", limit=1)
    assert [j.offset for j in after_third] == [defaults[4], defaults[3]]


def test_cancel_and_retry(
    sync_client: JoblineClient, start_worker: StartWorker, db: psycopg.Connection[Any]
) -> None:
    offset = sync_client.schedule("default_fn", params={"step_seconds": 0})

    cancelled = sync_client.cancel(offset)
    with pytest.raises(JoblineHTTPError) as twice:
        sync_client.cancel(offset)
    retried = sync_client.retry(offset)
    with pytest.raises(JoblineHTTPError) as queued_retry:
        sync_client.retry(offset)
    start_worker()
    received = list(sync_client.follow(offset))

    assert cancelled.state == "cancelled"
    assert twice.value.status_code == 409
    assert retried.state == "queued"
    assert queued_retry.value.status_code == 409
    assert [m.body for m in received] == ["cancelled", *DEFAULT_BODIES]
    assert_each_message_once(received, db, offset)
    assert sync_client.get(offset).state == "succeeded"


def test_cancelling_a_running_job_requests_it_and_follow_sees_it_stop(
    sync_client: JoblineClient, start_worker: StartWorker, db: psycopg.Connection[Any]
) -> None:
    start_worker()
    offset = sync_client.schedule("default_fn", params={"step_seconds": 1})
    wait_for(lambda: job_row(db, offset)["state"] == "running", what="job to start")

    job = sync_client.cancel(offset)
    received = list(sync_client.follow(offset))

    assert job.cancel_requested
    assert received[-1].body == "cancelled"
    assert sync_client.get(offset).state == "cancelled"


def test_messages_are_read_by_keyset_and_long_polled(
    sync_client: JoblineClient, start_worker: StartWorker
) -> None:
    offset = sync_client.schedule("default_fn", params={"step_seconds": 0.5})

    # Nothing yet: a short long-poll answers [] once its wait is over.
    assert sync_client.messages(offset, wait=0.3) == []
    start_worker()
    [first] = sync_client.messages(offset, wait=10)
    list(sync_client.follow(offset))

    assert (first.seq, first.body, first.attempt) == (1, "result1", 1)
    page = sync_client.messages(offset, after=1, limit=2)
    assert [(m.seq, m.body) for m in page] == [(2, "result2"), (3, "result3")]
    assert [m.body for m in sync_client.messages(offset, after=3)] == ["done"]


def test_follow_resumes_after_the_connection_is_cut_mid_poll(
    live_api: LiveServer,
    api_proxy: TcpProxy,
    start_worker: StartWorker,
    db: psycopg.Connection[Any],
    tmp_path: Path,
) -> None:
    start_worker()
    with JoblineClient(f"http://127.0.0.1:{api_proxy.port}") as jobline:
        offset = jobline.schedule(
            "traced_fn", params={"trace_dir": str(tmp_path), "sleep_seconds": 0.8}
        )
        updates: list[Job | Message | Reconnecting] = []
        for update in jobline.watch(offset, wait=10):
            updates.append(update)
            if isinstance(update, Message) and update.seq == 1:
                # Cut while the next long-poll waits; restore after a message was missed.
                outage = cut(api_proxy, after=0.3, for_seconds=1.5)

    outage.join()
    received = [u for u in updates if isinstance(u, Message)]
    assert [m.body for m in received] == ["fetch", "compute", "store", "done"]
    assert_each_message_once(received, db, offset)
    reconnects = [u for u in updates if isinstance(u, Reconnecting)]
    assert reconnects
    assert all(isinstance(r.error, JoblineConnectionError) for r in reconnects)
    assert isinstance(updates[-1], Job)
    assert updates[-1].state == "succeeded"


def test_follow_rides_out_a_database_outage_of_the_api(
    start_server: StartServer,
    database_url: str,
    database_proxy: TcpProxy,
    start_worker: StartWorker,
    db: psycopg.Connection[Any],
) -> None:
    # The API reaches Postgres through the proxy; the worker goes straight to it.
    api = start_server(
        database_url=via_proxy(database_url, database_proxy).replace(
            "postgresql://", "postgresql+psycopg://"
        )
    )
    start_worker()
    with JoblineClient(api.url) as jobline:
        offset = jobline.schedule("default_fn", params={"step_seconds": 0.5})
        updates: list[Job | Message | Reconnecting] = []
        for update in jobline.watch(offset, wait=0.5):
            updates.append(update)
            if isinstance(update, Message) and update.seq == 1:
                outage = cut(database_proxy, after=0, for_seconds=2)

    outage.join()
    received = [u for u in updates if isinstance(u, Message)]
    assert [m.body for m in received] == DEFAULT_BODIES
    assert_each_message_once(received, db, offset)
    unavailable = [
        u
        for u in updates
        if isinstance(u, Reconnecting)
        and isinstance(u.error, JoblineHTTPError)
        and u.error.status_code == 503
    ]
    assert unavailable, updates


# --- async client ---------------------------------------------------------------------


def test_async_client_schedules_reads_lists_cancels_and_retries(
    live_api: LiveServer, start_worker: StartWorker, db: psycopg.Connection[Any]
) -> None:
    async def scenario() -> None:
        async with AsyncJoblineClient(live_api.url) as jobline:
            offsets = [await jobline.schedule("default_fn") for _ in range(3)]
            replayed = await jobline.schedule("default_fn", idempotency_key="k")
            assert await jobline.schedule("default_fn", idempotency_key="k") == replayed

            listed = [job.offset async for job in jobline.list_jobs(limit=2)]
            assert listed == sorted([*offsets, replayed], reverse=True)

            cancelled = await jobline.cancel(offsets[0])
            assert cancelled.state == "cancelled"
            with pytest.raises(JoblineHTTPError) as conflict:
                await jobline.cancel(offsets[0])
            assert conflict.value.status_code == 409
            assert (await jobline.retry(offsets[0])).state == "queued"
            with pytest.raises(JoblineHTTPError) as missing:
                await jobline.get(999_999)
            assert missing.value.status_code == 404

            start_worker()
            received = [m async for m in jobline.follow(offsets[0])]
            assert [m.body for m in received] == ["cancelled", *DEFAULT_BODIES]
            assert_each_message_once(received, db, offsets[0])
            page = await jobline.messages(offsets[0], after=1, limit=2)
            assert [m.body for m in page] == ["result1", "result2"]
            assert (await jobline.get(offsets[0])).state == "succeeded"

    asyncio.run(scenario())


def test_async_follow_resumes_after_the_connection_is_cut(
    live_api: LiveServer,
    api_proxy: TcpProxy,
    start_worker: StartWorker,
    db: psycopg.Connection[Any],
) -> None:
    start_worker()

    async def scenario() -> tuple[int, list[Job | Message | Reconnecting]]:
        async with AsyncJoblineClient(f"http://127.0.0.1:{api_proxy.port}") as jobline:
            offset = await jobline.schedule("default_fn", params={"step_seconds": 0.4})
            updates: list[Job | Message | Reconnecting] = []
            async for update in jobline.watch(offset, wait=10):
                updates.append(update)
                if isinstance(update, Message) and update.seq == 1:
                    # Cut between two polls, for longer than the rest of the job takes.
                    api_proxy.stop()
                    threading.Timer(1.5, api_proxy.start).start()
            return offset, updates

    offset, updates = asyncio.run(scenario())

    received = [u for u in updates if isinstance(u, Message)]
    assert [m.body for m in received] == DEFAULT_BODIES
    assert_each_message_once(received, db, offset)
    assert any(isinstance(u, Reconnecting) for u in updates)
    assert isinstance(updates[-1], Job)
    assert updates[-1].state == "succeeded"
