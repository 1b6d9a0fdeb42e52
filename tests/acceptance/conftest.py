"""Real `jobline` processes: the API under uvicorn, workers under the Dramatiq CLI."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.proxy import free_port
from tests.support.waiting import wait_for

pytestmark = pytest.mark.acceptance

REPO_ROOT = Path(__file__).resolve().parents[2]
JOBLINE = str(Path(sys.executable).parent / "jobline")


class Process:
    """A started process group with its output in a file."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.args = args
        self.log = log
        self._log_file = log.open("wb")
        self.popen = subprocess.Popen(
            args,
            env=env,
            cwd=REPO_ROOT,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group: stop() reaches Dramatiq's children too
        )

    def output(self) -> str:
        """Everything the process printed so far."""
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 20) -> int:
        """SIGTERM the group, then SIGKILL it if it lingers."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)  # stragglers of a dead leader
        self._log_file.close()
        return self.popen.returncode


class Stack:
    """Starts `jobline api` and `jobline worker` processes on one database and queue."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        self.logs = logs
        self.processes: list[Process] = []

    def run(
        self, name: str, args: list[str], *, base_env: dict[str, str] | None = None, **env: str
    ) -> Process:
        """Start ``args`` with the stack's environment (or ``base_env``) plus ``env``."""
        environment = {**(self.env if base_env is None else base_env), **env}
        process = Process(args, environment, self.logs / f"{name}-{len(self.processes)}.log")
        self.processes.append(process)
        return process

    def api(self, **env: str) -> httpx.Client:
        """Start an API process; return a client once it answers /health."""
        port = free_port()
        process = self.run("api", [JOBLINE, "api", "--port", str(port)], **env)
        return wait_until_serving(process, port)

    def worker(self, processes: int = 1, threads: int = 4, **env: str) -> Process:
        """Start a worker group; return once every worker process is ready."""
        process = self.run(
            "worker",
            [JOBLINE, "worker", "--processes", str(processes), "--threads", str(threads)],
            **env,
        )
        wait_for(
            lambda: process.output().count("ready for action") >= processes,
            timeout=30,
            interval=0.1,
            what=f"worker to boot: {process.log}",
        )
        return process

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()


def wait_until_serving(process: Process, port: int, timeout: float = 30) -> httpx.Client:
    """A client for the API ``process`` serves on ``port``, once /health answers 200."""
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)

    def healthy() -> bool:
        assert process.popen.poll() is None, process.output()
        with contextlib.suppress(httpx.HTTPError):
            return client.get("/health").status_code == 200
        return False

    wait_for(healthy, timeout=timeout, interval=0.1, what="API to start")
    return client


@pytest.fixture
def stack_env(database_url: str, broker_url: str, queue_name: str) -> dict[str, str]:
    """Environment of this test's jobline processes: short timers, the test job functions."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBLINE_")}
    env.update(
        PYTHONPATH=str(REPO_ROOT),
        JOBLINE_DATABASE_URL=database_url,
        JOBLINE_BROKER_URL=broker_url,
        JOBLINE_QUEUE_NAME=queue_name,
        JOBLINE_JOB_MODULES="tests.jobfns",
        JOBLINE_MAX_ATTEMPTS="3",
        JOBLINE_RETRY_BACKOFF_SECONDS="0.1",
        JOBLINE_RETRY_BACKOFF_MAX_SECONDS="0.5",
        JOBLINE_LEASE_SECONDS="2",
        JOBLINE_SWEEP_INTERVAL_SECONDS="0.2",
        JOBLINE_PUBLISH_GRACE_SECONDS="0.5",
    )
    return env


@pytest.fixture
def stack(stack_env: dict[str, str], tmp_path: Path) -> Iterator[Stack]:
    """A Stack whose processes all stop after the test."""
    logs = tmp_path / "logs"
    logs.mkdir()
    started = Stack(stack_env, logs)
    yield started
    started.stop()


def poll_job(client: httpx.Client, offset: int) -> Callable[[], dict[str, Any] | None]:
    """A probe returning the job resource once it reached a final state."""

    def probe() -> dict[str, Any] | None:
        job: dict[str, Any] = client.get(f"/jobs/{offset}").json()
        return job if job["state"] in ("succeeded", "failed", "cancelled") else None

    return probe
