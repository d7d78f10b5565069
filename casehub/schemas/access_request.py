"""Access request and decision-not-to-share schemas (CONTRACT §9, §11)."""

from __future__ import annotations

from typing import Any

import marshmallow as ma
from marshmallow import validate

from casehub.schemas import enums
from casehub.schemas.common import ListArgsSchema, StrictSchema, Text
from casehub.schemas.share import AGENCY_CODE, ConsentSchema, LawfulBasisSchema

NECESSITY = "Why a share is necessary and proportionate (as a share's `necessity`)."


class AccessRequestCreateSchema(StrictSchema):
    match_id = ma.fields.UUID(
        required=True,
        metadata={"description": "A match the caller's agency made within the last 24 hours."},
    )
    agency = ma.fields.String(
        required=True,
        validate=validate.Regexp(r"^[a-z0-9][a-z0-9-]{1,39}$"),
        metadata={"description": "One of the agencies the match listed.", "maxLength": 40},
    )
    purpose = enums.SHARE_PURPOSE.field(required=True)
    necessity = Text(2000, required=True, metadata={"description": NECESSITY})
    urgency = enums.ACCESS_REQUEST_URGENCY.field(required=True)


class AccessRequestArgsSchema(ListArgsSchema):
    direction = enums.ACCESS_REQUEST_DIRECTION.field(
        metadata={
            "description": "`incoming`: requests to the caller's agency; `outgoing`: "
            "from it; absent: both."
        },
    )
    status = enums.ACCESS_REQUEST_STATUS.field(
        metadata={"description": "Only requests in this status."}
    )


class AccessRequestSchema(ma.Schema):
    id = ma.fields.UUID(required=True)
    from_agency = ma.fields.String(required=True, metadata={"description": "The requester."})
    to_agency = ma.fields.String(required=True, metadata={"description": "The holder asked."})
    purpose = enums.SHARE_PURPOSE.field(required=True)
    necessity = ma.fields.String(required=True)
    urgency = enums.ACCESS_REQUEST_URGENCY.field(required=True)
    status = enums.ACCESS_REQUEST_STATUS.field(required=True)
    created_at = ma.fields.DateTime(required=True)
    decided_at = ma.fields.DateTime(
        allow_none=True,
        required=True,
        metadata={"description": "When it was shared, declined or withdrawn."},
    )
    decision_reason = ma.fields.String(
        allow_none=True, required=True, metadata={"description": "Why it was declined."}
    )
    share_id = ma.fields.UUID(
        allow_none=True,
        required=True,
        metadata={"description": "The share made when the request was granted."},
    )
    referral_ids = ma.fields.List(
        ma.fields.UUID(),
        metadata={
            "description": "The holder's referrals the request concerns. Present only for "
            "the holder (`to_agency`); the requester never sees them."
        },
    )


class RequestedShareSchema(StrictSchema):
    """A share body (`POST /v1/referrals/{id}/shares`) without `agency`: the requester."""

    access = enums.SHARE_ACCESS.field(required=True)
    purpose = enums.SHARE_PURPOSE.field(required=True)
    necessity = Text(
        2000,
        required=True,
        metadata={"description": "Why sharing this is necessary and proportionate."},
    )
    lawful_basis = ma.fields.Nested(LawfulBasisSchema, required=True)
    consent = ma.fields.Nested(ConsentSchema, required=True)
    expires_at = ma.fields.AwareDateTime(allow_none=True)
    profile = enums.SHARE_PROFILE.field(
        load_default="full",
        metadata={
            "description": "What the recipient sees (default `full`). `summary`: the referral "
            "without `narrative`, `location.description` and the notes of other agencies, and "
            "the child without `address` and `identifiers` — share only what the recipient "
            "needs."
        },
    )


class AccessDecisionSchema(StrictSchema):
    decision = enums.ACCESS_DECISION.field(
        required=True,
        metadata={"description": "`share` needs `referral_id` and `share`; `decline` `reason`."},
    )
    referral_id = ma.fields.UUID(
        metadata={"description": "One of the request's `referral_ids` (for `share`)."}
    )
    share = ma.fields.Nested(RequestedShareSchema, metadata={"description": "For `share`."})
    reason = Text(2000, metadata={"description": "Why not (for `decline`)."})

    @ma.validates_schema
    def _fields_of_the_decision(self, data: dict[str, Any], **_: Any) -> None:
        wanted = {"share": ("referral_id", "share"), "decline": ("reason",)}
        needed = wanted.get(data.get("decision", ""), ())
        errors: dict[str, list[str]] = {}
        for name in needed:
            if data.get(name) is None:
                errors[name] = [f"Required when decision is {data['decision']}."]
        for name in {"referral_id", "share", "reason"} - set(needed):
            if name in data and "decision" in data:
                errors[name] = [f"Not allowed when decision is {data['decision']}."]
        if errors:
            raise ma.ValidationError(errors)


class DecisionCreateSchema(StrictSchema):
    agency = AGENCY_CODE
    reason = Text(2000, required=True, metadata={"description": "Why it is not shared."})
    purpose = enums.SHARE_PURPOSE.field(
        required=True, metadata={"description": "The purpose the share would have served."}
    )


class DecidedBySchema(ma.Schema):
    agency = ma.fields.String(required=True)
    client_id = ma.fields.String(required=True)
    user_id = ma.fields.UUID(allow_none=True, required=True)


class SharingDecisionSchema(ma.Schema):
    id = ma.fields.UUID(required=True)
    referral_id = ma.fields.UUID(required=True)
    agency = ma.fields.String(required=True, metadata={"description": "Not shared with."})
    reason = ma.fields.String(required=True)
    purpose = enums.SHARE_PURPOSE.field(required=True)
    access_request_id = ma.fields.UUID(
        allow_none=True,
        required=True,
        metadata={"description": "The access request this declined, if any."},
    )
    decided_by = ma.fields.Nested(DecidedBySchema, required=True)
    created_at = ma.fields.DateTime(required=True)

    @ma.pre_dump
    def _view(self, decision: Any, **_: Any) -> dict[str, Any]:
        return {
            "id": decision.id,
            "referral_id": decision.referral_id,
            "agency": decision.agency_code,
            "reason": decision.reason,
            "purpose": decision.purpose,
            "access_request_id": decision.access_request_id,
            "decided_by": {
                "agency": decision.decided_by_agency,
                "client_id": decision.decided_by_client_id,
                "user_id": decision.decided_by_user_id,
            },
            "created_at": decision.created_at,
        }
