"""Errors raised by the db package; driver errors never cross this boundary raw."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import exc


class JoblineDbError(Exception):
    """Base class of every error the db package raises."""


class DatabaseUnavailable(JoblineDbError):
    """Postgres could not be reached or did not answer in time."""


class LeaseLost(JoblineDbError):
    """The worker no longer holds the job's lease; another worker owns it now."""


@contextmanager
def translate_errors() -> Iterator[None]:
    """Turn connection-level driver errors into ``DatabaseUnavailable``."""
    try:
        yield
    except (exc.OperationalError, exc.InterfaceError, exc.TimeoutError) as error:
        cause = getattr(error, "orig", None) or error
        raise DatabaseUnavailable(str(cause).strip().splitlines()[0]) from error
    except exc.DBAPIError as error:
        if error.connection_invalidated:
            raise DatabaseUnavailable("connection to Postgres lost") from error
        raise
