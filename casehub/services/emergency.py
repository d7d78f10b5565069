"""Emergency (break-glass) access (CONTRACT §10): read-only sight of a matched child's referrals
held by another agency, granted at once for four hours, and the partnership auditors' review of
every one.

The sight itself is one share per referral carrying `emergency_access_id`, so visibility is
decided where every other access is (casehub.services.policy): read-only whatever the share
says, audited with basis `emergency:<id>`, and gone when the share expires with the grant or is
ended (early, by either side, or by the holder revoking or replacing that one share).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from casehub import audit
from casehub.auth.actor import Actor
from casehub.errors import Conflict, Forbidden, InsufficientScope, NotFound, ValidationFailed
from casehub.models import EmergencyAccess, Referral, Share
from casehub.services import events, matching
from casehub.services.pagination import keyset_page

LIFETIME = timedelta(hours=4)
REVIEW_OVERDUE_AFTER = timedelta(hours=72)
MIN_REASON_LENGTH = 20
# The kinds of agency whose duties may call for sight of another agency's records at once.
EMERGENCY_KINDS = ("police", "local_authority")
EMERGENCY_SCOPE = "referrals:emergency"
HOLDER_SCOPE = "referrals:share"
REVIEW_SCOPE = "audit:read:all"
RESOURCE = "emergency_access"
# What every share an emergency access makes records as its basis (CONTRACT §4 vocabulary).
ARTICLE_6 = "vital_interests"
CONDITION = "uk_gdpr_9_2_c_vital_interests"
GATEWAY = "Emergency access (break-glass), CONTRACT §10"
CONSENT_STATUS = "not_possible"
CONSENT_RATIONALE = (
    "Emergency access: the requesting agency judged the child's safety to be at immediate risk, "
    "with no time to seek consent or the holder's decision; reviewed afterwards by the "
    "partnership's auditors."
)
ENDED_EARLY = "Emergency access ended early by {agency}."
REVIEW_OUTCOMES = ("justified", "not_justified")
REVIEW_STATUSES = ("pending", "reviewed")


# -- what callers see ---------------------------------------------------------------------------
def access_status(access: EmergencyAccess, now: datetime) -> str:
    """`ended` (early, by either side), `expired` (its four hours are over) or `active`."""
    if access.ended_at is not None:
        return "ended"
    if access.expires_at <= now:
        return "expired"
    return "active"


def is_overdue(access: EmergencyAccess, now: datetime) -> bool:
    return access.review_status == "pending" and now - access.created_at > REVIEW_OVERDUE_AFTER


@dataclass(frozen=True)
class Seen:
    """An emergency access as one caller sees it, at one moment."""

    access: EmergencyAccess
    now: datetime


# -- granting -----------------------------------------------------------------------------------
def _refuse(session: Session, actor: Actor, action: str, resource_id: object = None) -> None:
    audit.record(
        session,
        actor,
        action,
        outcome="denied",
        resource_type=RESOURCE,
        resource_id=resource_id,
        purpose=actor.purpose,
    )


def _open_shares(
    session: Session, referral_ids: Sequence[uuid.UUID], agency: str, now: datetime
) -> set[uuid.UUID]:
    """The referrals among these that `agency` holds an open share of; an expired one is
    closed on the way (ended at its expiry), as casehub.services.shares does."""
    rows = session.execute(
        select(Share).where(
            Share.referral_id.in_(list(referral_ids)),
            Share.agency_code == agency,
            Share.ended_at.is_(None),
        )
    ).scalars()
    held: set[uuid.UUID] = set()
    for share in rows:
        if share.expires_at is not None and share.expires_at <= now:
            share.ended_at = share.expires_at
        else:
            held.add(share.referral_id)
    session.flush()
    return held


def grant_emergency_access(
    session: Session, *, actor: Actor, data: dict[str, Any], now: datetime
) -> EmergencyAccess:
    """Break the glass: one read-only share of each discoverable referral that the matched
    agency holds about the matched child, for four hours, at once; the holder is told."""
    action = "emergency_access.grant"
    if actor.agency_kind not in EMERGENCY_KINDS:
        _refuse(session, actor, action)
        raise Forbidden("Emergency access is for police and local-authority agencies only.")
    try:
        match = matching.usable_match(session, actor=actor, match_id=data["match_id"], now=now)
        subject_ids = matching.matched_subjects(match, data["agency"])
    except ValidationFailed:
        _refuse(session, actor, action)  # another agency's or a stale match: worth an auditor's eye
        raise
    holder = data["agency"]
    found = matching.held_referrals(session, agency=holder, subject_ids=subject_ids)
    if not found:
        raise Conflict(
            "The agency no longer holds a referral about the matched child that can be opened."
        )
    already = _open_shares(session, found, actor.agency, now)
    opened = [r for r in found if r not in already]
    if not opened:
        raise Conflict(
            "The caller's agency already has an active share of every referral the agency "
            "holds about the matched child: no emergency access is needed."
        )
    referrals = session.execute(
        select(Referral.id, Referral.subject_id, Referral.created_at, Referral.updated_at)
        .where(Referral.id.in_(opened))
        .order_by(Referral.created_at, Referral.id)
    ).all()
    access = EmergencyAccess(
        id=uuid.uuid4(),
        match_id=match.id,
        agency_code=actor.agency,
        holder_agency=holder,
        reason=data["reason"],
        purpose=data["purpose"],
        referral_ids=[str(r.id) for r in referrals],
        subject_ids=sorted({str(r.subject_id) for r in referrals}),
        created_at=now,
        created_by_client_id=actor.client_id,
        created_by_user_id=actor.user_id,
        expires_at=now + LIFETIME,
        review_status="pending",
    )
    session.add(access)
    session.flush()
    session.add_all(
        Share(
            referral_id=r.id,
            referral_created_at=r.created_at,
            referral_updated_at=r.updated_at,
            agency_code=actor.agency,
            access="read",
            purpose=data["purpose"],
            necessity=data["reason"],
            article_6=ARTICLE_6,
            condition=CONDITION,
            gateway=GATEWAY,
            consent_status=CONSENT_STATUS,
            consent_rationale=CONSENT_RATIONALE,
            expires_at=access.expires_at,
            created_at=now,
            created_by_agency=actor.agency,
            created_by_client_id=actor.client_id,
            created_by_user_id=actor.user_id,
            emergency_access_id=access.id,
        )
        for r in referrals
    )
    session.flush()
    for r in referrals:
        # One event per referral, naming it: the holder's `audit:read` reaches each of them.
        audit.record(
            session,
            actor,
            action,
            resource_type=RESOURCE,
            resource_id=access.id,
            referral_id=r.id,
            subject_ids=[r.subject_id],
            basis=f"emergency:{access.id}",
            purpose=actor.purpose or access.purpose,
        )
    events.emit(
        session,
        type="emergency_access.granted",
        recipients={holder},
        actor=actor,
        data={"emergency_access_id": access.id},
        now=now,
    )
    return access


# -- reading and ending -------------------------------------------------------------------------
def _party_access(
    session: Session, *, actor: Actor, emergency_access_id: uuid.UUID
) -> EmergencyAccess:
    """The emergency access if the caller's agency broke the glass or holds what it opened;
    otherwise 404, audited as a refusal, the same as for an id that names nothing."""
    access = session.get(EmergencyAccess, emergency_access_id)
    if access is None or actor.agency not in (access.agency_code, access.holder_agency):
        audit.record(
            session,
            actor,
            "access.denied",
            outcome="denied",
            resource_type=RESOURCE,
            resource_id=emergency_access_id,
            purpose=actor.purpose,
        )
        raise NotFound("No such emergency access.")
    return access


def _basis(access: EmergencyAccess, actor: Actor) -> tuple[str, str]:
    """The caller's basis and default purpose: the grant itself, or holding the referrals."""
    if actor.agency == access.agency_code:
        return f"emergency:{access.id}", actor.purpose or access.purpose
    return "lead", actor.purpose or "case_work"


