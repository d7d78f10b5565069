"""idempotency records remember what the first response gave access to

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("idempotency_records") as batch:
        batch.add_column(sa.Column("audit_action", sa.String(length=60), nullable=True))
        batch.add_column(sa.Column("resource_type", sa.String(length=30), nullable=True))
        batch.add_column(sa.Column("resource_id", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("referral_id", sa.Uuid(), nullable=True))
        batch.add_column(sa.Column("subject_ids", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("idempotency_records") as batch:
        for column in (
            "subject_ids",
            "referral_id",
            "resource_id",
            "resource_type",
            "audit_action",
        ):
            batch.drop_column(column)
