"""statistics: the partnership's referral counts, computed ahead of the questions

Revision ID: 0018
Revises: 0017

CONTRACT §12. `statistics_cells` holds counts of referrals (never a referral) per calendar month
of creation and per pair of the other dimensions, as `casehub statistics refresh` computed them
from the live tables; `statistics_refreshes` says when (the answers' `as_of`). Nothing on the
path of a create, a change or an erasure writes either table: creates never queue on a counter.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import casehub.db

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

UTC = casehub.db.UTCDateTime(timezone=True)


def upgrade() -> None:
    # Dimensions a cell's kind does not name hold '' (not NULL), so that the whole cell is
    # its key: a refresh cannot write one cell twice, and the key serves (kind, month) lookups.
    op.create_table(
        "statistics_cells",
        sa.Column("kind", sa.String(length=40), nullable=False),
        sa.Column("month", sa.String(length=7), nullable=False),
        sa.Column("category", sa.String(length=40), nullable=False),
        sa.Column("indicator", sa.String(length=20), nullable=False),
        sa.Column("lead_agency", sa.String(length=40), nullable=False),
        sa.Column("risk_level", sa.String(length=10), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("referrals", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint(
            "kind",
            "month",
            "category",
            "indicator",
            "lead_agency",
            "risk_level",
            "status",
            name=op.f("pk_statistics_cells"),
        ),
    )
    op.create_table(
        "statistics_refreshes",
        sa.Column("refreshed_at", UTC, nullable=False),
        sa.Column("referrals", sa.Integer(), nullable=False),
        sa.Column("seconds", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("refreshed_at", name=op.f("pk_statistics_refreshes")),
    )


def downgrade() -> None:
    op.drop_table("statistics_refreshes")
    op.drop_table("statistics_cells")
