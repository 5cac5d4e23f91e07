"""ORM tables. Every state change that matters is a row here before it is an action in the world."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from ecliptic.store.types import JSONDoc, UTCDateTime


class Base(DeclarativeBase):
    pass


class PlatformRow(Base):
    """One row per execution platform: its capacity, and the row that serialises booking on it."""

    __tablename__ = "platforms"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    cores: Mapped[int] = mapped_column(Integer)
    memory_gib: Mapped[int] = mapped_column(Integer)
    storage_gib: Mapped[int] = mapped_column(Integer)
    max_duration_s: Mapped[int] = mapped_column(BigInteger)
    longest_hold_s: Mapped[int] = mapped_column(BigInteger, default=0)
    """The longest booking ever made here: how far back a calendar read must look for overlapping holds."""


class OfferSetRow(Base):
    __tablename__ = "offer_sets"

    uuid: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str | None] = mapped_column(String(256))
    owner: Mapped[str | None] = mapped_column(String(256))
    created: Mapped[datetime] = mapped_column(UTCDateTime())
    result: Mapped[str] = mapped_column(String(3))
    request: Mapped[dict[str, Any]] = mapped_column(JSONDoc)
    messages: Mapped[list[dict[str, Any]]] = mapped_column(JSONDoc, default=list)

    sessions: Mapped[list[SessionRow]] = relationship(
        back_populates="offerset", order_by="SessionRow.position", lazy="selectin"
    )


class SessionRow(Base):
    __tablename__ = "sessions"
    __table_args__ = (Index("ix_sessions_phase", "phase"), Index("ix_sessions_offerset", "offerset_uuid"))

    uuid: Mapped[str] = mapped_column(String(36), primary_key=True)
    offerset_uuid: Mapped[str | None] = mapped_column(ForeignKey("offer_sets.uuid"))
    position: Mapped[int] = mapped_column(Integer, default=0)
    name: Mapped[str | None] = mapped_column(String(256))
    owner: Mapped[str | None] = mapped_column(String(256))
    platform: Mapped[str] = mapped_column(String(64))
    phase: Mapped[str] = mapped_column(String(16))
    created: Mapped[datetime] = mapped_column(UTCDateTime())
    modified: Mapped[datetime] = mapped_column(UTCDateTime())
    expires: Mapped[datetime | None] = mapped_column(UTCDateTime())
    prepare_start: Mapped[datetime] = mapped_column(UTCDateTime())
    available_start: Mapped[datetime] = mapped_column(UTCDateTime())
    available_end: Mapped[datetime] = mapped_column(UTCDateTime())
    release_end: Mapped[datetime] = mapped_column(UTCDateTime())
    cores: Mapped[int] = mapped_column(Integer)
    memory_gib: Mapped[int] = mapped_column(Integer)
    storage_gib: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str | None] = mapped_column(Text)
    exit_code: Mapped[int | None] = mapped_column(Integer)
    released: Mapped[bool] = mapped_column(default=False)
    messages: Mapped[list[dict[str, Any]]] = mapped_column(JSONDoc, default=list)

    offerset: Mapped[OfferSetRow | None] = relationship(back_populates="sessions")
    components: Mapped[list[ComponentRow]] = relationship(
        back_populates="session", order_by="ComponentRow.position", lazy="selectin"
    )


class ComponentRow(Base):
    """One executable, compute, storage or data component of a session, with its own phase."""

    __tablename__ = "components"
    __table_args__ = (
        Index("ix_components_session", "session_uuid"),
        Index("ix_components_staging_source", "staging_source"),
    )

    uuid: Mapped[str] = mapped_column(String(36), primary_key=True)
    session_uuid: Mapped[str] = mapped_column(ForeignKey("sessions.uuid"))
    position: Mapped[int] = mapped_column(Integer)
    role: Mapped[str] = mapped_column(String(16))
    name: Mapped[str | None] = mapped_column(String(256))
    kind: Mapped[str] = mapped_column(String(256))
    phase: Mapped[str] = mapped_column(String(16))
    spec: Mapped[dict[str, Any]] = mapped_column(JSONDoc)
    state: Mapped[dict[str, Any]] = mapped_column(JSONDoc, default=dict)
    staging_source: Mapped[str | None] = mapped_column(String(256), default=None)
    """For data: the source its session was booked to stage it from, so booked transfers can be counted."""
    staging_bytes: Mapped[int | None] = mapped_column(BigInteger, default=None)
    """For data: its size when known, so a transfer sharing the source counts by how much it moves."""

    session: Mapped[SessionRow] = relationship(back_populates="components")


class TransitionRow(Base):
    """The history of every phase change of a session or one of its components, with its reason."""

    __tablename__ = "transitions"
    __table_args__ = (Index("ix_transitions_session", "session_uuid"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    session_uuid: Mapped[str] = mapped_column(String(36))
    component: Mapped[str | None] = mapped_column(String(16))
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    from_phase: Mapped[str | None] = mapped_column(String(16))
    to_phase: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)


class BookingRow(Base):
    """The capacity calendar: one row per session that holds capacity on a platform.

    Times are epoch seconds, not datetimes: the planner sweeps many of these per offer set, and integers are
    the cheapest thing both databases can compare and return. An OFFERED hold carries ``expires_s``; an
    accepted or active one has none. The row is deleted when the session stops holding capacity.
    """

    __tablename__ = "bookings"
    __table_args__ = (
        # Covering: a calendar read is answered from the index alone (PostgreSQL index-only scan, SQLite
        # covering index) without visiting rows scattered over the table.
        Index(
            "ix_bookings_calendar",
            "platform",
            "start_s",
            "end_s",
            "expires_s",
            "cores",
            "memory_gib",
            "storage_gib",
        ),
    )

    session_uuid: Mapped[str] = mapped_column(ForeignKey("sessions.uuid"), primary_key=True)
    platform: Mapped[str] = mapped_column(String(64))
    start_s: Mapped[int] = mapped_column(BigInteger)
    end_s: Mapped[int] = mapped_column(BigInteger)
    cores: Mapped[int] = mapped_column(Integer)
    memory_gib: Mapped[int] = mapped_column(Integer)
    storage_gib: Mapped[int] = mapped_column(Integer)
    expires_s: Mapped[int | None] = mapped_column(BigInteger)


class WorkItem(Base):
    """Durable due work for the engine: one row per (kind, subject), claimed with a lease."""

    __tablename__ = "work_items"
    __table_args__ = (
        UniqueConstraint("kind", "subject", name="uq_work_items_kind_subject"),
        Index("ix_work_items_due", "due_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(String(128))
    due_at: Mapped[datetime] = mapped_column(UTCDateTime())
    generation: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    payload: Mapped[dict[str, Any]] = mapped_column(JSONDoc, default=dict)
    last_error: Mapped[str | None] = mapped_column(Text)


# -- scheduler ----------------------------------------------------------------------------------------------

_RunId = BigInteger().with_variant(Integer, "sqlite")


class NamespaceRow(Base):
    """A namespace of schedules, with where it came from (host, user, file, author)."""

    __tablename__ = "namespaces"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    ephemeral: Mapped[bool] = mapped_column(default=False)
    origin: Mapped[dict[str, Any]] = mapped_column(JSONDoc, default=dict)
    created: Mapped[datetime] = mapped_column(UTCDateTime())


class ScheduleRow(Base):
    """A schedule: its spec (JSON, never pickle), its next fire time, and which scheduler instance owns it.

    ``attention_at`` is the earliest moment the schedule needs an owner (its next fire, or a run waiting to
    start): instances claim unowned schedules by it. ``changed_at`` tells the owner to reload.
    """

    __tablename__ = "schedules"
    __table_args__ = (
        UniqueConstraint("namespace", "name", name="uq_schedules_namespace_name"),
        Index("ix_schedules_attention", "attention_at"),
        Index("ix_schedules_owner_changed", "owner", "changed_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    namespace: Mapped[str] = mapped_column(ForeignKey("namespaces.name"))
    name: Mapped[str] = mapped_column(String(128))
    spec: Mapped[dict[str, Any]] = mapped_column(JSONDoc)
    paused: Mapped[bool] = mapped_column(default=False)
    deleted: Mapped[bool] = mapped_column(default=False)
    next_fire_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    attention_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    fires: Mapped[int] = mapped_column(Integer, default=0)
    version: Mapped[int] = mapped_column(Integer, default=1)
    created: Mapped[datetime] = mapped_column(UTCDateTime())
    updated: Mapped[datetime] = mapped_column(UTCDateTime())
    changed_at: Mapped[datetime] = mapped_column(UTCDateTime())
    owner: Mapped[str | None] = mapped_column(String(128))
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_outcome: Mapped[str | None] = mapped_column(String(16))
    origin: Mapped[dict[str, Any]] = mapped_column(JSONDoc, default=dict)


class RunRow(Base):
    """One run of a schedule: identified by (schedule, scheduled time, attempt), so nothing fires twice."""

    __tablename__ = "runs"
    __table_args__ = (
        UniqueConstraint("schedule_id", "scheduled_at", "attempt", name="uq_runs_schedule_time_attempt"),
        Index("ix_runs_schedule", "schedule_id", "id"),
        Index("ix_runs_open", "state", "due_at"),
        Index("ix_runs_changed", "changed_at"),
    )

    id: Mapped[int] = mapped_column(_RunId, primary_key=True, autoincrement=True)
    schedule_id: Mapped[str] = mapped_column(ForeignKey("schedules.id", ondelete="CASCADE"))
    scheduled_at: Mapped[datetime] = mapped_column(UTCDateTime())
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    due_at: Mapped[datetime] = mapped_column(UTCDateTime())
    cause: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16))
    owner: Mapped[str | None] = mapped_column(String(128))
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    exit_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    stdout_tail: Mapped[str | None] = mapped_column(Text)
    stderr_tail: Mapped[str | None] = mapped_column(Text)
    pid: Mapped[int | None] = mapped_column(Integer)
    process: Mapped[str | None] = mapped_column(String(64))
    changed_at: Mapped[datetime] = mapped_column(UTCDateTime())


class SchedulerInstanceRow(Base):
    """A running scheduler process, kept alive by its heartbeat; its schedules' leases lapse when it stops."""

    __tablename__ = "scheduler_instances"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    host: Mapped[str] = mapped_column(String(256))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime())


