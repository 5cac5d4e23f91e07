"""Offers expire: the engine moves them to EXPIRED, frees their capacity, and accepting one is refused."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from tests.broker.requests import accept, command_request
from tests.broker.waiting import wait_for_phase
from tests.conftest import LiveServer, make_settings


@pytest.fixture
def quick_server(tmp_path: Path, database_url: str) -> Iterator[LiveServer]:
    settings = make_settings(tmp_path / "data", database_url, offer_lifetime=timedelta(seconds=1))
    with LiveServer(settings) as live:
        yield live


def test_offers_expire_and_free_their_capacity(quick_server: LiveServer) -> None:
    with httpx.Client(base_url=quick_server.url, timeout=30) as http:
        whole = command_request("true", compute={"cores": {"min": 8}})
        offerset = http.post("requests", json=whole).json()
        assert offerset["result"] == "YES"
        uuids = [offer["meta"]["uuid"] for offer in offerset["offers"]]
        for uuid in uuids:
            expired = wait_for_phase(http, uuid, {"EXPIRED"}, timeout=30)
            assert "expires" not in expired
            assert expired["meta"].get("options", []) == []
        assert quick_server.broker.capacity_in_use() == []
        response = http.post(f"sessions/{uuids[0]}", json=accept())
        assert response.status_code == 409
        assert "expired" in response.json()["message"]
        assert http.post("requests", json=whole).json()["result"] == "YES"


def test_accepting_at_the_deadline_is_refused_even_before_the_sweep(
    tmp_path: Path, database_url: str
) -> None:
    settings = make_settings(tmp_path / "data", database_url, offer_lifetime=timedelta(seconds=1))
    with LiveServer(settings, run_workers=False) as live, httpx.Client(base_url=live.url, timeout=30) as http:
        uuid = http.post("requests", json=command_request("true")).json()["offers"][0]["meta"]["uuid"]
        time.sleep(1.2)
        response = http.post(f"sessions/{uuid}", json=accept())
        assert response.status_code == 409
        assert response.json()["session"]["phase"] == "EXPIRED"
