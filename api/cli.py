"""The ``jobline`` command."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC
from itertools import islice
from typing import Any

from pydantic import ValidationError
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from api.client import (
    DEFAULT_DEPLOYMENT,
    DEFAULT_FRAMEWORK,
    DEFAULT_URL,
    URL_ENV,
    Job,
    JoblineClient,
    JoblineError,
    Message,
    Reconnecting,
    default_url,
)
from db.settings import Settings

CLIENT_COMMANDS = frozenset({"submit", "status", "follow", "cancel", "jobs"})
JOB_STATES = ("queued", "running", "succeeded", "failed", "cancelled")
MAX_PAGE_SIZE = 500  # what GET /jobs allows per request
EXIT_SUCCEEDED = 0
EXIT_JOB_DID_NOT_SUCCEED = 1
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130
PIPE_WIDTH = 250
SHUTDOWN_GRACE_SECONDS = 5


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


def _param(value: str) -> tuple[str, Any]:
    """A ``--param KEY=VALUE``: the value as JSON when it parses, else the plain string."""
    key, equals, raw = value.partition("=")
    if not equals or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {value!r}")
    try:
        return key, json.loads(raw)
    except json.JSONDecodeError:
        return key, raw


def _client_options() -> argparse.ArgumentParser:
    """The options every client command shares."""
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument(
        "--url",
        default=None,
        help=f"the jobline API's base URL (default ${URL_ENV}, else {DEFAULT_URL})",
    )
    options.add_argument("--json", action="store_true", help="print machine-readable JSON")
    return options


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="jobline",
        description="A durable job service: HTTP in, Dramatiq over RabbitMQ, Postgres as truth. "
        "The service commands (api, worker, migrate, dev) take their configuration from "
        "JOBLINE_* environment variables (see README); the client commands (submit, status, "
        "follow, cancel, jobs) only talk to a running API over HTTP.",
        epilog="Client commands exit 2 when the API refuses a request or cannot be reached.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    api = commands.add_parser("api", help="serve the HTTP API (uvicorn, uvloop + httptools)")
    api.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    api.add_argument("--port", type=int, default=8000, help="port to bind (default 8000)")
    api.add_argument(
        "--workers", type=_positive, default=1, help="uvicorn worker processes (default 1)"
    )
    api.add_argument("--access-log", action="store_true", help="log every request")

    worker = commands.add_parser("worker", help="run Dramatiq workers, restarting them if they die")
    worker.add_argument(
        "--processes", type=_positive, default=2, help="worker processes (default 2)"
    )
    worker.add_argument(
        "--threads", type=_positive, default=8, help="threads per process (default 8)"
    )

    commands.add_parser("migrate", help="bring the database schema up to date (alembic upgrade)")

    dev = commands.add_parser(
        "dev",
        help="API plus an in-process worker; embedded Postgres and broker unless configured",
    )
    dev.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    dev.add_argument("--port", type=int, default=8000, help="port to bind (default 8000)")

    client = _client_options()
    submit = commands.add_parser(
        "submit",
        parents=[client],
        help="schedule a job; with --wait, follow it to its end",
        description="Schedule a job and print its offset. With --wait, print each message as "
        "it is recorded and exit 0 if the job succeeded, 1 if it failed or was cancelled. "
        'With --json: {"offset": N}, then (with --wait) one JSON message object per line.',
    )
    submit.add_argument("--fn", required=True, help="the job function (GET /functions lists them)")
    submit.add_argument(
        "--param",
        dest="params",
        metavar="KEY=VALUE",
        type=_param,
        action="append",
        default=[],
        help="a param of the job function; VALUE is read as JSON if it parses, else as a "
        "string (repeatable)",
    )
    submit.add_argument(
        "--deployment",
        default=DEFAULT_DEPLOYMENT,
        help=f"where the model is deployed (default {DEFAULT_DEPLOYMENT})",
    )
    submit.add_argument(
        "--framework",
        default=DEFAULT_FRAMEWORK,
        help=f"the serving framework (default {DEFAULT_FRAMEWORK})",
    )
    submit.add_argument("--callback-url", help="POST the job here when it ends (signed webhook)")
    submit.add_argument(
        "--idempotency-key", help="repeating a submit with this key returns the first job"
    )
    submit.add_argument("--wait", action="store_true", help="follow the job until it ends")

    status = commands.add_parser(
        "status",
        parents=[client],
        help="show a job",
        description="Show a job's state, attempts, message count and times "
        "(with --json: the job resource).",
    )
    status.add_argument("offset", type=int, help="the job's offset")

    follow = commands.add_parser(
        "follow",
        parents=[client],
        help="print a job's messages as they arrive, until it ends",
        description="Print the job's messages as they are recorded, riding out lost "
        "connections, until the job ends; exit 0 if it succeeded, 1 if it failed or was "
        "cancelled. With --json: one JSON message object per line.",
    )
    follow.add_argument("offset", type=int, help="the job's offset")

    cancel = commands.add_parser(
        "cancel",
        parents=[client],
        help="cancel a job",
        description="Cancel a job: a queued one at once, a running one at its next step. "
        "A job that already ended cannot be cancelled (exit 2). "
        "With --json: the job resource.",
    )
    cancel.add_argument("offset", type=int, help="the job's offset")

    jobs = commands.add_parser(
        "jobs",
        parents=[client],
        help="list jobs, newest first",
        description="List jobs newest first as a table (with --json: a JSON array of jobs).",
    )
    jobs.add_argument("--state", choices=JOB_STATES, help="only jobs in this state")
    jobs.add_argument("--fn", help="only jobs of this job function")
    jobs.add_argument(
        "--limit", type=_positive, default=20, help="show at most this many (default 20)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``jobline`` console script."""
    args = build_parser().parse_args(argv)
    if args.command in CLIENT_COMMANDS:
        # Client commands talk HTTP only: no JOBLINE_DATABASE_URL, no server settings.
        return run_client_command(args)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        settings = Settings()
    except ValidationError as error:
        print(f"jobline: invalid configuration:\n{error}", file=sys.stderr)
        return 2

    if args.command == "dev":
        from api.dev import run_dev

        run_dev(settings, host=args.host, port=args.port)
        return 0
    if not settings.database_url:
        print("jobline: set JOBLINE_DATABASE_URL (or use `jobline dev`)", file=sys.stderr)
        return 2
    if args.command == "migrate":
        from db.migrate import upgrade

        upgrade(settings.database_url)
        return 0
    if not settings.broker_url:
        print("jobline: set JOBLINE_BROKER_URL (or use `jobline dev`)", file=sys.stderr)
        return 2
    if args.command == "api":
        import uvicorn

        uvicorn.run(
            "api.app:app_from_env",
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            loop="uvloop",
            http="httptools",
            access_log=args.access_log,
            # Long-polls and event streams would otherwise hold a shutdown for up to
            # their full wait; clients resume after the last seq they saw.
            timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS,
        )
        return 0
    from api.supervisor import supervise

    return supervise(processes=args.processes, threads=args.threads)


