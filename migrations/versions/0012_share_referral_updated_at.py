"""shares carry their referral's updated_at, kept equal by a trigger, for `updated_since` lists

Revision ID: 0012
Revises: 0011

`GET /v1/referrals?updated_since=` is a page, in (created_at, id) order, of the referrals changed
since a moment. No index gives both a range of updated_at and created_at order, so each stream
now starts from the range of what changed: the referrals an agency leads from
ix_referrals_lead_agency_updated_at (lead_agency, updated_at), and those shared with it from
ix_shares_open_agency_updated (agency_code, referral_updated_at) over its open shares, each
sorted by created_at afterwards. Both cost what changed for the agency, not what it holds (the
created-order walk they replace read 646,547 rows to find one page for a lead of 270,000).
The global ix_referrals_updated_at served only this filter and goes.

A share's copy of updated_at is kept by the database, on both dialects: an update of a
referral's updated_at rewrites its shares' copies in the same statement's transaction, whoever
makes it (this release, the previous one while this one rolls out, an operator's UPDATE). A
share is written with the copy by this release; on PostgreSQL a share the previous release
writes without it is filled from its referral, as 0010 does for referral_created_at.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import casehub.db

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

SHARES_INDEX = "ix_shares_open_agency_updated"
LEAD_INDEX = "ix_referrals_lead_agency_updated_at"
OLD_INDEX = "ix_referrals_updated_at"
BACKFILL = (
    "UPDATE shares SET referral_updated_at ="
    " (SELECT referrals.updated_at FROM referrals WHERE referrals.id = shares.referral_id)"
)
COPY_TRIGGER = "referrals_updated_at_to_shares"
FILL_TRIGGER = "shares_referral_updated_at"

PG_FUNCTIONS = (
    """
    CREATE FUNCTION casehub_referrals_updated_at_to_shares() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        UPDATE shares SET referral_updated_at = NEW.updated_at
        WHERE referral_id = NEW.id AND referral_updated_at IS DISTINCT FROM NEW.updated_at;
        RETURN NULL;
    END
    $$
    """,
    f"""
    CREATE TRIGGER {COPY_TRIGGER} AFTER UPDATE OF updated_at ON referrals
    FOR EACH ROW WHEN (NEW.updated_at IS DISTINCT FROM OLD.updated_at)
    EXECUTE FUNCTION casehub_referrals_updated_at_to_shares()
    """,
    """
    CREATE FUNCTION casehub_shares_referral_updated_at() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        SELECT updated_at INTO NEW.referral_updated_at FROM referrals WHERE id = NEW.referral_id;
        RETURN NEW;
    END
    $$
    """,
    f"""
    CREATE TRIGGER {FILL_TRIGGER} BEFORE INSERT ON shares
    FOR EACH ROW WHEN (NEW.referral_updated_at IS NULL)
    EXECUTE FUNCTION casehub_shares_referral_updated_at()
    """,
)
SQLITE_TRIGGER = """
    CREATE TRIGGER referrals_updated_at_to_shares AFTER UPDATE OF updated_at ON referrals
    FOR EACH ROW WHEN NEW.updated_at IS NOT OLD.updated_at
    BEGIN
        UPDATE shares SET referral_updated_at = NEW.updated_at WHERE referral_id = NEW.id;
    END
"""


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    column = sa.Column("referral_updated_at", casehub.db.UTCDateTime(timezone=True))
    if dialect == "postgresql":
        op.add_column("shares", column)
        op.execute(BACKFILL)
        op.alter_column("shares", "referral_updated_at", nullable=False)
        for statement in PG_FUNCTIONS:
            op.execute(statement)
    else:
        with op.batch_alter_table("shares") as batch:
            batch.add_column(column)
        op.execute(BACKFILL)
        with op.batch_alter_table("shares") as batch:
            batch.alter_column(
                "referral_updated_at",
                existing_type=casehub.db.UTCDateTime(timezone=True),
                nullable=False,
            )
        op.execute(SQLITE_TRIGGER)
    where = {f"{dialect}_where": sa.text("ended_at IS NULL")}
    op.create_index(
        SHARES_INDEX,
        "shares",
        ["agency_code", "referral_updated_at"],
        unique=False,
        # On PostgreSQL the list's columns ride in the index: the range is read index-only.
        postgresql_include=["referral_created_at", "referral_id", "revoked_at", "expires_at"],
        **where,
    )
    op.create_index(
        LEAD_INDEX,
        "referrals",
        ["lead_agency", "updated_at"],
        unique=False,
        postgresql_include=["created_at", "id"],
    )
    op.drop_index(OLD_INDEX, table_name="referrals")


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    op.create_index(OLD_INDEX, "referrals", ["updated_at"], unique=False)
    op.drop_index(LEAD_INDEX, table_name="referrals")
    op.drop_index(SHARES_INDEX, table_name="shares")
    op.execute(
        f"DROP TRIGGER IF EXISTS {COPY_TRIGGER}"
        + (" ON referrals" if dialect == "postgresql" else "")
    )
    if dialect == "postgresql":
        op.execute(f"DROP TRIGGER IF EXISTS {FILL_TRIGGER} ON shares")
        op.execute("DROP FUNCTION IF EXISTS casehub_shares_referral_updated_at()")
        op.execute("DROP FUNCTION IF EXISTS casehub_referrals_updated_at_to_shares()")
    with op.batch_alter_table("shares") as batch:
        batch.drop_column("referral_updated_at")
