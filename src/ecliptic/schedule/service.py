"""The scheduler as a library of operations on the store: create, update, pause, trigger, backfill, list.

The HTTP API, the CLI and the Python library all go through :class:`SchedulerService`. It never runs anything
itself: it writes rows, and the scheduler instance that owns a schedule (``instance.SchedulerInstance``, in
this process or another) notices the change (``changed_at``) and acts. Each change is one transaction and one
audit row.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from pydantic import BaseModel
from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ecliptic.engine.clock import Clock, SystemClock
from ecliptic.schedule import triggers
from ecliptic.schedule.namespaces import origin as make_origin
from ecliptic.schedule.spec import Instant, OnceTrigger, RunView, ScheduleSpec, ScheduleView
from ecliptic.schedule.views import run_view, schedule_view
from ecliptic.store.database import Database
from ecliptic.store.tables import AuditRow, NamespaceRow, RunRow, ScheduleRow

DEFAULT_NAMESPACE = "default"
_TIMING = ("trigger", "timezone", "start", "end", "exclude", "max_runs", "jitter")
"""The fields whose change makes planned fire times wrong."""
_EPSILON = timedelta(microseconds=1)


class ScheduleError(Exception):
    """A request the scheduler refuses, with the HTTP status that says why."""

    status = 400

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class NotFound(ScheduleError):
    status = 404


class Conflict(ScheduleError):
    status = 409


class NamespaceView(BaseModel):
    name: str
    ephemeral: bool
    origin: dict[str, Any]
    created: Instant
    schedules: int


class AuditView(BaseModel):
    id: int
    at: Instant
    actor: str
    action: str
    namespace: str
    schedule: str | None
    schedule_id: str | None
    detail: dict[str, Any]


@dataclass(frozen=True)
class ApplyResult:
    created: list[str]
    updated: list[str]
    unchanged: list[str]
    removed: list[str]


def first_fire(spec: ScheduleSpec, created: datetime, after: datetime | None = None) -> datetime | None:
    """The first fire time at or after ``after`` (default: the creation time)."""
    compiled = triggers.compile_trigger(spec, created)
    return compiled.next_after((after or created) - _EPSILON)


class LocalInstance(Protocol):
    """A scheduler instance in this process that may take new schedules on the spot."""

    id: str

    def accepts(self, namespace: str) -> datetime | None:
        """Until when it would lease a new schedule of ``namespace``; None if it is not taking any."""
        ...

    def adopt(self, rows: list[ScheduleRow]) -> None: ...


class SchedulerService:
    def __init__(
        self,
        db: Database,
        *,
        clock: Clock | None = None,
        on_change: Callable[[str], None] | None = None,
        local: LocalInstance | None = None,
    ) -> None:
        self.db = db
        self.clock: Clock = clock or SystemClock()
        self._listeners: list[Callable[[str], None]] = [on_change] if on_change else []
        self.local = local

    def subscribe(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(schedule_id)`` after every committed change (a local instance wakes on it)."""
        self._listeners.append(listener)

    def _changed(self, schedule_ids: Iterable[str]) -> None:
        for schedule_id in schedule_ids:
            for listener in self._listeners:
                listener(schedule_id)

    # -- lookups -----------------------------------------------------------------------------------------------
    def _find(self, session: Session, ref: str, *, lock: bool = False) -> ScheduleRow:
        """A schedule by id, ``namespace/name``, or a name that is unique across namespaces."""
        query = select(ScheduleRow).where(ScheduleRow.deleted.is_(False))
        if "/" in ref:
            namespace, _, name = ref.partition("/")
            query = query.where(ScheduleRow.namespace == namespace, ScheduleRow.name == name)
        else:
            query = query.where((ScheduleRow.id == ref) | (ScheduleRow.name == ref))
        if lock and self.db.is_postgres:
            query = query.with_for_update()
        rows = session.scalars(query).all()
        if not rows:
            raise NotFound(f"no schedule {ref!r} (give its id, namespace/name, or a unique name)")
        if len(rows) > 1:
            names = ", ".join(sorted(f"{r.namespace}/{r.name}" for r in rows))
            raise Conflict(f"{ref!r} names several schedules ({names}): give namespace/name")
        return rows[0]

    def _last_runs(self, session: Session, ids: list[str]) -> dict[str, RunRow]:
        if not ids:
            return {}
        newest = (
            select(func.max(RunRow.id))
            .where(RunRow.schedule_id.in_(ids), RunRow.state.not_in(("scheduled",)))
            .group_by(RunRow.schedule_id)
        )
        rows = session.scalars(select(RunRow).where(RunRow.id.in_(newest))).all()
        return {row.schedule_id: row for row in rows}

    def get(self, ref: str) -> ScheduleView:
        with self.db.read() as session:
            row = self._find(session, ref)
            return schedule_view(row, self._last_runs(session, [row.id]).get(row.id))

    def schedules(self, namespace: str | None = None) -> list[ScheduleView]:
        with self.db.read() as session:
            query = select(ScheduleRow).where(ScheduleRow.deleted.is_(False))
            if namespace is not None:
                query = query.where(ScheduleRow.namespace == namespace)
            rows = session.scalars(query.order_by(ScheduleRow.namespace, ScheduleRow.name)).all()
            last = self._last_runs(session, [row.id for row in rows])
            return [schedule_view(row, last.get(row.id)) for row in rows]

    def namespaces(self) -> list[NamespaceView]:
        with self.db.read() as session:
            counts = dict(
                session.execute(
                    select(ScheduleRow.namespace, func.count())
                    .where(ScheduleRow.deleted.is_(False))
                    .group_by(ScheduleRow.namespace)
                ).all()
            )
            rows = session.scalars(select(NamespaceRow).order_by(NamespaceRow.name)).all()
            return [
                NamespaceView(
                    name=row.name,
                    ephemeral=row.ephemeral,
                    origin=dict(row.origin or {}),
                    created=row.created,
                    schedules=int(counts.get(row.name, 0)),
                )
                for row in rows
            ]

    def runs(
        self,
        ref: str | None = None,
        *,
        namespace: str | None = None,
        state: str | None = None,
        limit: int = 50,
        before: int | None = None,
    ) -> list[RunView]:
        """Newest first; ``before`` pages back by run id."""
        with self.db.read() as session:
            query = select(RunRow, ScheduleRow).join(ScheduleRow, ScheduleRow.id == RunRow.schedule_id)
            if ref is not None:
                query = query.where(RunRow.schedule_id == self._find(session, ref).id)
            if namespace is not None:
                query = query.where(ScheduleRow.namespace == namespace)
            if state is not None:
                query = query.where(RunRow.state == state)
            if before is not None:
                query = query.where(RunRow.id < before)
            rows = session.execute(query.order_by(RunRow.id.desc()).limit(max(1, min(limit, 1000)))).all()
            return [run_view(run, schedule) for run, schedule in rows]

    def run(self, run_id: int) -> RunView:
        with self.db.read() as session:
            found = session.execute(
                select(RunRow, ScheduleRow)
                .join(ScheduleRow, ScheduleRow.id == RunRow.schedule_id)
                .where(RunRow.id == run_id)
            ).first()
            if found is None:
                raise NotFound(f"no run {run_id}")
            return run_view(found[0], found[1])

    def run_changes(self, since: datetime, limit: int = 500) -> list[RunView]:
        """Runs changed after ``since``, oldest change first (the event stream reads these)."""
        with self.db.read() as session:
            rows = session.execute(
                select(RunRow, ScheduleRow)
                .join(ScheduleRow, ScheduleRow.id == RunRow.schedule_id)
                .where(RunRow.changed_at > since)
                .order_by(RunRow.changed_at, RunRow.id)
                .limit(limit)
            ).all()
            return [run_view(run, schedule) for run, schedule in rows]

    def audit(self, namespace: str | None = None, limit: int = 100) -> list[AuditView]:
        with self.db.read() as session:
            query = select(AuditRow)
            if namespace is not None:
                query = query.where(AuditRow.namespace == namespace)
            rows = session.scalars(query.order_by(AuditRow.id.desc()).limit(limit)).all()
            return [
                AuditView(
                    id=r.id,
                    at=r.at,
                    actor=r.actor,
                    action=r.action,
                    namespace=r.namespace,
                    schedule=r.schedule,
                    schedule_id=r.schedule_id,
                    detail=dict(r.detail or {}),
                )
                for r in rows
            ]

    def preview(self, ref: str, count: int = 10) -> list[datetime]:
        with self.db.read() as session:
            row = self._find(session, ref)
            spec = ScheduleSpec.model_validate(row.spec)
            created = row.created
        return triggers.preview(spec, count, after=self.clock.now(), created=created)

    # -- changes -----------------------------------------------------------------------------------------------
    def _audit(self, session: Session, actor: str, action: str, row: ScheduleRow, **detail: Any) -> None:
        session.add(
            AuditRow(
                at=self.clock.now(),
                actor=actor,
                action=action,
                namespace=row.namespace,
                schedule=row.name,
                schedule_id=row.id,
                detail=detail,
            )
        )

    def ensure_namespace(
        self, session: Session, name: str, *, ephemeral: bool = False, origin: dict[str, Any] | None = None
    ) -> None:
        if session.get(NamespaceRow, name) is not None:
            return
        session.add(
            NamespaceRow(
                name=name,
                ephemeral=ephemeral,
                origin=origin or make_origin(None),
                created=self.clock.now(),
            )
        )
        session.flush()

    def _insert(
        self, session: Session, spec: ScheduleSpec, actor: str, origin: dict[str, Any], *, many: bool = False
    ) -> ScheduleRow:
        """Add a schedule row; with ``many`` the caller has made the namespace and flushes once for all."""
        now = self.clock.now()
        namespace = spec.namespace or DEFAULT_NAMESPACE
        spec = spec.model_copy(update={"namespace": namespace})
        if not many:
            self.ensure_namespace(session, namespace)
        nxt = first_fire(spec, now)
        if nxt is None and isinstance(spec.trigger, OnceTrigger) and isinstance(spec.trigger.once, datetime):
            instant = spec.trigger.once
            if instant < now and now - instant <= spec.catchup.grace:
                nxt = instant  # a moment late (a slow request): it runs at once rather than never
            elif instant < now and not many:
                raise ScheduleError(
                    f"the once instant {instant.isoformat()} has passed: give a later one, or once: now",
                    field="trigger.once",
                )
        row = ScheduleRow(
            id=str(uuid.uuid4()),
            namespace=namespace,
            name=spec.name,
            spec=spec.model_dump(mode="json", by_alias=True),
            paused=spec.paused,
            deleted=False,
            next_fire_at=nxt,
            attention_at=None if spec.paused else nxt,
            fires=0,
            version=1,
            created=now,
            updated=now,
            changed_at=now,
            origin=origin,
        )
        session.add(row)
        if not many:
            try:
                session.flush()
            except IntegrityError as exc:
                raise Conflict(
                    f"a schedule {namespace}/{spec.name} exists already (update it, or delete it first)",
                    field="name",
                ) from exc
        self._audit(session, actor, "create", row, spec=row.spec)
        return row

    def create(
        self, spec: ScheduleSpec, *, actor: str = "library", origin: dict[str, Any] | None = None
    ) -> ScheduleView:
        with self.db.write() as session:
            row = self._insert(session, spec, actor, origin or make_origin(None))
            lease_until = self.local.accepts(row.namespace) if self.local is not None else None
            if lease_until is not None and row.attention_at is not None:
                # The scheduler of this process owns it from the start: no claim round before its first fire.
                row.owner, row.lease_until = self.local.id, lease_until  # type: ignore[union-attr]
            view = schedule_view(row)
        if row.owner is not None and self.local is not None:
            self.local.adopt([row])
        self._changed([view.id])
        return view

    def _replace_spec(self, session: Session, row: ScheduleRow, spec: ScheduleSpec, actor: str) -> None:
        now = self.clock.now()
        spec = spec.model_copy(update={"namespace": row.namespace, "name": spec.name})
        old = ScheduleSpec.model_validate(row.spec)
        retimed = any(getattr(old, key) != getattr(spec, key) for key in _TIMING)
        if spec.name != row.name:
            row.name = spec.name
        row.spec = spec.model_dump(mode="json", by_alias=True)
        if retimed:
            # The new trigger counts from now; fires planned under the old one are withdrawn.
            self._withdraw_planned(session, row)
            row.next_fire_at = first_fire(spec, row.created, after=now)
            if spec.max_runs is not None and row.fires >= spec.max_runs:
                row.next_fire_at = None
        if spec.paused != row.paused:
            self._set_paused(session, row, spec.paused)
        row.attention_at = None if row.paused else row.next_fire_at
        row.version += 1
        row.updated = now
        row.changed_at = now
        try:
            session.flush()
        except IntegrityError as exc:
            raise Conflict(f"a schedule {row.namespace}/{spec.name} exists already", field="name") from exc
        self._audit(session, actor, "update", row, spec=row.spec, retimed=retimed)

    def update(self, ref: str, spec: ScheduleSpec, *, actor: str = "library") -> ScheduleView:
        """Replace a schedule's spec; it takes effect at once (a new trigger counts from now)."""
        with self.db.write() as session:
            row = self._find(session, ref, lock=True)
            self._replace_spec(session, row, spec, actor)
            view = schedule_view(row, self._last_runs(session, [row.id]).get(row.id))
        self._changed([view.id])
        return view

    def apply(
        self,
        specs: list[ScheduleSpec],
        namespace: str,
        *,
        actor: str = "library",
        ephemeral: bool = False,
        origin: dict[str, Any] | None = None,
        prune: bool = False,
    ) -> ApplyResult:
        """Make ``namespace`` hold these schedules (a timetable file): create new, update changed ones; with
        ``prune``, delete the namespace's schedules the file no longer has."""
        created: list[str] = []
        updated: list[str] = []
        unchanged: list[str] = []
        removed: list[str] = []
        ids: list[str] = []
        with self.db.write() as session:
            self.ensure_namespace(session, namespace, ephemeral=ephemeral, origin=origin)
            existing = {
                row.name: row
                for row in session.scalars(
                    select(ScheduleRow).where(
                        ScheduleRow.namespace == namespace, ScheduleRow.deleted.is_(False)
                    )
                )
            }
            for spec in specs:
                spec = spec.model_copy(update={"namespace": namespace})
                row = existing.pop(spec.name, None)
                if row is None:
                    row = self._insert(session, spec, actor, origin or make_origin(None), many=True)
                    created.append(spec.name)
                elif row.spec == spec.model_dump(mode="json", by_alias=True):
                    unchanged.append(spec.name)
                    continue
                else:
                    self._replace_spec(session, row, spec, actor)
                    updated.append(spec.name)
                ids.append(row.id)
            if prune:
                for name, row in existing.items():
                    self._delete_row(session, row, actor)
                    removed.append(name)
                    ids.append(row.id)
            try:
                session.flush()
            except IntegrityError as exc:
                raise Conflict(f"another client changed {namespace} at the same time: apply again") from exc
        self._changed(ids)
        return ApplyResult(created, updated, unchanged, removed)

    def _delete_row(self, session: Session, row: ScheduleRow, actor: str) -> None:
        self._audit(session, actor, "delete", row)
        if row.owner is None:
            session.delete(row)
            return
        # Its owner stops what runs and removes the row when it sees the change.
        row.deleted = True
        row.attention_at = None
        row.changed_at = self.clock.now()
        row.version += 1

    def delete(self, ref: str, *, actor: str = "library") -> None:
        with self.db.write() as session:
            row = self._find(session, ref, lock=True)
            schedule_id = row.id
            self._delete_row(session, row, actor)
        self._changed([schedule_id])

    def _owned_now(self, row: ScheduleRow) -> bool:
        return row.owner is not None and row.lease_until is not None and row.lease_until >= self.clock.now()

    def _withdraw_planned(self, session: Session, row: ScheduleRow) -> None:
        """Delete fires planned under the old trigger — unless a live instance owns the schedule: only it knows
        which of them it has started, so it withdraws them itself when it sees the change."""
        if self._owned_now(row):
            return
        session.execute(
            delete(RunRow).where(
                RunRow.schedule_id == row.id,
                RunRow.state == "scheduled",
                RunRow.cause.in_(("schedule", "catchup")),
            )
        )

    def _set_paused(self, session: Session, row: ScheduleRow, paused: bool) -> None:
        now = self.clock.now()
        row.paused = paused
        if paused:
            self._withdraw_planned(session, row)
        else:
            # Resume from now: times that passed while paused were not wanted, so they are not caught up.
            spec = ScheduleSpec.model_validate(row.spec)
            if row.next_fire_at is not None and row.next_fire_at < now:
                row.next_fire_at = first_fire(spec, row.created, after=now)
        spec_doc = dict(row.spec)
        spec_doc["paused"] = paused
        row.spec = spec_doc

    def pause(self, ref: str, *, actor: str = "library") -> ScheduleView:
        return self._pause_or_resume(ref, True, actor)

    def resume(self, ref: str, *, actor: str = "library") -> ScheduleView:
        return self._pause_or_resume(ref, False, actor)

    def _pause_or_resume(self, ref: str, paused: bool, actor: str) -> ScheduleView:
        with self.db.write() as session:
            row = self._find(session, ref, lock=True)
            if row.paused != paused:
                self._set_paused(session, row, paused)
                row.attention_at = None if paused else row.next_fire_at
                row.version += 1
                row.updated = row.changed_at = self.clock.now()
                self._audit(session, actor, "pause" if paused else "resume", row)
            view = schedule_view(row, self._last_runs(session, [row.id]).get(row.id))
        self._changed([view.id])
        return view

    def _add_runs(
        self, session: Session, row: ScheduleRow, times: list[datetime], cause: str
    ) -> list[RunRow]:
        now = self.clock.now()
        existing = set(
            session.scalars(
                select(RunRow.scheduled_at).where(
                    RunRow.schedule_id == row.id, RunRow.scheduled_at.in_(times), RunRow.attempt == 1
                )
            )
        )
        runs = [
            RunRow(
                schedule_id=row.id,
                scheduled_at=at,
                attempt=1,
                due_at=max(at, now) if cause == "backfill" else at,
                cause=cause,
                state="scheduled",
                owner=None,  # no instance has it yet: whoever owns the schedule adopts it
                changed_at=now,
            )
            for at in times
            if at not in existing
        ]
        session.add_all(runs)
        session.flush()
        if runs:
            earliest = min(run.due_at for run in runs)
            row.attention_at = earliest if row.attention_at is None else min(row.attention_at, earliest)
            row.changed_at = now
            row.version += 1
        return runs

    def trigger(self, ref: str, *, actor: str = "library") -> RunView:
        """Run now, outside the schedule (the run's scheduled time is now); works on paused schedules too."""
        with self.db.write() as session:
            row = self._find(session, ref, lock=True)
            now = self.clock.now()
            (run,) = self._add_runs(session, row, [now], "manual")
            self._audit(session, actor, "trigger", row, run=run.id)
            view = run_view(run, row)
        self._changed([view.schedule_id])
        return view

    def backfill(
        self, ref: str, start: datetime, end: datetime, *, actor: str = "library", limit: int = 1000
    ) -> list[RunView]:
        """Run every fire time of the schedule in [start, end] that has no run yet, one after another."""
        if end < start:
            raise ScheduleError("the backfill range ends before it starts", field="end")
        with self.db.write() as session:
            row = self._find(session, ref, lock=True)
            spec = ScheduleSpec.model_validate(row.spec)
            compiled = triggers.compile_trigger(spec, row.created)
            times = compiled.times_between(start - _EPSILON, end, limit + 1)
            if len(times) > limit:
                raise ScheduleError(
                    f"the range holds more than {limit} fire times: backfill a shorter range", field="end"
                )
            runs = self._add_runs(session, row, times, "backfill")
            self._audit(
                session, actor, "backfill", row, start=start.isoformat(), end=end.isoformat(), runs=len(runs)
            )
            views = [run_view(run, row) for run in runs]
        self._changed([row.id])
        return views

    def cancel_run(self, run_id: int, *, actor: str = "library") -> RunView:
        """Cancel a run that has not finished: a waiting one at once, a running one through its owner."""
        with self.db.write() as session:
            query = select(RunRow).where(RunRow.id == run_id)
            if self.db.is_postgres:
                query = query.with_for_update()
            run = session.scalar(query)
            if run is None:
                raise NotFound(f"no run {run_id}")
            row = session.get(ScheduleRow, run.schedule_id)
            assert row is not None
            now = self.clock.now()
            if run.state == "scheduled" and not self._owned_now(row):
                run.state = "cancelled"
                run.ended_at = now
                run.error = f"cancelled by {actor} before it started"
            elif run.state in ("scheduled", "running"):
                # Its owner may be starting it this very moment: the owner decides, and records which it was.
                run.state = "cancelling"
                run.error = f"cancel requested by {actor}"
            else:
                raise Conflict(f"run {run_id} has ended already ({run.state})")
            run.changed_at = now
            row.changed_at = now
            row.version += 1
            self._audit(session, actor, "cancel", row, run=run_id)
            view = run_view(run, row)
        self._changed([view.schedule_id])
        return view

    def purge_runs(self, older_than: datetime) -> int:
        """Delete finished runs that ended before ``older_than``."""
        with self.db.write() as session:
            result = session.execute(
                delete(RunRow).where(
                    RunRow.ended_at < older_than, RunRow.state.not_in(("scheduled", "running"))
                )
            )
            return int(result.rowcount or 0)  # type: ignore[attr-defined]

    def touch(self, schedule_ids: list[str]) -> None:
        """Mark schedules changed without changing them (tests, and tools that edited rows directly)."""
        with self.db.write() as session:
            session.execute(
                update(ScheduleRow)
                .where(ScheduleRow.id.in_(schedule_ids))
                .values(changed_at=self.clock.now())
            )
        self._changed(schedule_ids)
