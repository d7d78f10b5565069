"""Reading the audit trail: auditors' filtered lists and exports, a child's access record, a
referral's access feed for its lead agency, and on-demand verification. Every read is audited.

Only chained events are listed (they have a `seq`); the sequencer chains an event within about
a second of its commit. Every list walks one index in `seq` order — the reach index
(audit_event_agencies) under the auditor's agency or `*`, or a child's or a referral's events —
so a page costs about the same at any size of the trail.
"""

from __future__ import annotations

import csv
import io
import json
import uuid
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    Row,
    Select,
    String,
    and_,
    bindparam,
    exists,
    false,
    literal_column,
    or_,
    select,
    true,
)
from sqlalchemy.orm import Session, aliased

from casehub import audit
from casehub.audit import export
from casehub.audit import verify as chain_verify
from casehub.audit.canonical import EVENT_FIELDS
from casehub.audit.chain import EVERY, chain_head, reach_head
from casehub.audit.checkpoints import CheckpointKey
from casehub.auth.actor import Actor
from casehub.errors import InsufficientScope, NotFound
from casehub.models import Referral
from casehub.models.audit import (
    AuditChain,
    AuditEvent,
    AuditEventAgency,
    AuditEventSubject,
)
from casehub.services.pagination import decode_cursor, encode_cursor
from casehub.services.referrals import reach_referral, record_on

AUDIT_READ = "audit:read"
AUDIT_READ_ALL = "audit:read:all"
EXPORT_CHUNK = 2000
FEED_ACTION = "referral.accesses"

ROW_COLUMNS = (
    AuditChain.seq,
    AuditChain.prev_hash,
    AuditChain.hash,
    AuditEvent.id,
    AuditEvent.occurred_at,
    AuditEvent.actor_agency,
    AuditEvent.actor_client_id,
    AuditEvent.actor_user_id,
    AuditEvent.action,
    AuditEvent.outcome,
    AuditEvent.resource_type,
    AuditEvent.resource_id,
    AuditEvent.referral_id,
    AuditEvent.subject_ids,
    AuditEvent.basis,
    AuditEvent.purpose,
    AuditEvent.request_id,
    AuditEvent.request_method,
    AuditEvent.request_path,
    AuditEvent.request_status,
    AuditEvent.request_ip,
)

_NDJSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))

CSV_COLUMNS = ("seq", *EVENT_FIELDS, "prev_hash", "hash")


@dataclass(frozen=True)
class AuditReach:
    """What of the trail an auditor sees: everything, or one agency's share of it."""

    scope: str  # the scope that grants this reach; recorded as the basis of the auditor's read
    agency: str | None  # None: every event

    def key(self) -> ColumnElement[str] | str:
        """The rows of the reach index that hold this reach."""
        return EVERY if self.agency is None else self.agency

    def clause(self) -> ColumnElement[bool] | None:
        """Events of the agency's own actors, and anyone's events on referrals it leads now.

        The reach index already narrows every walk to these; this re-reads it from the hashed
        event and the referral's lead, so that the index can only ever hide an event from an
        agency, never show it one it should not see."""
        if self.agency is None:
            return None
        leads = exists().where(
            Referral.id == AuditEvent.referral_id, Referral.lead_agency == self.agency
        )
        return or_(AuditEvent.actor_agency == self.agency, leads)


def audit_reach(actor: Actor) -> AuditReach:
    if actor.has_scope(AUDIT_READ_ALL):
        return AuditReach(AUDIT_READ_ALL, None)
    if actor.has_scope(AUDIT_READ):
        return AuditReach(AUDIT_READ, actor.agency)
    raise InsufficientScope(
        f"This operation needs the scope {AUDIT_READ} or {AUDIT_READ_ALL}.",
        headers={
            "WWW-Authenticate": (
                f'Bearer realm="casehub", error="insufficient_scope", scope="{AUDIT_READ}"'
            )
        },
    )


