"""Several scheduler processes on one store, and crashes: nothing fires twice, nothing is lost."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from ecliptic.isotime import utcnow
from ecliptic.schedule.service import SchedulerService
from ecliptic.schedule.spec import ScheduleSpec
from ecliptic.store import Database, upgrade
from tests.processes import gone, wait_until_gone

ROOT = Path(__file__).resolve().parents[2]


class SchedulerProcess:
    def __init__(self, database_url: str, data_dir: Path, log: Path) -> None:
        self.log = log
        self.handle = log.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.schedule.scheduler_process", database_url, str(data_dir)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=self.handle,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().decode()
        if not line.startswith("ready"):
            raise AssertionError(f"the scheduler process did not start: {log.read_text()[-2000:]}")
        self.id = line.split()[1]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.handle.close()

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()
        self.handle.close()


@pytest.fixture
def store(database_url: str) -> Iterator[Database]:
    db = Database(database_url)
    upgrade(db)
    yield db
    db.dispose()


def once(name: str, at: str, path: Path) -> ScheduleSpec:
    return ScheduleSpec.model_validate(
        {
            "name": name,
            "namespace": "ha",
            "trigger": {"once": at},
            "run": {"call": "tests.schedule.marks:mark", "args": [str(path), name]},
        }
    )


@pytest.mark.slow
def test_two_instances_fire_1000_schedules_exactly_once(postgres_url: str, tmp_path: Path) -> None:
    """The issue's case: two scheduler processes on one PostgreSQL (several processes on SQLite are tested below)."""
    database_url = postgres_url
    store = Database(database_url)
    upgrade(store)
    marks = tmp_path / "marks.txt"
    service = SchedulerService(store)
    procs = [SchedulerProcess(database_url, tmp_path / f"d{i}", tmp_path / f"sched{i}.log") for i in range(2)]
    first = utcnow() + timedelta(seconds=3)
    specs = [
        once(f"s{i:04d}", (first + timedelta(milliseconds=5 * i)).isoformat(), marks) for i in range(1000)
    ]
    try:
        service.apply(specs, "ha")
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            done = [r for r in service.runs(namespace="ha", limit=1000) if r.state == "succeeded"]
            if len(done) >= 1000:
                break
            time.sleep(0.25)
    finally:
        for proc in procs:
            proc.stop()
    lines = marks.read_text().splitlines() if marks.exists() else []
    counts = Counter(line.split()[0] for line in lines)
    duplicates = {name: n for name, n in counts.items() if n > 1}
    missing = {s.name for s in specs} - set(counts)
    assert not duplicates, f"fired more than once: {sorted(duplicates)[:10]}"
    runs = service.runs(namespace="ha", limit=1000)
    assert not missing, (
        f"never fired: {sorted(missing)[:10]} ({len(missing)}); {Counter(r.state for r in runs)}"
    )
    assert Counter(r.state for r in runs) == {"succeeded": 1000}
    # Both processes did work: the schedules were shared out, not all taken by whoever came first.
    assert len({line.split()[1] for line in lines}) == 2


@pytest.mark.slow
def test_interval_schedules_on_two_instances_never_double_fire(
    store: Database, database_url: str, tmp_path: Path
) -> None:
    marks = tmp_path / "marks.txt"
    service = SchedulerService(store)
    specs = [
        ScheduleSpec.model_validate(
            {
                "name": f"i{i:03d}",
                "namespace": "ha",
                "trigger": {"every": "200ms"},
                "run": {"call": "tests.schedule.marks:mark", "args": [str(marks), f"i{i:03d}"]},
            }
        )
        for i in range(100)
    ]
    procs = [SchedulerProcess(database_url, tmp_path / f"d{i}", tmp_path / f"sched{i}.log") for i in range(2)]
    try:
        service.apply(specs, "ha")
        time.sleep(2.5)
        # One instance dies hard mid-way; the other must carry on with its schedules.
        procs[0].kill()
        time.sleep(4.5)
        for spec in specs:
            service.pause(f"ha/{spec.name}")
        time.sleep(1)
    finally:
        for proc in procs:
            proc.stop()
    lines = marks.read_text().splitlines()
    executions = Counter(line.split()[0] for line in lines)
    runs = [run for spec in specs for run in service.runs(f"ha/{spec.name}", limit=1000)]
    by_schedule = Counter(r.schedule for r in runs if r.state in ("succeeded", "interrupted"))
    keys = Counter((r.schedule, r.scheduled_at, r.attempt) for r in runs)
    assert max(keys.values()) == 1
    for spec in specs:
        # Every execution is a recorded run: at most the interrupted ones may have run without an outcome.
        states = Counter(r.state for r in runs if r.schedule == spec.name)
        assert executions[spec.name] <= by_schedule[spec.name], (spec.name, states)
        assert executions[spec.name] >= 10, f"{spec.name} ran only {executions[spec.name]} times"


@pytest.mark.slow
def test_kill_9_during_a_run_then_restart(store: Database, database_url: str, tmp_path: Path) -> None:
    pidfile = tmp_path / "job.pid"
    service = SchedulerService(store)
    service.create(
        ScheduleSpec.model_validate(
            {
                "name": "long",
                "namespace": "crash",
                "trigger": {"once": "now"},
                "run": {
                    "python": f"import os, time, pathlib; pathlib.Path({str(pidfile)!r}).write_text(str(os.getpid())); time.sleep(60)"
                },
                "retry": {"max": 1, "backoff": "200ms", "jitter": False},
            }
        )
    )
    first = SchedulerProcess(database_url, tmp_path / "d1", tmp_path / "first.log")
    deadline = time.monotonic() + 30
    while not (pidfile.exists() and pidfile.read_text()):
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.05)
    job = int(pidfile.read_text())
    pidfile.unlink()
    while not [r for r in service.runs("crash/long") if r.state == "running"]:
        assert time.monotonic() < deadline, service.runs("crash/long")
        time.sleep(0.05)
    first.kill()
    assert not gone(job), "the job should outlive its scheduler's kill -9 (it is in its own session)"
    second = SchedulerProcess(database_url, tmp_path / "d2", tmp_path / "second.log")
    try:
        deadline = time.monotonic() + 30
        while True:
            runs = sorted(service.runs("crash/long"), key=lambda r: r.attempt)
            if len(runs) == 2 and runs[1].state == "running":
                break
            assert time.monotonic() < deadline, [(r.attempt, r.state, r.error) for r in runs]
            time.sleep(0.1)
        interrupted, retry = runs
        assert interrupted.state == "interrupted" and interrupted.attempt == 1
        assert first.id in (interrupted.error or "")
        assert retry.cause == "retry" and retry.owner == second.id
        # The orphan of the killed scheduler was killed, so the job does not run twice at once.
        wait_until_gone(job, "the orphaned job of the killed scheduler", timeout=10)
    finally:
        second.stop()
