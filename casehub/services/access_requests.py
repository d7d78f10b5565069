"""Access requests (CONTRACT §9): after a match, an agency asks one of the agencies it listed
for a share; that holder shares (exactly as §4 does) or declines, which records a decision not
to share (§11). The requester never learns which referrals or children a request concerns: only
the holder sees `referral_ids`, until a share exists and says so itself."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from casehub import audit
from casehub.auth.actor import Actor
from casehub.errors import Conflict, Forbidden, NotFound, ValidationFailed
from casehub.models import AccessRequest, Agency, Referral
from casehub.services import events, matching
from casehub.services.decisions import add_decision
from casehub.services.pagination import keyset_page
from casehub.services.shares import create_share

URGENCIES = ("routine", "urgent")
STATUSES = ("pending", "shared", "declined", "withdrawn")
DIRECTIONS = ("incoming", "outgoing")
RESOURCE_TYPE = "access_request"


def document(request: AccessRequest, agency: str) -> dict[str, Any]:
    """The request as `agency` sees it: `referral_ids` for the holder only; subject ids never."""
    shown: dict[str, Any] = {
        "id": request.id,
        "from_agency": request.from_agency,
        "to_agency": request.to_agency,
        "purpose": request.purpose,
        "necessity": request.necessity,
        "urgency": request.urgency,
        "status": request.status,
        "created_at": request.created_at,
        "decided_at": request.decided_at,
        "decision_reason": request.decision_reason,
        "share_id": request.share_id,
    }
    if agency == request.to_agency:
        shown["referral_ids"] = list(request.referral_ids)
    return shown


def _role(request: AccessRequest, agency: str) -> str:
    return "holder" if agency == request.to_agency else "requester"


def _first_referral(request: AccessRequest) -> uuid.UUID | None:
    """The referral the holder's notice of a request is filed under, so that it reaches the
    holder's `audit:read` and its access report (and, HOLDER_NOTICES, not the requester's)."""
    return uuid.UUID(request.referral_ids[0]) if request.referral_ids else None


def _audit(
    session: Session,
    actor: Actor,
    action: str,
    request: AccessRequest,
    *,
    referral_id: uuid.UUID | None = None,
    outcome: str = "allowed",
) -> None:
    audit.record(
        session,
        actor,
        action,
        outcome=outcome,
        resource_type=RESOURCE_TYPE,
        resource_id=request.id,
        referral_id=referral_id,
        basis=_role(request, actor.agency),
        purpose=actor.purpose or request.purpose,
    )


# -- asking -----------------------------------------------------------------------------------
def _usable_match(session: Session, actor: Actor, match_id: uuid.UUID, now: datetime) -> Any:
    """matching.usable_match, with a refusal audited: a match id that is not the caller's
    agency's (or has expired) is someone probing for what another agency asked."""
    try:
        return matching.usable_match(session, actor=actor, match_id=match_id, now=now)
    except ValidationFailed:
        audit.record(
            session,
            actor,
            "access.denied",
            outcome="denied",
            resource_type="match",
            resource_id=match_id,
            purpose=actor.purpose,
        )
        raise


def _serialise_pair(session: Session, from_agency: str, to_agency: str) -> None:
    """On PostgreSQL, requests from one agency to another are created one at a time (a
    transaction lock), so two at once cannot both pass the duplicate check. SQLite has a
    single writer already."""
    if session.get_bind().dialect.name != "postgresql":
        return
    digest = hashlib.sha256(f"access-request {from_agency} {to_agency}".encode()).digest()
    key = int.from_bytes(digest[:8], "big", signed=True)
    session.execute(select(func.pg_advisory_xact_lock(key)))


def _pending_about(
    session: Session, from_agency: str, to_agency: str, subject_ids: Sequence[uuid.UUID]
) -> AccessRequest | None:
    wanted = {str(s) for s in subject_ids}
    pending = session.scalars(
        select(AccessRequest)
        .where(
            AccessRequest.from_agency == from_agency,
            AccessRequest.status == "pending",
            AccessRequest.to_agency == to_agency,
        )
        .order_by(AccessRequest.created_at, AccessRequest.id)
    )
    return next((r for r in pending if wanted & set(r.subject_ids)), None)


