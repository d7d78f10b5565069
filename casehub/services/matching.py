"""Existence-only matching (CONTRACT §9): is this child known to other agencies?

A match answers with agencies only. What it was worked out from (which children, per agency)
stays in the `matches` row, usable for 24 hours by the agency that asked, and only through the
functions here: `usable_match` (the asker's own, unexpired match) and `held_referrals` (the
referrals one listed agency leads about the matched children, which an access request shows to
the holder and an emergency access opens, never to the asker until a share exists).
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import (
    Integer,
    Row,
    Select,
    and_,
    bindparam,
    distinct,
    func,
    intersect,
    literal,
    select,
    tuple_,
    union_all,
)
from sqlalchemy.orm import Session, aliased

from casehub import audit
from casehub.auth.actor import Actor
from casehub.db import new_id
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
# How the name search is planned (see `_plan`): each word's key rows among children born within
# a year are counted up to SAMPLE_ROWS (exact below it, a floor above); probing a candidate for
# another word's keys costs about PROBE_COST key rows streamed (casehub.services.subjects
# measured a probe at ~14 us and a streamed key row at ~0.5 us at a million children).
SAMPLE_ROWS = 5000
PROBE_COST = 20.0


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
        return cls(tuple(tokens), born, year, tuple(sorted(pairs)))

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
    (usable by the caller's agency for MATCH_LIFETIME). Audited per listed agency, with its
    matched children and its earliest matched referral, so that each holder's access reports
    show who asked after its child; with no agency listed, one event naming no child."""
    query = MatchQuery.of(data)
    found: dict[uuid.UUID, str] = dict.fromkeys(_by_identifier(session, query), "identifier")
    if query.by_name:
        for candidate in _by_name(session, query):
            if candidate.id not in found:
                level = name_confidence(query, candidate)
                if level is not None:
                    found[candidate.id] = level
    holdings = _holdings(session, actor=actor, found=found, now=now)
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
    session.add(match)
    session.flush()
    purpose = actor.purpose or DEFAULT_PURPOSE
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
    if not holdings:
        audit.record(
            session,
            actor,
            AUDIT_ACTION,
            resource_type="match",
            resource_id=match.id,
            basis=AUDIT_BASIS,
            purpose=purpose,
        )
    rank = {level: n for n, level in enumerate(CONFIDENCES)}
    items = [
        MatchItem(
            agency={"code": code, "name": held.name, "kind": held.kind},
            confidence=held.confidence,
            known_since=held.known_since,
            open_referrals=held.open_referrals,
        )
        for code, held in sorted(holdings.items(), key=lambda h: (rank[h[1].confidence], h[0]))
    ]
    return match, items


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
@dataclass(frozen=True)
class _Word:
    """A query word as the name keys see it (as in subject search): its search keys, and
    whether only whole-word keys count (a word too short to tolerate a typo must equal a name)."""

    keys: tuple[str, ...]
    whole_only: bool

    @classmethod
    def of(cls, token: str) -> _Word:
        return cls(tuple(sorted(names.search_keys(token))), not names.tolerates_typo(token))

    @property
    def shape(self) -> tuple[int, bool]:
        return len(self.keys), self.whole_only


_YEARS = bindparam("years", expanding=True)
_SAMPLE_ROWS = bindparam("sample_rows", type_=Integer())


def _word_rows(word: int, whole_only: bool, keys: Any = SubjectNameKey) -> Any:
    """The key rows of children born within a year of the query's year that may belong to a
    name close to query word number `word` (its keys are the parameter word_<word>): one index
    range per key and year, (key, birth_year) being the index's leading columns."""
    clauses = [
        keys.key.in_(bindparam(f"word_{word}", expanding=True)),
        keys.birth_year.in_(_YEARS),
    ]
    if whole_only:
        clauses.append(keys.whole_word)
    return and_(*clauses)


@functools.lru_cache(maxsize=64)
def _sizes_statement(words: tuple[bool, ...]) -> Any:
    """Per query word (whole_only for each): how many key rows it has among the children of
    the three years, and of how many children, counted up to sample_rows rows."""
    keys = SubjectNameKey
    arms = []
    for word, whole_only in enumerate(words):
        taken = (
            select(keys.subject_id).where(_word_rows(word, whole_only)).limit(_SAMPLE_ROWS)
        ).subquery()
        arms.append(
            select(
                literal(word).label("word"),
                func.count().label("rows"),
                func.count(distinct(taken.c.subject_id)).label("subjects"),
            )
        )
    return union_all(*arms) if len(arms) > 1 else arms[0]


@dataclass(frozen=True)
class _Plan:
    """The words whose key ranges are read (one, or two intersected) and those probed per
    candidate, as indexes into the query's words."""

    read: tuple[int, ...]
    probed: tuple[int, ...]


