"""subject name keys tell whole words from deletions and carry the subject's created_at

Revision ID: 0008
Revises: 0007

Subject search looked up every key equal to a query word, so "Li" (which must match exactly)
also found every Lia, Ali and Eli by their one-deletion keys, and a page of "Smith" joined all
the Smiths before ordering them. Each key row now says whether it is a whole word, and carries
its subject's created_at, so that ix_subject_name_keys_key_order hands out a key's subjects in
page order. The primary key leads with subject_id, which makes its separate index redundant.

The keys are derived data: the table is emptied and every subject's keys are recomputed, in
batches of subjects, by the service's own functions (casehub.services.names); PostgreSQL loads
them with COPY and builds the keys and indexes afterwards (some minutes at a million
subjects, during which search and subject writes wait for the migration's lock). The previous
release reads and writes this table as it did: its rows take whole_word's default (a whole
word, which search still checks against the names, so at worst slower) and, on PostgreSQL, a
trigger fills subject_created_at from the subject. A later release drops the trigger.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime

import sqlalchemy as sa
from alembic import op

import casehub.db
from casehub.services import names

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

BATCH = 5000  # subjects per round trip: some 80,000 key rows

subjects = sa.table(
    "subjects",
    sa.column("id", sa.Uuid()),
    sa.column("given_name", sa.String()),
    sa.column("family_name", sa.String()),
    sa.column("aliases", sa.JSON()),
    sa.column("created_at", casehub.db.UTCDateTime(timezone=True)),
)
name_keys = sa.table(
    "subject_name_keys",
    sa.column("subject_id", sa.Uuid()),
    sa.column("key", sa.String()),
    sa.column("whole_word", sa.Boolean()),
    sa.column("subject_created_at", casehub.db.UTCDateTime(timezone=True)),
)
COLUMNS = ("subject_id", "key", "whole_word", "subject_created_at")
ORDER_COLUMNS = ["key", "subject_created_at", "subject_id", "whole_word"]


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _upgrade_postgresql()
    else:
        _upgrade_sqlite()
    op.create_index("ix_subject_name_keys_key_order", "subject_name_keys", ORDER_COLUMNS)


def _upgrade_postgresql() -> None:
    # The constraints are built after the load, as a restore would: checking the foreign key
    # and inserting into the primary key row by row would take most of the time.
    op.execute("TRUNCATE subject_name_keys")
    op.drop_index("ix_subject_name_keys_subject_id", table_name="subject_name_keys")
    op.drop_constraint("pk_subject_name_keys", "subject_name_keys", type_="primary")
    op.drop_constraint(
        "fk_subject_name_keys_subject_id_subjects", "subject_name_keys", type_="foreignkey"
    )
    op.add_column(
        "subject_name_keys",
        sa.Column("whole_word", sa.Boolean(), server_default=sa.true(), nullable=False),
    )
    op.add_column(
        "subject_name_keys",
        sa.Column("subject_created_at", casehub.db.UTCDateTime(timezone=True), nullable=False),
    )
    raw = op.get_bind().connection.dbapi_connection
    assert raw is not None
    copy_sql = f"COPY subject_name_keys ({', '.join(COLUMNS)}) FROM STDIN"
    for rows in _recomputed_keys():
        with raw.cursor() as cursor, cursor.copy(copy_sql) as copy:
            for row in rows:
                copy.write_row(row)
    op.execute("ANALYZE subject_name_keys")  # so the first searches are planned on its rows
    op.create_primary_key("pk_subject_name_keys", "subject_name_keys", ["subject_id", "key"])
    op.create_foreign_key(
        "fk_subject_name_keys_subject_id_subjects",
        "subject_name_keys",
        "subjects",
        ["subject_id"],
        ["id"],
        ondelete="CASCADE",
    )
    # The previous release writes key rows without the subject's created_at while this one
    # rolls out (and after a rollback): the row takes it from the subject.
    op.execute(
        """
        CREATE FUNCTION casehub_subject_name_keys_created_at() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            SELECT created_at INTO NEW.subject_created_at FROM subjects WHERE id = NEW.subject_id;
            RETURN NEW;
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER subject_name_keys_created_at BEFORE INSERT ON subject_name_keys "
        "FOR EACH ROW WHEN (NEW.subject_created_at IS NULL) "
        "EXECUTE FUNCTION casehub_subject_name_keys_created_at()"
    )


def _upgrade_sqlite() -> None:
    op.execute("DELETE FROM subject_name_keys")
    with op.batch_alter_table("subject_name_keys") as batch:  # rebuilt, empty
        batch.drop_index("ix_subject_name_keys_subject_id")
        batch.drop_constraint("pk_subject_name_keys", type_="primary")
        batch.add_column(
            sa.Column("whole_word", sa.Boolean(), server_default=sa.true(), nullable=False)
        )
        batch.add_column(
            sa.Column("subject_created_at", casehub.db.UTCDateTime(timezone=True), nullable=False)
        )
        batch.create_primary_key("pk_subject_name_keys", ["subject_id", "key"])
    bind = op.get_bind()
    for rows in _recomputed_keys():
        bind.execute(name_keys.insert(), [dict(zip(COLUMNS, row, strict=True)) for row in rows])


def _recomputed_keys() -> Iterator[list[tuple[uuid.UUID, str, bool, datetime]]]:
    """Every subject's key rows, BATCH subjects at a time, by the service's key functions."""
    bind = op.get_bind()
    after = None
    while True:
        stmt = (
            sa.select(
                subjects.c.id,
                subjects.c.given_name,
                subjects.c.family_name,
                subjects.c.aliases,
                subjects.c.created_at,
            )
            .order_by(subjects.c.id)
            .limit(BATCH)
        )
        if after is not None:
            stmt = stmt.where(subjects.c.id > after)
        batch = bind.execute(stmt).all()
        if not batch:
            return
        yield [
            (subject.id, key, whole_word, subject.created_at)
            for subject in batch
            for key, whole_word in names.subject_key_kinds(
                subject.given_name, subject.family_name, subject.aliases or []
            ).items()
        ]
        after = batch[-1].id


def downgrade() -> None:
    # The set of keys is unchanged, so the rows stay and only lose their new columns.
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS subject_name_keys_created_at ON subject_name_keys")
        op.execute("DROP FUNCTION IF EXISTS casehub_subject_name_keys_created_at()")
    op.drop_index("ix_subject_name_keys_key_order", table_name="subject_name_keys")
    with op.batch_alter_table("subject_name_keys") as batch:
        batch.drop_constraint("pk_subject_name_keys", type_="primary")
        batch.drop_column("subject_created_at")
        batch.drop_column("whole_word")
        batch.create_primary_key("pk_subject_name_keys", ["key", "subject_id"])
        batch.create_index("ix_subject_name_keys_subject_id", ["subject_id"])
