"""Information-sharing decisions: shares, their acknowledgement and revocation, and transfer of
the lead. Each decision records its purpose, necessity, lawful basis and consent position."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from casehub.audit.chain import move_lead_reach
from casehub.auth.actor import Actor
from casehub.errors import Conflict, Forbidden, NotFound, ValidationFailed
from casehub.models import Agency, Referral, ReferralHistory, Share
from casehub.services import emergency, events
from casehub.services.pagination import keyset_page
from casehub.services.referrals import (
    ReferralView,
    _check_version,
    lock_unerased,
    reach_referral,
    record_on,
    require_lead,
)

ARTICLE_6 = (
    "public_task",
    "legal_obligation",
    "vital_interests",
    "legitimate_interests",
    "recognised_legitimate_interest",
    "consent",
)
CONDITIONS = (
    "dpa2018_sch1_para18_safeguarding",
    "dpa2018_sch1_para10_unlawful_acts",
    "dpa2018_sch1_para6_statutory",
    "dpa2018_sch1_para2_health_social_care",
    "dpa2018_sch8_para4_safeguarding",
    "dpa2018_sch8_para1_statutory",
    "uk_gdpr_9_2_c_vital_interests",
    "explicit_consent",
)
CONSENT_STATUSES = ("given", "not_sought", "refused", "not_possible")
RETAINED_SHARE_PURPOSE = "safeguard_assess"


def _notify_share(
    session: Session,
    type: str,
    share: Share,
    recipients: set[str],
    actor: Actor,
    now: datetime,
) -> None:
    """Share events go to the agencies that can see the share: the lead and the recipient
    (another recipient does not learn of it, as it cannot list it)."""
    events.emit(
        session,
        type=type,
        recipients=recipients,
        actor=actor,
        data={"referral_id": share.referral_id, "share_id": share.id},
        now=now,
    )


def _field_error(path: list[str], message: str) -> ValidationFailed:
    errors: dict[str, Any] = {path[-1]: [message]}
    for part in reversed(path[:-1]):
        errors = {part: errors}
    return ValidationFailed(f"{'.'.join(path)}: {message}", errors={"json": errors})


def check_lawful_basis(
    discloser_kind: str, lawful_basis: dict[str, Any], consent: dict[str, Any] | None
) -> None:
    """The contract's rules for a disclosure by an agency of `discloser_kind` (each a 422)."""
    article_6 = lawful_basis["article_6"]
    condition = lawful_basis.get("condition")
    if consent is not None:
        if consent["status"] != "given" and not consent.get("rationale"):
            raise _field_error(["consent", "rationale"], "Required unless consent was given.")
        if article_6 == "consent" and consent["status"] != "given":
            raise _field_error(["lawful_basis", "article_6"], "consent needs consent.status given.")
    if article_6 == "public_task" and discloser_kind == "charity":
        raise _field_error(["lawful_basis", "article_6"], "A charity cannot rely on public_task.")
    if condition and "_sch8_" in condition and discloser_kind != "police":
        raise _field_error(
            ["lawful_basis", "condition"],
            "Part 3 (Schedule 8) conditions are for police agencies only.",
        )


def _open_share(
    session: Session, referral_id: uuid.UUID, agency: str, now: datetime
) -> Share | None:
    """The open share to an agency; an expired one is closed on the way (ended at its expiry)."""
    share = session.execute(
        select(Share).where(
            Share.referral_id == referral_id, Share.agency_code == agency, Share.ended_at.is_(None)
        )
    ).scalar_one_or_none()
    if share is not None and share.expires_at is not None and share.expires_at <= now:
        share.ended_at = share.expires_at
        session.flush()
        return None
    return share


def _end_emergency_share(session: Session, share: Share, actor: Actor, now: datetime) -> None:
    """An emergency access's share ends without a revocation: a share by the lead replaces it,
    or its agency became the lead. The emergency access ends with its last open share."""
    assert share.emergency_access_id is not None
    share.ended_at = now
    session.flush()
    emergency.share_ended(
        session, emergency_access_id=share.emergency_access_id, by_agency=actor.agency, now=now
    )


