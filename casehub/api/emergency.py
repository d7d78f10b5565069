"""Emergency (break-glass) access and the partnership auditors' review queue (CONTRACT §10)."""

from __future__ import annotations

import uuid
from typing import Any

from flask import url_for
from flask.views import MethodView

from casehub.api.base import Blueprint, current_actor, problem_response
from casehub.db import get_session, utcnow
from casehub.schemas.common import page_of
from casehub.schemas.emergency import (
    EmergencyAccessCreateSchema,
    EmergencyAccessGrantedSchema,
    EmergencyAccessSchema,
    ReviewArgsSchema,
    ReviewCreateSchema,
    ReviewSchema,
)
from casehub.services import emergency

blp = Blueprint(
    "emergency",
    __name__,
    url_prefix="/v1",
    description=(
        "Emergency (break-glass) access: when a child's safety cannot wait for another agency's "
        "decision, a police or local-authority agency that matched the child (`POST "
        "/v1/matches`) may read that agency's referrals about the child at once, read-only, for "
        "four hours. Every read under it is audited with basis `emergency:<id>`, the holder is "
        "told at once (`emergency_access.granted`), either side may end it early, and every "
        "emergency access waits in the partnership auditors' review queue."
    ),
)

NOT_PARTY = {
    "404": problem_response(
        "No such emergency access, or the caller's agency neither broke the glass nor holds "
        "what it opened."
    )
}
REVIEW_SCOPE_NOTE = (
    "For the partnership's auditors (`audit:read:all`, platform agency only). This read is "
    "itself audited."
)


def _forbidden(description: str) -> dict[str, Any]:
    """A 403 described for this operation: applied after `requires`, whose generic 403 it
    replaces (keeping its WWW-Authenticate header)."""
    return {"responses": {"403": problem_response(description)}}


@blp.route("/emergency-access")
class EmergencyAccesses(MethodView):
    @blp.doc(
        **_forbidden(
            'The token lacks `referrals:emergency` (`error="insufficient_scope"`), or the '
            "caller's agency is not a police or local-authority agency."
        )
    )
    @blp.requires(emergency.EMERGENCY_SCOPE)
    @blp.idempotent
    @blp.arguments(EmergencyAccessCreateSchema)
    @blp.response(
        201, EmergencyAccessGrantedSchema, headers={"Location": {"schema": {"type": "string"}}}
    )
    @blp.doc(
        operationId="createEmergencyAccess",
        summary="Break the glass: read a matched child's referrals at once",
        description=(
            "Opens, read-only and for four hours, every discoverable referral that `agency` "
            "(listed by the caller's match `match_id`) leads about the matched child: one "
            "share per referral to the caller's agency (`access: read`, the given `purpose`, "
            "`necessity` = `reason`, lawful basis `vital_interests` / "
            f"`{emergency.CONDITION}`, consent `not_possible`, `emergency_access_id` set, "
            "`expires_at` = the grant's). The referrals, their notes, history and the child's "
            "record are then read as through any share, audited with basis `emergency:<id>`; "
            "changing them, adding notes or sharing them is refused (403). A referral the "
            "caller's agency already sees through a share is not opened again. The holder "
            "hears `emergency_access.granted` (data: `emergency_access_id`) at once, sees the "
            "shares in `GET /v1/referrals/{id}/shares`, and may end the access early or revoke "
            "one of its shares. Every emergency access waits for review by the partnership's "
            "auditors (`GET /v1/audit/reviews`)."
        ),
        responses={
            "409": problem_response(
                "The agency no longer holds a referral about the matched child that can be "
                "opened (erased, transferred or made non-discoverable since the match), or the "
                "caller's agency already has an active share of every one."
            ),
            "422": problem_response(
                "Invalid fields: `reason` shorter than 20 characters, an unknown `purpose`; "
                "`match_id` not a valid match of the caller's agency (unknown, expired after "
                "24 hours, or another agency's); `agency` not listed by the match."
            ),
        },
    )
    def post(self, data: dict[str, Any]) -> Any:
        access = emergency.grant_emergency_access(
            get_session(), actor=current_actor(), data=data, now=utcnow()
        )
        location = url_for("emergency.EmergencyAccessById", emergency_access_id=access.id)
        return access, 201, {"Location": location}


