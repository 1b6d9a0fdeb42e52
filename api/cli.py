"""The ``jobline`` command."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from db.settings import Settings


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="jobline",
        description="A durable job service: HTTP in, Dramatiq over RabbitMQ, Postgres as truth. "
        "Configuration comes from JOBLINE_* environment variables (see README).",
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``jobline`` console script."""
    args = build_parser().parse_args(argv)
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
        )
        return 0
    from api.supervisor import supervise

    return supervise(processes=args.processes, threads=args.threads)


if __name__ == "__main__":
    sys.exit(main())