# -- rows --------------------------------------------------------------------------------------
def _text(value: object) -> str | None:
    return None if value is None else str(value)


def event_dict(row: Row[Any] | tuple[Any, ...]) -> dict[str, Any]:
    """One chained event (a ROW_COLUMNS row) in the shape of CONTRACT §5."""
    # Unpacked by position: exports build a million of these, and attribute access by name
    # on a Row costs more than the rest of the function.
    (
        seq,
        prev_hash,
        hash_,
        event_id,
        occurred_at,
        agency,
        client_id,
        user_id,
        action,
        outcome,
        resource_type,
        resource_id,
        referral_id,
        subject_ids,
        basis,
        purpose,
        request_id,
        method,
        path,
        status,
        ip,
    ) = row
    return {
        "id": str(event_id),
        "seq": seq,
        "occurred_at": occurred_at.isoformat(),
        "actor": {
            "agency": agency,
            "client_id": client_id,
            "user_id": None if user_id is None else str(user_id),
        },
        "action": action,
        "outcome": outcome,
        "resource": {"type": resource_type, "id": resource_id},
        "referral_id": None if referral_id is None else str(referral_id),
        "subject_ids": list(subject_ids or ()),
        "basis": basis,
        "purpose": purpose,
        "request": {"id": request_id, "method": method, "path": path, "status": status, "ip": ip},
        "prev_hash": prev_hash,
        "hash": hash_,
    }


def access_dict(row: Row[Any]) -> dict[str, Any]:
    """Who touched a record, when, how it went and on what basis (no request details)."""
    return {
        "seq": row.seq,
        "occurred_at": row.occurred_at.isoformat(),
        "actor": {
            "agency": row.actor_agency,
            "client_id": row.actor_client_id,
            "user_id": _text(row.actor_user_id),
        },
        "action": row.action,
        "outcome": row.outcome,
        "resource": {"type": row.resource_type, "id": row.resource_id},
        "referral_id": _text(row.referral_id),
        "basis": row.basis,
        "purpose": row.purpose,
    }


# -- queries -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class SeqWindow:
    """The seqs that can hold events of a `from`/`to` time window: seq > after, seq < before."""

    after: int = 0
    before: int | None = None
    empty: bool = False  # nothing chained is in the window


def _first_marked(connection: Connection, moment: datetime) -> int | None:
    """The first seq whose time mark (the latest occurred_at chained so far) is at `moment`
    or later; no event before it occurred at `moment` or later."""
    every = AuditEventAgency
    return connection.scalar(
        select(every.seq)
        .where(every.occurred_max >= moment)
        .order_by(every.occurred_max, every.seq)
        .limit(1)
    )


def seq_window(connection: Connection, filters: Mapping[str, Any]) -> SeqWindow:
    """Where in the chain `from` and `to` can match, by the time marks of the reach index.

    `occurred_at` is nearly in seq order (events commit and are chained moments after they
    occur, not always in order). No event chained before the first mark at `from` occurred at
    `from` or later; none chained at or after the first mark at `to` plus the most any event
    has come late occurred before `to`. The filters themselves still apply to `occurred_at`.
    """
    start, end = filters.get("from"), filters.get("to")
    window = SeqWindow()
    if start is not None:
        first = _first_marked(connection, start)
        if first is None:
            return SeqWindow(empty=True)
        window = SeqWindow(after=first - 1)
    if end is not None:
        _, _, late_us = reach_head(connection)
        before = _first_marked(connection, end + timedelta(microseconds=late_us))
        window = SeqWindow(after=window.after, before=before)
    return window


# A filter of the contract, and the reach index's copy of the event column it narrows.
_FILTERS = {
    "agency": "actor_agency",
    "client_id": "actor_client_id",
    "user_id": "actor_user_id",
    "action": "action",
    "outcome": "outcome",
    "referral_id": "referral_id",
}


