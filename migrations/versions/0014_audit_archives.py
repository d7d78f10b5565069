"""audit_archives: the periods of the trail exported to signed files and dropped, append-only

Revision ID: 0014
Revises: 0013

`casehub audit archive` exports a sealed period (migration 0013's partitions) to a file,
verifies it from the hash the chain had before it, signs it with the checkpoint key, records it
here and drops the period's partitions; verification then begins at the newest archive's head.
Rows are refused UPDATE and DELETE (and TRUNCATE on PostgreSQL) like every audit record.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import casehub.db

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TABLE = "audit_archives"


def upgrade() -> None:
    op.create_table(
        TABLE,
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("period", sa.String(length=16), nullable=False),
        sa.Column("seq_from", BigId, nullable=False),
        sa.Column("seq_to", BigId, nullable=False),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("head_hash", sa.String(length=64), nullable=False),
        sa.Column("events", sa.BigInteger(), nullable=False),
        sa.Column("occurred_from", casehub.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("occurred_to", casehub.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("file_name", sa.String(length=200), nullable=False),
        sa.Column("content_sha256", sa.String(length=64), nullable=False),
        sa.Column("archived_at", casehub.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("key_id", sa.String(length=64), nullable=False),
        sa.Column("signature", sa.String(length=128), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_archives")),
        sa.UniqueConstraint("period", name=op.f("uq_audit_archives_period")),
        sa.UniqueConstraint("seq_from", name=op.f("uq_audit_archives_seq_from")),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            f"CREATE TRIGGER {TABLE}_append_only BEFORE UPDATE OR DELETE ON {TABLE} "
            "FOR EACH ROW EXECUTE FUNCTION casehub_audit_append_only()"
        )
        op.execute(
            f"CREATE TRIGGER {TABLE}_no_truncate BEFORE TRUNCATE ON {TABLE} "
            "FOR EACH STATEMENT EXECUTE FUNCTION casehub_audit_append_only()"
        )
    else:
        for verb in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER {TABLE}_no_{verb.lower()} BEFORE {verb} ON {TABLE} "
                f"BEGIN SELECT RAISE(ABORT, 'audit records are append-only: {verb} on {TABLE} "
                "refused'); END"
            )


def downgrade() -> None:
    op.drop_table(TABLE)  # its triggers go with it
