"""case scopes on a client a person registers wait for a second administrator's approval

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import casehub.db

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

COLUMNS = (
    "pending_scope",
    "created_by_client_id",
    "created_by_user_id",
    "approved_by_agency",
    "approved_by_client_id",
    "approved_by_user_id",
    "approved_at",
)


def upgrade() -> None:
    # Existing clients were registered before approval existed: nothing of theirs is pending,
    # and who registered them was not kept (null, as for the CLI).
    with op.batch_alter_table("clients") as batch:
        batch.add_column(sa.Column("pending_scope", sa.Text(), nullable=False, server_default=""))
        batch.add_column(sa.Column("created_by_client_id", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("created_by_user_id", sa.Uuid(), nullable=True))
        batch.add_column(sa.Column("approved_by_agency", sa.String(length=40), nullable=True))
        batch.add_column(sa.Column("approved_by_client_id", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("approved_by_user_id", sa.Uuid(), nullable=True))
        batch.add_column(
            sa.Column("approved_at", casehub.db.UTCDateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    # Downgrading forgets pending requests: their scopes were never granted, so nothing that
    # was refused becomes allowed.
    with op.batch_alter_table("clients") as batch:
        for column in reversed(COLUMNS):
            batch.drop_column(column)
