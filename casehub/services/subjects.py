"""Subjects: record, read, change and search the children and young people referrals are about."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Integer,
    Select,
    and_,
    bindparam,
    case,
    func,
    insert,
    literal,
    or_,
    select,
    tuple_,
    union_all,
)
from sqlalchemy.dialects.postgresql import distinct_on
from sqlalchemy.orm import Session, aliased
from sqlalchemy.orm.exc import StaleDataError

from casehub import audit
from casehub.auth.actor import Actor
from casehub.db import new_id, new_row_values
from casehub.errors import Conflict, Forbidden, NotFound, PreconditionFailed, ValidationFailed
from casehub.models import (
    Referral,
    Share,
    Subject,
    SubjectIdentifier,
    SubjectMerge,
    SubjectNameKey,
)
from casehub.services import events, names, policy
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
# The keys carry the birth year too (matching finds a name among children born within a year).
_KEY_FIELDS = _NAME_FIELDS | {"date_of_birth", "estimated_birth_year"}
# A search reads its candidates in batches: FIRST_BATCH per page row asked for (and one more),
# then twice as many each time up to MAX_BATCH. A candidate already has keys of every query word
# and is visible, so names.matches refuses few of them (names that share a key yet are two edits
# apart): the first batch is nearly always the last.
FIRST_BATCH = 1
MAX_BATCH = 2000
# How a search of several words is planned: each key's rows after the page's start are sampled
# up to SAMPLE_ROWS in page order (exact for a rare key, a density for a common one), which gives
# each word's key rows and, nearly, how many subjects they name. Walking one word's keys and
# probing each of its subjects for the others' keys costs a primary-key lookup per subject, about
# PROBE_COST key rows streamed; merging two words' key ranges in page order costs both words'
# rows and no lookup. At a million children "Oliver Smith" probes 5,400 Smiths, while "Mohammed
# Ali" probed 25,000 children for Ali's keys ("ai" is a deletion of every Kai) where Mohammed
# names 9,200: PostgreSQL's estimates, which know only the commonest keys, called Ali the rarer.
# Measured at a million children (2 cores shared with other work): a probe 14 us, a key row
# streamed 0.48 us, some 29 rows. 20 leans towards probing, the walk that reads least when a
# projection is off.
SAMPLE_ROWS = 500
PROBE_COST = 20.0


# -- writing -----------------------------------------------------------------------------------
def create_subject(
    session: Session, *, actor: Actor, data: Mapping[str, Any], now: datetime
) -> Subject:
    """Record a subject for the actor's agency; `data` is SubjectCreateSchema's loaded data."""
    subject = Subject(
        id=new_id(),
        created_by_agency=actor.agency,
        created_at=now,
        updated_at=now,
        version=1,
        aliases=[],
        gender="unknown",
        identifiers=[],
    )
    _apply(subject, data)
    # Core INSERTs of the subject and its keys (a unit-of-work flush of the same objects was a
    # third of a create's CPU). The object stays out of the session: the request only reads it.
    session.flush()  # anything pending first, in the order it was added
    connection = session.connection()
    connection.execute(_INSERT_SUBJECT, [new_row_values(subject)])
    kinds = names.subject_key_kinds(subject.given_name, subject.family_name, subject.aliases)
    year = birth_year(subject)
    if kinds:
        connection.execute(
            _INSERT_NAME_KEYS,
            [
                {
                    "subject_id": subject.id,
                    "key": k,
                    "whole_word": w,
                    "subject_created_at": now,
                    "birth_year": year,
                }
                for k, w in sorted(kinds.items())
            ],
        )
    identifiers = identifier_rows(subject)
    if identifiers:
        connection.execute(_INSERT_IDENTIFIERS, identifiers)
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


_INSERT_SUBJECT = insert(Subject.__table__)
_INSERT_NAME_KEYS = insert(SubjectNameKey.__table__)
_INSERT_IDENTIFIERS = insert(SubjectIdentifier.__table__)


def birth_year(subject: Subject) -> int | None:
    """The year the child was born in, as far as it is known: subject_name_keys.birth_year."""
    if subject.date_of_birth is not None:
        return subject.date_of_birth.year
    return subject.estimated_birth_year


def identifier_rows(subject: Subject) -> list[dict[str, Any]]:
    """The subject's subject_identifiers rows (one per distinct system and value)."""
    seen = {
        (str(item["system"]), names.identifier_value(str(item["value"])))
        for item in subject.identifiers or []
        if item.get("system") and item.get("value")
    }
    seen = {(system, value) for system, value in seen if value}  # "- -" identifies nobody
    return [
        {"subject_id": subject.id, "system": system, "value": value}
        for system, value in sorted(seen)
    ]


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
        if changed & _KEY_FIELDS:
            _sync_name_keys(subject)
        if "identifiers" in changed:
            _sync_identifiers(subject)
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
    """Make the stored search keys those of the subject's current names (diffed, not rewritten):
    a kept key may change kind ("li" is a deletion of "Lia" but a whole word of "Li")."""
    wanted = names.subject_key_kinds(subject.given_name, subject.family_name, subject.aliases or [])
    year = birth_year(subject)
    current = {row.key: row for row in subject.name_keys}
    for key, row in current.items():
        if key not in wanted:
            subject.name_keys.remove(row)
            continue
        if row.whole_word != wanted[key]:
            row.whole_word = wanted[key]
        if row.subject_created_at != subject.created_at:
            row.subject_created_at = subject.created_at
        if row.birth_year != year:
            row.birth_year = year
    subject.name_keys.extend(
        SubjectNameKey(
            key=key,
            whole_word=wanted[key],
            subject_created_at=subject.created_at,
            birth_year=year,
        )
        for key in sorted(wanted.keys() - current.keys())
    )