# Outcomes written into the SQL, so that a prepared statement's generic plan still uses the
# index of refusals (the reach index keeps only those: allowed is nearly every event).
_OUTCOMES: dict[object, Any] = {
    outcome: literal_column(f"'{outcome}'", String) for outcome in ("allowed", "denied")
}


@dataclass(frozen=True)
class Walk:
    """A query over chained events, the seq column of the index it walks in order, and the
    time window its rows must still fall in (checked on each row read, see `filtered`)."""

    stmt: Select[Any]
    seq: ColumnElement[int]
    start: datetime | None = None
    end: datetime | None = None

    def after(self, seq: int) -> Select[Any]:
        """The walk from just after `seq`, in seq order. The bound is repeated on the chain's
        seq: PostgreSQL carries equalities across a join, not ranges, and would otherwise
        merge-join the walk with the chain read from its first event."""
        return self.stmt.where(self.seq > seq, AuditChain.seq > seq).order_by(self.seq)

    def keeps(self, row: Row[Any]) -> bool:
        occurred = row.occurred_at
        return (self.start is None or occurred >= self.start) and (
            self.end is None or occurred < self.end
        )


def _events_along(stmt: Select[Any], seq: ColumnElement[int]) -> Select[Any]:
    """The chained events (ROW_COLUMNS) of the rows `stmt` walks."""
    return stmt.join(AuditChain, AuditChain.seq == seq).join(
        AuditEvent, AuditEvent.pos == AuditChain.event_pos
    )


def filtered(
    reach: AuditReach, filters: Mapping[str, Any], window: SeqWindow | None = None
) -> Walk:
    """Chained events the reach covers, narrowed by the contract's filters (all optional).

    The walk is the most selective index in seq order: a child's events (the subject index),
    a referral's events (its rows under `*`), or else the reach's own rows in the reach index,
    whose copied columns carry the other filters (each has an index under every agency).
    """
    rows = aliased(AuditEventAgency, name="reach")
    walk: Any = rows
    if filters.get("subject_id") is not None:
        walk = AuditEventSubject
        stmt = select(*ROW_COLUMNS).select_from(walk)
        stmt = stmt.where(walk.subject_id == str(filters["subject_id"]))
    elif filters.get("referral_id") is not None and reach.agency is not None:
        walk = aliased(AuditEventAgency, name="referral_events")
        stmt = select(*ROW_COLUMNS).select_from(walk)
        stmt = stmt.where(walk.agency == EVERY, walk.referral_id == filters["referral_id"])
    else:
        stmt = select(*ROW_COLUMNS).select_from(rows).where(rows.agency == reach.key())
    if walk is not rows:  # the reach's row of each event: a primary-key probe
        stmt = stmt.join(rows, and_(rows.agency == reach.key(), rows.seq == walk.seq))
    for name, column in _FILTERS.items():
        value = filters.get(name)
        if value is not None:
            if name == "outcome":
                value = _OUTCOMES.get(value, value)
            stmt = stmt.where(getattr(rows, column) == value)
    stmt = _events_along(stmt, walk.seq)
    # `from`/`to` bound the walk by seq (the window), and each row read is checked against
    # them (Walk.keeps): nearly every row in the window is in the time window too, which a
    # planner that multiplies the two conditions' selectivities cannot know, and it would
    # then read the whole time window by the occurred_at index and sort it.
    window = window or SeqWindow()
    if window.empty:
        stmt = stmt.where(false())
    if window.after:  # on the chain's seq too (see Walk.after)
        stmt = stmt.where(walk.seq > window.after, AuditChain.seq > window.after)
    if window.before is not None:
        stmt = stmt.where(walk.seq < window.before, AuditChain.seq < window.before)
    visible = reach.clause()
    if visible is not None:
        stmt = stmt.where(visible)
    return Walk(stmt, walk.seq, filters.get("from"), filters.get("to"))