def get_emergency_access(
    session: Session, *, actor: Actor, emergency_access_id: uuid.UUID, now: datetime
) -> Seen:
    action = "emergency_access.read"
    access = _party_access(session, actor=actor, emergency_access_id=emergency_access_id)
    basis, purpose = _basis(access, actor)
    audit.record(
        session,
        actor,
        action,
        resource_type=RESOURCE,
        resource_id=access.id,
        basis=basis,
        purpose=purpose,
    )
    return Seen(access, now)


def end_emergency_access(
    session: Session, *, actor: Actor, emergency_access_id: uuid.UUID, now: datetime
) -> Seen:
    """End it early: every share it carries ends now, as a revocation does. For the agency that
    broke the glass (`referrals:emergency`) and the holder (`referrals:share`)."""
    action = "emergency_access.end"
    access = _party_access(session, actor=actor, emergency_access_id=emergency_access_id)
    needed = EMERGENCY_SCOPE if actor.agency == access.agency_code else HOLDER_SCOPE
    if not actor.has_scope(needed):
        _refuse(session, actor, action, access.id)
        raise InsufficientScope(
            f"Ending this emergency access needs the scope {needed}.",
            headers={
                "WWW-Authenticate": (
                    f'Bearer realm="casehub", error="insufficient_scope", scope="{needed}"'
                )
            },
        )
    # Serialise with a concurrent end or a holder's revocation (PostgreSQL; SQLite has one writer).
    session.refresh(access, with_for_update=True)
    status = access_status(access, now)
    if status != "active":
        raise Conflict(f"This emergency access has already {status}.")
    access.ended_at = now
    access.ended_by_agency = actor.agency
    shares = list(
        session.execute(
            select(Share)
            .where(Share.emergency_access_id == access.id, Share.ended_at.is_(None))
            .order_by(Share.referral_created_at, Share.referral_id)
        ).scalars()
    )
    reason = ENDED_EARLY.format(agency=actor.agency)
    for share in shares:
        share.revoked_at = now
        share.ended_at = now
        share.revoked_reason = reason
    session.flush()
    basis, purpose = _basis(access, actor)
    subjects = dict(
        session.execute(
            select(Referral.id, Referral.subject_id).where(
                Referral.id.in_([s.referral_id for s in shares])
            )
        ).all()
    )
    for share in shares:
        audit.record(
            session,
            actor,
            action,
            resource_type=RESOURCE,
            resource_id=access.id,
            referral_id=share.referral_id,
            subject_ids=[subjects[share.referral_id]] if share.referral_id in subjects else [],
            basis=basis,
            purpose=purpose,
        )
        # The other side hears that the sight is gone, as for any revoked share.
        events.emit(
            session,
            type="share.revoked",
            recipients={access.agency_code, access.holder_agency},
            actor=actor,
            data={"referral_id": share.referral_id, "share_id": share.id},
            now=now,
        )
    if not shares:
        audit.record(
            session,
            actor,
            action,
            resource_type=RESOURCE,
            resource_id=access.id,
            basis=basis,
            purpose=purpose,
        )
    return Seen(access, now)


