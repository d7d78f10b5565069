"""retention's erasure of a decision not to share: the one change the append-only rule allows

Revision ID: 0017
Revises: 0016

CONTRACT §11: `casehub retention run` erases a referral's free text, and a decision not to share
(0015, append-only by trigger) holds one: the lead's reason. The triggers now allow exactly one
UPDATE: `reason` set to the erasure placeholder, every other column unchanged, on a decision
whose referral is erased (retention sets `referrals.erased_at` first, in the same transaction).
Anything else, and every DELETE, is still refused: the record that the lead decided not to
share, with whom, for what purpose, by whom and when, stays whole.
"""

from __future__ import annotations

from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

DECISIONS = "sharing_decisions"
ERASED_REASON = "[erased]"  # casehub.services.retention.ERASED
KEPT = (
    "id",
    "referral_id",
    "agency_code",
    "purpose",
    "access_request_id",
    "decided_by_agency",
    "decided_by_client_id",
    "decided_by_user_id",
    "created_at",
)
REFUSAL = "decisions not to share are append-only"

_POSTGRES_GUARD = f"""
CREATE OR REPLACE FUNCTION casehub_decisions_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.reason = '{ERASED_REASON}'
       AND ({", ".join(f"NEW.{c}" for c in KEPT)})
           IS NOT DISTINCT FROM ({", ".join(f"OLD.{c}" for c in KEPT)})
       AND EXISTS (SELECT 1 FROM referrals AS r
                   WHERE r.id = NEW.referral_id AND r.erased_at IS NOT NULL) THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION '{REFUSAL}: % on % refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END $$
"""  # noqa: S608 (constants only)

_POSTGRES_ORIGINAL = f"""
CREATE OR REPLACE FUNCTION casehub_decisions_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '{REFUSAL}: % on % refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END $$
"""

_SQLITE_ERASURE = (
    f"NEW.reason = '{ERASED_REASON}' AND "  # noqa: S608 (constants only)
    + " AND ".join(f"NEW.{c} IS OLD.{c}" for c in KEPT)
    + " AND EXISTS (SELECT 1 FROM referrals WHERE referrals.id = NEW.referral_id "
    "AND referrals.erased_at IS NOT NULL)"
)


def _sqlite_update_trigger(when: str | None) -> None:
    op.execute(f"DROP TRIGGER {DECISIONS}_no_update")
    condition = f"WHEN NOT ({when}) " if when else ""
    op.execute(
        f"CREATE TRIGGER {DECISIONS}_no_update BEFORE UPDATE ON {DECISIONS} {condition}"
        f"BEGIN SELECT RAISE(ABORT, '{REFUSAL}: UPDATE on {DECISIONS} refused'); END"
    )


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_POSTGRES_GUARD)
    else:
        _sqlite_update_trigger(_SQLITE_ERASURE)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_POSTGRES_ORIGINAL)
    else:
        _sqlite_update_trigger(None)
