"""Subject access (CONTRACT §12): one document of everything an agency holds about a child —
its record of the child, the referrals it leads with their notes and history — its disclosure
log (every share of those referrals, every decision not to share) and who in other agencies
read what it shared, from the audit trail.

What is in the pack, and why:
- The child is its merge group (CONTRACT §11): the record asked for, the record it was merged
  into, and every record merged into that one. Referrals about any of them are about this
  child; the records themselves are listed (and their ids named) only where the agency can see
  them, each as it sees it (a record seen only through `summary` shares has no address or
  identifiers). Every record a referral the agency leads is about is one it can see.
- Referrals the agency *leads*, whoever raised them (a lead transferred to it is its own now).
  A referral merely shared *with* the agency is not in its pack: that copy is held under the
  lead's control and answered by the lead's pack (as is one whose lead it transferred away).
- Everything on those referrals is built from one query per kind (referrals, categories,
  indicators, notes, history, shares, decisions), whatever their number: no query per
  referral.
- The reads by other agencies come from the audit trail's indexes (see
  audit_queries.other_agencies_reads): each referral's rows of the reach index, then the
  child's rows of the subject index under the pack's shares' bases (a recipient reading the
  child's record names no referral). They are streamed after the rest, in constant memory:
  the audit trail grows without bound, what an agency wrote about one child does not, so the
  rest is assembled (and dumped) in the request's transaction and can still fail cleanly.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import Session, selectinload

from casehub import audit
from casehub.audit.chain import chain_head
from casehub.auth.actor import Actor
from casehub.models import Note, Referral, ReferralHistory, Share, SharingDecision, Subject
from casehub.services import audit_queries, policy
from casehub.services.subjects import require_visible_subject

ACTION = "subject.sar"
BASIS = "subjects:sar"  # the scope that grants the pack, as auditors' reads record theirs
# A subject access request is answered for the data subject's rights, not for work on the
# case: recorded as `audit` unless the caller declares a purpose (CONTRACT §5).
DEFAULT_PURPOSE = "audit"
# How far a chain of merges is followed (a survivor merged again): far beyond any real one.
MAX_MERGE_DEPTH = 16


@dataclass(frozen=True)
class SubjectAccessPack:
    """The pack without its reads (`document`), and how to stream those: the referrals whose
    reads are listed, in the pack's order, and the audit trail's cut (seqs after `after` and
    at most `upto`)."""

    document: dict[str, Any]
    referral_ids: list[uuid.UUID]
    subject_ids: list[uuid.UUID]
    bases: list[str]  # the audit bases of the pack's shares: `share:<id>`, `emergency:<id>`
    agency: str
    after: int
    upto: int


def assemble_pack(
    session: Session, *, actor: Actor, subject_id: uuid.UUID, now: datetime
) -> SubjectAccessPack:
    """Everything but the reads, audited as one `subject.sar` event; 404 (audited as denied)
    when the caller's agency cannot see the child."""
    asked = require_visible_subject(session, actor=actor, subject_id=subject_id, now=now)
    group = merge_group(session, asked)
    records = _records(session, actor, asked.id, group, now)
    referrals = list(
        session.execute(
            select(Referral)
            .where(Referral.id.in_(_led(actor, group)))
            .options(selectinload(Referral.category_rows), selectinload(Referral.indicator_rows))
            .order_by(Referral.created_at, Referral.id)
        ).scalars()
    )
    notes = _by_referral(
        session.execute(
            select(Note)
            .where(Note.referral_id.in_(_led(actor, group)), policy.note_visible_to(actor.agency))
            .order_by(Note.created_at, Note.id)
        ).scalars()
    )
    history = _by_referral(
        session.execute(
            select(ReferralHistory)
            .where(ReferralHistory.referral_id.in_(_led(actor, group)))
            .order_by(ReferralHistory.occurred_at, ReferralHistory.id)
        ).scalars()
    )
    shares = list(
        session.execute(
            select(Share)
            .where(Share.referral_id.in_(_led(actor, group)))
            .order_by(Share.created_at, Share.id)
        ).scalars()
    )
    decisions = list(
        session.execute(
            select(SharingDecision)
            .where(SharingDecision.referral_id.in_(_led(actor, group)))
            .order_by(SharingDecision.created_at, SharingDecision.id)
        ).scalars()
    )
    connection = session.connection()
    upto, _ = chain_head(connection)
    after = 0
    if referrals:
        # No event on a referral occurred before it was created: the walk starts at the first
        # seq marked at or after the oldest one's creation, so older partitions are not read.
        first = audit_queries.first_seq_since(connection, min(r.created_at for r in referrals))
        after = upto if first is None else first - 1
    document = {
        "generated_at": now,
        "generated_by": {
            "agency": actor.agency,
            "client_id": actor.client_id,
            "user_id": actor.user_id,
        },
        "subject_id": asked.id,
        "subjects": records,
        "referrals": [
            {
                "referral": referral,
                "erased_at": referral.erased_at,
                "notes": notes.get(referral.id, []),
                "history": history.get(referral.id, []),
            }
            for referral in referrals
        ],
        "disclosures": {"shares": shares, "decisions_not_to_share": decisions},
        "audit_trail_upto_seq": upto,
    }
    carried = {r["id"] for r in records} | {r.subject_id for r in referrals}
    audit.record(
        session,
        actor,
        ACTION,
        resource_type="subject",
        resource_id=asked.id,
        subject_ids=carried,
        basis=BASIS,
        purpose=actor.purpose or DEFAULT_PURPOSE,
    )
    return SubjectAccessPack(
        document,
        referral_ids=[r.id for r in referrals],
        subject_ids=[record["id"] for record in records],
        bases=sorted({basis for share in shares for basis in _bases(share)}),
        agency=actor.agency,
        after=after,
        upto=upto,
    )


