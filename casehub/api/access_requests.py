"""Access requests (CONTRACT §9) and decisions not to share (§11)."""

from __future__ import annotations

import uuid
from typing import Any

from flask import url_for
from flask.views import MethodView

from casehub.api.base import Blueprint, current_actor, problem_response
from casehub.api.referrals import NOT_FOUND as REFERRAL_NOT_FOUND
from casehub.db import get_session, utcnow
from casehub.schemas.access_request import (
    AccessDecisionSchema,
    AccessRequestArgsSchema,
    AccessRequestCreateSchema,
    AccessRequestSchema,
    DecisionCreateSchema,
    SharingDecisionSchema,
)
from casehub.schemas.common import ListArgsSchema, page_of
from casehub.services import access_requests, decisions

blp = Blueprint(
    "access_requests",
    __name__,
    url_prefix="/v1",
    description=(
        "Asking for a share after a match (§9), and decisions not to share (§11). A request "
        "is seen only by its two agencies: the requester (`from_agency`) and the holder asked "
        "(`to_agency`); to any other it answers 404. Only the holder sees which of its "
        "referrals a request concerns (`referral_ids`); the requester learns a referral's id "
        "only from the share the holder makes (`referral.shared`)."
    ),
)

REQUEST_NOT_FOUND = {
    "404": problem_response("No such access request, or the caller's agency is not party to it.")
}
LOCATION = {"Location": {"schema": {"type": "string"}}}


@blp.route("/access-requests")
class AccessRequests(MethodView):
    @blp.autocommit_read
    @blp.requires("subjects:match", "referrals:share")
    @blp.arguments(AccessRequestArgsSchema, location="query")
    @blp.response(200, page_of(AccessRequestSchema))
    @blp.doc(
        operationId="listAccessRequests",
        summary="Access requests to or from the caller's agency",
        description=(
            "`direction=incoming` lists requests to the caller's agency (each with its "
            "`referral_ids`), `outgoing` those it made (never with `referral_ids`); without "
            "`direction`, both. Optionally only one `status`. Ordered by created_at, then id. "
            "Needs "
            "`subjects:match` (the requester's scope) or `referrals:share` (the holder's)."
        ),
    )
    def get(self, args: dict[str, Any]) -> dict[str, Any]:
        items, next_cursor = access_requests.list_access_requests(
            get_session(),
            actor=current_actor(),
            direction=args.get("direction"),
            status=args.get("status"),
            limit=args["limit"],
            cursor=args.get("cursor"),
        )
        return {"items": items, "next_cursor": next_cursor}

    @blp.requires("subjects:match")
    @blp.idempotent
    @blp.arguments(AccessRequestCreateSchema)
    @blp.response(201, AccessRequestSchema, headers=LOCATION)
    @blp.doc(
        operationId="createAccessRequest",
        summary="Ask an agency a match listed for a share",
        description=(
            "Asks `agency`, which the match `match_id` listed, to share what it holds about "
            "the matched child; it hears `access_request.received`. The request concerns the "
            "holder's discoverable referrals about the child at this moment. 422 on "
            "`match_id` when it is not a match the caller's agency made in the last 24 hours "
            "(the same answer for one that never existed, expired or is another agency's; "
            "the attempt is audited), and on `agency` when the match did not list it. 409 "
            "when that agency is not active, or when the caller's agency already has a "
            "pending request to it about the same child: the problem's detail names that "
            "request and `Location` points to it (withdraw it to ask again)."
        ),
        responses={
            "409": {
                **problem_response(
                    "The agency is not active, or a pending request to it about this child "
                    "already exists (see `Location`)."
                ),
                "headers": {
                    "Location": {
                        "description": "The pending request, when one stands in the way.",
                        "schema": {"type": "string"},
                    }
                },
            }
        },
    )
    def post(self, data: dict[str, Any]) -> Any:
        created = access_requests.create_access_request(
            get_session(), actor=current_actor(), data=data, now=utcnow()
        )
        location = url_for("access_requests.AccessRequestById", request_id=created["id"])
        return created, 201, {"Location": location}


@blp.route("/access-requests/<uuid:request_id>")
class AccessRequestById(MethodView):
    @blp.autocommit_read
    @blp.requires("subjects:match", "referrals:share")
    @blp.response(200, AccessRequestSchema)
    @blp.doc(
        operationId="getAccessRequest",
        summary="One access request",
        description=(
            "For its two agencies; `referral_ids` only for the holder. Needs `subjects:match` "
            "or `referrals:share`."
        ),
        responses=REQUEST_NOT_FOUND,
    )
    def get(self, request_id: uuid.UUID) -> Any:
        return access_requests.get_access_request(
            get_session(), actor=current_actor(), request_id=request_id
        )


