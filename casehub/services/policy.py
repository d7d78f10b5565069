"""Who may see and do what to which record. The visibility query builders here are the only
place access to case data is decided; get, list, search, notes, shares and subjects all use them."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import BindParameter, ColumnElement, Select, and_, bindparam, exists, or_, select

from casehub.auth.actor import Actor
from casehub.models import Referral, Share, Subject


# -- pure decisions ------------------------------------------------------------------------
@dataclass(frozen=True)
class Access:
    """How the caller's agency reaches a referral: as its lead, or through one active share."""

    basis: str  # "lead" or "share:<id>"
    is_lead: bool
    can_contribute: bool
    purpose: str  # the default purpose of use for this access

    def purpose_for(self, actor: Actor) -> str:
        return actor.purpose or self.purpose


def access_through(
    agency: str,
    *,
    lead_agency: str,
    share_id: uuid.UUID | None,
    share_access: str | None,
    share_purpose: str | None,
    share_emergency: uuid.UUID | None = None,
) -> Access | None:
    """The caller's access to one referral, or None (then it does not exist for the caller):
    as its lead, or through its agency's one active share, which `active_share_columns` reads
    in the same SELECT as the referral. A share that carries an emergency access (§10) is
    read-only whatever it says, and its basis is the emergency access's."""
    if agency == lead_agency:
        return Access(basis="lead", is_lead=True, can_contribute=True, purpose="case_work")
    if share_id is None or share_purpose is None:
        return None
    if share_emergency is not None:
        return Access(
            basis=f"emergency:{share_emergency}",
            is_lead=False,
            can_contribute=False,
            purpose=share_purpose,
        )
    return Access(
        basis=f"share:{share_id}",
        is_lead=False,
        can_contribute=share_access == "contribute",
        purpose=share_purpose,
    )


# -- query builders -------------------------------------------------------------------------
# Statements built once per process name the caller's agency and the moment by these bound
# parameters instead of literal values (`viewer` gives their values): building a statement costs
# more CPU than running it, and a statement object built once keeps its compiled form cached.
VIEWER_AGENCY: BindParameter[str] = bindparam("viewer_agency", type_=Share.agency_code.type)
VIEWER_NOW: BindParameter[datetime] = bindparam("viewer_now", type_=Share.expires_at.type)
Agency = str | BindParameter[str]
Moment = datetime | BindParameter[datetime]


def viewer(actor: Actor, now: datetime) -> dict[str, Any]:
    """The values of VIEWER_AGENCY and VIEWER_NOW for a statement built with them."""
    return {"viewer_agency": actor.agency, "viewer_now": now}


def active_share_clause(agency: Agency, now: Moment) -> ColumnElement[bool]:
    return and_(
        Share.agency_code == agency,
        Share.revoked_at.is_(None),
        Share.ended_at.is_(None),
        or_(Share.expires_at.is_(None), Share.expires_at > now),
    )


def active_share_columns(agency: Agency, now: Moment) -> tuple[Any, Any, Any, Any]:
    """The id, access, purpose and emergency access of the agency's active share of the
    Referral in the same SELECT (NULL without one): a partial unique index allows one open
    share per agency."""

    def column(attribute: Any, label: str) -> Any:
        return (
            select(attribute)
            .where(Share.referral_id == Referral.id, active_share_clause(agency, now))
            .limit(1)
            .correlate(Referral)
            .scalar_subquery()
            .label(label)
        )

    return (
        column(Share.id, "share_id"),
        column(Share.access, "share_access"),
        column(Share.purpose, "share_purpose"),
        column(Share.emergency_access_id, "share_emergency"),
    )


def referral_visible(actor: Actor, now: datetime) -> ColumnElement[bool]:
    """True for referrals the actor's agency leads or holds an active share of."""
    return referral_visible_to(actor.agency, now)


def referral_visible_to(agency: Agency, now: Moment) -> ColumnElement[bool]:
    shared = exists(
        select(Share.id).where(Share.referral_id == Referral.id, active_share_clause(agency, now))
    )
    return or_(Referral.lead_agency == agency, shared)


def visible_referrals(actor: Actor, now: datetime) -> Select[tuple[Referral]]:
    return select(Referral).where(referral_visible(actor, now))


@dataclass(frozen=True)
class Stream:
    """Visible referrals as (id, created_at) rows, the two columns that give its order
    (created_at, id) from the index the stream is read by, and the referral's updated_at as
    that index's table holds it (a share keeps a copy: `updated_since` is a range of it)."""

    stmt: Select[Any]
    created_at: ColumnElement[datetime]
    id: ColumnElement[uuid.UUID]
    updated_at: ColumnElement[datetime]


def visible_referral_streams(
    actor: Actor, now: datetime, *, led: bool = True, shared: bool = True
) -> list[Stream]:
    """The referrals the actor's agency sees as two streams to be read in one order and merged:
    those it leads (an index range on lead_agency), and those shared with it (a range of its
    open shares in referral order, ix_shares_open_agency_order). Together they are exactly
    `referral_visible`; apart, a list need not test a large lead's every referral against all
    of its shares, nor read and sort every share an agency holds.

    The streams are disjoint by construction (no agency is shared its own referral, and a
    transfer ends the new lead's share), and a merge that drops a repeat keeps them so whatever
    happens; so the shared stream needs nothing from `referrals`. Its join is a LEFT JOIN on
    the key, which PostgreSQL removes unless a filter names a referral's column (which then
    makes it an inner join): a plain or `updated_since` list reads the shares index alone."""
    streams: list[Stream] = []
    if led:
        streams.append(
            Stream(
                select(Referral.id, Referral.created_at).where(
                    Referral.lead_agency == actor.agency
                ),
                Referral.created_at,
                Referral.id,
                Referral.updated_at,
            )
        )
    if shared:
        streams.append(
            Stream(
                select(Share.referral_id.label("id"), Share.referral_created_at.label("created_at"))
                .select_from(Share)
                .outerjoin(Referral, Referral.id == Share.referral_id)
                .where(active_share_clause(actor.agency, now)),
                Share.referral_created_at,
                Share.referral_id,
                Share.referral_updated_at,
            )
        )
    return streams


def subject_visible(actor: Actor, now: datetime) -> ColumnElement[bool]:
    """Subjects the agency created, or that a referral visible to it is about."""
    return subject_visible_to(actor.agency, now)


def subject_visible_to(agency: Agency, now: Moment) -> ColumnElement[bool]:
    about_visible = exists(
        select(Referral.id).where(
            Referral.subject_id == Subject.id, referral_visible_to(agency, now)
        )
    )
    return or_(Subject.created_by_agency == agency, about_visible)


def visible_subjects(actor: Actor, now: datetime) -> Select[tuple[Subject]]:
    return select(Subject).where(subject_visible(actor, now))
