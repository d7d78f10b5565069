"""Joining the dots (CONTRACT §9, §10 and §11): existence-only matches, the access requests
they lead to, decisions not to share, and emergency (break-glass) access with its review."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from casehub.db import Base, new_id, utcnow


class Match(Base):
    """One answer of `POST /v1/matches`, kept so that its `match_id` can be used for 24 hours by
    the agency that asked (never by another), to request access or break the glass.

    `found` is what the answer was worked out from, per other agency: `{agency: {"confidence":
    …, "subject_ids": [...]}}`. It never leaves the service: the asker saw only agencies."""

    __tablename__ = "matches"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    agency_code: Mapped[str] = mapped_column(ForeignKey("agencies.code"))
    client_id: Mapped[str] = mapped_column(String(64))
    user_id: Mapped[uuid.UUID | None]
    found: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(index=True)


class AccessRequest(Base):
    """An agency's request, after a match, that another agency share what it holds."""

    __tablename__ = "access_requests"
    __table_args__ = (
        Index("ix_access_requests_to_order", "to_agency", "created_at", "id"),
        Index("ix_access_requests_to_status_order", "to_agency", "status", "created_at", "id"),
        Index("ix_access_requests_from_order", "from_agency", "created_at", "id"),
        Index("ix_access_requests_from_status_order", "from_agency", "status", "created_at", "id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    match_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("matches.id"), index=True)
    from_agency: Mapped[str] = mapped_column(ForeignKey("agencies.code"))
    to_agency: Mapped[str] = mapped_column(ForeignKey("agencies.code"))
    purpose: Mapped[str] = mapped_column(String(40))
    necessity: Mapped[str] = mapped_column(String(2000))
    urgency: Mapped[str] = mapped_column(String(10))  # routine | urgent
    status: Mapped[str] = mapped_column(String(10))  # pending | shared | declined | withdrawn
    # The holder's referrals the request concerns (shown to the holder, never the requester).
    referral_ids: Mapped[list[str]] = mapped_column(JSON, default=list)
    subject_ids: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by_client_id: Mapped[str] = mapped_column(String(64))
    created_by_user_id: Mapped[uuid.UUID | None]
    decided_at: Mapped[datetime | None]
    decided_by_client_id: Mapped[str | None] = mapped_column(String(64))
    decided_by_user_id: Mapped[uuid.UUID | None]
    decision_reason: Mapped[str | None] = mapped_column(String(2000))
    share_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("shares.id"))
    version: Mapped[int] = mapped_column(Integer, default=1)

    __mapper_args__ = {"version_id_col": version}


class SharingDecision(Base):
    """A lead's recorded decision not to share a referral with an agency (golden rule 7), made
    directly or by declining an access request. Append-only (triggers of migration 0015)."""

    __tablename__ = "sharing_decisions"
    __table_args__ = (
        Index("ix_sharing_decisions_referral_order", "referral_id", "created_at", "id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    referral_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("referrals.id"))
    agency_code: Mapped[str] = mapped_column(ForeignKey("agencies.code"))  # not shared with
    reason: Mapped[str] = mapped_column(String(2000))
    purpose: Mapped[str] = mapped_column(String(40))  # the purpose the share would have served
    access_request_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("access_requests.id"))
    decided_by_agency: Mapped[str] = mapped_column(String(40))
    decided_by_client_id: Mapped[str] = mapped_column(String(64))
    decided_by_user_id: Mapped[uuid.UUID | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class EmergencyAccess(Base):
    """Break-glass: read-only sight of a matched child's referrals held by one agency, for four
    hours, granted at once and reviewed afterwards by a partnership auditor.

    The sight itself is one share per referral (`Share.emergency_access_id`), so visibility is
    still decided where every other access is (casehub.services.policy), read-only, and ends
    with the share's `expires_at` or when it is ended early."""

    __tablename__ = "emergency_accesses"
    __table_args__ = (
        Index("ix_emergency_accesses_review_order", "review_status", "created_at", "id"),
        Index("ix_emergency_accesses_agency_order", "agency_code", "created_at", "id"),
        Index("ix_emergency_accesses_holder_order", "holder_agency", "created_at", "id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    match_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("matches.id"))
    agency_code: Mapped[str] = mapped_column(ForeignKey("agencies.code"))  # who broke the glass
    holder_agency: Mapped[str] = mapped_column(ForeignKey("agencies.code"))
    reason: Mapped[str] = mapped_column(String(2000))
    purpose: Mapped[str] = mapped_column(String(40))
    referral_ids: Mapped[list[str]] = mapped_column(JSON, default=list)
    subject_ids: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by_client_id: Mapped[str] = mapped_column(String(64))
    created_by_user_id: Mapped[uuid.UUID | None]
    expires_at: Mapped[datetime]
    ended_at: Mapped[datetime | None]
    ended_by_agency: Mapped[str | None] = mapped_column(String(40))
    review_status: Mapped[str] = mapped_column(String(10), default="pending")  # | reviewed
    reviewed_at: Mapped[datetime | None]
    reviewed_by_client_id: Mapped[str | None] = mapped_column(String(64))
    reviewed_by_user_id: Mapped[uuid.UUID | None]
    review_outcome: Mapped[str | None] = mapped_column(String(20))  # justified | not_justified
    review_note: Mapped[str | None] = mapped_column(String(2000))
    version: Mapped[int] = mapped_column(Integer, default=1)

    __mapper_args__ = {"version_id_col": version}