def create_access_request(
    session: Session, *, actor: Actor, data: dict[str, Any], now: datetime
) -> dict[str, Any]:
    """Ask an agency a match listed for a share of what it holds about the matched child.

    One pending request per requester, holder and child: asking again while one is pending is
    409, with the pending request's id and `Location` (it is the caller's own agency's)."""
    match = _usable_match(session, actor, data["match_id"], now)
    subject_ids = matching.matched_subjects(match, data["agency"])
    holder = session.get(Agency, data["agency"])
    if holder is None or not holder.active:
        raise Conflict("That agency is not active.")
    _serialise_pair(session, actor.agency, holder.code)
    existing = _pending_about(session, actor.agency, holder.code, subject_ids)
    if existing is not None:
        raise Conflict(
            f"A pending access request to this agency about this child already exists: "
            f"{existing.id}. Withdraw it to ask again.",
            headers={"Location": f"/v1/access-requests/{existing.id}"},
        )
    # Found now, not when matched: a referral made undiscoverable since is not offered.
    referral_ids = matching.held_referrals(session, agency=holder.code, subject_ids=subject_ids)
    request = AccessRequest(
        match_id=match.id,
        from_agency=actor.agency,
        to_agency=holder.code,
        purpose=data["purpose"],
        necessity=data["necessity"],
        urgency=data["urgency"],
        status="pending",
        referral_ids=[str(r) for r in referral_ids],
        subject_ids=sorted(str(s) for s in subject_ids),
        created_at=now,
        created_by_client_id=actor.client_id,
        created_by_user_id=actor.user_id,
    )
    session.add(request)
    session.flush()
    # The requester's own record names neither the referral nor the children; the notice on
    # the holder's referral (casehub.audit.chain.HOLDER_NOTICES) reaches the holder only.
    for referral_id, children in ((None, []), (_first_referral(request), request.subject_ids)):
        if referral_id is None and children:
            continue
        audit.record(
            session,
            actor,
            "access_request.create",
            resource_type=RESOURCE_TYPE,
            resource_id=request.id,
            referral_id=referral_id,
            subject_ids=children,
            basis=f"match:{match.id}",
            purpose=actor.purpose or request.purpose,
        )
    events.emit(
        session,
        type="access_request.received",
        recipients={request.to_agency},
        actor=actor,
        data={"access_request_id": request.id},
        now=now,
    )
    return document(request, actor.agency)


# -- reading ----------------------------------------------------------------------------------
def list_access_requests(
    session: Session,
    *,
    actor: Actor,
    direction: str | None,
    status: str | None,
    limit: int,
    cursor: str | None,
) -> tuple[list[dict[str, Any]], str | None]:
    """Requests to the caller's agency (`incoming`), from it (`outgoing`) or either (None),
    oldest first: one range of the (agency, [status,] created_at, id) indexes per direction."""
    to_me = AccessRequest.to_agency == actor.agency
    from_me = AccessRequest.from_agency == actor.agency
    party = {"incoming": to_me, "outgoing": from_me}.get(direction or "", or_(to_me, from_me))
    stmt = select(AccessRequest).where(party)
    if status is not None:
        stmt = stmt.where(AccessRequest.status == status)
    rows, next_cursor = keyset_page(
        session, stmt, keys=[AccessRequest.created_at, AccessRequest.id], limit=limit, cursor=cursor
    )
    audit.record(
        session,
        actor,
        "access_request.list",
        resource_type=RESOURCE_TYPE,
        basis={"incoming": "holder", "outgoing": "requester"}.get(direction or ""),
    )
    return [document(r, actor.agency) for r in rows], next_cursor


def reach_access_request(session: Session, actor: Actor, request_id: uuid.UUID) -> AccessRequest:
    """The request if the caller's agency is one of its two parties; otherwise 404, audited,
    the same whether it exists or not."""
    request = session.get(AccessRequest, request_id)
    if request is None or actor.agency not in (request.from_agency, request.to_agency):
        audit.record(
            session,
            actor,
            "access.denied",
            outcome="denied",
            resource_type=RESOURCE_TYPE,
            resource_id=request_id,
            purpose=actor.purpose,
        )
        raise NotFound("No such access request.")
    return request


def get_access_request(session: Session, *, actor: Actor, request_id: uuid.UUID) -> dict[str, Any]:
    request = reach_access_request(session, actor, request_id)
    _audit(session, actor, "access_request.read", request)
    return document(request, actor.agency)


