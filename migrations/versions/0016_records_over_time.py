"""a child's record over time: share profiles, merged records, retention and legal hold

Revision ID: 0016
Revises: 0015

CONTRACT §11. Shares gain `profile` (full | summary; existing shares are full). Subjects gain
`merged_into` (a duplicate's survivor) and `erased_at`; every merge and unmerge is kept in
`subject_merges`, append-only. Referrals gain `closed_at` (the retention clock, filled in here
from the history of those closed now), a legal hold (reason, when, by which agency) and
`erased_at` (the row is then the referral's tombstone), with a partial index of the closed
referrals retention has still to consider.

Every column added is nullable or has a constant default, so on PostgreSQL each ADD COLUMN is a
change to the catalogue only; the backfill touches closed referrals alone.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import casehub.db

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

UTC = casehub.db.UTCDateTime(timezone=True)
MERGES = "subject_merges"
OPEN_CLOSURES = "closed_at IS NOT NULL AND erased_at IS NULL"


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    op.add_column(
        "shares",
        sa.Column("profile", sa.String(length=10), server_default="full", nullable=False),
    )

    # Never a batch copy of `subjects` on SQLite: dropping the old table would cascade to the
    # rows that reference it (its name keys). SQLite adds a foreign key only inline.
    fk = "fk_subjects_merged_into_subjects"
    if dialect == "postgresql":
        op.add_column("subjects", sa.Column("merged_into", sa.Uuid(), nullable=True))
        op.create_foreign_key(fk, "subjects", "subjects", ["merged_into"], ["id"])
    else:
        op.execute(
            "ALTER TABLE subjects ADD COLUMN merged_into CHAR(32) "
            f"CONSTRAINT {fk} REFERENCES subjects (id)"
        )
    op.add_column("subjects", sa.Column("erased_at", UTC, nullable=True))
    op.create_index(
        "ix_subjects_merged_into",
        "subjects",
        ["merged_into"],
        postgresql_where=sa.text("merged_into IS NOT NULL"),
        sqlite_where=sa.text("merged_into IS NOT NULL"),
    )

    for column in (
        sa.Column("closed_at", UTC, nullable=True),
        sa.Column("legal_hold_reason", sa.String(length=2000), nullable=True),
        sa.Column("legal_hold_at", UTC, nullable=True),
        sa.Column("legal_hold_by_agency", sa.String(length=40), nullable=True),
        sa.Column("erased_at", UTC, nullable=True),
    ):
        op.add_column("referrals", column)
    # A closed referral's clock starts at its last move to closed.
    op.execute(
        "UPDATE referrals SET closed_at = (SELECT max(h.occurred_at) FROM referral_history h "
        "WHERE h.referral_id = referrals.id AND h.to_status = 'closed') "
        "WHERE status = 'closed'"
    )
    op.create_index(
        "ix_referrals_retention",
        "referrals",
        ["closed_at"],
        postgresql_where=sa.text(OPEN_CLOSURES),
        sqlite_where=sa.text(OPEN_CLOSURES),
    )

    op.create_table(
        MERGES,
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("action", sa.String(length=10), nullable=False),
        sa.Column("subject_id", sa.Uuid(), nullable=False),
        sa.Column("duplicate_id", sa.Uuid(), nullable=False),
        sa.Column("reason", sa.String(length=2000), nullable=False),
        sa.Column("actor_agency", sa.String(length=40), nullable=False),
        sa.Column("actor_client_id", sa.String(length=64), nullable=False),
        sa.Column("actor_user_id", sa.Uuid(), nullable=True),
        sa.Column("occurred_at", UTC, nullable=False),
        sa.ForeignKeyConstraint(
            ["subject_id"], ["subjects.id"], name=op.f("fk_subject_merges_subject_id_subjects")
        ),
        sa.ForeignKeyConstraint(
            ["duplicate_id"],
            ["subjects.id"],
            name=op.f("fk_subject_merges_duplicate_id_subjects"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_subject_merges")),
    )
    op.create_index("ix_subject_merges_subject_order", MERGES, ["subject_id", "occurred_at", "id"])
    op.create_index(
        "ix_subject_merges_duplicate_order", MERGES, ["duplicate_id", "occurred_at", "id"]
    )
    if dialect == "postgresql":
        op.execute(
            """
            CREATE FUNCTION casehub_merges_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                RAISE EXCEPTION 'the history of merges is append-only: % on % refused',
                    TG_OP, TG_TABLE_NAME USING ERRCODE = 'insufficient_privilege';
            END $$
            """
        )
        op.execute(
            f"CREATE TRIGGER {MERGES}_append_only BEFORE UPDATE OR DELETE ON {MERGES} "
            "FOR EACH ROW EXECUTE FUNCTION casehub_merges_append_only()"
        )
    else:
        for verb in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER {MERGES}_no_{verb.lower()} BEFORE {verb} ON {MERGES} "
                f"BEGIN SELECT RAISE(ABORT, 'the history of merges is append-only: {verb} on "
                f"{MERGES} refused'); END"
            )


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    op.drop_table(MERGES)  # its triggers go with it
    if dialect == "postgresql":
        op.execute("DROP FUNCTION casehub_merges_append_only()")
    op.drop_index("ix_referrals_retention", table_name="referrals")
    # Dropped in place (no batch copy of the tables, which would rewrite the foreign keys that
    # 0015 added inline on SQLite and that its own downgrade drops in place).
    for name in ("erased_at", "legal_hold_by_agency", "legal_hold_at", "legal_hold_reason"):
        op.drop_column("referrals", name)
    op.drop_column("referrals", "closed_at")
    op.drop_index("ix_subjects_merged_into", table_name="subjects")
    if dialect == "postgresql":
        op.drop_constraint("fk_subjects_merged_into_subjects", "subjects", type_="foreignkey")
    op.drop_column("subjects", "erased_at")
    op.drop_column("subjects", "merged_into")
    op.drop_column("shares", "profile")
