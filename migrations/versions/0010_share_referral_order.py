"""shares carry their referral's created_at, indexed for an agency's open shares in list order

Revision ID: 0010
Revises: 0009

A list for an agency that receives shares read all of its active shares, joined their referrals
and sorted them for every page (hundreds of thousands of rows for children's services in a
large partnership). A referral's created_at never changes, so each share now keeps a copy, and
ix_shares_open_agency_order hands out an agency's open shares in the list's order
(created_at, id): a page reads about one page of index rows, however many shares there are.

The backfill is one UPDATE from the referrals. The previous release writes shares without the
column while this one rolls out (and after a rollback): on PostgreSQL a trigger fills it from
the referral; SQLite serves one process, upgraded with its release. A later release drops the
trigger.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import casehub.db

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

INDEX = "ix_shares_open_agency_order"
BACKFILL = (
    "UPDATE shares SET referral_created_at ="
    " (SELECT referrals.created_at FROM referrals WHERE referrals.id = shares.referral_id)"
)


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    column = sa.Column("referral_created_at", casehub.db.UTCDateTime(timezone=True))
    if dialect == "postgresql":
        op.add_column("shares", column)
        op.execute(BACKFILL)
        op.alter_column("shares", "referral_created_at", nullable=False)
        op.execute(
            """
            CREATE FUNCTION casehub_shares_referral_created_at() RETURNS trigger
            LANGUAGE plpgsql AS $$
            BEGIN
                SELECT created_at INTO NEW.referral_created_at
                FROM referrals WHERE id = NEW.referral_id;
                RETURN NEW;
            END
            $$
            """
        )
        op.execute(
            "CREATE TRIGGER shares_referral_created_at BEFORE INSERT ON shares "
            "FOR EACH ROW WHEN (NEW.referral_created_at IS NULL) "
            "EXECUTE FUNCTION casehub_shares_referral_created_at()"
        )
    else:
        with op.batch_alter_table("shares") as batch:
            batch.add_column(column)
        op.execute(BACKFILL)
        with op.batch_alter_table("shares") as batch:
            batch.alter_column(
                "referral_created_at",
                existing_type=casehub.db.UTCDateTime(timezone=True),
                nullable=False,
            )
    op.create_index(
        INDEX,
        "shares",
        ["agency_code", "referral_created_at", "referral_id"],
        unique=False,
        **{f"{dialect}_where": sa.text("ended_at IS NULL")},
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS shares_referral_created_at ON shares")
        op.execute("DROP FUNCTION IF EXISTS casehub_shares_referral_created_at()")
    op.drop_index(INDEX, table_name="shares")
    with op.batch_alter_table("shares") as batch:
        batch.drop_column("referral_created_at")