def share_ended(
    session: Session, *, emergency_access_id: uuid.UUID, by_agency: str, now: datetime
) -> None:
    """One share an emergency access carries was revoked or replaced (casehub.services.shares):
    when it carried the last one still open, the emergency access has ended too."""
    still_open = session.execute(
        select(func.count()).where(
            Share.emergency_access_id == emergency_access_id,
            Share.ended_at.is_(None),
            Share.revoked_at.is_(None),
        )
    ).scalar_one()
    if still_open:
        return
    access = session.get(EmergencyAccess, emergency_access_id, with_for_update=True)
    if access is not None and access_status(access, now) == "active":
        access.ended_at = now
        access.ended_by_agency = by_agency
        session.flush()


# -- review -------------------------------------------------------------------------------------
def _record_review_read(session: Session, actor: Actor, action: str, **fields: Any) -> None:
    audit.record(
        session, actor, action, basis=REVIEW_SCOPE, purpose=actor.purpose or "audit", **fields
    )


def list_reviews(
    session: Session,
    *,
    actor: Actor,
    status: str | None,
    limit: int,
    cursor: str | None,
    now: datetime,
) -> tuple[list[Seen], str | None]:
    """Every emergency access, oldest first (created_at, id), optionally only those pending or
    reviewed (a range of ix_emergency_accesses_review_order)."""
    stmt = select(EmergencyAccess)
    if status is not None:
        stmt = stmt.where(EmergencyAccess.review_status == status)
    rows, next_cursor = keyset_page(
        session,
        stmt,
        keys=[EmergencyAccess.created_at, EmergencyAccess.id],
        limit=limit,
        cursor=cursor,
    )
    _record_review_read(session, actor, "emergency_access.review_list", resource_type=RESOURCE)
    return [Seen(row, now) for row in rows], next_cursor


def review_emergency_access(
    session: Session,
    *,
    actor: Actor,
    emergency_access_id: uuid.UUID,
    outcome: str,
    note: str,
    now: datetime,
) -> Seen:
    """Record a partnership auditor's judgement of one emergency access; once only."""
    access = session.get(EmergencyAccess, emergency_access_id, with_for_update=True)
    if access is None:
        raise NotFound("No such emergency access.")
    if actor.agency in (access.agency_code, access.holder_agency):
        _refuse(session, actor, "emergency_access.review", access.id)
        raise Forbidden("An emergency access is reviewed by an auditor of neither agency in it.")
    if access.review_status != "pending":
        raise Conflict("This emergency access has already been reviewed.")
    access.review_status = "reviewed"
    access.review_outcome = outcome
    access.review_note = note
    access.reviewed_at = now
    access.reviewed_by_client_id = actor.client_id
    access.reviewed_by_user_id = actor.user_id
    session.flush()
    _record_review_read(
        session,
        actor,
        "emergency_access.review",
        resource_type=RESOURCE,
        resource_id=access.id,
    )
    return Seen(access, now)


def review_backlog(session: Session, *, now: datetime) -> tuple[int, int]:
    """(pending, overdue): emergency accesses waiting for review, and those of them granted
    more than 72 hours ago. One range of ix_emergency_accesses_review_order."""
    pending, overdue = session.execute(
        select(
            func.count(),
            func.coalesce(
                func.sum(
                    case((EmergencyAccess.created_at < now - REVIEW_OVERDUE_AFTER, 1), else_=0)
                ),
                0,
            ),
        ).where(EmergencyAccess.review_status == "pending")
    ).one()
    return int(pending), int(overdue)
