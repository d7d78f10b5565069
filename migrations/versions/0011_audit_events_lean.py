"""audit events keep only their keys: the reach and subject indexes serve every audit query

Revision ID: 0011
Revises: 0010

Every request writes at least one audit event, and each event maintained eight indexes. Since
0007 every audit list walks audit_event_agencies or audit_event_subjects (which copy the filter
columns) and reaches the event by its pos, so the six secondary indexes of audit_events (by
referral, actor agency, time, client, user and action) serve no query: dropping them makes
every request's audit INSERT, and its WAL, cheaper. The primary key (pos) and the event id's
unique index stay. Downgrade rebuilds the six.
"""

from __future__ import annotations

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

INDEXES: dict[str, list[str]] = {
    "ix_audit_events_referral_id": ["referral_id"],
    "ix_audit_events_actor_agency": ["actor_agency", "pos"],
    "ix_audit_events_occurred_at": ["occurred_at"],
    "ix_audit_events_actor_client_id": ["actor_client_id"],
    "ix_audit_events_actor_user_id": ["actor_user_id"],
    "ix_audit_events_action": ["action"],
}


def upgrade() -> None:
    for name in INDEXES:
        op.drop_index(name, table_name="audit_events")


def downgrade() -> None:
    for name, columns in INDEXES.items():
        op.create_index(name, "audit_events", columns, unique=False)
