"""Retention (CONTRACT §11): erase the referrals closed for longer than the retention period and
not under legal hold, keeping a tombstone, and prune expired technical records.

`casehub retention run` calls `run`. It reads candidates in batches along
ix_referrals_retention (never all of them at once) and erases each referral in a transaction of
its own, with its audit event and its `referral.erased` notifications. On PostgreSQL the
referral is first locked with FOR UPDATE SKIP LOCKED and its eligibility checked again under the
lock, so two runs at once never erase (or notify about) one referral twice: the second skips a
referral the first holds, and finds it erased once the first has committed.

Nothing here writes personal data anywhere: the report, the audit events and the notifications
name referrals and children by id and reference only.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Row, delete, func, select, tuple_, update
from sqlalchemy.orm import Session

from casehub import audit
from casehub.models import (
    IdempotencyRecord,
    Note,
    Referral,
    ReferralCategory,
    ReferralHistory,
    ReferralIndicator,
    RevokedToken,
    Share,
    SharingDecision,
    Subject,
    SubjectIdentifier,
    SubjectNameKey,
    UsedAssertion,
)
from casehub.services import events

# What free text that must keep a value (a NOT NULL column) becomes; migration 0017 allows a
# decision not to share exactly this change.
ERASED = "[erased]"
BATCH = 500
BASIS = "retention"

Sessions = Callable[[], AbstractContextManager[Session]]


@dataclass(frozen=True)
class Erased:
    """One referral retention erased (or, in a dry run, would erase): ids only."""

    id: uuid.UUID
    reference: str
    subjects_erased: tuple[uuid.UUID, ...] = ()
    notified: tuple[str, ...] = ()


@dataclass
class Report:
    dry_run: bool
    cutoff: datetime
    referrals: int = 0
    subjects: int = 0
    notifications: int = 0
    skipped: int = 0  # locked by another transaction (another run, or a change in flight)
    held: int = 0  # past the period, kept by a legal hold
    pruned: dict[str, int] = field(default_factory=dict)
    erase_seconds: float = 0.0
    prune_seconds: float = 0.0


def cutoff_for(now: datetime, days: int) -> datetime:
    return now - timedelta(days=days)


def _due(cutoff: datetime) -> list[ColumnElement[bool]]:
    """Closed before the cutoff, not erased, not held. The first two are the predicate of the
    partial index ix_referrals_retention, so the walk is a range of it."""
    return [
        Referral.closed_at.is_not(None),
        Referral.erased_at.is_(None),
        Referral.closed_at < cutoff,
        Referral.legal_hold_at.is_(None),
    ]


def due_batches(
    sessions: Sessions, *, cutoff: datetime, batch: int = BATCH
) -> Iterator[list[Row[Any]]]:
    """(id, reference, closed_at) of the referrals due for erasure, oldest closure first, a
    batch at a time after the last one read (a keyset walk along ix_referrals_retention: constant
    memory however many). Each batch is read in a short session of its own, so that no snapshot
    or lock is held while the batch is erased."""
    after: tuple[datetime, uuid.UUID] | None = None
    while True:
        stmt = select(Referral.id, Referral.reference, Referral.closed_at).where(*_due(cutoff))
        if after is not None:
            stmt = stmt.where(tuple_(Referral.closed_at, Referral.id) > tuple_(*after))
        with sessions() as session:
            rows = list(
                session.execute(stmt.order_by(Referral.closed_at, Referral.id).limit(batch)).all()
            )
        if rows:
            yield rows
        if len(rows) < batch:
            return
        after = (rows[-1].closed_at, rows[-1].id)


def held_count(session: Session, *, cutoff: datetime) -> int:
    """Referrals past the retention period that a legal hold keeps."""
    return int(
        session.execute(
            select(func.count()).where(
                Referral.closed_at.is_not(None),
                Referral.erased_at.is_(None),
                Referral.closed_at < cutoff,
                Referral.legal_hold_at.is_not(None),
            )
        ).scalar_one()
    )


def erase_referral(
    session: Session, *, referral_id: uuid.UUID, cutoff: datetime, now: datetime
) -> Erased | None:
    """Erase one referral in the session's transaction, if it is still due and no other
    transaction holds it (None otherwise): its content, notes, its shares' and history's free
    text, its decisions' reasons, and its child's record when no other referral needs it. The
    row stays as the tombstone. Audited as `referral.erase` by the command line (no actor);
    every agency it was ever shared with hears `referral.erased`. The caller commits."""
    locked = session.execute(
        select(Referral.id, Referral.reference, Referral.subject_id, Referral.lead_agency)
        .where(Referral.id == referral_id, *_due(cutoff))
        .with_for_update(skip_locked=True)
    ).one_or_none()
    if locked is None:
        return None
    claimed = session.execute(
        update(Referral)
        .where(Referral.id == referral_id, Referral.erased_at.is_(None))
        .values(
            summary="",
            narrative=None,
            location_description=None,
            location_postcode=None,
            location_transport_hub=None,
            immediate_action=None,
            discoverable=False,  # out of matching, emergency access and access requests
            erased_at=now,
            version=Referral.version + 1,  # a change read before the erasure is refused (412)
        )
        .execution_options(synchronize_session=False)
    )
    if claimed.rowcount != 1:  # SQLite: another writer got there first
        return None
    for model in (ReferralCategory, ReferralIndicator, Note):
        session.execute(delete(model).where(model.referral_id == referral_id))
    recipients = set(
        session.execute(
            select(Share.agency_code)
            .where(Share.referral_id == referral_id, Share.agency_code != locked.lead_agency)
            .distinct()
        ).scalars()
    )
    session.execute(
        update(Share)
        .where(Share.referral_id == referral_id)
        .values(
            necessity="",
            gateway=None,
            consent_rationale=None,
            revoked_reason=None,
            ended_at=func.coalesce(Share.ended_at, now),
        )
        .execution_options(synchronize_session=False)
    )
    _erase_history(session, referral_id)
    session.execute(
        update(SharingDecision)
        .where(SharingDecision.referral_id == referral_id)
        .values(reason=ERASED)
        .execution_options(synchronize_session=False)
    )
    children = _erase_child_if_unneeded(session, locked.subject_id, referral_id, now)
    audit.record(
        session,
        None,
        "referral.erase",
        resource_type="referral",
        resource_id=referral_id,
        referral_id=referral_id,
        subject_ids=[locked.subject_id],
        basis=BASIS,
    )
    for child in children:
        audit.record(
            session,
            None,
            "subject.erase",
            resource_type="subject",
            resource_id=child,
            referral_id=referral_id,
            subject_ids=[child],
            basis=BASIS,
        )
    events.emit(
        session,
        type="referral.erased",
        recipients=recipients,
        actor=None,
        data={"referral_id": referral_id},
        now=now,
    )
    return Erased(referral_id, locked.reference, tuple(children), tuple(sorted(recipients)))


def _erase_history(session: Session, referral_id: uuid.UUID) -> None:
    """Reasons go; the moves stay (statuses, agencies, when, by whom), and a transfer's lawful
    basis keeps its codes without its free-text gateway."""
    session.execute(
        update(ReferralHistory)
        .where(ReferralHistory.referral_id == referral_id)
        .values(reason=None)
        .execution_options(synchronize_session=False)
    )
    with_basis = session.execute(
        select(ReferralHistory.id, ReferralHistory.lawful_basis).where(
            ReferralHistory.referral_id == referral_id, ReferralHistory.lawful_basis.is_not(None)
        )
    ).all()
    for entry_id, basis in with_basis:
        if isinstance(basis, dict) and basis.get("gateway") is not None:
            session.execute(
                update(ReferralHistory)
                .where(ReferralHistory.id == entry_id)
                .values(lawful_basis={**basis, "gateway": None})
                .execution_options(synchronize_session=False)
            )


def _one_child(session: Session, subject_id: uuid.UUID) -> list[uuid.UUID]:
    """The records that are one child with this one (CONTRACT §11 merging): the survivor and
    every duplicate merged into it; locked, in id order, so that two erasures about one child
    take turns and the second sees what the first committed."""
    root = subject_id
    for _ in range(8):  # a survivor is never itself merged away; bounded all the same
        parent = session.execute(
            select(Subject.merged_into).where(Subject.id == root)
        ).scalar_one_or_none()
        if parent is None:
            break
        root = parent
    return list(
        session.execute(
            select(Subject.id)
            .where((Subject.id == root) | (Subject.merged_into == root))
            .order_by(Subject.id)
            .with_for_update()
        ).scalars()
    )


def _erase_child_if_unneeded(
    session: Session, subject_id: uuid.UUID, referral_id: uuid.UUID, now: datetime
) -> list[uuid.UUID]:
    """Erase the child's records when no referral that is not erased is about the child;
    return the records erased."""
    records = _one_child(session, subject_id)
    needed = session.execute(
        select(Referral.id)
        .where(
            Referral.subject_id.in_(records),
            Referral.erased_at.is_(None),
            Referral.id != referral_id,
        )
        .limit(1)
    ).first()
    if needed is not None:
        return []
    erased = list(
        session.execute(
            select(Subject.id).where(Subject.id.in_(records), Subject.erased_at.is_(None))
        ).scalars()
    )
    if not erased:
        return []
    session.execute(
        update(Subject)
        .where(Subject.id.in_(erased))
        .values(
            given_name="",
            family_name="",
            aliases=[],
            date_of_birth=None,
            estimated_birth_year=None,
            gender="unknown",
            identifiers=[],
            address_line=None,
            address_town=None,
            address_postcode=None,
            erased_at=now,
            updated_at=now,
            version=Subject.version + 1,
        )
        .execution_options(synchronize_session=False)
    )
    for model in (SubjectNameKey, SubjectIdentifier):
        session.execute(delete(model).where(model.subject_id.in_(erased)))
    return erased


# -- pruning -----------------------------------------------------------------------------------
# Expired technical records: their expiry column, and their primary key.
PRUNED: dict[str, tuple[Any, tuple[Any, ...]]] = {
    "idempotency records": (
        IdempotencyRecord.expires_at,
        (IdempotencyRecord.client_id, IdempotencyRecord.key),
    ),
    "used assertions": (UsedAssertion.expires_at, (UsedAssertion.issuer, UsedAssertion.jti)),
    "revoked tokens": (RevokedToken.expires_at, (RevokedToken.jti,)),
}


def count_expired(session: Session, *, now: datetime) -> dict[str, int]:
    return {
        name: int(session.execute(select(func.count()).where(expires < now)).scalar_one())
        for name, (expires, _) in PRUNED.items()
    }


def prune_batch(session: Session, name: str, *, now: datetime, batch: int = BATCH) -> int:
    """Delete up to `batch` expired rows of one kind; return how many went."""
    expires, key = PRUNED[name]
    chosen = select(*key).where(expires < now).limit(batch)
    target = tuple_(*key) if len(key) > 1 else key[0]
    result = session.execute(
        delete(expires.table).where(target.in_(chosen)).execution_options(synchronize_session=False)
    )
    return int(result.rowcount)


# -- the run -----------------------------------------------------------------------------------
def run(
    sessions: Sessions,
    *,
    now: datetime,
    days: int,
    dry_run: bool,
    batch: int = BATCH,
    on_referral: Callable[[Erased], None] | None = None,
) -> Report:
    """One retention run: erase (or, dry, list) every referral due, then prune (or count) the
    expired records. `sessions()` opens a session that commits when its block ends; each
    erasure and each prune batch is one. A dry run only reads."""
    cutoff = cutoff_for(now, days)
    report = Report(dry_run=dry_run, cutoff=cutoff)
    started = time.perf_counter()
    with sessions() as session:
        report.held = held_count(session, cutoff=cutoff)
    for rows in due_batches(sessions, cutoff=cutoff, batch=batch):
        for row in rows:
            if dry_run:
                done: Erased | None = Erased(row.id, row.reference)
            else:
                with sessions() as session:
                    done = erase_referral(session, referral_id=row.id, cutoff=cutoff, now=now)
                    if done is not None:
                        audit.write_pending(session, None, status=200)
            if done is None:
                report.skipped += 1
                continue
            report.referrals += 1
            report.subjects += len(done.subjects_erased)
            report.notifications += len(done.notified)
            if on_referral is not None:
                on_referral(done)
    report.erase_seconds = time.perf_counter() - started
    started = time.perf_counter()
    if dry_run:
        with sessions() as session:
            report.pruned = count_expired(session, now=now)
    else:
        for name in PRUNED:
            total = 0
            while True:
                with sessions() as session:
                    gone = prune_batch(session, name, now=now, batch=batch)
                total += gone
                if gone < batch:
                    break
            report.pruned[name] = total
    report.prune_seconds = time.perf_counter() - started
    return report
