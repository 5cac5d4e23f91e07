"""Work-item operations on the store: schedule, claim, finish."""

from __future__ import annotations

import traceback
from collections.abc import Collection
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from ecliptic.engine.backoff import backoff_delay
from ecliptic.engine.outcome import Again, Done, Job, Outcome
from ecliptic.isotime import utcnow
from ecliptic.store.database import Database
from ecliptic.store.tables import WorkItem


def schedule(
    session: Session,
    kind: str,
    subject: str,
    at: datetime,
    payload: dict[str, Any] | None = None,
    *,
    earliest: bool = True,
) -> None:
    """Make sure ``(kind, subject)`` is due at ``at``, inside the caller's unit of work.

    There is one item per (kind, subject). If it exists already, its due time becomes the earlier of the two
    (``earliest=True``) or exactly ``at``, and its generation is bumped, so a worker that is running it right
    now will not delete it when it finishes.
    """
    dialect = session.get_bind().dialect.name
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    stmt = insert(WorkItem).values(
        kind=kind, subject=subject, due_at=at, generation=0, attempts=0, payload=payload or {}
    )
    new_due = (
        func.min(WorkItem.due_at, stmt.excluded.due_at)
        if dialect == "sqlite"
        else func.least(WorkItem.due_at, stmt.excluded.due_at)
    )
    values: dict[str, Any] = {
        "due_at": new_due if earliest else stmt.excluded.due_at,
        "generation": WorkItem.generation + 1,
    }
    if payload is not None:
        values["payload"] = stmt.excluded.payload
    session.execute(stmt.on_conflict_do_update(index_elements=["kind", "subject"], set_=values))


def cancel(session: Session, kind: str, subject: str) -> None:
    session.execute(delete(WorkItem).where(WorkItem.kind == kind, WorkItem.subject == subject))


def pending(session: Session, kind: str | None = None) -> int:
    query = select(func.count()).select_from(WorkItem)
    if kind is not None:
        query = query.where(WorkItem.kind == kind)
    return int(session.scalar(query) or 0)


def claim(
    db: Database,
    owner: str,
    limit: int,
    lease: timedelta,
    kinds: set[str] | None = None,
    running: Collection[int] = (),
) -> list[Job]:
    """Claim up to ``limit`` due, unleased items for ``owner``.

    ``running`` are items this owner is still running: when the machine is so busy that their heartbeat came
    late and their lease lapsed, they must not be claimed, and so run twice at once, by their own runner.
    """
    now = utcnow()
    with db.write() as session:
        query = (
            select(WorkItem)
            .where(
                WorkItem.due_at <= now,
                or_(WorkItem.lease_until.is_(None), WorkItem.lease_until < now),
            )
            .order_by(WorkItem.due_at)
            .limit(limit)
        )
        if kinds is not None:
            query = query.where(WorkItem.kind.in_(kinds))
        if running:
            query = query.where(WorkItem.id.not_in(list(running)))
        if db.is_postgres:
            query = query.with_for_update(skip_locked=True)
        items = session.scalars(query).all()
        jobs = []
        for item in items:
            item.lease_owner = owner
            item.lease_until = now + lease
            item.attempts += 1
            jobs.append(
                Job(
                    item.id,
                    item.kind,
                    item.subject,
                    item.due_at,
                    item.generation,
                    item.attempts,
                    dict(item.payload or {}),
                )
            )
        return jobs


def extend_leases(db: Database, owner: str, ids: list[int], lease: timedelta) -> None:
    if not ids:
        return
    with db.write() as session:
        session.execute(
            update(WorkItem)
            .where(WorkItem.id.in_(ids), WorkItem.lease_owner == owner)
            .values(lease_until=utcnow() + lease)
        )


def finish(db: Database, owner: str, job: Job, outcome: Outcome | BaseException) -> None:
    """Record what a handler did with a claimed item."""
    with db.write() as session:
        query = select(WorkItem).where(WorkItem.id == job.id)
        if db.is_postgres:
            query = query.with_for_update()
        item = session.scalar(query)
        if item is None or item.lease_owner != owner:
            return  # our lease lapsed and someone else owns the item now: theirs is the word that counts
        item.lease_owner = None
        item.lease_until = None
        if isinstance(outcome, BaseException):
            item.last_error = "".join(traceback.format_exception_only(outcome)).strip()[:4000]
            item.due_at = utcnow() + backoff_delay(item.attempts)
            return
        item.attempts = 0
        item.last_error = None
        if item.generation != job.generation:
            return  # rescheduled while it ran: keep the new due time
        if isinstance(outcome, Done):
            session.delete(item)
        elif isinstance(outcome, Again):
            item.due_at = outcome.at
