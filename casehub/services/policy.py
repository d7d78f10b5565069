"""Who may see and do what to which record. The visibility query builders here are the only
place access to case data is decided; get, list, search, notes, shares and subjects all use them."""

from __future__ import annotations

import uuid
from collections.abc import Set
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Select,
    and_,
    bindparam,
    exists,
    or_,
    select,
    union,
)

from casehub.auth.actor import Actor
from casehub.models import Note, Referral, Share, Subject


# -- pure decisions ------------------------------------------------------------------------
@dataclass(frozen=True)
class Access:
    """How the caller's agency reaches a referral: as its lead, or through one active share."""

    basis: str  # "lead" or "share:<id>"
    is_lead: bool
    can_contribute: bool
    purpose: str  # the default purpose of use for this access
    profile: str = "full"  # what it shows (CONTRACT §11): "full" or "summary"

    @property
    def summary(self) -> bool:
        return self.profile == SUMMARY

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
    share_profile: str | None = None,
) -> Access | None:
    """The caller's access to one referral, or None (then it does not exist for the caller):
    as its lead, or through its agency's one active share, which `active_share_columns` reads
    in the same SELECT as the referral. A share that carries an emergency access (§10) is
    read-only whatever it says, and its basis is the emergency access's. A share's profile
    (§11) is what it shows; the lead sees everything."""
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
            profile=share_profile or FULL,
        )
    return Access(
        basis=f"share:{share_id}",
        is_lead=False,
        can_contribute=share_access == "contribute",
        purpose=share_purpose,
        profile=share_profile or FULL,
    )


# -- data profiles (CONTRACT §11) -----------------------------------------------------------
FULL = "full"
SUMMARY = "summary"
# What a summary share hides, as the attribute names of the records (and what each reads as
# instead). Notes are the third: under a summary share only the caller's own agency's notes
# are listed (`notes_seen`).
SUMMARY_HIDES_OF_REFERRAL: dict[str, Any] = {"narrative": None, "location_description": None}
SUMMARY_HIDES_OF_SUBJECT: dict[str, Any] = {
    "address_line": None,
    "address_town": None,
    "address_postcode": None,
    "identifiers": [],
}


class Summary:
    """A referral or child's record as a summary share shows it: every attribute of the record
    except the hidden ones, which read as empty. Whatever dumps it (a schema, the hot path's
    document builder) cannot reach what the profile hides."""

    __slots__ = ("_hidden", "_record")

    def __init__(self, record: Any, hidden: dict[str, Any]) -> None:
        self._record = record
        self._hidden = hidden

    def __getattr__(self, name: str) -> Any:
        if name in self._hidden:
            return self._hidden[name]
        return getattr(self._record, name)


def referral_as_seen(record: Any, access: Access) -> Any:
    """The referral (an ORM object or a row) as `access` shows it."""
    return Summary(record, SUMMARY_HIDES_OF_REFERRAL) if access.summary else record


def subject_as_seen(record: Any, *, in_full: bool) -> Any:
    """The child's record as the caller's agency sees it: in full when `subject_seen_in_full`
    holds for it, else as a summary share shows it."""
    return record if in_full else Summary(record, SUMMARY_HIDES_OF_SUBJECT)


def notes_seen(access: Access, agency: str, author_agency: Any) -> ColumnElement[bool] | None:
    """The extra condition on the notes a caller with `access` may list: under a summary share
    only its own agency's; None: no further condition."""
    return author_agency == agency if access.summary else None


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
    return and_(Share.agency_code == agency, open_share_clause(now))


def open_share_clause(now: Moment) -> ColumnElement[bool]:
    """A share that gives its recipient access at `now`: not revoked, not ended, not expired."""
    return and_(
        Share.revoked_at.is_(None),
        Share.ended_at.is_(None),
        or_(Share.expires_at.is_(None), Share.expires_at > now),
    )


def active_share_columns(agency: Agency, now: Moment) -> tuple[Any, Any, Any, Any, Any]:
    """The id, access, purpose, emergency access and profile of the agency's active share of
    the Referral in the same SELECT (NULL without one): a partial unique index allows one open
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
        column(Share.profile, "share_profile"),
    )


def referral_visible(actor: Actor, now: datetime) -> ColumnElement[bool]:
    """True for referrals the actor's agency leads or holds an active share of."""
    return referral_visible_to(actor.agency, now)


def referral_visible_to(
    agency: Agency, now: Moment, *, in_full: bool = False
) -> ColumnElement[bool]:
    """The agency leads the referral or holds an active share of it, and it is not erased (an
    erased referral is seen by nobody: its tombstone is `tombstone_visible_to`'s); `in_full`:
    a share of the full profile (§11), through which it sees the whole referral and its
    child's record."""
    share = [Share.referral_id == Referral.id, active_share_clause(agency, now)]
    if in_full:
        share.append(Share.profile == FULL)
    return and_(
        Referral.erased_at.is_(None),
        or_(Referral.lead_agency == agency, exists(select(Share.id).where(*share))),
    )


