"""The scheduler instance on a real store and real processes: firing, overlap, retries, timeouts, changes."""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from ecliptic.isotime import utcnow
from ecliptic.schedule.service import Conflict, NotFound
from tests.processes import gone
from tests.schedule import marks
from tests.schedule.harness import Harness, harness, spec


@pytest.fixture
def h(database_url: str, tmp_path: Path) -> Iterator[Harness]:
    marks.reset()
    with harness(database_url, tmp_path) as running:
        yield running


def test_once_now_runs_a_command_and_records_its_output(h: Harness) -> None:
    h.create(spec("hello", {"once": "now"}, {"python": "print('hello from a run')"}))
    (run,) = h.wait_finished("test/hello", 1)
    assert run.state == "succeeded", run
    assert run.exit_code == 0
    assert "hello from a run" in (run.stdout_tail or "")
    assert run.started_at is not None and run.ended_at is not None and run.duration_s is not None
    assert run.cause == "schedule" and run.attempt == 1
    view = h.service.get("test/hello")
    assert view.next_fire_at is None and view.fires == 1
    assert view.last_run is not None and view.last_run.state == "succeeded"


def test_interval_at_a_fixed_rate_keeps_its_grid(h: Harness) -> None:
    h.create(spec("tick", {"every": "200ms"}, {"call": "tests.schedule.marks:record", "args": ["tick"]}))
    runs = h.wait_runs("test/tick", lambda rs: len([r for r in rs if r.state == "succeeded"]) >= 5)
    # Every fire time is on the grid, whatever became of it (a busy machine may skip one).
    gaps = {(b.scheduled_at - a.scheduled_at) for a, b in itertools.pairwise(runs)}
    assert gaps == {timedelta(milliseconds=200)}
    assert len([c for c in marks.calls if c[0] == "tick"]) >= 5


def test_jitter_never_passes_the_next_fire(h: Harness) -> None:
    h.create(
        spec(
            "jittery",
            {"every": "100ms"},
            {"call": "tests.schedule.marks:record", "args": ["jittery"]},
            jitter="10s",
            overlap="allow",
        )
    )
    runs = h.wait_finished("test/jittery", 5)
    delays = [r.due_at - r.scheduled_at for r in runs]
    assert all(timedelta(0) <= d < timedelta(milliseconds=100) for d in delays), delays
    assert len(set(delays)) > 1  # really random


def test_fixed_delay_waits_for_the_previous_run(h: Harness) -> None:
    h.create(
        spec(
            "watch",
            {"every": "100ms", "mode": "delay"},
            {"call": "tests.schedule.marks:record", "args": ["watch", 0.3]},
        )
    )
    runs = h.wait_finished("test/watch", 3)
    done = [r for r in runs if r.state == "succeeded"]
    for previous, current in itertools.pairwise(done):
        assert previous.ended_at is not None and current.started_at is not None
        # Each run starts about 100 ms after the previous one ENDED (never while it runs).
        assert current.started_at >= previous.ended_at + timedelta(milliseconds=90)
    assert not [r for r in runs if r.state == "skipped"]
    assert marks.peak("watch") == 1


def test_overlap_skip_records_skipped_runs_and_never_runs_two(h: Harness) -> None:
    h.create(
        spec("slow", {"every": "100ms"}, {"call": "tests.schedule.marks:record", "args": ["slow", 0.45]})
    )
    runs = h.wait_runs("test/slow", lambda rs: len([r for r in rs if r.state == "skipped"]) >= 3)
    skipped = [r for r in runs if r.state == "skipped"]
    assert all("still running (overlap: skip)" in (r.error or "") for r in skipped)
    assert marks.peak("slow") == 1


