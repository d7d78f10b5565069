"""Partner notifications (CONTRACT §6): the outbox every change writes to, in its own transaction.

`emit` writes one event row per recipient agency and, for each of that agency's active
subscriptions to the type, one pending delivery. Both are plain inserts in the caller's
transaction: a change that rolls back emits nothing, and a change that commits cannot lose its
notifications. Payloads carry ids and agency codes only, never a child's data.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import insert, literal_column, or_, select, tuple_
from sqlalchemy.orm import Session

from casehub.auth.actor import Actor
from casehub.errors import ValidationFailed
from casehub.models import Agency, Event, Referral, Share, Webhook, WebhookDelivery
from casehub.services.pagination import decode_cursor, encode_cursor

# Every event type of the contract, with what it means. Types from CONTRACT §9 to §11 are listed
# so that subscriptions can name them today; they are emitted once those features exist.
EVENT_TYPES: dict[str, str] = {
    "referral.shared": "A referral was shared with the receiving agency (data: referral_id, "
    "share_id).",
    "referral.updated": "A referral the agency can see was changed (data: referral_id).",
    "referral.status_changed": "A referral the agency can see moved to another status "
    "(data: referral_id).",
    "referral.transferred": "The lead of a referral the agency can see moved to another agency "
    "(data: referral_id).",
    "note.added": "A shared note was added to a referral the agency can see "
    "(data: referral_id, note_id).",
    "share.acknowledged": "The recipient acknowledged a share the agency made "
    "(data: referral_id, share_id).",
    "share.revoked": "A share the agency made or received was revoked "
    "(data: referral_id, share_id).",
    "access_request.received": "Another agency asks the agency for a share (§9; data: "
    "access_request_id).",
    "access_request.decided": "An agency decided the agency's access request (§9; data: "
    "access_request_id, share_id when shared).",
    "emergency_access.granted": "Emergency access to referrals the agency holds was granted "
    "(§10; data: emergency_access_id).",
    "subject.merged": "Two children's records the agency's referrals concern were merged (§11; "
    "data: subject_id, duplicate_id).",
    "referral.erased": "A referral shared with the agency was erased: delete any copy (§11; "
    "data: referral_id).",
    "webhook.disabled": "A subscription of the agency was disabled: its receiver answered 410, "
    "or failed for 24 hours (data: webhook_id, reason).",
}
MAX_PAGE = 200


def open_share_agencies(session: Session, referral_id: uuid.UUID, now: datetime) -> set[str]:
    """Agencies holding an open, unexpired share of the referral."""
    rows = session.execute(
        select(Share.agency_code).where(
            Share.referral_id == referral_id,
            Share.ended_at.is_(None),
            or_(Share.expires_at.is_(None), Share.expires_at > now),
        )
    ).scalars()
    return set(rows)


def referral_audience(session: Session, referral: Referral, now: datetime) -> set[str]:
    """Every agency that can see the referral now: its lead and its open shares."""
    return {referral.lead_agency} | open_share_agencies(session, referral.id, now)


def emit(
    session: Session,
    *,
    type: str,
    recipients: Iterable[str],
    actor: Actor | None,
    data: dict[str, Any],
    now: datetime,
) -> list[uuid.UUID]:
    """Write `type` to each recipient except the actor's agency; return the events' ids."""
    if type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {type!r}")
    audience = sorted(set(recipients) - ({actor.agency} if actor is not None else set()))
    if not audience:
        return []
    payload = {key: str(value) for key, value in data.items() if value is not None}
    if actor is not None:
        payload.setdefault("agency", actor.agency)
    rows = [
        {
            "id": uuid.uuid4(),
            "agency_code": agency,
            "type": type,
            "occurred_at": now,
            "data": payload,
        }
        for agency in audience
    ]
    stmt = insert(Event)
    if session.get_bind().dialect.name == "postgresql":
        # The writing transaction's id orders the feed (see models.webhook.Event).
        stmt = stmt.values(tx=literal_column("pg_current_xact_id()::text::bigint"))
    else:
        for row in rows:
            row["tx"] = 0
    positions = session.execute(stmt.returning(Event.pos, Event.agency_code), rows).all()
    _queue_deliveries(session, type, dict((agency, pos) for pos, agency in positions), now)
    return [row["id"] for row in rows]


def _queue_deliveries(
    session: Session, type: str, position_by_agency: dict[str, int], now: datetime
) -> None:
    hooks = session.execute(
        select(Webhook.id, Webhook.agency_code, Webhook.events)
        .join(Agency, Agency.code == Webhook.agency_code)
        .where(
            Webhook.agency_code.in_(position_by_agency),
            Webhook.disabled_at.is_(None),
            Webhook.deleted_at.is_(None),
            Agency.active.is_(True),  # a deactivated agency is sent nothing
        )
    ).all()
    rows = [
        {
            "id": uuid.uuid4(),
            "webhook_id": hook_id,
            "event_pos": position_by_agency[agency],
            "status": "pending",
            "attempts": 0,
            "next_attempt_at": now,
            "created_at": now,
        }
        for hook_id, agency, types in hooks
        if type in types
    ]
    if rows:
        session.execute(insert(WebhookDelivery), rows)


# -- the feed ---------------------------------------------------------------------------------
def event_document(event: Event) -> dict[str, Any]:
    """The notification as delivered and served: `{id, type, occurred_at, data}`."""
    return {
        "id": str(event.id),
        "type": event.type,
        "occurred_at": event.occurred_at.isoformat().replace("+00:00", "Z"),
        "data": event.data,
    }


@dataclass(frozen=True)
class FeedPage:
    items: list[Event]
    next_cursor: str | None  # more events are there now; null at the end, as for every list
    poll_cursor: str | None  # where to poll from later; null only before the first event


def feed(
    session: Session,
    *,
    actor: Actor,
    types: list[str],
    limit: int,
    cursor: str | None,
) -> FeedPage:
    """The caller's agency's events in order, from transactions that have all ended.

    On PostgreSQL rows are ordered by (writing transaction id, pos) and only those written by
    transactions older than every one still running are served, so an event that commits
    after a later one was read still comes after the cursor. SQLite serialises writers.
    """
    unknown = [t for t in types if t not in EVENT_TYPES]
    if unknown:
        raise ValidationFailed(
            "Unknown event type.",
            errors={"query": {"type": [f"Unknown event type: {t}" for t in unknown[:5]]}},
        )
    stmt = select(Event).where(Event.agency_code == actor.agency)
    if types:
        stmt = stmt.where(Event.type.in_(types))
    if session.get_bind().dialect.name == "postgresql":
        horizon = literal_column("pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
        # The reading transaction's own events too (only ever the case inside one test
        # transaction: a feed request writes no events before it reads).
        own = literal_column("coalesce(pg_current_xact_id_if_assigned()::text::bigint, -1)")
        stmt = stmt.where(or_(Event.tx < horizon, Event.tx == own))
    if cursor:
        tx, pos = decode_cursor(cursor, [int, int])
        stmt = stmt.where(tuple_(Event.tx, Event.pos) > tuple_(tx, pos))
    rows = list(session.execute(stmt.order_by(Event.tx, Event.pos).limit(limit + 1)).scalars())
    more = len(rows) > limit
    rows = rows[:limit]
    last = encode_cursor([rows[-1].tx, rows[-1].pos]) if rows else cursor
    return FeedPage(rows, next_cursor=last if more else None, poll_cursor=last)
