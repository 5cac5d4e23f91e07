"""The broker as a library: what the HTTP API, the CLI and the tests call."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from ecliptic import engine
from ecliptic.broker import kinds, lifecycle, messages
from ecliptic.broker.data_plan import DataAssessment, assess
from ecliptic.broker.phases import ComponentPhase, SessionPhase
from ecliptic.broker.plan import ComponentPlan, Plan, Rejection
from ecliptic.broker.planner import Offer, Planner
from ecliptic.broker.schema import ExecutionRequest, Message, PhaseUpdate
from ecliptic.broker.validate import validate
from ecliptic.config import Settings
from ecliptic.isotime import utcnow
from ecliptic.platforms.base import Platform, RoomLimited
from ecliptic.staging.booked import BookedTransfers
from ecliptic.staging.estimates import TransferEstimator
from ecliptic.staging.results import ResultPusher
from ecliptic.staging.router import DataSources
from ecliptic.store.bulk import insert_new
from ecliptic.store.database import Database
from ecliptic.store.tables import (
    BookingRow,
    ComponentRow,
    OfferSetRow,
    PlatformRow,
    SessionRow,
    TransitionRow,
)


class NotFound(Exception):
    pass


Row = TypeVar("Row", OfferSetRow, SessionRow)


def _expired_offer(row: SessionRow) -> bool:
    return row.phase == SessionPhase.OFFERED and row.expires is not None and row.expires <= utcnow()


@dataclass
class DirectResult:
    session: SessionRow
    accepted: bool


def _dump(items: list[Message]) -> list[dict[str, object]]:
    return [item.model_dump(mode="json") for item in items]


class Broker:
    def __init__(
        self,
        db: Database,
        settings: Settings,
        platforms: dict[str, Platform],
        planner: Planner,
        wake: Callable[[], None] | None = None,
        data_sources: DataSources | None = None,
        estimator: TransferEstimator | None = None,
        results: ResultPusher | None = None,
    ) -> None:
        self.db = db
        self.settings = settings
        self.platforms = platforms
        self.planner = planner
        self._wake = wake or (lambda: None)
        self.data_sources = data_sources
        self.estimator = estimator
        self.results = results
        self.booked = BookedTransfers(db)

    # -- set-up ----------------------------------------------------------------------------------------------
    def sync_platforms(self) -> None:
        """Record each platform's capacity: its row is also the lock that serialises booking on it."""
        with self.db.write() as session:
            for name, platform in self.platforms.items():
                capacity = platform.info.capacity
                row = session.get(PlatformRow, name)
                if row is None:
                    row = PlatformRow(name=name)
                    session.add(row)
                row.cores = capacity.cores
                row.memory_gib = capacity.memory_gib
                row.storage_gib = capacity.storage_gib
                row.max_duration_s = int(capacity.max_duration.total_seconds())

    def workdir(self, session_uuid: str) -> Path:
        return self.settings.sessions_dir / session_uuid

    # -- offers ----------------------------------------------------------------------------------------------
    def request_offers(self, request: ExecutionRequest, owner: str | None = None) -> OfferSetRow:
        """Validate, plan and book: an offer set with YES and OFFERED sessions, or NO and messages.

        Raises :class:`~ecliptic.broker.validate.RequestInvalid` for a malformed request. The rows are written
        with one multi-row INSERT per table (the ORM unit of work costs more than the planning), and the
        offer set comes back as built, so answering it needs no second query.
        """
        now = utcnow()
        checked, data = self._validate(request, now)
        offerset = OfferSetRow(
            uuid=str(uuid.uuid4()),
            name=(request.meta.name if request.meta else None) or request.name,
            owner=owner,
            created=now,
            result="NO",
            request=request.model_dump(mode="json", exclude_none=True),
            messages=[],
        )
        rows: list[SessionRow] = []
        longest: dict[str, int] = {}
        with self.db.write() as session:
            if isinstance(checked, Rejection):
                offerset.messages = _dump(checked.messages)
            else:
                found, longest = self.planner.offers(session, checked, now, data=data)
                if not found or isinstance(found[0], Message):
                    offerset.messages = _dump([m for m in found if isinstance(m, Message)] + checked.messages)
                else:
                    offerset.result = "YES"
                    offerset.messages = _dump(checked.messages)
                    expires = now + self.settings.offer_lifetime
                    for position, offer in enumerate(found):
                        assert isinstance(offer, Offer)
                        row = self._session_for(checked, offer, now, owner, SessionPhase.OFFERED, expires)
                        row.offerset_uuid = offerset.uuid
                        row.position = position
                        row.name = f"{offerset.name or 'offer'}-{position}"
                        rows.append(row)
                    # One expiry item for the whole set: its offers share one deadline.
                    engine.schedule(session, lifecycle.EXPIRE, offerset.uuid, expires)
            self._persist(session, rows, now + self.settings.offer_lifetime, longest, offerset)
        offerset.sessions = rows
        if rows:
            self._wake()
        return offerset

    def direct(self, request: ExecutionRequest, owner: str | None = None) -> DirectResult:
        """Direct execution: book the first offer and accept it at once, or a FAILED session saying why not."""
        now = utcnow()
        checked, data = self._validate(request, now)
        accepted: str | None = None
        with self.db.write() as session:
            reasons: list[Message] = []
            if isinstance(checked, Rejection):
                reasons = checked.messages
            else:
                found, longest = self.planner.offers(session, checked, now, limit=1, data=data)
                if found and isinstance(found[0], Offer):
                    row = self._session_for(checked, found[0], now, owner, SessionPhase.ACCEPTED, None)
                    row.messages = _dump(checked.messages)
                    self._persist(session, [row], None, longest)
                    lifecycle.record(session, row.uuid, None, SessionPhase.ACCEPTED, now, "direct execution")
                    engine.schedule(session, lifecycle.ADVANCE, row.uuid, now)
                    accepted = row.uuid
                else:
                    reasons = [m for m in found if isinstance(m, Message)]
            if accepted is None:
                failed = self._failed_session(request, now, owner, reasons)
                insert_new(session, [(SessionRow, [failed])])
        if accepted is not None:
            self._wake()
            return DirectResult(self.session(accepted), True)
        return DirectResult(self.session(failed.uuid), False)

    def _validate(
        self, request: ExecutionRequest, now: datetime
    ) -> tuple[Plan | Rejection, DataAssessment | None]:
        """The plan (or why not), with where its data is and how long each platform needs to stage it."""
        checked = validate(
            request,
            now=now,
            default_duration=self.settings.default_duration,
            file_roots=self.settings.file_data_roots,
        )
        if isinstance(checked, Rejection):
            return checked, None
        data: DataAssessment | None = None
        if checked.data and self.data_sources is not None and self.estimator is not None:
            data = assess(checked, self.platforms, self.data_sources, self.estimator, now, self.booked)
            if data.refusals:
                return Rejection(data.refusals + data.notes + checked.messages), None
        data = self._ask_limited_platforms(checked, data)
        if data is None:
            return checked, None
        checked.messages.extend(data.notes)
        return checked, data

    def _ask_limited_platforms(self, plan: Plan, data: DataAssessment | None) -> DataAssessment | None:
        """Platforms with a limit of their own (sessions per account) are asked before offers are made."""
        session_type = "notebook" if plan.executable.kind == kinds.JUPYTER else "headless"
        for name, platform in self.platforms.items():
            if not isinstance(platform, RoomLimited) or (data is not None and name in data.unfit):
                continue
            if plan.executable.kind not in platform.info.executable_kinds:
                continue  # the planner says why
            try:
                room = platform.has_room(session_type)
            except Exception as exc:
                room, reason = False, f"it could not be asked ({exc})"
            else:
                reason = "the account has reached its limit of active sessions there"
            if not room:
                data = data or DataAssessment()
                data.unfit[name] = messages.error(
                    "urn:session-limit",
                    "Platform {platform} cannot start another {type} session now: {reason}",
                    platform=name,
                    type=session_type,
                    reason=reason,
                )
        return data

    def _session_for(
        self,
        plan: Plan,
        offer: Offer,
        now: datetime,
        owner: str | None,
        phase: SessionPhase,
        expires: datetime | None,
    ) -> SessionRow:
        """A new session (not yet stored) booked as ``offer`` says, with its components."""
        row = SessionRow(
            uuid=str(uuid.uuid4()),
            offerset_uuid=None,
            position=0,
            name=plan.name,
            owner=owner,
            platform=offer.platform,
            phase=phase,
            created=now,
            modified=now,
            expires=expires,
            prepare_start=offer.prepare_start,
            available_start=offer.available_start,
            available_end=offer.available_end,
            release_end=offer.release_end,
            cores=offer.cores,
            memory_gib=offer.memory_gib,
            storage_gib=offer.storage_gib,
            reason=None,
            exit_code=None,
            released=False,
            messages=[],
        )
        # Each offer is its own session, so its components get their own UUIDs; references between them
        # (data → storage, volume → resource) are rewritten to match.
        renamed = {component.uuid: str(uuid.uuid4()) for component in plan.components()}
        row.components = [
            ComponentRow(
                uuid=renamed[component.uuid],
                session_uuid=row.uuid,
                position=position,
                role=component.role,
                name=component.name,
                kind=component.kind,
                phase=ComponentPhase.INITIALIZING,
                spec=_rewrite(component.spec, renamed),
                state={},
                staging_source=_staging(component, offer.platform, "source"),
                staging_bytes=_staging(component, offer.platform, "size"),
            )
            for position, component in enumerate(plan.components())
        ]
        return row

    def _persist(
        self,
        session: Session,
        rows: list[SessionRow],
        expires: datetime | None,
        longest: dict[str, int],
        offerset: OfferSetRow | None = None,
    ) -> None:
        bookings = [
            BookingRow(
                session_uuid=row.uuid,
                platform=row.platform,
                start_s=int(row.prepare_start.timestamp()),
                end_s=int(row.release_end.timestamp()),
                cores=row.cores,
                memory_gib=row.memory_gib,
                storage_gib=row.storage_gib,
                expires_s=int(expires.timestamp()) if expires is not None else None,
            )
            for row in rows
        ]
        insert_new(
            session,
            [
                (OfferSetRow, [offerset] if offerset is not None else []),
                (SessionRow, rows),
                (ComponentRow, [component for row in rows for component in row.components]),
                (BookingRow, bookings),
            ],
        )
        self.planner.note_holds(session, bookings, longest)

    def _failed_session(
        self, request: ExecutionRequest, now: datetime, owner: str | None, reasons: list[Message]
    ) -> SessionRow:
        return SessionRow(
            uuid=str(uuid.uuid4()),
            offerset_uuid=None,
            position=0,
            name=(request.meta.name if request.meta else None) or request.name,
            owner=owner,
            platform="",
            phase=SessionPhase.FAILED,
            created=now,
            modified=now,
            expires=None,
            prepare_start=now,
            available_start=now,
            available_end=now,
            release_end=now,
            cores=0,
            memory_gib=0,
            storage_gib=0,
            exit_code=None,
            released=True,
            messages=_dump(reasons),
            reason="; ".join(m.message for m in reasons) or "the request cannot be satisfied",
        )

    # -- reads -----------------------------------------------------------------------------------------------
    def offerset(self, offerset_uuid: str) -> OfferSetRow:
        row = self._get(OfferSetRow, offerset_uuid, "offer set")
        due = [offer.uuid for offer in row.sessions if _expired_offer(offer)]
        if due:
            self._expire(due)
            row = self._get(OfferSetRow, offerset_uuid, "offer set")
        return row

    def session(self, session_uuid: str) -> SessionRow:
        row = self._get(SessionRow, session_uuid, "session")
        if _expired_offer(row):
            self._expire([session_uuid])
            row = self._get(SessionRow, session_uuid, "session")
        return row

    def _get(self, entity: type[Row], key: str, what: str) -> Row:
        with self.db.read() as session:
            row = session.get(entity, key)
            if row is None:
                raise NotFound(f"no {what} {key}")
            return row

    def _expire(self, session_uuids: list[str]) -> None:
        """Reads never show an offer as OFFERED after it expired, even before the engine gets to it."""
        now = utcnow()
        with self.db.write() as session:
            for uid in session_uuids:
                row = lifecycle.locked(session, uid, with_offerset=True)
                if row is not None:
                    lifecycle.expire_if_due(session, row, now)

    def sessions(self, phase: str | None = None, limit: int = 100) -> list[SessionRow]:
        with self.db.read() as session:
            query = select(SessionRow).order_by(SessionRow.created.desc()).limit(limit)
            if phase:
                query = query.where(SessionRow.phase == phase)
            return list(session.scalars(query).all())

    def history(self, session_uuid: str) -> list[TransitionRow]:
        """Every phase change of the session and its components, oldest first."""
        with self.db.read() as session:
            if session.get(SessionRow, session_uuid) is None:
                raise NotFound(f"no session {session_uuid}")
            query = (
                select(TransitionRow)
                .where(TransitionRow.session_uuid == session_uuid)
                .order_by(TransitionRow.id)
            )
            return list(session.scalars(query).all())

    def component(self, component_uuid: str) -> tuple[SessionRow, ComponentRow]:
        with self.db.read() as session:
            component = session.get(ComponentRow, component_uuid)
            if component is None:
                raise NotFound(f"no component {component_uuid}")
            row = session.get(SessionRow, component.session_uuid)
            assert row is not None
            return row, component

    # -- updates ---------------------------------------------------------------------------------------------
    def update(
        self, session_uuid: str, update: PhaseUpdate, owner: str | None = None
    ) -> tuple[SessionRow, str | None]:
        """Apply a client's phase update. Returns the session as it is now and, if refused, why."""
        target = SessionPhase(update.value)
        now = utcnow()
        refused: str | None = None
        with self.db.write() as session:
            row = self._locked(session, session_uuid)
            lifecycle.expire_if_due(session, row, now)
            try:
                lifecycle.client_update(session, row, target, now, update.reason)
            except lifecycle.TransitionRefused as exc:
                refused = str(exc)
            session.flush()
        self._wake()
        return self.session(session_uuid), refused

    def _locked(self, session: Session, session_uuid: str) -> SessionRow:
        row = lifecycle.locked(session, session_uuid, with_offerset=True)
        if row is None:
            raise NotFound(f"no session {session_uuid}")
        return row

    def capacity_in_use(self) -> list[BookingRow]:
        with self.db.read() as session:
            return list(session.scalars(select(BookingRow)).all())


def _rewrite(value: Any, renamed: dict[str, str]) -> Any:
    if isinstance(value, str):
        return renamed.get(value, value)
    if isinstance(value, list):
        return [_rewrite(item, renamed) for item in value]
    if isinstance(value, dict):
        return {key: _rewrite(item, renamed) for key, item in value.items()}
    return value


def _staging(component: ComponentPlan, platform: str, key: str) -> Any:
    """For data: the source it is booked to stage from on ``platform``, or its size, as its estimate says."""
    if component.role != "data":
        return None
    estimate = (component.spec.get("estimates") or {}).get(platform) or {}
    return estimate.get(key)
