"""Reading the audit trail: auditors' filtered lists and exports, a child's access record, a
referral's access feed for its lead agency, and on-demand verification. Every read is audited.

Only chained events are listed (they have a `seq`); the sequencer chains an event within about
a second of its commit.
"""

from __future__ import annotations

import csv
import io
import json
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Row, Select, and_, or_, select
from sqlalchemy.orm import Session

from casehub import audit
from casehub.audit import verify as chain_verify
from casehub.audit.canonical import EVENT_FIELDS
from casehub.audit.chain import chain_head
from casehub.audit.checkpoints import CheckpointKey
from casehub.auth.actor import Actor
from casehub.errors import InsufficientScope, NotFound
from casehub.models import Referral
from casehub.models.audit import AuditChain, AuditEvent, AuditEventSubject
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

    def clause(self) -> ColumnElement[bool] | None:
        """Events of the agency's own actors, and anyone's events on referrals it leads."""
        if self.agency is None:
            return None
        led = select(Referral.id).where(Referral.lead_agency == self.agency)
        return or_(AuditEvent.actor_agency == self.agency, AuditEvent.referral_id.in_(led))


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
def _chained() -> Select[Any]:
    return (
        select(*ROW_COLUMNS)
        .select_from(AuditChain)
        .join(AuditEvent, AuditEvent.pos == AuditChain.event_pos)
    )


def _by_subject(stmt: Select[Any], subject_id: uuid.UUID) -> Select[Any]:
    on = and_(
        AuditEventSubject.seq == AuditChain.seq, AuditEventSubject.subject_id == str(subject_id)
    )
    return stmt.join(AuditEventSubject, on)


def filtered(reach: AuditReach, filters: Mapping[str, Any]) -> Select[Any]:
    """Chained events the reach covers, narrowed by the contract's filters (all optional)."""
    stmt = _chained()
    equal = {
        "agency": AuditEvent.actor_agency,
        "client_id": AuditEvent.actor_client_id,
        "user_id": AuditEvent.actor_user_id,
        "action": AuditEvent.action,
        "outcome": AuditEvent.outcome,
        "referral_id": AuditEvent.referral_id,
    }
    for name, column in equal.items():
        if filters.get(name) is not None:
            stmt = stmt.where(column == filters[name])
    if filters.get("subject_id") is not None:
        stmt = _by_subject(stmt, filters["subject_id"])
    if filters.get("from") is not None:
        stmt = stmt.where(AuditEvent.occurred_at >= filters["from"])
    if filters.get("to") is not None:
        stmt = stmt.where(AuditEvent.occurred_at < filters["to"])
    visible = reach.clause()
    if visible is not None:
        stmt = stmt.where(visible)
    return stmt


def _page(
    session: Session, stmt: Select[Any], *, limit: int, cursor: str | None
) -> tuple[list[Row[Any]], str | None]:
    """Keyset page by seq: a walk sees every event chained before it started exactly once."""
    if cursor:
        (after,) = decode_cursor(cursor, [int])
        stmt = stmt.where(AuditChain.seq > after)
    rows = list(session.execute(stmt.order_by(AuditChain.seq).limit(limit + 1)))
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    return rows, encode_cursor([rows[-1].seq])


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
    rows, next_cursor = _page(session, filtered(reach, filters), limit=limit, cursor=cursor)
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
    stmt = _chained().where(AuditEvent.referral_id == referral_id, AuditEvent.action != FEED_ACTION)
    rows, next_cursor = _page(session, stmt, limit=limit, cursor=cursor)
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
    request has already committed), so a long export never holds a lock or a snapshot.
    """
    size = chunk or EXPORT_CHUNK
    stmt = filtered(reach, filters).where(AuditChain.seq <= upto).order_by(AuditChain.seq)
    if fmt == "csv":
        yield _csv_rows([CSV_COLUMNS])
    last = 0
    while True:
        with session.begin():
            # Core execution on the session's connection: no ORM result machinery per row.
            chunk_stmt = stmt.where(AuditChain.seq > last).limit(size)
            rows = session.connection().execute(chunk_stmt).all()
        if not rows:
            return
        last = rows[-1].seq
        if fmt == "csv":
            yield _csv_rows(_csv_values(row) for row in rows)
        else:
            encode = _NDJSON.encode
            yield "".join([encode(event_dict(row)) + "\n" for row in rows])
        if len(rows) < size:
            return


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
