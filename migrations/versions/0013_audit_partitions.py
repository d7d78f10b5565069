"""audit tables RANGE-partitioned on PostgreSQL: events by pos, the chain and its indexes by seq

Revision ID: 0013
Revises: 0012

At national scale audit_events, audit_chain, audit_event_subjects and audit_event_agencies reach
hundreds of millions of rows in one heap each, and nothing old can ever leave. Each becomes a
partitioned table of the same name whose first partition, `<table>_p0000`, is the old heap
itself, attached without copying a row: audit_events covers pos < 2**40 (checking that is the
one scan of this migration), the three chain tables every seq (nothing to check). After that
casehub.audit.partitions moves every table on at the same moments (`casehub audit partitions
--ensure`), and casehub.audit.archive exports and drops whole old periods.

Events have ranges of 2**40 positions created ahead of need, and a DEFAULT partition, so an
insert always finds a partition. The chain tables' newest partition always runs to MAXVALUE,
and no table of the chain has a DEFAULT partition: PostgreSQL then walks them in seq order as a
plain Append of the partitions (no Merge Append).

What partitioning rules out changes on both dialects, so that the models stay one:
- the unique index on audit_events.id goes (a unique index must hold the partition key, and
  (id, pos) would promise nothing pos does not; nothing looks an event up by its id);
- audit_chain.event_pos keeps a plain index instead of a unique one (the sequencer chains each
  queued event once, in the transaction that dequeues it);
- the foreign keys audit_chain.event_pos -> audit_events.pos and audit_event_subjects.seq ->
  audit_chain.seq go, as the reach index never had one: the sequencer writes all of them in one
  transaction, a per-row check cost it a lookup and a row lock per event, and PostgreSQL 15
  cannot add a NOT VALID foreign key to a partitioned table, so keeping one would cost an
  anti-join of the whole trail here.

The append-only triggers are re-created on the partitioned tables (row triggers are cloned to
every partition); a TRUNCATE trigger fires only for the table named, so each partition keeps its
own. The enqueue trigger moves to the partitioned audit_events. Downgrade copies the rows back
into one heap per table (0014's downgrade refuses once anything was archived).
"""

from __future__ import annotations

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

POS_SPAN = 1 << 40  # positions per events partition (casehub.audit.partitions.POS_SPAN)
FIRST = "p0000"
# The indexes of each partitioned table besides its primary key.
INDEXES: dict[str, list[tuple[str, str]]] = {
    "audit_events": [],
    "audit_chain": [("ix_audit_chain_event_pos", "(event_pos)")],
    "audit_event_subjects": [],
    "audit_event_agencies": [
        ("ix_audit_event_agencies_actor_agency", "(agency, actor_agency, seq)"),
        ("ix_audit_event_agencies_actor_client_id", "(agency, actor_client_id, seq)"),
        (
            "ix_audit_event_agencies_actor_user_id",
            "(agency, actor_user_id, seq) WHERE actor_user_id IS NOT NULL",
        ),
        ("ix_audit_event_agencies_action", "(agency, action, seq)"),
        ("ix_audit_event_agencies_denied", "(agency, seq) WHERE outcome = 'denied'"),
        (
            "ix_audit_event_agencies_referral_id",
            "(referral_id, seq) WHERE agency = '*' AND referral_id IS NOT NULL",
        ),
        (
            "ix_audit_event_agencies_occurred_max",
            "(occurred_max, seq) WHERE occurred_max IS NOT NULL",
        ),
    ],
}
# table -> (partition key, primary key columns)
KEYS = {
    "audit_events": ("pos", "pos"),
    "audit_chain": ("seq", "seq"),
    "audit_event_subjects": ("seq", "subject_id, seq"),
    "audit_event_agencies": ("seq", "agency, seq"),
}
APPEND_ONLY = ("audit_events", "audit_chain", "audit_event_subjects")
FOREIGN_KEYS = (
    ("audit_chain", "fk_audit_chain_event_pos_audit_events", "event_pos", "audit_events", "pos"),
    (
        "audit_event_subjects",
        "fk_audit_event_subjects_seq_audit_chain",
        "seq",
        "audit_chain",
        "seq",
    ),
)
ENQUEUE = (
    "CREATE TRIGGER audit_events_enqueue AFTER INSERT ON audit_events "
    "FOR EACH ROW EXECUTE FUNCTION casehub_audit_enqueue()"
)


