from datetime import UTC, datetime, timedelta

import pytest

from ecliptic.isotime import (
    IsoTimeError,
    format_duration,
    format_instant,
    parse_duration,
    parse_instant,
    parse_interval,
)


def test_instants_with_zone_fraction_and_date_only() -> None:
    assert parse_instant("2025-11-25T05:27:10.440116Z") == datetime(
        2025, 11, 25, 5, 27, 10, 440116, tzinfo=UTC
    )
    assert parse_instant("2025-11-25T06:00:00+01:00") == datetime(2025, 11, 25, 5, 0, tzinfo=UTC)
    assert parse_instant("2023-08-09") == datetime(2023, 8, 9, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("PT30M", timedelta(minutes=30)),
        ("PT2H", timedelta(hours=2)),
        ("P1D", timedelta(days=1)),
        ("P1W", timedelta(weeks=1)),
        ("PT0.5S", timedelta(milliseconds=500)),
    ],
)
def test_durations(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


def test_calendar_durations_resolve_from_their_start() -> None:
    assert parse_duration("P1M", at=datetime(2026, 2, 1, tzinfo=UTC)) == timedelta(days=28)
    assert parse_duration("P1Y", at=datetime(2024, 1, 1, tzinfo=UTC)) == timedelta(days=366)


@pytest.mark.parametrize("text", ["", "1H", "PTXM", "P-1D", "soon"])
def test_bad_durations_say_what_is_wrong(text: str) -> None:
    with pytest.raises(IsoTimeError, match="duration"):
        parse_duration(text)


def test_intervals_of_every_form() -> None:
    start = datetime(2023, 8, 9, tzinfo=UTC)
    assert parse_interval("2023-08-09/PT2H").end == start + timedelta(hours=2)
    assert parse_interval("2023-08-09T00:00:00Z/2023-08-09T03:00:00Z").duration == timedelta(hours=3)
    whole_day = parse_interval("2023-08-09")
    assert (whole_day.start, whole_day.end) == (start, start + timedelta(days=1))
    exact = parse_interval("2023-08-09T10:00:00Z")
    assert exact.start == exact.end
    assert parse_interval("2023-08-09/2023-08-10").duration == timedelta(days=2)


@pytest.mark.parametrize(
    "text",
    [
        "PT1H/2023-08-09T00:00:00Z",
        "2023-08-09T03:00:00Z/2023-08-09T01:00:00Z",
        "a/b",
        "2023-08-09/",
        "/PT1H",
        "2023-08-09/PT1H/PT1H",
    ],
)
def test_bad_intervals(text: str) -> None:
    with pytest.raises(IsoTimeError):
        parse_interval(text)


def test_formatting_round_trips() -> None:
    value = datetime(2026, 1, 2, 3, 4, 5, 600000, tzinfo=UTC)
    assert format_instant(value) == "2026-01-02T03:04:05.6Z"
    assert parse_instant(format_instant(value)) == value
    for delta in (
        timedelta(0),
        timedelta(seconds=90),
        timedelta(days=1, hours=2),
        timedelta(milliseconds=250),
    ):
        assert parse_duration(format_duration(delta)) == delta
