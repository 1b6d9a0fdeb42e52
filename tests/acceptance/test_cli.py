"""The `jobline` client commands as real processes against a real API and worker."""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

import httpx
import pytest

from tests.acceptance.conftest import JOBLINE, Stack, poll_job
from tests.support.proxy import free_port
from tests.support.waiting import wait_for

pytestmark = pytest.mark.acceptance

DEFAULT_BODIES = ["result1", "result2", "result3", "done"]


def client_env(**extra: str) -> dict[str, str]:
    """The environment of a client command: no JOBLINE_* at all, so no database URL either."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBLINE_")}
    return {**env, **extra}


def jobline(*args: str, url: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``jobline ARGS`` (with ``--url`` when given) to its end."""
    command = [JOBLINE, *args, *(["--url", url] if url else [])]
    return subprocess.run(
        command, env=client_env(**env), capture_output=True, text=True, timeout=90, check=False
    )


def json_lines(output: str) -> list[Any]:
    """Each line of ``output`` parsed as JSON."""
    return [json.loads(line) for line in output.splitlines()]


@pytest.fixture
def api(stack: Stack) -> httpx.Client:
    """A running API and worker; the client for the API."""
    client = stack.api()
    stack.worker()
    return client


@pytest.fixture
def url(api: httpx.Client) -> str:
    """The API's base URL."""
    return str(api.base_url).rstrip("/")


def submit(url: str, *args: str) -> int:
    """``jobline submit --json ARGS``: the offset."""
    done = jobline("submit", "--json", *args, url=url)
    assert done.returncode == 0, done.stderr
    return int(json.loads(done.stdout)["offset"])


def test_submit_wait_prints_each_message_and_exits_0(url: str) -> None:
    done = jobline("submit", "--fn", "default_fn", "--param", "step_seconds=0.2", "--wait", url=url)

    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    offset = int(lines[0].removeprefix("scheduled job "))
    assert lines[1:5] == DEFAULT_BODIES
    assert lines[5] == f"job {offset} succeeded after 1 attempt (4 messages)"
    assert done.stderr == ""


def test_submit_wait_json_prints_the_offset_then_one_message_per_line(
    url: str, api: httpx.Client
) -> None:
    # The URL comes from JOBLINE_URL this time.
    done = jobline(
        "submit",
        "--fn",
        "default_fn",
        "--param",
        "step_seconds=0.2",
        "--wait",
        "--json",
        JOBLINE_URL=url,
    )

    assert done.returncode == 0, done.stderr
    [scheduled, *messages] = json_lines(done.stdout)
    assert [m["body"] for m in messages] == DEFAULT_BODIES
    assert [m["seq"] for m in messages] == [1, 2, 3, 4]
    assert {m["attempt"] for m in messages} == {1}
    assert all(m["created_at"] for m in messages)
    assert api.get(f"/jobs/{scheduled['offset']}").json()["state"] == "succeeded"


def test_submit_passes_params_as_json_or_strings_and_options_through(
    url: str, api: httpx.Client
) -> None:
    offset = submit(
        url,
        "--fn",
        "default_fn",
        "--param",
        "step_seconds=0",
        "--deployment",
        "Kubernetes",
        "--framework",
        "Ray Serve",
        "--idempotency-key",
        "cli-1",
    )
    again = submit(
        url,
        "--fn",
        "default_fn",
        "--param",
        "step_seconds=0",
        "--deployment",
        "Kubernetes",
        "--framework",
        "Ray Serve",
        "--idempotency-key",
        "cli-1",
    )
    # A string where the schema wants a number: the server's 422 names the param.
    refused = jobline("submit", "--fn", "default_fn", "--param", "step_seconds=soon", url=url)

    job = api.get(f"/jobs/{offset}").json()
    assert (job["deployment"], job["framework"], job["params"]) == (
        "Kubernetes",
        "Ray Serve",
        {"step_seconds": 0.0},
    )
    assert again == offset
    assert refused.returncode == 2
    assert refused.stderr.startswith("jobline: HTTP 422: params.step_seconds:")


def test_submit_wait_of_a_failing_job_exits_1_with_its_error(url: str) -> None:
    done = jobline("submit", "--fn", "always_fails", "--wait", url=url)

    assert done.returncode == 1, done.stderr
    last = done.stdout.splitlines()[-1]
    assert " failed after 3 attempts (0 messages): " in last
    assert "ValueError: this job always fails" in last


def test_status_shows_a_job_and_its_json(url: str, api: httpx.Client) -> None:
    offset = submit(url, "--fn", "default_fn", "--param", "step_seconds=0")
    wait_for(poll_job(api, offset), what="job to finish")

    shown = jobline("status", str(offset), url=url)
    as_json = jobline("status", str(offset), "--json", url=url)

    assert shown.returncode == 0, shown.stderr
    fields = dict(line.split(None, 1) for line in shown.stdout.splitlines())
    assert fields["job"] == str(offset)
    assert fields["state"] == "succeeded"
    assert fields["fn"] == "default_fn"
    assert fields["messages"] == "4"
    assert fields["attempts"] == "1 of 3"
    assert as_json.returncode == 0, as_json.stderr
    job = json.loads(as_json.stdout)
    assert job == api.get(f"/jobs/{offset}").json()


