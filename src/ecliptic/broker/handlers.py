"""Engine handlers that drive sessions: offer expiry, the session reconcile loop, and clean-up.

The reconcile loop (:class:`SessionAdvancer`) is level-triggered, in the manner of a Kubernetes controller:
each step reads the session as it is in the store, decides the one next thing to do, writes that decision
(write-ahead), does it, and writes the result. Running a step twice does no harm; a crash between any two
lines is repaired by the next run. Preparation is ordered: storage, then data staging, then the executable,
then compute, so compute never starts before its inputs are in place (the reference broker's volume race).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select

from ecliptic import engine
from ecliptic.broker import lifecycle, messages
from ecliptic.broker.phases import COMPONENT_TERMINAL, ComponentPhase, SessionPhase
from ecliptic.broker.service import Broker
from ecliptic.engine import Again, Done, Job, Outcome
from ecliptic.isotime import utcnow
from ecliptic.platforms.base import LaunchSpec, Platform, RunState
from ecliptic.staging import StagingError, filename_for, stage
from ecliptic.store.tables import ComponentRow, OfferSetRow, SessionRow

log = logging.getLogger(__name__)

PREPARE_ORDER = ("storage", "data", "executable", "compute")
MAX_STAGING_ATTEMPTS = 5
"""Transient staging failures (5xx, timeouts) are retried with backoff this many times, then the session fails."""
MAX_STEPS = 25
"""Quick steps one handler run may take before it yields its thread to other sessions."""


def poll_delay(polls: int) -> timedelta:
    """The weighted wait loop: look again soon at first, then less and less often."""
    return timedelta(seconds=min(0.25 * 2 ** min(polls, 10), 10.0))


def _env_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]", "_", text).upper()


class OfferExpirer:
    """Moves the unaccepted offers of an offer set to EXPIRED at their deadline and frees their capacity."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    def __call__(self, job: Job) -> Outcome:
        now = utcnow()
        with self.broker.db.write() as session:
            if session.get_bind().dialect.name == "postgresql":
                # The offer set's lock is the one accept takes: expiry and accept never interleave.
                session.execute(
                    select(OfferSetRow.uuid).where(OfferSetRow.uuid == job.subject).with_for_update()
                ).all()
            offers = session.scalars(
                select(SessionRow)
                .where(SessionRow.offerset_uuid == job.subject, SessionRow.phase == SessionPhase.OFFERED)
                .execution_options(populate_existing=True)
            ).all()
            pending = [row.expires for row in offers if row.expires is not None and row.expires > now]
            for row in offers:
                lifecycle.expire_if_due(session, row, now)
        return Again(min(pending)) if pending else Done()


class SessionPurger:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    def __call__(self, job: Job) -> Outcome:
        shutil.rmtree(self.broker.workdir(job.subject), ignore_errors=True)
        return Done()


Step = Outcome | None
"""What one step decided: an outcome for the engine, or None to take the next step at once."""