def reads_by_other_agencies(
    session: Session, pack: SubjectAccessPack
) -> Iterator[list[dict[str, Any]]]:
    """The pack's reads by other agencies, chunk by chunk (after the request has committed)."""
    if not pack.referral_ids or pack.after >= pack.upto:
        return iter(())
    return audit_queries.other_agencies_reads(
        session,
        agency=pack.agency,
        referral_ids=pack.referral_ids,
        subject_ids=pack.subject_ids,
        bases=pack.bases,
        after=pack.after,
        upto=pack.upto,
    )


def merge_group(session: Session, subject: Subject) -> list[uuid.UUID]:
    """The ids of every record of this child: the survivor the record was merged into (if it
    was), and every record merged into that survivor, directly or through another duplicate."""
    root = subject
    for _ in range(MAX_MERGE_DEPTH):
        if root.merged_into is None:
            break
        parent = session.get(Subject, root.merged_into)
        if parent is None:
            break
        root = parent
    group = [root.id]
    frontier = [root.id]
    for _ in range(MAX_MERGE_DEPTH):
        found = [
            found_id
            for found_id in session.execute(
                select(Subject.id).where(Subject.merged_into.in_(frontier))
            ).scalars()
            if found_id not in group
        ]
        if not found:
            break
        group.extend(found)
        frontier = found
    if subject.id not in group:
        group.append(subject.id)
    return group


def _led(actor: Actor, group: list[uuid.UUID]) -> Select[tuple[uuid.UUID]]:
    """The referrals about the child that the caller's agency leads, as a subquery (one IN per
    table, not a list of ids bound per query)."""
    return select(Referral.id).where(
        Referral.subject_id.in_(group), Referral.lead_agency == actor.agency
    )


def _records(
    session: Session, actor: Actor, asked: uuid.UUID, group: list[uuid.UUID], now: datetime
) -> list[dict[str, Any]]:
    """The child's records the agency can see, the one asked for first, each as it sees it."""
    rows = session.execute(
        select(Subject, policy.subject_seen_in_full_by(actor.agency, now).label("in_full"))
        .where(Subject.id.in_(group), policy.subject_visible(actor, now))
        .order_by(Subject.created_at, Subject.id)
    ).all()
    records = [_record(row.Subject, in_full=bool(row.in_full)) for row in rows]
    records.sort(key=lambda record: record["id"] != asked)
    return records


def _record(subject: Subject, *, in_full: bool) -> dict[str, Any]:
    parts = {
        "line": subject.address_line,
        "town": subject.address_town,
        "postcode": subject.address_postcode,
    }
    address = parts if any(v is not None for v in parts.values()) else None
    return {
        "id": subject.id,
        "given_name": subject.given_name,
        "family_name": subject.family_name,
        "aliases": subject.aliases or [],
        "date_of_birth": subject.date_of_birth,
        "estimated_birth_year": subject.estimated_birth_year,
        "gender": subject.gender,
        "identifiers": (subject.identifiers or []) if in_full else [],
        "address": address if in_full else None,
        "profile": "full" if in_full else "summary",
        "created_by_agency": subject.created_by_agency,
        "merged_into": subject.merged_into,
        "erased_at": subject.erased_at,
        "created_at": subject.created_at,
        "updated_at": subject.updated_at,
    }


def _bases(share: Share) -> list[str]:
    """What the audit trail records as the basis of a read under this share (policy.Access)."""
    if share.emergency_access_id is not None:
        return [f"share:{share.id}", f"emergency:{share.emergency_access_id}"]
    return [f"share:{share.id}"]


def _by_referral(rows: Any) -> dict[uuid.UUID, list[Any]]:
    grouped: dict[uuid.UUID, list[Any]] = defaultdict(list)
    for row in rows:
        grouped[row.referral_id].append(row)
    return grouped
