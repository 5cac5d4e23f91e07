"""Transfers the store says are coming or running: data of accepted sessions not yet staged, per source.

A burst of accepted sessions shares a source's bandwidth before any of them has started to stage, so an
estimate that counts only the transfers running now comes out low for every session of the burst. The store
knows every accepted session and which source each data component was booked to stage from, so counting there
sees the burst, and sees it across every broker that shares the store.

Transfers of different sizes do not share alike. With the bandwidth shared fairly, a transfer of S bytes
beside others with r_i bytes still to move takes as long as moving S + Σ min(r_i, S) bytes alone: the small
ones finish early, the large ones take an equal share only until it is done. So the company a transfer has is
Σ min(r_i, S) / S whole-transfer equivalents, which estimates take as ``in_flight`` and the history records
beside each transfer (counted when it starts), so the rates fitted from history and the estimates made with
them mean the same sharing.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, select

from ecliptic.broker.phases import ComponentPhase, SessionPhase
from ecliptic.store.database import Database
from ecliptic.store.tables import ComponentRow, SessionRow

_STAGING_SESSION = (SessionPhase.ACCEPTED, SessionPhase.WAITING, SessionPhase.PREPARING)
_NOT_STAGED = (ComponentPhase.INITIALIZING, ComponentPhase.WAITING, ComponentPhase.PREPARING)

_BOOKED = (
    select(ComponentRow.uuid, ComponentRow.staging_bytes, ComponentRow.phase, ComponentRow.state)
    .join(SessionRow, SessionRow.uuid == ComponentRow.session_uuid)
    .where(
        ComponentRow.staging_source == bindparam("source"),
        ComponentRow.phase.in_([str(phase) for phase in _NOT_STAGED]),
        SessionRow.phase.in_([str(phase) for phase in _STAGING_SESSION]),
        SessionRow.prepare_start < bindparam("before"),
    )
)


def _remaining(size: int | None, phase: str, state: dict[str, Any]) -> int | None:
    """Bytes a booked transfer still has to move, or None when its size is not known."""
    if size is None:
        return None
    progress = state.get("progress") if phase == ComponentPhase.PREPARING else None
    done = progress.get("done") if isinstance(progress, dict) else None
    return max(size - int(done), 0) if isinstance(done, int | float) else size


def share_of(size: int | None, others: list[int | None]) -> float:
    """The company a transfer of ``size`` bytes has among others with these bytes left, in transfers.

    An other of unknown size, or any other when ``size`` is not known, counts as one whole transfer.
    """
    if not size:
        return float(len(others))
    return sum(1.0 if left is None else min(left, size) / size for left in others)


class BookedTransfers:
    """The transfers booked to stage from a source, or staging from it now, that have not finished."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def company(
        self, source: str, before: datetime, size: int | None, *, excluding: str | None = None
    ) -> float:
        """The others that can share the time of a transfer of ``size`` bytes from ``source``.

        Those whose session starts preparing before ``before`` (when the transfer would end alone); in
        whole-transfer equivalents. ``excluding``: a data component's uuid, so a transfer does not count itself.
        """
        with self.db.read() as session:
            rows = session.execute(_BOOKED, {"source": source, "before": before}).all()
        others = [
            _remaining(nbytes, phase, state or {}) for uuid, nbytes, phase, state in rows if uuid != excluding
        ]
        return share_of(size, others)
