"""Referrals: raising, reading, listing, changing and moving them through their workflow."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NoReturn

from sqlalchemy import (
    JSON,
    ColumnElement,
    Row,
    Select,
    bindparam,
    exists,
    func,
    insert,
    select,
    tuple_,
    union,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, joinedload, selectinload

from casehub import audit
from casehub.auth.actor import Actor
from casehub.db import new_row_values
from casehub.errors import (
    Conflict,
    Forbidden,
    Gone,
    NotFound,
    PreconditionFailed,
    ValidationFailed,
)
from casehub.models import (
    REFERENCE_SEQUENCE,
    Note,
    ReferenceCounter,
    Referral,
    ReferralCategory,
    ReferralHistory,
    ReferralIndicator,
    Subject,
)
from casehub.services import events, policy
from casehub.services.pagination import decode_cursor, encode_cursor, keyset_page
from casehub.services.reference import indicator_codes
from casehub.services.validation import normalise_postcode

RISK_LEVELS = ("low", "medium", "high", "immediate")
STATUSES = (
    "submitted",
    "acknowledged",
    "in_assessment",
    "action_agreed",
    "no_further_action",
    "closed",
)
TRANSITIONS: dict[str, frozenset[str]] = {
    "submitted": frozenset({"acknowledged"}),
    "acknowledged": frozenset({"in_assessment"}),
    "in_assessment": frozenset({"action_agreed", "no_further_action"}),
    "action_agreed": frozenset({"closed"}),
    "no_further_action": frozenset({"closed"}),
    "closed": frozenset({"in_assessment"}),  # reopening
}
CLOCK_SKEW = timedelta(seconds=60)


@dataclass(frozen=True)
class ReferralView:
    """A referral as one caller reaches it."""

    referral: Referral
    access: policy.Access


@dataclass(frozen=True)
class ReferralRead:
    """A referral as one caller reads it, without ORM objects: a row of its columns with its
    `categories` and `indicators` as lists (what ReferralSchema dumps), and the access."""

    referral: Row[Any]
    access: policy.Access


# -- access -----------------------------------------------------------------------------------
def _with_children(stmt: Select[tuple[Referral]]) -> Select[tuple[Referral]]:
    return stmt.options(selectinload(Referral.category_rows), selectinload(Referral.indicator_rows))


_REACH = (
    select(Referral, *policy.active_share_columns(policy.VIEWER_AGENCY, policy.VIEWER_NOW))
    .where(
        Referral.id == bindparam("referral_id", type_=Referral.id.type),
        policy.referral_visible_to(policy.VIEWER_AGENCY, policy.VIEWER_NOW),
    )
    .options(joinedload(Referral.category_rows), joinedload(Referral.indicator_rows))
)


def _access(actor: Actor, lead_agency: str, row: Any) -> policy.Access | None:
    """The access a row joined to the caller's share (`share_id`, `share_access`,
    `share_purpose`, `share_emergency`, `share_profile`) gives the caller, as policy decides;
    None: none."""
    return policy.access_through(
        actor.agency,
        lead_agency=lead_agency,
        share_id=row.share_id,
        share_access=row.share_access,
        share_purpose=row.share_purpose,
        share_emergency=row.share_emergency,
        share_profile=row.share_profile,
    )


def reach_referral(
    session: Session, *, actor: Actor, referral_id: uuid.UUID, now: datetime
) -> ReferralView:
    """The referral and the caller's access to it, or NotFound, audited as a refusal.

    A referral the caller may not see and an id that names nothing take the same path — one
    visibility-filtered query that finds nothing, one denied event naming the id — so neither
    the answer nor its timing tells a prober which ids exist."""
    # One query for the referral, its lists and the caller's active share, lead or not.
    row = (
        session.execute(_REACH, {"referral_id": referral_id, **policy.viewer(actor, now)})
        .unique()
        .one_or_none()
    )
    referral = row.Referral if row is not None else None
    access = _access(actor, referral.lead_agency, row) if referral is not None else None
    if referral is None or access is None:
        _refuse(session, actor, referral_id)
    return ReferralView(referral, access)


_TOMBSTONE = select(
    Referral.id, Referral.reference, Referral.lead_agency, Referral.erased_at
).where(
    Referral.id == bindparam("referral_id", type_=Referral.id.type),
    policy.tombstone_visible_to(policy.VIEWER_AGENCY),
)


def tombstone(row: Any) -> dict[str, Any]:
    """What remains of an erased referral (CONTRACT §11): ids, never content."""
    return {
        "id": str(row.id),
        "reference": str(row.reference),
        "lead_agency": str(row.lead_agency),
        "erased_at": row.erased_at.isoformat().replace("+00:00", "Z"),
    }


def _refuse(session: Session, actor: Actor, referral_id: uuid.UUID) -> NoReturn:
    """What a referral the caller may not see and an id that names nothing both answer: 404,
    audited as a denial. A referral retention erased answers 410 with its tombstone to the
    agencies that could see it (policy decides which), audited the same way."""
    erased = session.execute(
        _TOMBSTONE, {"referral_id": referral_id, "viewer_agency": actor.agency}
    ).one_or_none()
    audit.record(
        session,
        actor,
        "access.denied",
        outcome="denied",
        resource_type="referral",
        resource_id=referral_id,
        referral_id=referral_id,
        purpose=actor.purpose,
    )
    if erased is not None:
        raise Gone(
            "This referral was erased at the end of its retention period.",
            members={"tombstone": tombstone(erased)},
        )
    raise NotFound("No such referral.")


def lock_unerased(session: Session, actor: Actor, referral_id: uuid.UUID) -> None:
    """Before adding a row that holds free text to a referral (a note, a share, a decision):
    hold the referral against erasure to the end of the transaction (FOR KEY SHARE, which
    retention's FOR UPDATE SKIP LOCKED skips), or, if an erasure committed since the referral
    was reached, refuse as `reach_referral` now would (410). Without it a note read-then-written
    across an erasure would outlive it. SQLite serialises writers: no lock is needed there."""
    erased_at = session.execute(
        select(Referral.erased_at).where(Referral.id == referral_id).with_for_update(key_share=True)
    ).scalar_one_or_none()
    if erased_at is not None:
        _refuse(session, actor, referral_id)


def _listed(column: Any, position: Any, dialect: str) -> Any:
    """A referral's list (categories or indicators) as one value of the referral's row, in
    its order: ARRAY(SELECT …) on PostgreSQL, a JSON array on SQLite; a list either way."""
    ordered = (
        select(column.label("item"))
        .where(column.table.c.referral_id == Referral.id)
        .order_by(position)
        .correlate(Referral)
    )
    if dialect == "postgresql":
        return func.array(ordered.scalar_subquery(), type_=postgresql.ARRAY(column.type))
    inner = ordered.subquery()
    return select(func.json_group_array(inner.c.item, type_=JSON)).scalar_subquery()


@functools.cache
def _read_statement(dialect: str) -> Select[Any]:
    """What `read_referral` sends, built once per dialect: the referral's columns, its two
    lists and the caller's active share, filtered by visibility (policy), in one SELECT."""
    return select(
        *Referral.__table__.columns,
        _listed(ReferralCategory.category, ReferralCategory.position, dialect).label("categories"),
        _listed(ReferralIndicator.code, ReferralIndicator.position, dialect).label("indicators"),
        *policy.active_share_columns(policy.VIEWER_AGENCY, policy.VIEWER_NOW),
    ).where(
        Referral.id == bindparam("referral_id", type_=Referral.id.type),
        policy.referral_visible_to(policy.VIEWER_AGENCY, policy.VIEWER_NOW),
    )


def read_referral(
    session: Session, *, actor: Actor, referral_id: uuid.UUID, now: datetime
) -> ReferralRead:
    """As `reach_referral` (the same visibility, the same refusal), for a read that changes
    nothing: one Core SELECT and a row instead of ORM objects and their collections, which
    cost about a fifth of an audited read's CPU."""
    connection = session.connection()
    statement = _read_statement(connection.dialect.name)
    params = {"referral_id": referral_id, **policy.viewer(actor, now)}
    row = connection.execute(statement, params).one_or_none()
    access = _access(actor, row.lead_agency, row) if row is not None else None
    if row is None or access is None:
        _refuse(session, actor, referral_id)
    return ReferralRead(row, access)


def record_on(
    session: Session,
    actor: Actor,
    action: str,
    view: ReferralView | ReferralRead,
    *,
    outcome: str = "allowed",
    resource_type: str = "referral",
    resource_id: object | None = None,
) -> None:
    """One audit event about work on a referral the caller reaches through `view`: on the
    basis and for the purpose of that access. A refusal carried no child's data."""
    referral = view.referral
    audit.record(
        session,
        actor,
        action,
        outcome=outcome,
        resource_type=resource_type,
        resource_id=referral.id if resource_id is None else resource_id,
        referral_id=referral.id,
        subject_ids=[] if outcome == "denied" else [referral.subject_id],
        basis=view.access.basis,
        purpose=view.access.purpose_for(actor),
    )


def require_lead(session: Session, view: ReferralView, actor: Actor, action: str) -> None:
    if not view.access.is_lead:
        record_on(session, actor, action, view, outcome="denied")
        raise Forbidden("Only the lead agency may do this.")


def _check_version(referral: Referral, expected: int) -> None:
    if referral.version != expected:
        raise PreconditionFailed("The referral has changed; fetch it again and retry.")


# -- validation --------------------------------------------------------------------------------
def _check_indicators(codes: list[str]) -> list[str]:
    known = indicator_codes()
    bad = [c for c in codes if c not in known]
    if bad:
        raise ValidationFailed(
            "Unknown indicator code.",
            errors={"json": {"indicators": [f"Unknown code: {c}" for c in bad[:5]]}},
        )
    return list(dict.fromkeys(codes))


def _check_risk(risk_level: str, immediate_action: str | None) -> None:
    if risk_level == "immediate" and not immediate_action:
        raise ValidationFailed.field(
            "immediate_action", 'Required when risk_level is immediate (e.g. "999 called").'
        )


def _normalise_location(location: dict[str, Any] | None) -> dict[str, Any]:
    location = dict(location or {})
    postcode = location.get("postcode")
    if postcode:
        normalised = normalise_postcode(postcode)
        if normalised is None:
            raise ValidationFailed(
                "location.postcode is not a valid UK postcode.",
                errors={"json": {"location": {"postcode": ["Not a valid UK postcode."]}}},
            )
        location["postcode"] = normalised
    return location


def _set_location(referral: Referral, location: dict[str, Any] | None) -> None:
    location = _normalise_location(location)
    referral.location_description = location.get("description")
    referral.location_postcode = location.get("postcode")
    referral.location_transport_hub = location.get("transport_hub")


def _set_categories(referral: Referral, categories: list[str]) -> None:
    unique = list(dict.fromkeys(categories))
    referral.category_rows = [
        ReferralCategory(category=c, position=i) for i, c in enumerate(unique)
    ]


def _set_indicators(referral: Referral, codes: list[str]) -> None:
    referral.indicator_rows = [
        ReferralIndicator(code=c, position=i) for i, c in enumerate(_check_indicators(codes))
    ]


def next_reference(session: Session, year: int) -> str:
    """CH-<year>-<n>. PostgreSQL takes n from a sequence, which holds no lock, so concurrent
    creates do not queue (numbers are unique and increasing, with gaps where a create rolled
    back; they do not restart each year). SQLite, one writer at a time, keeps a counter row."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        number = session.execute(select(REFERENCE_SEQUENCE.next_value())).scalar_one()
        return f"CH-{year}-{number:06d}"
    stmt = (
        sqlite.insert(ReferenceCounter)
        .values(year=year, last=1)
        .on_conflict_do_update(
            index_elements=[ReferenceCounter.year], set_={"last": ReferenceCounter.last + 1}
        )
        .returning(ReferenceCounter.last)
    )
    number = session.execute(stmt).scalar_one()
    return f"CH-{year}-{number:06d}"


def _insert_new(session: Session, referral: Referral, history: ReferralHistory) -> None:
    """A new referral's rows, one Core INSERT per table (a unit-of-work flush of the same
    objects cost a quarter of a create's CPU). The objects stay out of the session: nothing
    else in the request changes them, and the response is dumped from them as they are."""
    session.flush()  # the child it is about, when the create recorded one
    connection = session.connection()
    connection.execute(_INSERT_REFERRAL, [new_row_values(referral)])
    connection.execute(_INSERT_HISTORY, [new_row_values(history)])
    if referral.category_rows:
        rows = [{**new_row_values(r), "referral_id": referral.id} for r in referral.category_rows]
        connection.execute(_INSERT_CATEGORY, rows)
    if referral.indicator_rows:
        rows = [{**new_row_values(r), "referral_id": referral.id} for r in referral.indicator_rows]
        connection.execute(_INSERT_INDICATOR, rows)


_INSERT_REFERRAL = insert(Referral.__table__)
_INSERT_HISTORY = insert(ReferralHistory.__table__)
_INSERT_CATEGORY = insert(ReferralCategory.__table__)
_INSERT_INDICATOR = insert(ReferralIndicator.__table__)


def _history(
    referral_id: uuid.UUID, actor: Actor, now: datetime, kind: str, **fields: Any
) -> ReferralHistory:
    return ReferralHistory(
        id=uuid.uuid4(),
        referral_id=referral_id,
        kind=kind,
        actor_agency=actor.agency,
        actor_client_id=actor.client_id,
        actor_user_id=actor.user_id,
        occurred_at=now,
        **fields,
    )


def _notify(
    session: Session,
    type: str,
    referral: Referral,
    actor: Actor,
    now: datetime,
    profiles: Sequence[str] = events.ALL_PROFILES,
    **ids: Any,
) -> None:
    """Tell every other agency that can see the referral (CONTRACT §6), or with `profiles`
    the lead and those whose shares are of one of them."""
    events.emit(
        session,
        type=type,
        recipients={referral.lead_agency},
        shares_of=referral.id,
        actor=actor,
        data={"referral_id": referral.id, **ids},
        now=now,
        profiles=profiles,
    )


# -- commands ----------------------------------------------------------------------------------
def create_referral(
    session: Session, *, actor: Actor, data: dict[str, Any], now: datetime
) -> Referral:
    from casehub.services import subjects

    observed_at: datetime = data["observed_at"]
    if observed_at > now + CLOCK_SKEW:
        raise ValidationFailed.field("observed_at", "Must not be in the future.")
    _check_risk(data["risk_level"], data.get("immediate_action"))
    if "subject" in data:
        subject = subjects.create_subject(session, actor=actor, data=data["subject"], now=now)
    else:
        subject = session.execute(
            policy.visible_subjects(actor, now).where(Subject.id == data["subject_id"])
        ).scalar_one_or_none()
        if subject is None:
            if session.get(Subject, data["subject_id"]) is not None:
                # Another agency's child: the same answer as none, and the attempt audited.
                audit.record(
                    session,
                    actor,
                    "access.denied",
                    outcome="denied",
                    resource_type="subject",
                    resource_id=data["subject_id"],
                    purpose=actor.purpose,
                )
            raise ValidationFailed.field("subject_id", "No such subject.")
    referral = Referral(
        id=uuid.uuid4(),
        version=1,
        reference=next_reference(session, now.year),
        subject_id=subject.id,
        lead_agency=actor.agency,
        created_by_agency=actor.agency,
        created_by_client_id=actor.client_id,
        created_by_user_id=actor.user_id,
        summary=data["summary"],
        narrative=data.get("narrative"),
        observed_at=observed_at,
        risk_level=data["risk_level"],
        immediate_action=data.get("immediate_action"),
        status="submitted",
        discoverable=bool(data.get("discoverable", True)),
        created_at=now,
        updated_at=now,
    )
    _set_location(referral, data.get("location"))
    _set_categories(referral, data["categories"])
    _set_indicators(referral, data.get("indicators") or [])
    _insert_new(
        session, referral, _history(referral.id, actor, now, "created", to_status="submitted")
    )
    audit.record(
        session,
        actor,
        "referral.create",
        resource_type="referral",
        resource_id=referral.id,
        referral_id=referral.id,
        subject_ids=[subject.id],
        basis="lead",
        purpose=actor.purpose or "case_work",
    )
    return referral


def get_referral(
    session: Session, *, actor: Actor, referral_id: uuid.UUID, now: datetime
) -> ReferralRead:
    """The referral as the caller's access shows it (§11: a summary share hides some fields)."""
    view = read_referral(session, actor=actor, referral_id=referral_id, now=now)
    record_on(session, actor, "referral.read", view)
    return ReferralRead(policy.referral_as_seen(view.referral, view.access), view.access)


def list_referrals(
    session: Session,
    *,
    actor: Actor,
    filters: dict[str, Any],
    limit: int,
    cursor: str | None,
    now: datetime,
) -> tuple[list[Any], str | None]:
    """One page in (created_at, id) order, each referral as the caller's access shows it.
    Each of the two visibility streams (led, shared with the caller) is read in that order,
    filtered and limited on its own, and the page is the first `limit` of their merge, so
    neither stream is read further than one page.
    With `updated_since` a stream is instead the range of what changed since then (an index
    on updated_at beside the agency), sorted: what changed, not what the agency holds.
    A `subject_id` covers every record of the child when records were merged (§11)."""
    from casehub.services import subjects

    clauses: list[ColumnElement[bool]] = []
    for name in ("status", "risk_level", "lead_agency"):
        if name in filters:
            clauses.append(getattr(Referral, name) == filters[name])
    if "subject_id" in filters:
        # The streams still hold only the referrals the caller sees.
        records = subjects.same_child(
            session, actor=actor, subject_id=filters["subject_id"], now=now
        )
        clauses.append(Referral.subject_id.in_(records))
    if "category" in filters:
        clauses.append(
            exists().where(
                ReferralCategory.referral_id == Referral.id,
                ReferralCategory.category == filters["category"],
            )
        )
    if "indicator" in filters:
        clauses.append(
            exists().where(
                ReferralIndicator.referral_id == Referral.id,
                ReferralIndicator.code == filters["indicator"],
            )
        )
    since = filters.get("updated_since")
    after = decode_cursor(cursor, [datetime, uuid.UUID]) if cursor else None
    mine = filters.get("shared_with_me")
    lead_filter = filters.get("lead_agency")
    streams = policy.visible_referral_streams(
        actor,
        now,
        led=mine is not True and lead_filter in (None, actor.agency),
        shared=mine is not False and lead_filter != actor.agency,
    )
    items: list[Referral] = []
    if streams:
        parts = [_stream_page(stream, clauses, since, after, limit) for stream in streams]
        # UNION, not UNION ALL: a referral both streams hold (they never should) lists once.
        merged = union(*(select(p.c.id, p.c.created_at) for p in parts)).subquery()
        items = list(
            session.execute(
                _with_children(select(Referral))
                .join(merged, merged.c.id == Referral.id)
                .order_by(merged.c.created_at, merged.c.id)
                .limit(limit + 1)
            ).scalars()
        )
    next_cursor = None
    if len(items) > limit:
        items = items[:limit]
        next_cursor = encode_cursor([items[-1].created_at, items[-1].id])
    audit.record(
        session,
        actor,
        "referral.list",
        resource_type="referral",
        subject_ids=[r.subject_id for r in items],
        purpose=actor.purpose or "case_work",
    )
    return _as_seen(session, actor, items, now), next_cursor


def _as_seen(session: Session, actor: Actor, items: list[Referral], now: datetime) -> list[Any]:
    """A page of referrals as the caller sees each: those it sees through a summary share
    without what that profile hides. One query for the page, and none when the agency leads
    every item."""
    shared = [r.id for r in items if r.lead_agency != actor.agency]
    if not shared:
        return list(items)
    summary = set(session.execute(policy.summary_shared(actor.agency, now, shared)).scalars())
    return [
        policy.Summary(r, policy.SUMMARY_HIDES_OF_REFERRAL) if r.id in summary else r for r in items
    ]


def _stream_page(
    stream: policy.Stream,
    clauses: list[ColumnElement[bool]],
    since: datetime | None,
    after: Sequence[Any] | None,
    limit: int,
) -> Any:
    """The first `limit + 1` rows of one visibility stream after the cursor, in list order.

    Without `updated_since` the stream is walked in its index's order and stops at the page.
    With it, the rows changed since then come from a range of updated_at beside the agency (the
    stream's own copy), all of them, and are sorted: walked in created order, a lead's recent
    changes sit at the end of its whole history, and PostgreSQL, counting on them to be spread
    evenly, would choose that walk. OFFSET 0 keeps the range a subquery planned on its own."""
    stmt = stream.stmt.where(
        *clauses, *([tuple_(stream.created_at, stream.id) > tuple_(*after)] if after else [])
    )
    if since is None:
        return stmt.order_by(stream.created_at, stream.id).limit(limit + 1).subquery()
    changed = stmt.where(stream.updated_at >= since).offset(0).subquery()
    return (
        select(changed.c.id, changed.c.created_at)
        .order_by(changed.c.created_at, changed.c.id)
        .limit(limit + 1)
        .subquery()
    )


def update_referral(
    session: Session,
    *,
    actor: Actor,
    referral_id: uuid.UUID,
    expected_version: int,
    changes: dict[str, Any],
    now: datetime,
) -> Referral:
    view = reach_referral(session, actor=actor, referral_id=referral_id, now=now)
    require_lead(session, view, actor, "referral.update")
    referral = view.referral
    _check_version(referral, expected_version)
    if not changes:
        raise ValidationFailed(
            "Send at least one field to change.", errors={"json": {"_schema": ["Empty update."]}}
        )
    risk = changes.get("risk_level", referral.risk_level)
    action = changes.get("immediate_action", referral.immediate_action)
    _check_risk(risk, action)
    for name in ("summary", "narrative", "risk_level", "immediate_action", "discoverable"):
        if name in changes:
            if name in ("summary", "discoverable") and changes[name] is None:
                raise ValidationFailed.field(name, "Field may not be null.")
            setattr(referral, name, changes[name])
    if "location" in changes:
        _set_location(referral, changes["location"])
    if "categories" in changes:
        _set_categories(referral, changes["categories"])
    if "indicators" in changes:
        _set_indicators(referral, changes["indicators"])
    referral.updated_at = now
    session.flush()
    record_on(session, actor, "referral.update", view)
    _notify(session, "referral.updated", referral, actor, now)
    return referral


def transition_referral(
    session: Session,
    *,
    actor: Actor,
    referral_id: uuid.UUID,
    expected_version: int,
    to: str,
    reason: str | None,
    now: datetime,
) -> Referral:
    view = reach_referral(session, actor=actor, referral_id=referral_id, now=now)
    require_lead(session, view, actor, "referral.transition")
    referral = view.referral
    _check_version(referral, expected_version)
    current = referral.status
    if to not in TRANSITIONS[current]:
        raise Conflict(f"A referral cannot move from {current} to {to}.")
    reopening = current == "closed"
    if (to in ("no_further_action", "closed") or reopening) and not reason:
        raise ValidationFailed.field(
            "reason", f"Required when moving to {to}" + (" (reopening)." if reopening else ".")
        )
    referral.status = to
    referral.closed_at = now if to == "closed" else None  # retention runs from the closure
    referral.updated_at = now
    session.add(
        _history(
            referral.id, actor, now, "transition", from_status=current, to_status=to, reason=reason
        )
    )
    session.flush()
    record_on(session, actor, "referral.transition", view)
    _notify(session, "referral.status_changed", referral, actor, now)
    return referral


def referral_history(
    session: Session,
    *,
    actor: Actor,
    referral_id: uuid.UUID,
    limit: int,
    cursor: str | None,
    now: datetime,
) -> tuple[list[ReferralHistory], str | None]:
    view = reach_referral(session, actor=actor, referral_id=referral_id, now=now)
    page = keyset_page(
        session,
        select(ReferralHistory).where(ReferralHistory.referral_id == referral_id),
        keys=[ReferralHistory.occurred_at, ReferralHistory.id],
        limit=limit,
        cursor=cursor,
    )
    record_on(session, actor, "referral.history", view)
    return page


# -- notes -------------------------------------------------------------------------------------
def add_note(
    session: Session,
    *,
    actor: Actor,
    referral_id: uuid.UUID,
    body: str,
    visibility: str,
    now: datetime,
) -> Note:
    view = reach_referral(session, actor=actor, referral_id=referral_id, now=now)
    if not view.access.can_contribute:
        record_on(session, actor, "note.create", view, outcome="denied")
        raise Forbidden("Only the lead agency or a contribute share may add notes.")
    lock_unerased(session, actor, referral_id)
    note = Note(
        referral_id=referral_id,
        body=body,
        visibility=visibility,
        author_agency=actor.agency,
        author_client_id=actor.client_id,
        author_user_id=actor.user_id,
        created_at=now,
    )
    session.add(note)
    session.flush()
    record_on(session, actor, "note.create", view, resource_type="note", resource_id=note.id)
    if visibility == "shared":  # an agency note is seen by its author's agency only
        # A summary share lists no other agency's notes: it is not told of one (§11).
        _notify(session, "note.added", view.referral, actor, now, ("full",), note_id=note.id)
    return note


def list_notes(
    session: Session,
    *,
    actor: Actor,
    referral_id: uuid.UUID,
    limit: int,
    cursor: str | None,
    now: datetime,
) -> tuple[list[Note], str | None]:
    view = reach_referral(session, actor=actor, referral_id=referral_id, now=now)
    stmt = select(Note).where(Note.referral_id == referral_id, policy.note_visible_to(actor.agency))
    profile_clause = policy.notes_seen(view.access, actor.agency, Note.author_agency)
    if profile_clause is not None:
        stmt = stmt.where(profile_clause)
    page = keyset_page(session, stmt, keys=[Note.created_at, Note.id], limit=limit, cursor=cursor)
    record_on(session, actor, "note.list", view)
    return page


# -- legal hold --------------------------------------------------------------------------------
def place_legal_hold(
    session: Session, *, actor: Actor, referral_id: uuid.UUID, reason: str, now: datetime
) -> Referral:
    """Keep the referral from retention (CONTRACT §11) until the hold is released; lead only.
    Placing it again while held replaces the reason and the agency and keeps `since`: the
    referral has been held from the first placement. Every placement is in the history."""
    view = reach_referral(session, actor=actor, referral_id=referral_id, now=now)
    require_lead(session, view, actor, "referral.legal_hold")
    referral = view.referral
    if referral.legal_hold_at is None:
        referral.legal_hold_at = now
    referral.legal_hold_reason = reason
    referral.legal_hold_by_agency = actor.agency
    session.add(_history(referral.id, actor, now, "legal_hold", reason=reason))
    session.flush()
    record_on(session, actor, "referral.legal_hold", view)
    return referral


def release_legal_hold(
    session: Session, *, actor: Actor, referral_id: uuid.UUID, reason: str, now: datetime
) -> Referral:
    """End the referral's legal hold (lead only; 409 when it has none): retention counts from
    its closure again, so a referral closed long ago is erased by the next run."""
    view = reach_referral(session, actor=actor, referral_id=referral_id, now=now)
    require_lead(session, view, actor, "referral.legal_hold_release")
    referral = view.referral
    if referral.legal_hold_at is None:
        raise Conflict("This referral is not under legal hold.")
    referral.legal_hold_at = None
    referral.legal_hold_reason = None
    referral.legal_hold_by_agency = None
    session.add(_history(referral.id, actor, now, "legal_hold_released", reason=reason))
    session.flush()
    record_on(session, actor, "referral.legal_hold_release", view)
    return referral
