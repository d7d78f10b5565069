"""Audit events and their hash chain: every table here is append-only (enforced by triggers)."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from casehub.db import Base, new_id, utcnow

BigId = BigInteger().with_variant(Integer(), "sqlite")


class AuditEvent(Base):
    """One access or refused attempt, written in the transaction of the work it records.

    `pos` is insertion order (a sequence); the tamper-evident `seq` and hashes live in
    `audit_chain`, appended moments later by the sequencer (casehub.audit.chain), so requests
    never queue on the chain's head.
    """

    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_events_referral_id", "referral_id"),
        Index("ix_audit_events_actor_agency", "actor_agency", "pos"),
        Index("ix_audit_events_occurred_at", "occurred_at"),
        Index("ix_audit_events_actor_client_id", "actor_client_id"),
        Index("ix_audit_events_actor_user_id", "actor_user_id"),
        Index("ix_audit_events_action", "action"),
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


class AuditPending(Base):
    """Committed events not yet in the chain: a trigger adds each new event's `pos`, and the
    sequencer removes it in the transaction that chains the event. This is a work queue, not a
    record: the evidence is `audit_events` + `audit_chain`, and verification counts anything
    left here."""

    __tablename__ = "audit_pending"

    pos: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=False)


class AuditChain(Base):
    """The hash chain: `seq` 1, 2, 3… without gaps; `hash` = SHA-256 of the event's canonical
    record, which includes `seq` and `prev_hash` (see casehub.audit.canonical)."""

    __tablename__ = "audit_chain"

    seq: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=False)
    event_pos: Mapped[int] = mapped_column(BigId, ForeignKey("audit_events.pos"), unique=True)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))
    sequenced_at: Mapped[datetime] = mapped_column(default=utcnow)


class AuditEventSubject(Base):
    """Which chained events carried which child's data, in `seq` order: the index behind
    subject filters and `GET /v1/audit/subjects/{id}/accesses` (written by the sequencer)."""

    __tablename__ = "audit_event_subjects"

    subject_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(BigId, ForeignKey("audit_chain.seq"), primary_key=True)


class AuditCheckpoint(Base):
    """A signed statement of the chain's head at a moment: `{seq, hash, time}` under Ed25519."""

    __tablename__ = "audit_checkpoints"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    seq: Mapped[int] = mapped_column(BigId)
    hash: Mapped[str] = mapped_column(String(64))
    signed_at: Mapped[datetime]
    key_id: Mapped[str] = mapped_column(String(64))
    signature: Mapped[str] = mapped_column(String(128))
