"""joining the dots: matches, access requests, decisions not to share, emergency access

Revision ID: 0015
Revises: 0014

CONTRACT §9, §10 and §11's decisions. Referrals gain `discoverable` (default true). Matching
finds a child by the name keys of subject search among children born within a year, so the keys
gain the subject's birth year and an index on (key, birth_year); and by identifier, so a
subject's identifiers become rows too. Both are filled in here from what is stored. On
PostgreSQL the trigger of 0008 that completes key rows written by an earlier release now fills
in the birth year as well. Decisions not to share are append-only, like the audit trail.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import casehub.db
from casehub import migrate

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

UTC = casehub.db.UTCDateTime(timezone=True)
DECISIONS = "sharing_decisions"
# The year a subject was born in, as subject_name_keys.birth_year holds it.
BIRTH_YEAR = {
    "postgresql": "coalesce(extract(year FROM s.date_of_birth)::int, s.estimated_birth_year)",
    "sqlite": "coalesce(CAST(strftime('%Y', s.date_of_birth) AS INTEGER), s.estimated_birth_year)",
}
# casehub.services.matching.normalise_identifier, in SQL.
IDENTIFIER_VALUE = "replace(replace(upper({value}), ' ', ''), '-', '')"


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    op.add_column(
        "referrals",
        sa.Column("discoverable", sa.Boolean(), server_default=sa.true(), nullable=False),
    )

    if dialect == "postgresql":
        _rebuild_name_keys_with_birth_years()
    else:
        op.add_column("subject_name_keys", sa.Column("birth_year", sa.Integer(), nullable=True))
        op.execute(
            "UPDATE subject_name_keys SET birth_year = (SELECT "  # noqa: S608 (constants only)
            + BIRTH_YEAR[dialect]
            + " FROM subjects s WHERE s.id = subject_name_keys.subject_id)"
        )
        op.create_index(
            "ix_subject_name_keys_key_birth_year",
            "subject_name_keys",
            ["key", "birth_year", "subject_id"],
        )

    op.create_table(
        "subject_identifiers",
        sa.Column("subject_id", sa.Uuid(), nullable=False),
        sa.Column("system", sa.String(length=40), nullable=False),
        sa.Column("value", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["subject_id"],
            ["subjects.id"],
            name=op.f("fk_subject_identifiers_subject_id_subjects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "system", "value", "subject_id", name=op.f("pk_subject_identifiers")
        ),
    )
    op.create_index(
        op.f("ix_subject_identifiers_subject_id"), "subject_identifiers", ["subject_id"]
    )
    if dialect == "postgresql":
        elements = "json_array_elements(s.identifiers) AS e"
        system, value = "e->>'system'", "e->>'value'"
    else:
        elements = "json_each(s.identifiers) AS e"
        system, value = "json_extract(e.value, '$.system')", "json_extract(e.value, '$.value')"
    normalised = IDENTIFIER_VALUE.format(value=value)
    op.execute(
        "INSERT INTO subject_identifiers (subject_id, system, value) "  # noqa: S608 (constants)
        f"SELECT s.id, {system}, {normalised} FROM subjects s, {elements} "
        f"WHERE {system} IS NOT NULL AND {value} IS NOT NULL AND {normalised} <> '' "
        "ON CONFLICT DO NOTHING"
    )

    op.create_table(
        "matches",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("agency_code", sa.String(length=40), nullable=False),
        sa.Column("client_id", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=True),
        sa.Column("found", sa.JSON(), nullable=False),
        sa.Column("created_at", UTC, nullable=False),
        sa.Column("expires_at", UTC, nullable=False),
        sa.ForeignKeyConstraint(
            ["agency_code"], ["agencies.code"], name=op.f("fk_matches_agency_code_agencies")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_matches")),
    )
    op.create_index(op.f("ix_matches_expires_at"), "matches", ["expires_at"])

    op.create_table(
        "emergency_accesses",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("match_id", sa.Uuid(), nullable=False),
        sa.Column("agency_code", sa.String(length=40), nullable=False),
        sa.Column("holder_agency", sa.String(length=40), nullable=False),
        sa.Column("reason", sa.String(length=2000), nullable=False),
        sa.Column("purpose", sa.String(length=40), nullable=False),
        sa.Column("referral_ids", sa.JSON(), nullable=False),
        sa.Column("subject_ids", sa.JSON(), nullable=False),
        sa.Column("created_at", UTC, nullable=False),
        sa.Column("created_by_client_id", sa.String(length=64), nullable=False),
        sa.Column("created_by_user_id", sa.Uuid(), nullable=True),
        sa.Column("expires_at", UTC, nullable=False),
        sa.Column("ended_at", UTC, nullable=True),
        sa.Column("ended_by_agency", sa.String(length=40), nullable=True),
        sa.Column("review_status", sa.String(length=10), nullable=False),
        sa.Column("reviewed_at", UTC, nullable=True),
        sa.Column("reviewed_by_client_id", sa.String(length=64), nullable=True),
        sa.Column("reviewed_by_user_id", sa.Uuid(), nullable=True),
        sa.Column("review_outcome", sa.String(length=20), nullable=True),
        sa.Column("review_note", sa.String(length=2000), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["agency_code"],
            ["agencies.code"],
            name=op.f("fk_emergency_accesses_agency_code_agencies"),
        ),
        sa.ForeignKeyConstraint(
            ["holder_agency"],
            ["agencies.code"],
            name=op.f("fk_emergency_accesses_holder_agency_agencies"),
        ),
        sa.ForeignKeyConstraint(
            ["match_id"], ["matches.id"], name=op.f("fk_emergency_accesses_match_id_matches")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_emergency_accesses")),
    )
    for name, columns in (
        ("ix_emergency_accesses_review_order", ["review_status", "created_at", "id"]),
        ("ix_emergency_accesses_agency_order", ["agency_code", "created_at", "id"]),
        ("ix_emergency_accesses_holder_order", ["holder_agency", "created_at", "id"]),
    ):
        op.create_index(name, "emergency_accesses", columns)

    fk = "fk_shares_emergency_access_id_emergency_accesses"
    if dialect == "postgresql":
        op.add_column("shares", sa.Column("emergency_access_id", sa.Uuid(), nullable=True))
        op.create_foreign_key(fk, "shares", "emergency_accesses", ["emergency_access_id"], ["id"])
    else:  # SQLite adds a column's foreign key only inline (no ALTER … ADD CONSTRAINT)
        op.execute(
            "ALTER TABLE shares ADD COLUMN emergency_access_id CHAR(32) "
            f"CONSTRAINT {fk} REFERENCES emergency_accesses (id)"
        )
    op.create_index(op.f("ix_shares_emergency_access_id"), "shares", ["emergency_access_id"])

    op.create_table(
        "access_requests",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("match_id", sa.Uuid(), nullable=False),
        sa.Column("from_agency", sa.String(length=40), nullable=False),
        sa.Column("to_agency", sa.String(length=40), nullable=False),
        sa.Column("purpose", sa.String(length=40), nullable=False),
        sa.Column("necessity", sa.String(length=2000), nullable=False),
        sa.Column("urgency", sa.String(length=10), nullable=False),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("referral_ids", sa.JSON(), nullable=False),
        sa.Column("subject_ids", sa.JSON(), nullable=False),
        sa.Column("created_at", UTC, nullable=False),
        sa.Column("created_by_client_id", sa.String(length=64), nullable=False),
        sa.Column("created_by_user_id", sa.Uuid(), nullable=True),
        sa.Column("decided_at", UTC, nullable=True),
        sa.Column("decided_by_client_id", sa.String(length=64), nullable=True),
        sa.Column("decided_by_user_id", sa.Uuid(), nullable=True),
        sa.Column("decision_reason", sa.String(length=2000), nullable=True),
        sa.Column("share_id", sa.Uuid(), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["from_agency"],
            ["agencies.code"],
            name=op.f("fk_access_requests_from_agency_agencies"),
        ),
        sa.ForeignKeyConstraint(
            ["to_agency"], ["agencies.code"], name=op.f("fk_access_requests_to_agency_agencies")
        ),
        sa.ForeignKeyConstraint(
            ["match_id"], ["matches.id"], name=op.f("fk_access_requests_match_id_matches")
        ),
        sa.ForeignKeyConstraint(
            ["share_id"], ["shares.id"], name=op.f("fk_access_requests_share_id_shares")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_access_requests")),
    )
    op.create_index(op.f("ix_access_requests_match_id"), "access_requests", ["match_id"])
    for name, columns in (
        ("ix_access_requests_to_order", ["to_agency", "created_at", "id"]),
        ("ix_access_requests_to_status_order", ["to_agency", "status", "created_at", "id"]),
        ("ix_access_requests_from_order", ["from_agency", "created_at", "id"]),
        ("ix_access_requests_from_status_order", ["from_agency", "status", "created_at", "id"]),
    ):
        op.create_index(name, "access_requests", columns)

    op.create_table(
        DECISIONS,
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("referral_id", sa.Uuid(), nullable=False),
        sa.Column("agency_code", sa.String(length=40), nullable=False),
        sa.Column("reason", sa.String(length=2000), nullable=False),
        sa.Column("purpose", sa.String(length=40), nullable=False),
        sa.Column("access_request_id", sa.Uuid(), nullable=True),
        sa.Column("decided_by_agency", sa.String(length=40), nullable=False),
        sa.Column("decided_by_client_id", sa.String(length=64), nullable=False),
        sa.Column("decided_by_user_id", sa.Uuid(), nullable=True),
        sa.Column("created_at", UTC, nullable=False),
        sa.ForeignKeyConstraint(
            ["access_request_id"],
            ["access_requests.id"],
            name=op.f("fk_sharing_decisions_access_request_id_access_requests"),
        ),
        sa.ForeignKeyConstraint(
            ["agency_code"],
            ["agencies.code"],
            name=op.f("fk_sharing_decisions_agency_code_agencies"),
        ),
        sa.ForeignKeyConstraint(
            ["referral_id"],
            ["referrals.id"],
            name=op.f("fk_sharing_decisions_referral_id_referrals"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sharing_decisions")),
    )
    op.create_index(
        "ix_sharing_decisions_referral_order", DECISIONS, ["referral_id", "created_at", "id"]
    )
    if dialect == "postgresql":
        op.execute(
            """
            CREATE FUNCTION casehub_decisions_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                RAISE EXCEPTION 'decisions not to share are append-only: % on % refused',
                    TG_OP, TG_TABLE_NAME USING ERRCODE = 'insufficient_privilege';
            END $$
            """
        )
        op.execute(
            f"CREATE TRIGGER {DECISIONS}_append_only BEFORE UPDATE OR DELETE ON {DECISIONS} "
            "FOR EACH ROW EXECUTE FUNCTION casehub_decisions_append_only()"
        )
    else:
        for verb in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER {DECISIONS}_no_{verb.lower()} BEFORE {verb} ON {DECISIONS} "
                f"BEGIN SELECT RAISE(ABORT, 'decisions not to share are append-only: {verb} on "
                f"{DECISIONS} refused'); END"
            )


def _rebuild_name_keys_with_birth_years() -> None:
    """PostgreSQL: the keys copied into a new table with each subject's birth year (one hash
    join), then indexed, constrained and swapped in, as a restore would build them. An UPDATE
    of every key row (15 million at a million children) rewrote each row and both its index
    entries in place and took many times longer, holding every row's lock to the end."""
    op.execute("ALTER TABLE subject_name_keys RENAME TO subject_name_keys_0014")
    op.execute(
        "CREATE TABLE subject_name_keys ("
        " key VARCHAR(100) NOT NULL, subject_id UUID NOT NULL,"
        " whole_word BOOLEAN DEFAULT true NOT NULL,"
        " subject_created_at TIMESTAMP WITH TIME ZONE NOT NULL, birth_year INTEGER)"
    )
    op.execute(
        "INSERT INTO subject_name_keys (key, subject_id, whole_word, subject_created_at, "  # noqa: S608
        "birth_year) SELECT k.key, k.subject_id, k.whole_word, k.subject_created_at, "
        + BIRTH_YEAR["postgresql"]
        + " FROM subject_name_keys_0014 k JOIN subjects s ON s.id = k.subject_id"
    )
    op.execute("DROP TABLE subject_name_keys_0014")  # its constraints, indexes and trigger
    op.create_primary_key("pk_subject_name_keys", "subject_name_keys", ["subject_id", "key"])
    op.create_index(
        "ix_subject_name_keys_key_order",
        "subject_name_keys",
        ["key", "subject_created_at", "subject_id", "whole_word"],
    )
    op.create_index(
        "ix_subject_name_keys_key_birth_year",
        "subject_name_keys",
        ["key", "birth_year", "subject_id"],
    )
    op.create_foreign_key(
        "fk_subject_name_keys_subject_id_subjects",
        "subject_name_keys",
        "subjects",
        ["subject_id"],
        ["id"],
        ondelete="CASCADE",
    )
    op.execute("ANALYZE subject_name_keys")
    # Without a visibility map every index-only scan of the new table visits its heap: `casehub
    # db upgrade` vacuums it once this migration has committed (casehub.migrate.needs_vacuum).
    migrate.needs_vacuum(op.get_context().config, "subject_name_keys")
    # 0008's trigger went with the table the keys were copied from. The previous release writes
    # key rows without the subject's created_at or birth year while this one rolls out (and
    # after a rollback): the row takes them from the subject.
    op.execute(
        """
        CREATE OR REPLACE FUNCTION casehub_subject_name_keys_created_at() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            SELECT s.created_at,
                   coalesce(NEW.birth_year, extract(year FROM s.date_of_birth)::int,
                            s.estimated_birth_year)
              INTO NEW.subject_created_at, NEW.birth_year
              FROM subjects s WHERE s.id = NEW.subject_id;
            RETURN NEW;
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER subject_name_keys_created_at BEFORE INSERT ON subject_name_keys "
        "FOR EACH ROW WHEN (NEW.subject_created_at IS NULL OR NEW.birth_year IS NULL) "
        "EXECUTE FUNCTION casehub_subject_name_keys_created_at()"
    )


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    op.drop_table(DECISIONS)  # its triggers go with it
    if dialect == "postgresql":
        op.execute("DROP FUNCTION casehub_decisions_append_only()")
    op.drop_table("access_requests")
    op.drop_index(op.f("ix_shares_emergency_access_id"), table_name="shares")
    if dialect == "postgresql":
        op.drop_constraint(
            "fk_shares_emergency_access_id_emergency_accesses", "shares", type_="foreignkey"
        )
    op.drop_column("shares", "emergency_access_id")
    op.drop_table("emergency_accesses")
    op.drop_table("matches")
    op.drop_table("subject_identifiers")
    if dialect == "postgresql":
        op.execute("DROP TRIGGER subject_name_keys_created_at ON subject_name_keys")
        op.execute(
            """
            CREATE OR REPLACE FUNCTION casehub_subject_name_keys_created_at() RETURNS trigger
            LANGUAGE plpgsql AS $$
            BEGIN
                SELECT created_at INTO NEW.subject_created_at FROM subjects
                 WHERE id = NEW.subject_id;
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
    op.drop_index("ix_subject_name_keys_key_birth_year", table_name="subject_name_keys")
    op.drop_column("subject_name_keys", "birth_year")
    op.drop_column("referrals", "discoverable")
