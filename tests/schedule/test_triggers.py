"""Fire times of triggers: weekdays, DST in several zones, seconds, macros, windows, exclusions, words."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from ecliptic.schedule import triggers
from ecliptic.schedule.calendars import ExclusionCalendar
from ecliptic.schedule.spec import ScheduleSpec

CREATED = datetime(2026, 1, 1, tzinfo=UTC)


def make(trigger: dict[str, Any], **fields: Any) -> ScheduleSpec:
    return ScheduleSpec.model_validate({"name": "t", "trigger": trigger, "run": {"cmd": "true"}, **fields})


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def fires(spec: ScheduleSpec, after: str, count: int, created: datetime = CREATED) -> list[str]:
    compiled = triggers.compile_trigger(spec, created)
    out: list[str] = []
    moment: datetime | None = at(after)
    for _ in range(count):
        assert moment is not None
        moment = compiled.next_after(moment)
        if moment is None:
            break
        assert moment.tzinfo is UTC
        out.append(moment.strftime("%Y-%m-%dT%H:%M:%SZ"))
    return out


def cron(expr: str, zone: str = "UTC", **fields: Any) -> ScheduleSpec:
    return make({"cron": expr}, timezone=zone, **fields)


def rejected(trigger: dict[str, Any], **fields: Any) -> str:
    with pytest.raises(ValidationError) as info:
        make(trigger, **fields)
    return str(info.value)


# -- weekdays -----------------------------------------------------------------------------------------------


def test_weekdays_fire_monday_to_friday_only() -> None:
    # 2026-05-01 is a Friday. APScheduler's from_crontab reads 1-5 as Tuesday-Saturday: not here.
    assert fires(cron("0 9 * * 1-5"), "2026-05-01T00:00:00Z", 7) == [
        "2026-05-01T09:00:00Z",
        "2026-05-04T09:00:00Z",
        "2026-05-05T09:00:00Z",
        "2026-05-06T09:00:00Z",
        "2026-05-07T09:00:00Z",
        "2026-05-08T09:00:00Z",
        "2026-05-11T09:00:00Z",
    ]
    assert fires(cron("0 9 * * mon-fri"), "2026-05-01T00:00:00Z", 7) == fires(
        cron("0 9 * * 1-5"), "2026-05-01T00:00:00Z", 7
    )


@pytest.mark.parametrize("expr", ["0 0 * * 0", "0 0 * * 7", "0 0 * * SUN", "0 0 * * sun", "@weekly"])
def test_zero_seven_and_names_are_sunday(expr: str) -> None:
    times = fires(cron(expr), "2026-05-01T00:00:00Z", 3)
    assert times == ["2026-05-03T00:00:00Z", "2026-05-10T00:00:00Z", "2026-05-17T00:00:00Z"]
    assert all(at(t).weekday() == 6 for t in times)


def test_every_minute_on_day_seven_is_sunday() -> None:
    assert fires(cron("* * * * 7"), "2026-05-01T00:00:00Z", 2) == [
        "2026-05-03T00:00:00Z",
        "2026-05-03T00:01:00Z",
    ]
    assert fires(cron("59 23 * * 7"), "2026-05-01T00:00:00Z", 1) == ["2026-05-03T23:59:00Z"]


def test_month_names_and_case() -> None:
    assert fires(cron("0 12 1 JAN,jul *"), "2026-05-01T00:00:00Z", 2) == [
        "2026-07-01T12:00:00Z",
        "2027-01-01T12:00:00Z",
    ]


# -- DST: Europe/Berlin (2026-03-29 02:00 -> 03:00, 2026-10-25 03:00 -> 02:00) -------------------------------

BERLIN = "Europe/Berlin"
NEW_YORK = "America/New_York"


def test_berlin_fixed_time_in_the_gap_fires_once_right_after_the_jump() -> None:
    assert fires(cron("30 2 * * *", BERLIN), "2026-03-27T12:00:00Z", 3) == [
        "2026-03-28T01:30:00Z",  # 02:30 CET
        "2026-03-29T01:00:00Z",  # 02:30 does not exist: 03:00 CEST, the jump
        "2026-03-30T00:30:00Z",  # 02:30 CEST
    ]


def test_berlin_fixed_time_in_the_fold_fires_once() -> None:
    assert fires(cron("30 2 * * *", BERLIN), "2026-10-24T12:00:00Z", 2) == [
        "2026-10-25T00:30:00Z",  # 02:30 CEST, the first 02:30; not again at 02:30 CET (01:30Z)
        "2026-10-26T01:30:00Z",
    ]
    # asked from inside the second pass of the repeated hour, the next one is the next day
    assert fires(cron("30 2 * * *", BERLIN), "2026-10-25T01:10:00Z", 1) == ["2026-10-26T01:30:00Z"]


def test_berlin_hourly_and_half_hourly_follow_real_time() -> None:
    assert fires(cron("0 * * * *", BERLIN), "2026-03-28T23:30:00Z", 3) == [
        "2026-03-29T00:00:00Z",  # 01:00 CET
        "2026-03-29T01:00:00Z",  # 03:00 CEST (02:00 never happens)
        "2026-03-29T02:00:00Z",  # 04:00 CEST
    ]
    assert fires(cron("0 * * * *", BERLIN), "2026-10-24T23:30:00Z", 3) == [
        "2026-10-25T00:00:00Z",  # 02:00 CEST
        "2026-10-25T01:00:00Z",  # 02:00 CET, again
        "2026-10-25T02:00:00Z",  # 03:00 CET
    ]
    assert fires(cron("*/30 * * * *", BERLIN), "2026-03-28T23:45:00Z", 4) == [
        "2026-03-29T00:00:00Z",
        "2026-03-29T00:30:00Z",
        "2026-03-29T01:00:00Z",
        "2026-03-29T01:30:00Z",
    ]
    assert fires(cron("*/30 * * * *", BERLIN), "2026-10-24T23:45:00Z", 5) == [
        "2026-10-25T00:00:00Z",  # 02:00 CEST
        "2026-10-25T00:30:00Z",  # 02:30 CEST
        "2026-10-25T01:00:00Z",  # 02:00 CET
        "2026-10-25T01:30:00Z",  # 02:30 CET
        "2026-10-25T02:00:00Z",  # 03:00 CET
    ]


def test_berlin_daily_job_keeps_its_local_time() -> None:
    assert fires(cron("0 9 * * *", BERLIN), "2026-03-28T00:00:00Z", 2) == [
        "2026-03-28T08:00:00Z",
        "2026-03-29T07:00:00Z",
    ]
    assert fires(cron("0 9 * * *", BERLIN), "2026-10-24T00:00:00Z", 2) == [
        "2026-10-24T07:00:00Z",
        "2026-10-25T08:00:00Z",
    ]


# -- DST: America/New_York (2026-03-08 02:00 -> 03:00, 2026-11-01 02:00 -> 01:00) ----------------------------


def test_new_york_gap_and_fold() -> None:
    assert fires(cron("30 2 * * *", NEW_YORK), "2026-03-07T00:00:00Z", 3) == [
        "2026-03-07T07:30:00Z",  # 02:30 EST
        "2026-03-08T07:00:00Z",  # 03:00 EDT, the jump
        "2026-03-09T06:30:00Z",  # 02:30 EDT
    ]
    assert fires(cron("30 1 * * *", NEW_YORK), "2026-10-31T00:00:00Z", 3) == [
        "2026-10-31T05:30:00Z",
        "2026-11-01T05:30:00Z",  # 01:30 EDT only, not 01:30 EST (06:30Z)
        "2026-11-02T06:30:00Z",
    ]
    # 02:30 is not ambiguous in New York on fold night: once, in EST
    assert fires(cron("30 2 * * *", NEW_YORK), "2026-11-01T00:00:00Z", 1) == ["2026-11-01T07:30:00Z"]


def test_new_york_hourly_and_daily() -> None:
    assert fires(cron("0 * * * *", NEW_YORK), "2026-03-08T05:30:00Z", 3) == [
        "2026-03-08T06:00:00Z",  # 01:00 EST
        "2026-03-08T07:00:00Z",  # 03:00 EDT
        "2026-03-08T08:00:00Z",
    ]
    assert fires(cron("0 * * * *", NEW_YORK), "2026-11-01T04:30:00Z", 3) == [
        "2026-11-01T05:00:00Z",  # 01:00 EDT
        "2026-11-01T06:00:00Z",  # 01:00 EST
        "2026-11-01T07:00:00Z",  # 02:00 EST
    ]
    assert fires(cron("*/30 * * * *", NEW_YORK), "2026-11-01T04:45:00Z", 5) == [
        "2026-11-01T05:00:00Z",
        "2026-11-01T05:30:00Z",
        "2026-11-01T06:00:00Z",
        "2026-11-01T06:30:00Z",
        "2026-11-01T07:00:00Z",
    ]
    assert fires(cron("0 9 * * *", NEW_YORK), "2026-03-07T00:00:00Z", 2) == [
        "2026-03-07T14:00:00Z",
        "2026-03-08T13:00:00Z",
    ]
    assert fires(cron("0 9 * * *", NEW_YORK), "2026-10-31T00:00:00Z", 2) == [
        "2026-10-31T13:00:00Z",
        "2026-11-01T14:00:00Z",
    ]


def test_lord_howe_half_hour_change() -> None:
    # +11:00 -> +10:30 at 2026-04-05 02:00 (01:30-02:00 twice); +10:30 -> +11:00 at 2026-10-04 02:00 (to 02:30)
    zone = "Australia/Lord_Howe"
    assert fires(cron("45 1 * * *", zone), "2026-04-04T12:00:00Z", 2) == [
        "2026-04-04T14:45:00Z",
        "2026-04-05T15:15:00Z",
    ]
    assert fires(cron("15 2 * * *", zone), "2026-10-03T12:00:00Z", 2) == [
        "2026-10-03T15:30:00Z",  # 02:15 does not exist: 02:30 LHDT, the jump
        "2026-10-04T15:15:00Z",
    ]


def test_intervals_keep_utc_spacing_across_dst() -> None:
    spec = make({"every": "1h", "anchor": "2026-03-28T22:00:00Z"}, timezone=BERLIN)
    assert fires(spec, "2026-03-29T00:00:00Z", 3) == [
        "2026-03-29T01:00:00Z",
        "2026-03-29T02:00:00Z",
        "2026-03-29T03:00:00Z",
    ]
    spec = make({"every": "30m", "anchor": "2026-11-01T00:00:00Z"}, timezone=NEW_YORK)
    assert fires(spec, "2026-11-01T05:10:00Z", 3) == [
        "2026-11-01T05:30:00Z",
        "2026-11-01T06:00:00Z",
        "2026-11-01T06:30:00Z",
    ]


def test_rrule_uses_the_cron_dst_rules() -> None:
    spec = make({"rrule": "FREQ=DAILY;BYHOUR=2;BYMINUTE=30"}, timezone=BERLIN)
    assert fires(spec, "2026-03-27T12:00:00Z", 3) == fires(
        cron("30 2 * * *", BERLIN), "2026-03-27T12:00:00Z", 3
    )
    assert fires(spec, "2026-03-27T12:00:00Z", 3)[1] == "2026-03-29T01:00:00Z"
    assert fires(spec, "2026-10-24T12:00:00Z", 2) == ["2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"]
    spec = make({"rrule": "RRULE:FREQ=DAILY;BYHOUR=1;BYMINUTE=30"}, timezone=NEW_YORK)
    assert fires(spec, "2026-10-31T12:00:00Z", 2) == ["2026-11-01T05:30:00Z", "2026-11-02T06:30:00Z"]


def test_rrule_hourly_runs_on_the_wall_clock() -> None:
    spec = make({"rrule": "FREQ=HOURLY;BYMINUTE=0"}, timezone=BERLIN)
    # the gap's 02:00 and 03:00 are the same instant: one fire; the repeated 02:00 fires only the first time
    assert fires(spec, "2026-03-28T23:30:00Z", 3) == [
        "2026-03-29T00:00:00Z",
        "2026-03-29T01:00:00Z",
        "2026-03-29T02:00:00Z",
    ]
    assert fires(spec, "2026-10-24T23:30:00Z", 3) == [
        "2026-10-25T00:00:00Z",
        "2026-10-25T02:00:00Z",
        "2026-10-25T03:00:00Z",
    ]


def test_seconds_follow_the_minutes_through_dst() -> None:
    spec = make({"cron": "30 2 * * *", "second": "0,30"}, timezone=BERLIN)
    assert fires(spec, "2026-03-28T12:00:00Z", 3) == [
        "2026-03-29T01:00:00Z",
        "2026-03-29T01:00:30Z",
        "2026-03-30T00:30:00Z",
    ]
    assert fires(spec, "2026-10-24T12:00:00Z", 3) == [
        "2026-10-25T00:30:00Z",
        "2026-10-25T00:30:30Z",
        "2026-10-26T01:30:00Z",
    ]


# -- seconds, macros, validation ------------------------------------------------------------------------------


def test_second_field() -> None:
    spec = make({"cron": "0 9 * * *", "second": "*/15"})
    assert fires(spec, "2026-05-01T08:00:00Z", 5) == [
        "2026-05-01T09:00:00Z",
        "2026-05-01T09:00:15Z",
        "2026-05-01T09:00:30Z",
        "2026-05-01T09:00:45Z",
        "2026-05-02T09:00:00Z",
    ]
    # from inside a fire minute, and from a fraction of a second
    assert fires(spec, "2026-05-01T09:00:20Z", 1) == ["2026-05-01T09:00:30Z"]
    assert fires(make({"cron": "* * * * *", "second": "10"}), "2026-05-01T09:00:09.999Z", 2) == [
        "2026-05-01T09:00:10Z",
        "2026-05-01T09:01:10Z",
    ]


@pytest.mark.parametrize(
    ("macro", "expected"),
    [
        ("@hourly", "2026-05-01T11:00:00Z"),
        ("@daily", "2026-05-02T00:00:00Z"),
        ("@midnight", "2026-05-02T00:00:00Z"),
        ("@weekly", "2026-05-03T00:00:00Z"),
        ("@monthly", "2026-06-01T00:00:00Z"),
        ("@yearly", "2027-01-01T00:00:00Z"),
        ("@annually", "2027-01-01T00:00:00Z"),
        ("@DAILY", "2026-05-02T00:00:00Z"),
    ],
)
def test_macros(macro: str, expected: str) -> None:
    assert fires(cron(macro), "2026-05-01T10:20:00Z", 1) == [expected]


def test_six_fields_are_rejected_pointing_at_second() -> None:
    message = rejected({"cron": "*/10 * * * * *"})
    assert "6 fields" in message and "second:" in message


@pytest.mark.parametrize(
    ("expr", "words"),
    [
        ("0 9 * * 8", "day-of-week 8 is out of range (0-7, 0 and 7 = Sunday, or mon-sun)"),
        ("60 9 * * *", "minute 60 is out of range (0-59)"),
        ("0 24 * * *", "hour 24 is out of range (0-23)"),
        ("0 9 0 * *", "day-of-month 0 is out of range"),
        ("0 9 * 13 *", "month 13 is out of range (1-12 or jan-dec)"),
        ("0 9 * * monday", "day-of-week 'monday' is not a value"),
        ("0 9 * * fri-mon", "range fri-mon runs backwards"),
        ("*/0 * * * *", "the step after / must be a whole number > 0"),
        ("0 9 ? * *", "'?' is Quartz syntax"),
        ("0 0 30 2 *", "never occurs"),
        ("0 9 * *", "has 4 fields; cron needs 5"),
        ("@reboot", "is not a cron macro"),
    ],
)
def test_bad_cron_names_the_field(expr: str, words: str) -> None:
    message = rejected({"cron": expr})
    assert f"cron {expr!r}" in message and words in message


@pytest.mark.parametrize(
    ("second", "words"), [("75", "second 75 is out of range (0-59)"), ("x", "not a value")]
)
def test_bad_second_field(second: str, words: str) -> None:
    assert words in rejected({"cron": "* * * * *", "second": second})


@pytest.mark.parametrize(
    ("rule", "words"),
    [
        ("FREQ=FOO", "FREQ=FOO is not one of"),
        ("BYHOUR=9", "has no FREQ"),
        ("FREQ=DAILY;BYHOUR=25", "BYHOUR value 25 is out of range (0-23)"),
        ("FREQ=DAILY;INTERVAL=0", "INTERVAL must be a whole number of at least 1"),
        ("FREQ=DAILY;BYDAY=XX", "BYDAY 'XX' is not a day"),
        ("FREQ=DAILY;BYSOMETHING=1", "BYSOMETHING is not an RRULE part"),
        ("FREQ=DAILY;COUNT=3;UNTIL=20261231", "COUNT or UNTIL, not both"),
        ("FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=30", "BYMONTHDAY never occurs"),
        ("FREQ=DAILY\nEXDATE:20260101T000000", "exclude:"),
        ("FREQ=DAILY;UNTIL=2026-13-01", "not a valid date"),
        ("garbage", "is not supported"),
    ],
)
def test_bad_rrule(rule: str, words: str) -> None:
    assert words in rejected({"rrule": rule})


def test_bad_exclusions_name_the_entry() -> None:
    assert "exclude[1].cron '0 9 * * 8': day-of-week 8" in rejected(
        {"every": "1h"}, exclude=[{"weekdays": ["sat"]}, {"cron": "0 9 * * 8"}]
    )
    assert "exclude[0].daily" in rejected({"every": "1h"}, exclude=[{"daily": ["12:00", "12:00"]}])
    assert "exclude[0].daily" in rejected({"every": "1h"}, exclude=[{"daily": ["12:00+01:00", "13:00"]}])
    assert "exclude[0].during" in rejected(
        {"every": "1h"}, exclude=[{"during": ["2026-05-02T00:00:00Z", "2026-05-01T00:00:00Z"]}]
    )


# -- window, once, intervals --------------------------------------------------------------------------------


def test_start_and_end_window() -> None:
    spec = cron("0 * * * *", start="2026-05-01T10:30:00Z", end="2026-05-01T13:00:00Z")
    assert fires(spec, "2026-05-01T00:00:00Z", 5) == [
        "2026-05-01T11:00:00Z",
        "2026-05-01T12:00:00Z",
        "2026-05-01T13:00:00Z",  # at end still fires; after it nothing
    ]
    # a fire time exactly at start counts
    assert fires(cron("0 * * * *", start="2026-05-01T10:00:00Z"), "2026-05-01T00:00:00Z", 1) == [
        "2026-05-01T10:00:00Z"
    ]


def test_once() -> None:
    spec = make({"once": "2026-12-01T09:00:00Z"})
    assert fires(spec, "2026-11-30T00:00:00Z", 2) == ["2026-12-01T09:00:00Z"]
    assert fires(spec, "2026-12-01T09:00:00Z", 1) == []  # past (or exactly now): never again
    assert fires(make({"once": "now"}), "2025-12-31T23:59:59Z", 2) == ["2026-01-01T00:00:00Z"]
    assert fires(make({"once": "now"}, start="2026-02-01T00:00:00Z"), "2025-12-31T00:00:00Z", 1) == [
        "2026-02-01T00:00:00Z"
    ]
    # an instant before start or after end never fires
    assert (
        fires(make({"once": "2026-12-01T09:00:00Z"}, start="2026-12-02T00:00:00Z"), "2026-01-01T00:00:00Z", 1)
        == []
    )
    assert (
        fires(make({"once": "2026-12-01T09:00:00Z"}, end="2026-11-02T00:00:00Z"), "2026-01-01T00:00:00Z", 1)
        == []
    )


def test_rate_interval_grid() -> None:
    spec = make({"every": "10s"})
    assert fires(spec, "2025-12-31T23:00:00Z", 2) == ["2026-01-01T00:00:00Z", "2026-01-01T00:00:10Z"]
    assert fires(spec, "2026-01-01T00:00:10Z", 1) == ["2026-01-01T00:00:20Z"]
    assert fires(spec, "2026-01-01T00:00:10.5Z", 1) == ["2026-01-01T00:00:20Z"]
    spec = make({"every": "1.5s", "anchor": "2026-05-01T00:00:00Z"})
    compiled = triggers.compile_trigger(spec, CREATED)
    assert compiled.next_after(at("2026-05-01T00:00:02Z")) == at("2026-05-01T00:00:03Z")
    assert compiled.next_after(at("2026-05-01T00:00:03Z")) == at("2026-05-01T00:00:04.5Z")
    # without an anchor, the grid starts at the window's start: every hour from 05:30 is 05:30, 06:30, …
    assert fires(make({"every": "1h"}, start="2026-01-01T05:30:00Z"), "2026-01-01T00:00:00Z", 2) == [
        "2026-01-01T05:30:00Z",
        "2026-01-01T06:30:00Z",
    ]
    # with one, start moves the first fire onto the first grid point at or after it
    spec = make({"every": "1h", "anchor": "2026-01-01T00:00:00Z"}, start="2026-01-01T05:30:00Z")
    assert fires(spec, "2026-01-01T00:00:00Z", 1) == ["2026-01-01T06:00:00Z"]


def test_delay_interval() -> None:
    spec = make({"every": "10s", "mode": "delay"})
    compiled = triggers.compile_trigger(spec, CREATED)
    assert compiled.next_after(at("2026-05-01T12:00:03.25Z")) == at("2026-05-01T12:00:13.25Z")
    spec = make({"every": "10s", "mode": "delay"}, start="2026-06-01T00:00:00Z", end="2026-06-02T00:00:00Z")
    compiled = triggers.compile_trigger(spec, CREATED)
    assert compiled.next_after(at("2026-05-01T00:00:00Z")) == at("2026-06-01T00:00:00Z")
    assert compiled.next_after(at("2026-06-01T23:59:55Z")) is None
    spec = make({"every": "10s", "mode": "delay"}, exclude=[{"daily": ["12:00", "13:00"]}])
    compiled = triggers.compile_trigger(spec, CREATED)
    assert compiled.next_after(at("2026-05-01T11:59:55Z")) == at("2026-05-01T13:00:00Z")


def test_naive_after_is_utc() -> None:
    compiled = triggers.compile_trigger(cron("0 9 * * *"), CREATED)
    assert compiled.next_after(datetime(2026, 5, 1)) == at("2026-05-01T09:00:00Z")


# -- RRULE ----------------------------------------------------------------------------------------------------


def test_rrule_weekly_and_dtstart() -> None:
    spec = make({"rrule": "FREQ=WEEKLY;BYDAY=MO,WE;BYHOUR=9;BYMINUTE=0"}, timezone="Europe/Vienna")
    assert fires(spec, "2026-05-01T00:00:00Z", 3) == [
        "2026-05-04T07:00:00Z",
        "2026-05-06T07:00:00Z",
        "2026-05-11T07:00:00Z",
    ]
    # the default start is the creation time to the minute: seconds do not leak into the fire times
    created = at("2026-05-01T06:17:33.5Z")
    assert fires(make({"rrule": "FREQ=DAILY;BYHOUR=9;BYMINUTE=0"}), "2026-05-01T07:00:00Z", 1, created) == [
        "2026-05-01T09:00:00Z"
    ]
    assert fires(make({"rrule": "FREQ=MINUTELY;INTERVAL=10"}), "2026-05-01T07:00:00Z", 2, created) == [
        "2026-05-01T07:07:00Z",
        "2026-05-01T07:17:00Z",
    ]
    line = "DTSTART;TZID=America/New_York:20260105T090000\nRRULE:FREQ=WEEKLY;INTERVAL=2;COUNT=3"
    assert fires(make({"rrule": line}, timezone=BERLIN), "2026-01-01T00:00:00Z", 5) == [
        "2026-01-05T14:00:00Z",
        "2026-01-19T14:00:00Z",
        "2026-02-02T14:00:00Z",
    ]
    spec = make({"rrule": "FREQ=DAILY;BYHOUR=8;BYMINUTE=0", "dtstart": "2026-05-10T00:00:00Z"})
    assert fires(spec, "2026-05-01T00:00:00Z", 1) == ["2026-05-10T08:00:00Z"]
    assert "not both" in rejected(
        {"rrule": "DTSTART:20260101T000000Z RRULE:FREQ=DAILY", "dtstart": "2026-01-01"}
    )


def test_rrule_until() -> None:
    spec = make({"rrule": "FREQ=DAILY;BYHOUR=9;BYMINUTE=0;UNTIL=20260503"}, timezone=BERLIN)
    assert fires(spec, "2026-05-01T00:00:00Z", 5) == [
        "2026-05-01T07:00:00Z",
        "2026-05-02T07:00:00Z",
        "2026-05-03T07:00:00Z",  # a date UNTIL includes that day
    ]
    spec = make({"rrule": "FREQ=DAILY;BYHOUR=9;BYMINUTE=0;UNTIL=20260502T070000Z"}, timezone=BERLIN)
    assert fires(spec, "2026-05-01T00:00:00Z", 5) == ["2026-05-01T07:00:00Z", "2026-05-02T07:00:00Z"]


def test_rrule_far_from_its_start_and_sequential() -> None:
    spec = make({"rrule": "FREQ=SECONDLY;INTERVAL=7"}, timezone=BERLIN)
    compiled = triggers.compile_trigger(spec, CREATED)
    far = at("2036-05-01T00:00:00Z")
    first = compiled.next_after(far)
    assert first is not None and 0 < (first - far).total_seconds() <= 7

    def wall(moment: datetime) -> datetime:
        return moment.astimezone(ZoneInfo(BERLIN)).replace(tzinfo=None)

    assert (wall(first) - wall(CREATED)).total_seconds() % 7 == 0  # a grid on the wall clock
    spec = make({"rrule": "FREQ=MONTHLY;BYDAY=-1FR;BYHOUR=17;BYMINUTE=0"}, timezone=BERLIN)
    compiled = triggers.compile_trigger(spec, CREATED)
    last_fridays = compiled.times_between(at("2026-01-01T00:00:00Z"), at("2027-01-01T00:00:00Z"), 100)
    assert len(last_fridays) == 12
    assert all(t.astimezone(ZoneInfo(BERLIN)).weekday() == 4 for t in last_fridays)
    assert all((t + timedelta(days=7)).month != t.month for t in last_fridays)


def test_rrule_that_never_fires_gives_up_quickly() -> None:
    spec = make({"rrule": "FREQ=MINUTELY;BYMONTH=2;BYYEARDAY=1"})
    began = time.perf_counter()
    assert triggers.compile_trigger(spec, CREATED).next_after(CREATED) is None
    assert time.perf_counter() - began < 10  # a generous bound: dateutil alone searches to the year 9999


# -- exclusions -----------------------------------------------------------------------------------------------


def test_holiday_dates() -> None:
    spec = cron("0 9 * * *", "Europe/Vienna", exclude=[{"dates": ["2026-12-24", "2026-12-25"]}])
    assert fires(spec, "2026-12-23T00:00:00Z", 2) == ["2026-12-23T08:00:00Z", "2026-12-26T08:00:00Z"]


def test_weekends() -> None:
    spec = cron("0 9 * * *", exclude=[{"weekdays": ["sat", "sun"]}])
    assert fires(spec, "2026-05-01T00:00:00Z", 7) == fires(cron("0 9 * * 1-5"), "2026-05-01T00:00:00Z", 7)


def test_weekdays_are_local() -> None:
    # Friday 23:00 in Tokyo is 14:00Z; Saturday in Tokyo runs 15:00Z Friday to 15:00Z Saturday
    spec = make(
        {"every": "1h", "anchor": "2026-01-01T00:00:00Z"},
        timezone="Asia/Tokyo",
        exclude=[{"weekdays": ["sat"]}],
    )
    assert fires(spec, "2026-05-01T13:30:00Z", 2) == ["2026-05-01T14:00:00Z", "2026-05-02T15:00:00Z"]


def test_daily_lunch_window() -> None:
    spec = cron("*/30 * * * *", exclude=[{"daily": ["12:00", "13:00"]}])
    assert fires(spec, "2026-05-01T11:00:00Z", 3) == [
        "2026-05-01T11:30:00Z",
        "2026-05-01T13:00:00Z",  # the window is [12:00, 13:00)
        "2026-05-01T13:30:00Z",
    ]


def test_daily_window_wrapping_midnight() -> None:
    spec = make({"every": "1h", "anchor": "2026-01-01T00:00:00Z"}, exclude=[{"daily": ["22:00", "06:00"]}])
    assert fires(spec, "2026-05-01T20:00:00Z", 3) == [
        "2026-05-01T21:00:00Z",
        "2026-05-02T06:00:00Z",
        "2026-05-02T07:00:00Z",
    ]


def test_during_window() -> None:
    spec = make(
        {"every": "1h", "anchor": "2026-01-01T00:00:00Z"},
        exclude=[{"during": ["2026-05-01T10:00:00Z", "2026-05-01T14:00:00Z"]}],
    )
    assert fires(spec, "2026-05-01T08:30:00Z", 2) == ["2026-05-01T09:00:00Z", "2026-05-01T14:00:00Z"]


def test_cron_exclusion() -> None:
    spec = cron("*/15 * * * *", exclude=[{"cron": "0 * * * *"}])
    assert fires(spec, "2026-05-01T00:00:00Z", 4) == [
        "2026-05-01T00:15:00Z",
        "2026-05-01T00:30:00Z",
        "2026-05-01T00:45:00Z",
        "2026-05-01T01:15:00Z",
    ]
    # "to the minute": every second of an excluded minute is excluded
    spec = make({"cron": "* * * * *", "second": "*/20"}, exclude=[{"cron": "1 * * * *"}])
    assert fires(spec, "2026-05-01T00:00:30Z", 3) == [
        "2026-05-01T00:00:40Z",
        "2026-05-01T00:02:00Z",
        "2026-05-01T00:02:20Z",
    ]


def test_entry_fields_all_have_to_match() -> None:
    # lunch is excluded on Mondays only (2026-05-04 is a Monday)
    spec = cron("0 12 * * *", exclude=[{"weekdays": ["mon"], "daily": ["11:00", "14:00"]}])
    assert fires(spec, "2026-05-02T00:00:00Z", 3) == [
        "2026-05-02T12:00:00Z",
        "2026-05-03T12:00:00Z",
        "2026-05-05T12:00:00Z",
    ]


def test_fully_excluded_trigger_returns_none_quickly() -> None:
    every_day = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
    cases = [
        cron("* * * * *", exclude=[{"weekdays": every_day}]),
        make({"every": "1s"}, exclude=[{"cron": "* * * * *"}]),
        make(
            {"every": "1s", "mode": "delay"},
            exclude=[{"daily": ["00:00", "23:59"]}, {"daily": ["23:59", "00:00"]}],
        ),
        make({"rrule": "FREQ=MINUTELY"}, timezone=BERLIN, exclude=[{"weekdays": every_day}]),
    ]
    for spec in cases:
        began = time.perf_counter()
        assert triggers.compile_trigger(spec, CREATED).next_after(CREATED) is None
        assert time.perf_counter() - began < 10  # a generous bound: without one the search never ends


# -- preview and describe -------------------------------------------------------------------------------------


def test_preview_count_order_and_limits() -> None:
    times = triggers.preview(cron("0 9 * * *"), 5, after=at("2026-05-01T09:00:00Z"))
    assert [t.isoformat() for t in times] == [
        f"2026-05-0{d}T09:00:00+00:00" for d in range(1, 6)
    ]  # at or after
    assert times == sorted(times)
    assert len(triggers.preview(cron("0 9 * * *", max_runs=2), 5, after=CREATED)) == 2
    assert triggers.preview(make({"once": "now"}), 3, after=CREATED, created=CREATED) == [CREATED]
    now = datetime.now(UTC)
    default = triggers.preview(cron("* * * * *"), 2)
    assert len(default) == 2 and default[0] >= now - timedelta(seconds=1)


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        (cron("0 9 * * 1-5", "Europe/Vienna"), "At 09:00, Monday through Friday (Europe/Vienna)"),
        (cron("@daily"), "At 00:00 (UTC)"),
        (make({"cron": "* * * * *", "second": "*/10"}), "Every 10 seconds (UTC)"),
        (make({"every": "10s"}), "Every 10 seconds"),
        (make({"every": "1.5s"}), "Every 1.5 seconds"),
        (make({"every": "1h"}), "Every hour"),
        (make({"every": "1h30m"}), "Every 1 hour 30 minutes"),
        (make({"every": "500ms"}), "Every 500 milliseconds"),
        (make({"every": "10s", "mode": "delay"}), "Every 10 seconds after the previous run finished"),
        (
            make({"once": "2026-12-01T09:00:00Z"}, timezone="Europe/Vienna"),
            "Once, at 2026-12-01 10:00 (Europe/Vienna)",
        ),
        (make({"once": "now"}), "Once, now"),
        (
            make({"rrule": "FREQ=WEEKLY;BYDAY=MO,WE;BYHOUR=9;BYMINUTE=0"}, timezone="Europe/Vienna"),
            "Weekly on Monday, Wednesday at 09:00 (Europe/Vienna)",
        ),
        (
            make({"rrule": "FREQ=MONTHLY;BYDAY=-1FR;BYHOUR=17;BYMINUTE=30;COUNT=6"}),
            "Monthly on the last Friday at 17:30, 6 times (UTC)",
        ),
        (
            make({"rrule": "FREQ=DAILY;INTERVAL=2;UNTIL=20261231T230000Z"}),
            "Every 2 days, until 2026-12-31 23:00 (UTC)",
        ),
        (
            make({"rrule": "FREQ=YEARLY;BYSETPOS=1;BYDAY=MO"}),
            "Recurring: FREQ=YEARLY;BYSETPOS=1;BYDAY=MO (UTC)",
        ),
        (
            cron(
                "0 9 * * *", exclude=[{"dates": ["2026-12-24", "2026-12-25"]}, {"weekdays": ["sat", "sun"]}]
            ),
            "At 09:00 (UTC), except 2 dates; Saturday, Sunday",
        ),
        (
            make(
                {"every": "1h"},
                exclude=[{"daily": ["12:00", "13:00"], "weekdays": ["mon"]}, {"dates": ["2026-12-25"]}],
            ),
            "Every hour, except 12:00–13:00 on Monday; 2026-12-25",
        ),
    ],
)
def test_describe(spec: ScheduleSpec, words: str) -> None:
    assert triggers.describe(spec) == words


# -- properties -------------------------------------------------------------------------------------------------

ZONES = ["UTC", BERLIN, NEW_YORK, "Australia/Lord_Howe", "Asia/Kolkata", "America/Santiago"]
# Around the 2026 changes of the zones above, and an ordinary day
MOMENTS = [
    at("2026-03-28T20:00:00Z"),
    at("2026-10-24T20:00:00Z"),
    at("2026-03-08T02:00:00Z"),
    at("2026-11-01T02:00:00Z"),
    at("2026-04-04T10:00:00Z"),
    at("2026-10-03T10:00:00Z"),
    at("2026-04-04T22:00:00Z"),
    at("2026-09-05T22:00:00Z"),
    at("2026-06-15T12:00:00Z"),
]

cron_expressions = st.tuples(
    st.sampled_from(["*", "0", "30", "*/15", "5,35", "10-20", "*/7", "59"]),
    st.sampled_from(["*", "0", "2", "1-3", "*/6", "0,12", "23", "2,3"]),
    st.sampled_from(["*", "*", "1", "15", "1-7", "*/10", "L"]),
    st.sampled_from(["*", "*", "3,4", "9-11", "*/2"]),
    st.sampled_from(["*", "*", "0", "7", "1-5", "sun", "MON-FRI", "6,0"]),
).map(" ".join)
exclusions = st.lists(
    st.sampled_from(
        [
            {"weekdays": ["sat", "sun"]},
            {"daily": ["01:30", "02:45"]},
            {"daily": ["23:00", "01:00"]},
            {"cron": "*/20 * * * *"},
            {"cron": "* 2 * * *"},
            {"dates": ["2026-03-29", "2026-10-25", "2026-11-01", "2026-10-04"]},
            {"during": ["2026-03-29T00:30:00Z", "2026-03-29T01:30:00Z"]},
            {"weekdays": ["sun"], "daily": ["00:00", "12:00"]},
        ]
    ),
    max_size=2,
)
moments = st.tuples(st.sampled_from(MOMENTS), st.integers(0, 48 * 3600)).map(
    lambda p: p[0] + timedelta(seconds=p[1])
)


def _sequence(compiled: triggers.CompiledTrigger, after: datetime, count: int) -> list[datetime]:
    out: list[datetime] = []
    moment: datetime | None = after
    for _ in range(count):
        assert moment is not None
        moment = compiled.next_after(moment)
        if moment is None:
            break
        out.append(moment)
    return out


rrules = st.tuples(
    st.sampled_from(
        ["FREQ=DAILY", "FREQ=HOURLY", "FREQ=WEEKLY", "FREQ=MINUTELY;INTERVAL=13", "FREQ=HOURLY;INTERVAL=5"]
    ),
    st.sampled_from(["", ";BYHOUR=2", ";BYHOUR=1,2,3", ";BYHOUR=0,12"]),
    st.sampled_from(["", ";BYMINUTE=30", ";BYMINUTE=0,15,45"]),
    st.sampled_from(["", ";BYDAY=MO,TU,WE,TH,FR", ";BYDAY=SU"]),
).map(lambda parts: {"rrule": "".join(parts)})
any_triggers = st.one_of(
    cron_expressions.map(lambda expr: {"cron": expr}),
    st.tuples(cron_expressions, st.sampled_from(["*/20", "0,59", "5-7"])).map(
        lambda p: {"cron": p[0], "second": p[1]}
    ),
    rrules,
    st.sampled_from(["7m", "1h", "90s", "25h"]).map(
        lambda every: {"every": every, "anchor": "2026-01-01T00:10:00Z"}
    ),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trigger=any_triggers, zone=st.sampled_from(ZONES), after=moments, excluded=exclusions)
def test_fires_increase_and_skip_exactly_the_excluded(
    trigger: dict[str, Any], zone: str, after: datetime, excluded: list[dict[str, Any]]
) -> None:
    plain = triggers.compile_trigger(make(trigger, timezone=zone), CREATED)
    times = _sequence(plain, after, 30)
    assert times, trigger
    assert all(t.tzinfo is UTC for t in times)
    assert all(a < b for a, b in pairwise([after, *times]))
    if not excluded:
        return
    spec = make(trigger, timezone=zone, exclude=excluded)
    calendar = ExclusionCalendar(spec.exclude, zone)
    compiled = triggers.compile_trigger(spec, CREATED)
    kept: list[datetime] = []
    moment: datetime | None = after
    while True:
        assert moment is not None
        moment = compiled.next_after(moment)
        if moment is None or moment > times[-1]:
            break
        kept.append(moment)
    assert kept == [t for t in times if not calendar.excluded(t)]


@settings(max_examples=60, deadline=None)
@given(
    minute=st.integers(0, 59),
    hour=st.integers(0, 23),
    zone=st.sampled_from(ZONES),
    after=moments,
)
def test_fixed_time_cron_and_rrule_agree(minute: int, hour: int, zone: str, after: datetime) -> None:
    by_cron = triggers.compile_trigger(cron(f"{minute} {hour} * * *", zone), CREATED)
    by_rule = triggers.compile_trigger(
        make({"rrule": f"FREQ=DAILY;BYHOUR={hour};BYMINUTE={minute}"}, timezone=zone), CREATED
    )
    times = _sequence(by_cron, after, 4)
    assert times == _sequence(by_rule, after, 4)
    # one fire per local day, whatever the day's clock changes
    days = [t.astimezone(ZoneInfo(zone)).date() for t in times]
    assert all((b - a).days == 1 for a, b in pairwise(days))


@settings(max_examples=60, deadline=None)
@given(
    every=st.integers(1, 3 * 86400 * 1000).map(lambda ms: timedelta(milliseconds=ms)),
    anchor=st.integers(0, 10**9).map(lambda s: CREATED + timedelta(seconds=s)),
    zone=st.sampled_from(ZONES),
    after=moments,
)
def test_interval_spacing_is_exact(every: timedelta, anchor: datetime, zone: str, after: datetime) -> None:
    spec = make({"every": every.total_seconds(), "anchor": anchor.isoformat()}, timezone=zone)
    times = _sequence(triggers.compile_trigger(spec, CREATED), after, 6)
    assert times[0] > after and (times[0] - after <= every or times[0] == anchor)
    assert all(b - a == spec.trigger.every for a, b in pairwise(times))  # type: ignore[union-attr]
    assert all(t.tzinfo is UTC for t in times)