def _recipient(session: Session, actor: Actor, agency_code: str) -> Agency:
    if agency_code == actor.agency:
        raise Conflict("An agency cannot share with itself.")
    agency = session.get(Agency, agency_code)
    if agency is None:
        raise ValidationFailed.field("agency", "No such agency.")
    if not agency.active:
        raise Conflict("That agency is not active.")
    return agency


def create_share(
    session: Session, *, actor: Actor, referral_id: uuid.UUID, data: dict[str, Any], now: datetime
) -> Share:
    view = reach_referral(session, actor=actor, referral_id=referral_id, now=now)
    require_lead(session, view, actor, "share.create")
    lock_unerased(session, actor, referral_id)
    if data.get("expires_at") is not None and data["expires_at"] <= now:
        raise ValidationFailed.field("expires_at", "Must be in the future.")
    check_lawful_basis(actor.agency_kind, data["lawful_basis"], data["consent"])
    _recipient(session, actor, data["agency"])
    existing = _open_share(session, referral_id, data["agency"], now)
    if existing is not None:
        if existing.emergency_access_id is None:
            raise Conflict("That agency already has an active share of this referral.")
        # The lead's own decision replaces what an emergency access opened (§10).
        _end_emergency_share(session, existing, actor, now)
    share = Share(
        referral_id=referral_id,
        referral_created_at=view.referral.created_at,
        referral_updated_at=view.referral.updated_at,
        agency_code=data["agency"],
        access=data["access"],
        profile=data.get("profile", "full"),
        purpose=data["purpose"],
        necessity=data["necessity"],
        article_6=data["lawful_basis"]["article_6"],
        condition=data["lawful_basis"].get("condition"),
        gateway=data["lawful_basis"].get("gateway"),
        consent_status=data["consent"]["status"],
        consent_rationale=data["consent"].get("rationale"),
        expires_at=data.get("expires_at"),
        created_at=now,
        created_by_agency=actor.agency,
        created_by_client_id=actor.client_id,
        created_by_user_id=actor.user_id,
    )
    session.add(share)
    session.flush()
    record_on(session, actor, "share.create", view, resource_type="share", resource_id=share.id)
    _notify_share(session, "referral.shared", share, {share.agency_code}, actor, now)
    return share


def list_shares(
    session: Session,
    *,
    actor: Actor,
    referral_id: uuid.UUID,
    limit: int,
    cursor: str | None,
    now: datetime,
) -> tuple[list[Share], str | None]:
    """The lead sees every share of the referral; a recipient sees its own."""
    view = reach_referral(session, actor=actor, referral_id=referral_id, now=now)
    stmt = select(Share).where(Share.referral_id == referral_id)
    if not view.access.is_lead:
        stmt = stmt.where(Share.agency_code == actor.agency)
    page = keyset_page(session, stmt, keys=[Share.created_at, Share.id], limit=limit, cursor=cursor)
    record_on(session, actor, "share.list", view)
    return page


def _share_of(session: Session, view: ReferralView, share_id: uuid.UUID) -> Share:
    share = session.get(Share, share_id)
    if share is None or share.referral_id != view.referral.id:
        raise NotFound("No such share.")
    return share


def acknowledge_share(
    session: Session, *, actor: Actor, referral_id: uuid.UUID, share_id: uuid.UUID, now: datetime
) -> Share:
    view = reach_referral(session, actor=actor, referral_id=referral_id, now=now)
    share = _share_of(session, view, share_id)
    if share.agency_code != actor.agency:
        # Someone else's share: refused, and the refusal is audited.
        record_on(
            session,
            actor,
            "share.acknowledge",
            view,
            outcome="denied",
            resource_type="share",
            resource_id=share.id,
        )
        if view.access.is_lead:
            raise Forbidden("Only the recipient agency acknowledges a share.")
        raise NotFound("No such share.")
    if view.access.basis not in (f"share:{share.id}", f"emergency:{share.emergency_access_id}"):
        raise NotFound("No such share.")  # revoked or expired: gives no access
    if share.acknowledged_at is None:
        share.acknowledged_at = now
        session.flush()
        _notify_share(session, "share.acknowledged", share, {view.referral.lead_agency}, actor, now)
    record_on(
        session, actor, "share.acknowledge", view, resource_type="share", resource_id=share.id
    )
    return share


