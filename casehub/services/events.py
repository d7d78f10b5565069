"""Partner notifications (CONTRACT §6): the outbox every change writes to, in its own transaction.

`emit` writes one event row per recipient agency and, for each of that agency's active
subscriptions to the type, one pending delivery. Both are plain inserts in the caller's
transaction: a change that rolls back emits nothing, and a change that commits cannot lose its
notifications. Payloads carry ids and agency codes only, never a child's data.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, insert, literal_column, or_, select, text, tuple_
from sqlalchemy.orm import Session

from casehub import audit
from casehub.auth.actor import Actor
from casehub.db import UTCDateTime
from casehub.errors import ValidationFailed
from casehub.models import Agency, Event, Share, Webhook, WebhookDelivery
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
    "subject.merged": "Two children's records were merged, or a merge was undone, and the agency "
    "sees a referral about the child (§11; data: subject_id (the survivor), duplicate_id, "
    "action: merge|unmerge).",
    "referral.erased": "A referral shared with the agency was erased: delete any copy (§11; "
    "data: referral_id).",
    "webhook.disabled": "A subscription of the agency was disabled: its receiver answered 410, "
    "or failed for 24 hours (data: webhook_id, reason).",
}
MAX_PAGE = 200


ALL_PROFILES = ("full", "summary")


def open_share_agencies(
    session: Session,
    referral_id: uuid.UUID,
    now: datetime,
    profiles: Sequence[str] = ALL_PROFILES,
) -> set[str]:
    """Agencies holding an open, unexpired share of the referral, of one of `profiles`."""
    rows = session.execute(
        select(Share.agency_code).where(
            Share.referral_id == referral_id,
            Share.ended_at.is_(None),
            or_(Share.expires_at.is_(None), Share.expires_at > now),
            Share.profile.in_(profiles),
        )
    ).scalars()
    return set(rows)


# PostgreSQL: the whole notification in one statement (one round trip): who can see the
# referral (the given agencies, and with :referral_id its open shares), minus the actor's
# agency; one event each; a pending delivery for each of their active subscriptions to the type.
_EMIT_POSTGRES = text(
    """
    WITH recipients AS (
        SELECT DISTINCT agency FROM (
            SELECT unnest(CAST(:agencies AS varchar[])) AS agency
            UNION ALL
            SELECT s.agency_code FROM shares AS s
            WHERE s.referral_id = CAST(:referral_id AS uuid)
              AND s.ended_at IS NULL AND (s.expires_at IS NULL OR s.expires_at > :now)
              AND s.profile = ANY(CAST(:profiles AS varchar[]))
        ) AS candidates
        WHERE agency IS DISTINCT FROM CAST(:actor AS varchar)
    ),
    written AS (
        INSERT INTO events (id, tx, agency_code, type, occurred_at, data)
        SELECT gen_random_uuid(), pg_current_xact_id()::text::bigint, agency, :type, :now,
               CAST(:data AS json)
        FROM recipients ORDER BY agency
        RETURNING id, pos, agency_code
    ),
    queued AS (
        INSERT INTO webhook_deliveries
            (id, webhook_id, event_pos, status, attempts, next_attempt_at, created_at)
        SELECT gen_random_uuid(), w.id, written.pos, 'pending', 0, :now, :now
        FROM written
        JOIN webhooks AS w ON w.agency_code = written.agency_code
        JOIN agencies AS a ON a.code = w.agency_code
        WHERE w.disabled_at IS NULL AND w.deleted_at IS NULL AND a.active
          AND jsonb_exists(CAST(w.events AS jsonb), :type)
    )
    SELECT id FROM written
    """
).bindparams(bindparam("now", type_=UTCDateTime()))


def emit(
    session: Session,
    *,
    type: str,
    recipients: Iterable[str],
    actor: Actor | None,
    data: dict[str, Any],
    now: datetime,
    shares_of: uuid.UUID | None = None,
    profiles: Sequence[str] = ALL_PROFILES,
) -> list[uuid.UUID]:
    """Write `type` to each recipient, and with `shares_of` to every agency holding an open
    share of that referral of one of `profiles` (§11: a summary share is not told of what it
    cannot read), except the actor's agency; return the events' ids."""
    if type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {type!r}")
    payload = {key: str(value) for key, value in data.items() if value is not None}
    if actor is not None:
        payload.setdefault("agency", actor.agency)
    if session.get_bind().dialect.name == "postgresql":
        written = session.execute(
            _EMIT_POSTGRES,
            {
                "agencies": sorted(set(recipients)),
                "referral_id": shares_of,
                "profiles": list(profiles),
                "actor": actor.agency if actor is not None else None,
                "type": type,
                "now": now,
                "data": json.dumps(payload, separators=(",", ":")),
            },
        )
        return [row.id for row in written]
    audience = set(recipients)
    if shares_of is not None:
        audience |= open_share_agencies(session, shares_of, now, profiles)
    audience -= {actor.agency} if actor is not None else set()
    rows = [
        {
            "id": uuid.uuid4(),
            "tx": 0,  # SQLite serialises writers: pos alone orders the feed
            "agency_code": agency,
            "type": type,
            "occurred_at": now,
            "data": payload,
        }
        for agency in sorted(audience)
    ]
    if not rows:
        return []
    positions = session.execute(insert(Event).returning(Event.pos, Event.agency_code), rows).all()
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
        # One range on the index, so the scan is ordered and stops at the page's end. A feed
        # request has written nothing when it reads, so the horizon is the snapshot's xmin;
        # only inside one long test transaction that has written does it reach past its own id.
        horizon = literal_column(
            "greatest(pg_snapshot_xmin(pg_current_snapshot())::text::bigint, "
            "coalesce(pg_current_xact_id_if_assigned()::text::bigint + 1, 0))"
        )
        stmt = stmt.where(Event.tx < horizon)
    if cursor:
        tx, pos = decode_cursor(cursor, [int, int])
        stmt = stmt.where(tuple_(Event.tx, Event.pos) > tuple_(tx, pos))
    rows = list(session.execute(stmt.order_by(Event.tx, Event.pos).limit(limit + 1)).scalars())
    more = len(rows) > limit
    rows = rows[:limit]
    last = encode_cursor([rows[-1].tx, rows[-1].pos]) if rows else cursor
    audit.record(session, actor, "event.list", resource_type="event")
    return FeedPage(rows, next_cursor=last if more else None, poll_cursor=last)
