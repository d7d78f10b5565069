"""Statistics (CONTRACT §12): counts of referrals computed ahead of the questions."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Float, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from casehub.db import Base


class StatisticsCell(Base):
    """How many (not erased) referrals fall in one cell: a calendar month of creation (UTC) and
    the values of the dimensions its `kind` names ('' in the others, so the cell is its own
    key). A referral counts once in each of its categories and indicators. Written only by
    casehub.services.statistics.refresh_statistics."""

    __tablename__ = "statistics_cells"

    kind: Mapped[str] = mapped_column(String(40), primary_key=True)
    month: Mapped[str] = mapped_column(String(7), primary_key=True)  # YYYY-MM
    category: Mapped[str] = mapped_column(String(40), primary_key=True)
    indicator: Mapped[str] = mapped_column(String(20), primary_key=True)
    lead_agency: Mapped[str] = mapped_column(String(40), primary_key=True)
    risk_level: Mapped[str] = mapped_column(String(10), primary_key=True)
    status: Mapped[str] = mapped_column(String(20), primary_key=True)
    referrals: Mapped[int] = mapped_column(Integer)


class StatisticsRefresh(Base):
    """The latest refresh of the cells (one row): when, over how many referrals, how long."""

    __tablename__ = "statistics_refreshes"

    refreshed_at: Mapped[datetime] = mapped_column(primary_key=True)
    referrals: Mapped[int] = mapped_column(Integer)
    seconds: Mapped[float] = mapped_column(Float)
