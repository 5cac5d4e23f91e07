"""scheduler

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 08:25:06.770544
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import ecliptic.store.types

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:

    op.create_table(
        "namespaces",
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("ephemeral", sa.Boolean(), nullable=False),
        sa.Column(
            "origin",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("created", ecliptic.store.types.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "schedule_audit",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("at", ecliptic.store.types.UTCDateTime(), nullable=False),
        sa.Column("actor", sa.String(length=256), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("namespace", sa.String(length=128), nullable=False),
        sa.Column("schedule", sa.String(length=128), nullable=True),
        sa.Column("schedule_id", sa.String(length=36), nullable=True),
        sa.Column(
            "detail",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("schedule_audit", schema=None) as batch_op:
        batch_op.create_index("ix_schedule_audit_namespace", ["namespace", "id"], unique=False)

    op.create_table(
        "scheduler_instances",
        sa.Column("id", sa.String(length=128), nullable=False),
        sa.Column("host", sa.String(length=256), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", ecliptic.store.types.UTCDateTime(), nullable=False),
        sa.Column("heartbeat_at", ecliptic.store.types.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "schedules",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("namespace", sa.String(length=128), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column(
            "spec",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("paused", sa.Boolean(), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("next_fire_at", ecliptic.store.types.UTCDateTime(), nullable=True),
        sa.Column("attention_at", ecliptic.store.types.UTCDateTime(), nullable=True),
        sa.Column("fires", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created", ecliptic.store.types.UTCDateTime(), nullable=False),
        sa.Column("updated", ecliptic.store.types.UTCDateTime(), nullable=False),
        sa.Column("changed_at", ecliptic.store.types.UTCDateTime(), nullable=False),
        sa.Column("owner", sa.String(length=128), nullable=True),
        sa.Column("lease_until", ecliptic.store.types.UTCDateTime(), nullable=True),
        sa.Column("last_outcome", sa.String(length=16), nullable=True),
        sa.Column(
            "origin",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["namespace"],
            ["namespaces.name"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("namespace", "name", name="uq_schedules_namespace_name"),
    )
    with op.batch_alter_table("schedules", schema=None) as batch_op:
        batch_op.create_index("ix_schedules_attention", ["attention_at"], unique=False)
        batch_op.create_index("ix_schedules_owner_changed", ["owner", "changed_at"], unique=False)

    op.create_table(
        "runs",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("schedule_id", sa.String(length=36), nullable=False),
        sa.Column("scheduled_at", ecliptic.store.types.UTCDateTime(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("due_at", ecliptic.store.types.UTCDateTime(), nullable=False),
        sa.Column("cause", sa.String(length=16), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("owner", sa.String(length=128), nullable=True),
        sa.Column("started_at", ecliptic.store.types.UTCDateTime(), nullable=True),
        sa.Column("ended_at", ecliptic.store.types.UTCDateTime(), nullable=True),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("stdout_tail", sa.Text(), nullable=True),
        sa.Column("stderr_tail", sa.Text(), nullable=True),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("process", sa.String(length=64), nullable=True),
        sa.Column("changed_at", ecliptic.store.types.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["schedule_id"], ["schedules.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("schedule_id", "scheduled_at", "attempt", name="uq_runs_schedule_time_attempt"),
    )
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.create_index("ix_runs_changed", ["changed_at"], unique=False)
        batch_op.create_index("ix_runs_open", ["state", "due_at"], unique=False)
        batch_op.create_index("ix_runs_schedule", ["schedule_id", "id"], unique=False)


def downgrade() -> None:

    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_index("ix_runs_schedule")
        batch_op.drop_index("ix_runs_open")
        batch_op.drop_index("ix_runs_changed")

    op.drop_table("runs")
    with op.batch_alter_table("schedules", schema=None) as batch_op:
        batch_op.drop_index("ix_schedules_owner_changed")
        batch_op.drop_index("ix_schedules_attention")

    op.drop_table("schedules")
    op.drop_table("scheduler_instances")
    with op.batch_alter_table("schedule_audit", schema=None) as batch_op:
        batch_op.drop_index("ix_schedule_audit_namespace")

    op.drop_table("schedule_audit")
    op.drop_table("namespaces")