# -- ending -----------------------------------------------------------------------------------
def _close(
    session: Session, request: AccessRequest, status: str, actor: Actor, now: datetime
) -> None:
    """Move a pending request on. The row's version makes this a compare-and-set: of two
    requests deciding (or withdrawing) it at once, the second finds 0 rows and gets 409."""
    if request.status != "pending":
        raise Conflict(f"This access request is already {request.status}.")
    request.status = status
    request.decided_at = now
    request.decided_by_client_id = actor.client_id
    request.decided_by_user_id = actor.user_id
    try:
        session.flush()
    except StaleDataError as exc:
        raise Conflict("This access request was decided or withdrawn meanwhile.") from exc


def withdraw_access_request(
    session: Session, *, actor: Actor, request_id: uuid.UUID, now: datetime
) -> dict[str, Any]:
    request = reach_access_request(session, actor, request_id)
    if request.from_agency != actor.agency:
        _audit(session, actor, "access_request.withdraw", request, outcome="denied")
        raise Forbidden("Only the requesting agency may withdraw an access request.")
    _close(session, request, "withdrawn", actor, now)
    _audit(session, actor, "access_request.withdraw", request)  # the requester's own record
    if request.referral_ids:  # and the holder's notice (HOLDER_NOTICES), on its referral
        _audit(
            session, actor, "access_request.withdraw", request, referral_id=_first_referral(request)
        )
    return document(request, actor.agency)


def _under_share(error: ValidationFailed) -> ValidationFailed:
    """create_share's 422 names a field of a share body; here that body is `share`."""
    errors = dict(error.errors or {})
    return ValidationFailed(f"share.{error.detail}", errors={"json": {"share": errors["json"]}})


def decide_access_request(
    session: Session, *, actor: Actor, request_id: uuid.UUID, data: dict[str, Any], now: datetime
) -> dict[str, Any]:
    """The holder shares one of the referrals the request concerns with the requester (through
    shares.create_share: the same rules, refusals, audit and `referral.shared`), or declines,
    which records a decision not to share each of them that it still leads."""
    request = reach_access_request(session, actor, request_id)
    if request.to_agency != actor.agency:
        _audit(session, actor, "access_request.decide", request, outcome="denied")
        raise Forbidden("Only the agency that was asked decides an access request.")
    if request.status != "pending":
        raise Conflict(f"This access request is already {request.status}.")
    if data["decision"] == "share":
        referral_id: uuid.UUID = data["referral_id"]
        if str(referral_id) not in request.referral_ids:
            raise ValidationFailed.field(
                "referral_id", "Not one of the referrals this access request concerns."
            )
        _close(session, request, "shared", actor, now)
        try:
            share = create_share(
                session,
                actor=actor,
                referral_id=referral_id,
                data={**data["share"], "agency": request.from_agency},
                now=now,
            )
        except ValidationFailed as error:
            raise _under_share(error) from error
        request.share_id = share.id
        session.flush()
        _audit(session, actor, "access_request.decide", request, referral_id=referral_id)
    else:
        _close(session, request, "declined", actor, now)
        request.decision_reason = data["reason"]
        session.flush()
        ids = [uuid.UUID(r) for r in request.referral_ids]
        # Held against erasure while the decisions are written (retention skips them); one
        # erased since the request was made takes no decision (its tombstone holds no text).
        led = session.scalars(
            select(Referral)
            .where(
                Referral.id.in_(ids),
                Referral.lead_agency == actor.agency,
                Referral.erased_at.is_(None),
            )
            .order_by(Referral.created_at, Referral.id)
            .with_for_update(key_share=True)
        ).all()
        for referral in led:
            add_decision(
                session,
                actor=actor,
                referral=referral,
                agency=request.from_agency,
                reason=data["reason"],
                purpose=request.purpose,
                access_request_id=request.id,
                now=now,
            )
        _audit(
            session, actor, "access_request.decide", request, referral_id=_first_referral(request)
        )
    events.emit(
        session,
        type="access_request.decided",
        recipients={request.from_agency},
        actor=actor,
        data={"access_request_id": request.id, "share_id": request.share_id},
        now=now,
    )
    return document(request, actor.agency)
