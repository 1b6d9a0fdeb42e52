"""Per-process worker state: settings, registry, engine, held leases, shutdown flag."""

from __future__ import annotations

import os
import socket
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine

from actors.registry import JobRegistry
from db.engine import make_engine
from db.settings import Settings


class WorkerRuntime:
    """What a worker process shares across its threads; started in ``before_worker_boot``."""

    def __init__(self, settings: Settings, registry: JobRegistry) -> None:
        self.settings = settings
        self.registry = registry
        self.stopping = threading.Event()
        self._engine: Engine | None = None
        self._leases: set[str] = set()
        self._lock = threading.Lock()
        self._identity = f"{socket.gethostname()}/{os.getpid()}"

    def start(self, *, worker_threads: int) -> None:
        """Create the engine, sized for the worker's threads plus its background loops."""
        if self._engine is None:
            self._engine = make_engine(self.settings, pool_size=worker_threads + 2)
        self.stopping.clear()

    def close(self) -> None:
        """Dispose of the engine."""
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    @property
    def engine(self) -> Engine:
        """The process's engine; only valid between boot and shutdown."""
        if self._engine is None:
            raise RuntimeError("worker runtime used before before_worker_boot")
        return self._engine

    def new_lease_owner(self) -> str:
        """A lease owner unique to one claim: host/pid/token."""
        if self._identity.split("/")[1] != str(os.getpid()):  # forked since construction
            self._identity = f"{socket.gethostname()}/{os.getpid()}"
        return f"{self._identity}/{uuid.uuid4().hex[:12]}"

    @contextmanager
    def holding(self, owner: str) -> Iterator[None]:
        """Track ``owner`` as a live lease so the heartbeat renews it."""
        with self._lock:
            self._leases.add(owner)
        try:
            yield
        finally:
            with self._lock:
                self._leases.discard(owner)

    def held_leases(self) -> list[str]:
        """Lease owners currently running in this process."""
        with self._lock:
            return list(self._leases)
