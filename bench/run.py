"""Benchmark jobline beside the original in-memory design, side by side in one run.

Starts its own database, queue, API, workers and the baseline app, then prints one
table: jobs accepted per second by POST /schedule (c=16 and c=64, with p50/p99),
jobs completed per second end to end (zero-second steps), schedule-to-done latency
at light load, and peak RSS of each process. Both APIs are served the same way:
uvicorn, one process, uvloop + httptools, no access log. The load generator is a
separate process on the same 2 cores, so absolute figures are low; read the ratios.

    .venv/bin/python bench/run.py [--duration 10] [--jobs 3000] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import psycopg
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
JOBLINE = str(Path(PYTHON).parent / "jobline")
DATABASE_SERVER = os.environ.get(
    "JOBLINE_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
BROKER_URL = os.environ.get("JOBLINE_BENCH_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/")
BODY = {"deployment": "Docker", "framework": "FastAPI", "fn": "default_fn"}


# --- load generator (runs in its own process) ------------------------------------------


def _request(port: int, step_seconds: float) -> bytes:
    body = json.dumps({**BODY, "params": {"step_seconds": step_seconds}}).encode()
    head = (
        f"POST /schedule HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _post(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> int:
    writer.write(request)
    status = int((await reader.readline()).split()[1])
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    await reader.readexactly(length)
    return status


async def _closed_loop(
    port: int, concurrency: int, seconds: float, total: int, step: float
) -> dict[str, Any]:
    """Keep-alive clients posting back to back, for ``seconds`` or until ``total`` jobs."""
    request = _request(port, step)
    latencies: list[float] = []
    errors = 0
    deadline = time.monotonic() + seconds
    started = time.monotonic()

    async def client() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while time.monotonic() < deadline and (not total or len(latencies) + errors < total):
            sent = time.perf_counter()
            if await _post(reader, writer, request) == 202:
                latencies.append(time.perf_counter() - sent)
            else:
                errors += 1
        writer.close()

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return {
        "ok": len(latencies),
        "errors": errors,
        "seconds": time.monotonic() - started,
        "latencies": sorted(latencies),
    }


async def _open_loop(port: int, rate: float, total: int, step: float) -> dict[str, Any]:
    """One job every 1/``rate`` seconds on fresh keep-alive connections, ``total`` jobs."""
    request = _request(port, step)
    pool = [await asyncio.open_connection("127.0.0.1", port) for _ in range(8)]
    free = asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]]()
    for pair in pool:
        free.put_nowait(pair)
    sent_at: list[float] = []

    async def one() -> None:
        pair = await free.get()
        sent_at.append(time.time())
        await _post(*pair, request)
        free.put_nowait(pair)

    tasks = []
    for _ in range(total):
        tasks.append(asyncio.create_task(one()))
        await asyncio.sleep(1 / rate)
    await asyncio.gather(*tasks)
    return {"ok": total}


def run_load(args: list[str]) -> dict[str, Any]:
    """Run the load generator in a child process; return what it measured."""
    output = subprocess.run(
        [PYTHON, __file__, "--load", *args], capture_output=True, text=True, check=True, timeout=600
    ).stdout
    return dict(json.loads(output.splitlines()[-1]))


# --- processes and measurements ------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        args,
        env=env,
        cwd=ROOT,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(5)


def wait_http(port: int, path: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            if b" 200 " in sock.recv(100):
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing answered on port {port}")


class RssSampler(threading.Thread):
    """Peak resident memory of process groups, by role, sampled every 100 ms."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.roles: dict[str, int] = {}  # role -> process group id
        self.peaks: dict[str, float] = {}
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(0.1):
            for pid in filter(str.isdigit, os.listdir("/proc")):
                with contextlib.suppress(OSError, ValueError):
                    pgid = os.getpgid(int(pid))
                    role = next((r for r, g in self.roles.items() if g == pgid), None)
                    if role is None:
                        continue
                    status = Path(f"/proc/{pid}/status").read_text()
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                    if role == "worker" and b"actors.worker" not in cmdline:
                        continue  # the supervisor and Dramatiq's parent are not workers
                    for line in status.splitlines():
                        if line.startswith("VmRSS"):  # absent for a zombie
                            rss_mb = int(line.split()[1]) / 1024
                            self.peaks[role] = max(self.peaks.get(role, 0), rss_mb)


def ms(seconds: list[float], fraction: float) -> float:
    """A percentile of durations in seconds, in milliseconds."""
    return percentile(seconds, fraction) * 1000


def get_json(port: int, path: str) -> Any:
    """GET ``path`` on loopback and decode the JSON body."""
    with socket.create_connection(("127.0.0.1", port), 5) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return json.loads(data.split(b"\r\n\r\n", 1)[1])


def percentile(values: list[float], fraction: float) -> float:
    return values[min(len(values) - 1, int(len(values) * fraction))] if values else float("nan")