def summary_shared(agency: Agency, now: Moment, referral_ids: Any) -> Select[tuple[uuid.UUID]]:
    """Which of `referral_ids` the agency sees through a summary share (the others it leads,
    or sees in full, or not at all): for a list's page, one query for all of its items."""
    return select(Share.referral_id).where(
        Share.referral_id.in_(referral_ids),
        active_share_clause(agency, now),
        Share.profile == SUMMARY,
    )


def tombstone_visible_to(agency: Agency) -> ColumnElement[bool]:
    """True for erased referrals whose tombstone the agency may be shown (CONTRACT §11: 410 to
    the agencies that could see the referral, 404 to others): its lead, and every agency it
    was ever shared with, whether that share is open, ended, revoked or an emergency access's.
    Erasure ends every share, so "ever shared with" is the whole of who could see it."""
    ever_shared = exists(
        select(Share.id).where(Share.referral_id == Referral.id, Share.agency_code == agency)
    )
    return and_(Referral.erased_at.is_not(None), or_(Referral.lead_agency == agency, ever_shared))


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
    makes it an inner join): a plain or `updated_since` list reads the shares index alone.
    An erased referral is in neither: the lead stream skips it, and erasure ended its shares."""
    streams: list[Stream] = []
    if led:
        streams.append(
            Stream(
                select(Referral.id, Referral.created_at).where(
                    Referral.lead_agency == actor.agency, Referral.erased_at.is_(None)
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
    """Subjects the agency created, or that a referral visible to it is about (not erased)."""
    return subject_visible_to(actor.agency, now)


def subject_visible_to(
    agency: Agency, now: Moment, *, in_full: bool = False
) -> ColumnElement[bool]:
    """`in_full`: the agency sees the whole record (address, identifiers): it recorded the
    child, or leads or holds a full share of a referral about it (§11). A record retention
    erased is seen by nobody."""
    about_visible = exists(
        select(Referral.id).where(
            Referral.subject_id == Subject.id, referral_visible_to(agency, now, in_full=in_full)
        )
    )
    return and_(
        Subject.erased_at.is_(None), or_(Subject.created_by_agency == agency, about_visible)
    )


def seen_only_in_summary(agency: Agency, now: Moment, subject_ids: Any) -> Select[tuple[Any]]:
    """Which of `subject_ids` (visible to the agency) it sees only through summary shares."""
    return select(Subject.id).where(
        Subject.id.in_(subject_ids), ~subject_visible_to(agency, now, in_full=True)
    )


def visible_subjects(actor: Actor, now: datetime) -> Select[tuple[Subject]]:
    return select(Subject).where(subject_visible(actor, now))


# -- merged records (CONTRACT §11) ----------------------------------------------------------
# A merge changes what is listed, never what is visible: every rule above reads a referral's or
# a subject's own row, so a merge gives no agency sight of a referral or a record it lacked.
def may_merge(agency: str, *, duplicate: Subject) -> bool:
    """Whether the agency may merge `duplicate` into another record, or undo that: the merge
    changes the duplicate's record only, and only the agency that recorded a subject changes it
    (the caller must also see both records: `visible_subjects`)."""
    return duplicate.created_by_agency == agency


def listed_as(subject: Subject, visible_ids: Set[uuid.UUID]) -> uuid.UUID:
    """The record that stands for `subject` in a viewer's lists and searches: the survivor it is
    merged into when the viewer sees the survivor (`visible_ids` holds the viewer's visible
    records among those concerned), else the subject itself. A viewer who sees the duplicate
    only keeps seeing the duplicate (with `merged_into` set), never the survivor's record."""
    if subject.merged_into is not None and subject.merged_into in visible_ids:
        return subject.merged_into
    return subject.id


def referral_holders(subject_ids: Any, now: Moment) -> Select[tuple[str]]:
    """The agencies that see a referral about any of these children (an IN-able list or
    subquery of subject ids): each referral's lead and every agency with an open share of it."""
    leads = select(Referral.lead_agency.label("agency")).where(Referral.subject_id.in_(subject_ids))
    shared = (
        select(Share.agency_code.label("agency"))
        .join(Referral, Referral.id == Share.referral_id)
        .where(Referral.subject_id.in_(subject_ids), open_share_clause(now))
    )
    return select(union(leads, shared).subquery().c.agency)
def note_visible_to(agency: Agency) -> ColumnElement[bool]:
    """Notes an agency sees on a referral it can see: shared notes, and its own agency notes."""
    return or_(Note.visibility == "shared", Note.author_agency == agency)


def subject_seen_in_full_by(agency: Agency, now: Moment) -> ColumnElement[bool]:
    """True for subjects an agency sees with `address` and `identifiers` (CONTRACT §11): it
    recorded the child, leads a referral about it, or holds an active `full` share of one.
    An agency that sees the child only through `summary` shares sees the record without them."""
    return subject_visible_to(agency, now, in_full=True)
