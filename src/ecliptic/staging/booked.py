"""Transfers the store says are coming: data of accepted sessions not yet staged, counted per source.

A burst of accepted sessions shares a source's bandwidth before any of them has started to stage, so an
estimate that counts only the transfers running now comes out low for every session of the burst. The store
knows every accepted session and which source each data component was booked to stage from, so counting there
sees the burst, and sees it across every broker that shares the store.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import bindparam, func, select

from ecliptic.broker.phases import ComponentPhase, SessionPhase
from ecliptic.store.database import Database
from ecliptic.store.tables import ComponentRow, SessionRow

_STAGING_SESSION = (SessionPhase.ACCEPTED, SessionPhase.WAITING, SessionPhase.PREPARING)
_NOT_STAGED = (ComponentPhase.INITIALIZING, ComponentPhase.WAITING, ComponentPhase.PREPARING)

_COUNT = (
    select(func.count())
    .select_from(ComponentRow)
    .join(SessionRow, SessionRow.uuid == ComponentRow.session_uuid)
    .where(
        ComponentRow.staging_source == bindparam("source"),
        ComponentRow.phase.in_([str(phase) for phase in _NOT_STAGED]),
        SessionRow.phase.in_([str(phase) for phase in _STAGING_SESSION]),
        SessionRow.prepare_start < bindparam("before"),
    )
)


class BookedTransfers:
    """Counts, per source, the data components booked to stage from it that have not finished staging."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def count(self, source: str, before: datetime) -> int:
        """Those whose session starts preparing before ``before``: the ones that can share a transfer's time."""
        with self.db.read() as session:
            return int(session.scalar(_COUNT, {"source": source, "before": before}) or 0)