def _page(
    session: Session, walk: Walk, *, limit: int, cursor: str | None
) -> tuple[list[Row[Any]], str | None]:
    """Keyset page by seq: a walk sees every event chained before it started exactly once."""
    (last,) = decode_cursor(cursor, [int]) if cursor else (0,)
    kept: list[Row[Any]] = []
    while True:
        rows = list(session.execute(walk.after(last).limit(limit + 1)))
        kept.extend(row for row in rows if walk.keeps(row))
        if len(kept) > limit or len(rows) <= limit:
            break
        last = rows[-1].seq  # rows outside the time window (events chained late): read on
    if len(kept) <= limit:
        return kept, None
    kept = kept[:limit]
    return kept, encode_cursor([kept[-1].seq])


def _record_read(
    session: Session, actor: Actor, reach: AuditReach, action: str, **fields: Any
) -> None:
    audit.record(
        session,
        actor,
        action,
        basis=reach.scope,
        purpose=actor.purpose or "audit",
        **fields,
    )


def list_events(
    session: Session,
    *,
    actor: Actor,
    filters: Mapping[str, Any],
    limit: int,
    cursor: str | None,
) -> tuple[list[dict[str, Any]], str | None]:
    reach = audit_reach(actor)
    window = seq_window(session.connection(), filters)
    rows, next_cursor = _page(session, filtered(reach, filters, window), limit=limit, cursor=cursor)
    _record_read(session, actor, reach, "audit.list", resource_type="audit_event")
    return [event_dict(row) for row in rows], next_cursor


def subject_accesses(
    session: Session,
    *,
    actor: Actor,
    subject_id: uuid.UUID,
    limit: int,
    cursor: str | None,
) -> tuple[list[dict[str, Any]], str | None]:
    """Who saw this child's data, when and on what basis: the events that carried it."""
    reach = audit_reach(actor)
    rows, next_cursor = _page(
        session, filtered(reach, {"subject_id": subject_id}), limit=limit, cursor=cursor
    )
    _record_read(
        session,
        actor,
        reach,
        "audit.subject_accesses",
        resource_type="subject",
        resource_id=subject_id,
    )
    wanted = str(subject_id)
    # The index is derived data: trust only events whose hashed subject_ids name the child.
    return [access_dict(row) for row in rows if wanted in (row.subject_ids or [])], next_cursor


def referral_accesses(
    session: Session,
    *,
    actor: Actor,
    referral_id: uuid.UUID,
    limit: int,
    cursor: str | None,
    now: datetime,
) -> tuple[list[dict[str, Any]], str | None]:
    """The lead agency's feed of who, in any agency, used this referral; others get 404."""
    view = reach_referral(session, actor=actor, referral_id=referral_id, now=now)
    if not view.access.is_lead:
        record_on(session, actor, "access.denied", view, outcome="denied")
        raise NotFound("No such referral.")
    # The referral's rows under `*` in the reach index, in seq order (the lead's own reads of
    # this feed left out).
    every = AuditEventAgency
    stmt = select(*ROW_COLUMNS).select_from(every)
    stmt = stmt.where(
        every.agency == EVERY, every.referral_id == referral_id, every.action != FEED_ACTION
    )
    rows, next_cursor = _page(
        session, Walk(_events_along(stmt, every.seq), every.seq), limit=limit, cursor=cursor
    )
    audit.record(
        session,
        actor,
        FEED_ACTION,
        resource_type="referral",
        resource_id=referral_id,
        referral_id=referral_id,
        basis="lead",
        purpose=view.access.purpose_for(actor),
    )
    return [access_dict(row) for row in rows], next_cursor


