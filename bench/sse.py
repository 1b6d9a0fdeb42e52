"""Benchmark live following: SSE streams held by one API process, their idle cost, and delay.

Starts a real ``jobline api`` (own database and queue, no worker), opens ``--streams``
``GET /jobs/{offset}/events`` streams from separate client processes, and measures in one
run: how many streams reach their first ``state`` event and how fast, the API's RSS and
idle CPU, the database work idle streams cause, and commit-to-client delay of messages
recorded with the worker's own statement, for one stream per job and for fan-out.

    .venv/bin/python bench/sse.py [--streams 2000] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import re
import resource
import secrets
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SERVER_URL = "postgresql://postgres@127.0.0.1:5432"
BROKER_URL = "amqp://guest:guest@127.0.0.1:5672/"
HOST = "127.0.0.1"
# Our own connections carry this name, so the idle checks can tell them from the API's.
BENCH_APP_NAME = "jobline-bench-sse"
LEASE_OWNER = "bench-sse"
FANOUT_JOBS = 20
# A common distribution default; the API is started with it to show it lifts it itself.
COMMON_SOFT_NOFILE = 1024
# Postgres 15 backends flush their statistics at most once a second and, when one
# is skipped, again only after 10 s idle (PGSTAT_IDLE_INTERVAL); waiting that long
# keeps the opening's transactions out of the idle window's pg_stat_database delta.
STATS_SETTLE_SECONDS = 11.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
TARGET_STREAMS = 2000
TARGET_P99_MS = 50.0


# --- client process: holds streams, timestamps events, reports over stdout ---------------


@dataclass
class Follower:
    """One SSE stream and what arrived on it."""

    id: int
    job: int
    started_at: float = 0.0
    first_state_at: float | None = None
    first_state: str | None = None
    states: list[str] = field(default_factory=list)
    messages: list[tuple[int, float]] = field(default_factory=list)
    pings: int = 0
    ended: bool = False
    error: str | None = None
    # Holds a slot of the opening gate until its first state event (or its failure).
    opening: bool = True

    def report(self) -> dict[str, Any]:
        """The follower as JSON-ready data."""
        return {
            "id": self.id,
            "job": self.job,
            "started_at": self.started_at,
            "first_state_at": self.first_state_at,
            "first_state": self.first_state,
            "states": self.states,
            "messages": self.messages,
            "pings": self.pings,
            "ended": self.ended,
            "error": self.error,
        }


# sse-starlette separates events with a blank line of "\r\n"; accept "\n" too.
_EVENT_END = re.compile(rb"\r\n\r\n|\n\n")
_LINE = re.compile(rb"\r\n|\n|\r")


class StreamHolder:
    """Opens and follows streams in one client process (asyncio streams, minimal HTTP/1.1)."""

    def __init__(self) -> None:
        self.followers: list[Follower] = []
        self.tasks: list[asyncio.Task[None]] = []
        self._waiting_first = 0
        self._all_first = asyncio.Event()

    async def open(
        self, *, port: int, streams: list[list[int]], concurrency: int, within: float
    ) -> dict[str, Any]:
        """Open ``streams`` ([id, job] pairs); answer once each has its first state, or failed."""
        self.followers = [Follower(id=stream_id, job=job) for stream_id, job in streams]
        self._waiting_first = len(self.followers)
        self._all_first = asyncio.Event()
        if not self.followers:
            self._all_first.set()
        gate = asyncio.Semaphore(concurrency if concurrency > 0 else len(self.followers) or 1)
        started_at = time.time()
        self.tasks = [
            asyncio.create_task(self._follow(follower, port=port, gate=gate))
            for follower in self.followers
        ]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._all_first.wait(), within)
        return {
            "started_at": started_at,
            "streams": [
                {
                    "id": f.id,
                    "started_at": f.started_at,
                    "first_state_at": f.first_state_at,
                    "first_state": f.first_state,
                    "error": f.error,
                }
                for f in self.followers
            ],
        }

    async def finish(self, *, within: float) -> dict[str, Any]:
        """Wait for the streams to end (the jobs ended), cancel stragglers, report all."""
        if self.tasks:
            _, pending = await asyncio.wait(self.tasks, timeout=within)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        report = {"streams": [follower.report() for follower in self.followers]}
        self.followers, self.tasks = [], []
        return report

    def _opened(self, follower: Follower, gate: asyncio.Semaphore) -> None:
        if follower.opening:
            follower.opening = False
            gate.release()
            self._waiting_first -= 1
            if self._waiting_first == 0:
                self._all_first.set()

    async def _follow(self, follower: Follower, *, port: int, gate: asyncio.Semaphore) -> None:
        await gate.acquire()
        writer: asyncio.StreamWriter | None = None
        try:
            follower.started_at = time.time()
            reader, writer = await asyncio.open_connection(HOST, port, limit=1 << 20)
            writer.write(
                f"GET /jobs/{follower.job}/events HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
                "Accept: text/event-stream\r\n\r\n".encode()
            )
            status = await reader.readline()
            parts = status.split(b" ", 2)
            if len(parts) < 2 or parts[1] != b"200":
                follower.error = f"status {status.decode(errors='replace').strip()!r}"
                return
            chunked = False
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"transfer-encoding":
                    chunked = b"chunked" in value.lower()
            buffer = b""
            while True:
                if chunked:
                    size = int((await reader.readline()).split(b";")[0], 16)
                    if size == 0:
                        follower.ended = True
                        return
                    data = (await reader.readexactly(size + 2))[:-2]
                else:
                    data = await reader.read(65536)
                    if not data:
                        follower.ended = True
                        return
                # Arrival is when the bytes are in hand, before any parsing.
                arrived = time.time()
                buffer += data
                while (match := _EVENT_END.search(buffer)) is not None:
                    block, buffer = buffer[: match.start()], buffer[match.end() :]
                    self._event(follower, block, arrived)
                    if follower.first_state is not None:
                        self._opened(follower, gate)
        except (
            OSError,
            ValueError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
        ) as error:
            follower.error = f"{type(error).__name__}: {error}"
        finally:
            self._opened(follower, gate)
            if writer is not None:
                writer.close()

    @staticmethod
    def _event(follower: Follower, block: bytes, arrived: float) -> None:
        kind = "message"
        data: list[bytes] = []
        for line in _LINE.split(block):
            if line.startswith(b":"):
                continue
            name, _, value = line.partition(b":")
            value = value.removeprefix(b" ")
            if name == b"event":
                kind = value.decode()
            elif name == b"data":
                data.append(value)
        if not data:
            follower.pings += 1  # a comment-only block is sse-starlette's keep-alive ping
            return
        payload = json.loads(b"\n".join(data))
        if kind == "state":
            follower.states.append(payload["state"])
            if follower.first_state is None:
                follower.first_state, follower.first_state_at = payload["state"], arrived
        elif kind == "message":
            follower.messages.append((int(payload["seq"]), arrived))


async def run_client() -> None:
    """Serve the orchestrator's JSON-line commands on stdin until it closes the pipe."""
    raise_open_file_limit()
    loop = asyncio.get_running_loop()
    commands = asyncio.StreamReader(limit=1 << 26)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(commands), sys.stdin)
    holder = StreamHolder()
    try:
        while line := await commands.readline():
            command = json.loads(line)
            if command["cmd"] == "open":
                reply = await holder.open(
                    port=command["port"],
                    streams=command["streams"],
                    concurrency=command["concurrency"],
                    within=command["timeout"],
                )
            elif command["cmd"] == "finish":
                reply = await holder.finish(within=command["timeout"])
            else:
                reply = {"error": f"unknown command {command['cmd']!r}"}
            sys.stdout.write(json.dumps(reply, separators=(",", ":")) + "\n")
            sys.stdout.flush()
    finally:
        for task in holder.tasks:
            task.cancel()


