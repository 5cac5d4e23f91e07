"""components.staging_source and staging_bytes; transfers.in_flight fractional

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 17:20:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("components", schema=None) as batch_op:
        batch_op.add_column(sa.Column("staging_source", sa.String(length=256), nullable=True))
        batch_op.add_column(sa.Column("staging_bytes", sa.BigInteger(), nullable=True))
        batch_op.create_index("ix_components_staging_source", ["staging_source"], unique=False)
    with op.batch_alter_table("transfers", schema=None) as batch_op:
        batch_op.alter_column(
            "in_flight", existing_type=sa.Integer(), type_=sa.Float(), existing_nullable=False
        )


def downgrade() -> None:
    with op.batch_alter_table("transfers", schema=None) as batch_op:
        batch_op.alter_column(
            "in_flight",
            existing_type=sa.Float(),
            type_=sa.Integer(),
            existing_nullable=False,
            postgresql_using="round(in_flight)::integer",
        )
    with op.batch_alter_table("components", schema=None) as batch_op:
        batch_op.drop_index("ix_components_staging_source")
        batch_op.drop_column("staging_bytes")
        batch_op.drop_column("staging_source")