def test_overlap_queue_runs_every_fire_one_after_another(h: Harness) -> None:
    h.create(
        spec(
            "queued",
            {"every": "100ms"},
            {"call": "tests.schedule.marks:record", "args": ["queued", 0.25]},
            overlap="queue",
            max_runs=4,
        )
    )
    runs = h.wait_finished("test/queued", 4)
    assert [r.state for r in runs] == ["succeeded"] * 4
    assert marks.peak("queued") == 1
    starts = [r.started_at for r in runs]
    assert starts == sorted(starts)


def test_overlap_allow_with_a_concurrency_limit_and_allow(h: Harness) -> None:
    h.create(
        spec(
            "two",
            {"every": "100ms"},
            {"call": "tests.schedule.marks:record", "args": ["two", 0.35]},
            max_concurrency=2,
            max_runs=6,
        )
    )
    runs = h.wait_finished("test/two", 6)
    assert {r.state for r in runs} <= {"succeeded", "skipped"}
    assert marks.peak("two") == 2


def test_overlap_replace_cancels_the_running_one(h: Harness) -> None:
    h.create(
        spec(
            "replace",
            {"every": "600ms"},
            {"python": "import time; time.sleep(30)"},
            overlap="replace",
            max_runs=2,
        )
    )
    runs = h.wait_runs("test/replace", lambda rs: any(r.state == "cancelled" for r in rs))
    cancelled = next(r for r in runs if r.state == "cancelled")
    assert "replaced by run" in (cancelled.error or "")
    h.service.delete("test/replace")


def test_retries_with_backoff_are_attempts_of_the_same_fire(h: Harness) -> None:
    h.create(
        spec(
            "flaky",
            {"once": "now"},
            {"python": "raise SystemExit(3)"},
            retry={"max": 2, "backoff": "100ms", "jitter": False},
        )
    )
    runs = h.wait_finished("test/flaky", 3)
    assert [(r.attempt, r.cause, r.state, r.exit_code) for r in runs] == [
        (1, "schedule", "failed", 3),
        (2, "retry", "failed", 3),
        (3, "retry", "failed", 3),
    ]
    assert len({r.scheduled_at for r in runs}) == 1
    first, second, third = runs
    assert first.ended_at and second.started_at and second.ended_at and third.started_at
    assert second.started_at - first.ended_at >= timedelta(milliseconds=95)
    assert third.started_at - second.ended_at >= timedelta(milliseconds=190)  # backoff doubles


