"""Audit events and their hash chain, append-only (enforced by triggers), and the indexes the
sequencer derives from them for auditors' queries.

On PostgreSQL the four big tables are RANGE-partitioned (migration 0013): events by `pos`, the
chain and its indexes by `seq`, with bounds that cut all four at the same moments, so that an
old period can be exported, verified and dropped as a whole (casehub.audit.partitions). SQLite
keeps one table each."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import JSON, BigInteger, Index, Integer, String, text
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
    __table_args__ = {"postgresql_partition_by": "RANGE (pos)"}
    # No secondary indexes (migration 0011): every audit query walks the reach or subject index
    # and reaches an event by its pos, and every request writes at least one event. The `id`
    # is not indexed either (0013): a partitioned table's unique index must hold the partition
    # key, and (id, pos) would promise nothing `pos` does not; nothing looks an event up by id,
    # and a uuid4 needs no index to be unique.

    pos: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    id: Mapped[uuid.UUID] = mapped_column(default=new_id)
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
    record, which includes `seq` and `prev_hash` (see casehub.audit.canonical).

    `event_pos` is indexed, not unique (0013: unique indexes of a table partitioned by `seq`
    must hold `seq`), and has no foreign key, like the reach index: the sequencer, the only
    writer, chains each queued event once in the transaction that dequeues it, and a per-row
    check would cost it a lookup and a row lock on every event (verification finds a chained
    event that is missing)."""

    __tablename__ = "audit_chain"
    __table_args__ = {"postgresql_partition_by": "RANGE (seq)"}

    seq: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=False)
    event_pos: Mapped[int] = mapped_column(BigId, index=True)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))
    sequenced_at: Mapped[datetime] = mapped_column(default=utcnow)


class AuditEventSubject(Base):
    """Which chained events carried which child's data, in `seq` order: the index behind
    subject filters and `GET /v1/audit/subjects/{id}/accesses` (written by the sequencer, in
    the transaction that chains the event: no foreign key, as for the reach index)."""

    __tablename__ = "audit_event_subjects"
    __table_args__ = {"postgresql_partition_by": "RANGE (seq)"}

    subject_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=False)


# The reach of `audit:read:all`: every chained event has one row under it.
REACH_ALL = "*"  # never an agency code (those match ^[a-z0-9][a-z0-9-]{1,39}$)


