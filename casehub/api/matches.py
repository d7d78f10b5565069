"""/v1/matches: is this child known to other agencies? (existence-only matching, CONTRACT §9)"""

from __future__ import annotations

from typing import Any

from flask.views import MethodView

from casehub.api.base import Blueprint, current_actor
from casehub.db import get_session, utcnow
from casehub.schemas.match import MatchCreateSchema, MatchSchema
from casehub.services import matching

blp = Blueprint(
    "matches",
    __name__,
    url_prefix="/v1/matches",
    description=(
        "Existence-only matching: whether other agencies hold referrals about a child, without "
        "seeing anything they hold. A match names agencies only; what they hold is shared "
        "through an access request (or, for police and local authorities, emergency access)."
    ),
)


@blp.route("")
class Matches(MethodView):
    @blp.requires("subjects:match")
    @blp.arguments(MatchCreateSchema)
    @blp.response(201, MatchSchema)
    @blp.doc(
        operationId="createMatch",
        summary="Ask whether a child is known to other agencies",
        description=(
            "Send an identifier, or `given_name`, `family_name` and `date_of_birth` or "
            "`estimated_birth_year` (or all of them); otherwise 422 naming the missing fields. "
            "`date_of_birth` and `estimated_birth_year` together are 422. Names are matched only "
            "when both are sent with a date of birth or a birth year; an identifier alone is "
            "enough.\n\n"
            "The answer lists each *other* active agency that leads a discoverable referral "
            "about a child who matches, with the best confidence over its matched children: "
            "`identifier` (a child's identifier with the same system and value, compared in "
            "upper case without spaces or hyphens), `strong` (the same date of birth, and every "
            "word of the names within one typo of one of the child's names or aliases, ignoring "
            "case and accents; words under three letters must match whole) or `possible` (names "
            "as for `strong`, and a birth year within one year: the date of birth's year or the "
            "estimate, on either side). Nothing weaker is listed. `known_since` is when the "
            "agency's earliest matched referral was made and `open_referrals` how many of its "
            "matched referrals are not `closed`.\n\n"
            "Never listed: the caller's own agency; an agency through which the caller's agency "
            "already sees the child (it holds an active share of one of that agency's "
            "referrals about the child); referrals with `discoverable: false` (e.g. during a "
            "covert investigation); deactivated agencies. The answer never carries a child's "
            "name, a subject or referral id, or anything a referral says.\n\n"
            "Each request is a new match (201): `match_id` is valid for 24 hours, and only for "
            "the caller's agency, to request access (`POST /v1/access-requests`) or break the "
            "glass (`POST /v1/emergency-access`). `Idempotency-Key` is not honoured: a repeated "
            "request is asked, and audited, again.\n\n"
            "Audited as `subject.match`: the caller's own record (the match, no referral, no "
            "child) and, per listed agency, a notice on that agency's earliest matched referral "
            "naming its matched children, which only that agency's auditors (and partnership "
            "auditors) see: its access reports (`GET /v1/audit/subjects/{id}/accesses`, "
            "`GET /v1/referrals/{id}/accesses`) show who asked after its child, and the caller's "
            "own trail never says which child or referral was found. "
            "Budgeted by the `match` rate limit (default 30 a minute per client)."
        ),
    )
    @blp.rate_class("match")
    def post(self, data: dict[str, Any]) -> tuple[dict[str, Any], int]:
        match, items = matching.find_matches(
            get_session(), actor=current_actor(), data=data, now=utcnow()
        )
        return {"match_id": match.id, "expires_at": match.expires_at, "items": items}, 201