def test_timeout_kills_the_process_group(h: Harness, tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    h.create(
        spec(
            "stuck",
            {"once": "now"},
            {"cmd": f"sleep 60 & echo $! > {pidfile}; wait", "shell": True},
            timeout="500ms",
            kill_grace="200ms",
        )
    )
    (run,) = h.wait_finished("test/stuck", 1)
    assert run.state == "timed_out", run
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while not gone(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gone(child), "the background child of a timed-out run survived"


def test_update_takes_effect_at_once(h: Harness) -> None:
    h.create(spec("later", {"every": "1h"}, {"call": "tests.schedule.marks:record", "args": ["later"]}))
    h.wait_finished("test/later", 1)  # an interval fires at once, then an hour later
    before = h.service.get("test/later").next_fire_at
    assert before is not None and before > utcnow() + timedelta(minutes=50)
    h.service.update(
        "test/later",
        spec("later", {"every": "100ms"}, {"call": "tests.schedule.marks:record", "args": ["later"]}),
    )
    runs = h.wait_finished("test/later", 4, timeout=10)
    assert len(runs) >= 4


def test_pause_stops_firing_and_trigger_still_runs(h: Harness) -> None:
    h.create(spec("pausable", {"every": "100ms"}, {"call": "tests.schedule.marks:record", "args": ["p"]}))
    h.wait_finished("test/pausable", 2)
    h.service.pause("test/pausable", actor="test")
    time.sleep(0.3)  # let a run that had started end
    count = len(h.runs("test/pausable"))
    time.sleep(0.6)
    assert len(h.runs("test/pausable")) == count
    assert h.service.get("test/pausable").next_fire_at is None
    manual = h.service.trigger("test/pausable", actor="test")
    runs = h.wait_runs(
        "test/pausable", lambda rs: any(r.id == manual.id and r.state == "succeeded" for r in rs)
    )
    assert next(r for r in runs if r.id == manual.id).cause == "manual"
    h.service.resume("test/pausable", actor="test")
    h.wait_runs("test/pausable", lambda rs: len(rs) >= count + 3)
    actions = [a.action for a in h.service.audit("test")]
    assert actions[:3] == ["resume", "trigger", "pause"]


def test_backfill_runs_past_fire_times_one_after_another(h: Harness) -> None:
    h.create(
        spec(
            "daily",
            {"cron": "0 3 * * *"},
            {"call": "tests.schedule.marks:record", "args": ["daily", 0.05]},
            timezone="Europe/Vienna",
        )
    )
    end = utcnow()
    start = end - timedelta(days=5)
    queued = h.service.backfill("test/daily", start, end, actor="test")
    assert len(queued) == 5
    assert all(r.cause == "backfill" for r in queued)
    runs = h.wait_finished("test/daily", 5)
    assert [r.state for r in runs] == ["succeeded"] * 5
    assert marks.peak("daily") == 1
    again = h.service.backfill("test/daily", start, end, actor="test")
    assert again == []  # those fire times have runs already


def test_delete_cancels_what_runs(h: Harness) -> None:
    h.create(spec("doomed", {"once": "now"}, {"python": "import time; time.sleep(30)"}))
    h.wait_runs("test/doomed", lambda rs: any(r.state == "running" for r in rs))
    h.service.delete("test/doomed", actor="test")
    with pytest.raises(NotFound):
        h.service.get("test/doomed")
    deadline = time.monotonic() + 10
    while h.instance.running() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert h.instance.running() == 0


def test_cancel_a_running_run(h: Harness) -> None:
    h.create(spec("cancel-me", {"once": "now"}, {"python": "import time; time.sleep(30)"}))
    runs = h.wait_runs("test/cancel-me", lambda rs: any(r.state == "running" for r in rs))
    h.service.cancel_run(runs[0].id, actor="test")
    (run,) = h.wait_finished("test/cancel-me", 1)
    assert run.state == "cancelled" and "cancel requested by test" in (run.error or "")
    with pytest.raises(Conflict):
        h.service.cancel_run(run.id)


def test_duplicate_names_and_unknown_schedules_are_clear_errors(h: Harness) -> None:
    h.create(spec("one", {"every": "1h"}))
    with pytest.raises(Conflict, match="exists already"):
        h.create(spec("one", {"every": "1h"}))
    with pytest.raises(NotFound, match="no schedule"):
        h.service.get("test/nope")


class _Hook(BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        type(self).received.append(json.loads(self.rfile.read(length)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_failure_and_recovery_notifications_reach_a_webhook(h: Harness, tmp_path: Path) -> None:
    _Hook.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    flag = tmp_path / "ok"
    code = f"import pathlib, sys; p = pathlib.Path({str(flag)!r}); sys.exit(0 if p.exists() else 2)"
    try:
        h.create(
            spec(
                "notified",
                {"every": "300ms"},
                {"python": code},
                notify=[{"webhook": f"http://127.0.0.1:{server.server_port}/hook"}],
            )
        )
        h.wait_runs("test/notified", lambda rs: any(r.state == "failed" for r in rs))
        flag.write_text("now it works")
        h.wait_runs("test/notified", lambda rs: any(r.state == "succeeded" for r in rs))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and "recovery" not in [e["event"] for e in _Hook.received]:
            time.sleep(0.05)
        events = [e["event"] for e in _Hook.received]
        assert events[0] == "failure" and "recovery" in events
        assert events.count("recovery") == 1  # only the first success after failures is a recovery
        assert _Hook.received[0]["schedule"] == "notified" and _Hook.received[0]["run"]["exit_code"] == 2
    finally:
        server.shutdown()
