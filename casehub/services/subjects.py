"""Subjects: record, read, change and search the children and young people referrals are about."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import date, datetime
from typing import Any

from sqlalchemy import Select, case, select, tuple_
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from casehub import audit
from casehub.auth.actor import Actor
from casehub.db import new_id
from casehub.errors import Forbidden, NotFound, PreconditionFailed, ValidationFailed
from casehub.models import Referral, Share, Subject, SubjectNameKey
from casehub.services import names, policy
from casehub.services.pagination import decode_cursor, encode_cursor, keyset_page

RESOURCE = "subject"
DEFAULT_PURPOSE = "case_work"
CREATOR_BASIS = "creator"
# The documented order of every subject list and search: oldest first, then id. Ranking by
# closeness of match would make the order depend on the query, which a cursor cannot carry.
ORDER = (Subject.created_at, Subject.id)
_PLAIN_FIELDS = (
    "given_name",
    "family_name",
    "aliases",
    "date_of_birth",
    "estimated_birth_year",
    "gender",
    "identifiers",
)
_NAME_FIELDS = frozenset({"given_name", "family_name", "aliases"})


# -- writing -----------------------------------------------------------------------------------
def create_subject(
    session: Session, *, actor: Actor, data: Mapping[str, Any], now: datetime
) -> Subject:
    """Record a subject for the actor's agency; `data` is SubjectCreateSchema's loaded data."""
    subject = Subject(id=new_id(), created_by_agency=actor.agency, created_at=now, updated_at=now)
    _apply(subject, data)
    _sync_name_keys(subject)
    session.add(subject)
    session.flush()
    audit.record(
        session,
        actor,
        "subject.create",
        resource_type=RESOURCE,
        resource_id=subject.id,
        subject_ids=[subject.id],
        basis=CREATOR_BASIS,
        purpose=actor.purpose or DEFAULT_PURPOSE,
    )
    return subject


def update_subject(
    session: Session,
    *,
    actor: Actor,
    subject_id: uuid.UUID,
    data: Mapping[str, Any],
    expected_version: int,
    now: datetime,
) -> Subject:
    """Change the fields in `data` (SubjectUpdateSchema's loaded data) of a subject the actor's
    agency recorded: 404 when invisible, 403 when visible but another agency's, 412 when stale."""
    subject = require_visible_subject(session, actor=actor, subject_id=subject_id, now=now)
    if subject.created_by_agency != actor.agency:
        _record_denied(session, actor, subject_id)
        raise Forbidden("Only the agency that recorded this subject may change it.")
    if subject.version != expected_version:
        raise PreconditionFailed("The subject has changed since it was read; fetch it again.")
    changed = _apply(subject, data)
    if changed:
        subject.updated_at = now
        if changed & _NAME_FIELDS:
            _sync_name_keys(subject)
        try:
            session.flush()
        except StaleDataError as exc:  # changed by a concurrent request since we read it
            raise PreconditionFailed("The subject has changed since it was read.") from exc
    audit.record(
        session,
        actor,
        "subject.update",
        resource_type=RESOURCE,
        resource_id=subject.id,
        subject_ids=[subject.id],
        basis=CREATOR_BASIS,
        purpose=actor.purpose or DEFAULT_PURPOSE,
    )
    return subject


def _apply(subject: Subject, data: Mapping[str, Any]) -> set[str]:
    """Copy the given fields onto the subject; return the names of those that changed."""
    values: dict[str, Any] = {name: data[name] for name in _PLAIN_FIELDS if name in data}
    if "aliases" in values:
        values["aliases"] = list(values["aliases"] or [])
    if "identifiers" in values:
        values["identifiers"] = [dict(item) for item in values["identifiers"] or []]
    # A subject has a date of birth or an estimated year, never both: setting one clears the other.
    if values.get("date_of_birth") is not None:
        values.setdefault("estimated_birth_year", None)
    if values.get("estimated_birth_year") is not None:
        values.setdefault("date_of_birth", None)
    if "address" in data:
        address = data["address"] or {}
        values["address_line"] = address.get("line")
        values["address_town"] = address.get("town")
        values["address_postcode"] = address.get("postcode")
    changed: set[str] = set()
    for name, value in values.items():
        if getattr(subject, name) != value:
            setattr(subject, name, value)
            changed.add(name)
    return changed


def _sync_name_keys(subject: Subject) -> None:
    """Make the stored search keys those of the subject's current names (diffed, not rewritten)."""
    wanted = names.subject_keys(subject.given_name, subject.family_name, subject.aliases or [])
    current = {row.key: row for row in subject.name_keys}
    for key, row in current.items():
        if key not in wanted:
            subject.name_keys.remove(row)
    subject.name_keys.extend(SubjectNameKey(key=key) for key in sorted(wanted - current.keys()))


# -- reading -----------------------------------------------------------------------------------
def require_visible_subject(
    session: Session, *, actor: Actor, subject_id: uuid.UUID, now: datetime
) -> Subject:
    """The subject if the actor's agency may see it; otherwise NotFound, audited as denied.
    An invisible subject and an id that names nothing take the same path (no second query to
    tell them apart), so neither the answer nor its timing says which ids exist."""
    subject = session.execute(
        policy.visible_subjects(actor, now).where(Subject.id == subject_id)
    ).scalar_one_or_none()
    if subject is None:
        _record_denied(session, actor, subject_id)
        raise NotFound("No such subject.")
    return subject


def get_subject(session: Session, *, actor: Actor, subject_id: uuid.UUID, now: datetime) -> Subject:
    subject = require_visible_subject(session, actor=actor, subject_id=subject_id, now=now)
    basis, purpose = _read_basis(session, actor, subject, now)
    audit.record(
        session,
        actor,
        "subject.read",
        resource_type=RESOURCE,
        resource_id=subject.id,
        subject_ids=[subject.id],
        basis=basis,
        purpose=purpose,
    )
    return subject


def search_subjects(
    session: Session,
    *,
    actor: Actor,
    now: datetime,
    limit: int,
    cursor: str | None = None,
    q: str | None = None,
    date_of_birth: date | None = None,
) -> tuple[list[Subject], str | None]:
    """Visible subjects, optionally by name or alias (`q`) and exact date of birth, in
    (created_at, id) order; returns one page and the cursor of the next."""
    stmt = policy.visible_subjects(actor, now)
    if date_of_birth is not None:
        stmt = stmt.where(Subject.date_of_birth == date_of_birth)
    if q is None:
        items, next_cursor = keyset_page(session, stmt, keys=ORDER, limit=limit, cursor=cursor)
    else:
        tokens = names.query_tokens(q)
        if not tokens:
            raise ValidationFailed.field("q", "Must contain letters or digits.", location="query")
        for token in tokens:
            # Candidates share a search key with every query word; see names.search_keys.
            keyed = select(SubjectNameKey.subject_id).where(
                SubjectNameKey.key.in_(sorted(names.search_keys(token)))
            )
            stmt = stmt.where(Subject.id.in_(keyed))
        items, next_cursor = _matching_page(session, stmt, tokens, limit=limit, cursor=cursor)
    audit.record(
        session,
        actor,
        "subject.search" if q is not None or date_of_birth is not None else "subject.list",
        resource_type=RESOURCE,
        subject_ids=[s.id for s in items],
        purpose=actor.purpose or DEFAULT_PURPOSE,
    )
    return items, next_cursor


def _matching_page(
    session: Session,
    stmt: Select[tuple[Subject]],
    tokens: list[str],
    *,
    limit: int,
    cursor: str | None,
) -> tuple[list[Subject], str | None]:
    """A keyset page of the candidates that really are within one edit of every query word.

    Candidates are read in batches in page order and checked in Python; the next cursor is the
    last subject returned, so a walk neither skips nor repeats however many candidates fail.
    """
    after = decode_cursor(cursor, [datetime, uuid.UUID]) if cursor else None
    batch_size = limit + 1
    found: list[Subject] = []
    while len(found) <= limit:
        batch_stmt = stmt if after is None else stmt.where(tuple_(*ORDER) > tuple_(*after))
        batch = list(session.execute(batch_stmt.order_by(*ORDER).limit(batch_size)).scalars())
        for subject in batch:
            if names.matches(tokens, _tokens_of(subject)):
                found.append(subject)
                if len(found) > limit:
                    break
        if len(batch) < batch_size:
            break
        after = [batch[-1].created_at, batch[-1].id]
    if len(found) <= limit:
        return found, None
    page = found[:limit]
    return page, encode_cursor([page[-1].created_at, page[-1].id])


def _tokens_of(subject: Subject) -> set[str]:
    return names.subject_tokens(subject.given_name, subject.family_name, subject.aliases or [])


# -- audit helpers -----------------------------------------------------------------------------
def _record_denied(session: Session, actor: Actor, subject_id: uuid.UUID) -> None:
    # No subject_ids: the response carries none of the child's data.
    audit.record(
        session,
        actor,
        "access.denied",
        outcome="denied",
        resource_type=RESOURCE,
        resource_id=subject_id,
        purpose=actor.purpose,
    )


def _read_basis(session: Session, actor: Actor, subject: Subject, now: datetime) -> tuple[str, str]:
    """Why the actor's agency may see this subject, and the purpose to record for the read:
    it recorded the subject, or it leads or holds an active share of a referral about it."""
    if subject.created_by_agency == actor.agency:
        return CREATOR_BASIS, actor.purpose or DEFAULT_PURPOSE
    is_lead = Referral.lead_agency == actor.agency
    referral = session.execute(
        select(Referral.id, Referral.lead_agency)
        .where(Referral.subject_id == subject.id, policy.referral_visible(actor, now))
        .order_by(case((is_lead, 0), else_=1), Referral.created_at, Referral.id)
        .limit(1)
    ).first()
    if referral is not None and referral.lead_agency != actor.agency:
        share = session.execute(
            select(Share.id, Share.purpose)
            .where(Share.referral_id == referral.id, policy.active_share_clause(actor.agency, now))
            .limit(1)
        ).first()
        if share is not None:
            return f"share:{share.id}", actor.purpose or share.purpose
    return "lead", actor.purpose or DEFAULT_PURPOSE
