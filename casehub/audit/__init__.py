"""The audit trail: services record events; the request lifecycle writes them with the response
status, inside the request's transaction (or, for refused attempts, after its rollback).

Writing an event is one INSERT with no lock: a trigger queues it, and the sequencer
(casehub.audit.chain) gives it its `seq` and hashes moments later."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import String, insert
from sqlalchemy.orm import Session

from casehub.db import new_id, utcnow
from casehub.models import AuditEvent

PENDING_KEY = "casehub.audit.pending"
_INSERT_EVENT = insert(AuditEvent.__table__)
# No input may turn a refusal into a failed insert (a 500, and no trace of the attempt).
_LENGTHS = {
    column.name: column.type.length
    for column in AuditEvent.__table__.columns
    if isinstance(column.type, String) and column.type.length
}


@dataclass
class PendingEvent:
    action: str
    outcome: str
    actor_agency: str | None
    actor_client_id: str | None
    actor_user_id: uuid.UUID | None
    resource_type: str | None = None
    resource_id: str | None = None
    referral_id: uuid.UUID | None = None
    subject_ids: list[str] = field(default_factory=list)
    basis: str | None = None
    purpose: str | None = None
    id: uuid.UUID = field(default_factory=new_id)
    occurred_at: Any = field(default_factory=utcnow)


@dataclass(frozen=True)
class RequestInfo:
    request_id: str | None
    method: str | None
    path: str | None
    ip: str | None


def record(
    session: Session,
    actor: Any,
    action: str,
    *,
    outcome: str = "allowed",
    resource_type: str | None = None,
    resource_id: object | None = None,
    referral_id: uuid.UUID | None = None,
    subject_ids: Iterable[object] = (),
    basis: str | None = None,
    purpose: str | None = None,
) -> PendingEvent:
    """Queue one audit event on the session; it is written when the unit of work completes."""
    event = PendingEvent(
        action=action,
        outcome=outcome,
        actor_agency=getattr(actor, "agency", None),
        actor_client_id=getattr(actor, "client_id", None),
        actor_user_id=getattr(actor, "user_id", None),
        resource_type=resource_type,
        resource_id=str(resource_id) if resource_id is not None else None,
        referral_id=referral_id,
        subject_ids=sorted({str(s) for s in subject_ids}),
        basis=basis,
        purpose=purpose if purpose is not None else getattr(actor, "purpose", None),
    )
    session.info.setdefault(PENDING_KEY, []).append(event)
    return event


def pending(session: Session) -> list[PendingEvent]:
    return list(session.info.get(PENDING_KEY, []))


def write_pending(
    session: Session, request: RequestInfo | None, *, status: int | None, only_denied: bool = False
) -> int:
    """Insert the queued events in the session's current transaction; return how many."""
    events: list[PendingEvent] = session.info.pop(PENDING_KEY, [])
    if only_denied:
        events = [e for e in events if e.outcome == "denied"]
    if not events:
        return 0
    rows = [
        {
            "id": e.id,
            "occurred_at": e.occurred_at,
            "actor_agency": e.actor_agency,
            "actor_client_id": e.actor_client_id,
            "actor_user_id": e.actor_user_id,
            "action": e.action,
            "outcome": e.outcome,
            "resource_type": e.resource_type,
            "resource_id": e.resource_id,
            "referral_id": e.referral_id,
            "subject_ids": e.subject_ids,
            "basis": e.basis,
            "purpose": e.purpose,
            "request_id": request.request_id if request else None,
            "request_method": request.method if request else None,
            "request_path": request.path if request else None,
            "request_status": status,
            "request_ip": request.ip if request else None,
        }
        for e in events
    ]
    for row in rows:
        for column, length in _LENGTHS.items():
            value = row[column]
            if isinstance(value, str) and len(value) > length:
                row[column] = value[:length]  # what the caller sent is recorded, cut to fit
    # A Core insert on the session's connection: no ORM unit of work on the hot path.
    session.connection().execute(_INSERT_EVENT, rows)
    return len(rows)


def discard_pending(session: Session) -> None:
    session.info.pop(PENDING_KEY, None)
