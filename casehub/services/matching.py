"""Existence-only matching (CONTRACT §9): is this child known to other agencies?

A match answers with agencies only. What it was worked out from (which children, per agency)
stays in the `matches` row, usable for 24 hours by the agency that asked, and only through the
functions here: `usable_match` (the asker's own, unexpired match) and `held_referrals` (the
referrals one listed agency leads about the matched children, which an access request shows to
the holder and an emergency access opens, never to the asker until a share exists).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from casehub.auth.actor import Actor
from casehub.errors import ValidationFailed
from casehub.models import Match, Referral

MATCH_LIFETIME = timedelta(hours=24)


def usable_match(session: Session, *, actor: Actor, match_id: uuid.UUID, now: datetime) -> Match:
    """The caller's agency's match `match_id` while it is valid; otherwise 422 on `match_id`,
    the same answer whether it never existed, expired or is another agency's."""
    match = session.get(Match, match_id)
    if match is None or match.agency_code != actor.agency or match.expires_at <= now:
        raise ValidationFailed.field(
            "match_id", "No match with this id is valid for the caller's agency."
        )
    return match


def matched_subjects(match: Match, agency: str) -> list[uuid.UUID]:
    """The matched children held by `agency` (in the match's answer); 422 on `agency` when the
    match did not list it."""
    found = (match.found or {}).get(agency)
    if not found:
        raise ValidationFailed.field("agency", "The match did not list this agency.")
    return [uuid.UUID(s) for s in found["subject_ids"]]


def held_referrals(
    session: Session, *, agency: str, subject_ids: Sequence[uuid.UUID]
) -> list[uuid.UUID]:
    """The discoverable referrals `agency` leads about these children, oldest first."""
    if not subject_ids:
        return []
    rows = session.scalars(
        select(Referral.id)
        .where(
            Referral.subject_id.in_(list(subject_ids)),
            Referral.lead_agency == agency,
            Referral.discoverable.is_(True),
        )
        .order_by(Referral.created_at, Referral.id)
    )
    return list(rows)