def _append_only(table: str) -> None:
    op.execute(
        f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
        "FOR EACH ROW EXECUTE FUNCTION casehub_audit_append_only()"
    )


def _no_truncate(table: str, on: str) -> None:
    op.execute(
        f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {on} "
        "FOR EACH STATEMENT EXECUTE FUNCTION casehub_audit_append_only()"
    )


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _pg_upgrade()
    else:
        _sqlite_upgrade()


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _pg_downgrade()
    else:
        _sqlite_downgrade()


# -- PostgreSQL --------------------------------------------------------------------------------
def _pg_upgrade() -> None:
    for table, name, *_ in FOREIGN_KEYS:
        op.execute(f"ALTER TABLE {table} DROP CONSTRAINT {name}")
    op.execute("ALTER TABLE audit_events DROP CONSTRAINT uq_audit_events_id")
    op.execute("ALTER TABLE audit_chain DROP CONSTRAINT uq_audit_chain_event_pos")
    for table in INDEXES:
        _partition(table)
    # Ahead of need: the next range of positions, and a DEFAULT partition for any other.
    op.execute(
        f"CREATE TABLE audit_events_p0001 PARTITION OF audit_events "
        f"FOR VALUES FROM ({POS_SPAN}) TO ({2 * POS_SPAN})"
    )
    op.execute("CREATE TABLE audit_events_default PARTITION OF audit_events DEFAULT")
    for partition in ("audit_events_p0001", "audit_events_default"):
        _no_truncate("audit_events", partition)
    op.execute(ENQUEUE)
    for table in APPEND_ONLY:
        _append_only(table)
        _no_truncate(table, table)
    for table in INDEXES:
        op.execute(f"ANALYZE {table}")


def _partition(table: str) -> None:
    """The heap `table` becomes partition p0000 of a new partitioned table of that name."""
    key, primary = KEYS[table]
    first = f"{table}_{FIRST}"
    # Row triggers come back cloned from the partitioned table; the TRUNCATE trigger stays.
    if table == "audit_events":
        op.execute("DROP TRIGGER audit_events_enqueue ON audit_events")
    if table in APPEND_ONLY:
        op.execute(f"DROP TRIGGER {table}_append_only ON {table}")
    op.execute(f"ALTER TABLE {table} RENAME TO {first}")
    op.execute(f"ALTER TABLE {first} RENAME CONSTRAINT pk_{table} TO pk_{first}")
    for name, _ in INDEXES[table]:
        if table != "audit_chain":  # audit_chain's index is new
            op.execute(f"ALTER INDEX {name} RENAME TO {name}_{FIRST}")
    op.execute(f"CREATE TABLE {table} (LIKE {first} INCLUDING DEFAULTS) PARTITION BY RANGE ({key})")
    op.execute(f"ALTER TABLE {table} ADD CONSTRAINT pk_{table} PRIMARY KEY ({primary})")
    for name, definition in INDEXES[table]:
        op.execute(f"CREATE INDEX {name} ON {table} {definition}")
    if table == "audit_events":
        op.execute("ALTER SEQUENCE audit_events_pos_seq OWNED BY audit_events.pos")
        op.execute(f"ALTER TABLE {first} ALTER COLUMN pos DROP DEFAULT")
        upper = str(POS_SPAN)
    else:
        upper = "MAXVALUE"
    # The matching indexes of the old heap are attached as they are, not rebuilt.
    op.execute(
        f"ALTER TABLE {table} ATTACH PARTITION {first} FOR VALUES FROM (MINVALUE) TO ({upper})"
    )


