"""audit chain: pending queue, hash chain, subject index, signed checkpoints, append-only triggers

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import casehub.db

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

# Every audit table refuses UPDATE and DELETE (and TRUNCATE on PostgreSQL). audit_pending is
# the sequencer's work queue, not a record, so the sequencer may delete from it.
APPEND_ONLY = ("audit_events", "audit_chain", "audit_event_subjects", "audit_checkpoints")
NEW_EVENT_INDEXES = {
    "ix_audit_events_actor_client_id": ["actor_client_id"],
    "ix_audit_events_actor_user_id": ["actor_user_id"],
    "ix_audit_events_action": ["action"],
}


def upgrade() -> None:
    op.create_table(
        "audit_pending",
        sa.Column("pos", BigId, autoincrement=False, nullable=False),
        sa.PrimaryKeyConstraint("pos", name=op.f("pk_audit_pending")),
    )
    op.create_table(
        "audit_chain",
        sa.Column("seq", BigId, autoincrement=False, nullable=False),
        sa.Column("event_pos", BigId, nullable=False),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("sequenced_at", casehub.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["event_pos"], ["audit_events.pos"], name=op.f("fk_audit_chain_event_pos_audit_events")
        ),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_audit_chain")),
        sa.UniqueConstraint("event_pos", name=op.f("uq_audit_chain_event_pos")),
    )
    op.create_table(
        "audit_event_subjects",
        sa.Column("subject_id", sa.String(length=64), nullable=False),
        sa.Column("seq", BigId, nullable=False),
        sa.ForeignKeyConstraint(
            ["seq"], ["audit_chain.seq"], name=op.f("fk_audit_event_subjects_seq_audit_chain")
        ),
        sa.PrimaryKeyConstraint("subject_id", "seq", name=op.f("pk_audit_event_subjects")),
    )
    op.create_table(
        "audit_checkpoints",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("seq", BigId, nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("signed_at", casehub.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("key_id", sa.String(length=64), nullable=False),
        sa.Column("signature", sa.String(length=128), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_checkpoints")),
    )
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        for name, columns in NEW_EVENT_INDEXES.items():
            batch_op.create_index(name, columns, unique=False)

    if op.get_bind().dialect.name == "postgresql":
        _postgresql_triggers()
    else:
        _sqlite_triggers()
    # Events written before this revision join the queue, so the chain covers them too.
    op.execute("INSERT INTO audit_pending (pos) SELECT pos FROM audit_events")


def _postgresql_triggers() -> None:
    op.execute(
        """
        CREATE FUNCTION casehub_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'audit records are append-only: % on % refused', TG_OP, TG_TABLE_NAME
                USING ERRCODE = 'insufficient_privilege';
        END $$
        """
    )
    op.execute(
        """
        CREATE FUNCTION casehub_audit_enqueue() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO audit_pending (pos) VALUES (NEW.pos);
            RETURN NULL;
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER audit_events_enqueue AFTER INSERT ON audit_events "
        "FOR EACH ROW EXECUTE FUNCTION casehub_audit_enqueue()"
    )
    for table in APPEND_ONLY:
        op.execute(
            f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION casehub_audit_append_only()"
        )
        op.execute(
            f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION casehub_audit_append_only()"
        )


def _sqlite_triggers() -> None:
    op.execute(
        "CREATE TRIGGER audit_events_enqueue AFTER INSERT ON audit_events "
        "BEGIN INSERT INTO audit_pending (pos) VALUES (NEW.pos); END"
    )
    for table in APPEND_ONLY:
        for verb in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER {table}_no_{verb.lower()} BEFORE {verb} ON {table} "
                f"BEGIN SELECT RAISE(ABORT, 'audit records are append-only: {verb} on {table} "
                "refused'); END"
            )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_events_enqueue ON audit_events")
        for table in APPEND_ONLY:
            op.execute(f"DROP TRIGGER IF EXISTS {table}_append_only ON {table}")
            op.execute(f"DROP TRIGGER IF EXISTS {table}_no_truncate ON {table}")
        op.execute("DROP FUNCTION IF EXISTS casehub_audit_enqueue()")
        op.execute("DROP FUNCTION IF EXISTS casehub_audit_append_only()")
    else:
        op.execute("DROP TRIGGER IF EXISTS audit_events_enqueue")
        for table in APPEND_ONLY:
            op.execute(f"DROP TRIGGER IF EXISTS {table}_no_update")
            op.execute(f"DROP TRIGGER IF EXISTS {table}_no_delete")
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        for name in NEW_EVENT_INDEXES:
            batch_op.drop_index(name)
    op.drop_table("audit_checkpoints")
    op.drop_table("audit_event_subjects")
    op.drop_table("audit_chain")
    op.drop_table("audit_pending")
