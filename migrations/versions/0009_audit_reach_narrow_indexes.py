"""audit reach index: refusals and a referral's events get narrower indexes

Revision ID: 0009
Revises: 0008

The lists now walk one agency's rows of audit_event_agencies in seq order (the primary key) and
test the copied filter columns as they go, so two of 0007's indexes cost the sequencer more than
they save. `outcome` has two values and nearly every event is allowed: an index of refusals only
(`outcome = 'denied'`) finds those, and a walk of the reach finds the allowed at once. A
referral's events are indexed once, under '*' (an agency's share of them is then a probe of the
primary key per event), instead of under every agency that reaches them.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

TABLE = "audit_event_agencies"
OLD = {
    "ix_audit_event_agencies_outcome": (["agency", "outcome", "seq"], None),
    "ix_audit_event_agencies_referral_id": (
        ["agency", "referral_id", "seq"],
        "referral_id IS NOT NULL",
    ),
}
NEW = {
    "ix_audit_event_agencies_denied": (["agency", "seq"], "outcome = 'denied'"),
    "ix_audit_event_agencies_referral_id": (
        ["referral_id", "seq"],
        "agency = '*' AND referral_id IS NOT NULL",
    ),
}


def _swap(
    drop: dict[str, tuple[list[str], str | None]], create: dict[str, tuple[list[str], str | None]]
) -> None:
    dialect = op.get_bind().dialect.name
    for name in drop:
        op.drop_index(name, table_name=TABLE)
    for name, (columns, where) in create.items():
        predicate = {} if where is None else {f"{dialect}_where": sa.text(where)}
        op.create_index(name, TABLE, columns, unique=False, **predicate)


def upgrade() -> None:
    _swap(OLD, NEW)


def downgrade() -> None:
    _swap(NEW, OLD)