# --- orchestrator ------------------------------------------------------------------------


def raise_open_file_limit() -> int:
    """Lift this process's open-file soft limit to the hard one; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def _die_with_parent() -> None:
    # PR_SET_PDEATHSIG: a child must not outlive a bench killed without cleanup.
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


def _api_preexec(soft_nofile: int) -> Callable[[], None]:
    def preexec() -> None:
        _die_with_parent()
        if soft_nofile > 0:
            _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft_nofile, hard), hard))

    return preexec


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (all threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) CPU time of the whole machine so far, over all cores, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def busy_percent(before: tuple[int, int], after: tuple[int, int]) -> float:
    """Share of all cores busy between two ``machine_jiffies`` samples."""
    total = after[1] - before[1]
    return 100 * (after[0] - before[0]) / total if total else float("nan")


def rss_mb(pid: int) -> float:
    """Resident set size of ``pid`` in MiB (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def open_file_limits(pid: int) -> tuple[str, str]:
    """(soft, hard) ``Max open files`` of ``pid``."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return soft, hard
    return "?", "?"


def percentile(values: list[float], fraction: float) -> float:
    """The ``fraction`` quantile of ``values`` (nearest rank), NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


class ClientProcess:
    """A stream-holding client process driven by JSON lines over its stdin and stdout."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--client"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            preexec_fn=_die_with_parent,
        )
        self._selector = selectors.DefaultSelector()
        assert self.process.stdout is not None
        self._selector.register(self.process.stdout, selectors.EVENT_READ)

    @property
    def pid(self) -> int:
        """The client's process id."""
        return self.process.pid

    def send(self, command: dict[str, Any]) -> None:
        """Send one command."""
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()

    def reply(self, timeout: float) -> dict[str, Any]:
        """The answer to the last command; a silent client is an error, not a hang."""
        assert self.process.stdout is not None
        if not self._selector.select(timeout):
            raise TimeoutError(f"client {self.pid} did not answer within {timeout:.0f} s")
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"client {self.pid} exited ({self.process.poll()})")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def stop(self) -> None:
        """Close its stdin (it exits on EOF); kill it if it lingers."""
        with contextlib.suppress(OSError):
            if self.process.stdin is not None:
                self.process.stdin.close()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        self._selector.close()


