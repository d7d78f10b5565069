"""Partnership statistics (CONTRACT §12): counts of referrals, small numbers suppressed, never a
record.

Where each step happens:
- counting: in SQL. `refresh_statistics` (run by `casehub statistics refresh`, from cron or a
  Kubernetes CronJob) recomputes `statistics_cells` from the live tables with INSERT … SELECT …
  GROUP BY: per calendar month of creation (UTC) and per pair of the other dimensions. A
  question (`referral_statistics`) sums the cells of one kind in SQL (GROUP BY again) — tens of
  thousands of cells at a million referrals, where counting the live tables for
  category by indicator joins some eight million rows (bench/statistics.py measures both).
- primary suppression (a count from 1 to 4 answers null): in the same SQL statement, so a small
  count never reaches Python.
- secondary suppression: in Python, over the aggregated cells (at most a few thousand: 15
  categories by 50 indicators is the largest table), because it is an iteration to a fixed
  point over rows and columns that SQL would express only as a recursive query.

Nothing on the path of a create, a change or an erasure writes the cells (issue 10 removed a hot
counter row that every create queued on): answers are as of the last refresh, which each answer
states (`as_of`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    case,
    delete,
    func,
    insert,
    literal,
    select,
    text,
    union_all,
)
from sqlalchemy.orm import Session

from casehub import audit
from casehub.auth.actor import Actor
from casehub.errors import ValidationFailed
from casehub.models import Agency, Referral, ReferralCategory, ReferralIndicator
from casehub.models.statistics import StatisticsCell, StatisticsRefresh

PURPOSE = "statistics"
AUDIT_ACTION = "statistics.read"
SMALLEST_SHOWN = 5  # a count from 1 to 4 is suppressed
MAX_DIMENSIONS = 2

# The dimensions a question may group by, in the order the contract lists them.
DIMENSIONS = (
    "category",
    "indicator",
    "month",
    "lead_agency_kind",
    "area",
    "risk_level",
    "status",
)
MULTI_VALUED = frozenset({"category", "indicator"})  # a referral has one or more of these
# The cell column each dimension is read from; the lead agency's kind and area are looked up
# when asked (an agency's area may change; its referrals follow it).
COLUMN = {
    "category": "category",
    "indicator": "indicator",
    "month": "month",
    "lead_agency_kind": "lead_agency",
    "area": "lead_agency",
    "risk_level": "risk_level",
    "status": "status",
}
REFERRAL_COLUMNS = ("lead_agency", "risk_level", "status")
# The kinds of cell a refresh writes: the dimensions each one keeps besides the month.
KINDS: dict[str, tuple[str, ...]] = {
    "referral": REFERRAL_COLUMNS,
    **{f"{multi}.{other}": (multi, other) for multi in ("category", "indicator")
       for other in REFERRAL_COLUMNS},
    "category.indicator": ("category", "indicator"),
}  # fmt: skip


# -- refreshing the cells --------------------------------------------------------------------
def _month(column: Any, dialect: str) -> ColumnElement[str]:
    """YYYY-MM of a timestamp, in UTC."""
    if dialect == "postgresql":
        return func.to_char(func.timezone("UTC", column), "YYYY-MM")
    return func.strftime("%Y-%m", column)  # SQLite stores naive UTC


def _cells_of(kind: str, dialect: str) -> Select[Any]:
    """SELECT the cells of one kind from the live tables: not erased referrals, counted once per
    category and per indicator they carry."""
    keeps = KINDS[kind]
    sources: dict[str, Any] = {
        "lead_agency": Referral.lead_agency,
        "risk_level": Referral.risk_level,
        "status": Referral.status,
        "category": ReferralCategory.category,
        "indicator": ReferralIndicator.code,
    }
    month = _month(Referral.created_at, dialect)
    columns = [literal(kind).label("kind"), month.label("month")]
    grouped: list[Any] = [month]
    for name in ("category", "indicator", *REFERRAL_COLUMNS):
        if name in keeps:
            columns.append(sources[name].label(name))
            grouped.append(sources[name])
        else:
            columns.append(literal("").label(name))
    stmt = select(*columns, func.count().label("referrals")).select_from(Referral)
    if "category" in keeps:
        stmt = stmt.join(ReferralCategory, ReferralCategory.referral_id == Referral.id)
    if "indicator" in keeps:
        stmt = stmt.join(ReferralIndicator, ReferralIndicator.referral_id == Referral.id)
    return stmt.where(Referral.erased_at.is_(None)).group_by(*grouped)


CELL_COLUMNS = ("kind", "month", "category", "indicator", *REFERRAL_COLUMNS, "referrals")


def refresh_statistics(session: Session, *, now: datetime) -> StatisticsRefresh:
    """Recompute every cell from the live tables, in the caller's transaction (which commits).

    Readers go on reading the previous cells until it commits (PostgreSQL's MVCC; SQLite has one
    writer and readers see the last commit). Two refreshes at once: the second waits for the
    first (the lock below conflicts with itself, not with readers), then recomputes."""
    started = time.perf_counter()
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        session.execute(text("LOCK TABLE statistics_cells IN SHARE ROW EXCLUSIVE MODE"))
    session.execute(delete(StatisticsCell))
    session.execute(delete(StatisticsRefresh))
    # One statement, so one snapshot of the live tables for every kind: an answer and the
    # totals it is suppressed against (other kinds) count exactly the same referrals.
    every_kind = union_all(*(_cells_of(kind, dialect) for kind in KINDS))
    session.execute(insert(StatisticsCell).from_select(CELL_COLUMNS, every_kind))
    counted = session.execute(
        select(func.coalesce(func.sum(StatisticsCell.referrals), 0)).where(
            StatisticsCell.kind == "referral"
        )
    ).scalar_one()
    refresh = StatisticsRefresh(
        refreshed_at=now, referrals=counted, seconds=round(time.perf_counter() - started, 3)
    )
    session.add(refresh)
    session.flush()
    return refresh


# -- answering a question --------------------------------------------------------------------
def kind_for(group_by: Sequence[str]) -> str:
    """The kind of cell that holds every dimension asked (the smallest such kind)."""
    columns = {COLUMN[d] for d in group_by} - {"month"}
    multi = sorted(columns & MULTI_VALUED)
    single = sorted(columns - MULTI_VALUED)
    if not multi:
        return "referral"
    if len(multi) == 2:
        return "category.indicator"
    # risk_level has the fewest values: the fewest cells to sum for a multi-valued one alone.
    return f"{multi[0]}.{single[0] if single else 'risk_level'}"


def _dimension(name: str) -> Any:
    if name == "lead_agency_kind":
        return Agency.kind
    if name == "area":
        return Agency.area
    return getattr(StatisticsCell, COLUMN[name])


def check_question(
    group_by: Sequence[str], start: str | None, end: str | None, *, location: str = "query"
) -> None:
    """422 naming the field: an unknown, repeated or third dimension; `from` after `to`."""
    unknown = [d for d in group_by if d not in DIMENSIONS]
    if unknown:
        raise ValidationFailed.field(
            "group_by",
            f"Unknown dimension {unknown[0]!r}: use up to two of {', '.join(DIMENSIONS)}.",
            location=location,
        )
    if len(set(group_by)) != len(group_by):
        raise ValidationFailed.field("group_by", "A dimension is named twice.", location=location)
    if len(group_by) > MAX_DIMENSIONS:
        raise ValidationFailed.field(
            "group_by", "At most two dimensions at once.", location=location
        )
    if start is not None and end is not None and start > end:
        raise ValidationFailed.field("from", "Must not be after `to`.", location=location)


def check_purpose(session: Session, actor: Actor) -> None:
    """Statistics are consulted for `statistics` only (CONTRACT §5): an aggregate is no case
    work, and a share's purpose would record a justification for something not done. Any other
    declared purpose is refused (422 naming the header) and audited as denied."""
    if actor.purpose in (None, PURPOSE):
        return
    audit.record(session, actor, "access.denied", outcome="denied", resource_type="statistics")
    raise ValidationFailed.field(
        "Purpose-Of-Use",
        "Statistics are consulted with the purpose `statistics` (or none).",
        location="headers",
    )


@dataclass
class Cell:
    values: tuple[str | None, ...]
    count: int | None  # None: suppressed (1 to 4, or suppressed to protect another cell)
    suppressed: bool = False


def _order(value: str | None) -> tuple[bool, str]:
    return (value is None, value or "")


def suppress_secondary(cells: list[Cell], dimensions: int) -> None:
    """Suppress further cells until no suppressed cell can be worked out from a total.

    One dimension: the total (a call without group_by) minus the shown cells would give a lone
    suppressed cell, so the smallest shown cell is suppressed with it. Two dimensions: every row
    and every column (their totals are what one-dimension calls return) with exactly one
    suppressed cell gets its smallest shown cell suppressed too, until nothing changes.
    A cell alone in its other line is passed over while another is left (that line's total is
    the cell itself); ties go to the first cell in answer order. For a multi-valued dimension
    the totals across it are not sums (a referral counts in each of its categories) and reveal
    less; they are treated as sums all the same, which only ever suppresses more."""
    if dimensions == 0:
        return
    lines: list[list[Cell]]
    rows: dict[str | None, list[Cell]] = {}
    columns: dict[str | None, list[Cell]] = {}
    if dimensions == 1:
        lines = [cells]
    else:
        for cell in cells:
            rows.setdefault(cell.values[0], []).append(cell)
            columns.setdefault(cell.values[1], []).append(cell)
        lines = [*rows.values(), *columns.values()]

    def alone_across(cell: Cell, line: list[Cell]) -> bool:
        """Alone in its other line: that line's total would give it away at once."""
        if dimensions == 1:
            return False
        row, column = rows[cell.values[0]], columns[cell.values[1]]
        return len(column if line is row else row) == 1

    changed = True
    while changed:
        changed = False
        for line in lines:
            hidden = sum(1 for c in line if c.suppressed)
            shown = [c for c in line if not c.suppressed]
            if hidden == 1 and shown:
                # The smallest, not alone across if possible; ties: the first in answer order.
                chosen = min(shown, key=lambda c: (alone_across(c, line), c.count or 0))
                chosen.count, chosen.suppressed = None, True
                changed = True