def test_follow_prints_messages_as_they_are_recorded(url: str, api: httpx.Client) -> None:
    offset = submit(url, "--fn", "default_fn", "--param", "step_seconds=1")
    follower = subprocess.Popen(
        [JOBLINE, "follow", str(offset), "--url", url],
        env=client_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert follower.stdout is not None
        # The first message is printed while the job still runs, not when it ends.
        assert follower.stdout.readline() == "result1\n"
        assert api.get(f"/jobs/{offset}").json()["state"] == "running"
        rest, errors = follower.communicate(timeout=60)
    finally:
        follower.kill()
        follower.wait()

    assert follower.returncode == 0, errors
    assert rest.splitlines() == [
        "result2",
        "result3",
        "done",
        f"job {offset} succeeded after 1 attempt (4 messages)",
    ]


def test_follow_json_of_a_finished_job_prints_every_message_once(
    url: str, api: httpx.Client
) -> None:
    offset = submit(url, "--fn", "default_fn", "--param", "step_seconds=0")
    wait_for(poll_job(api, offset), what="job to finish")

    done = jobline("follow", str(offset), "--json", url=url)

    assert done.returncode == 0, done.stderr
    assert json_lines(done.stdout) == api.get(f"/jobs/{offset}/messages").json()


def test_cancel_a_running_job_then_follow_exits_1(url: str, api: httpx.Client) -> None:
    offset = submit(url, "--fn", "default_fn", "--param", "step_seconds=2")
    wait_for(lambda: api.get(f"/jobs/{offset}").json()["state"] == "running", what="job to start")

    cancelled = jobline("cancel", str(offset), url=url)
    followed = jobline("follow", str(offset), url=url)
    again = jobline("cancel", str(offset), "--json", url=url)

    assert cancelled.returncode == 0, cancelled.stderr
    assert (
        cancelled.stdout == f"job {offset} running: cancel requested, it stops at its next step\n"
    )
    assert followed.returncode == 1, followed.stderr
    assert followed.stdout.splitlines()[-2] == "cancelled"
    assert followed.stdout.splitlines()[-1].startswith(f"job {offset} cancelled after 1 attempt")
    assert again.returncode == 2
    assert again.stdout == ""
    assert again.stderr == f"jobline: job {offset}: HTTP 409: Job already cancelled\n"


def test_cancel_json_of_a_queued_job_prints_the_cancelled_job(stack: Stack) -> None:
    # No worker: the job stays queued until cancelled.
    api = stack.api()
    url = str(api.base_url).rstrip("/")
    offset = submit(url, "--fn", "default_fn")

    done = jobline("cancel", str(offset), "--json", url=url)

    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout)
    assert (job["offset"], job["state"]) == (offset, "cancelled")


def test_jobs_lists_newest_first_as_json_and_as_a_table(url: str, api: httpx.Client) -> None:
    defaults = [submit(url, "--fn", "default_fn", "--param", "step_seconds=0") for _ in range(3)]
    failing = submit(url, "--fn", "always_fails")
    for offset in [*defaults, failing]:
        wait_for(poll_job(api, offset), what="jobs to finish")

    everything = jobline("jobs", "--json", url=url)
    two = jobline("jobs", "--json", "--limit", "2", url=url)
    failed = jobline("jobs", "--json", "--state", "failed", url=url)
    by_fn = jobline("jobs", "--json", "--fn", "default_fn", url=url)
    table = jobline("jobs", url=url)

    assert everything.returncode == 0, everything.stderr
    jobs = json.loads(everything.stdout)
    assert [job["offset"] for job in jobs] == [failing, *defaults[::-1]]
    assert jobs[0] == api.get(f"/jobs/{failing}").json()
    assert [job["offset"] for job in json.loads(two.stdout)] == [failing, defaults[2]]
    assert [job["offset"] for job in json.loads(failed.stdout)] == [failing]
    assert [job["offset"] for job in json.loads(by_fn.stdout)] == defaults[::-1]
    assert table.returncode == 0, table.stderr
    rows = [line.split() for line in table.stdout.splitlines() if line.strip()]
    assert rows[0][:5] == ["offset", "fn", "state", "attempts", "messages"]
    assert [row[:3] for row in rows[2:]] == [
        [str(failing), "always_fails", "failed"],
        *([str(offset), "default_fn", "succeeded"] for offset in defaults[::-1]),
    ]


def test_errors_are_one_line_on_stderr_with_exit_2(url: str) -> None:
    missing = jobline("status", "999999", url=url)
    unknown_fn = jobline("submit", "--fn", "no_such_fn", url=url)
    away_url = f"http://127.0.0.1:{free_port()}"
    away = jobline("follow", "1", url=away_url)
    away_env = jobline("jobs", JOBLINE_URL=away_url)

    assert (missing.returncode, missing.stdout) == (2, "")
    assert missing.stderr == "jobline: job 999999: HTTP 404: Offset not found\n"
    assert unknown_fn.returncode == 2
    assert unknown_fn.stderr.startswith("jobline: HTTP 422: fn: Unknown job function; known: ")
    for done in (away, away_env):
        assert done.returncode == 2
        assert done.stdout == ""
        assert f"server not reachable at {away_url}" in done.stderr
        assert len(done.stderr.splitlines()) == 1