# -- reads by other agencies (subject access, CONTRACT §12) -------------------------------------
READS_CHUNK = 2000
_EVERY_ROWS = aliased(AuditEventAgency, name="referral_events")
# One referral's allowed events by actors of agencies other than `agency`, after a seq and up
# to the pack's cut, in seq order: one range of ix_audit_event_agencies_referral_id (its rows
# under `*`), the actor's agency and the outcome read from the same index rows. Built once
# with bound parameters. The hashed event is checked again, as subject_accesses does: the
# index narrows the walk, it does not decide what is listed.
_OTHER_AGENCIES_READS = (
    _events_along(
        select(*ROW_COLUMNS)
        .select_from(_EVERY_ROWS)
        .where(
            _EVERY_ROWS.agency == EVERY,
            _EVERY_ROWS.referral_id == bindparam("referral_id", type_=AuditEvent.referral_id.type),
            _EVERY_ROWS.actor_agency != bindparam("agency", type_=String),
            _EVERY_ROWS.outcome == _OUTCOMES["allowed"],
        ),
        _EVERY_ROWS.seq,
    )
    .where(
        _EVERY_ROWS.seq > bindparam("after", type_=BigInteger),
        AuditChain.seq > bindparam("after", type_=BigInteger),  # see Walk.after
        _EVERY_ROWS.seq <= bindparam("upto", type_=BigInteger),
        AuditEvent.referral_id == bindparam("referral_id", type_=AuditEvent.referral_id.type),
        AuditEvent.actor_agency != bindparam("agency", type_=String),
    )
    .order_by(_EVERY_ROWS.seq)
    .limit(bindparam("size", type_=BigInteger))
)


# The events that carried one child's data (the subject index), by actors of agencies other
# than `agency`, on no referral (reads of the child's record), allowed, whose basis is one of
# `bases` (the shares the pack lists): the child's record as those shares disclosed it. The
# actor's agency and outcome come from the event's `*` row of the reach index (a primary-key
# probe), the basis from the hashed event.
_RECORD_REACH = aliased(AuditEventAgency, name="record_reach")
_RECORD_READS = (
    _events_along(
        select(*ROW_COLUMNS)
        .select_from(AuditEventSubject)
        .join(
            _RECORD_REACH,
            and_(_RECORD_REACH.agency == EVERY, _RECORD_REACH.seq == AuditEventSubject.seq),
        )
        .where(
            AuditEventSubject.subject_id == bindparam("subject_id", type_=String),
            _RECORD_REACH.actor_agency != bindparam("agency", type_=String),
            _RECORD_REACH.outcome == _OUTCOMES["allowed"],
            _RECORD_REACH.referral_id.is_(None),
        ),
        AuditEventSubject.seq,
    )
    .where(
        AuditEventSubject.seq > bindparam("after", type_=BigInteger),
        AuditChain.seq > bindparam("after", type_=BigInteger),  # see Walk.after
        AuditEventSubject.seq <= bindparam("upto", type_=BigInteger),
        AuditEvent.actor_agency != bindparam("agency", type_=String),
        AuditEvent.referral_id.is_(None),
        AuditEvent.basis.in_(bindparam("bases", expanding=True, type_=String)),
    )
    .order_by(AuditEventSubject.seq)
    .limit(bindparam("size", type_=BigInteger))
)


def first_seq_since(connection: Connection, moment: datetime) -> int | None:
    """The seq before which no chained event occurred at `moment` or later (None: none did)."""
    return _first_marked(connection, moment)