@dataclass
class IdleFigures:
    """What N open, idle streams cost."""

    seconds: float
    api_cpu_percent: float
    rss_mb: float
    xact_delta: int
    active_max: int
    backends_that_ran: int
    api_backends: int
    machine_busy_percent: float


@dataclass
class LayoutResult:
    """Figures for one layout of streams over jobs."""

    name: str
    streams: int
    jobs: int
    reached: int
    reached_running: int
    open_errors: dict[str, int]
    open_seconds: float
    open_latencies: list[float]
    open_cpu_ms_per_stream: float
    rss_before_mb: float
    idle: IdleFigures
    committed: int
    commit_rate: float
    expected: int
    received: int
    duplicates: int
    out_of_order: int
    unexpected: int
    delays_ms: list[float]
    api_cpu_percent_messages: float
    clients_cpu_percent_messages: float
    ended: int
    pings: int
    machine_busy_open: float
    machine_busy_messages: float


class Bench:
    """Owns every resource of one run; ``close`` releases them all, whatever happened."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        suffix = secrets.token_hex(4)
        self.database = f"jobline_bench_sse_{suffix}"
        self.queue_name = f"jobline_bench_sse_{suffix}"
        self.database_url = f"{SERVER_URL}/{self.database}"
        self.port = free_port()
        self.api: subprocess.Popen[bytes] | None = None
        self.api_log = Path(f"/tmp/{self.database}.api.log")
        self.clients: list[ClientProcess] = []
        self.database_created = False
        self.queues_may_exist = False
        self.succeeded = False
        self.api_limits_started = ("?", "?")
        self.api_limits_running = ("?", "?")

    # -- set-up -----------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        """The API's environment: its own database and queue."""
        return {
            **os.environ,
            "JOBLINE_DATABASE_URL": self.database_url,
            "JOBLINE_BROKER_URL": BROKER_URL,
            "JOBLINE_QUEUE_NAME": self.queue_name,
        }

    def create_database(self) -> None:
        """Create and migrate the bench's own database."""
        import psycopg

        with psycopg.connect(f"{SERVER_URL}/postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.database}"')
        self.database_created = True
        subprocess.run(
            [str(Path(sys.executable).parent / "jobline"), "migrate"],
            env=self.env(),
            check=True,
            capture_output=True,
            timeout=120,
        )

    def start_api(self) -> None:
        """Start ``jobline api`` and wait until it answers and listens for notifications."""
        soft = self.args.api_nofile
        with self.api_log.open("wb") as log:
            self.api = subprocess.Popen(
                [
                    str(Path(sys.executable).parent / "jobline"),
                    "api",
                    "--host",
                    HOST,
                    "--port",
                    str(self.port),
                ],
                env=self.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_api_preexec(soft),
            )
        self.api_limits_started = open_file_limits(self.api.pid)
        self.queues_may_exist = True  # the API declares them at start-up
        import httpx

        deadline = time.monotonic() + 60
        while True:
            if self.api.poll() is not None:
                raise RuntimeError(f"jobline api exited; see {self.api_log}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://{HOST}:{self.port}/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError("jobline api did not become healthy within 60 s")
            time.sleep(0.1)
        # Streams opened before the LISTEN would start with a resync, not the common path.
        while not self.admin(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND query ILIKE 'LISTEN%%'",
            (self.database,),
            server=True,
        ):
            if time.monotonic() > deadline:
                raise TimeoutError("jobline api never issued LISTEN")
            time.sleep(0.1)
        self.api_limits_running = open_file_limits(self.api.pid)

    def admin(self, sql: str, params: tuple[Any, ...] = (), *, server: bool = False) -> Any:
        """One autocommit statement (server: from the ``postgres`` database); its first value."""
        import psycopg

        database = "postgres" if server else self.database
        with psycopg.connect(
            f"{SERVER_URL}/{database}", autocommit=True, application_name=BENCH_APP_NAME
        ) as conn:
            cursor = conn.execute(sql, params)
            row = cursor.fetchone() if cursor.description else None
            return row[0] if row else None

    def schedule_jobs(self, count: int) -> list[int]:
        """Create ``count`` jobs through ``POST /schedule``; then make them all running."""
        import httpx

        body = {
            "deployment": "Docker",
            "framework": "FastAPI",
            "fn": "default_fn",
            "params": {"step_seconds": 0},
        }
        offsets: list[int] = []
        with httpx.Client(base_url=f"http://{HOST}:{self.port}", timeout=10) as client:
            for _ in range(count):
                response = client.post("/schedule", json=body)
                response.raise_for_status()
                offsets.append(int(response.json()["offset"]))
        # The publisher marks each job published after the broker confirms it; let that
        # finish first, so none of its queries fall into the idle window.
        deadline = time.monotonic() + 30
        while self.admin("SELECT count(*) FROM jobs WHERE published_at IS NULL"):
            if time.monotonic() > deadline:
                print("warning: some jobs still unpublished after 30 s", file=sys.stderr)
                break
            time.sleep(0.2)
        # Running, leased to us, like a claimed job: followers see 'running' and no
        # worker or sweeper touches them; record_messages checks this lease owner.
        self.admin(
            "UPDATE jobs SET state = 'running', attempts = 1, lease_owner = %s,"
            " lease_expires_at = now() + interval '1 hour', started_at = now()"
            " WHERE id = ANY(%s)",
            (LEASE_OWNER, offsets),
        )
        return offsets

    # -- measurements -------------------------------------------------------------------

    def open_streams(self, jobs_of_streams: list[int]) -> dict[str, Any]:
        """Open one stream per entry (the job it follows), split over the clients."""
        count = len(self.clients)
        for index, client in enumerate(self.clients):
            streams = [
                [stream_id, job]
                for stream_id, job in enumerate(jobs_of_streams)
                if stream_id % count == index
            ]
            client.send(
                {
                    "cmd": "open",
                    "port": self.port,
                    "streams": streams,
                    "concurrency": self.args.open_concurrency,
                    "timeout": self.args.open_timeout,
                }
            )
        replies = [client.reply(self.args.open_timeout + 30) for client in self.clients]
        return {
            "started_at": min(reply["started_at"] for reply in replies),
            "streams": [stream for reply in replies for stream in reply["streams"]],
        }

    def finish_streams(self, timeout: float) -> list[dict[str, Any]]:
        """Collect every stream's record once it ended (or at ``timeout``)."""
        for client in self.clients:
            client.send({"cmd": "finish", "timeout": timeout})
        return [s for client in self.clients for s in client.reply(timeout + 60)["streams"]]

    def measure_idle(self, seconds: float) -> IdleFigures:
        """CPU, RSS and database work of the API while its streams sit idle."""
        import psycopg

        assert self.api is not None
        time.sleep(self.args.settle)
        # Sampled from the `postgres` database: our own queries never count in the bench row.
        with psycopg.connect(
            f"{SERVER_URL}/postgres", autocommit=True, application_name=BENCH_APP_NAME
        ) as conn:

            def value(sql: str) -> int:
                row = conn.execute(sql, (self.database,)).fetchone()
                return int(row[0]) if row and row[0] is not None else 0

            xacts = (
                "SELECT sum(xact_commit + xact_rollback) FROM pg_stat_database WHERE datname = %s"
            )
            client_backends = (
                "FROM pg_stat_activity WHERE datname = %s AND backend_type = 'client backend'"
                f" AND application_name <> '{BENCH_APP_NAME}'"
            )
            row = conn.execute("SELECT clock_timestamp()").fetchone()
            assert row is not None
            window_start = row[0]
            xact_before = value(xacts)
            cpu_before, started = cpu_seconds(self.api.pid), time.monotonic()
            machine_before = machine_jiffies()
            active_max = 0
            while (elapsed := time.monotonic() - started) < seconds:
                active_max = max(
                    active_max, value(f"SELECT count(*) {client_backends} AND state = 'active'")
                )
                time.sleep(0.2)
            cpu_after = cpu_seconds(self.api.pid)
            machine_busy = busy_percent(machine_before, machine_jiffies())
            # Any API backend whose state changed in the window ran a statement in it.
            ran = conn.execute(
                f"SELECT count(*) {client_backends} AND state_change >= %s",
                (self.database, window_start),
            ).fetchone()
            xact_after = value(xacts)
            api_backends = value(f"SELECT count(*) {client_backends}")
        return IdleFigures(
            seconds=elapsed,
            api_cpu_percent=100 * (cpu_after - cpu_before) / elapsed,
            rss_mb=rss_mb(self.api.pid),
            xact_delta=xact_after - xact_before,
            active_max=active_max,
            backends_that_ran=int(ran[0]) if ran else -1,
            api_backends=api_backends,
            machine_busy_percent=machine_busy,
        )

    def record_messages(
        self, jobs: list[int], *, rate: float, seconds: float
    ) -> tuple[dict[tuple[int, int], float], float]:
        """Record messages with the worker's statement at ``rate``; commit times by (job, seq)."""
        from sqlalchemy import Engine

        from db import queries
        from db.engine import make_engine
        from db.settings import Settings

        engine: Engine = make_engine(
            Settings(
                database_url=f"{self.database_url}?application_name={BENCH_APP_NAME}",
                broker_url=BROKER_URL,
                queue_name=self.queue_name,
            ),
            pool_size=1,
        )
        committed: dict[tuple[int, int], float] = {}
        last_seq = dict.fromkeys(jobs, 0)
        total = max(1, round(rate * seconds))
        try:
            # Autocommit, one statement per message: exactly how a worker records a step.
            with engine.execution_options(isolation_level="AUTOCOMMIT").connect() as conn:
                started = time.monotonic()
                for k in range(total):
                    delay = started + k / rate - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    job = jobs[k % len(jobs)]
                    seq = last_seq[job] + 1
                    recorded = queries.record_messages(
                        conn,
                        job_id=job,
                        owner=LEASE_OWNER,
                        entries=[(seq, f"result{seq}")],
                        final_state=None,
                        lease_seconds=3600,
                    )
                    # The statement's commit has returned: the message is now durable.
                    committed[(job, seq)] = time.time()
                    if recorded is None:
                        raise RuntimeError(f"job {job} refused step {seq}: lease lost?")
                    last_seq[job] = seq
                elapsed = time.monotonic() - started
        finally:
            engine.dispose()
        return committed, total / elapsed if elapsed > 0 else float("nan")

    def end_jobs(self, jobs: list[int]) -> None:
        """End the jobs as succeeded; the state trigger tells the streams, which then close."""
        self.admin(
            "UPDATE jobs SET state = 'succeeded', finished_at = now(), updated_at = now(),"
            " lease_owner = NULL, lease_expires_at = NULL WHERE id = ANY(%s)",
            (jobs,),
        )

    def run_layout(self, name: str, jobs: list[int], streams: int) -> LayoutResult:
        """Open ``streams`` over ``jobs`` (round robin), idle, record messages, end the jobs."""
        assert self.api is not None
        args = self.args
        jobs_of_streams = [jobs[i % len(jobs)] for i in range(streams)]
        rss_before = rss_mb(self.api.pid)
        cpu_before, machine_before = cpu_seconds(self.api.pid), machine_jiffies()
        opened = self.open_streams(jobs_of_streams)
        open_cpu = cpu_seconds(self.api.pid) - cpu_before
        machine_busy_open = busy_percent(machine_before, machine_jiffies())
        reached = [s for s in opened["streams"] if s["first_state_at"] is not None]
        errors: dict[str, int] = {}
        for stream in opened["streams"]:
            if stream["error"]:
                kind = stream["error"].split(":")[0]
                errors[kind] = errors.get(kind, 0) + 1
        open_seconds = (
            max(s["first_state_at"] for s in reached) - opened["started_at"]
            if reached
            else float("nan")
        )
        idle = self.measure_idle(args.idle_seconds)

        clients_before = sum(cpu_seconds(client.pid) for client in self.clients)
        api_before, started = cpu_seconds(self.api.pid), time.monotonic()
        machine_before = machine_jiffies()
        committed, rate = self.record_messages(jobs, rate=args.rate, seconds=args.message_seconds)
        # Over the recording only: a drain afterwards would hide a saturated API.
        elapsed = time.monotonic() - started
        machine_busy_messages = busy_percent(machine_before, machine_jiffies())
        api_cpu = 100 * (cpu_seconds(self.api.pid) - api_before) / elapsed
        clients_cpu = (
            100
            * (sum(cpu_seconds(client.pid) for client in self.clients) - clients_before)
            / elapsed
        )
        time.sleep(1.0)  # let the last events land before the jobs end
        self.end_jobs(jobs)
        records = self.finish_streams(args.end_timeout)

        per_job: dict[int, int] = {}
        for job, seq in committed:
            per_job[job] = max(per_job.get(job, 0), seq)
        delays: list[float] = []
        expected = received = duplicates = out_of_order = unexpected = 0
        opened_ids = {stream["id"] for stream in reached}
        for record in records:
            job = record["job"]
            # A stream that never opened is counted above; it cannot owe any messages.
            if record["id"] in opened_ids:
                expected += per_job.get(job, 0)
            seen: set[int] = set()
            last = 0
            for seq, arrived in record["messages"]:
                if seq in seen:
                    duplicates += 1
                    continue
                seen.add(seq)
                if seq < last:
                    out_of_order += 1
                last = max(last, seq)
                commit = committed.get((job, seq))
                if commit is None:
                    unexpected += 1
                    continue
                received += 1
                delays.append(1000 * (arrived - commit))
        return LayoutResult(
            name=name,
            streams=streams,
            jobs=len(jobs),
            reached=len(reached),
            reached_running=sum(1 for s in reached if s["first_state"] == "running"),
            open_errors=errors,
            open_seconds=open_seconds,
            open_latencies=[1000 * (s["first_state_at"] - s["started_at"]) for s in reached],
            open_cpu_ms_per_stream=1000 * open_cpu / max(1, streams),
            rss_before_mb=rss_before,
            idle=idle,
            committed=len(committed),
            commit_rate=rate,
            expected=expected,
            received=received,
            duplicates=duplicates,
            out_of_order=out_of_order,
            unexpected=unexpected,
            delays_ms=delays,
            api_cpu_percent_messages=api_cpu,
            clients_cpu_percent_messages=clients_cpu,
            ended=sum(
                1
                for record in records
                if record["ended"] and record["states"][-1:] == ["succeeded"]
            ),
            pings=sum(record["pings"] for record in records),
            machine_busy_open=machine_busy_open,
            machine_busy_messages=machine_busy_messages,
        )

    # -- tear-down ----------------------------------------------------------------------

    def close(self) -> None:
        """Stop the clients and the API, drop the database, delete the queues."""
        for client in self.clients:
            with contextlib.suppress(Exception):
                client.stop()
        if self.api is not None and self.api.poll() is None:
            self.api.send_signal(signal.SIGINT)
            try:
                self.api.wait(15)
            except subprocess.TimeoutExpired:
                self.api.kill()
                self.api.wait(5)
        if self.database_created:
            try:
                self.admin(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)', server=True)
            except Exception as error:
                print(f"cleanup: could not drop {self.database}: {error}", file=sys.stderr)
        if self.queues_may_exist:
            try:
                delete_queues(self.queue_name)
            except Exception as error:
                print(
                    f"cleanup: could not delete queues {self.queue_name}: {error}", file=sys.stderr
                )
        with contextlib.suppress(OSError):
            if not self.succeeded:
                tail = self.api_log.read_text(errors="replace").splitlines()[-20:]
                print("last lines of the API's log:", *tail, sep="\n  ", file=sys.stderr)
            self.api_log.unlink()


def delete_queues(queue_name: str) -> None:
    """Delete the queue and Dramatiq's delay and dead-letter queues beside it."""
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(BROKER_URL))
    try:
        for name in (queue_name, f"{queue_name}.DQ", f"{queue_name}.XQ"):
            channel = connection.channel()  # a failed delete closes its channel
            with contextlib.suppress(pika.exceptions.ChannelClosedByBroker):
                channel.queue_delete(name)
    finally:
        connection.close()


# --- report ------------------------------------------------------------------------------


def _ms(value: float) -> str:
    return f"{value:.1f}" if value == value else "-"


# (label, target) of each row of the table, in the order ``column`` gives the values.
ROWS = [
    ("streams reaching first `state`", f"{TARGET_STREAMS:,} on one API process"),
    ("open errors", ""),
    ("time to open all", ""),
    ("open latency p50 / p99", ""),
    ("API CPU per stream opened", ""),
    ("API RSS before -> streams open", ""),
    ("API CPU while idle", ""),
    ("DB transactions while idle", "0: idle streams cost no queries"),
    ("API backends: active max / ran SQL", "0 / 0"),
    ("messages recorded", ""),
    ("events expected / received", "equal"),
    ("duplicates / out of order / unknown", "0 / 0 / 0"),
    ("commit-to-client p50", ""),
    ("commit-to-client p99", f"< {TARGET_P99_MS:.0f} ms"),
    ("commit-to-client max", ""),
    ("API / clients CPU while recording", ""),
    ("streams ended after the job", "all"),
    ("keep-alive pings received", ""),
    ("machine CPU busy: open / idle / recording", ""),
]


def column(r: LayoutResult) -> list[str]:
    """The table's values for one layout, row by row (see ``ROWS``)."""
    running = f" ({r.reached_running} running)" if r.reached_running != r.reached else ""
    per_stream = 1024 * (r.idle.rss_mb - r.rss_before_mb) / r.streams
    open_p50, open_p99 = percentile(r.open_latencies, 0.5), percentile(r.open_latencies, 0.99)
    return [
        f"{r.reached}/{r.streams}{running}",
        ", ".join(f"{kind} x{count}" for kind, count in r.open_errors.items()) or "none",
        f"{r.open_seconds:.2f} s",
        f"{_ms(open_p50)} / {_ms(open_p99)} ms",
        f"{r.open_cpu_ms_per_stream:.2f} ms",
        f"{r.rss_before_mb:.0f} -> {r.idle.rss_mb:.0f} MiB ({per_stream:+.0f} KiB/stream)",
        f"{r.idle.api_cpu_percent:.1f} % of a core",
        f"{r.idle.xact_delta} in {r.idle.seconds:.1f} s",
        f"{r.idle.active_max} / {r.idle.backends_that_ran} of {r.idle.api_backends}",
        f"{r.committed} @ {r.commit_rate:.0f}/s",
        f"{r.expected} / {r.received}",
        f"{r.duplicates} / {r.out_of_order} / {r.unexpected}",
        f"{_ms(percentile(r.delays_ms, 0.5))} ms",
        f"{_ms(percentile(r.delays_ms, 0.99))} ms",
        f"{_ms(max(r.delays_ms, default=float('nan')))} ms",
        f"{r.api_cpu_percent_messages:.0f} % / {r.clients_cpu_percent_messages:.0f} %",
        f"{r.ended}/{r.streams}",
        str(r.pings),
        f"{r.machine_busy_open:.0f} / {r.idle.machine_busy_percent:.0f} /"
        f" {r.machine_busy_messages:.0f} % of {os.cpu_count()} cores",
    ]


def print_table(bench: Bench, results: list[LayoutResult]) -> None:
    """Print the figures of every layout side by side, with the issue's targets."""
    args = bench.args
    columns = [column(result) for result in results]
    table = [
        [label, *(values[i] for values in columns), target]
        for i, (label, target) in enumerate(ROWS)
    ]
    headers = ["", *(result.name for result in results), "target"]
    widths = [max(len(str(line[i])) for line in [headers, *table]) for i in range(len(headers))]
    print()
    pace = "all at once" if args.open_concurrency <= 0 else f"{args.open_concurrency} at a time"
    print(
        f"jobline SSE: {args.streams} streams from {args.clients} client processes ({pace});"
        f" one API process (uvicorn, uvloop + httptools) on {os.cpu_count()} cores"
    )
    soft, hard = bench.api_limits_started
    run_soft, run_hard = bench.api_limits_running
    print(
        f"API open-file limit: started with soft {soft} / hard {hard}"
        + (" (--api-nofile: a common shell default)" if args.api_nofile else " (inherited)")
        + f"; once serving: soft {run_soft} / hard {run_hard}"
    )
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    print(
        f"load average at the end {load}; other processes skew every figure, so the last row"
        " shows how busy the whole machine was"
    )
    print(
        f"idle window {args.idle_seconds:.0f} s after {args.settle:.0f} s settle;"
        f" messages {args.rate:.0f}/s for {args.message_seconds:.0f} s, recorded with the"
        " worker's statement (db.queries.record_messages, autocommit)"
    )
    print()
    line = " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    print(line.rstrip())
    print("-+-".join("-" * w for w in widths))
    for cells in table:
        print(" | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip())


# --- entry point -------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=TARGET_STREAMS, help="concurrent streams")
    parser.add_argument("--quick", action="store_true", help="200 streams, 3 s phases")
    parser.add_argument("--clients", type=int, default=2, help="client processes")
    parser.add_argument(
        "--open-concurrency",
        type=int,
        default=0,
        help="connections each client opens at once (0: all at once, a reconnect storm)",
    )
    parser.add_argument("--rate", type=float, default=50.0, help="messages per second")
    parser.add_argument("--message-seconds", type=float, default=10.0)
    parser.add_argument("--idle-seconds", type=float, default=5.0)
    parser.add_argument("--settle", type=float, default=STATS_SETTLE_SECONDS)
    parser.add_argument(
        "--api-nofile",
        type=int,
        default=COMMON_SOFT_NOFILE,
        help="start the API with this open-file soft limit (0: inherit)",
    )
    parser.add_argument("--open-timeout", type=float, default=60.0)
    parser.add_argument("--end-timeout", type=float, default=30.0)
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        if args.streams == TARGET_STREAMS:
            args.streams = 200
        args.message_seconds = min(args.message_seconds, 3.0)
        args.idle_seconds = min(args.idle_seconds, 3.0)
    return args


def _raise_system_exit(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def _bench(args: argparse.Namespace) -> Iterator[Bench]:
    bench = Bench(args)
    try:
        yield bench
    finally:
        bench.close()


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (or, with ``--client``, serve as a stream-holding client)."""
    args = parse_args(argv)
    if args.client:
        import uvloop

        # Ctrl-C reaches the whole process group; the orchestrator ends clients itself.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        # The client must not be what limits the figures: uvloop costs less per event.
        uvloop.run(run_client())
        return 0
    signal.signal(signal.SIGTERM, _raise_system_exit)
    with _bench(args) as bench:
        bench.create_database()
        bench.start_api()
        for _ in range(args.clients):
            bench.clients.append(ClientProcess())
        one_per_job = bench.schedule_jobs(args.streams)
        fanout = bench.schedule_jobs(FANOUT_JOBS)
        results = [
            bench.run_layout("(a) 1 stream per job", one_per_job, args.streams),
            bench.run_layout(f"(b) {args.streams} on {FANOUT_JOBS} jobs", fanout, args.streams),
        ]
        print_table(bench, results)
        bench.succeeded = True
    return 0


if __name__ == "__main__":
    sys.exit(main())
