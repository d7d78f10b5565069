"""Partner notifications: the event outbox (which is also the feed), webhook subscriptions, and
the deliveries of events to subscriptions with every attempt made."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, Integer, String, text
from sqlalchemy.orm import Mapped, mapped_column

from casehub.db import Base, new_id, utcnow

BigId = BigInteger().with_variant(Integer(), "sqlite")


class Event(Base):
    """One notification to one agency, written in the transaction of the change that caused it.

    `pos` orders events within a transaction; `tx` is the PostgreSQL transaction id that wrote
    the row (0 on SQLite, where writers are serialised), so the feed can order by (tx, pos) and
    serve only rows from transactions that have all ended: a cursor then never skips an event
    that commits late. Kept for CASEHUB_EVENTS_RETENTION_DAYS.
    """

    __tablename__ = "events"
    __table_args__ = (
        Index("ix_events_agency_code_tx_pos", "agency_code", "tx", "pos"),
        Index("ix_events_occurred_at", "occurred_at"),
    )

    pos: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    id: Mapped[uuid.UUID] = mapped_column(unique=True, default=new_id)
    tx: Mapped[int] = mapped_column(BigInteger, default=0)
    agency_code: Mapped[str] = mapped_column(String(40))  # the recipient
    type: Mapped[str] = mapped_column(String(40))
    occurred_at: Mapped[datetime] = mapped_column(default=utcnow)
    data: Mapped[dict[str, Any]] = mapped_column(JSON)  # ids and agency codes only


class Webhook(Base):
    """An agency's subscription. The signing secret is never stored: it is derived from
    `secret_salt` with the server's webhook key (see casehub.webhooks.secrets), so the database
    alone cannot sign. During a rotation the previous salt signs too, until it expires."""

    __tablename__ = "webhooks"
    __table_args__ = (Index("ix_webhooks_agency_code_created_at", "agency_code", "created_at"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    agency_code: Mapped[str] = mapped_column(ForeignKey("agencies.code"))
    url: Mapped[str] = mapped_column(String(2000))
    events: Mapped[list[str]] = mapped_column(JSON)
    secret_salt: Mapped[str] = mapped_column(String(64))
    previous_secret_salt: Mapped[str | None] = mapped_column(String(64))
    previous_secret_expires_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by_client_id: Mapped[str] = mapped_column(String(64))
    created_by_user_id: Mapped[uuid.UUID | None]
    last_success_at: Mapped[datetime | None]
    failing_since: Mapped[datetime | None]
    disabled_at: Mapped[datetime | None]
    disabled_reason: Mapped[str | None] = mapped_column(String(20))  # gone | failing
    deleted_at: Mapped[datetime | None]


class WebhookDelivery(Base):
    """One event owed to one subscription. A worker claims a due delivery by moving
    `next_attempt_at` past its lease; if it dies, the lease runs out and another worker retries."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index(
            "ix_webhook_deliveries_due",
            "next_attempt_at",
            postgresql_where=text("status = 'pending'"),
            sqlite_where=text("status = 'pending'"),
        ),
        Index("ix_webhook_deliveries_webhook_id_status", "webhook_id", "status"),
        Index("ix_webhook_deliveries_event_pos", "event_pos"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    webhook_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("webhooks.id", ondelete="CASCADE"))
    event_pos: Mapped[int] = mapped_column(BigId, ForeignKey("events.pos", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(12))  # pending | delivered | failed | cancelled
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]


class WebhookAttempt(Base):
    """One HTTP attempt: when, how it ended, how long it took, and at most 200 characters of
    what the receiver answered. Never the payload."""

    __tablename__ = "webhook_attempts"
    __table_args__ = (
        Index("ix_webhook_attempts_webhook_id_attempted_at", "webhook_id", "attempted_at", "id"),
        Index("ix_webhook_attempts_delivery_id", "delivery_id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    delivery_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("webhook_deliveries.id", ondelete="CASCADE")
    )
    webhook_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("webhooks.id", ondelete="CASCADE"))
    event_id: Mapped[uuid.UUID]
    event_type: Mapped[str] = mapped_column(String(40))
    attempt: Mapped[int] = mapped_column(Integer)
    attempted_at: Mapped[datetime]
    outcome: Mapped[str] = mapped_column(String(12))  # delivered | failed | gone
    http_status: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(String(200))
    duration_ms: Mapped[int] = mapped_column(Integer)
    response_excerpt: Mapped[str | None] = mapped_column(String(200))


class WebhookAttemptCount(Base):
    """Attempts by outcome since the database was created: a Prometheus counter every API
    process can report, whichever worker made the attempts."""

    __tablename__ = "webhook_attempt_counts"

    outcome: Mapped[str] = mapped_column(String(12), primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger, default=0)