@contextlib.contextmanager
def scratch(queue: str) -> Iterator[str]:
    name = f"jobline_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(DATABASE_SERVER, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = DATABASE_SERVER.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        with psycopg.connect(DATABASE_SERVER, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        with contextlib.suppress(Exception):
            connection = pika.BlockingConnection(pika.URLParameters(BROKER_URL))
            channel = connection.channel()
            for name in (queue, f"{queue}_plain"):
                for suffix in ("", ".DQ", ".XQ"):
                    channel.queue_delete(name + suffix)
            connection.close()


def purge(queue: str) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(BROKER_URL))
    connection.channel().queue_purge(queue)
    connection.close()


def wait_until(probe: Any, timeout: float) -> float:
    started = time.monotonic()
    while not probe():
        if time.monotonic() - started > timeout:
            raise RuntimeError("timed out")
        time.sleep(0.05)
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10, help="seconds per HTTP load phase")
    parser.add_argument("--jobs", type=int, default=3000, help="jobs in the end-to-end batch")
    parser.add_argument("--quick", action="store_true", help="2 s phases, 500 jobs")
    parser.add_argument("--load", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load:
        mode, port, *rest = args.load
        if mode == "closed":
            c, seconds, total, step = rest
            result = asyncio.run(
                _closed_loop(int(port), int(c), float(seconds), int(total), float(step))
            )
        else:
            rate, total, step = rest
            result = asyncio.run(_open_loop(int(port), float(rate), int(total), float(step)))
        print(json.dumps(result))
        return
    if args.quick:
        args.duration, args.jobs = 2.0, 500
    run(duration=args.duration, jobs=args.jobs)


def run(*, duration: float, jobs: int) -> None:
    console = Console(width=150)
    console.print(f"[bold]jobline bench[/] {' '.join(sys.argv)} | {os.cpu_count()} cores")
    queue = f"jobline_bench_{uuid.uuid4().hex[:8]}"
    logs = Path(os.environ.get("TMPDIR", "/tmp")) / queue
    logs.mkdir(parents=True)
    with scratch(queue) as database_url:
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "JOBLINE_DATABASE_URL": database_url,
            "JOBLINE_BROKER_URL": BROKER_URL,
            "JOBLINE_QUEUE_NAME": queue,
        }
        subprocess.run([JOBLINE, "migrate"], env=env, check=True, capture_output=True)
        api_port, original_port = free_port(), free_port()
        api = start([JOBLINE, "api", "--port", str(api_port)], env, logs / "api.log")
        original = start(
            [
                PYTHON,
                "-m",
                "uvicorn",
                "bench.original_app:app",
                "--port",
                str(original_port),
                "--loop",
                "uvloop",
                "--http",
                "httptools",
                "--no-access-log",
                "--log-level",
                "warning",
            ],
            env,
            logs / "original.log",
        )
        sampler = RssSampler()
        sampler.roles = {"api": api.pid, "original": original.pid}
        sampler.start()
        processes = [api, original]
        try:
            wait_http(api_port, "/health")
            wait_http(original_port, "/stats")
            rows = measure(
                env,
                database_url,
                queue,
                api_port,
                original_port,
                duration,
                jobs,
                sampler,
                processes,
                logs,
            )
        finally:
            sampler.stopping.set()
            for process in processes:
                stop(process)
    report(console, rows, sampler.peaks)


