"""Session and component phase changes, inside the caller's unit of work.

Every change is written with its reason to ``transitions``; a session's capacity booking lives exactly as
long as the session holds capacity; and each change that needs work in the world schedules the engine item
that will do it (write-ahead), so a crash between the two loses nothing.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from ecliptic import engine
from ecliptic.broker import messages
from ecliptic.broker.phases import CLIENT_TRANSITIONS, ComponentPhase, SessionPhase
from ecliptic.broker.schema import Level
from ecliptic.isotime import format_instant
from ecliptic.store.tables import BookingRow, ComponentRow, OfferSetRow, SessionRow, TransitionRow

EXPIRE = "broker.offerset.expire"
"""Subject: an offer set; its offers share one deadline."""
ADVANCE = "broker.session.advance"
PURGE = "broker.session.purge"


class TransitionRefused(Exception):
    """A client asked for a phase change that is not allowed from the session's current phase."""


def locked(session: Session, session_uuid: str, *, with_offerset: bool = False) -> SessionRow | None:
    """The session row, locked against concurrent phase changes until the transaction ends.

    On SQLite the write transaction already excludes every other writer. On PostgreSQL this takes the row
    lock (and first its offer set's, when siblings may change too: clients and expiry lock in that order, the
    reconcile loop takes only the session's), so a read-decide-write never overwrites a change that another
    process committed in between.
    """
    if session.get_bind().dialect.name != "postgresql":
        return session.get(SessionRow, session_uuid)
    if with_offerset:
        parent = session.scalar(select(SessionRow.offerset_uuid).where(SessionRow.uuid == session_uuid))
        if parent is not None:
            session.execute(
                select(OfferSetRow.uuid).where(OfferSetRow.uuid == parent).with_for_update()
            ).all()
    return session.scalar(
        select(SessionRow)
        .where(SessionRow.uuid == session_uuid)
        .with_for_update()
        .execution_options(populate_existing=True)
    )


def record(
    session: Session,
    session_uuid: str,
    component: str | None,
    phase: str,
    now: datetime,
    reason: str | None,
    from_phase: str | None = None,
) -> None:
    session.add(
        TransitionRow(
            session_uuid=session_uuid,
            component=component,
            at=now,
            from_phase=from_phase,
            to_phase=phase,
            reason=reason,
        )
    )


_ENDINGS: dict[SessionPhase, tuple[str, Level, str]] = {
    SessionPhase.FAILED: ("urn:ecliptic:session-failed", "ERROR", "The session failed: {reason}"),
    SessionPhase.CANCELLED: ("urn:ecliptic:session-cancelled", "INFO", "The session was cancelled: {reason}"),
    SessionPhase.REJECTED: ("urn:ecliptic:session-rejected", "INFO", "The offer was rejected: {reason}"),
    SessionPhase.EXPIRED: ("urn:ecliptic:session-expired", "INFO", "The offer expired: {reason}"),
}
"""Phases that end a session early: entering one adds a message that says why, so clients can show it."""


def set_phase(
    session: Session,
    row: SessionRow,
    phase: SessionPhase,
    now: datetime,
    reason: str | None = None,
    **values: object,
) -> None:
    if row.phase == phase:
        return
    record(session, row.uuid, None, phase, now, reason, row.phase)
    row.phase = phase
    row.modified = now
    ending = _ENDINGS.get(phase)
    if ending is not None:
        row.reason = reason or phase.value.lower()
        kind, level, template = ending
        note = messages.make(kind, level, template, reason=row.reason, **values)
        row.messages = [*row.messages, note.model_dump(mode="json")]


def set_component_phase(
    session: Session,
    row: SessionRow,
    component: ComponentRow,
    phase: ComponentPhase,
    now: datetime,
    reason: str | None = None,
) -> None:
    if component.phase == phase:
        return
    record(session, row.uuid, component.role, phase, now, reason, component.phase)
    component.phase = phase
    row.modified = now


def free_capacity(session: Session, row: SessionRow) -> None:
    session.execute(delete(BookingRow).where(BookingRow.session_uuid == row.uuid))


def expire_if_due(session: Session, row: SessionRow, now: datetime) -> bool:
    if row.phase != SessionPhase.OFFERED or row.expires is None or row.expires > now:
        return False
    set_phase(session, row, SessionPhase.EXPIRED, now, f"the offer expired at {format_instant(row.expires)}")
    free_capacity(session, row)
    return True


def reject(session: Session, row: SessionRow, now: datetime, reason: str) -> None:
    set_phase(session, row, SessionPhase.REJECTED, now, reason)
    free_capacity(session, row)


def accept(session: Session, row: SessionRow, now: datetime, reason: str = "accepted by the client") -> None:
    set_phase(session, row, SessionPhase.ACCEPTED, now, reason)
    session.execute(update(BookingRow).where(BookingRow.session_uuid == row.uuid).values(expires_s=None))
    if row.offerset_uuid is not None:
        siblings = session.scalars(
            select(SessionRow).where(
                SessionRow.offerset_uuid == row.offerset_uuid,
                SessionRow.uuid != row.uuid,
                SessionRow.phase == SessionPhase.OFFERED,
            )
        ).all()
        for sibling in siblings:
            reject(session, sibling, now, f"another offer of the same offer set ({row.uuid}) was accepted")
    engine.schedule(session, ADVANCE, row.uuid, now)


def stop(session: Session, row: SessionRow, phase: SessionPhase, now: datetime, reason: str) -> None:
    """End a live session as CANCELLED or FAILED; the advance handler then stops its work and frees capacity."""
    set_phase(session, row, phase, now, reason)
    engine.schedule(session, ADVANCE, row.uuid, now)


def client_update(
    session: Session, row: SessionRow, target: SessionPhase, now: datetime, reason: str | None
) -> None:
    """Apply a phase change a client asked for, or raise :class:`TransitionRefused` saying why not."""
    current = SessionPhase(row.phase)
    if target == SessionPhase.FAILED and current not in (
        SessionPhase.OFFERED,
        SessionPhase.REJECTED,
        SessionPhase.EXPIRED,
        SessionPhase.COMPLETED,
        SessionPhase.FAILED,
        SessionPhase.CANCELLED,
    ):
        stop(session, row, SessionPhase.FAILED, now, reason or "marked FAILED by the client")
        return
    allowed = CLIENT_TRANSITIONS.get(current, frozenset())
    if target not in allowed:
        if current == SessionPhase.EXPIRED and row.expires is not None:
            why = f"the offer expired at {format_instant(row.expires)}"
        else:
            why = f"the session is {current.value}"
        options = ", ".join(sorted(allowed)) or "nothing: the session is finished"
        raise TransitionRefused(f"Cannot change phase to {target.value}: {why}. Allowed now: {options}.")
    if target == SessionPhase.ACCEPTED:
        accept(session, row, now)
    elif target == SessionPhase.REJECTED:
        reject(session, row, now, reason or "rejected by the client")
    elif target == SessionPhase.CANCELLED:
        stop(session, row, SessionPhase.CANCELLED, now, reason or "cancelled by the client")