def other_agencies_reads(
    session: Session,
    *,
    agency: str,
    referral_ids: list[uuid.UUID],
    subject_ids: list[uuid.UUID],
    bases: list[str],
    after: int,
    upto: int,
    chunk: int | None = None,
) -> Iterator[list[dict[str, Any]]]:
    """Who in agencies other than `agency` read or acted on these referrals, referral by
    referral in the given order, then who read these children's records on one of `bases`
    (a share's or an emergency access's), record by record; each in seq order, as
    `access_dict`s, chained after `after` and at most `upto`. Allowed events only: a refusal
    disclosed nothing.

    Chunk by chunk, each a keyset query in its own short transaction on `session` (which the
    request has already committed), as the export is: constant memory at any size of the
    trail, and no snapshot or lock held while a client reads slowly."""
    size = chunk or READS_CHUNK
    common = {"agency": agency, "upto": upto, "size": size}
    for referral_id in referral_ids:
        yield from _chunks(
            session, _OTHER_AGENCIES_READS, {**common, "referral_id": referral_id}, after, size
        )
    if not bases:
        return
    for subject_id in subject_ids:
        wanted = str(subject_id)
        params = {**common, "subject_id": wanted, "bases": bases}
        for rows in _chunks(session, _RECORD_READS, params, after, size, dicts=False):
            # The index is derived data: only events whose hashed subject_ids name the child.
            kept = [access_dict(row) for row in rows if wanted in (row.subject_ids or [])]
            if kept:
                yield kept


def _chunks(
    session: Session,
    stmt: Select[Any],
    params: dict[str, Any],
    after: int,
    size: int,
    *,
    dicts: bool = True,
) -> Iterator[list[Any]]:
    """A keyset walk of `stmt` by seq after `after`, `size` rows a transaction."""
    last = after
    while True:
        with session.begin():
            rows = session.connection().execute(stmt, {**params, "after": last}).all()
        if rows:
            yield [access_dict(row) for row in rows] if dicts else rows
            last = rows[-1].seq
        if len(rows) < size:
            return


# -- export ------------------------------------------------------------------------------------
def start_export(session: Session, *, actor: Actor) -> tuple[AuditReach, int]:
    """Audit the export and fix its end: events chained after this moment are not included."""
    reach = audit_reach(actor)
    head, _ = chain_head(session.connection())
    _record_read(session, actor, reach, "audit.export", resource_type="audit_event")
    return reach, head


def export_lines(
    session: Session,
    *,
    reach: AuditReach,
    filters: Mapping[str, Any],
    fmt: str,
    upto: int,
    chunk: int | None = None,
) -> Iterator[str]:
    """The export body, chunk by chunk, in constant memory.

    Each chunk is a short keyset query in its own transaction on `session` (which the
    request has already committed), so a long export never holds a lock or a snapshot. On
    PostgreSQL the database renders each line (casehub.audit.export), a chunk ahead of the
    one being sent; elsewhere, and for an event the database leaves to Python, `event_dict`
    is rendered here.
    """
    size = chunk or EXPORT_CHUNK
    with session.begin():
        connection = session.connection()
        walk = filtered(reach, filters, seq_window(connection, filters))
        in_database = connection.dialect.name == "postgresql"
    walk = Walk(walk.stmt.where(walk.seq <= upto), walk.seq, walk.start, walk.end)
    if fmt == "csv":
        yield _csv_rows([CSV_COLUMNS])
    if in_database:
        yield from _read_ahead(_database_chunks(session, walk, fmt, size))
    else:
        yield from _python_chunks(session, walk, fmt, size)


