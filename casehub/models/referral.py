"""Referrals, their history, notes and information-sharing decisions (shares)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    Sequence,
    String,
    Text,
    text,
    true,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from casehub.db import Base, new_id, utcnow


class Referral(Base):
    __tablename__ = "referrals"
    __table_args__ = (
        Index("ix_referrals_created_at_id", "created_at", "id"),
        Index("ix_referrals_lead_agency_created_at", "lead_agency", "created_at"),
        # What a lead changed since a moment (`updated_since`), read index-only on PostgreSQL
        # and sorted into list order afterwards (migration 0012).
        Index(
            "ix_referrals_lead_agency_updated_at",
            "lead_agency",
            "updated_at",
            postgresql_include=["created_at", "id"],
        ),
        # Retention (CONTRACT §11): closed referrals not yet erased, oldest closure first.
        Index(
            "ix_referrals_retention",
            "closed_at",
            postgresql_where=text("closed_at IS NOT NULL AND erased_at IS NULL"),
            sqlite_where=text("closed_at IS NOT NULL AND erased_at IS NULL"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    reference: Mapped[str] = mapped_column(String(20), unique=True)
    subject_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("subjects.id"), index=True)
    lead_agency: Mapped[str] = mapped_column(ForeignKey("agencies.code"))
    created_by_agency: Mapped[str] = mapped_column(ForeignKey("agencies.code"))
    created_by_client_id: Mapped[str] = mapped_column(String(64))
    created_by_user_id: Mapped[uuid.UUID | None]
    summary: Mapped[str] = mapped_column(String(500))
    narrative: Mapped[str | None] = mapped_column(Text)
    observed_at: Mapped[datetime]
    location_description: Mapped[str | None] = mapped_column(String(500))
    location_postcode: Mapped[str | None] = mapped_column(String(10))
    location_transport_hub: Mapped[str | None] = mapped_column(String(200))
    risk_level: Mapped[str] = mapped_column(String(10), index=True)
    immediate_action: Mapped[str | None] = mapped_column(String(1000))
    status: Mapped[str] = mapped_column(String(20), index=True)
    # False: never matched (CONTRACT §9), e.g. during a covert investigation; set by the lead.
    discoverable: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    # When the referral last moved to `closed` (NULL while open): its retention clock.
    closed_at: Mapped[datetime | None]
    # Legal hold (CONTRACT §11): while set, retention never erases the referral.
    legal_hold_reason: Mapped[str | None] = mapped_column(String(2000))
    legal_hold_at: Mapped[datetime | None]
    legal_hold_by_agency: Mapped[str | None] = mapped_column(String(40))
    # Set when retention erased the referral's content: the row is then its tombstone.
    erased_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    version: Mapped[int] = mapped_column(Integer, default=1)

    category_rows: Mapped[list[ReferralCategory]] = relationship(
        cascade="all, delete-orphan", passive_deletes=True, order_by="ReferralCategory.position"
    )
    indicator_rows: Mapped[list[ReferralIndicator]] = relationship(
        cascade="all, delete-orphan", passive_deletes=True, order_by="ReferralIndicator.position"
    )

    __mapper_args__ = {"version_id_col": version}

    @property
    def categories(self) -> list[str]:
        return [row.category for row in self.category_rows]

    @property
    def indicators(self) -> list[str]:
        return [row.code for row in self.indicator_rows]


class ReferralCategory(Base):
    __tablename__ = "referral_categories"
    __table_args__ = (Index("ix_referral_categories_category", "category", "referral_id"),)

    referral_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("referrals.id", ondelete="CASCADE"), primary_key=True
    )
    category: Mapped[str] = mapped_column(String(40), primary_key=True)
    position: Mapped[int] = mapped_column(Integer)


class ReferralIndicator(Base):
    __tablename__ = "referral_indicators"
    __table_args__ = (Index("ix_referral_indicators_code", "code", "referral_id"),)

    referral_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("referrals.id", ondelete="CASCADE"), primary_key=True
    )
    code: Mapped[str] = mapped_column(String(20), primary_key=True)
    position: Mapped[int] = mapped_column(Integer)


# PostgreSQL's source of reference numbers (migration 0006): no row lock, so creates do not
# queue. Migrations are the schema's source; this names it for queries.
REFERENCE_SEQUENCE = Sequence("referral_reference_seq")


class ReferenceCounter(Base):
    """The last number used for readable references (CH-2026-000123), per year: SQLite's source
    of reference numbers (PostgreSQL uses REFERENCE_SEQUENCE)."""

    __tablename__ = "reference_counters"

    year: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    last: Mapped[int] = mapped_column(Integer)


class ReferralHistory(Base):
    """Every status change and transfer of lead, kept forever."""

    __tablename__ = "referral_history"
    __table_args__ = (Index("ix_referral_history_referral_id", "referral_id", "occurred_at"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    referral_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("referrals.id"))
    kind: Mapped[str] = mapped_column(String(20))  # created | transition | transfer
    from_status: Mapped[str | None] = mapped_column(String(20))
    to_status: Mapped[str | None] = mapped_column(String(20))
    from_agency: Mapped[str | None] = mapped_column(String(40))
    to_agency: Mapped[str | None] = mapped_column(String(40))
    reason: Mapped[str | None] = mapped_column(String(2000))
    lawful_basis: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    actor_agency: Mapped[str] = mapped_column(String(40))
    actor_client_id: Mapped[str] = mapped_column(String(64))
    actor_user_id: Mapped[uuid.UUID | None]
    occurred_at: Mapped[datetime] = mapped_column(default=utcnow)


class Note(Base):
    """Append-only: a correction is a new note."""

    __tablename__ = "notes"
    __table_args__ = (Index("ix_notes_referral_id_created_at", "referral_id", "created_at", "id"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    referral_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("referrals.id"))
    body: Mapped[str] = mapped_column(Text)
    visibility: Mapped[str] = mapped_column(String(10))  # shared | agency
    author_agency: Mapped[str] = mapped_column(ForeignKey("agencies.code"))
    author_client_id: Mapped[str] = mapped_column(String(64))
    author_user_id: Mapped[uuid.UUID | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Share(Base):
    """An information-sharing decision: who may see a referral, why, and on what lawful basis.

    `ended_at` is set when a share is revoked or found expired; at most one share per referral
    and agency is open (`ended_at IS NULL`), which a partial unique index enforces.
    """

    __tablename__ = "shares"
    __table_args__ = (
        Index(
            "uq_shares_open_referral_agency",
            "referral_id",
            "agency_code",
            unique=True,
            postgresql_where=text("ended_at IS NULL"),
            sqlite_where=text("ended_at IS NULL"),
        ),
        Index("ix_shares_agency_code_referral_id", "agency_code", "referral_id"),
        # An agency's open shares in the order referral lists are read (created_at, id), so a
        # page of the referrals shared with it is one range of this index.
        Index(
            "ix_shares_open_agency_order",
            "agency_code",
            "referral_created_at",
            "referral_id",
            postgresql_where=text("ended_at IS NULL"),
            sqlite_where=text("ended_at IS NULL"),
        ),
        # An agency's open shares by when their referral last changed (`updated_since`),
        # carrying what the list needs so that the range is read index-only on PostgreSQL.
        Index(
            "ix_shares_open_agency_updated",
            "agency_code",
            "referral_updated_at",
            postgresql_include=["referral_created_at", "referral_id", "revoked_at", "expires_at"],
            postgresql_where=text("ended_at IS NULL"),
            sqlite_where=text("ended_at IS NULL"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    referral_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("referrals.id"), index=True)
    agency_code: Mapped[str] = mapped_column(ForeignKey("agencies.code"))
    # A copy of the referral's created_at (which never changes), for lists in its order.
    referral_created_at: Mapped[datetime]
    # A copy of the referral's updated_at, kept equal by a trigger on referrals (migration 0012)
    # whoever updates it; written here when the share is made.
    referral_updated_at: Mapped[datetime]
    access: Mapped[str] = mapped_column(String(10))  # read | contribute
    # What the recipient sees (CONTRACT §11): everything, or the summary profile's fields only.
    profile: Mapped[str] = mapped_column(String(10), default="full", server_default="full")
    purpose: Mapped[str] = mapped_column(String(40))
    necessity: Mapped[str] = mapped_column(String(2000))
    article_6: Mapped[str] = mapped_column(String(40))
    condition: Mapped[str | None] = mapped_column(String(60))
    gateway: Mapped[str | None] = mapped_column(String(200))
    consent_status: Mapped[str] = mapped_column(String(20))
    consent_rationale: Mapped[str | None] = mapped_column(String(2000))
    expires_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by_agency: Mapped[str] = mapped_column(String(40))
    created_by_client_id: Mapped[str] = mapped_column(String(64))
    created_by_user_id: Mapped[uuid.UUID | None]
    acknowledged_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    revoked_reason: Mapped[str | None] = mapped_column(String(2000))
    ended_at: Mapped[datetime | None]
    # Set on the shares that carry an emergency access (CONTRACT §10): read-only, four hours,
    # audited with basis `emergency:<id>`; made only by casehub.services.emergency.
    emergency_access_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("emergency_accesses.id"), index=True
    )
