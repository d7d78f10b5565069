"""Existence-only matching (CONTRACT §9): is this child known to other agencies?

A match answers with agencies only. What it was worked out from (which children, per agency)
stays in the `matches` row, usable for 24 hours by the agency that asked, and only through the
functions here: `usable_match` (the asker's own, unexpired match) and `held_referrals` (the
referrals one listed agency leads about the matched children, which an access request shows to
the holder and an emergency access opens, never to the asker until a share exists).
"""

from __future__ import annotations

import functools
import itertools
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import (
    ARRAY,
    Integer,
    Row,
    any_,
    bindparam,
    func,
    insert,
    intersect,
    literal,
    select,
    tuple_,
    union_all,
)
from sqlalchemy.orm import Session, aliased

from casehub import audit
from casehub.auth.actor import Actor
from casehub.db import new_id, new_row_values
from casehub.errors import ValidationFailed
from casehub.models import Agency, Match, Referral, Subject, SubjectIdentifier, SubjectNameKey
from casehub.services import names, policy

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


# -- asking -------------------------------------------------------------------------------------
CONFIDENCES = ("identifier", "strong", "possible")  # best first
DEFAULT_PURPOSE = "case_work"
AUDIT_ACTION = "subject.match"
AUDIT_BASIS = "match"
CLOSED = "closed"  # casehub.services.referrals.STATUSES: every other status is open
_RANK = {level: n for n, level in enumerate(CONFIDENCES)}


@dataclass(frozen=True)
class MatchQuery:
    """What a match asks, normalised: the name tokens (given and family names together; empty
    unless both were sent), the date of birth, the birth year (the date's, else the estimate)
    and the identifiers as (system, value) compared."""

    tokens: tuple[str, ...]
    date_of_birth: date | None
    year: int | None
    identifiers: tuple[tuple[str, str], ...]

    @classmethod
    def of(cls, data: Mapping[str, Any]) -> MatchQuery:
        given, family = data.get("given_name"), data.get("family_name")
        tokens: list[str] = []
        if given and family:
            for token in (*names.query_tokens(given), *names.query_tokens(family)):
                if token not in tokens:
                    tokens.append(token)
        born: date | None = data.get("date_of_birth")
        year = born.year if born is not None else data.get("estimated_birth_year")
        pairs = {
            (str(item["system"]), names.identifier_value(str(item["value"])))
            for item in data.get("identifiers") or []
        }
        # A value of nothing but spaces and hyphens is no identifier: it matches nothing.
        kept = sorted((system, value) for system, value in pairs if value)
        return cls(tuple(tokens), born, year, tuple(kept))

    @property
    def by_name(self) -> bool:
        return bool(self.tokens) and self.year is not None


@dataclass(frozen=True)
class MatchItem:
    """One agency of a match's answer: who it is, how good its best match is, since when it has
    known the child and how many of its matched referrals are open. Nothing about the child."""

    agency: dict[str, str]
    confidence: str
    known_since: datetime
    open_referrals: int


@dataclass
class _Holding:
    """What one other agency holds about the matched children, as the answer is worked out."""

    name: str
    kind: str
    confidence: str
    subject_ids: set[uuid.UUID]
    known_since: datetime
    first_referral: tuple[datetime, uuid.UUID]
    open_referrals: int


