"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-23 19:04:22.549138
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import ecliptic.store.types

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "offer_sets",
        sa.Column("uuid", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=256), nullable=True),
        sa.Column("owner", sa.String(length=256), nullable=True),
        sa.Column("created", ecliptic.store.types.UTCDateTime(), nullable=False),
        sa.Column("result", sa.String(length=3), nullable=False),
        sa.Column(
            "request",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column(
            "messages",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("uuid"),
    )
    op.create_table(
        "platforms",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("cores", sa.Integer(), nullable=False),
        sa.Column("memory_gib", sa.Integer(), nullable=False),
        sa.Column("storage_gib", sa.Integer(), nullable=False),
        sa.Column("max_duration_s", sa.BigInteger(), nullable=False),
        sa.Column("longest_hold_s", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "transitions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("session_uuid", sa.String(length=36), nullable=False),
        sa.Column("component", sa.String(length=16), nullable=True),
        sa.Column("at", ecliptic.store.types.UTCDateTime(), nullable=False),
        sa.Column("from_phase", sa.String(length=16), nullable=True),
        sa.Column("to_phase", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("transitions", schema=None) as batch_op:
        batch_op.create_index("ix_transitions_session", ["session_uuid"], unique=False)

    op.create_table(
        "work_items",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("subject", sa.String(length=128), nullable=False),
        sa.Column("due_at", ecliptic.store.types.UTCDateTime(), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("lease_owner", sa.String(length=128), nullable=True),
        sa.Column("lease_until", ecliptic.store.types.UTCDateTime(), nullable=True),
        sa.Column(
            "payload",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("kind", "subject", name="uq_work_items_kind_subject"),
    )
    with op.batch_alter_table("work_items", schema=None) as batch_op:
        batch_op.create_index("ix_work_items_due", ["due_at"], unique=False)

    op.create_table(
        "sessions",
        sa.Column("uuid", sa.String(length=36), nullable=False),
        sa.Column("offerset_uuid", sa.String(length=36), nullable=True),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=256), nullable=True),
        sa.Column("owner", sa.String(length=256), nullable=True),
        sa.Column("platform", sa.String(length=64), nullable=False),
        sa.Column("phase", sa.String(length=16), nullable=False),
        sa.Column("created", ecliptic.store.types.UTCDateTime(), nullable=False),
        sa.Column("modified", ecliptic.store.types.UTCDateTime(), nullable=False),
        sa.Column("expires", ecliptic.store.types.UTCDateTime(), nullable=True),
        sa.Column("prepare_start", ecliptic.store.types.UTCDateTime(), nullable=False),
        sa.Column("available_start", ecliptic.store.types.UTCDateTime(), nullable=False),
        sa.Column("available_end", ecliptic.store.types.UTCDateTime(), nullable=False),
        sa.Column("release_end", ecliptic.store.types.UTCDateTime(), nullable=False),
        sa.Column("cores", sa.Integer(), nullable=False),
        sa.Column("memory_gib", sa.Integer(), nullable=False),
        sa.Column("storage_gib", sa.Integer(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("released", sa.Boolean(), nullable=False),
        sa.Column(
            "messages",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["offerset_uuid"],
            ["offer_sets.uuid"],
        ),
        sa.PrimaryKeyConstraint("uuid"),
    )
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.create_index("ix_sessions_offerset", ["offerset_uuid"], unique=False)
        batch_op.create_index("ix_sessions_phase", ["phase"], unique=False)

    op.create_table(
        "bookings",
        sa.Column("session_uuid", sa.String(length=36), nullable=False),
        sa.Column("platform", sa.String(length=64), nullable=False),
        sa.Column("start_s", sa.BigInteger(), nullable=False),
        sa.Column("end_s", sa.BigInteger(), nullable=False),
        sa.Column("cores", sa.Integer(), nullable=False),
        sa.Column("memory_gib", sa.Integer(), nullable=False),
        sa.Column("storage_gib", sa.Integer(), nullable=False),
        sa.Column("expires_s", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(
            ["session_uuid"],
            ["sessions.uuid"],
        ),
        sa.PrimaryKeyConstraint("session_uuid"),
    )
    with op.batch_alter_table("bookings", schema=None) as batch_op:
        batch_op.create_index(
            "ix_bookings_calendar",
            ["platform", "start_s", "end_s", "expires_s", "cores", "memory_gib", "storage_gib"],
            unique=False,
        )

    op.create_table(
        "components",
        sa.Column("uuid", sa.String(length=36), nullable=False),
        sa.Column("session_uuid", sa.String(length=36), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=256), nullable=True),
        sa.Column("kind", sa.String(length=256), nullable=False),
        sa.Column("phase", sa.String(length=16), nullable=False),
        sa.Column(
            "spec",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column(
            "state",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["session_uuid"],
            ["sessions.uuid"],
        ),
        sa.PrimaryKeyConstraint("uuid"),
    )
    with op.batch_alter_table("components", schema=None) as batch_op:
        batch_op.create_index("ix_components_session", ["session_uuid"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("components", schema=None) as batch_op:
        batch_op.drop_index("ix_components_session")

    op.drop_table("components")
    with op.batch_alter_table("bookings", schema=None) as batch_op:
        batch_op.drop_index("ix_bookings_calendar")

    op.drop_table("bookings")
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.drop_index("ix_sessions_phase")
        batch_op.drop_index("ix_sessions_offerset")

    op.drop_table("sessions")
    with op.batch_alter_table("work_items", schema=None) as batch_op:
        batch_op.drop_index("ix_work_items_due")

    op.drop_table("work_items")
    with op.batch_alter_table("transitions", schema=None) as batch_op:
        batch_op.drop_index("ix_transitions_session")

    op.drop_table("transitions")
    op.drop_table("platforms")
    op.drop_table("offer_sets")