def _sync_identifiers(subject: Subject) -> None:
    """Make the subject's identifier rows those of its current identifiers."""
    wanted = {(row["system"], row["value"]) for row in identifier_rows(subject)}
    current = {(row.system, row.value): row for row in subject.identifier_rows}
    for pair, row in current.items():
        if pair not in wanted:
            subject.identifier_rows.remove(row)
    subject.identifier_rows.extend(
        SubjectIdentifier(system=system, value=value)
        for system, value in sorted(wanted - current.keys())
    )


# -- merging (CONTRACT §11) ---------------------------------------------------------------------
MERGE, UNMERGE = "merge", "unmerge"


def merge_subjects(
    session: Session,
    *,
    actor: Actor,
    subject_id: uuid.UUID,
    duplicate_id: uuid.UUID,
    reason: str,
    now: datetime,
) -> Subject:
    """Merge `duplicate_id` into `subject_id` (the survivor): both are then one child.

    The caller's agency must see both (404 for the one it cannot, audited as denied) and must
    have recorded the duplicate (policy.may_merge; 403). 409 for a subject merged into itself,
    a survivor that is itself merged into another (chains stay one level: merge into its
    survivor), a duplicate already merged, or a duplicate that other records are merged into.
    Returns the survivor."""
    survivor, duplicate = _merge_pair(session, actor, subject_id, duplicate_id, now, "merge")
    if survivor.id == duplicate.id:
        raise Conflict("A subject cannot be merged into itself.")
    if survivor.merged_into is not None:
        raise Conflict(
            "This subject is itself merged into another; merge the duplicate into that one."
        )
    if duplicate.merged_into is not None:
        raise Conflict("The duplicate is already merged into a subject; unmerge it first.")
    if survivor.erased_at is not None or duplicate.erased_at is not None:
        raise Conflict("An erased subject cannot be merged.")
    has_duplicates = session.execute(
        select(Subject.id).where(Subject.merged_into == duplicate.id).limit(1)
    ).first()
    if has_duplicates is not None:
        raise Conflict(
            "Other subjects are merged into the duplicate; merge it the other way round, or "
            "unmerge them first."
        )
    duplicate.merged_into = survivor.id
    _record_merge(session, actor, MERGE, survivor, duplicate, reason, now)
    return survivor


def unmerge_subjects(
    session: Session,
    *,
    actor: Actor,
    subject_id: uuid.UUID,
    duplicate_id: uuid.UUID,
    reason: str,
    now: datetime,
) -> Subject:
    """Undo the merge of `duplicate_id` into `subject_id`: the same checks of visibility and
    of the recording agency as a merge; 409 when the duplicate is not merged into it."""
    survivor, duplicate = _merge_pair(session, actor, subject_id, duplicate_id, now, "unmerge")
    if duplicate.merged_into != survivor.id:
        raise Conflict("The duplicate is not merged into this subject.")
    duplicate.merged_into = None
    _record_merge(session, actor, UNMERGE, survivor, duplicate, reason, now)
    return survivor


