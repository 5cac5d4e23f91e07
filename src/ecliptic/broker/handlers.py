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
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select

from ecliptic import engine
from ecliptic.broker import data_plan, kinds, lifecycle, messages
from ecliptic.broker.phases import COMPONENT_TERMINAL, ComponentPhase, SessionPhase
from ecliptic.broker.service import Broker
from ecliptic.engine import Again, Done, Job, Outcome
from ecliptic.isotime import utcnow
from ecliptic.platforms.base import Image, LaunchSpec, Mount, Platform, Port, RunState, launch_refused
from ecliptic.platforms.local import LocalPlatform
from ecliptic.staging import StagedFile, StagingError
from ecliptic.staging.sources import Replica
from ecliptic.store.tables import ComponentRow, OfferSetRow, SessionRow

log = logging.getLogger(__name__)

PREPARE_ORDER = ("storage", "data", "executable", "compute")
MAX_STAGING_ATTEMPTS = 5
"""Transient staging failures (5xx, timeouts) are retried with backoff this many times, then the session fails."""
MAX_LAUNCH_ATTEMPTS = 5
"""Launches that fail for reasons that may pass (a daemon down) are retried so often, then the session fails."""
MAX_STEPS = 25
"""Quick steps one handler run may take before it yields its thread to other sessions."""


def poll_delay(polls: int) -> timedelta:
    """The weighted wait loop: look again soon at first, then less and less often."""
    return timedelta(seconds=min(0.25 * 2 ** min(polls, 10), 10.0))


_DEADLINE_GRACE = timedelta(seconds=30)
"""How long past its booked end a run may go before the broker ends it (platforms usually do it themselves)."""


def _short_name(row: SessionRow) -> str:
    """A name platforms can use in theirs (Skaha allows ``[A-Za-z0-9-]``): ``ecliptic-<uuid8>``."""
    return f"ecliptic-{row.uuid.split('-')[0]}"