# --- client commands ------------------------------------------------------------------


def run_client_command(args: argparse.Namespace) -> int:
    """Run submit, status, follow, cancel or jobs against the API; the exit code."""
    commands = {
        "submit": _submit,
        "status": _status,
        "follow": _follow,
        "cancel": _cancel,
        "jobs": _jobs,
    }
    try:
        with JoblineClient(args.url or default_url()) as client:
            return commands[args.command](client, args)
    except JoblineError as error:
        where = f"job {args.offset}: " if getattr(args, "offset", None) is not None else ""
        print(f"jobline: {where}{error}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def _submit(client: JoblineClient, args: argparse.Namespace) -> int:
    """``jobline submit``: schedule a job, and with ``--wait`` follow it."""
    offset = client.schedule(
        args.fn,
        deployment=args.deployment,
        framework=args.framework,
        params=dict(args.params) if args.params else None,
        callback_url=args.callback_url,
        idempotency_key=args.idempotency_key,
    )
    if args.json:
        _print_json({"offset": offset})
    else:
        _output().print(f"scheduled job {offset}")
    return _follow_job(client, offset, as_json=args.json) if args.wait else EXIT_SUCCEEDED


def _status(client: JoblineClient, args: argparse.Namespace) -> int:
    """``jobline status``: show one job."""
    job = client.get(args.offset)
    if args.json:
        _print_json(job.model_dump(mode="json"))
        return EXIT_SUCCEEDED
    state = job.state + (" (cancel requested)" if job.cancel_requested and not job.ended else "")
    rows = [
        ("job", str(job.offset)),
        ("state", state),
        ("fn", job.fn),
        ("deployment", job.deployment),
        ("framework", job.framework),
        ("params", json.dumps(job.params)),
        ("attempts", f"{job.attempts} of {job.max_attempts}"),
        ("messages", str(job.message_count)),
        ("created", job.created_at.isoformat()),
        ("started", job.started_at.isoformat() if job.started_at else "-"),
        ("finished", job.finished_at.isoformat() if job.finished_at else "-"),
    ]
    if job.last_error:
        rows.append(("last error", job.last_error))
    if job.callback_url:
        rows.append(
            (
                "callback",
                f"{job.callback_url} ({job.callback_state or 'waiting'}, "
                f"{job.callback_attempts} deliveries)",
            )
        )
    output = _output()
    width = max(len(name) for name, _ in rows) + 2
    for name, value in rows:
        output.print(Text.assemble((name.ljust(width), "bold"), value))
    return EXIT_SUCCEEDED


def _follow(client: JoblineClient, args: argparse.Namespace) -> int:
    """``jobline follow``: print a job's messages until it ends."""
    return _follow_job(client, args.offset, as_json=args.json)


def _cancel(client: JoblineClient, args: argparse.Namespace) -> int:
    """``jobline cancel``: cancel a job."""
    job = client.cancel(args.offset)
    if args.json:
        _print_json(job.model_dump(mode="json"))
    elif job.ended:
        _output().print(f"job {job.offset} {job.state}")
    else:
        _output().print(
            f"job {job.offset} {job.state}: cancel requested, it stops at its next step"
        )
    return EXIT_SUCCEEDED


def _jobs(client: JoblineClient, args: argparse.Namespace) -> int:
    """``jobline jobs``: list jobs, newest first."""
    found = client.list_jobs(state=args.state, fn=args.fn, limit=min(args.limit, MAX_PAGE_SIZE))
    jobs = list(islice(found, args.limit))
    if args.json:
        _print_json([job.model_dump(mode="json") for job in jobs])
        return EXIT_SUCCEEDED
    table = Table(box=box.SIMPLE_HEAD)
    # On a narrow terminal the error, then fn, are cut short; the rest stays whole.
    for name, width in (
        ("offset", 6),
        ("fn", 10),
        ("state", 9),
        ("attempts", 8),
        ("messages", 8),
        ("created (UTC)", 19),
    ):
        table.add_column(name, no_wrap=True, min_width=width)
    table.add_column("last error", no_wrap=True, overflow="ellipsis")
    for job in jobs:
        table.add_row(
            str(job.offset),
            Text(job.fn),
            job.state,
            f"{job.attempts}/{job.max_attempts}",
            str(job.message_count),
            f"{job.created_at.astimezone(UTC):%Y-%m-%d %H:%M:%S}",
            Text(job.last_error or ""),
        )
    _output().print(table)
    return EXIT_SUCCEEDED


def _follow_job(client: JoblineClient, offset: int, *, as_json: bool) -> int:
    """Print the job's messages until it ends; 0 if it succeeded, else 1."""
    output = _output()
    job: Job | None = None
    received = 0
    if as_json:
        for update in client.watch(offset):
            if isinstance(update, Message):
                _print_json(update.model_dump(mode="json"))
            elif isinstance(update, Job):
                job = update
    else:
        with _live_status(output) as show:
            for update in client.watch(offset):
                if isinstance(update, Message):
                    received += 1
                    output.print(update.body)
                elif isinstance(update, Job):
                    job = update
                if job is not None:
                    show(_status_line(job, received, update))
    # watch yields the job first, and ends only after a snapshot showed it ended.
    if job is None or not job.ended:
        raise JoblineError(f"stopped following job {offset} before it ended")
    if not as_json:
        output.print(_summary(job, received))
    return EXIT_SUCCEEDED if job.state == "succeeded" else EXIT_JOB_DID_NOT_SUCCEED


def _output() -> Console:
    """A console for stdout that prints text exactly as given."""
    # Message bodies are arbitrary text: no markup, emoji codes, highlighting or wrapping.
    console = Console(markup=False, emoji=False, highlight=False, soft_wrap=True)
    if not console.is_terminal:
        console.width = PIPE_WIDTH  # no screen to fit: keep table rows whole for readers
    return console


@contextmanager
def _live_status(output: Console) -> Iterator[Callable[[str], None]]:
    """A spinner with a status line below the printed messages; ``show(text)`` updates it."""
    # On a terminal the spinner shares stdout and rich keeps it below the messages; when
    # stdout is piped it goes to stderr, so the pipe gets only messages.
    console = output if output.is_terminal else Console(stderr=True)
    with console.status(Text("connecting")) as status:
        yield lambda text: status.update(Text(text))


def _status_line(job: Job, received: int, update: object) -> str:
    """The text next to the spinner while following."""
    # A message proves the job started, though the last snapshot may predate that.
    state = "running" if job.state == "queued" and received else job.state
    line = f"job {job.offset} {state} · {_count(received, 'message')}"
    if job.attempts:
        line += f" · attempt {job.attempts} of {job.max_attempts}"
    if job.cancel_requested and not job.ended:
        line += " · cancel requested"
    if isinstance(update, Reconnecting):
        line += f" · reconnecting in {update.delay:.1f}s ({update.error})"
    return line


def _summary(job: Job, received: int) -> str:
    """The last line of a follow: how the job ended."""
    text = (
        f"job {job.offset} {job.state} after {_count(job.attempts, 'attempt')}"
        f" ({_count(received, 'message')})"
    )
    if job.state == "failed" and job.last_error:
        text += f": {job.last_error}"
    return text


def _count(number: int, noun: str) -> str:
    """``1 message``, ``2 messages``."""
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _print_json(value: object) -> None:
    """One line of JSON on stdout, flushed at once for readers of a pipe."""
    print(json.dumps(value), flush=True)


if __name__ == "__main__":
    sys.exit(main())