def _pg_downgrade() -> None:
    for table in reversed(tuple(INDEXES)):
        _unpartition(table)
    op.execute("ALTER TABLE audit_events ADD CONSTRAINT uq_audit_events_id UNIQUE (id)")
    op.execute("ALTER TABLE audit_chain ADD CONSTRAINT uq_audit_chain_event_pos UNIQUE (event_pos)")
    for table, name, column, referred, referred_column in FOREIGN_KEYS:
        op.execute(
            f"ALTER TABLE {table} ADD CONSTRAINT {name} FOREIGN KEY ({column}) "
            f"REFERENCES {referred} ({referred_column})"
        )
    op.execute(ENQUEUE)
    for table in INDEXES:
        op.execute(f"ANALYZE {table}")


def _unpartition(table: str) -> None:
    """Every partition's rows into one heap again, under the table's name."""
    key, primary = KEYS[table]
    heap = f"{table}_heap"
    op.execute(f"CREATE TABLE {heap} (LIKE {table} INCLUDING DEFAULTS)")
    op.execute(f"INSERT INTO {heap} SELECT * FROM {table} ORDER BY {key}")  # noqa: S608
    if table == "audit_events":
        op.execute(f"ALTER SEQUENCE audit_events_pos_seq OWNED BY {heap}.pos")
    op.execute(f"DROP TABLE {table}")  # and its partitions, triggers and indexes
    op.execute(f"ALTER TABLE {heap} RENAME TO {table}")
    op.execute(f"ALTER TABLE {table} ADD CONSTRAINT pk_{table} PRIMARY KEY ({primary})")
    for name, definition in INDEXES[table]:
        if table != "audit_chain":  # there a unique constraint comes back instead
            op.execute(f"CREATE INDEX {name} ON {table} {definition}")
    if table in APPEND_ONLY:
        _append_only(table)
        _no_truncate(table, table)


# -- SQLite: one table each, as before; only what the models lost -------------------------------
SQLITE_APPEND_ONLY = ("audit_events", "audit_chain", "audit_event_subjects")


def _sqlite_triggers() -> None:
    """A table rebuilt by batch mode loses its triggers: the ones of 0002, again."""
    op.execute("DROP TRIGGER IF EXISTS audit_events_enqueue")
    op.execute(
        "CREATE TRIGGER audit_events_enqueue AFTER INSERT ON audit_events "
        "BEGIN INSERT INTO audit_pending (pos) VALUES (NEW.pos); END"
    )
    for table in SQLITE_APPEND_ONLY:
        for verb in ("UPDATE", "DELETE"):
            op.execute(f"DROP TRIGGER IF EXISTS {table}_no_{verb.lower()}")
            op.execute(
                f"CREATE TRIGGER {table}_no_{verb.lower()} BEFORE {verb} ON {table} "
                f"BEGIN SELECT RAISE(ABORT, 'audit records are append-only: {verb} on {table} "
                "refused'); END"
            )


def _sqlite_upgrade() -> None:
    # Referencing tables first: with foreign keys on, dropping a referenced table fails.
    with op.batch_alter_table("audit_event_subjects") as batch:
        batch.drop_constraint("fk_audit_event_subjects_seq_audit_chain", type_="foreignkey")
    with op.batch_alter_table("audit_chain") as batch:
        batch.drop_constraint("fk_audit_chain_event_pos_audit_events", type_="foreignkey")
        batch.drop_constraint("uq_audit_chain_event_pos", type_="unique")
        batch.create_index("ix_audit_chain_event_pos", ["event_pos"], unique=False)
    with op.batch_alter_table("audit_events") as batch:
        batch.drop_constraint("uq_audit_events_id", type_="unique")
    _sqlite_triggers()


def _sqlite_downgrade() -> None:
    # Referenced tables first, for the same reason.
    with op.batch_alter_table("audit_events") as batch:
        batch.create_unique_constraint("uq_audit_events_id", ["id"])
    with op.batch_alter_table("audit_chain") as batch:
        batch.drop_index("ix_audit_chain_event_pos")
        batch.create_unique_constraint("uq_audit_chain_event_pos", ["event_pos"])
        batch.create_foreign_key(
            "fk_audit_chain_event_pos_audit_events", "audit_events", ["event_pos"], ["pos"]
        )
    with op.batch_alter_table("audit_event_subjects") as batch:
        batch.create_foreign_key(
            "fk_audit_event_subjects_seq_audit_chain", "audit_chain", ["seq"], ["seq"]
        )
    _sqlite_triggers()
