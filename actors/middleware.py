"""Worker middleware: database lifecycle, shutdown flag, lease heartbeat and sweeper."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import dramatiq

from actors.runtime import WorkerRuntime
from actors.sweeper import Publish, dispatch_webhooks, forget_expired_keys, sweep_once
from db import queries
from db.errors import JoblineDbError, translate_errors

logger = logging.getLogger(__name__)


class WorkerLifecycle(dramatiq.Middleware):
    """Creates the engine when a worker boots, flags shutdown, disposes of it at the end."""

    def __init__(self, runtime: WorkerRuntime) -> None:
        self.runtime = runtime

    def before_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self.runtime.start(worker_threads=worker.worker_threads)

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        # Running jobs hand themselves on at their next step boundary.
        self.runtime.stop()

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self.runtime.close()


class _PeriodicTask(dramatiq.Middleware):
    """Runs ``tick`` every ``interval`` seconds on a daemon thread while the worker runs."""

    name = "periodic"

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def tick(self) -> None:
        raise NotImplementedError

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name=f"jobline-{self.name}", daemon=True)
        self._thread.start()

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.tick()
            except JoblineDbError as error:
                logger.warning("%s: %s", self.name, error)
            except Exception:
                logger.exception("%s failed; trying again in %.1fs", self.name, self.interval)


class LeaseHeartbeat(_PeriodicTask):
    """Renews the leases of this process's jobs three times per lease, and passes on cancels."""

    name = "heartbeat"

    def __init__(self, runtime: WorkerRuntime) -> None:
        super().__init__(runtime.settings.lease_seconds / 3)
        self.runtime = runtime

    def tick(self) -> None:
        owners = self.runtime.held_leases()
        if owners:
            with translate_errors(), self.runtime.engine.begin() as conn:
                cancelled = queries.renew_leases(
                    conn, owners=owners, lease_seconds=self.runtime.settings.lease_seconds
                )
            if cancelled:
                self.runtime.request_cancel(cancelled)


class Sweeper(_PeriodicTask):
    """Publishes jobs nobody published, requeues jobs whose worker died, sends due webhooks."""

    name = "sweeper"

    def __init__(
        self,
        runtime: WorkerRuntime,
        publish: Publish,
        publish_webhook: Callable[[int, int], bool],
    ) -> None:
        super().__init__(runtime.settings.sweep_interval_seconds)
        self.runtime = runtime
        self.publish = publish
        self.publish_webhook = publish_webhook

    def tick(self) -> None:
        settings = self.runtime.settings
        sweep_once(
            self.runtime.engine,
            publish=self.publish,
            grace_seconds=settings.publish_grace_seconds,
            horizon_seconds=settings.sweep_interval_seconds,
        )
        dispatch_webhooks(
            self.runtime.engine,
            publish=self.publish_webhook,
            # Long enough for one delivery to finish before it may be sent again.
            dispatch_seconds=settings.webhook_timeout_seconds + 30,
        )
        forget_expired_keys(self.runtime.engine)
