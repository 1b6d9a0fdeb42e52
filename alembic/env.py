"""Alembic environment: runs migrations under an advisory lock so hosts can race safely."""

from __future__ import annotations

from sqlalchemy import create_engine, pool, text

from alembic import context
from db.models import Base
from db.settings import Settings

# Any constant works; it only has to differ from the sweeper's key.
MIGRATION_LOCK_KEY = 0x6A6F626D6967  # "jobmig"

config = context.config
target_metadata = Base.metadata


def _database_url() -> str:
    url = config.get_main_option("sqlalchemy.url") or Settings().database_url
    if not url:
        raise SystemExit("set JOBLINE_DATABASE_URL to migrate")
    return url


def run_migrations_offline() -> None:
    context.configure(url=_database_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = create_engine(_database_url(), poolclass=pool.NullPool)
    with engine.connect() as connection:
        # Session-level lock: a second `jobline migrate` waits here, then finds
        # the schema at head and does nothing.
        connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        connection.commit()
        try:
            context.configure(connection=connection, target_metadata=target_metadata)
            with context.begin_transaction():
                context.run_migrations()
            connection.commit()
        finally:
            connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY})
            connection.commit()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
