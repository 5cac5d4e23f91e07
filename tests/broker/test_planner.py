"""Offer generation against a partly booked platform, through the broker library (no workers run)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from ecliptic.app import Services, build_services
from ecliptic.broker.schema import ExecutionRequest, PhaseUpdate
from ecliptic.isotime import format_instant, utcnow
from tests.broker.requests import command_request
from tests.conftest import make_settings


@pytest.fixture
def services(tmp_path: Path, database_url: str) -> Iterator[Services]:
    built = build_services(make_settings(tmp_path / "data", database_url))
    yield built
    built.db.dispose()


def _request(cores: tuple[int, int], duration: str, window: str | None = None) -> ExecutionRequest:
    body: dict[str, Any] = command_request(
        "true", duration=duration, compute={"cores": {"min": cores[0], "max": cores[1]}}
    )
    if window is not None:
        body["schedule"]["requested"]["start"] = window
    return ExecutionRequest.model_validate(body)


def _hold(services: Services, cores: int, duration: str) -> None:
    """Accept an offer for ``cores`` now; with no workers it stays ACCEPTED and keeps holding them."""
    offerset = services.broker.request_offers(_request((cores, cores), duration))
    session, refused = services.broker.update(offerset.sessions[0].uuid, PhaseUpdate(value="ACCEPTED"))
    assert refused is None and session.phase == "ACCEPTED"


def test_first_offer_fits_now_and_a_bigger_one_follows(services: Services) -> None:
    _hold(services, 6, "PT1H")
    offerset = services.broker.request_offers(_request((2, 8), "PT30M"))
    offers = offerset.sessions
    assert offerset.result == "YES" and len(offers) >= 2
    now = utcnow()
    assert offers[0].cores == 2 and offers[0].available_start < now + timedelta(minutes=1)
    bigger = [o for o in offers if o.cores == 8]
    assert bigger and bigger[0].available_start >= now + timedelta(minutes=59)
    assert all(2 <= o.cores <= 8 for o in offers)
    starts = [o.available_start for o in offers]
    assert len(set(starts)) == len(starts)


def test_the_window_end_is_honoured(services: Services) -> None:
    _hold(services, 8, "PT1H")
    now = utcnow()
    closes_too_soon = f"{format_instant(now)}/PT30M"
    refused = services.broker.request_offers(_request((1, 1), "PT10M", closes_too_soon))
    assert refused.result == "NO"
    assert refused.messages[0]["kind"] == "urn:no-capacity"
    later = services.broker.request_offers(_request((1, 1), "PT10M", f"{format_instant(now)}/PT3H"))
    assert later.result == "YES"
    for offer in later.sessions:
        assert now + timedelta(hours=1) <= offer.available_start <= now + timedelta(hours=3)


def test_expired_offers_no_longer_hold_capacity(
    services: Services, tmp_path: Path, database_url: str
) -> None:
    short = build_services(
        make_settings(tmp_path / "short", database_url, offer_lifetime=timedelta(seconds=0))
    )
    try:
        first = short.broker.request_offers(_request((8, 8), "PT1H"))
        assert first.result == "YES"
        second = short.broker.request_offers(_request((8, 8), "PT1H"))
        assert second.result == "YES"  # the first set expired the moment it was made
        assert second.sessions[0].available_start - first.sessions[0].available_start < timedelta(seconds=5)
    finally:
        short.db.dispose()
