"""audit reach index: which agencies' auditors see each chained event, in seq order

Revision ID: 0007
Revises: 0006

An agency auditor's list was `actor_agency = X OR referral_id IN (referrals X leads)`, which
PostgreSQL re-reads per candidate event: seconds at a million events, minutes at ten. Each
chained event now has a row under its actor's agency, one under the agency that leads its
referral (if another) and one under '*' (`audit:read:all`), carrying the filter columns, so
every list is a range scan of one index in seq order. The '*' rows also carry the chain's
time marks (see casehub.models.audit.AuditEventAgency), which make `from`/`to` seq bounds.

The table is an index, not the record: it has no append-only triggers, because a transfer of
the lead moves the lead's rows. The backfill is one INSERT ... SELECT over the chain, its
events and their referrals' leads now; the indexes are built after it (cheaper than keeping
them during the load). Events an older release chains while this release rolls out get their
rows from the sequencer, which indexes any chained event still missing them first.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import casehub.db

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TABLE = "audit_event_agencies"
INDEXES: dict[str, tuple[list[str], str | None]] = {
    "ix_audit_event_agencies_actor_agency": (["agency", "actor_agency", "seq"], None),
    "ix_audit_event_agencies_actor_client_id": (["agency", "actor_client_id", "seq"], None),
    "ix_audit_event_agencies_actor_user_id": (
        ["agency", "actor_user_id", "seq"],
        "actor_user_id IS NOT NULL",
    ),
    "ix_audit_event_agencies_action": (["agency", "action", "seq"], None),
    "ix_audit_event_agencies_outcome": (["agency", "outcome", "seq"], None),
    "ix_audit_event_agencies_referral_id": (
        ["agency", "referral_id", "seq"],
        "referral_id IS NOT NULL",
    ),
    "ix_audit_event_agencies_occurred_max": (["occurred_max", "seq"], "occurred_max IS NOT NULL"),
}

# How far (in microseconds) an event occurred before the latest event chained ahead of it.
# SQLite stores times as text, "YYYY-MM-DD HH:MM:SS.ffffff" (always six digits).
LATENESS = {
    "postgresql": "CAST(EXTRACT(EPOCH FROM (t.before_max - t.occurred_at)) * 1000000 AS BIGINT)",
    "sqlite": "(CAST(strftime('%s', t.before_max) AS INTEGER)"
    " - CAST(strftime('%s', t.occurred_at) AS INTEGER)) * 1000000"
    " + CAST(substr(t.before_max, 21, 6) AS INTEGER)"
    " - CAST(substr(t.occurred_at, 21, 6) AS INTEGER)",
}

# Every chained event with its referral's lead now and the time marks in seq order, then
# one row per kind: 0 under '*', 1 under the actor's agency, 2 under the lead if another.
BACKFILL = """
INSERT INTO audit_event_agencies (agency, seq, actor_agency, actor_client_id, actor_user_id,
    action, outcome, referral_id, occurred_max, late_max_us)
SELECT agency, seq, actor_agency, actor_client_id, actor_user_id, action, outcome,
    referral_id,
    CASE WHEN k = 0 THEN occurred_max END,
    CASE WHEN k = 0 THEN late_max_us END
FROM (
    SELECT kinds.k,
        CASE kinds.k WHEN 0 THEN '*' WHEN 1 THEN m.actor_agency
            ELSE NULLIF(m.lead_agency, m.actor_agency) END AS agency,
        m.*
    FROM (
        SELECT t.*,
            CASE WHEN t.before_max > t.occurred_at THEN t.before_max ELSE t.occurred_at END
                AS occurred_max,
            max(CASE WHEN t.before_max > t.occurred_at THEN {lateness} ELSE 0 END)
                OVER (ORDER BY t.seq ROWS UNBOUNDED PRECEDING) AS late_max_us
        FROM (
            SELECT c.seq, e.occurred_at, e.actor_agency, e.actor_client_id, e.actor_user_id,
                e.action, e.outcome, e.referral_id, r.lead_agency,
                max(e.occurred_at) OVER (
                    ORDER BY c.seq ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING
                ) AS before_max
            FROM audit_chain c
            JOIN audit_events e ON e.pos = c.event_pos
            LEFT JOIN referrals r ON r.id = e.referral_id
        ) t
    ) m
    CROSS JOIN (SELECT 0 AS k UNION ALL SELECT 1 UNION ALL SELECT 2) kinds
) reach
WHERE agency IS NOT NULL
"""


def upgrade() -> None:
    op.create_table(
        TABLE,
        sa.Column("agency", sa.String(length=40), nullable=False),
        sa.Column("seq", BigId, autoincrement=False, nullable=False),
        sa.Column("actor_agency", sa.String(length=40), nullable=True),
        sa.Column("actor_client_id", sa.String(length=64), nullable=True),
        sa.Column("actor_user_id", sa.Uuid(), nullable=True),
        sa.Column("action", sa.String(length=60), nullable=False),
        sa.Column("outcome", sa.String(length=10), nullable=False),
        sa.Column("referral_id", sa.Uuid(), nullable=True),
        sa.Column("occurred_max", casehub.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("late_max_us", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("agency", "seq", name=op.f("pk_audit_event_agencies")),
    )
    dialect = op.get_bind().dialect.name
    op.execute(BACKFILL.format(lateness=LATENESS[dialect]))
    for name, (columns, where) in INDEXES.items():
        predicate = {} if where is None else {f"{dialect}_where": sa.text(where)}
        op.create_index(name, TABLE, columns, unique=False, **predicate)
    if dialect == "postgresql":
        op.execute(f"ANALYZE {TABLE}")


def downgrade() -> None:
    for name in INDEXES:
        op.drop_index(name, table_name=TABLE)
    op.drop_table(TABLE)