@blp.route("/emergency-access/<uuid:emergency_access_id>")
class EmergencyAccessById(MethodView):
    @blp.autocommit_read
    @blp.requires("referrals:read", emergency.EMERGENCY_SCOPE, emergency.HOLDER_SCOPE)
    @blp.response(200, EmergencyAccessSchema)
    @blp.doc(
        operationId="getEmergencyAccess",
        summary="One emergency access",
        description=(
            "For the agency that broke the glass and the agency holding the referrals it "
            "opened: who granted it, why, which referrals, until when, whether it ended early "
            "and whether the auditors have reviewed it. Audited (`emergency_access.read`)."
        ),
        responses=NOT_PARTY,
    )
    def get(self, emergency_access_id: uuid.UUID) -> Any:
        return emergency.get_emergency_access(
            get_session(),
            actor=current_actor(),
            emergency_access_id=emergency_access_id,
            now=utcnow(),
        )


@blp.route("/emergency-access/<uuid:emergency_access_id>/end")
class EndEmergencyAccess(MethodView):
    @blp.doc(
        **_forbidden(
            "The token lacks the scope its agency's side needs: `referrals:emergency` for the "
            "agency that broke the glass, `referrals:share` for the holder "
            '(`error="insufficient_scope"`, with a WWW-Authenticate challenge).'
        )
    )
    @blp.requires(emergency.EMERGENCY_SCOPE, emergency.HOLDER_SCOPE)
    @blp.response(200, EmergencyAccessSchema)
    @blp.doc(
        operationId="endEmergencyAccess",
        summary="End an emergency access early",
        description=(
            "Every share it carries ends now, as a revocation does (`status: revoked`), and the "
            "other side hears `share.revoked` for each. For the agency that broke the glass "
            "(needs `referrals:emergency`) and the holder (needs `referrals:share`); the review "
            "still follows."
        ),
        responses={
            **NOT_PARTY,
            "409": problem_response("It has already ended or expired."),
        },
    )
    def post(self, emergency_access_id: uuid.UUID) -> Any:
        return emergency.end_emergency_access(
            get_session(),
            actor=current_actor(),
            emergency_access_id=emergency_access_id,
            now=utcnow(),
        )


@blp.route("/audit/reviews")
class Reviews(MethodView):
    @blp.autocommit_read
    @blp.requires(emergency.REVIEW_SCOPE)
    @blp.arguments(ReviewArgsSchema, location="query")
    @blp.response(200, page_of(ReviewSchema))
    @blp.doc(
        operationId="listReviews",
        summary="The emergency-access review queue",
        description=(
            "Every emergency access, `pending` until an auditor reviews it; `overdue` when it "
            "has been pending more than 72 hours after the grant (`/metrics` counts those: "
            "`casehub_emergency_access_reviews_overdue`). Ordered by granted_at, then id "
            "(oldest first). " + REVIEW_SCOPE_NOTE
        ),
    )
    @blp.rate_class("audit")
    def get(self, args: dict[str, Any]) -> dict[str, Any]:
        items, next_cursor = emergency.list_reviews(
            get_session(),
            actor=current_actor(),
            status=args.get("status"),
            limit=args["limit"],
            cursor=args.get("cursor"),
            now=utcnow(),
        )
        return {"items": items, "next_cursor": next_cursor}


@blp.route("/audit/reviews/<uuid:emergency_access_id>")
class Review(MethodView):
    @blp.requires(emergency.REVIEW_SCOPE)
    @blp.arguments(ReviewCreateSchema)
    @blp.response(200, ReviewSchema)
    @blp.doc(
        operationId="reviewEmergencyAccess",
        summary="Review an emergency access",
        description=(
            "Records the auditor's judgement (`justified` or `not_justified`) and note; it may "
            "be given while the access is still open, never by an auditor of either agency in "
            "it. Audited (`emergency_access.review`). " + REVIEW_SCOPE_NOTE
        ),
        responses={
            "403": problem_response(
                "The scope is missing, or the caller's agency broke the glass or holds what it "
                "opened."
            ),
            "404": problem_response("No such emergency access."),
            "409": problem_response("It has already been reviewed."),
        },
    )
    def post(self, data: dict[str, Any], emergency_access_id: uuid.UUID) -> Any:
        return emergency.review_emergency_access(
            get_session(),
            actor=current_actor(),
            emergency_access_id=emergency_access_id,
            outcome=data["outcome"],
            note=data["note"],
            now=utcnow(),
        )
