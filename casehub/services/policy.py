"""Who may see and do what to which record. The visibility query builders here are the only
place access to case data is decided; get, list, search, notes, shares and subjects all use them."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, Select, and_, exists, or_, select

from casehub.auth.actor import Actor
from casehub.models import Referral, Share, Subject


# -- pure decisions ------------------------------------------------------------------------
@dataclass(frozen=True)
class ShareGrant:
    id: uuid.UUID
    agency: str
    access: str  # read | contribute
    purpose: str
    revoked_at: datetime | None
    ended_at: datetime | None
    expires_at: datetime | None

    def active_at(self, now: datetime) -> bool:
        return (
            self.revoked_at is None
            and self.ended_at is None
            and (self.expires_at is None or self.expires_at > now)
        )


@dataclass(frozen=True)
class Access:
    """How the caller's agency reaches a referral: as its lead, or through one active share."""

    basis: str  # "lead" or "share:<id>"
    is_lead: bool
    can_contribute: bool
    purpose: str  # the default purpose of use for this access

    def purpose_for(self, actor: Actor) -> str:
        return actor.purpose or self.purpose


def referral_access(
    agency: str, *, lead_agency: str, shares: Iterable[ShareGrant], now: datetime
) -> Access | None:
    """The caller's access to one referral, or None: then the referral does not exist for it."""
    if agency == lead_agency:
        return Access(basis="lead", is_lead=True, can_contribute=True, purpose="case_work")
    for share in shares:
        if share.agency == agency and share.active_at(now):
            return Access(
                basis=f"share:{share.id}",
                is_lead=False,
                can_contribute=share.access == "contribute",
                purpose=share.purpose,
            )
    return None


# -- query builders -------------------------------------------------------------------------
def active_share_clause(agency: str, now: datetime) -> ColumnElement[bool]:
    return and_(
        Share.agency_code == agency,
        Share.revoked_at.is_(None),
        Share.ended_at.is_(None),
        or_(Share.expires_at.is_(None), Share.expires_at > now),
    )


def referral_visible(actor: Actor, now: datetime) -> ColumnElement[bool]:
    """True for referrals the actor's agency leads or holds an active share of."""
    shared = exists(
        select(Share.id).where(
            Share.referral_id == Referral.id, active_share_clause(actor.agency, now)
        )
    )
    return or_(Referral.lead_agency == actor.agency, shared)


def visible_referrals(actor: Actor, now: datetime) -> Select[tuple[Referral]]:
    return select(Referral).where(referral_visible(actor, now))


def subject_visible(actor: Actor, now: datetime) -> ColumnElement[bool]:
    """Subjects the agency created, or that a referral visible to it is about."""
    about_visible = exists(
        select(Referral.id).where(Referral.subject_id == Subject.id, referral_visible(actor, now))
    )
    return or_(Subject.created_by_agency == actor.agency, about_visible)


def visible_subjects(actor: Actor, now: datetime) -> Select[tuple[Subject]]:
    return select(Subject).where(subject_visible(actor, now))