def referral_statistics(
    session: Session,
    *,
    actor: Actor,
    group_by: Sequence[str],
    start: str | None = None,
    end: str | None = None,
) -> dict[str, Any]:
    """Counts of referrals grouped by up to two dimensions over the months `start`..`end`
    (YYYY-MM, both included), as of the last refresh. Audited as `statistics.read`."""
    check_question(group_by, start, end)
    check_purpose(session, actor)
    refreshed = (
        session.execute(
            select(StatisticsRefresh.refreshed_at).order_by(StatisticsRefresh.refreshed_at.desc())
        )
        .scalars()
        .first()
    )
    kind = kind_for(group_by)
    columns = [_dimension(d).label(d) for d in group_by]
    total = func.sum(StatisticsCell.referrals)
    # Primary suppression here: a count under 5 leaves the database as NULL.
    shown_count = case((total < SMALLEST_SHOWN, None), else_=total).label("count")
    stmt = select(*columns, shown_count).where(StatisticsCell.kind == kind)
    if any(d in ("lead_agency_kind", "area") for d in group_by):
        stmt = stmt.join(Agency, Agency.code == StatisticsCell.lead_agency)
    if start is not None:
        stmt = stmt.where(StatisticsCell.month >= start)
    if end is not None:
        stmt = stmt.where(StatisticsCell.month <= end)
    # No referral at all gives no total, as an empty combination gives no cell.
    stmt = stmt.group_by(*columns) if columns else stmt.having(total > 0)
    cells = [
        Cell(
            values=tuple(row[:-1]),
            count=row[-1],
            suppressed=row[-1] is None,
        )
        for row in session.execute(stmt)
    ]
    cells.sort(key=lambda c: tuple(_order(v) for v in c.values))
    suppress_secondary(cells, len(group_by))
    audit.record(
        session,
        actor,
        AUDIT_ACTION,
        resource_type="statistics",
        resource_id=f"{','.join(group_by) or 'total'}:{start or ''}..{end or ''}",
        purpose=PURPOSE,
    )
    return {
        "group_by": list(group_by),
        "from": start,
        "to": end,
        "as_of": refreshed,
        "items": [
            {
                **dict(zip(group_by, c.values, strict=True)),
                "count": c.count,
                "suppressed": c.suppressed,
            }
            for c in cells
        ],
    }