class SessionAdvancer:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.db = broker.db

    def __call__(self, job: Job) -> Outcome:
        for _ in range(MAX_STEPS):
            outcome = self.step(job.subject)
            if outcome is not None:
                return outcome
        return Again(utcnow())

    # -- one step --------------------------------------------------------------------------------------------
    def step(self, session_uuid: str) -> Step:
        now = utcnow()
        action: Callable[[], Step] | None = None
        with self.db.write() as session:
            row = lifecycle.locked(session, session_uuid)
            if row is None:
                return Done()
            phase = SessionPhase(row.phase)
            if phase in (SessionPhase.CANCELLED, SessionPhase.FAILED):
                if row.released:
                    return Done()
                compute = self._component(row, "compute")
                handle = dict(compute.state.get("handle") or {}) if compute else {}
                launched = bool(compute and compute.state.get("launching"))
                reason = row.reason or phase.value.lower()
                platform = self.broker.platforms[row.platform]
                action = lambda: self._stop(session_uuid, platform, handle, launched, reason)  # noqa: E731
            elif phase in (SessionPhase.ACCEPTED, SessionPhase.WAITING):
                if now < row.prepare_start:
                    lifecycle.set_phase(
                        session, row, SessionPhase.WAITING, now, "waiting for the booked start"
                    )
                    for component in row.components:
                        lifecycle.set_component_phase(session, row, component, ComponentPhase.WAITING, now)
                    return Again(row.prepare_start)
                lifecycle.set_phase(session, row, SessionPhase.PREPARING, now, "preparing resources")
                return None
            elif phase == SessionPhase.PREPARING:
                return_or_action = self._prepare(session, row, now)
                if not callable(return_or_action):
                    return return_or_action
                action = return_or_action
            elif phase in (SessionPhase.AVAILABLE, SessionPhase.RUNNING):
                compute = self._component(row, "compute")
                assert compute is not None
                handle = dict(compute.state.get("handle") or {})
                polls = int(compute.state.get("polls", 0))
                platform = self.broker.platforms[row.platform]
                action = lambda: self._poll(session_uuid, platform, handle, polls)  # noqa: E731
            elif phase == SessionPhase.RELEASING:
                self._finish(
                    session,
                    row,
                    now,
                    SessionPhase.COMPLETED,
                    "the executable finished",
                    ComponentPhase.COMPLETED,
                )
                return None
            else:
                return Done()
        return action()

    # -- preparing -------------------------------------------------------------------------------------------
    def _component(self, row: SessionRow, role: str) -> ComponentRow | None:
        return next((c for c in row.components if c.role == role), None)

    def _prepare(self, session: Any, row: SessionRow, now: datetime) -> Step | Callable[[], Step]:
        workdir = self.broker.workdir(row.uuid)
        for role in PREPARE_ORDER:
            for component in (c for c in row.components if c.role == role):
                if component.phase == ComponentPhase.AVAILABLE:
                    continue
                if component.phase in COMPONENT_TERMINAL:
                    return self._fail(
                        session,
                        row,
                        now,
                        f"{role} {component.name or component.uuid} ended {component.phase}",
                    )
                if role == "storage":
                    (workdir / "storage" / component.uuid).mkdir(parents=True, exist_ok=True)
                    lifecycle.set_component_phase(session, row, component, ComponentPhase.AVAILABLE, now)
                    continue
                if role == "executable":
                    problem = self._check_executable(component, workdir)
                    if problem:
                        lifecycle.set_component_phase(
                            session, row, component, ComponentPhase.FAILED, now, problem
                        )
                        return self._fail(session, row, now, problem)
                    lifecycle.set_component_phase(session, row, component, ComponentPhase.AVAILABLE, now)
                    continue
                lifecycle.set_component_phase(session, row, component, ComponentPhase.PREPARING, now)
                if role == "data":
                    spec = dict(component.spec)
                    dest = (
                        workdir
                        / "storage"
                        / str(spec["storage"])
                        / filename_for(str(spec["location"]), component.name or component.uuid)
                    )
                    uid, cid = row.uuid, component.uuid
                    return lambda: self._stage(uid, cid, spec, dest)
                # Compute starts as soon as its inputs are in place: the session's hold began at prepare start, so
                # starting before the offered start uses only capacity it already holds, and ends by the same deadline.
                component.state = {**component.state, "launching": now.isoformat()}
                launch = self._launch_spec(row, workdir)
                uid = row.uuid
                platform = self.broker.platforms[row.platform]
                return lambda: self._launch(uid, platform, launch)
        # Everything is in place (a launch was recorded but the session's own change was not): catch up.
        lifecycle.set_phase(session, row, SessionPhase.AVAILABLE, now, "the executable is running")
        return None

    def _check_executable(self, component: ComponentRow, workdir: Path) -> str | None:
        command = list(component.spec.get("command") or [])
        program = command[0] if command else ""
        if "/" in program:
            return None  # a path: it may be staged data, so it is checked when it runs
        path = dict(component.spec.get("environment") or {}).get("PATH", os.environ.get("PATH", os.defpath))
        if shutil.which(program, path=path) is None:
            return f"the program {program!r} is not on the platform's PATH"
        return None

    def _launch_spec(self, row: SessionRow, workdir: Path) -> LaunchSpec:
        executable = self._component(row, "executable")
        compute = self._component(row, "compute")
        assert executable is not None and compute is not None
        environment = {str(k): str(v) for k, v in dict(executable.spec.get("environment") or {}).items()}
        by_uuid = {c.uuid: c for c in row.components}
        for data in (c for c in row.components if c.role == "data"):
            staged = data.state.get("path")
            if staged:
                environment[f"ECLIPTIC_DATA_{_env_name(data.name or data.uuid)}"] = str(staged)
        for mount in compute.spec.get("volumes") or []:
            target = by_uuid.get(str(mount["resource"]))
            if target is None:
                continue
            source = (
                Path(target.state["path"]) if target.role == "data" else workdir / "storage" / target.uuid
            )
            link = workdir / str(mount["path"]).strip("/")
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.is_symlink():
                link.symlink_to(source)
        return LaunchSpec(
            session_uuid=row.uuid,
            workdir=workdir,
            command=[str(part) for part in executable.spec["command"]],
            environment=environment,
            cores=row.cores,
            memory_gib=row.memory_gib,
            deadline=row.available_end,
        )

    def _stage(self, session_uuid: str, component_uuid: str, spec: dict[str, Any], dest: Path) -> Step:
        checksum = spec.get("checksum")
        try:
            staged = stage(
                str(spec["location"]),
                dest,
                checksum=(str(checksum["type"]), str(checksum["value"])) if checksum else None,
            )
        except StagingError as exc:
            if exc.retryable and self._count_attempt(component_uuid) < MAX_STAGING_ATTEMPTS:
                raise  # the engine retries with backoff
            now = utcnow()
            with self.db.write() as session:
                row = lifecycle.locked(session, session_uuid)
                component = session.get(ComponentRow, component_uuid)
                if row is None or component is None or row.phase != SessionPhase.PREPARING:
                    return None
                reason = f"staging {spec['location']} failed: {exc}"
                lifecycle.set_component_phase(session, row, component, ComponentPhase.FAILED, now, reason)
                return self._fail(session, row, now, reason)
        now = utcnow()
        with self.db.write() as session:
            row = lifecycle.locked(session, session_uuid)
            component = session.get(ComponentRow, component_uuid)
            if row is None or component is None:
                return Done()
            component.state = {
                **component.state,
                "path": str(staged.path),
                "size": staged.size,
                "sha256": staged.sha256,
            }
            if row.phase == SessionPhase.PREPARING:
                lifecycle.set_component_phase(
                    session, row, component, ComponentPhase.AVAILABLE, now, f"staged {staged.size} bytes"
                )
        return None

    def _count_attempt(self, component_uuid: str) -> int:
        with self.db.write() as session:
            component = session.get(ComponentRow, component_uuid)
            if component is None:
                return MAX_STAGING_ATTEMPTS
            attempts = int(component.state.get("staging_attempts", 0)) + 1
            component.state = {**component.state, "staging_attempts": attempts}
            return attempts

    def _launch(self, session_uuid: str, platform: Platform, spec: LaunchSpec) -> Step:
        handle = platform.launch(spec)
        now = utcnow()
        with self.db.write() as session:
            row = lifecycle.locked(session, session_uuid)
            if row is None:
                return Done()
            compute = self._component(row, "compute")
            assert compute is not None
            compute.state = {**compute.state, "handle": handle, "polls": 0}
            if row.phase == SessionPhase.PREPARING:
                lifecycle.set_component_phase(session, row, compute, ComponentPhase.AVAILABLE, now, "started")
                lifecycle.set_phase(session, row, SessionPhase.AVAILABLE, now, "the executable is running")
        return Again(now + poll_delay(0))

    def _poll(self, session_uuid: str, platform: Platform, handle: dict[str, Any], polls: int) -> Step:
        workdir = self.broker.workdir(session_uuid)
        status = platform.poll(workdir, handle)
        now = utcnow()
        with self.db.write() as session:
            row = lifecycle.locked(session, session_uuid)
            if row is None:
                return Done()
            if row.phase not in (SessionPhase.AVAILABLE, SessionPhase.RUNNING):
                return None
            compute = self._component(row, "compute")
            assert compute is not None
            if not status.finished:
                compute.state = {**compute.state, "polls": polls + 1}
                return Again(now + poll_delay(polls + 1))
            row.exit_code = status.exit_code
            if status.state == RunState.SUCCEEDED:
                lifecycle.set_component_phase(
                    session, row, compute, ComponentPhase.RELEASING, now, "exited with 0"
                )
                lifecycle.set_phase(
                    session, row, SessionPhase.RELEASING, now, "the executable exited with code 0"
                )
                row.messages = [
                    *row.messages,
                    messages.info(
                        "urn:ecliptic:exit-code", "The executable exited with code {code}", code=0
                    ).model_dump(mode="json"),
                ]
                return None
            reason = status.detail or f"the executable ended: {status.state}"
            lifecycle.set_component_phase(session, row, compute, ComponentPhase.FAILED, now, reason)
            return self._fail(session, row, now, reason, exit_code=status.exit_code)

    # -- ending ----------------------------------------------------------------------------------------------
    def _fail(
        self, session: Any, row: SessionRow, now: datetime, reason: str, exit_code: int | None = None
    ) -> Step:
        values: dict[str, Any] = {} if exit_code is None else {"code": exit_code}
        lifecycle.set_phase(session, row, SessionPhase.FAILED, now, reason, **values)
        return None  # the next step stops whatever runs and frees the capacity

    def _stop(
        self, session_uuid: str, platform: Platform, handle: dict[str, Any], launched: bool, reason: str
    ) -> Step:
        if launched:
            platform.stop(self.broker.workdir(session_uuid), handle, reason)
        now = utcnow()
        with self.db.write() as session:
            row = lifecycle.locked(session, session_uuid)
            if row is None or row.released:
                return Done()
            phase = SessionPhase(row.phase)
            if phase == SessionPhase.CANCELLED:
                self._finish(session, row, now, phase, reason, ComponentPhase.CANCELLED)
            else:
                compute = self._component(row, "compute")
                if compute is not None and compute.phase not in COMPONENT_TERMINAL:
                    lifecycle.set_component_phase(session, row, compute, ComponentPhase.FAILED, now, reason)
                self._finish(session, row, now, phase, reason, ComponentPhase.COMPLETED)
        return Done()

    def _finish(
        self,
        session: Any,
        row: SessionRow,
        now: datetime,
        phase: SessionPhase,
        reason: str,
        ending: ComponentPhase,
    ) -> None:
        for component in row.components:
            if component.phase not in COMPONENT_TERMINAL:
                if ending == ComponentPhase.COMPLETED:
                    lifecycle.set_component_phase(session, row, component, ComponentPhase.RELEASING, now)
                lifecycle.set_component_phase(session, row, component, ending, now, reason)
        lifecycle.free_capacity(session, row)
        row.released = True
        lifecycle.set_phase(session, row, phase, now, reason)
        engine.schedule(session, lifecycle.PURGE, row.uuid, now + self.broker.settings.output_retention)


def handlers(broker: Broker) -> dict[str, engine.Handler]:
    return {
        lifecycle.EXPIRE: OfferExpirer(broker),
        lifecycle.ADVANCE: SessionAdvancer(broker),
        lifecycle.PURGE: SessionPurger(broker),
    }
