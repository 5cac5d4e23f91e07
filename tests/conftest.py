"""Fixtures shared by every test: stores on SQLite and PostgreSQL, settings, a real server on loopback."""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import sqlalchemy
import uvicorn

from ecliptic.config import Settings

POSTGRES_URL = os.environ.get("ECLIPTIC_TEST_POSTGRES_URL")


def _postgres_schema_url(base: str) -> Iterator[str]:
    """A fresh schema per test, so tests never see each other's rows; dropped afterwards."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = sqlalchemy.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    separator = "&" if "?" in base else "?"
    try:
        yield f"{base}{separator}options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.sqlite'}"
        return
    if not POSTGRES_URL:
        pytest.skip("set ECLIPTIC_TEST_POSTGRES_URL to run the PostgreSQL variant (.ci/run does)")
    yield from _postgres_schema_url(POSTGRES_URL)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    if not POSTGRES_URL:
        pytest.skip("set ECLIPTIC_TEST_POSTGRES_URL to run PostgreSQL tests (.ci/run does)")
    yield from _postgres_schema_url(POSTGRES_URL)


def make_settings(data_dir: Path, database_url: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "data_dir": data_dir,
        "database_url": database_url,
        "local_cores": 8,
        "local_memory_gib": 16,
        "local_storage_gib": 100,
        "idle_poll": timedelta(milliseconds=50),
        "release_margin": timedelta(seconds=1),
        "workers": 4,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return make_settings(tmp_path / "data", database_url)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LiveServer:
    """The real application under uvicorn on a loopback port, in a thread of the test process."""

    def __init__(self, settings: Settings, *, run_workers: bool = True) -> None:
        from ecliptic.app import create_app

        self.app = create_app(settings, run_workers=run_workers)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            limit_concurrency=4000,
            backlog=4096,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def broker(self):  # type: ignore[no-untyped-def]
        return self.app.state.broker

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture
def server(settings: Settings) -> Iterator[LiveServer]:
    with LiveServer(settings) as live:
        yield live


@pytest.fixture
def http(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client