@blp.route("/access-requests/<uuid:request_id>/withdraw")
class Withdraw(MethodView):
    @blp.requires("subjects:match")
    @blp.response(200, AccessRequestSchema)
    @blp.doc(
        operationId="withdrawAccessRequest",
        summary="Withdraw a pending access request (requester)",
        description=(
            "The request becomes `withdrawn` (`decided_at` says when); the holder can no "
            "longer decide it. 403 for the holder; 409 once it is no longer pending."
        ),
        responses={
            **REQUEST_NOT_FOUND,
            "409": problem_response("The request is no longer pending."),
        },
    )
    def post(self, request_id: uuid.UUID) -> Any:
        return access_requests.withdraw_access_request(
            get_session(), actor=current_actor(), request_id=request_id, now=utcnow()
        )


@blp.route("/access-requests/<uuid:request_id>/decision")
class Decision(MethodView):
    @blp.requires("referrals:share")
    @blp.arguments(AccessDecisionSchema)
    @blp.response(200, AccessRequestSchema)
    @blp.doc(
        operationId="decideAccessRequest",
        summary="Share or decline (holder)",
        description=(
            "`{decision: share, referral_id, share}` shares `referral_id` (one of the "
            "request's `referral_ids`, else 422) with the requester exactly as "
            "`POST /v1/referrals/{referral_id}/shares` does: the same rules and 422s (naming "
            "the field under `share`, e.g. `share.consent.rationale`), the same 403/404 if "
            "the caller's agency no longer leads or sees it, the same 409 if the requester "
            "already holds an active share; the requester hears `referral.shared` and "
            "`access_request.decided` (with `share_id`), and the request becomes `shared`. "
            "`{decision: decline, reason}` records a decision not to share each concerned "
            "referral the caller's agency leads (see `listSharingDecisions`); the request "
            "becomes `declined` with `decision_reason`, and the requester hears "
            "`access_request.decided`. 403 for the requester; 409 once the request is no "
            "longer pending, including when another decision won a race to it."
        ),
        responses={
            **REQUEST_NOT_FOUND,
            "409": problem_response(
                "The request is no longer pending, or the requester already holds an active "
                "share of the referral, or its agency is not active."
            ),
        },
    )
    def post(self, data: dict[str, Any], request_id: uuid.UUID) -> Any:
        return access_requests.decide_access_request(
            get_session(), actor=current_actor(), request_id=request_id, data=data, now=utcnow()
        )


@blp.route("/referrals/<uuid:referral_id>/decisions")
class Decisions(MethodView):
    @blp.requires("referrals:share")
    @blp.arguments(ListArgsSchema, location="query")
    @blp.response(200, page_of(SharingDecisionSchema))
    @blp.doc(
        operationId="listSharingDecisions",
        summary="Decisions not to share a referral (lead)",
        description=(
            "Every decision not to share this referral, made directly or by declining an "
            "access request (`access_request_id`), oldest first (created_at, then id). For "
            "the lead agency: another agency that sees the referral gets 403."
        ),
        responses=REFERRAL_NOT_FOUND,
    )
    def get(self, args: dict[str, Any], referral_id: uuid.UUID) -> dict[str, Any]:
        items, next_cursor = decisions.list_decisions(
            get_session(),
            actor=current_actor(),
            referral_id=referral_id,
            limit=args["limit"],
            cursor=args.get("cursor"),
            now=utcnow(),
        )
        return {"items": items, "next_cursor": next_cursor}

    @blp.requires("referrals:share")
    @blp.idempotent
    @blp.arguments(DecisionCreateSchema)
    @blp.response(201, SharingDecisionSchema)
    @blp.doc(
        operationId="createSharingDecision",
        summary="Record a decision not to share (lead)",
        description=(
            "Records that the lead agency decided not to share this referral with `agency`, "
            "why, and for what purpose the share would have been. Append-only: a decision is "
            "never changed or removed (a later share is a new decision). 422 on `agency` when "
            "there is no such agency; 409 for the caller's own agency; 403 for another "
            "agency that sees the referral. The decision is in the referral's access report."
        ),
        responses={
            **REFERRAL_NOT_FOUND,
            "409": problem_response("The agency is the caller's own."),
        },
    )
    def post(self, data: dict[str, Any], referral_id: uuid.UUID) -> Any:
        return decisions.create_decision(
            get_session(), actor=current_actor(), referral_id=referral_id, data=data, now=utcnow()
        )
