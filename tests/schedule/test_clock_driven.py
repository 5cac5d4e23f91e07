"""The scheduler against a clock the test moves: DST nights in two zones, weekdays, catch-up after downtime.

The instance, the store and the runs are real; only time is the test's, so a year of schedule can be walked
through in seconds and every fire time checked to the microsecond.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ecliptic.engine.clock import ManualClock
from ecliptic.schedule.instance import InstanceSettings, SchedulerInstance
from ecliptic.schedule.service import SchedulerService
from ecliptic.store import Database, upgrade
from tests.schedule.harness import Harness, spec

RECORD = {"call": "tests.schedule.marks:record", "args": ["clock"]}


def z(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


@pytest.fixture
def store(database_url: str) -> Iterator[Database]:
    db = Database(database_url)
    upgrade(db)
    yield db
    db.dispose()


def walk(h: Harness, clock: ManualClock, ref: str, count: int) -> list[datetime]:
    """Move the clock to each next fire time in turn and let the instance fire it; the fire times seen."""
    seen: list[datetime] = []
    for _ in range(count):
        nxt = h.service.get(ref).next_fire_at
        assert nxt is not None, f"{ref} has no next fire time after {seen}"
        clock.set(nxt - timedelta(milliseconds=200))
        at = nxt
        h.wait_runs(ref, lambda runs, at=at: any(r.scheduled_at == at for r in runs), what=f"planning {at}")
        clock.set(at + timedelta(milliseconds=1))
        runs = h.wait_runs(
            ref,
            lambda runs, at=at: any(r.scheduled_at == at and r.state == "succeeded" for r in runs),
            what=f"the run at {at}",
        )
        seen.append(nxt)
        assert not [r for r in runs if r.state == "missed"]
    return seen


def started(db: Database, tmp: Path, clock: ManualClock) -> Harness:
    return Harness(db, tmp, clock).start()


@pytest.mark.parametrize(
    ("zone", "cron", "start", "expected"),
    [
        # Spring forward, Berlin (02:00 → 03:00 on 2026-03-29): 02:30 does not exist; it runs once right after
        # the jump, at 03:00 CEST.
        (
            "Europe/Berlin",
            "30 2 * * *",
            "2026-03-27T12:00:00+00:00",
            ["2026-03-28T02:30:00+01:00", "2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00"],
        ),
        # Fall back, Berlin (03:00 → 02:00 on 2026-10-25): 02:30 happens twice; it runs once.
        (
            "Europe/Berlin",
            "30 2 * * *",
            "2026-10-23T12:00:00+00:00",
            ["2026-10-24T02:30:00+02:00", "2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"],
        ),
        # Spring forward, New York (02:00 → 03:00 on 2026-03-08).
        (
            "America/New_York",
            "30 2 * * *",
            "2026-03-06T12:00:00+00:00",
            ["2026-03-07T02:30:00-05:00", "2026-03-08T03:00:00-04:00", "2026-03-09T02:30:00-04:00"],
        ),
        # Fall back, New York (02:00 → 01:00 on 2026-11-01): 01:30 happens twice; it runs once.
        (
            "America/New_York",
            "30 1 * * *",
            "2026-10-30T12:00:00+00:00",
            ["2026-10-31T01:30:00-04:00", "2026-11-01T01:30:00-04:00", "2026-11-02T01:30:00-05:00"],
        ),
        # A 09:00 job keeps 09:00 local across the change: its UTC time moves by an hour.
        (
            "Europe/Berlin",
            "0 9 * * *",
            "2026-03-28T12:00:00+00:00",
            ["2026-03-29T09:00:00+02:00", "2026-03-30T09:00:00+02:00"],
        ),
    ],
)
def test_dst_nights(
    store: Database, tmp_path: Path, zone: str, cron: str, start: str, expected: list[str]
) -> None:
    clock = ManualClock(z(start))
    h = started(store, tmp_path, clock)
    try:
        h.create(spec("dst", {"cron": cron}, RECORD, timezone=zone))
        assert walk(h, clock, "test/dst", len(expected)) == [z(e) for e in expected]
    finally:
        h.stop()


def test_hourly_job_on_the_fall_back_night(store: Database, tmp_path: Path) -> None:
    """An hourly job runs every real hour through the fold: 00:00Z, 01:00Z (02:00 CEST), 02:00Z (02:00 CET)…"""
    clock = ManualClock(z("2026-10-24T23:30:00+00:00"))
    h = started(store, tmp_path, clock)
    try:
        h.create(spec("hourly", {"cron": "0 * * * *"}, RECORD, timezone="Europe/Berlin"))
        seen = walk(h, clock, "test/hourly", 4)
        assert len(set(seen)) == 4 and seen == sorted(seen)
        assert seen[0] == z("2026-10-25T00:00:00+00:00")
        assert all(b - a <= timedelta(hours=1) for a, b in itertools.pairwise(seen))
    finally:
        h.stop()


def test_weekdays_monday_to_friday_are_monday_to_friday(store: Database, tmp_path: Path) -> None:
    clock = ManualClock(z("2026-12-03T12:00:00+00:00"))  # a Thursday
    h = started(store, tmp_path, clock)
    try:
        h.create(spec("workdays", {"cron": "0 9 * * 1-5"}, RECORD, timezone="Europe/Vienna"))
        seen = walk(h, clock, "test/workdays", 4)
        assert [t.astimezone().strftime("%a") for t in seen] == ["Fri", "Mon", "Tue", "Wed"]
        assert seen[0] == z("2026-12-04T09:00:00+01:00")
    finally:
        h.stop()


def downtime(
    store: Database, tmp: Path, catchup: dict[str, object], *, down: timedelta = timedelta(minutes=65)
) -> tuple[Harness, ManualClock, datetime]:
    """A 10-minute schedule created while no scheduler runs; the first scheduler starts ``down`` later."""
    t0 = z("2026-06-01T12:00:00+00:00")
    clock = ManualClock(t0)
    service = SchedulerService(store, clock=clock)
    service.create(spec("ten", {"every": "10m"}, RECORD, catchup=catchup))
    clock.set(t0 + down)
    return Harness(store, tmp, clock).start(), clock, t0


def test_catchup_latest_runs_the_most_recent_and_records_the_rest_missed(
    store: Database, tmp_path: Path
) -> None:
    h, _clock, t0 = downtime(store, tmp_path, {"policy": "latest"})
    try:
        runs = h.wait_finished("test/ten", 7)
        missed = [r.scheduled_at for r in runs if r.state == "missed"]
        caught = [r for r in runs if r.cause == "catchup"]
        assert missed == [t0 + timedelta(minutes=m) for m in range(0, 60, 10)]
        assert [(r.scheduled_at, r.state) for r in caught] == [(t0 + timedelta(minutes=60), "succeeded")]
        assert h.service.get("test/ten").next_fire_at == t0 + timedelta(minutes=70)
    finally:
        h.stop()


def test_catchup_skip_runs_none(store: Database, tmp_path: Path) -> None:
    h, _clock, _t0 = downtime(store, tmp_path, {"policy": "skip"})
    try:
        runs = h.wait_finished("test/ten", 7)
        assert [r.state for r in runs] == ["missed"] * 7
        assert all("no scheduler was running" in (r.error or "") for r in runs)
    finally:
        h.stop()


def test_catchup_all_is_bounded_by_window_and_count(store: Database, tmp_path: Path) -> None:
    h, _clock, t0 = downtime(store, tmp_path, {"policy": "all", "window": "PT26M", "max_runs": 2})
    try:
        runs = h.wait_finished("test/ten", 7)
        caught = sorted(r.scheduled_at for r in runs if r.cause == "catchup")
        # Within the window: 12:40, 12:50, 13:00; at most 2 of them: the most recent.
        assert caught == [t0 + timedelta(minutes=50), t0 + timedelta(minutes=60)]
        assert len([r for r in runs if r.state == "missed"]) == 5
    finally:
        h.stop()


def test_lateness_within_grace_is_not_a_catchup(store: Database, tmp_path: Path) -> None:
    h, _clock, t0 = downtime(store, tmp_path, {"policy": "skip", "grace": "PT1M"}, down=timedelta(seconds=20))
    try:
        (run,) = h.wait_finished("test/ten", 1)
        assert (run.scheduled_at, run.cause, run.state) == (t0, "schedule", "succeeded")
    finally:
        h.stop()


def test_retries_wait_their_backoff_and_survive_a_restart(store: Database, tmp_path: Path) -> None:
    t0 = z("2026-06-01T12:00:00+00:00")
    clock = ManualClock(t0)
    failing = {"python": "raise SystemExit(4)"}
    h = started(store, tmp_path, clock)
    try:
        h.create(
            spec(
                "flaky",
                {"once": "now"},
                failing,
                retry={"max": 2, "backoff": "1h", "max_backoff": "10h", "jitter": False},
            )
        )
        runs = h.wait_runs("test/flaky", lambda rs: len(rs) == 2)
        assert [(r.attempt, r.state) for r in runs] == [(1, "failed"), (2, "scheduled")]
        assert runs[1].due_at == t0 + timedelta(hours=1)
    finally:
        h.stop()
    # A new scheduler finds the retry in the store and runs it when its time comes, not before.
    h = started(store, tmp_path, clock)
    try:
        clock.set(t0 + timedelta(minutes=59))
        time.sleep(0.3)
        assert [r.state for r in h.runs("test/flaky")] == ["failed", "scheduled"]
        clock.set(t0 + timedelta(hours=1, seconds=1))
        runs = h.wait_runs("test/flaky", lambda rs: len(rs) == 3)
        assert runs[1].state == "failed" and runs[2].due_at == t0 + timedelta(hours=3, seconds=1)  # 2 h later
        clock.set(t0 + timedelta(hours=3, seconds=2))
        runs = h.wait_finished("test/flaky", 3)
        assert [(r.attempt, r.cause, r.state, r.exit_code) for r in runs] == [
            (1, "schedule", "failed", 4),
            (2, "retry", "failed", 4),
            (3, "retry", "failed", 4),
        ]
    finally:
        h.stop()


def test_overlap_skip_against_the_clock(store: Database, tmp_path: Path) -> None:
    """A run that outlasts its interval makes the next fire a skipped run, to the fire time."""
    t0 = z("2026-06-01T12:00:00+00:00")
    clock = ManualClock(t0)
    h = started(store, tmp_path, clock)
    try:
        h.create(
            spec(
                "slowpoke",
                {"every": "1m"},
                {"call": "tests.schedule.marks:record", "args": ["slowpoke", 1.5]},
            )
        )
        h.wait_runs("test/slowpoke", lambda rs: any(r.state == "running" for r in rs))
        clock.set(t0 + timedelta(minutes=1))
        runs = h.wait_runs("test/slowpoke", lambda rs: any(r.state == "skipped" for r in rs))
        skipped = next(r for r in runs if r.state == "skipped")
        assert skipped.scheduled_at == t0 + timedelta(minutes=1)
        h.wait_runs("test/slowpoke", lambda rs: rs[0].state == "succeeded")
    finally:
        h.stop()


def test_a_second_instance_takes_over_and_interrupts_what_the_dead_one_ran(
    store: Database, tmp_path: Path
) -> None:
    """An owner that stops heartbeating loses its schedules; the runs it had started become interrupted."""
    clock = ManualClock(z("2026-06-01T12:00:00+00:00"))
    service = SchedulerService(store, clock=clock)
    dead = SchedulerInstance(
        store,
        settings=InstanceSettings(lease=timedelta(seconds=5), log_dir=tmp_path / "runs"),
        clock=clock,
        instance_id="elsewhere:1:dead",
    )
    dead.start()
    try:
        service.create(
            spec(
                "long",
                {"once": "now"},
                {"python": "import time; time.sleep(30)"},
                retry={"max": 1, "backoff": "1s"},
            )
        )
        deadline = time.monotonic() + 20
        while not [r for r in service.runs("test/long") if r.state == "running"]:
            assert time.monotonic() < deadline, service.runs("test/long")
            dead.wake()
            time.sleep(0.05)
        # It stops heartbeating (as if frozen or cut off); its lease runs out on the shared clock.
        dead._stop.set()
        clock.advance(timedelta(seconds=30))
        h = Harness(store, tmp_path, clock).start()
        try:
            runs = h.wait_runs("test/long", lambda rs: any(r.state == "interrupted" for r in rs))
            interrupted = next(r for r in runs if r.state == "interrupted")
            assert "stopped before the run ended" in (interrupted.error or "")
            retry = h.wait_runs("test/long", lambda rs: any(r.attempt == 2 for r in rs))[-1]
            assert (retry.attempt, retry.cause) == (2, "retry")
        finally:
            h.stop()
    finally:
        dead.stop(grace=1)
