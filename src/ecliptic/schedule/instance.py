"""A scheduler instance: owns schedules through leases, fires their runs on time, records what happened.

Any number of instances (threads of ``ecliptic serve``, ``ecliptic run`` processes, other machines) share one
store. Each schedule is owned by at most one live instance at a time (``schedules.owner`` + ``lease_until``,
renewed in one statement per heartbeat), so overlap, queueing and fixed-delay decisions are made in one place.
Nothing fires twice: a run is a row, unique on (schedule, scheduled time, attempt), written *before* its time
comes; the owner checks its lease is still good before it starts one.

Three threads do the work:

- **control** (every ``tick``, or at once when woken): heartbeat and lease renewal, reloads of schedules that
  changed, claiming unowned schedules (``FOR UPDATE SKIP LOCKED`` on PostgreSQL), and *planning*: the fire
  times of the next ``lookahead`` become ``scheduled`` run rows in one transaction for all schedules, with the
  catch-up policy applied to times that passed while nobody owned the schedule.
- **timer**: a heap of planned runs; sleeps until the earliest and starts it — no database work on this path,
  which is why a run starts within a millisecond of its time.
- **writer**: start marks, outcomes, retries and schedule state, written in batches (one transaction for
  whatever has queued up), so thousands of fires per second cost tens of transactions.

When an owner dies, its leases lapse (at once, if it was on this host and its process is gone) and another
instance claims its schedules: every run whose time had come and that had not ended is recorded
``interrupted`` (it may have started; it is never started again behind the policy's back), its process group
is killed if it is still alive on this host, and the retry policy decides whether a new attempt runs.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import random
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, cast

from sqlalchemy import Table, and_, bindparam, delete, insert, or_, select, update
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from ecliptic.engine.clock import Clock, SystemClock
from ecliptic.schedule import runners, triggers
from ecliptic.schedule.notify import Notifier, RunEvent, events_for
from ecliptic.schedule.spec import RETRYABLE, CallRunner, IntervalTrigger, ScheduleSpec
from ecliptic.schedule.views import run_view
from ecliptic.store.database import Database
from ecliptic.store.tables import RunRow, SchedulerInstanceRow, ScheduleRow

log = logging.getLogger(__name__)

_TERMINAL = ("succeeded", "failed", "timed_out", "missed", "skipped", "cancelled", "interrupted")
_RUNS = cast(Table, RunRow.__table__)
_SCHEDULES = cast(Table, ScheduleRow.__table__)


@dataclass
class InstanceSettings:
    tick: float = 0.1
    """Seconds between control rounds (changes made in other processes are seen within one)."""
    lookahead: timedelta = timedelta(seconds=1)
    """How far ahead fire times become run rows."""
    lease: timedelta = timedelta(seconds=15)
    heartbeat: timedelta = timedelta(seconds=2)
    claim_batch: int = 500
    plan_limit: int = 10_000
    """Most run rows one schedule may plan in one round (a 1 ms interval plans 1000 a second)."""
    call_threads: int = 8
    log_dir: Path = Path("runs")
    broker_url: str | None = None
    max_missed_records: int = 1000
    catchup_scan_limit: int = 100_000
    run_retention: timedelta = timedelta(days=30)
    """Finished runs older than this are deleted."""
    namespaces: frozenset[str] | None = None
    """Claim only schedules of these namespaces (``ecliptic run`` runs its own timetable, not the whole store)."""


def make_instance_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{random.getrandbits(32):08x}"


@dataclass(order=True)
class _Planned:
    due_at: datetime
    seq: int
    run_id: int = field(compare=False)
    schedule_id: str = field(compare=False)
    scheduled_at: datetime = field(compare=False)
    attempt: int = field(compare=False)
    cause: str = field(compare=False)


@dataclass
class _Active:
    planned: _Planned
    cancel: threading.Event
    reasons: list[str]
    started_at: datetime
    interrupted: bool = False


@dataclass
class _Owned:
    id: str
    namespace: str
    name: str
    spec: ScheduleSpec
    compiled: triggers.CompiledTrigger
    version: int
    created: datetime
    paused: bool
    next_fire_at: datetime | None
    fires: int
    last_outcome: str | None
    pending: dict[int, _Planned] = field(default_factory=dict)
    """Planned runs in the heap, not started yet: the only ones this instance may still withdraw."""
    running: dict[int, _Active] = field(default_factory=dict)
    queue: deque[_Planned] = field(default_factory=deque)
    waiting_for_previous: bool = False

    @property
    def fixed_delay(self) -> bool:
        return isinstance(self.spec.trigger, IntervalTrigger) and self.spec.trigger.mode == "delay"


RunListener = Callable[[str, dict[str, Any]], None]
"""Called with (event, run) after a run's change is committed: ``scheduled``, ``started``, ``finished``."""


