"""Decisions not to share (CONTRACT §11, golden rule 7): a lead records that it decided not to
share a referral with an agency, directly or by declining an access request. Append-only: there
is no route to change or remove one, and the database refuses UPDATE and DELETE (0015)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from casehub import audit
from casehub.auth.actor import Actor
from casehub.errors import Conflict, ValidationFailed
from casehub.models import Agency, Referral, SharingDecision
from casehub.services.pagination import keyset_page
from casehub.services.referrals import lock_unerased, reach_referral, record_on, require_lead

RESOURCE_TYPE = "sharing_decision"


def _insert(
    session: Session,
    actor: Actor,
    referral_id: uuid.UUID,
    agency: str,
    reason: str,
    purpose: str,
    access_request_id: uuid.UUID | None,
    now: datetime,
) -> SharingDecision:
    decision = SharingDecision(
        referral_id=referral_id,
        agency_code=agency,
        reason=reason,
        purpose=purpose,
        access_request_id=access_request_id,
        decided_by_agency=actor.agency,
        decided_by_client_id=actor.client_id,
        decided_by_user_id=actor.user_id,
        created_at=now,
    )
    session.add(decision)
    session.flush()
    return decision


def add_decision(
    session: Session,
    *,
    actor: Actor,
    referral: Referral,
    agency: str,
    reason: str,
    purpose: str,
    now: datetime,
    access_request_id: uuid.UUID | None = None,
) -> SharingDecision:
    """One decision row and its `decision.create` event (on the referral, so that it is in the
    lead's access report and audit reach). The caller has checked that its agency leads."""
    decision = _insert(session, actor, referral.id, agency, reason, purpose, access_request_id, now)
    audit.record(
        session,
        actor,
        "decision.create",
        resource_type=RESOURCE_TYPE,
        resource_id=decision.id,
        referral_id=referral.id,
        subject_ids=[referral.subject_id],
        basis="lead",
        purpose=actor.purpose or "case_work",
    )
    return decision


def create_decision(
    session: Session, *, actor: Actor, referral_id: uuid.UUID, data: dict[str, Any], now: datetime
) -> SharingDecision:
    """The lead records that it decided not to share this referral with `agency`."""
    view = reach_referral(session, actor=actor, referral_id=referral_id, now=now)
    require_lead(session, view, actor, "decision.create")
    lock_unerased(session, actor, referral_id)
    if data["agency"] == actor.agency:
        raise Conflict("An agency does not decide about sharing with itself.")
    if session.get(Agency, data["agency"]) is None:
        raise ValidationFailed.field("agency", "No such agency.")
    return add_decision(
        session,
        actor=actor,
        referral=view.referral,
        agency=data["agency"],
        reason=data["reason"],
        purpose=data["purpose"],
        now=now,
    )


def list_decisions(
    session: Session,
    *,
    actor: Actor,
    referral_id: uuid.UUID,
    limit: int,
    cursor: str | None,
    now: datetime,
) -> tuple[list[SharingDecision], str | None]:
    """The referral's decisions not to share, oldest first; for its lead only."""
    view = reach_referral(session, actor=actor, referral_id=referral_id, now=now)
    require_lead(session, view, actor, "decision.list")
    stmt = select(SharingDecision).where(SharingDecision.referral_id == referral_id)
    page = keyset_page(
        session,
        stmt,
        keys=[SharingDecision.created_at, SharingDecision.id],
        limit=limit,
        cursor=cursor,
    )
    record_on(session, actor, "decision.list", view)
    return page