class AuditRow(Base):
    """Who changed which schedule, when, and how."""

    __tablename__ = "schedule_audit"
    __table_args__ = (Index("ix_schedule_audit_namespace", "namespace", "id"),)

    id: Mapped[int] = mapped_column(_RunId, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    actor: Mapped[str] = mapped_column(String(256))
    action: Mapped[str] = mapped_column(String(32))
    namespace: Mapped[str] = mapped_column(String(128))
    schedule: Mapped[str | None] = mapped_column(String(128))
    schedule_id: Mapped[str | None] = mapped_column(String(36))
    detail: Mapped[dict[str, Any]] = mapped_column(JSONDoc, default=dict)


# -- staging ------------------------------------------------------------------------------------------------


class TransferRow(Base):
    """One finished data transfer: what transfer-time estimates learn from.

    No foreign keys to sessions or components: the history is worth keeping after the sessions are gone.
    """

    __tablename__ = "transfers"
    __table_args__ = (
        # The estimator reads the newest transfers of one (source, site) pair, newest first.
        Index("ix_transfers_source_site_finished", "source", "site", "finished_at"),
    )

    id: Mapped[int] = mapped_column(_RunId, primary_key=True, autoincrement=True)
    source: Mapped[str] = mapped_column(String(256))
    """The replica's estimate key (``rse:NAME``, ``http:host:port``, …)."""
    site: Mapped[str] = mapped_column(String(128))
    """The site of the platform the data was staged to."""
    bytes: Mapped[int] = mapped_column(BigInteger)
    seconds: Mapped[float] = mapped_column(Float)
    finished_at: Mapped[datetime] = mapped_column(UTCDateTime())
    ok: Mapped[bool] = mapped_column(default=True)
    in_flight: Mapped[float] = mapped_column(Float, default=0.0)
    """The transfers from the source it shared with, in whole-transfer equivalents, when it started."""
    """Other transfers from the same source running at the same time, as far as the recorder knew: they shared
    the source's bandwidth, so this transfer's own rate understates what the source can do."""
    session_uuid: Mapped[str | None] = mapped_column(String(36))
    component_uuid: Mapped[str | None] = mapped_column(String(36))