def _read_ahead(chunks: Iterator[str]) -> Iterator[str]:
    """What `chunks` yields, its next chunk read in a thread while this one is sent: the
    database renders one chunk while the worker writes the last (about a tenth faster at a
    million events, bench.audit_export).

    One chunk at most is read ahead, and each in a transaction that `chunks` closes before it
    yields, so a client that stops reading still holds no snapshot. The thread has the
    session to itself until it stops: this generator never touches it, and waits for the
    thread before it returns, fails or is closed (a psycopg connection may change threads;
    SQLite's may not, which is why only PostgreSQL's chunks come this way)."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="casehub-export") as reader:
        pending = reader.submit(next, chunks, None)
        try:
            while (body := pending.result()) is not None:
                pending = reader.submit(next, chunks, None)
                yield body
        finally:
            pending.cancel()
            reader.shutdown(wait=True)
            chunks.close()


def _python_chunks(session: Session, walk: Walk, fmt: str, size: int) -> Iterator[str]:
    last = 0
    while True:
        with session.begin():
            # Core execution on the session's connection: no ORM result machinery per row.
            rows = session.connection().execute(walk.after(last).limit(size)).all()
        if not rows:
            return
        last = rows[-1].seq
        kept = [row for row in rows if walk.keeps(row)]
        if kept:
            yield _python_lines(kept, fmt)
        if len(rows) < size:
            return


def _python_lines(rows: list[Row[Any]], fmt: str) -> str:
    if fmt == "csv":
        return _csv_rows(_csv_values(row) for row in rows)
    encode = _NDJSON.encode
    return "".join([encode(event_dict(row)) + "\n" for row in rows])


def _database_chunks(session: Session, walk: Walk, fmt: str, size: int) -> Iterator[str]:
    """Each chunk comes back as one row: its lines rendered and joined by the database, so
    the worker handles one string per chunk instead of a Python row per event."""
    kept: ColumnElement[bool] = true()
    if walk.start is not None:
        kept = and_(kept, AuditEvent.occurred_at >= walk.start)
    if walk.end is not None:
        kept = and_(kept, AuditEvent.occurred_at < walk.end)
    columns = (AuditChain.seq, kept.label("kept"), export.LINES[fmt]().label("line"))
    # One statement for every chunk: SQLAlchemy keys its compiled form by walking the whole
    # expression (a few milliseconds for these lines), which is worth doing once, not per chunk.
    chunk = walk.after(bindparam("after", type_=BigInteger)).with_only_columns(*columns)
    chunk = chunk.limit(size)
    joined = export.joined(chunk)
    last = 0
    while True:
        with session.begin():
            connection = session.connection()
            walked, end, body, left = connection.execute(joined, {"after": last}).one()
            if left:
                body = _lines_with_python(connection, chunk.params(after=last), fmt)
        if body:
            yield body
        if walked < size:
            return
        last = end


def _lines_with_python(connection: Connection, chunk: Select[Any], fmt: str) -> str:
    """A chunk's lines when the database left some of them (NULL) to `_python_lines`."""
    rows = connection.execute(chunk).all()
    left = [seq for seq, keep, line in rows if keep and line is None]
    events = connection.execute(
        select(*ROW_COLUMNS)
        .select_from(AuditChain)
        .join(AuditEvent, AuditEvent.pos == AuditChain.event_pos)
        .where(AuditChain.seq.in_(left))
    )
    rendered = {row.seq: _python_lines([row], fmt) for row in events}
    return "".join([rendered[seq] if line is None else line for seq, keep, line in rows if keep])


def _csv_values(row: Row[Any]) -> list[object]:
    event = event_dict(row)
    actor, resource, request = event["actor"], event["resource"], event["request"]
    return [
        event["seq"],
        event["id"],
        event["occurred_at"],
        actor["agency"],
        actor["client_id"],
        actor["user_id"],
        event["action"],
        event["outcome"],
        resource["type"],
        resource["id"],
        event["referral_id"],
        " ".join(event["subject_ids"]),
        event["basis"],
        event["purpose"],
        request["id"],
        request["method"],
        request["path"],
        request["status"],
        request["ip"],
        event["prev_hash"],
        event["hash"],
    ]


def _csv_rows(rows: Iterator[list[object]] | list[tuple[str, ...]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerows(rows)
    return buffer.getvalue()


# -- verification ------------------------------------------------------------------------------
def verify_trail(
    session: Session, *, actor: Actor, key: CheckpointKey | None
) -> chain_verify.VerifyResult:
    """Check every checkpoint and recompute the chain after the newest signed one, inside the
    request's transaction (the whole chain is `casehub audit verify`'s work)."""
    reach = audit_reach(actor)
    _record_read(session, actor, reach, "audit.verify", resource_type="audit_chain")
    return chain_verify.verify_tail(session.connection(), key=key)