class _Writer:
    """Batches run and schedule writes: one transaction for everything queued since the last one."""

    def __init__(self, instance: SchedulerInstance) -> None:
        self.instance = instance
        self._items: list[tuple[str, dict[str, Any], Callable[[int], None] | None]] = []
        self._cond = threading.Condition()
        self._stop = False
        self._busy = False
        self.linger = 0.003
        self._thread = threading.Thread(target=self._loop, name="ecliptic-schedule-writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def put(self, op: str, values: dict[str, Any], after: Callable[[int], None] | None = None) -> None:
        with self._cond:
            self._items.append((op, values, after))
            self._cond.notify()

    def flush(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while (self._items or self._busy) and time.monotonic() < deadline:
                self._cond.wait(0.01)

    def stop(self) -> None:
        self.flush()
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._items and not self._stop:
                    self._cond.wait()
                if self._stop and not self._items:
                    return
                # A moment's patience lets a short run's start mark and outcome share one transaction.
                until = time.monotonic() + self.linger
                while not self._stop and (left := until - time.monotonic()) > 0:
                    self._cond.wait(left)
                batch, self._items = self._items, []
                self._busy = True
            try:
                self._write(batch)
            except Exception:
                log.exception("writing %d scheduler changes failed; retrying", len(batch))
                time.sleep(0.2)
                with self._cond:
                    self._items[:0] = batch
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _write(self, batch: list[tuple[str, dict[str, Any], Callable[[int], None] | None]]) -> None:
        now = self.instance.clock.now()
        run_updates: dict[int, dict[str, Any]] = {}
        inserts: list[tuple[dict[str, Any], Callable[[int], None] | None]] = []
        schedule_updates: dict[str, dict[str, Any]] = {}
        events: list[tuple[str, int]] = []
        for op, values, after in batch:
            if op == "run":
                run_id = values["id"]
                merged = run_updates.setdefault(run_id, {"id": run_id})
                merged.update(values)
                if "state" in values:
                    events.append(("finished" if values["state"] in _TERMINAL else "started", run_id))
            elif op == "insert":
                inserts.append((values, after))
            elif op == "schedule":
                schedule_updates.setdefault(values["id"], {"id": values["id"]}).update(values)
        with self.instance.db.write() as session:
            # Schedules before runs: the one lock order of every writer (service, planner, claim).
            by_columns: dict[tuple[str, ...], list[dict[str, Any]]] = {}
            for schedule_id in sorted(schedule_updates):
                values = schedule_updates[schedule_id]
                by_columns.setdefault(tuple(sorted(values)), []).append(values)
            for shape, rows in by_columns.items():
                stmt = (
                    update(_SCHEDULES)
                    .where(_SCHEDULES.c.id == bindparam("b_id"))
                    .values({c: bindparam(f"b_{c}") for c in shape if c != "id"})
                )
                session.connection().execute(stmt, [{f"b_{k}": v for k, v in row.items()} for row in rows])
            # Rows of one shape go in one executemany; outcomes usually carry every column.
            by_shape: dict[tuple[str, ...], list[dict[str, Any]]] = {}
            for values in run_updates.values():
                values["changed_at"] = now
                by_shape.setdefault(tuple(sorted(values)), []).append(values)
            for shape, rows in by_shape.items():
                columns = [c for c in shape if c != "id"]
                stmt = (
                    update(_RUNS)
                    .where(_RUNS.c.id == bindparam("b_id"))
                    .values({c: bindparam(f"b_{c}") for c in columns})
                )
                session.connection().execute(stmt, [{f"b_{k}": v for k, v in row.items()} for row in rows])
            ids: list[int] = []
            if inserts:
                for values, _ in inserts:
                    values.setdefault("changed_at", now)
                result = session.execute(
                    insert(RunRow).returning(RunRow.id, sort_by_parameter_order=True),
                    [values for values, _ in inserts],
                )
                ids = [int(r) for r in result.scalars()]
        for (_values, after), run_id in zip(inserts, ids, strict=True):
            if after is not None:
                after(run_id)
        for event, run_id in events:
            self.instance._emit(event, run_id)


class SchedulerInstance:
    def __init__(
        self,
        db: Database,
        *,
        settings: InstanceSettings | None = None,
        clock: Clock | None = None,
        notifier: Notifier | None = None,
        callables: dict[str, Callable[..., Any]] | None = None,
        instance_id: str | None = None,
    ) -> None:
        self.db = db
        self.settings = settings or InstanceSettings()
        self.clock: Clock = clock or SystemClock(max_slice=0.25)
        self.notifier = notifier
        self.callables = callables if callables is not None else {}
        self.id = instance_id or make_instance_id()
        self.host = socket.gethostname()
        self._lock = threading.RLock()
        self._owned: dict[str, _Owned] = {}
        self._heap: list[_Planned] = []
        self._seq = itertools.count()
        self._stop = threading.Event()
        self._control_wake = threading.Event()
        self._timer_wake = threading.Event()
        self._threads: list[threading.Thread] = []
        self._writer = _Writer(self)
        self._calls = ThreadPoolExecutor(self.settings.call_threads, thread_name_prefix="ecliptic-call")
        self._listeners: list[RunListener] = []
        self._last_renew = 0.0
        self._lease_good_until = 0.0
        self._last_housekeeping = 0.0
        self._change_cursor: datetime | None = None
        # Runs taken off the heap lately: their rows may still say "scheduled" until the writer catches up, and a
        # reload must not plan them again.
        self._dispatched: dict[int, float] = {}
        self._started = False

    # -- lifecycle -------------------------------------------------------------------------------------------
    def start(self) -> None:
        self.settings.log_dir.mkdir(parents=True, exist_ok=True)
        now = self.clock.now()
        with self.db.write() as session:
            session.add(
                SchedulerInstanceRow(
                    id=self.id, host=self.host, pid=os.getpid(), started_at=now, heartbeat_at=now
                )
            )
        self._started = True
        self._writer.start()
        self._reap_dead_instances()
        for target, name in (
            (self._control_loop, "ecliptic-schedule-control"),
            (self._timer_loop, "ecliptic-schedule-timer"),
            (self._heartbeat_loop, "ecliptic-schedule-heartbeat"),
        ):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, *, grace: float = 10.0) -> None:
        """Stop firing; interrupt what runs (the retry policy decides about it); hand the schedules back."""
        if not self._started:
            return
        self._stop.set()
        self._control_wake.set()
        self._timer_wake.set()
        for thread in self._threads:
            thread.join(timeout=10)
        with self._lock:
            active = [a for o in self._owned.values() for a in o.running.values()]
        for item in active:
            item.interrupted = True
            item.reasons.append("the scheduler stopped")
            item.cancel.set()
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            with self._lock:
                if not any(o.running for o in self._owned.values()):
                    break
            time.sleep(0.02)
        self._writer.stop()
        self._calls.shutdown(wait=False, cancel_futures=True)
        try:
            self._release()
        except Exception:
            log.exception("handing schedules back failed; their leases will lapse")
        self._started = False

    def wake(self, schedule_id: str | None = None) -> None:
        """Something changed (a service call in this process): look at once instead of at the next tick."""
        self._control_wake.set()

    def accepts(self, namespace: str) -> datetime | None:
        """Until when this instance would lease a schedule of ``namespace`` created in this process now."""
        if not self._started or self._stop.is_set() or not self._lease_ok():
            return None
        if self.settings.namespaces is not None and namespace not in self.settings.namespaces:
            return None
        return self.clock.now() + self.settings.lease

    def adopt(self, rows: list[ScheduleRow]) -> None:
        """Take schedules this process created with this instance as their owner, and plan them at once."""
        self._start_watch_for([(row, []) for row in rows])
        self._control_wake.set()

    def subscribe(self, listener: RunListener) -> None:
        self._listeners.append(listener)

    def flush(self) -> None:
        """Wait until what the writer holds is in the store (tests, shutdown)."""
        self._writer.flush()

    @property
    def owned(self) -> list[str]:
        with self._lock:
            return list(self._owned)

    def running(self) -> int:
        with self._lock:
            return sum(len(o.running) for o in self._owned.values())

    # -- control ---------------------------------------------------------------------------------------------
    def _control_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except Exception:
                log.exception("scheduler control round failed; retrying")
                self._stop.wait(0.5)
            self._control_wake.wait(self.settings.tick)
            self._control_wake.clear()

    def _heartbeat_loop(self) -> None:
        # A thread of its own: a long planning round under overload must not let the leases lapse.
        while not self._stop.is_set():
            try:
                self._renew()
                self._reap_dead_instances()
            except Exception:
                log.exception("scheduler heartbeat failed; retrying")
            self._stop.wait(self.settings.heartbeat.total_seconds())

    def step(self) -> None:
        """One control round: reload what changed, claim, plan (the heartbeat thread renews the leases)."""
        mono = time.monotonic()
        if mono - self._last_housekeeping >= 10:
            self._last_housekeeping = mono
            self._housekeeping()
            with self._lock:
                self._dispatched = {k: v for k, v in self._dispatched.items() if mono - v < 60}
        self._reload_changed()
        self._claim()
        self._plan()

    def _renew(self) -> None:
        started = time.monotonic()
        now = self.clock.now()
        lease_until = now + self.settings.lease
        with self._lock:
            # Only these can be judged lost: a schedule claimed while this renewal runs is not in its snapshot.
            before = set(self._owned)
        with self.db.write() as session:
            session.execute(
                update(SchedulerInstanceRow)
                .where(SchedulerInstanceRow.id == self.id)
                .values(heartbeat_at=now)
            )
            mine = select(ScheduleRow.id).where(ScheduleRow.owner == self.id).order_by(ScheduleRow.id)
            if self.db.is_postgres:
                # Row locks in id order, the order every other writer of schedules takes them in.
                mine = mine.with_for_update()
            still = set(session.scalars(mine))
            if still:
                session.execute(
                    update(ScheduleRow).where(ScheduleRow.owner == self.id).values(lease_until=lease_until)
                )
        self._last_renew = started
        # A margin, so that a lease is never relied on in its last second (clocks and commits are not instant).
        self._lease_good_until = started + self.settings.lease.total_seconds() - 1.0
        with self._lock:
            lost = [sid for sid in before if sid not in still and sid in self._owned]
            for sid in lost:
                log.warning("schedule %s is no longer ours; dropping it", sid)
                self._drop(sid, "its lease passed to another scheduler")

    def _lease_ok(self) -> bool:
        return time.monotonic() < self._lease_good_until

    def _reap_dead_instances(self) -> None:
        """Instances on this host whose process is gone, or anywhere whose heartbeat stopped long ago."""
        now = self.clock.now()
        with self.db.read() as session:
            rows = session.execute(
                select(
                    SchedulerInstanceRow.id,
                    SchedulerInstanceRow.host,
                    SchedulerInstanceRow.pid,
                    SchedulerInstanceRow.heartbeat_at,
                ).where(SchedulerInstanceRow.id != self.id)
            ).all()
        dead = [
            instance_id
            for instance_id, host, pid, heartbeat_at in rows
            if (host == self.host and not _pid_alive(pid)) or heartbeat_at < now - 3 * self.settings.lease
        ]
        if dead:
            with self.db.write() as session:
                # Due for attention now, paused or not: what the dead one left running must be recorded.
                session.execute(
                    update(ScheduleRow)
                    .where(ScheduleRow.owner.in_(dead))
                    .values(lease_until=now - timedelta(microseconds=1), attention_at=now)
                )
                session.execute(delete(SchedulerInstanceRow).where(SchedulerInstanceRow.id.in_(dead)))
        if dead:
            log.info("scheduler instances gone: %s; their schedules are free", ", ".join(dead))
            self._control_wake.set()

    def _housekeeping(self) -> None:
        now = self.clock.now()
        with self.db.write() as session:
            session.execute(
                delete(RunRow).where(
                    RunRow.ended_at < now - self.settings.run_retention, RunRow.state.in_(_TERMINAL)
                )
            )
            session.execute(
                delete(ScheduleRow).where(
                    ScheduleRow.deleted.is_(True),
                    or_(ScheduleRow.owner.is_(None), ScheduleRow.lease_until < now),
                )
            )

    def _reload_changed(self) -> None:
        now = self.clock.now()
        since = (self._change_cursor or now) - timedelta(seconds=2)
        self._change_cursor = now
        with self.db.read() as session:
            changed = session.execute(
                select(ScheduleRow.id, ScheduleRow.version).where(
                    ScheduleRow.owner == self.id, ScheduleRow.changed_at > since
                )
            ).all()
        with self._lock:
            todo = [
                sid for sid, version in changed if sid in self._owned and self._owned[sid].version != version
            ]
        for sid in todo:
            self._reload(sid)

    def _reload(self, schedule_id: str) -> None:
        with self.db.write() as session:
            row = session.get(ScheduleRow, schedule_id)
            if row is None or row.owner != self.id:
                with self._lock:
                    self._drop(schedule_id, "the schedule was deleted")
                return
            if row.deleted:
                with self._lock:
                    self._drop(schedule_id, "the schedule was deleted")
                session.delete(row)
                return
            open_runs = session.scalars(
                select(RunRow).where(
                    RunRow.schedule_id == schedule_id, RunRow.state.in_(("scheduled", "cancelling"))
                )
            ).all()
            now = self.clock.now()
            withdrawn: list[int] = []
            cancelled: list[RunRow] = []
            with self._lock:
                owned = self._owned.get(schedule_id)
                if owned is None:
                    return
                before = owned.spec
                self._refresh(owned, row)
                # Paused, or retimed: the fires planned under the old trigger are withdrawn — by the owner, which
                # alone knows which of them have not started.
                withdraw = row.paused or _retimed(before, owned.spec)
                planned_causes = ("schedule", "catchup")
                scheduled = {r.id: r for r in open_runs if r.state == "scheduled"}
                cancelling = {r.id: r for r in open_runs if r.state == "cancelling"}
                for run_id, item in list(owned.pending.items()):
                    if run_id in cancelling:
                        del owned.pending[run_id]
                        cancelled.append(cancelling.pop(run_id))
                    elif run_id not in scheduled:
                        del owned.pending[run_id]  # gone from the store: its heap entry is skipped
                    elif withdraw and item.cause in planned_causes:
                        del owned.pending[run_id]
                        withdrawn.append(run_id)
                kept: deque[_Planned] = deque()
                for item in owned.queue:
                    if item.run_id in cancelling:
                        cancelled.append(cancelling.pop(item.run_id))
                        continue
                    if item.run_id not in scheduled:
                        continue
                    if withdraw and item.cause in planned_causes:
                        withdrawn.append(item.run_id)
                        continue
                    kept.append(item)
                owned.queue = kept
                known = {*owned.pending, *owned.running, *(i.run_id for i in owned.queue), *withdrawn}
                for r in scheduled.values():
                    if r.id in known or r.id in self._dispatched:
                        continue
                    if withdraw and r.cause in planned_causes:
                        withdrawn.append(r.id)
                        continue
                    self._push(owned, _planned(r, next(self._seq)))
                for r in cancelling.values():
                    if r.id in owned.running:
                        active = owned.running[r.id]
                        active.reasons.append(r.error or "cancel requested")
                        active.cancel.set()
                    elif r.id not in self._dispatched:
                        cancelled.append(r)  # not started here: nobody else will start it
            if withdrawn:
                session.execute(delete(RunRow).where(RunRow.id.in_(withdrawn), RunRow.state == "scheduled"))
                # Those fires did not happen: they count again, and a paused schedule resumes from the first.
                row.fires = max(0, row.fires - len(withdrawn))
                if row.paused:
                    earliest = min(scheduled[i].scheduled_at for i in withdrawn)
                    if row.next_fire_at is None or earliest < row.next_fire_at:
                        row.next_fire_at = earliest
                with self._lock:
                    owned.fires, owned.next_fire_at = row.fires, row.next_fire_at
            for r in cancelled:
                r.state = "cancelled"
                r.ended_at = now
                r.changed_at = now
                r.error = (r.error or "cancelled").replace(
                    "cancel requested by", "cancelled by"
                ) + " before it started"
        self._control_wake.set()

    def _refresh(self, owned: _Owned, row: ScheduleRow) -> None:
        if row.version != owned.version:
            owned.spec = ScheduleSpec.model_validate(row.spec)
            owned.compiled = triggers.compile_trigger(owned.spec, row.created)
            owned.name = row.name
        owned.version = row.version
        owned.paused = row.paused
        owned.next_fire_at = row.next_fire_at
        owned.fires = row.fires
        if not owned.fixed_delay or not owned.running:
            owned.waiting_for_previous = False

    def _drop(self, schedule_id: str, reason: str) -> None:
        owned = self._owned.pop(schedule_id, None)
        if owned is None:
            return
        owned.pending.clear()
        owned.queue.clear()
        for active in owned.running.values():
            active.reasons.append(reason)
            active.cancel.set()

    def _claim(self) -> None:
        if self._stop.is_set():
            return
        now = self.clock.now()
        horizon = now + self.settings.lookahead
        interrupted: list[tuple[RunRow, ScheduleRow]] = []
        claimed: list[tuple[ScheduleRow, list[RunRow]]] = []
        wanted = self._claimable(now, horizon)
        with self.db.read() as session:
            # Most rounds have nothing to claim: a read costs no write lock (SQLite has one for everybody).
            if session.scalar(select(ScheduleRow.id).where(*wanted).limit(1)) is None:
                return
        with self.db.write() as session:
            query = (
                select(ScheduleRow)
                .where(*wanted)
                .order_by(ScheduleRow.attention_at)
                .limit(self.settings.claim_batch)
            )
            if self.db.is_postgres:
                query = query.with_for_update(skip_locked=True)
            rows = session.scalars(query).all()
            if not rows:
                return
            lease_until = now + self.settings.lease
            by_id = {row.id: row for row in rows}
            for row in rows:
                row.owner = self.id
                row.lease_until = lease_until
            open_runs = session.scalars(
                select(RunRow).where(
                    RunRow.schedule_id.in_(list(by_id)),
                    RunRow.state.in_(("scheduled", "running", "cancelling")),
                )
            ).all()
            adopted: dict[str, list[RunRow]] = {sid: [] for sid in by_id}
            for run in open_runs:
                grace = ScheduleSpec.model_validate(by_id[run.schedule_id].spec).catchup.grace
                if (
                    run.state == "scheduled"
                    and run.owner is None
                    and run.cause == "schedule"
                    and run.due_at < now - grace
                ):
                    # Planned before a clean hand-over and not run since: a fire time nobody was there for.
                    run.state = "missed"
                    run.ended_at = now
                    run.error = "missed: no scheduler was running"
                    run.changed_at = now
                elif run.state != "scheduled" or (run.owner is not None and run.due_at <= now):
                    # It may have started under its old owner: never start it again, let the policy decide.
                    run.state = "interrupted"
                    run.ended_at = now
                    run.error = f"its scheduler ({run.owner or 'unknown'}) stopped before the run ended"
                    run.changed_at = now
                    interrupted.append((run, by_id[run.schedule_id]))
                else:
                    run.owner = self.id
                    adopted[run.schedule_id].append(run)
            claimed = [(row, adopted[row.id]) for row in rows]
        self._start_watch_for(claimed)
        self._lease_good_until = max(
            self._lease_good_until, time.monotonic() + self.settings.lease.total_seconds() - 1.0
        )
        for run, row in interrupted:
            self._after_interrupted(run, row)
        log.debug("claimed %d schedules", len(claimed))

    def _claimable(self, now: datetime, horizon: datetime) -> list[ColumnElement[bool]]:
        """Schedules this instance may take: due soon, and unowned or with a lapsed lease."""
        wanted: list[ColumnElement[bool]] = [
            ScheduleRow.deleted.is_(False),
            ScheduleRow.attention_at <= horizon,
            # Never from itself: after a wall-clock jump its own leases look lapsed until it renews.
            or_(
                ScheduleRow.owner.is_(None), and_(ScheduleRow.lease_until < now, ScheduleRow.owner != self.id)
            ),
        ]
        if self.settings.namespaces is not None:
            wanted.append(ScheduleRow.namespace.in_(sorted(self.settings.namespaces)))
        return wanted

    def _start_watch_for(self, claimed: list[tuple[ScheduleRow, list[RunRow]]]) -> None:
        with self._lock:
            for row, runs in claimed:
                spec = ScheduleSpec.model_validate(row.spec)
                owned = _Owned(
                    id=row.id,
                    namespace=row.namespace,
                    name=row.name,
                    spec=spec,
                    compiled=triggers.compile_trigger(spec, row.created),
                    version=row.version,
                    created=row.created,
                    paused=row.paused,
                    next_fire_at=row.next_fire_at,
                    fires=row.fires,
                    last_outcome=row.last_outcome,
                )
                self._owned[row.id] = owned
                for run in runs:
                    self._push(owned, _planned(run, next(self._seq)))

    def _after_interrupted(self, run: RunRow, row: ScheduleRow) -> None:
        if run.pid is not None and run.process and run.owner and run.owner.split(":")[0] == self.host:
            try:
                if runners.kill_orphan(run.pid, run.process):
                    log.warning("killed the orphaned process group of run %d (pid %d)", run.id, run.pid)
            except Exception:
                log.exception("could not kill the orphaned process of run %d", run.id)
        with self._lock:
            owned = self._owned.get(row.id)
        if owned is None:
            return
        self._notify(owned, "interrupted", lambda: run_view(run, row).model_dump(mode="json"))
        owned.last_outcome = "interrupted"
        self._writer.put("schedule", {"id": owned.id, "last_outcome": "interrupted"})
        self._maybe_retry(owned, _planned(run, 0), run.ended_at or self.clock.now(), "interrupted")

    # -- planning --------------------------------------------------------------------------------------------
    def _plan(self) -> None:
        if self._stop.is_set() or not self._lease_ok():
            return
        now = self.clock.now()
        horizon = now + self.settings.lookahead
        with self._lock:
            due = [
                o
                for o in self._owned.values()
                if not o.paused
                and not o.waiting_for_previous
                and o.next_fire_at is not None
                and o.next_fire_at <= horizon
            ]
            plans = {o.id: (o.version, self._plan_one(o, now, horizon)) for o in due}
        if not plans:
            return
        runs: list[dict[str, Any]] = []
        kept: dict[str, _Plan] = {}
        with self.db.write() as session:
            current = self._versions(session, list(plans))
            for sid, (version, plan) in sorted(plans.items()):
                if current.get(sid) != (version, self.id):
                    continue  # changed meanwhile: the next reload replans it
                kept[sid] = plan
                runs.extend(plan.runs)
            if kept:
                session.connection().execute(
                    update(_SCHEDULES)
                    .where(_SCHEDULES.c.id == bindparam("b_id"))
                    .values(
                        next_fire_at=bindparam("b_next"),
                        attention_at=bindparam("b_attention"),
                        fires=bindparam("b_fires"),
                    ),
                    [
                        {
                            "b_id": sid,
                            "b_next": p.next_fire_at,
                            "b_attention": p.attention_at,
                            "b_fires": p.fires,
                        }
                        for sid, p in kept.items()
                    ],
                )
            ids: list[int] = []
            if runs:
                result = session.execute(
                    insert(RunRow).returning(RunRow.id, sort_by_parameter_order=True), runs
                )
                ids = [int(r) for r in result.scalars()]
        by_run = iter(ids)
        missed_events: list[tuple[_Owned, dict[str, Any]]] = []
        with self._lock:
            for sid, plan in kept.items():
                owned = self._owned.get(sid)
                for entry in plan.runs:
                    run_id = next(by_run)
                    if owned is None:
                        continue
                    if entry["state"] == "scheduled":
                        self._push(
                            owned,
                            _Planned(
                                entry["due_at"],
                                next(self._seq),
                                run_id,
                                sid,
                                entry["scheduled_at"],
                                entry["attempt"],
                                entry["cause"],
                            ),
                        )
                    elif entry["state"] == "missed":
                        missed = dict(entry, id=run_id)
                        missed_events.append((owned, missed))
                if owned is None:
                    continue
                owned.next_fire_at = plan.next_fire_at
                owned.fires = plan.fires
                if owned.fixed_delay and any(e["state"] == "scheduled" for e in plan.runs):
                    owned.waiting_for_previous = True
        if missed_events:
            latest: dict[str, tuple[_Owned, dict[str, Any], int]] = {}
            for owned, entry in missed_events:
                count = latest[owned.id][2] + 1 if owned.id in latest else 1
                latest[owned.id] = (owned, entry, count)
            for owned, entry, count in latest.values():
                view = {
                    "id": entry["id"],
                    "schedule_id": owned.id,
                    "namespace": owned.namespace,
                    "schedule": owned.name,
                    "scheduled_at": entry["scheduled_at"].isoformat(),
                    "state": "missed",
                    "missed": count,
                    "error": entry["error"],
                }
                self._notify(owned, "missed", view)
        self._timer_wake.set()

    def _versions(self, session: Session, ids: list[str]) -> dict[str, tuple[int, str | None]]:
        query = (
            select(ScheduleRow.id, ScheduleRow.version, ScheduleRow.owner)
            .where(ScheduleRow.id.in_(ids))
            .order_by(ScheduleRow.id)
        )
        if self.db.is_postgres:
            query = query.with_for_update()
        return {sid: (version, owner) for sid, version, owner in session.execute(query).all()}

    def _plan_one(self, o: _Owned, now: datetime, horizon: datetime) -> _Plan:
        spec = o.spec
        nxt = o.next_fire_at
        fires = o.fires
        runs: list[dict[str, Any]] = []
        limit_reached = False

        def row(
            at: datetime, due: datetime, cause: str, state: str, error: str | None = None
        ) -> dict[str, Any]:
            return {
                "schedule_id": o.id,
                "scheduled_at": at,
                "attempt": 1,
                "due_at": due,
                "cause": cause,
                "state": state,
                "owner": self.id,
                "error": error,
                "ended_at": now if state != "scheduled" else None,
                "changed_at": now,
            }

        policy = spec.catchup
        if nxt is not None and nxt < now - policy.grace:
            # Fire times that passed while nobody owned the schedule.
            passed = [nxt]
            cursor = nxt
            while len(passed) < self.settings.catchup_scan_limit:
                cursor_next = o.compiled.next_after(cursor)
                if cursor_next is None or cursor_next > now:
                    break
                passed.append(cursor_next)
                cursor = cursor_next
            if spec.max_runs is not None:
                passed = passed[: max(0, spec.max_runs - fires)]
            window_start = now - policy.window
            eligible = [t for t in passed if t >= window_start]
            chosen: list[datetime] = []
            if policy.policy == "latest":
                chosen = eligible[-1:]
            elif policy.policy == "all":
                chosen = eligible[-policy.max_runs :]
            chosen_set = set(chosen)
            missed = [t for t in passed if t not in chosen_set]
            dropped = max(0, len(missed) - self.settings.max_missed_records)
            recorded = missed[dropped:]
            for i, t in enumerate(recorded):
                error = f"missed: no scheduler was running (catch-up policy {policy.policy})"
                if i == 0 and dropped:
                    error += f"; {dropped} earlier fire times were missed too"
                runs.append(row(t, t, "schedule", "missed", error))
            for t in chosen:
                runs.append(row(t, now, "catchup", "scheduled"))
            fires += len(passed)
            nxt = o.compiled.next_after(max(now, cursor)) if not o.fixed_delay else now
            if o.fixed_delay:
                nxt = None if chosen else now
        planned = 0
        while (
            nxt is not None
            and nxt <= horizon
            and planned < self.settings.plan_limit
            and not (o.fixed_delay and any(r["state"] == "scheduled" for r in runs))
        ):
            if spec.max_runs is not None and fires >= spec.max_runs:
                limit_reached = True
                break
            following = o.compiled.next_after(nxt) if not o.fixed_delay else None
            due = nxt
            if spec.jitter:
                room = spec.jitter
                if following is not None:
                    room = min(room, following - nxt - timedelta(microseconds=1))
                if room > timedelta(0):
                    due = nxt + timedelta(seconds=random.uniform(0, room.total_seconds()))
            runs.append(row(nxt, due, "schedule", "scheduled"))
            fires += 1
            planned += 1
            if o.fixed_delay:
                assert isinstance(spec.trigger, IntervalTrigger)
                # A lower bound: the real next time is known when this run finishes.
                following = nxt + spec.trigger.every
            nxt = following
        if o.fixed_delay and nxt is None and runs:
            assert isinstance(spec.trigger, IntervalTrigger)
            nxt = max(r["scheduled_at"] for r in runs) + spec.trigger.every
        if spec.max_runs is not None and fires >= spec.max_runs:
            limit_reached = True
        if limit_reached:
            nxt = None
        scheduled_dues = [r["due_at"] for r in runs if r["state"] == "scheduled"]
        attention = min([*scheduled_dues, *([nxt] if nxt is not None else [])], default=None)
        return _Plan(runs=runs, next_fire_at=nxt, fires=fires, attention_at=attention)

    # -- timer -----------------------------------------------------------------------------------------------
    def _push(self, owned: _Owned, planned: _Planned) -> None:
        owned.pending[planned.run_id] = planned
        heapq.heappush(self._heap, planned)
        if self._heap[0] is planned:
            self._timer_wake.set()

    def _timer_loop(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                when = self._heap[0].due_at if self._heap else None
            self._timer_wake.clear()
            if when is not None and when <= self.clock.now():
                self._fire_due()
                continue
            self.clock.wait_until(when, self._timer_wake)

    def _fire_due(self) -> None:
        now = self.clock.now()
        while True:
            with self._lock:
                if not self._heap or self._heap[0].due_at > now:
                    return
                planned = heapq.heappop(self._heap)
                owned = self._owned.get(planned.schedule_id)
                if owned is None or planned.run_id not in owned.pending:
                    continue  # withdrawn (paused, updated, deleted, or no longer ours)
                if not self._lease_ok():
                    # Not sure it is still ours: wait for the heartbeat (which drops it if it is not), a little
                    # late rather than twice.
                    log.debug("run %d waits: this scheduler's lease may have lapsed", planned.run_id)
                    heapq.heappush(
                        self._heap,
                        _Planned(now + timedelta(milliseconds=100), next(self._seq), *_rest(planned)),
                    )
                    continue
                del owned.pending[planned.run_id]
                self._dispatched[planned.run_id] = time.monotonic()
                self._dispatch(owned, planned)

    def _dispatch(self, owned: _Owned, planned: _Planned) -> None:
        """Start a due run, or apply the overlap policy. Called with the lock held."""
        spec = owned.spec
        busy = spec.overlap != "allow" and len(owned.running) >= spec.max_concurrency
        if busy:
            if planned.cause in ("catchup", "backfill", "retry") or spec.overlap == "queue":
                owned.queue.append(planned)
                return
            if spec.overlap == "skip":
                running = ", ".join(str(i) for i in sorted(owned.running))
                self._writer.put(
                    "run",
                    {
                        "id": planned.run_id,
                        "state": "skipped",
                        "ended_at": self.clock.now(),
                        "error": f"run {running} was still running (overlap: skip)",
                    },
                )
                return
            for active in owned.running.values():
                active.reasons.append(f"replaced by run {planned.run_id} (overlap: replace)")
                active.cancel.set()
        self._start(owned, planned)

    def _start(self, owned: _Owned, planned: _Planned) -> None:
        now = self.clock.now()
        active = _Active(planned, threading.Event(), [], now)
        owned.running[planned.run_id] = active
        self._writer.put(
            "run", {"id": planned.run_id, "state": "running", "started_at": now, "owner": self.id}
        )
        context = runners.RunContext(
            run_id=planned.run_id,
            schedule=owned.name,
            namespace=owned.namespace,
            scheduled_at=planned.scheduled_at,
            attempt=planned.attempt,
            log_dir=self.settings.log_dir,
            cancel=active.cancel,
            cancel_reason=active.reasons,
            on_started=lambda pid, identity: (
                self._writer.put("run", {"id": planned.run_id, "pid": pid, "process": identity})
                if pid is not None
                else None
            ),
            broker_url=self.settings.broker_url,
        )
        spec = owned.spec
        override = None
        if isinstance(spec.run, CallRunner):
            override = self.callables.get(spec.run.call)
            self._calls.submit(self._execute, owned, active, context, override)
        else:
            thread = threading.Thread(
                target=self._execute,
                args=(owned, active, context, None),
                name=f"ecliptic-run-{planned.run_id}",
                daemon=True,
            )
            thread.start()

    def _execute(
        self,
        owned: _Owned,
        active: _Active,
        context: runners.RunContext,
        override: Callable[..., Any] | None,
    ) -> None:
        try:
            result = runners.execute(owned.spec, context, callable_override=override)
            state: str = result.outcome
            error, exit_code = result.error, result.exit_code
            stdout, stderr = result.stdout_tail, result.stderr_tail
        except Exception as exc:  # a runner bug must not lose the run
            log.exception("run %d failed inside the runner", active.planned.run_id)
            state, error, exit_code, stdout, stderr = "failed", f"{type(exc).__name__}: {exc}", None, "", ""
        # The instance's clock, not the runner's: fixed-delay intervals and retries count from it.
        ended = self.clock.now()
        if state == "cancelled" and active.interrupted:
            state = "interrupted"
        self._finished(owned, active, state, error, exit_code, stdout, stderr, ended)

    def _finished(
        self,
        owned: _Owned,
        active: _Active,
        state: str,
        error: str | None,
        exit_code: int | None,
        stdout: str,
        stderr: str,
        ended: datetime,
    ) -> None:
        planned = active.planned
        self._writer.put(
            "run",
            {
                "id": planned.run_id,
                "state": state,
                "ended_at": ended,
                "started_at": active.started_at,
                "exit_code": exit_code,
                "error": error,
                "stdout_tail": stdout,
                "stderr_tail": stderr,
            },
        )
        with self._lock:
            owned.running.pop(planned.run_id, None)
            mine = self._owned.get(owned.id) is owned

        def view() -> dict[str, Any]:
            return {
                "id": planned.run_id,
                "schedule_id": owned.id,
                "namespace": owned.namespace,
                "schedule": owned.name,
                "scheduled_at": planned.scheduled_at.isoformat(),
                "attempt": planned.attempt,
                "cause": planned.cause,
                "state": state,
                "started_at": active.started_at.isoformat(),
                "ended_at": ended.isoformat(),
                "duration_s": (ended - active.started_at).total_seconds(),
                "exit_code": exit_code,
                "error": error,
            }

        if state not in ("skipped", "cancelled"):
            self._notify(owned, state, view)
            if owned.last_outcome != state:
                owned.last_outcome = state
                self._writer.put("schedule", {"id": owned.id, "last_outcome": state})
        if not mine:
            return
        retrying = not active.interrupted and self._maybe_retry(owned, planned, ended, state)
        with self._lock:
            idle = not (retrying or owned.pending or owned.running or owned.queue)
            if idle and owned.next_fire_at is None:
                # Nothing more will happen here: no instance needs to claim this schedule after a restart.
                self._writer.put("schedule", {"id": owned.id, "attention_at": None})
        with self._lock:
            if owned.fixed_delay and planned.cause in ("schedule", "catchup"):
                assert isinstance(owned.spec.trigger, IntervalTrigger)
                if owned.next_fire_at is not None:
                    owned.next_fire_at = ended + owned.spec.trigger.every
                owned.waiting_for_previous = False
                self._control_wake.set()
            while owned.queue and (
                owned.spec.overlap == "allow" or len(owned.running) < owned.spec.max_concurrency
            ):
                if self._stop.is_set():
                    break
                self._start(owned, owned.queue.popleft())

    def _maybe_retry(self, owned: _Owned, planned: _Planned, ended: datetime, state: str) -> bool:
        """Queue the next attempt if the policy wants one; whether it did."""
        policy = owned.spec.retry
        if state not in RETRYABLE or planned.attempt > policy.max:
            return False
        delay = min(
            policy.max_backoff.total_seconds(),
            policy.backoff.total_seconds() * policy.factor ** (planned.attempt - 1),
        )
        if policy.jitter:
            delay = random.uniform(delay / 2, delay)
        due = ended + timedelta(seconds=delay)

        def queued(run_id: int) -> None:
            with self._lock:
                if self._owned.get(owned.id) is owned:
                    self._push(
                        owned,
                        _Planned(
                            due,
                            next(self._seq),
                            run_id,
                            owned.id,
                            planned.scheduled_at,
                            planned.attempt + 1,
                            "retry",
                        ),
                    )

        self._writer.put(
            "insert",
            {
                "schedule_id": owned.id,
                "scheduled_at": planned.scheduled_at,
                "attempt": planned.attempt + 1,
                "due_at": due,
                "cause": "retry",
                "state": "scheduled",
                "owner": self.id,
            },
            queued,
        )
        self._writer.put("schedule", {"id": owned.id, "attention_at": due})
        return True

    # -- events ----------------------------------------------------------------------------------------------
    def _notify(self, owned: _Owned, state: str, view: dict[str, Any] | Callable[[], dict[str, Any]]) -> None:
        if self.notifier is None:
            return
        events = events_for(state, owned.last_outcome)
        if events == ["success"] and not any("success" in target.on for target in owned.spec.notify):
            return  # the common case at high rates: nobody asked to hear of it (the run row says it)
        run = view() if callable(view) else view
        for event in events:
            self.notifier.notify(
                owned.spec.notify,
                RunEvent(
                    event=event, namespace=owned.namespace, schedule=owned.name, run=run, at=self.clock.now()
                ),
            )

    def _emit(self, event: str, run_id: int) -> None:
        for listener in self._listeners:
            try:
                listener(event, {"id": run_id})
            except Exception:
                log.exception("a run listener failed")

    # -- hand-over -------------------------------------------------------------------------------------------
    def _release(self) -> None:
        with self.db.write() as session:
            session.execute(
                update(RunRow).where(RunRow.owner == self.id, RunRow.state == "scheduled").values(owner=None)
            )
            session.execute(
                update(ScheduleRow).where(ScheduleRow.owner == self.id).values(owner=None, lease_until=None)
            )
            session.execute(delete(SchedulerInstanceRow).where(SchedulerInstanceRow.id == self.id))
        with self._lock:
            self._owned.clear()
            self._heap.clear()


@dataclass
class _Plan:
    runs: list[dict[str, Any]]
    next_fire_at: datetime | None
    fires: int
    attention_at: datetime | None


_TIMING = ("trigger", "timezone", "start", "end", "exclude", "max_runs", "jitter")


def _retimed(before: ScheduleSpec, after: ScheduleSpec) -> bool:
    return any(getattr(before, key) != getattr(after, key) for key in _TIMING)


def _rest(planned: _Planned) -> tuple[int, str, datetime, int, str]:
    return planned.run_id, planned.schedule_id, planned.scheduled_at, planned.attempt, planned.cause


def _planned(run: RunRow, seq: int) -> _Planned:
    return _Planned(run.due_at, seq, run.id, run.schedule_id, run.scheduled_at, run.attempt, run.cause)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
