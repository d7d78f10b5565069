"""Audit events: one row per access or refused attempt, append-only (enforced by triggers)."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import JSON, BigInteger, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from casehub.db import Base, new_id, utcnow

BigId = BigInteger().with_variant(Integer(), "sqlite")


class AuditEvent(Base):
    """`pos` is insertion order (a sequence); the tamper-evident `seq` and hashes are assigned
    by the chain sequencer (see casehub.audit.chain)."""

    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_events_referral_id", "referral_id"),
        Index("ix_audit_events_actor_agency", "actor_agency", "pos"),
        Index("ix_audit_events_occurred_at", "occurred_at"),
    )

    pos: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    id: Mapped[uuid.UUID] = mapped_column(unique=True, default=new_id)
    occurred_at: Mapped[datetime] = mapped_column(default=utcnow)
    actor_agency: Mapped[str | None] = mapped_column(String(40))
    actor_client_id: Mapped[str | None] = mapped_column(String(64))
    actor_user_id: Mapped[uuid.UUID | None]
    action: Mapped[str] = mapped_column(String(60))
    outcome: Mapped[str] = mapped_column(String(10))
    resource_type: Mapped[str | None] = mapped_column(String(30))
    resource_id: Mapped[str | None] = mapped_column(String(64))
    referral_id: Mapped[uuid.UUID | None]
    subject_ids: Mapped[list[str]] = mapped_column(JSON, default=list)
    basis: Mapped[str | None] = mapped_column(String(60))
    purpose: Mapped[str | None] = mapped_column(String(40))
    request_id: Mapped[str | None] = mapped_column(String(128))
    request_method: Mapped[str | None] = mapped_column(String(10))
    request_path: Mapped[str | None] = mapped_column(String(500))
    request_status: Mapped[int | None] = mapped_column(Integer)
    request_ip: Mapped[str | None] = mapped_column(String(45))
