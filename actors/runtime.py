"""Per-process worker state: settings, registry, engine, held leases, shutdown flag."""

from __future__ import annotations

import os
import socket
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from sqlalchemy import Engine

from actors.registry import JobRegistry
from db.engine import make_engine
from db.settings import Settings


@dataclass
class Lease:
    """A claim this process holds: who owns it, and whether it must stop early."""

    owner: str
    cancel_requested: bool = False
    # Set on shutdown or cancel; StepContext.sleep wakes on it.
    interrupted: threading.Event = field(default_factory=threading.Event)


class WorkerRuntime:
    """What a worker process shares across its threads; started in ``before_worker_boot``."""

    def __init__(self, settings: Settings, registry: JobRegistry) -> None:
        self.settings = settings
        self.registry = registry
        self.stopping = threading.Event()
        self._engine: Engine | None = None
        self._autocommit: Engine | None = None
        self._leases: dict[str, Lease] = {}
        self._lock = threading.Lock()
        self._identity = f"{socket.gethostname()}/{os.getpid()}"

    def start(self, *, worker_threads: int) -> None:
        """Create the engine, sized for the worker's threads plus its background loops."""
        if self._engine is None:
            self._engine = make_engine(self.settings, pool_size=worker_threads + 2)
            # Single statements need no BEGIN/COMMIT: one round trip instead of three.
            self._autocommit = self._engine.execution_options(isolation_level="AUTOCOMMIT")
        self.stopping.clear()

    def close(self) -> None:
        """Dispose of the engine."""
        if self._engine is not None:
            self._engine.dispose()
            self._engine = self._autocommit = None

    @property
    def autocommit(self) -> Engine:
        """The engine for single-statement work, each statement its own transaction."""
        if self._autocommit is None:
            raise RuntimeError("worker runtime used before before_worker_boot")
        return self._autocommit

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
    def holding(self, owner: str, *, cancel_requested: bool = False) -> Iterator[Lease]:
        """Track the lease of ``owner`` so the heartbeat renews it and shutdown interrupts it."""
        lease = Lease(owner=owner, cancel_requested=cancel_requested)
        if self.stopping.is_set():
            lease.interrupted.set()
        with self._lock:
            self._leases[owner] = lease
        try:
            yield lease
        finally:
            with self._lock:
                self._leases.pop(owner, None)

    def held_leases(self) -> list[str]:
        """Lease owners currently running in this process."""
        with self._lock:
            return list(self._leases)

    def request_cancel(self, owners: list[str]) -> None:
        """Interrupt the jobs of ``owners``: they were cancelled through the API."""
        with self._lock:
            leases = [self._leases[owner] for owner in owners if owner in self._leases]
        for lease in leases:
            lease.cancel_requested = True
            lease.interrupted.set()

    def stop(self) -> None:
        """Flag shutdown and interrupt every running step's pause."""
        self.stopping.set()
        with self._lock:
            leases = list(self._leases.values())
        for lease in leases:
            lease.interrupted.set()