def find_matches(
    session: Session, *, actor: Actor, data: Mapping[str, Any], now: datetime
) -> tuple[Match, list[MatchItem]]:
    """Ask whether a child is known to other agencies; `data` is MatchCreateSchema's loaded
    data. Answers with agencies only, and keeps what the answer was worked out from as a Match
    (usable by the caller's agency for MATCH_LIFETIME). Audited as `subject.match`: the asker's
    own record (no referral, no child) and, per listed agency, a notice naming its matched
    children and its earliest matched referral, which reaches that agency only."""
    query = MatchQuery.of(data)
    found: dict[uuid.UUID, str] = dict.fromkeys(_by_identifier(session, query), "identifier")
    if query.by_name:
        for candidate in _by_name(session, query):
            if candidate.id not in found:
                level = name_confidence(query, candidate)
                if level is not None:
                    found[candidate.id] = level
    found, child_of = _as_one_child(session, found)
    holdings = _holdings(session, actor=actor, found=found, child_of=child_of, now=now)
    match = Match(
        id=new_id(),
        agency_code=actor.agency,
        client_id=actor.client_id,
        user_id=actor.user_id,
        found={
            code: {
                "confidence": held.confidence,
                "subject_ids": sorted(str(s) for s in held.subject_ids),
            }
            for code, held in holdings.items()
        },
        created_at=now,
        expires_at=now + MATCH_LIFETIME,
    )
    # A Core INSERT (a unit-of-work flush of one object cost more than the statement itself);
    # the object stays out of the session: only its id and expiry are read.
    session.flush()
    session.connection().execute(_INSERT_MATCH, [new_row_values(match)])
    # The asker's own record names no referral and no child; each listed holder gets a notice
    # on its earliest matched referral naming its matched children, which reaches that
    # referral's lead only (casehub.audit.chain.HOLDER_NOTICES): the holder's access reports
    # show who asked after its child, and the asker's trail never says which child it was.
    purpose = actor.purpose or DEFAULT_PURPOSE
    audit.record(
        session,
        actor,
        AUDIT_ACTION,
        resource_type="match",
        resource_id=match.id,
        basis=AUDIT_BASIS,
        purpose=purpose,
    )
    for held in holdings.values():
        audit.record(
            session,
            actor,
            AUDIT_ACTION,
            resource_type="match",
            resource_id=match.id,
            referral_id=held.first_referral[1],
            subject_ids=held.subject_ids,
            basis=AUDIT_BASIS,
            purpose=purpose,
        )
    items = [
        MatchItem(
            agency={"code": code, "name": held.name, "kind": held.kind},
            confidence=held.confidence,
            known_since=held.known_since,
            open_referrals=held.open_referrals,
        )
        for code, held in sorted(holdings.items(), key=lambda h: (_RANK[h[1].confidence], h[0]))
    ]
    return match, items


_INSERT_MATCH = insert(Match.__table__)


def name_confidence(query: MatchQuery, candidate: Any) -> str | None:
    """`strong`, `possible` or None for a child (given_name, family_name, aliases,
    date_of_birth, estimated_birth_year) found by name: every query word within one edit of
    one of the child's names or aliases, and the same date of birth (strong) or a birth year
    within one year (possible)."""
    if query.year is None or not query.tokens:
        return None
    tokens = names.subject_tokens(
        candidate.given_name, candidate.family_name, candidate.aliases or []
    )
    if not names.matches(query.tokens, tokens):
        return None
    if query.date_of_birth is not None and candidate.date_of_birth == query.date_of_birth:
        return "strong"
    born = candidate.date_of_birth
    year = born.year if born is not None else candidate.estimated_birth_year
    if year is not None and abs(year - query.year) <= 1:
        return "possible"
    return None


# -- candidates by identifier: subject_identifiers' primary key (system, value, subject_id) ------
_IDENTIFIER_PAIRS = bindparam("pairs", expanding=True)
_BY_IDENTIFIER = select(SubjectIdentifier.subject_id).where(
    tuple_(SubjectIdentifier.system, SubjectIdentifier.value).in_(_IDENTIFIER_PAIRS)
)


def _by_identifier(session: Session, query: MatchQuery) -> list[uuid.UUID]:
    if not query.identifiers:
        return []
    rows = session.execute(_BY_IDENTIFIER, {"pairs": list(query.identifiers)}).scalars()
    return sorted(set(rows))