def _merge_pair(
    session: Session,
    actor: Actor,
    subject_id: uuid.UUID,
    duplicate_id: uuid.UUID,
    now: datetime,
    verb: str,
) -> tuple[Subject, Subject]:
    """The survivor and the duplicate, both visible to the caller and the duplicate its
    agency's, locked (in id order, so two merges of overlapping pairs queue instead of
    deadlocking) and read again under the lock: a concurrent merge is seen, not overwritten."""
    require_visible_subject(session, actor=actor, subject_id=subject_id, now=now)
    duplicate = require_visible_subject(session, actor=actor, subject_id=duplicate_id, now=now)
    if not policy.may_merge(actor.agency, duplicate=duplicate):
        _record_denied(session, actor, duplicate_id, action=f"subject.{verb}")
        raise Forbidden(f"Only the agency that recorded the duplicate may {verb} it.")
    locked = session.execute(
        select(Subject)
        .where(Subject.id.in_({subject_id, duplicate_id}))
        .order_by(Subject.id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).scalars()
    by_id = {subject.id: subject for subject in locked}
    return by_id[subject_id], by_id[duplicate_id]


def _record_merge(
    session: Session,
    actor: Actor,
    action: str,
    survivor: Subject,
    duplicate: Subject,
    reason: str,
    now: datetime,
) -> None:
    """Write the change of the duplicate, its row in subject_merges, its audit event and the
    notice to every other agency that sees a referral about the child."""
    duplicate.updated_at = now
    try:
        session.flush()
    except StaleDataError as exc:  # changed by a concurrent request since we read it
        raise Conflict("The subject changed while it was being merged; try again.") from exc
    session.add(
        SubjectMerge(
            id=new_id(),
            action=action,
            subject_id=survivor.id,
            duplicate_id=duplicate.id,
            reason=reason,
            actor_agency=actor.agency,
            actor_client_id=actor.client_id,
            actor_user_id=actor.user_id,
            occurred_at=now,
        )
    )
    session.flush()
    audit.record(
        session,
        actor,
        f"subject.{action}",
        resource_type=RESOURCE,
        resource_id=survivor.id,
        subject_ids=[survivor.id, duplicate.id],
        basis=CREATOR_BASIS,
        purpose=actor.purpose or DEFAULT_PURPOSE,
    )
    # The child's records now: the survivor, the records merged into it, and the duplicate
    # (merged in, or just unmerged).
    records = select(Subject.id).where(
        or_(Subject.id.in_([survivor.id, duplicate.id]), Subject.merged_into == survivor.id)
    )
    holders = session.execute(policy.referral_holders(records, now)).scalars()
    events.emit(
        session,
        type="subject.merged",
        recipients=set(holders),
        actor=actor,
        data={"subject_id": survivor.id, "duplicate_id": duplicate.id, "action": action},
        now=now,
    )


def merge_history(
    session: Session,
    *,
    actor: Actor,
    subject_id: uuid.UUID,
    limit: int,
    cursor: str | None,
    now: datetime,
) -> tuple[list[SubjectMerge], str | None]:
    """Every merge and unmerge of the subject (as survivor or as duplicate), oldest first:
    those whose other record the caller's agency sees, or that its agency made."""
    subject = require_visible_subject(session, actor=actor, subject_id=subject_id, now=now)
    other = case(
        (SubjectMerge.subject_id == subject_id, SubjectMerge.duplicate_id),
        else_=SubjectMerge.subject_id,
    )
    other_visible = (
        select(Subject.id).where(Subject.id == other, policy.subject_visible(actor, now)).exists()
    )
    stmt = select(SubjectMerge).where(
        or_(SubjectMerge.subject_id == subject_id, SubjectMerge.duplicate_id == subject_id),
        or_(SubjectMerge.actor_agency == actor.agency, other_visible),
    )
    items, next_cursor = keyset_page(
        session, stmt, keys=[SubjectMerge.occurred_at, SubjectMerge.id], limit=limit, cursor=cursor
    )
    basis, purpose = _read_basis(session, actor, subject, now)
    concerned = {subject.id}
    for item in items:
        concerned |= {item.subject_id, item.duplicate_id}
    audit.record(
        session,
        actor,
        "subject.merge_history",
        resource_type=RESOURCE,
        resource_id=subject.id,
        subject_ids=sorted(concerned, key=str),
        basis=basis,
        purpose=purpose,
    )
    return items, next_cursor


def same_child(
    session: Session, *, actor: Actor, subject_id: uuid.UUID, now: datetime
) -> list[uuid.UUID]:
    """The records that are one child with `subject_id` (its survivor and every record merged
    into that), when the caller's agency sees `subject_id`; otherwise `subject_id` alone. What
    a `subject_id` filter covers: a caller learns no merge of a record it cannot see. One query
    (the primary key, then ix_subjects_merged_into)."""
    root = (
        select(func.coalesce(Subject.merged_into, Subject.id))
        .where(Subject.id == subject_id, policy.subject_visible(actor, now))
        .scalar_subquery()
    )
    member = aliased(Subject)
    rows = session.execute(select(member.id, member.merged_into).where(member.merged_into == root))
    records = {subject_id}
    for record_id, survivor_id in rows:
        records |= {record_id, survivor_id}
    return sorted(records, key=str)


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


def get_subject(session: Session, *, actor: Actor, subject_id: uuid.UUID, now: datetime) -> Any:
    """The child's record as the caller's agency sees it (§11: through summary shares only,
    without address and identifiers)."""
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
    return as_seen(session, actor, [subject], now)[0]


def as_seen(session: Session, actor: Actor, items: Sequence[Subject], now: datetime) -> list[Any]:
    """Children's records as the caller's agency sees each (CONTRACT §11): in full, or without
    what a summary share hides when it sees the child through summary shares only. One query
    for all of them, and none for the records its agency made."""
    others = [s.id for s in items if s.created_by_agency != actor.agency]
    partial: set[uuid.UUID] = set()
    if others:
        statement = policy.seen_only_in_summary(actor.agency, now, others)
        partial = set(session.execute(statement).scalars())
    return [policy.subject_as_seen(s, in_full=s.id not in partial) for s in items]


def search_subjects(
    session: Session,
    *,
    actor: Actor,
    now: datetime,
    limit: int,
    cursor: str | None = None,
    q: str | None = None,
    date_of_birth: date | None = None,
) -> tuple[list[Any], str | None]:
    """Visible subjects, optionally by name or alias (`q`) and exact date of birth, in
    (created_at, id) order; returns one page and the cursor of the next."""
    if q is None:
        items, next_cursor = _listing_page(
            session, actor, now, date_of_birth=date_of_birth, limit=limit, cursor=cursor
        )
    else:
        tokens = names.query_tokens(q)
        if not tokens:
            raise ValidationFailed.field("q", "Must contain letters or digits.", location="query")
        items, next_cursor = _matching_page(
            session,
            actor,
            now,
            tokens,
            date_of_birth=date_of_birth,
            limit=limit,
            cursor=cursor,
        )
    audit.record(
        session,
        actor,
        "subject.search" if q is not None or date_of_birth is not None else "subject.list",
        resource_type=RESOURCE,
        subject_ids=[s.id for s in items],
        purpose=actor.purpose or DEFAULT_PURPOSE,
    )
    return as_seen(session, actor, items, now), next_cursor


@dataclass(frozen=True)
class _Word:
    """A query word as the name keys see it: its search keys, and whether only whole-word keys
    count (a word too short to tolerate a typo must equal a name token)."""

    keys: tuple[str, ...]
    whole_only: bool

    @classmethod
    def of(cls, token: str) -> _Word:
        return cls(tuple(sorted(names.search_keys(token))), not names.tolerates_typo(token))


# The search's statements are built once per shape (how many keys the driving word has, which
# words must match whole, whether a batch resumes after a candidate, whether a date of birth
# narrows it) with bound parameters: building these unions of subqueries costs several times
# more CPU than PostgreSQL takes to run them (policy.py does the same for its visibility).
_AFTER = (
    bindparam("after_created_at", type_=SubjectNameKey.subject_created_at.type),
    bindparam("after_id", type_=SubjectNameKey.subject_id.type),
)
_SIZE = bindparam("size", type_=Integer())
_DATE_OF_BIRTH = bindparam("date_of_birth", type_=Subject.date_of_birth.type)


def _key_rows(keys: Any, word: int, whole_only: bool) -> ColumnElement[bool]:
    """The key rows that may belong to a name close to query word number `word` (its keys are
    the parameter words_<word>)."""
    found = keys.key.in_(bindparam(f"words_{word}", expanding=True))
    return and_(found, keys.whole_word) if whole_only else found


def _word_parameters(words: Sequence[_Word]) -> dict[str, Any]:
    return {f"words_{n}": list(word.keys) for n, word in enumerate(words)}


def _range_parameters(prefix: str, word: _Word) -> dict[str, str]:
    return {f"{prefix}_{n}": key for n, key in enumerate(word.keys)}


@dataclass(frozen=True)
class _Plan:
    """How one search walks: the driving word's key ranges, optionally merged in page order with
    a second word's (`merged`), and the words probed per candidate (`probed`)."""

    driver: _Word
    merged: _Word | None
    probed: tuple[_Word, ...]


def _matching_page(
    session: Session,
    actor: Actor,
    now: datetime,
    tokens: list[str],
    *,
    date_of_birth: date | None,
    limit: int,
    cursor: str | None,
) -> tuple[list[Subject], str | None]:
    """A keyset page of the visible subjects that really are within one edit of every query word.

    One statement (`_walk_statement`) walks the key ranges of one word in page order (or of two,
    merged) and keeps the subjects that have keys of every other word and that the viewer may
    see; their names are checked in Python, and a batch is read again after its last candidate
    only when names.matches refused some. Merged records are listed once per child
    (`_one_per_child`). The next cursor is the position of the last subject returned, so a walk
    neither skips nor repeats however many candidates fail, and it names no subject the caller
    cannot see.
    """
    after = decode_cursor(cursor, [datetime, uuid.UUID]) if cursor else None
    plan = _plan(session, [_Word.of(token) for token in tokens], after)
    parameters: dict[str, Any] = {
        **policy.viewer(actor, now),
        **_range_parameters("key", plan.driver),
        **(_range_parameters("merge", plan.merged) if plan.merged else {}),
        **_word_parameters(plan.probed),
    }
    if date_of_birth is not None:
        parameters["date_of_birth"] = date_of_birth
    size = min(FIRST_BATCH * (limit + 1), MAX_BATCH)
    on_postgresql = session.get_bind().dialect.name == "postgresql"

    def qualifies(subject: Subject) -> bool:
        """Whether the walk would find this (visible) subject: its names and date of birth."""
        if date_of_birth is not None and subject.date_of_birth != date_of_birth:
            return False
        return names.matches(
            tokens,
            names.subject_tokens(subject.given_name, subject.family_name, subject.aliases or []),
        )

    found: list[tuple[Subject, Subject]] = []
    while True:
        stmt = _walk_statement(
            (len(plan.driver.keys), plan.driver.whole_only),
            (len(plan.merged.keys), plan.merged.whole_only) if plan.merged else None,
            tuple(word.whole_only for word in plan.probed),
            resumed=after is not None,
            by_birth_date=date_of_birth is not None,
            on_postgresql=on_postgresql,
        )
        if after is not None:
            parameters["after_created_at"], parameters["after_id"] = after
        batch = list(session.execute(stmt, {**parameters, "size": size}).scalars())
        hits = [subject for subject in batch if qualifies(subject)]
        found.extend(_one_per_child(session, actor, now, hits, qualifies))
        if len(found) > limit or len(batch) < size:
            break
        after = (batch[-1].created_at, batch[-1].id)
        size = min(size * 2, MAX_BATCH)
    return _page_of(found, limit)


def _listing_page(
    session: Session,
    actor: Actor,
    now: datetime,
    *,
    date_of_birth: date | None,
    limit: int,
    cursor: str | None,
) -> tuple[list[Subject], str | None]:
    """A keyset page of the visible subjects (born on `date_of_birth`, if given), one per child
    (`_one_per_child`), in (created_at, id) order."""
    stmt = policy.visible_subjects(actor, now)
    if date_of_birth is not None:
        stmt = stmt.where(Subject.date_of_birth == date_of_birth)

    def qualifies(subject: Subject) -> bool:
        return date_of_birth is None or subject.date_of_birth == date_of_birth

    after = decode_cursor(cursor, [datetime, uuid.UUID]) if cursor else None
    size = limit + 1
    found: list[tuple[Subject, Subject]] = []
    while True:
        page = stmt if after is None else stmt.where(tuple_(*ORDER) > tuple_(*after))
        batch = list(session.execute(page.order_by(*ORDER).limit(size)).scalars())
        found.extend(_one_per_child(session, actor, now, batch, qualifies))
        if len(found) > limit or len(batch) < size:
            break
        after = (batch[-1].created_at, batch[-1].id)
        size = min(size * 2, MAX_BATCH)
    return _page_of(found, limit)


def _page_of(found: list[tuple[Subject, Subject]], limit: int) -> tuple[list[Subject], str | None]:
    """The first `limit` listed subjects of (position, listed) pairs, and the cursor after the
    last one's position (where the walk found it, which is not the survivor's own place)."""
    if len(found) <= limit:
        return [listed for _, listed in found], None
    position = found[limit - 1][0]
    return [listed for _, listed in found[:limit]], encode_cursor(
        (position.created_at, position.id)
    )


def _position(subject: Subject) -> tuple[datetime, uuid.UUID]:
    return (subject.created_at, subject.id)


def _one_per_child(
    session: Session,
    actor: Actor,
    now: datetime,
    hits: list[Subject],
    qualifies: Callable[[Subject], bool],
) -> list[tuple[Subject, Subject]]:
    """The hits of one batch (visible subjects that qualify, in page order) as (position,
    listed) pairs, one per child: a duplicate is listed as its survivor when the caller sees
    the survivor (policy.listed_as), and a child is listed at the place of its first record
    that qualifies, so a cursor walk lists it exactly once whichever of its records it meets
    first. A record the caller cannot see never qualifies anyone: its names are not searched.

    One query per batch (the visible records merged into a hit, or that a hit is merged into:
    ix_subjects_merged_into and the primary key); nothing more when none is."""
    if not hits:
        return []
    roots = {subject.merged_into or subject.id for subject in hits}
    survivors = {subject.merged_into for subject in hits if subject.merged_into is not None}
    related = session.execute(
        policy.visible_subjects(actor, now).where(
            or_(Subject.merged_into.in_(roots), Subject.id.in_(survivors))
        )
    ).scalars()
    by_id = {subject.id: subject for subject in (*hits, *related)}
    if len(by_id) == len(hits) and not survivors:
        return [(subject, subject) for subject in hits]  # no merged record among them
    visible = by_id.keys()
    records: dict[uuid.UUID, list[Subject]] = {}
    for subject in by_id.values():
        records.setdefault(policy.listed_as(subject, visible), []).append(subject)
    listed: list[tuple[Subject, Subject]] = []
    for hit in hits:
        key = policy.listed_as(hit, visible)
        earlier = any(
            other is not hit and _position(other) < _position(hit) and qualifies(other)
            for other in records[key]
        )
        if not earlier:
            listed.append((hit, by_id[key]))
    return listed


def _plan(session: Session, words: list[_Word], after: tuple[datetime, uuid.UUID] | None) -> _Plan:
    """The cheapest walk by what the sample says of each word after `after`: probing from the
    word whose rows and subjects cost least, or merging the two words with the fewest rows
    (both end where the page fills, so their costs per row of the walk compare directly)."""
    if len(words) == 1:
        return _Plan(words[0], None, ())
    rows, subjects = _sizes(session, words, after)
    probe_cost = [rows[n] + PROBE_COST * subjects[n] for n in range(len(words))]
    driver = min(range(len(words)), key=lambda n: probe_cost[n])
    first, second = sorted(range(len(words)), key=lambda n: rows[n])[:2]
    # The rest are probed only on the candidates that have the walked words: fewest first.
    if rows[first] + rows[second] < probe_cost[driver]:
        rest = sorted(set(range(len(words))) - {first, second}, key=lambda n: subjects[n])
        return _Plan(words[first], words[second], tuple(words[n] for n in rest))
    rest = sorted(set(range(len(words))) - {driver}, key=lambda n: subjects[n])
    return _Plan(words[driver], None, tuple(words[n] for n in rest))


def _sizes(
    session: Session, words: list[_Word], after: tuple[datetime, uuid.UUID] | None
) -> tuple[list[float], list[float]]:
    """For each word, about how many key rows and how many subjects it has after `after`.

    Each key's rows are read up to SAMPLE_ROWS in page order: a key with fewer is counted, one
    with more is projected from how far in time its sample reached, to the newest subject. A
    subject whose name is the word has every key of it, one a typo away one of them, so a word
    names about its rows less (keys - 1) x its rarest key's."""
    stmt = _sample_statement(
        tuple((len(word.keys), word.whole_only) for word in words), resumed=after is not None
    )
    parameters: dict[str, Any] = {"sample_rows": SAMPLE_ROWS}
    for n, word in enumerate(words):
        parameters.update(_range_parameters(f"sample_{n}", word))
    if after is not None:
        parameters["after_created_at"], parameters["after_id"] = after
    sampled = session.execute(stmt, parameters).all()
    newest = max((row.newest for row in sampled if row.newest is not None), default=None)
    firsts = [row.first for row in sampled if row.first is not None]
    start = after[0] if after is not None else min(firsts, default=None)

    def projected(count: int, reach: datetime | None) -> float:
        if count < SAMPLE_ROWS or reach is None or newest is None or start is None:
            return float(count)
        reached = max((reach - start).total_seconds(), 1e-6)
        return count * max((newest - start).total_seconds(), reached) / reached

    per_key: list[list[float]] = [[] for _ in words]
    for row in sampled:
        per_key[row.word].append(projected(row.count, row.reach))
    rows = [sum(keys) for keys in per_key]
    subjects = [sum(keys) - (len(keys) - 1) * min(keys) for keys in per_key]
    return rows, subjects


@functools.lru_cache(maxsize=64)
def _sample_statement(words: tuple[tuple[int, bool], ...], *, resumed: bool) -> Select[Any]:
    """Per key of every word (parameters sample_<word>_<key>): how many of its first sample_rows
    rows after `after` there are, the first's and the last's created_at, and the newest subject's.
    Each is one range of ix_subject_name_keys_key_order read in order up to the limit."""
    keys = SubjectNameKey
    order = (keys.subject_created_at, keys.subject_id)
    sample_rows = bindparam("sample_rows", type_=Integer())
    arms = []
    for word, (key_count, whole_only) in enumerate(words):
        for n in range(key_count):
            sample = select(keys.subject_created_at).where(
                keys.key == bindparam(f"sample_{word}_{n}", type_=keys.key.type)
            )
            if whole_only:
                sample = sample.where(keys.whole_word)
            if resumed:
                sample = sample.where(tuple_(*order) > tuple_(*_AFTER))
            taken = sample.order_by(*order).limit(sample_rows).subquery()
            arms.append(
                select(
                    literal(word).label("word"),
                    func.count().label("count"),
                    func.min(taken.c.subject_created_at).label("first"),
                    func.max(taken.c.subject_created_at).label("reach"),
                )
            )
    sampled = union_all(*arms).subquery()
    newest = select(func.max(Subject.created_at)).scalar_subquery()
    return select(*sampled.c, newest.label("newest"))


def _ordered_once(
    prefix: str, key_count: int, whole_only: bool, *, resumed: bool, on_postgresql: bool
) -> Any:
    """The subjects that have a key prefix_0, prefix_1, ... (whole words only if `whole_only`),
    once each, as (subject_created_at, subject_id) in page order after `after` if resumed.

    Each key is a range of ix_subject_name_keys_key_order already in page order. Each range is
    ordered in its own subquery, so PostgreSQL merges them (Merge Append), and DISTINCT ON keeps
    a subject once (Unique; a subject has several keys of one word). Both stream: under the LIMIT
    the ranges are read only as far as the page needs. A plain DISTINCT means the same (SQLite,
    which has no DISTINCT ON, uses it), but PostgreSQL plans this subquery for all of its rows
    (the outer query joins) and hashed them: every one of the 91,000 key rows of "Smith" at a
    million children, to keep 234. DISTINCT ON it can only sort or merge, and merging ranges
    already in order costs less than sorting them."""
    keys = SubjectNameKey
    order = (keys.subject_created_at, keys.subject_id)
    arms = []
    for n in range(key_count):
        arm = select(*order).where(keys.key == bindparam(f"{prefix}_{n}", type_=keys.key.type))
        if whole_only:
            arm = arm.where(keys.whole_word)
        if resumed:
            arm = arm.where(tuple_(*order) > tuple_(*_AFTER))
        arms.append(arm)
    if key_count == 1:  # one row per subject (the primary key is subject and key)
        return arms[0].order_by(*order).subquery()
    ordered = [arm.order_by(*order).subquery() for arm in arms]
    merged = union_all(*(select(*arm.c) for arm in ordered)).subquery()
    columns = (merged.c.subject_created_at, merged.c.subject_id)
    once = select(*columns).order_by(*columns)
    return (once.ext(distinct_on(*columns)) if on_postgresql else once.distinct()).subquery()


@functools.lru_cache(maxsize=256)
def _walk_statement(
    driver: tuple[int, bool],
    merged: tuple[int, bool] | None,
    probed: tuple[bool, ...],
    *,
    resumed: bool,
    by_birth_date: bool,
    on_postgresql: bool,
) -> Select[tuple[Subject]]:
    """The first `size` visible subjects after `after` in page order that have a key of the
    driving word (parameters key_0, key_1, ...; `driver` is their number and whether only whole
    words count), of the merged word if any (merge_0, merge_1, ...) and of every probed word
    (words_0, words_1, ...).

    The merged word's subjects stream in the same order as the driver's, so the two are joined
    by merging (Merge Join): both are read only as far as the page needs, with no lookup per
    candidate. Each candidate is then probed for the other words' keys, and only those that have
    them are read from subjects and tested for visibility, in the same statement: a common name
    costs about a page of candidates over what the viewer cannot see, a rare one all its
    candidates (a rare name has few), and neither costs a round trip per batch.
    """
    stream = _ordered_once("key", *driver, resumed=resumed, on_postgresql=on_postgresql)
    stmt = select(Subject).select_from(stream)
    if merged is not None:
        other = _ordered_once("merge", *merged, resumed=resumed, on_postgresql=on_postgresql)
        stmt = stmt.join(
            other,
            and_(
                other.c.subject_created_at == stream.c.subject_created_at,
                other.c.subject_id == stream.c.subject_id,
            ),
        )
    probes = (_has_keys_of(n, whole, stream.c.subject_id) for n, whole in enumerate(probed))
    stmt = stmt.join(Subject, Subject.id == stream.c.subject_id).where(
        *probes,
        policy.subject_visible_to(policy.VIEWER_AGENCY, policy.VIEWER_NOW),
    )
    if by_birth_date:
        stmt = stmt.where(Subject.date_of_birth == _DATE_OF_BIRTH)
    return stmt.order_by(stream.c.subject_created_at, stream.c.subject_id).limit(_SIZE)


def _has_keys_of(word: int, whole_only: bool, subject_id: Any) -> ColumnElement[bool]:
    """Whether the subject has a key row of query word number `word`: one primary-key probe per
    candidate. Written as a scalar subquery, not EXISTS, because PostgreSQL would turn EXISTS
    into a join and, misjudging how common a name is, hash every key row of the other word
    (tens of thousands for "Sophia") to keep a handful of candidates."""
    other = aliased(SubjectNameKey)
    probe = (
        select(literal(1))
        .where(other.subject_id == subject_id, _key_rows(other, word, whole_only))
        .limit(1)
    )
    return probe.scalar_subquery().is_not(None)


# -- audit helpers -----------------------------------------------------------------------------
def _record_denied(
    session: Session, actor: Actor, subject_id: uuid.UUID, *, action: str = "access.denied"
) -> None:
    # No subject_ids: the response carries none of the child's data.
    audit.record(
        session,
        actor,
        action,
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
            select(Share.id, Share.access, Share.purpose, Share.emergency_access_id)
            .where(Share.referral_id == referral.id, policy.active_share_clause(actor.agency, now))
            .limit(1)
        ).first()
        if share is not None:
            access = policy.access_through(
                actor.agency,
                lead_agency=referral.lead_agency,
                share_id=share.id,
                share_access=share.access,
                share_purpose=share.purpose,
                share_emergency=share.emergency_access_id,
            )
            assert access is not None
            return access.basis, access.purpose_for(actor)
    return "lead", actor.purpose or DEFAULT_PURPOSE
