"""Rows → the wire models the API, CLI and UI show."""

from __future__ import annotations

import logging

from ecliptic.schedule.spec import RunView, ScheduleSpec, ScheduleView
from ecliptic.store.tables import RunRow, ScheduleRow

log = logging.getLogger(__name__)


def run_view(
    row: RunRow, schedule: ScheduleRow | None = None, *, namespace: str = "", name: str = ""
) -> RunView:
    duration = None
    if row.started_at is not None and row.ended_at is not None:
        duration = (row.ended_at - row.started_at).total_seconds()
    return RunView(
        id=row.id,
        schedule_id=row.schedule_id,
        namespace=schedule.namespace if schedule is not None else namespace,
        schedule=schedule.name if schedule is not None else name,
        scheduled_at=row.scheduled_at,
        due_at=row.due_at,
        attempt=row.attempt,
        cause=row.cause,
        state=row.state,
        started_at=row.started_at,
        ended_at=row.ended_at,
        duration_s=duration,
        exit_code=row.exit_code,
        error=row.error,
        stdout_tail=row.stdout_tail,
        stderr_tail=row.stderr_tail,
        owner=row.owner,
    )


def describe_spec(spec: ScheduleSpec) -> str:
    from ecliptic.schedule import triggers

    try:
        return triggers.describe(spec)
    except Exception:  # a description is a courtesy: never let it break a listing
        log.debug("describing %s failed", spec.name, exc_info=True)
        return str(spec.trigger.model_dump(mode="json"))


def schedule_view(row: ScheduleRow, last_run: RunRow | None = None) -> ScheduleView:
    spec = ScheduleSpec.model_validate(row.spec)
    return ScheduleView(
        id=row.id,
        namespace=row.namespace,
        name=row.name,
        spec=spec,
        description=describe_spec(spec),
        paused=row.paused,
        next_fire_at=None if row.paused else row.next_fire_at,
        fires=row.fires,
        last_run=run_view(last_run, row) if last_run is not None else None,
        created=row.created,
        updated=row.updated,
        owner=row.owner,
        origin=dict(row.origin or {}),
    )