# -- candidates by name: ix_subject_name_keys_key_birth_year (key, birth_year, subject_id) -------
# The letters and digits a Latin-script name is made of once folded (names.fold): a common query
# word of them finds the names one substitution away by their own keys (see `match_keys`).
LATIN = "abcdefghijklmnopqrstuvwxyz0123456789"
ENUMERABLE_LENGTHS = range(4, 13)
# A word is common when at least this many key rows of children born within a year of the query
# hold it (counted no further). Measured at a million children on a 2-core machine shared with
# other work (load 5-8: quiet, about half): a key row streamed ~0.5 us, an index range ~4 us.
# search_keys read a common word's children once per key (7 times for "Oliver": 88,000 rows,
# 59 ms with "Smith"); the enumerated keys read each once but cost some 700 ranges a word
# (20 ms for the pair; 9 ms for a rare pair, where search_keys took 0.4 ms).
COMMON_ROWS = 500
# A four-letter word's two-letter deletions are held by most three-letter names: enumerating
# pays only for the commonest ("Jack" with "Jones" 61 -> 40 ms, "Noah" with "Smith" 16 -> 8 ms;
# "Lily" with "Patel", 2,200 Lilys, 9 -> 18 ms), and only beside longer words, whose sets are
# narrow (with "Ali", whose set is as broad, "Khan" gave 4,500 candidates to check).
COMMON_ROWS_FOUR_LETTERS = 4000


def match_keys(token: str, *, common: bool = False) -> tuple[str, ...]:
    """The name keys whose rows, among the children of the three years, hold every child with a
    name within one edit of query word `token` (and some others, which names.matches refuses:
    a word under three letters tolerates no typo and must equal a whole name, but its one key is
    read whole and unfiltered, since `whole_word` is not in the index and filtering on it would
    visit the table for every row of every year).

    names.search_keys (the word and its one-letter deletions) finds them all, and is what a rare
    word uses, but a child named exactly `token` holds every one of those keys. For a `common`
    Latin-script word of 4 to 12 characters these keys find the same children reading each one
    named `token` once: `token` itself (children so named, and those whose name is it with a
    letter more: `token` is one of their deletions); its two-letter deletions (a name with a
    letter less, three letters or more, stores its own one-letter deletions, which are these);
    and each substitution of one character from LATIN and each swap of neighbours (the names
    themselves). A child named `token` holds none of them but the first: its keys are `token`
    and its one-letter deletions. What this misses: a name that differs from the query by a
    character outside LATIN (another script) in place of one of its letters. (A four-letter
    word's two-letter deletions find the three-letter names a letter away, whose one-letter
    deletions they are; see COMMON_ROWS_FOUR_LETTERS.)"""
    if not common or not enumerable(token):
        return tuple(sorted(names.search_keys(token)))
    keys = {token}
    for i, j in itertools.combinations(range(len(token)), 2):
        keys.add(token[:i] + token[i + 1 : j] + token[j + 1 :])
    for i in range(len(token)):
        keys.update(token[:i] + c + token[i + 1 :] for c in LATIN)
    for i in range(len(token) - 1):
        keys.add(token[:i] + token[i + 1] + token[i] + token[i + 2 :])
    return tuple(sorted(keys))


def enumerable(token: str) -> bool:
    """Whether `match_keys` may enumerate the word's neighbours (when it is common)."""
    return len(token) in ENUMERABLE_LENGTHS and all(c in LATIN for c in token)


def _one_of(column: Any, name: str, on_postgresql: bool) -> Any:
    """`column` is one of the list parameter `name`: one array parameter (= ANY) on PostgreSQL,
    where an expanding IN renders, and psycopg parses, a parameter per item (hundreds for a
    common word's keys); an expanding IN on SQLite."""
    if on_postgresql:
        return column == any_(bindparam(name, type_=ARRAY(column.type)))
    return column.in_(bindparam(name, expanding=True))


