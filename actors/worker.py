"""Entry module for Dramatiq's CLI: ``dramatiq actors.worker``.

Reads settings from the environment when imported (that is Dramatiq's start-up),
and sets the broker it builds as the global one. No connection opens here: the
engine is made in ``before_worker_boot`` and pika connects on first use.
"""

from __future__ import annotations

import dramatiq

from actors.broker import build_worker_app
from db.settings import Settings

settings = Settings()
if not settings.database_url or not settings.broker_url:
    raise SystemExit("jobline worker needs JOBLINE_DATABASE_URL and JOBLINE_BROKER_URL")

app = build_worker_app(settings)
broker = app.broker
dramatiq.set_broker(broker)