class _ProgressWriter:
    """Records staging progress on the component at most once a second, so the UI can show it."""

    def __init__(self, db: Any, component_uuid: str) -> None:
        self.db = db
        self.component_uuid = component_uuid
        self.last = 0.0

    def __call__(self, done: int, total: int | None) -> None:
        moment = time.monotonic()
        if moment - self.last < 1.0 and (total is None or done < total):
            return
        self.last = moment
        with self.db.write() as session:
            component = session.get(ComponentRow, self.component_uuid)
            if component is not None:
                component.state = {**component.state, "progress": {"done": done, "total": total}}


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
                release = self._release(session, row)
                if release is not None:
                    action = release
                else:
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
                    problem = (
                        self._check_executable(component, workdir)
                        if isinstance(self.broker.platforms[row.platform], LocalPlatform)
                        else None
                    )
                    if problem:
                        lifecycle.set_component_phase(
                            session, row, component, ComponentPhase.FAILED, now, problem
                        )
                        return self._fail(session, row, now, problem)
                    lifecycle.set_component_phase(session, row, component, ComponentPhase.AVAILABLE, now)
                    continue
                if role == "compute" and "handle" in component.state:
                    # Launched: compute is AVAILABLE once the platform says the run is RUNNING (a Skaha
                    # session can be Pending for minutes, a Slurm job queued for hours).
                    handle = dict(component.state["handle"])
                    polls = int(component.state.get("polls", 0))
                    platform = self.broker.platforms[row.platform]
                    uid = row.uuid
                    return lambda: self._poll(uid, platform, handle, polls)
                lifecycle.set_component_phase(session, row, component, ComponentPhase.PREPARING, now)
                if role == "data":
                    spec = dict(component.spec)
                    dest_dir = workdir / "storage" / str(spec["storage"])
                    uid, cid = row.uuid, component.uuid
                    fallback = component.name or component.uuid
                    platform_name = row.platform
                    return lambda: self._stage(uid, cid, spec, dest_dir, fallback, platform_name)
                # Compute starts as soon as its inputs are in place: the session's hold began at prepare start, so
                # starting before the offered start uses only capacity it already holds, and ends by the same deadline.
                component.state = {**component.state, "launching": now.isoformat()}
                launch = self._launch_spec(row, workdir)
                uid, cid = row.uuid, component.uuid
                platform = self.broker.platforms[row.platform]
                return lambda: self._launch(uid, cid, platform, launch)
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
        workdir.mkdir(parents=True, exist_ok=True)
        executable = self._component(row, "executable")
        compute = self._component(row, "compute")
        assert executable is not None and compute is not None
        environment = {str(k): str(v) for k, v in dict(executable.spec.get("environment") or {}).items()}
        by_uuid = {c.uuid: c for c in row.components}
        inside = self.broker.platforms[row.platform].info.workdir_in_run
        for data in (c for c in row.components if c.role == "data"):
            staged = data.state.get("path")
            if staged:
                path = Path(staged)
                if inside is not None and path.is_relative_to(workdir):
                    path = Path(inside) / path.relative_to(workdir)
                environment[f"ECLIPTIC_DATA_{_env_name(data.name or data.uuid)}"] = str(path)
        mounts: list[Mount] = []
        for mount in compute.spec.get("volumes") or []:
            target = by_uuid.get(str(mount["resource"]))
            if target is None:
                continue
            source = (
                Path(target.state["path"]) if target.role == "data" else workdir / "storage" / target.uuid
            )
            mounts.append(Mount(source, str(mount["path"]), read_only=mount.get("mode") != "READWRITE"))
            # Processes on the host see a mount as a link in the workdir; containers get a real bind.
            link = workdir / str(mount["path"]).strip("/")
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.is_symlink():
                link.symlink_to(source)
        image_spec = executable.spec.get("image")
        image = (
            Image(tuple(str(x) for x in image_spec["locations"]), image_spec.get("digest"))
            if image_spec
            else None
        )
        ports = tuple(
            Port(int(port["internal"]), str(port.get("protocol", "TCP")), str(port.get("path", "")))
            for port in executable.spec.get("ports") or []
            if port.get("access", True)
        )
        return LaunchSpec(
            session_uuid=row.uuid,
            workdir=workdir,
            command=[str(part) for part in executable.spec.get("command") or []],
            environment=environment,
            cores=row.cores,
            memory_gib=row.memory_gib,
            deadline=row.available_end,
            name=_short_name(row),
            executable_kind=executable.kind,
            image=image,
            entrypoint=executable.spec.get("entrypoint"),
            mounts=tuple(mounts),
            ports=ports,
            session_type="notebook" if executable.kind == kinds.JUPYTER else "headless",
        )

    def _company(self, component_uuid: str, estimate: dict[str, Any]) -> float:
        """The transfers sharing this one's source as it starts, counted as the offer's estimate counted them,
        so the history and the estimates made from it mean the same sharing."""
        horizon = utcnow() + timedelta(seconds=float(estimate.get("seconds") or 0.0))
        size = estimate.get("size")
        return self.broker.booked.company(
            str(estimate.get("source") or "unknown"),
            horizon,
            int(size) if size is not None else None,
            excluding=component_uuid,
        )

    def _stage(
        self,
        session_uuid: str,
        component_uuid: str,
        spec: dict[str, Any],
        dest_dir: Path,
        fallback: str,
        platform_name: str,
    ) -> Step:
        site = self.broker.platforms[platform_name].info.site
        estimate = dict((spec.get("estimates") or {}).get(platform_name) or {})
        company = self._company(component_uuid, estimate) if self.broker.estimator is not None else 0.0
        started = time.monotonic()
        progress = _ProgressWriter(self.db, component_uuid)
        try:
            staged, replica = self._fetch(spec, dest_dir, fallback, estimate, progress)
        except StagingError as exc:
            if exc.retryable and self._count_attempt(component_uuid) < MAX_STAGING_ATTEMPTS:
                raise  # the engine retries with backoff
            now = utcnow()
            with self.db.write() as session:
                row = lifecycle.locked(session, session_uuid)
                component = session.get(ComponentRow, component_uuid)
                if row is None or component is None or row.phase != SessionPhase.PREPARING:
                    return None
                reason = f"staging {data_plan.describe(spec, fallback)} failed: {exc}"
                lifecycle.set_component_phase(session, row, component, ComponentPhase.FAILED, now, reason)
                return self._fail(session, row, now, reason)
        seconds = time.monotonic() - started
        now = utcnow()
        if self.broker.estimator is not None and staged.size > 0:
            self.broker.estimator.record(
                replica.source,
                site,
                staged.size,
                seconds,
                ok=True,
                session=session_uuid,
                component=component_uuid,
                now=now,
                in_flight=company,
            )
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
                "source": replica.source,
                "staging_seconds": round(seconds, 3),
                "estimated_seconds": estimate.get("seconds"),
                "estimate_basis": estimate.get("basis"),
            }
            if row.phase == SessionPhase.PREPARING:
                lifecycle.set_component_phase(
                    session, row, component, ComponentPhase.AVAILABLE, now, f"staged {staged.size} bytes"
                )
        return None

    def _fetch(
        self,
        spec: dict[str, Any],
        dest_dir: Path,
        fallback: str,
        estimate: dict[str, Any],
        progress: Callable[[int, int | None], None],
    ) -> tuple[StagedFile, Replica]:
        """Stage from the replica the offer was estimated on, if it is still there."""
        sources = self.broker.data_sources
        source = sources.source_for(str(spec.get("kind", "")), spec) if sources is not None else None
        if source is None:
            # Offers are only made for data some configured source takes; the settings changed since.
            raise StagingError(f"no data source is configured for {data_plan.describe(spec, fallback)}")
        resolved = source.resolve(spec)
        # The replica the offer was estimated on, if it is still there; sources with several replicas (Rucio)
        # fall back to the others themselves.
        replica = next((r for r in resolved.replicas if r.url == estimate.get("url")), resolved.replicas[0])
        return source.fetch(spec, replica, dest_dir, progress), replica

    def _count_attempt(self, component_uuid: str) -> int:
        with self.db.write() as session:
            component = session.get(ComponentRow, component_uuid)
            if component is None:
                return MAX_STAGING_ATTEMPTS
            attempts = int(component.state.get("attempts", 0)) + 1
            component.state = {**component.state, "attempts": attempts}
            return attempts

    def _launch(self, session_uuid: str, compute_uuid: str, platform: Platform, spec: LaunchSpec) -> Step:
        try:
            handle = platform.launch(spec)
        except Exception as exc:
            refused = launch_refused(exc)
            if not refused and self._count_attempt(compute_uuid) < MAX_LAUNCH_ATTEMPTS:
                raise  # the engine retries with backoff
            now = utcnow()
            with self.db.write() as session:
                row = lifecycle.locked(session, session_uuid)
                if row is None or row.phase != SessionPhase.PREPARING:
                    return None
                compute = self._component(row, "compute")
                reason = f"platform {row.platform} could not start the executable: {exc}"
                if compute is not None:
                    lifecycle.set_component_phase(session, row, compute, ComponentPhase.FAILED, now, reason)
                    # Nothing was started, so there is nothing to stop.
                    compute.state = {k: v for k, v in compute.state.items() if k != "launching"}
                return self._fail(session, row, now, reason)
        now = utcnow()
        with self.db.write() as session:
            row = lifecycle.locked(session, session_uuid)
            if row is None:
                return Done()
            compute = self._component(row, "compute")
            assert compute is not None
            compute.state = {**compute.state, "handle": handle, "polls": 0}
        return Again(now + poll_delay(0))

    def _poll(self, session_uuid: str, platform: Platform, handle: dict[str, Any], polls: int) -> Step:
        workdir = self.broker.workdir(session_uuid)
        status = platform.poll(workdir, handle)
        now = utcnow()
        with self.db.write() as session:
            row = lifecycle.locked(session, session_uuid)
            if row is None:
                return Done()
            phase = SessionPhase(row.phase)
            if phase not in (SessionPhase.PREPARING, SessionPhase.AVAILABLE, SessionPhase.RUNNING):
                return None
            compute = self._component(row, "compute")
            assert compute is not None
            if status.connectors:
                compute.state = {
                    **compute.state,
                    "connectors": [
                        {"kind": c.kind, "protocol": c.protocol, "location": c.location}
                        for c in status.connectors
                    ],
                }
            if phase == SessionPhase.PREPARING and status.state != RunState.PENDING:
                # Running, or already finished between two polls: either way it was available.
                lifecycle.set_component_phase(session, row, compute, ComponentPhase.AVAILABLE, now, "started")
                lifecycle.set_phase(session, row, SessionPhase.AVAILABLE, now, "the executable is running")
            if not status.finished:
                compute.state = {**compute.state, "polls": polls + 1}
                if now >= row.available_end + _DEADLINE_GRACE:
                    return self._overran(session, row, now)
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

    def _overran(self, session: Any, row: SessionRow, now: datetime) -> Step:
        """The booked time is over and the platform did not end the run: end it here.

        An interactive session (a notebook) ends normally at its booked end; a batch run that is still going
        failed to fit its booking.
        """
        executable = self._component(row, "executable")
        if executable is not None and executable.kind == kinds.JUPYTER:
            lifecycle.set_phase(session, row, SessionPhase.RELEASING, now, "the booked time is over")
            return None
        return self._fail(session, row, now, "the executable ran past the end of its booked time")

    # -- releasing -------------------------------------------------------------------------------------------
    def _release(self, session: Any, row: SessionRow) -> Callable[[], Step] | None:
        """The next releasing action: push a storage's results, then free the platform's run; None when done."""
        for storage in (c for c in row.components if c.role == "storage"):
            destination = storage.spec.get("destination")
            if destination and "pushed" not in storage.state:
                source = self.broker.workdir(row.uuid) / "storage" / storage.uuid
                uid, sid = row.uuid, storage.uuid
                return lambda: self._push(uid, sid, source, str(destination))
        compute = self._component(row, "compute")
        if compute is not None and "handle" in compute.state and not compute.state.get("freed"):
            handle = dict(compute.state["handle"])
            platform = self.broker.platforms[row.platform]
            uid, cid = row.uuid, compute.uuid
            return lambda: self._free(uid, cid, platform, handle)
        return None

    def _push(self, session_uuid: str, storage_uuid: str, source: Path, destination: str) -> Step:
        try:
            pusher = self.broker.results
            if pusher is None:
                raise StagingError("this broker is not configured to push results", retryable=False)
            pushed = pusher.push(source, destination)
        except StagingError as exc:
            if exc.retryable and self._count_attempt(storage_uuid) < MAX_STAGING_ATTEMPTS:
                raise
            now = utcnow()
            with self.db.write() as session:
                row = lifecycle.locked(session, session_uuid)
                if row is None or row.phase != SessionPhase.RELEASING:
                    return None
                # The outputs stay in the session's storage until it is purged, so nothing is lost.
                return self._fail(session, row, now, f"pushing results to {destination} failed: {exc}")
        now = utcnow()
        with self.db.write() as session:
            storage = session.get(ComponentRow, storage_uuid)
            if storage is not None:
                storage.state = {
                    **storage.state,
                    "pushed": {
                        "destination": destination,
                        "files": len(pushed),
                        "bytes": sum(f.size for f in pushed),
                    },
                }
        return None

    def _free(self, session_uuid: str, compute_uuid: str, platform: Platform, handle: dict[str, Any]) -> Step:
        note = None
        try:
            platform.stop(self.broker.workdir(session_uuid), handle, "released")
        except Exception as exc:
            if self._count_attempt(compute_uuid) < MAX_LAUNCH_ATTEMPTS:
                raise  # the engine retries with backoff
            # The work is over and its results are saved: a platform that will not say it removed the run
            # must not hold the session's capacity for ever.
            note = f"platform {platform.info.name} did not confirm removing the run: {exc}"
        with self.db.write() as session:
            row = lifecycle.locked(session, session_uuid)
            compute = self._component(row, "compute") if row is not None else None
            if row is not None and compute is not None:
                compute.state = {**compute.state, "freed": True}
                if note is not None:
                    row.messages = [
                        *row.messages,
                        messages.make(
                            "urn:ecliptic:release-unconfirmed", "WARN", "{note}", note=note
                        ).model_dump(mode="json"),
                    ]
        return None

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