def _on_postgresql(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


_YEARS = bindparam("years", expanding=True)


@functools.lru_cache(maxsize=16)
def _common_statement(words: int) -> Any:
    """For query words word_0, word_1, ... (one key each): how many key rows of children of the
    three years hold it, counted up to rows_0, rows_1, ... (one short index range per year)."""
    keys = SubjectNameKey
    arms = []
    for word in range(words):
        held = (
            select(keys.subject_id)
            .where(
                keys.key == bindparam(f"word_{word}", type_=keys.key.type),
                keys.birth_year.in_(_YEARS),
            )
            .limit(bindparam(f"rows_{word}", type_=Integer()))
            .subquery()
        )
        arms.append(
            select(literal(word).label("word"), func.count().label("rows")).select_from(held)
        )
    return union_all(*arms) if len(arms) > 1 else arms[0]


def _common_words(session: Session, tokens: Sequence[str], years: list[int]) -> set[str]:
    """The query words worth enumerating the neighbours of: those `enumerable` that at least
    COMMON_ROWS children of the three years are named (a four-letter word: at least
    COMMON_ROWS_FOUR_LETTERS, and only when every other word is longer). One statement, or
    none."""
    words = list(dict.fromkeys(tokens))
    needed: dict[str, int] = {}
    for token in words:
        if not enumerable(token):
            continue
        if len(token) > 4:
            needed[token] = COMMON_ROWS
        elif all(len(other) > 4 for other in words if other != token):
            needed[token] = COMMON_ROWS_FOUR_LETTERS
    if not needed:
        return set()
    asked = list(needed)
    parameters: dict[str, Any] = {"years": years}
    for n, token in enumerate(asked):
        parameters[f"word_{n}"] = token
        parameters[f"rows_{n}"] = needed[token]
    counted = session.execute(_common_statement(len(asked)), parameters)
    return {asked[row.word] for row in counted if row.rows >= needed[asked[row.word]]}


@functools.lru_cache(maxsize=64)
def _candidates_statement(words: int, on_postgresql: bool) -> Any:
    """The children born within a year of the query's year (parameter `years`) who have a key
    of every query word (parameters word_0, word_1, ...), each once: one set of index ranges per
    word, intersected.

    (key, birth_year) lead the index, so each word is one range per key and year (an IN of
    three years is three ranges), read index-only on PostgreSQL, and the sets are hashed and
    intersected: "Oliver Smith" at a million children reads 18,600 rows for its 192 children.
    Probing each child of the rarer word for the other's keys instead costs a random lookup in
    the primary key per child, 5,500 of them for "Smith", which measured ten times slower."""
    keys = SubjectNameKey
    arms = [
        select(keys.subject_id).where(
            _one_of(keys.key, f"word_{word}", on_postgresql), keys.birth_year.in_(_YEARS)
        )
        for word in range(words)
    ]
    return intersect(*arms) if len(arms) > 1 else arms[0].distinct()


@functools.cache
def _candidates(on_postgresql: bool) -> Any:
    """The candidates' names and birth facts by primary key, in a statement of their own: joined
    to the intersection, PostgreSQL estimated many rows and read all of `subjects` to hash them."""
    return select(
        Subject.id,
        Subject.given_name,
        Subject.family_name,
        Subject.aliases,
        Subject.date_of_birth,
        Subject.estimated_birth_year,
    ).where(_one_of(Subject.id, "candidate_ids", on_postgresql))


def _by_name(session: Session, query: MatchQuery) -> list[Row[Any]]:
    """Children who may match by name and birth year; names.matches and the birth rule decide."""
    assert query.year is not None
    years = [query.year - 1, query.year, query.year + 1]
    common = _common_words(session, query.tokens, years)
    words = [match_keys(token, common=token in common) for token in query.tokens]
    parameters: dict[str, Any] = {
        "years": years,
        **{f"word_{n}": list(keys) for n, keys in enumerate(words)},
    }
    on_postgresql = _on_postgresql(session)
    stmt = _candidates_statement(len(words), on_postgresql)
    ids = list(session.execute(stmt, parameters).scalars())
    if not ids:
        return []
    return list(session.execute(_candidates(on_postgresql), {"candidate_ids": ids}))


# -- merged records: one child (CONTRACT §11) -----------------------------------------------------
@functools.cache
def _merged_statement(on_postgresql: bool) -> Any:
    """Every record merged into a found child's survivor (the found record's own survivor, or
    the found record itself): ix_subjects_merged_into, after a primary-key read per found id."""
    found = aliased(Subject)
    survivors = select(func.coalesce(found.merged_into, found.id)).where(
        _one_of(found.id, "found_ids", on_postgresql)
    )
    return select(Subject.id, Subject.merged_into).where(Subject.merged_into.in_(survivors))


def _as_one_child(
    session: Session, found: Mapping[uuid.UUID, str]
) -> tuple[dict[uuid.UUID, str], dict[uuid.UUID, uuid.UUID]]:
    """The found children with every record merged with them, each record at its child's best
    confidence, and each record's child (its survivor's id, or its own): merged records are one
    child, found through any of them. One statement, which finds nothing unless some found
    record is merged."""
    if not found:
        return {}, {}
    rows = session.execute(
        _merged_statement(_on_postgresql(session)), {"found_ids": list(found)}
    ).all()
    child_of = {subject_id: subject_id for subject_id in found}
    for record_id, survivor_id in rows:
        child_of[record_id] = survivor_id
        child_of.setdefault(survivor_id, survivor_id)
    best: dict[uuid.UUID, str] = {}
    for subject_id, level in found.items():
        child = child_of[subject_id]
        if child not in best or _RANK[level] < _RANK[best[child]]:
            best[child] = level
    return {record: best[child] for record, child in child_of.items()}, child_of


# -- who holds them -----------------------------------------------------------------------------
@functools.cache
def _held_statement(on_postgresql: bool) -> Any:
    """Every referral another active agency leads about the children `subject_ids`, with its
    lead's name and kind and whether the caller's agency sees it (policy decides)."""
    return (
        select(
            Referral.id,
            Referral.subject_id,
            Referral.lead_agency,
            Referral.created_at,
            Referral.status,
            Referral.discoverable,
            Agency.name,
            Agency.kind,
            policy.referral_visible_to(policy.VIEWER_AGENCY, policy.VIEWER_NOW).label("visible"),
        )
        .join(Agency, Agency.code == Referral.lead_agency)
        .where(
            _one_of(Referral.subject_id, "subject_ids", on_postgresql),
            Referral.lead_agency != policy.VIEWER_AGENCY,
            Agency.active.is_(True),
        )
    )


def _holdings(
    session: Session,
    *,
    actor: Actor,
    found: Mapping[uuid.UUID, str],
    child_of: Mapping[uuid.UUID, uuid.UUID],
    now: datetime,
) -> dict[str, _Holding]:
    """Per other active agency, what it holds about the matched children: one query for every
    referral about them that another agency leads, with whether the caller already sees it.

    A child counts for an agency only through the agency's discoverable referrals about it,
    and not at all when the caller's agency already sees one of that agency's referrals about
    the child (policy decides): through that agency the caller knows the child already.
    Merged records are one child (`child_of`): a referral about any of them is about it."""
    if not found:
        return {}
    stmt = _held_statement(_on_postgresql(session))
    rows = session.execute(stmt, {"subject_ids": list(found), **policy.viewer(actor, now)}).all()
    seen = {(row.lead_agency, child_of[row.subject_id]) for row in rows if row.visible}
    holdings: dict[str, _Holding] = {}
    for row in rows:
        if not row.discoverable or (row.lead_agency, child_of[row.subject_id]) in seen:
            continue
        level = found[row.subject_id]
        first = (row.created_at, row.id)
        held = holdings.get(row.lead_agency)
        if held is None:
            held = holdings[row.lead_agency] = _Holding(
                name=row.name,
                kind=row.kind,
                confidence=level,
                subject_ids=set(),
                known_since=row.created_at,
                first_referral=first,
                open_referrals=0,
            )
        if _RANK[level] < _RANK[held.confidence]:
            held.confidence = level
        held.subject_ids.add(row.subject_id)
        held.known_since = min(held.known_since, row.created_at)
        held.first_referral = min(held.first_referral, first)
        held.open_referrals += row.status != CLOSED
    return holdings