def _plan(session: Session, words: list[_Word], parameters: Mapping[str, Any]) -> _Plan:
    """The cheapest way to the children who have keys of every word: read the range of the word
    whose rows and children cost least and probe each of its children for the other words'
    keys (primary key lookups), or read the two words with the fewest rows and intersect them
    (no lookup: better when even the rarest word has many children, "Jack Smith")."""
    if len(words) == 1:
        return _Plan((0,), ())
    stmt = _sizes_statement(tuple(w.whole_only for w in words))
    rows = [0.0] * len(words)
    subjects = [0.0] * len(words)
    for row in session.execute(stmt, {**parameters, "sample_rows": SAMPLE_ROWS}):
        rows[row.word], subjects[row.word] = float(row.rows), float(row.subjects)
    everyone = range(len(words))
    probe_cost = [rows[n] + PROBE_COST * subjects[n] for n in everyone]
    driver = min(everyone, key=lambda n: probe_cost[n])
    first, second = sorted(everyone, key=lambda n: rows[n])[:2]
    if rows[first] + rows[second] < probe_cost[driver]:
        rest = sorted(set(everyone) - {first, second}, key=lambda n: subjects[n])
        return _Plan((first, second), tuple(rest))
    rest = sorted(set(everyone) - {driver}, key=lambda n: subjects[n])
    return _Plan((driver,), tuple(rest))


@functools.lru_cache(maxsize=256)
def _candidates_statement(
    read: tuple[tuple[int, bool], ...], probed: tuple[tuple[int, bool], ...]
) -> Select[Any]:
    """The children (their names and birth facts) born within a year of the query's year who
    have keys of every query word: the key ranges of the `read` words (word number, whole
    only), intersected when two, each child once; then each probed for the `probed` words' keys
    by the primary key (subject_id, key), written as a scalar subquery so that PostgreSQL
    probes rather than hashing every key row of a common word (see casehub.services.subjects)."""
    keys = SubjectNameKey
    arms = [select(keys.subject_id).where(_word_rows(n, whole)) for n, whole in read]
    found = (intersect(*arms) if len(arms) > 1 else arms[0].distinct()).subquery()
    subject_id = found.c.subject_id
    probes = []
    for n, whole in probed:
        other = aliased(SubjectNameKey)
        clauses = [
            other.subject_id == subject_id,
            other.key.in_(bindparam(f"word_{n}", expanding=True)),
        ]
        if whole:
            clauses.append(other.whole_word)
        probe = select(literal(1)).where(*clauses).limit(1).scalar_subquery()
        probes.append(probe.is_not(None))
    return (
        select(
            Subject.id,
            Subject.given_name,
            Subject.family_name,
            Subject.aliases,
            Subject.date_of_birth,
            Subject.estimated_birth_year,
        )
        .select_from(found)
        .join(Subject, Subject.id == subject_id)
        .where(*probes)
    )


def _by_name(session: Session, query: MatchQuery) -> list[Row[Any]]:
    """Children who may match by name and birth year; names.matches and the birth rule decide."""
    assert query.year is not None
    words = [_Word.of(token) for token in query.tokens]
    parameters: dict[str, Any] = {
        "years": [query.year - 1, query.year, query.year + 1],
        **{f"word_{n}": list(word.keys) for n, word in enumerate(words)},
    }
    plan = _plan(session, words, parameters)
    stmt = _candidates_statement(
        tuple((n, words[n].whole_only) for n in plan.read),
        tuple((n, words[n].whole_only) for n in plan.probed),
    )
    return list(session.execute(stmt, parameters))


# -- who holds them -----------------------------------------------------------------------------
_SUBJECT_IDS = bindparam("subject_ids", expanding=True)
_HELD = (
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
        Referral.subject_id.in_(_SUBJECT_IDS),
        Referral.lead_agency != policy.VIEWER_AGENCY,
        Agency.active.is_(True),
    )
)


def _holdings(
    session: Session, *, actor: Actor, found: Mapping[uuid.UUID, str], now: datetime
) -> dict[str, _Holding]:
    """Per other active agency, what it holds about the matched children: one query for every
    referral about them that another agency leads, with whether the caller already sees it.

    A child counts for an agency only through the agency's discoverable referrals about it,
    and not at all when the caller's agency already sees one of that agency's referrals about
    the child (policy decides): through that agency the caller knows the child already."""
    if not found:
        return {}
    rows = session.execute(_HELD, {"subject_ids": list(found), **policy.viewer(actor, now)}).all()
    seen = {(row.lead_agency, row.subject_id) for row in rows if row.visible}
    rank = {level: n for n, level in enumerate(CONFIDENCES)}
    holdings: dict[str, _Holding] = {}
    for row in rows:
        if not row.discoverable or (row.lead_agency, row.subject_id) in seen:
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
        if rank[level] < rank[held.confidence]:
            held.confidence = level
        held.subject_ids.add(row.subject_id)
        held.known_since = min(held.known_since, row.created_at)
        held.first_referral = min(held.first_referral, first)
        held.open_referrals += row.status != CLOSED
    return holdings
