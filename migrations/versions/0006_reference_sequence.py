"""readable references from a sequence on PostgreSQL: creates no longer queue on a counter row

Revision ID: 0006
Revises: 0005

The per-year counter row was updated by every creating transaction and stayed locked until it
committed, so concurrent creates ran one at a time. A sequence hands out numbers without a lock
(a rolled-back create leaves a gap, which references may have). It starts after the highest
number used so far, so no reference repeats. SQLite, one writer at a time anyway, keeps the
counter table.
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("CREATE SEQUENCE referral_reference_seq AS bigint START WITH 1")
    op.execute(
        "SELECT setval('referral_reference_seq', "
        "(SELECT COALESCE(max(last), 0) + 1 FROM reference_counters), false)"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    # The counter goes on from the sequence, so a later create repeats no reference.
    op.execute(
        "INSERT INTO reference_counters (year, last) "
        "SELECT EXTRACT(YEAR FROM now())::int, last_value FROM referral_reference_seq "
        "ON CONFLICT (year) DO UPDATE SET last = GREATEST(reference_counters.last, EXCLUDED.last)"
    )
    op.execute("DROP SEQUENCE referral_reference_seq")