class AuditEventAgency(Base):
    """Who may see each chained event, in `seq` order: the reach index behind every audit list.

    An event has a row under its actor's agency, one under the agency that leads its referral
    (if another), and one under `REACH_ALL`; each copies the event's filter columns, so every
    filter of `GET /v1/audit/events`, for either auditor scope, is a range scan of one index
    in `seq` order. The sequencer writes an event's rows in the transaction that chains it.

    Unlike the record, this index is not append-only (no triggers): `audit:read` reaches the
    events on referrals its agency leads *now*, so a transfer of the lead moves the lead's rows
    (`casehub.audit.chain.move_lead_reach`). The evidence stays `audit_events` + `audit_chain`;
    a query trusts this index to narrow its walk, not to decide what an agency may see.

    Rows under `REACH_ALL` also carry the chain's time marks, which turn `from`/`to` into `seq`
    bounds although `occurred_at` is not quite in `seq` order (events commit out of order):
    `occurred_max`, the latest `occurred_at` chained up to this seq (it never decreases), and
    `late_max_us`, the most by which any event chained up to here occurred before an event
    chained ahead of it, in microseconds (it never decreases either).
    """

    __tablename__ = "audit_event_agencies"
    __table_args__ = (
        Index("ix_audit_event_agencies_actor_agency", "agency", "actor_agency", "seq"),
        Index("ix_audit_event_agencies_actor_client_id", "agency", "actor_client_id", "seq"),
        Index(
            "ix_audit_event_agencies_actor_user_id",
            "agency",
            "actor_user_id",
            "seq",
            postgresql_where=text("actor_user_id IS NOT NULL"),
            sqlite_where=text("actor_user_id IS NOT NULL"),
        ),
        Index("ix_audit_event_agencies_action", "agency", "action", "seq"),
        # Refusals only: nearly every event is allowed, so a walk of the reach in seq order
        # finds those at once, and the index costs the sequencer a fraction of a full one.
        Index(
            "ix_audit_event_agencies_denied",
            "agency",
            "seq",
            postgresql_where=text("outcome = 'denied'"),
            sqlite_where=text("outcome = 'denied'"),
        ),
        # A referral's events only under REACH_ALL: an agency's share of them is few enough
        # to find by its primary key, and one entry an event keeps the sequencer quick.
        Index(
            "ix_audit_event_agencies_referral_id",
            "referral_id",
            "seq",
            postgresql_where=text(f"agency = '{REACH_ALL}' AND referral_id IS NOT NULL"),
            sqlite_where=text(f"agency = '{REACH_ALL}' AND referral_id IS NOT NULL"),
        ),
        Index(
            "ix_audit_event_agencies_occurred_max",
            "occurred_max",
            "seq",
            postgresql_where=text("occurred_max IS NOT NULL"),
            sqlite_where=text("occurred_max IS NOT NULL"),
        ),
        {"postgresql_partition_by": "RANGE (seq)"},
    )

    # No foreign key to audit_chain: the rows are written from the rows chained in the same
    # transaction, and a per-row check would cost the sequencer more than the rest of them.
    agency: Mapped[str] = mapped_column(String(40), primary_key=True)
    seq: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=False)
    actor_agency: Mapped[str | None] = mapped_column(String(40))
    actor_client_id: Mapped[str | None] = mapped_column(String(64))
    actor_user_id: Mapped[uuid.UUID | None]
    action: Mapped[str] = mapped_column(String(60))
    outcome: Mapped[str] = mapped_column(String(10))
    referral_id: Mapped[uuid.UUID | None]
    occurred_max: Mapped[datetime | None]
    late_max_us: Mapped[int | None] = mapped_column(BigInteger)


class AuditCheckpoint(Base):
    """A signed statement of the chain's head at a moment: `{seq, hash, time}` under Ed25519."""

    __tablename__ = "audit_checkpoints"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    seq: Mapped[int] = mapped_column(BigId)
    hash: Mapped[str] = mapped_column(String(64))
    signed_at: Mapped[datetime]
    key_id: Mapped[str] = mapped_column(String(64))
    signature: Mapped[str] = mapped_column(String(128))


class AuditArchive(Base):
    """A period of the trail exported to a signed file, verified and dropped from the database
    (casehub.audit.archive): where the chain now begins. Append-only, like the trail itself.

    The signature (the checkpoint key's, Ed25519) covers the period, its seqs, the hashes at
    both ends and the file's content digest, so the chain of archives is checked without the
    files, and a file against its row or on its own (`casehub audit verify-archive`)."""

    __tablename__ = "audit_archives"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    period: Mapped[str] = mapped_column(String(16), unique=True)
    seq_from: Mapped[int] = mapped_column(BigId, unique=True)
    seq_to: Mapped[int] = mapped_column(BigId)
    prev_hash: Mapped[str] = mapped_column(String(64))  # the hash at seq_from - 1
    head_hash: Mapped[str] = mapped_column(String(64))  # the hash at seq_to
    events: Mapped[int] = mapped_column(BigInteger)
    occurred_from: Mapped[datetime | None]
    occurred_to: Mapped[datetime | None]
    file_name: Mapped[str] = mapped_column(String(200))
    content_sha256: Mapped[str] = mapped_column(String(64))
    archived_at: Mapped[datetime] = mapped_column(default=utcnow)
    key_id: Mapped[str] = mapped_column(String(64))
    signature: Mapped[str] = mapped_column(String(128))
