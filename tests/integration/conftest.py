"""In-process workers and API clients against the real servers."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import dramatiq
import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient

from actors.broker import WorkerApp, build_worker_app
from api.app import create_app
from db.settings import Settings
from tests.support.proxy import free_port
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration


class RunningWorker:
    """A Dramatiq worker in this process, with the app it runs."""

    def __init__(self, app: WorkerApp, threads: int) -> None:
        self.app = app
        self.worker = dramatiq.Worker(app.broker, worker_threads=threads, worker_timeout=100)
        self.worker.start()

    def stop(self) -> None:
        """Stop consuming; running jobs hand themselves on at their next step."""
        self.worker.stop(timeout=30_000)
        self.app.broker.close()


StartWorker = Callable[..., RunningWorker]


@pytest.fixture
def start_worker(settings: Settings) -> Iterator[StartWorker]:
    """Start in-process workers (``start_worker(**setting_overrides)``); all stop afterwards."""
    running: list[RunningWorker] = []

    def start(threads: int = 4, **overrides: Any) -> RunningWorker:
        worker = RunningWorker(build_worker_app(settings.model_copy(update=overrides)), threads)
        running.append(worker)
        return worker

    yield start
    for worker in running:
        if worker.worker.consumers or worker.worker.workers:
            worker.stop()


MakeClient = Callable[..., TestClient]


@pytest.fixture
def make_client(settings: Settings) -> Iterator[MakeClient]:
    """Start API apps (``make_client(**setting_overrides)``) with their lifespan running."""
    clients: list[TestClient] = []

    def make(**overrides: Any) -> TestClient:
        client = TestClient(create_app(settings.model_copy(update=overrides)))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: MakeClient) -> TestClient:
    """An API client on this test's settings."""
    return make_client()


class LiveServer:
    """The API served by uvicorn on a real loopback port, in a thread of this process."""

    def __init__(self, settings: Settings) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.client = httpx.Client(base_url=self.url, timeout=30)
        config = uvicorn.Config(
            create_app(settings), host="127.0.0.1", port=self.port, log_level="warning"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> None:
        self.thread.start()
        wait_for(lambda: self.server.started, timeout=20, what="uvicorn to start")

    def stop(self) -> None:
        self.client.close()
        self.server.should_exit = True
        self.thread.join(15)


StartServer = Callable[..., LiveServer]


@pytest.fixture
def start_server(settings: Settings) -> Iterator[StartServer]:
    """Serve the API on a real port (``start_server(**setting_overrides)``); stopped after."""
    servers: list[LiveServer] = []

    def start(**overrides: Any) -> LiveServer:
        server = LiveServer(settings.model_copy(update=overrides))
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def live_api(start_server: StartServer) -> LiveServer:
    """The API on a real port, on this test's settings."""
    return start_server()
