"""Assembly of the scheduler from settings: service, notifier and an instance on one store."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ecliptic.config import Settings
from ecliptic.engine.clock import Clock
from ecliptic.schedule.instance import InstanceSettings, SchedulerInstance
from ecliptic.schedule.notify import Notifier
from ecliptic.schedule.service import SchedulerService
from ecliptic.store.database import Database


@dataclass
class SchedulerParts:
    service: SchedulerService
    instance: SchedulerInstance
    notifier: Notifier

    def start(self) -> None:
        self.notifier.start()
        self.instance.start()

    def stop(self) -> None:
        self.instance.stop()
        self.notifier.stop()


def instance_settings(settings: Settings, **overrides: Any) -> InstanceSettings:
    values: dict[str, Any] = {
        "tick": settings.scheduler_tick.total_seconds(),
        "lookahead": settings.scheduler_lookahead,
        "lease": settings.scheduler_lease,
        "log_dir": settings.runs_dir,
        "broker_url": settings.broker_url or "http://127.0.0.1:8080",
        "run_retention": settings.run_retention,
    }
    values.update(overrides)
    return InstanceSettings(**values)


def build_scheduler(
    db: Database,
    settings: Settings,
    *,
    clock: Clock | None = None,
    callables: dict[str, Callable[..., Any]] | None = None,
    **overrides: Any,
) -> SchedulerParts:
    notifier = Notifier()
    instance = SchedulerInstance(
        db,
        settings=instance_settings(settings, **overrides),
        clock=clock,
        notifier=notifier,
        callables=callables,
    )
    service = SchedulerService(db, clock=clock, on_change=instance.wake, local=instance)
    return SchedulerParts(service, instance, notifier)
