"""A scheduler on a real store, for tests: a service, an instance, bounded waits on what the store says."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

from ecliptic.engine.clock import Clock
from ecliptic.schedule.instance import InstanceSettings, SchedulerInstance
from ecliptic.schedule.notify import Notifier
from ecliptic.schedule.service import SchedulerService
from ecliptic.schedule.spec import RunView, ScheduleSpec, ScheduleView
from ecliptic.store import Database, upgrade


def spec(
    name: str, trigger: dict[str, Any], run: dict[str, Any] | None = None, **fields: Any
) -> ScheduleSpec:
    return ScheduleSpec.model_validate(
        {"name": name, "namespace": "test", "trigger": trigger, "run": run or {"cmd": ["true"]}, **fields}
    )


class Harness:
    def __init__(self, db: Database, tmp: Path, clock: Clock | None = None, **settings: Any) -> None:
        self.db = db
        self.notifier = Notifier()
        values: dict[str, Any] = {
            "tick": 0.02,
            "lookahead": timedelta(milliseconds=500),
            "lease": timedelta(seconds=5),
            "heartbeat": timedelta(milliseconds=500),
            "log_dir": tmp / "runs",
        }
        values.update(settings)
        self.instance = SchedulerInstance(
            db, settings=InstanceSettings(**values), clock=clock, notifier=self.notifier
        )
        self.service = SchedulerService(db, clock=clock, on_change=self.instance.wake, local=self.instance)

    def start(self) -> Harness:
        self.notifier.start()
        self.instance.start()
        return self

    def stop(self) -> None:
        self.instance.stop(grace=5)
        self.notifier.stop(timeout=2)

    def create(self, schedule: ScheduleSpec) -> ScheduleView:
        return self.service.create(schedule, actor="test")

    def runs(self, ref: str) -> list[RunView]:
        """Oldest first."""
        return list(reversed(self.service.runs(ref, limit=1000)))

    def wait_runs(
        self,
        ref: str,
        done: Callable[[list[RunView]], bool],
        timeout: float = 30,
        what: str = "the runs",
    ) -> list[RunView]:
        deadline = time.monotonic() + timeout
        runs: list[RunView] = []
        while time.monotonic() < deadline:
            runs = self.runs(ref)
            if done(runs):
                return runs
            time.sleep(0.03)
        states = [(r.id, r.attempt, r.cause, r.state, r.error) for r in runs]
        raise AssertionError(f"{what} of {ref} did not come: {states}")

    def wait_finished(self, ref: str, count: int, timeout: float = 30) -> list[RunView]:
        return self.wait_runs(
            ref,
            lambda runs: (
                len([r for r in runs if r.state not in ("scheduled", "running", "cancelling")]) >= count
            ),
            timeout,
            f"{count} finished runs",
        )


@contextmanager
def harness(database_url: str, tmp: Path, clock: Clock | None = None, **settings: Any) -> Iterator[Harness]:
    db = Database(database_url)
    upgrade(db)
    h = Harness(db, tmp, clock, **settings).start()
    try:
        yield h
    finally:
        h.stop()
        db.dispose()
