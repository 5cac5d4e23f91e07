"""Accepted sessions that will stage from a source count against its bandwidth before they start staging.

Without workers the accepted sessions never stage, so what the estimates see can only come from the store: the
same store a second broker reads.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from ecliptic.store import Database
from ecliptic.store.tables import Base
from tests.broker.requests import accept, command_request
from tests.broker.test_data_staging import PAYLOAD, data_url  # noqa: F401 (a fixture)
from tests.conftest import LiveServer, make_settings
from tests.migrations import alembic_run

RATE = 64_000.0
"""Bytes per second, no latency: an estimate is the payload's size over the rate, times the transfers sharing."""


def _settings(tmp_path: Path, database_url: str, name: str) -> Any:
    return make_settings(
        tmp_path / name,
        database_url,
        transfer_rates={"http:127.0.0.1:*": {"rate": f"{RATE / 1000:g} kB/s", "latency": 0}},
    )


@pytest.fixture
def brokers(tmp_path: Path, database_url: str) -> Iterator[tuple[httpx.Client, httpx.Client]]:
    with (
        LiveServer(_settings(tmp_path, database_url, "one"), run_workers=False) as one,
        LiveServer(_settings(tmp_path, database_url, "two"), run_workers=False) as two,
        httpx.Client(base_url=one.url, timeout=30) as first,
        httpx.Client(base_url=two.url, timeout=30) as second,
    ):
        yield first, second


def _offer(http: httpx.Client, location: str) -> dict[str, Any]:
    body = command_request("true")
    body["data"] = [{"meta": {"name": "cube"}, "location": location}]
    offerset = http.post("requests", json=body).json()
    assert offerset["result"] == "YES", offerset["meta"]["messages"]
    return offerset["offers"][0]


def _estimate(offer: dict[str, Any]) -> float:
    return float(offer["data"][0]["staging"]["estimated_seconds"])


def _accept_new(http: httpx.Client, location: str) -> str:
    uuid = str(_offer(http, location)["meta"]["uuid"])
    assert http.post(f"sessions/{uuid}", json=accept()).status_code == 200
    return uuid


def test_accepted_sessions_share_the_source_in_later_estimates_on_every_broker(
    brokers: tuple[httpx.Client, httpx.Client],
    data_url: str,  # noqa: F811
) -> None:
    first, second = brokers
    alone = len(PAYLOAD) / RATE
    lone = _offer(first, data_url)
    assert _estimate(lone) == pytest.approx(alone, rel=0.01)
    # Offers made but not accepted do not count: most are never taken.
    assert _estimate(_offer(first, data_url)) == pytest.approx(alone, rel=0.01)

    for _ in range(3):
        _accept_new(first, data_url)
    assert _estimate(_offer(first, data_url)) == pytest.approx(4 * alone, rel=0.01)
    # The other broker has no transfer of its own running, and sees the same three.
    assert _estimate(_offer(second, data_url)) == pytest.approx(4 * alone, rel=0.01)


def test_sessions_that_ended_no_longer_count(
    brokers: tuple[httpx.Client, httpx.Client],
    data_url: str,  # noqa: F811
) -> None:
    first, _ = brokers
    alone = len(PAYLOAD) / RATE
    accepted = [_accept_new(first, data_url) for _ in range(2)]
    assert _estimate(_offer(first, data_url)) == pytest.approx(3 * alone, rel=0.01)
    assert first.post(f"sessions/{accepted[0]}", json=accept("CANCELLED")).status_code == 200
    assert _estimate(_offer(first, data_url)) == pytest.approx(2 * alone, rel=0.01)


def test_migration_0004_adds_the_staging_source_and_matches_the_model(database_url: str) -> None:
    alembic_run(database_url, command.upgrade, "0003")
    database = Database(database_url)
    try:
        assert "staging_source" not in {c["name"] for c in inspect(database.engine).get_columns("components")}
        alembic_run(database_url, command.upgrade, "head")
        inspector = inspect(database.engine)
        columns = {c["name"]: c for c in inspector.get_columns("components")}
        assert {"staging_source", "staging_bytes"} <= set(columns)
        in_flight = next(c for c in inspector.get_columns("transfers") if c["name"] == "in_flight")
        assert in_flight["type"].python_type is float
        assert "ix_components_staging_source" in {i["name"] for i in inspector.get_indexes("components")}
        with database.engine.connect() as conn:
            differences = compare_metadata(MigrationContext.configure(conn), Base.metadata)
            assert [d for d in differences if "components" in repr(d) or "transfers" in repr(d)] == []
        alembic_run(database_url, command.downgrade, "0003")
        assert "staging_source" not in {c["name"] for c in inspect(database.engine).get_columns("components")}
    finally:
        database.dispose()