def measure(
    env: dict[str, str],
    database_url: str,
    queue: str,
    api_port: int,
    original_port: int,
    duration: float,
    jobs: int,
    sampler: RssSampler,
    processes: list[Any],
    logs: Path,
) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    # 1. POST /schedule, no workers running for jobline (jobs wait in the queue), and
    #    long steps in the baseline so its background tasks only sleep.
    for concurrency in (16, 64):
        for name, port in (("original", original_port), ("jobline", api_port)):
            result = run_load(["closed", str(port), str(concurrency), str(duration), "0", "60"])
            rows[(f"c{concurrency}", name)] = result
    # Start phase 2 clean: the API may still be publishing phase 1's backlog, and
    # the workers would spend their time on messages whose jobs are gone.
    stop(processes[0])
    purge(queue)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("TRUNCATE jobs CASCADE")
    processes[0] = start([JOBLINE, "api", "--port", str(api_port)], env, logs / "api-2.log")
    sampler.roles["api"] = processes[0].pid
    wait_http(api_port, "/health")

    # 2. End to end with zero-second steps: a batch of jobs, drained by the workers.
    worker = start(
        [JOBLINE, "worker", "--processes", "2", "--threads", "8"], env, logs / "worker.log"
    )
    processes.append(worker)
    sampler.roles["worker"] = worker.pid
    time.sleep(4)  # workers boot
    with psycopg.connect(database_url, autocommit=True) as conn:
        started = time.monotonic()
        run_load(["closed", str(api_port), "16", "600", str(jobs), "0"])

        def all_done() -> bool:
            row = conn.execute("SELECT count(*) FROM jobs WHERE state = 'succeeded'").fetchone()
            return bool(row and row[0] >= jobs)

        wait_until(all_done, 300)
        rows[("e2e", "jobline")] = jobs / (time.monotonic() - started)
    # The baseline still sleeps through phase 1's 60 s jobs: count only this batch.
    before = get_json(original_port, "/stats")
    started = time.monotonic()
    run_load(["closed", str(original_port), "16", "600", str(jobs), "0"])

    def original_done() -> bool:
        return bool(get_json(original_port, "/stats")["done"] - before["done"] >= jobs)

    wait_until(original_done, 300)
    rows[("e2e", "original")] = jobs / (time.monotonic() - started)

    # 3. Schedule-to-done latency at light load: 50 jobs/s, zero-second steps.
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("TRUNCATE jobs CASCADE")
        run_load(["open", str(api_port), "50", "200", "0"])
        wait_until(
            lambda: conn.execute(
                "SELECT count(*) = 200 FROM jobs WHERE state = 'succeeded'"
            ).fetchone()[0],
            60,
        )
        latencies = sorted(
            row[0] * 1000
            for row in conn.execute(
                "SELECT extract(epoch FROM finished_at - created_at) FROM jobs"
            ).fetchall()
        )
    rows[("latency", "jobline")] = (percentile(latencies, 0.5), percentile(latencies, 0.99))

    # 4. The plain composition of BASELINES.md on this machine: FastAPI + INSERT +
    #    Dramatiq send, an actor with four inserts; jobline's processes stopped first.
    stop(worker)
    stop(processes[0])
    plain_port = free_port()
    plain_env = {**env, "PLAIN_DATABASE_URL": database_url, "PLAIN_QUEUE": f"{queue}_plain"}
    plain_api = start(
        [
            PYTHON,
            "-m",
            "uvicorn",
            "bench.plain_app:app",
            "--port",
            str(plain_port),
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--no-access-log",
            "--log-level",
            "warning",
        ],
        plain_env,
        logs / "plain-api.log",
    )
    plain_worker = start(
        [PYTHON, "-m", "dramatiq", "bench.plain_app", "--processes", "2", "--threads", "8"],
        plain_env,
        logs / "plain-worker.log",
    )
    processes += [plain_api, plain_worker]
    wait_http(plain_port, "/health")
    time.sleep(4)  # workers boot
    with psycopg.connect(database_url, autocommit=True) as conn:
        started = time.monotonic()
        run_load(["closed", str(plain_port), "16", "600", str(jobs), "0"])
        wait_until(
            lambda: conn.execute("SELECT count(*) FROM plain_messages").fetchone()[0] >= 4 * jobs,
            300,
        )
        rows[("e2e", "plain")] = jobs / (time.monotonic() - started)
    return rows


def report(console: Console, rows: dict[Any, Any], peaks: dict[str, float]) -> None:
    table = Table(title="jobline vs the original in-memory design (same uvicorn setup, one run)")
    for column in ("metric", "original (in-memory)", "jobline", "ratio", "target"):
        table.add_column(column)

    def rate(r: dict[str, Any]) -> float:
        return float(r["ok"] / r["seconds"])

    for c in (16, 64):
        o, j = rows[(f"c{c}", "original")], rows[(f"c{c}", "jobline")]
        table.add_row(
            f"POST /schedule req/s, c={c}",
            f"{rate(o):,.0f}",
            f"{rate(j):,.0f}",
            f"{rate(j) / rate(o):.2f}x",
            ">= 0.5x",
        )
        table.add_row(
            f"POST p50 / p99 ms, c={c}",
            f"{ms(o['latencies'], 0.5):.1f} / {ms(o['latencies'], 0.99):.1f}",
            f"{ms(j['latencies'], 0.5):.1f} / {ms(j['latencies'], 0.99):.1f}",
            "",
            "p99 < 25 ms at c=64",
        )
    eo, ej = rows[("e2e", "original")], rows[("e2e", "jobline")]
    table.add_row(
        "end-to-end jobs/s (0 s steps)",
        f"{eo:,.0f}",
        f"{ej:,.0f}",
        f"{ej / eo:.2f}x",
        ">= 880 (reference machine)",
    )
    ep = rows[("e2e", "plain")]
    table.add_row(
        "end-to-end jobs/s: plain FastAPI + Dramatiq, this machine",
        f"{ep:,.0f} (plain)",
        f"{ej:,.0f}",
        f"{ej / ep:.2f}x",
        ">= 1x the plain composition",
    )
    p50, p99 = rows[("latency", "jobline")]
    table.add_row(
        "schedule-to-done p50 / p99 ms, 50 jobs/s",
        "in-process",
        f"{p50:.1f} / {p99:.1f}",
        "",
        "p50 < 20 ms",
    )
    table.add_row(
        "peak RSS MB: API / each worker process",
        f"{peaks.get('original', 0):.0f}",
        f"{peaks.get('api', 0):.0f} / {peaks.get('worker', 0):.0f}",
        "",
        "< 150 / < 120",
    )
    console.print(table)


if __name__ == "__main__":
    main()
