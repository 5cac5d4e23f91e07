"""Wall-clock mapping, cron matching and exclusion calendars, checked against plain re-implementations."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ecliptic.schedule.calendars import (
    CronError,
    ExclusionCalendar,
    cron_fields,
    cron_matches,
    cron_template,
    next_transition,
    seconds_field,
    wall_to_utc,
)
from ecliptic.schedule.spec import Exclusion

BERLIN = ZoneInfo("Europe/Berlin")


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_wall_to_utc() -> None:
    assert wall_to_utc(datetime(2026, 6, 1, 12, 0), BERLIN) == at("2026-06-01T10:00:00Z")
    # the gap: the jump, for any time in it
    assert wall_to_utc(datetime(2026, 3, 29, 2, 0), BERLIN) == at("2026-03-29T01:00:00Z")
    assert wall_to_utc(datetime(2026, 3, 29, 2, 59, 59, 500), BERLIN) == at("2026-03-29T01:00:00Z")
    # the fold: the first occurrence
    assert wall_to_utc(datetime(2026, 10, 25, 2, 30), BERLIN) == at("2026-10-25T00:30:00Z")
    lord_howe = ZoneInfo("Australia/Lord_Howe")
    assert wall_to_utc(datetime(2026, 10, 4, 2, 10), lord_howe) == at("2026-10-03T15:30:00Z")
    assert wall_to_utc(datetime(2026, 6, 1, 12, 0), UTC) == at("2026-06-01T12:00:00Z")


def test_next_transition() -> None:
    assert next_transition(at("2026-03-28T12:00:00Z"), at("2026-03-29T12:00:00Z"), BERLIN) == at(
        "2026-03-29T01:00:00Z"
    )
    assert next_transition(at("2026-10-24T12:00:00Z"), at("2026-10-25T12:00:00Z"), BERLIN) == at(
        "2026-10-25T01:00:00Z"
    )
    assert next_transition(at("2026-06-01T00:00:00Z"), at("2026-06-02T00:00:00Z"), BERLIN) is None
    assert next_transition(at("2026-03-28T12:00:00Z"), at("2026-03-29T12:00:00Z"), UTC) is None


def test_cron_fields_normalise() -> None:
    assert cron_fields("  0  9 * *   mon-fri ") == "0 9 * * MON-FRI"
    assert cron_fields("@Daily") == "0 0 * * *"
    assert cron_fields("0 0 L * *") == "0 0 L * *"
    assert cron_fields("0 0 * * 5L") == "0 0 * * 5L"
    assert cron_fields("0 0 * * mon#2") == "0 0 * * MON#2"
    with pytest.raises(CronError, match="the week after # must be 1-5"):
        cron_fields("0 0 * * mon#6")
    with pytest.raises(CronError, match="empty list item"):
        cron_fields("0,,5 * * * *")


def test_seconds_field() -> None:
    assert seconds_field("*/15") == (0, 15, 30, 45)
    assert seconds_field("0,30") == (0, 30)
    assert seconds_field("58-59") == (58, 59)
    with pytest.raises(CronError, match="out of range"):
        seconds_field("60")
    with pytest.raises(CronError, match="one cron-style field"):
        seconds_field("0 0")


def test_cron_matches() -> None:
    template = cron_template(cron_fields("*/15 9-17 * * 1-5"), "UTC")
    assert cron_matches(template, datetime(2026, 5, 1, 9, 15, 42))  # a Friday; seconds do not matter
    assert not cron_matches(template, datetime(2026, 5, 2, 9, 15))  # Saturday
    assert not cron_matches(template, datetime(2026, 5, 1, 18, 0))
    assert not cron_matches(template, datetime(2026, 5, 1, 9, 16))
    sunday = cron_template(cron_fields("0 0 * * 7"), "UTC")
    assert cron_matches(sunday, datetime(2026, 5, 3, 0, 0))
    either = cron_template(cron_fields("0 0 1 * 1"), "UTC")  # day-of-month OR day-of-week, as cron does
    assert cron_matches(either, datetime(2026, 5, 1))  # the 1st, a Friday
    assert cron_matches(either, datetime(2026, 5, 4))  # a Monday


# -- exclusions against a plain reading of the rules ----------------------------------------------------------

_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def reference(entries: list[Exclusion], zone: ZoneInfo, instant: datetime) -> bool:
    local = instant.astimezone(zone)
    wall = local.replace(tzinfo=None)
    for entry in entries:
        checks: list[bool] = []
        if entry.dates is not None:
            checks.append(wall.date() in entry.dates)
        if entry.weekdays is not None:
            checks.append(_DAYS[wall.weekday()] in entry.weekdays)
        if entry.daily is not None:
            start, end = entry.daily
            now = wall.time()
            checks.append(start <= now < end if start < end else (now >= start or now < end))
        if entry.during is not None:
            checks.append(entry.during[0] <= instant < entry.during[1])
        if entry.cron is not None:
            checks.append(cron_matches(cron_template(cron_fields(entry.cron), "UTC"), wall))
        if all(checks):
            return True
    return False


ENTRIES: list[dict[str, Any]] = [
    {"weekdays": ["sat", "sun"]},
    {"weekdays": ["sun"]},
    {"daily": ["01:30", "02:45"]},
    {"daily": ["02:15", "03:30"]},
    {"daily": ["23:00", "01:00"]},
    {"dates": ["2026-03-29", "2026-10-25", "2026-11-01"]},
    {"during": ["2026-03-29T00:30:00Z", "2026-03-29T01:30:00Z"]},
    {"cron": "*/20 * * * *"},
    {"cron": "* 2 * * *"},
    {"cron": "* * * * 0"},
    {"weekdays": ["sun"], "daily": ["00:00", "12:00"]},
    {"dates": ["2026-10-25"], "cron": "* 2,3 * * *"},
]
ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "America/Santiago"]
ANCHORS = [at(t) for t in ("2026-03-28T18:00:00Z", "2026-10-24T18:00:00Z", "2026-03-07T18:00:00Z",
                           "2026-10-31T18:00:00Z", "2026-04-04T06:00:00Z", "2026-10-03T06:00:00Z",
                           "2026-04-04T18:00:00Z", "2026-09-05T18:00:00Z")]  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(
    chosen=st.lists(st.sampled_from(ENTRIES), min_size=1, max_size=3),
    zone=st.sampled_from(ZONES),
    anchor=st.sampled_from(ANCHORS),
    offset=st.integers(0, 36 * 3600),
    probes=st.lists(st.floats(0, 1, exclude_max=True), min_size=5, max_size=5),
)
def test_excluded_until_covers_only_excluded_instants(
    chosen: list[dict[str, Any]], zone: str, anchor: datetime, offset: int, probes: list[float]
) -> None:
    entries = [Exclusion.model_validate(entry) for entry in chosen]
    calendar = ExclusionCalendar(entries, zone)
    tz = ZoneInfo(zone)
    instant = anchor + timedelta(seconds=offset)
    assert calendar.excluded(instant) == reference(entries, tz, instant)
    until = calendar.excluded_until(instant)
    if until is None:
        return
    assert until > instant
    span = until - instant
    last = span - timedelta(microseconds=1)
    for probe in [*probes, 0.0]:
        assert reference(entries, tz, instant + min(span * probe, last))
    assert reference(entries, tz, instant + last)


def test_excluded_until_spans() -> None:
    weekend = ExclusionCalendar([Exclusion(weekdays=["sat", "sun"])], "Europe/Berlin")
    assert weekend.excluded_until(at("2026-05-02T10:00:00Z")) == at(
        "2026-05-02T22:00:00Z"
    )  # to local midnight
    lunch = ExclusionCalendar([Exclusion(daily=(time(12), time(13)))], "UTC")
    assert lunch.excluded_until(at("2026-05-01T12:10:00Z")) == at("2026-05-01T13:00:00Z")
    assert lunch.excluded_until(at("2026-05-01T13:00:00Z")) is None
    night = ExclusionCalendar([Exclusion(daily=(time(22), time(6)))], "UTC")
    assert night.excluded_until(at("2026-05-01T23:00:00Z")) == at("2026-05-02T06:00:00Z")
    assert night.excluded_until(at("2026-05-02T01:00:00Z")) == at("2026-05-02T06:00:00Z")
    # a window that crosses a change of offset is cut at the change (then read again)
    early = ExclusionCalendar([Exclusion(daily=(time(1), time(4)))], "Europe/Berlin")
    assert early.excluded_until(at("2026-10-25T00:10:00Z")) == at("2026-10-25T01:00:00Z")
    assert early.excluded_until(at("2026-10-25T01:00:00Z")) == at("2026-10-25T03:00:00Z")
    holiday = ExclusionCalendar([Exclusion(dates=[date(2026, 12, 25)])], "UTC")
    assert holiday.excluded_until(at("2026-12-25T08:00:00Z")) == at("2026-12-26T00:00:00Z")
    every_minute = ExclusionCalendar([Exclusion(cron="* * * * *")], "UTC")
    assert every_minute.excluded_until(at("2026-12-25T08:00:10Z")) == at("2026-12-26T00:00:00Z")
    hour_two = ExclusionCalendar([Exclusion(cron="* 2 * * *")], "UTC")
    assert hour_two.excluded_until(at("2026-12-25T02:10:00Z")) == at("2026-12-25T03:00:00Z")
    quarter = ExclusionCalendar([Exclusion(cron="*/15 * * * *")], "UTC")
    assert quarter.excluded_until(at("2026-12-25T02:15:30Z")) == at("2026-12-25T02:16:00Z")
