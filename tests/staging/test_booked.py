"""Sharing a source's bandwidth by size: the company a transfer has among the others booked from it."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy import select

from ecliptic.broker.phases import ComponentPhase, SessionPhase
from ecliptic.isotime import utcnow
from ecliptic.staging.booked import BookedTransfers, share_of
from ecliptic.store import Database, upgrade
from ecliptic.store.tables import ComponentRow, SessionRow

MB = 1_000_000


def test_smaller_others_count_by_what_they_move_and_larger_ones_as_one() -> None:
    assert share_of(4 * MB, []) == 0
    assert share_of(4 * MB, [1 * MB, 2 * MB]) == pytest.approx(0.75)
    assert share_of(4 * MB, [4 * MB, 40 * MB]) == pytest.approx(2)
    assert share_of(4 * MB, [None, 1 * MB]) == pytest.approx(1.25)  # an unknown size counts whole
    assert share_of(None, [1 * MB, None]) == 2
    assert share_of(0, [1 * MB]) == 1


def _session(
    phase: SessionPhase, start_in: timedelta, *data: tuple[int | None, ComponentPhase, int]
) -> SessionRow:
    now = utcnow()
    row = SessionRow(
        uuid=str(uuid.uuid4()),
        platform="local",
        phase=phase,
        created=now,
        modified=now,
        prepare_start=now + start_in,
        available_start=now + start_in,
        available_end=now + start_in + timedelta(hours=1),
        release_end=now + start_in + timedelta(hours=1),
        cores=1,
        memory_gib=1,
        storage_gib=1,
        messages=[],
    )
    row.components = [
        ComponentRow(
            uuid=str(uuid.uuid4()),
            position=index,
            role="data",
            kind="urn:ecliptic:data:simple",
            phase=component_phase,
            spec={},
            state={"progress": {"done": done, "total": size}} if done else {},
            staging_source="http:far:80",
            staging_bytes=size,
        )
        for index, (size, component_phase, done) in enumerate(data)
    ]
    return row


def test_the_store_counts_what_is_left_of_accepted_transfers_that_start_in_time(database_url: str) -> None:
    db = Database(database_url)
    upgrade(db)
    soon, later = timedelta(seconds=5), timedelta(hours=2)
    with db.write() as session:
        session.add_all(
            [
                # Staging now, 3 of its 4 MB moved: 1 MB left.
                _session(SessionPhase.PREPARING, -soon, (4 * MB, ComponentPhase.PREPARING, 3 * MB)),
                # Accepted, not started: 2 MB, and one already staged (not counted).
                _session(
                    SessionPhase.WAITING,
                    soon,
                    (2 * MB, ComponentPhase.WAITING, 0),
                    (8 * MB, ComponentPhase.AVAILABLE, 0),
                ),
                # Only offered, ended, or starting long after: none of them counts.
                _session(SessionPhase.OFFERED, soon, (4 * MB, ComponentPhase.INITIALIZING, 0)),
                _session(SessionPhase.COMPLETED, -soon, (4 * MB, ComponentPhase.COMPLETED, 0)),
                _session(SessionPhase.WAITING, later, (4 * MB, ComponentPhase.WAITING, 0)),
            ]
        )
    booked = BookedTransfers(db)
    horizon = utcnow() + timedelta(minutes=1)
    assert booked.company("http:far:80", horizon, 4 * MB) == pytest.approx(0.75)
    assert booked.company("http:far:80", horizon, 1 * MB) == pytest.approx(2)
    assert booked.company("http:near:80", horizon, 4 * MB) == 0
    running = next(iter(_uuids(db, ComponentPhase.PREPARING)))
    assert booked.company("http:far:80", horizon, 4 * MB, excluding=running) == pytest.approx(0.5)
    db.dispose()


def _uuids(db: Database, phase: ComponentPhase) -> set[str]:
    with db.read() as session:
        return set(session.scalars(select(ComponentRow.uuid).where(ComponentRow.phase == str(phase))))