def revoke_share(
    session: Session,
    *,
    actor: Actor,
    referral_id: uuid.UUID,
    share_id: uuid.UUID,
    reason: str,
    now: datetime,
) -> Share:
    view = reach_referral(session, actor=actor, referral_id=referral_id, now=now)
    if not view.access.is_lead:
        share = session.get(Share, share_id)
        if share is None or share.referral_id != referral_id:
            raise NotFound("No such share.")
        if share.agency_code != actor.agency:  # another recipient's share: invisible, audited
            record_on(
                session,
                actor,
                "share.revoke",
                view,
                outcome="denied",
                resource_type="share",
                resource_id=share.id,
            )
            raise NotFound("No such share.")
    require_lead(session, view, actor, "share.revoke")
    share = _share_of(session, view, share_id)
    if share.revoked_at is not None or share.ended_at is not None:
        raise Conflict("This share has already ended.")
    share.revoked_at = now
    share.ended_at = now
    share.revoked_reason = reason
    session.flush()
    if share.emergency_access_id is not None:  # an early end of that emergency access, here
        emergency.share_ended(
            session, emergency_access_id=share.emergency_access_id, by_agency=actor.agency, now=now
        )
    record_on(session, actor, "share.revoke", view, resource_type="share", resource_id=share.id)
    # The agency that lost access is told, so it can act on (and delete) what it held.
    _notify_share(
        session, "share.revoked", share, {view.referral.lead_agency, share.agency_code}, actor, now
    )
    return share


def transfer_lead(
    session: Session,
    *,
    actor: Actor,
    referral_id: uuid.UUID,
    expected_version: int,
    data: dict[str, Any],
    now: datetime,
) -> Referral:
    """Move the lead to another agency; the old lead keeps a contribute share."""
    view = reach_referral(session, actor=actor, referral_id=referral_id, now=now)
    require_lead(session, view, actor, "referral.transfer")
    referral = view.referral
    _check_version(referral, expected_version)
    check_lawful_basis(actor.agency_kind, data["lawful_basis"], None)
    new_lead = _recipient(session, actor, data["agency"])
    existing = _open_share(session, referral_id, new_lead.code, now)
    if existing is not None and existing.emergency_access_id is not None:
        _end_emergency_share(session, existing, actor, now)  # the new lead needs no share
    elif existing is not None:
        existing.ended_at = now  # the new lead needs no share any more
    old_lead = referral.lead_agency
    referral.lead_agency = new_lead.code
    referral.updated_at = now
    session.flush()
    # `audit:read` reaches the referrals an agency leads now: the trail's reach moves too.
    move_lead_reach(
        session.connection(), referral_id=referral_id, old_lead=old_lead, new_lead=new_lead.code
    )
    retained = Share(
        referral_id=referral_id,
        referral_created_at=referral.created_at,
        referral_updated_at=referral.updated_at,
        agency_code=old_lead,
        access="contribute",
        purpose=RETAINED_SHARE_PURPOSE,
        necessity=data["reason"],
        article_6=data["lawful_basis"]["article_6"],
        condition=data["lawful_basis"].get("condition"),
        gateway=data["lawful_basis"].get("gateway"),
        consent_status="not_sought",
        consent_rationale="Retained by the previous lead on transfer: " + data["reason"][:1900],
        created_at=now,
        created_by_agency=actor.agency,
        created_by_client_id=actor.client_id,
        created_by_user_id=actor.user_id,
    )
    session.add(retained)
    session.add(
        ReferralHistory(
            referral_id=referral_id,
            kind="transfer",
            from_agency=old_lead,
            to_agency=new_lead.code,
            reason=data["reason"],
            lawful_basis=dict(data["lawful_basis"]),
            actor_agency=actor.agency,
            actor_client_id=actor.client_id,
            actor_user_id=actor.user_id,
            occurred_at=now,
        )
    )
    session.flush()
    record_on(session, actor, "referral.transfer", view)
    events.emit(
        session,
        type="referral.transferred",
        recipients={referral.lead_agency},
        shares_of=referral.id,
        actor=actor,
        data={"referral_id": referral.id},
        now=now,
    )
    return referral
