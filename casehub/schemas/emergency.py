"""Emergency (break-glass) access and its review queue (CONTRACT §10)."""

from __future__ import annotations

from typing import Any

import marshmallow as ma
from marshmallow import validate

from casehub.schemas import enums
from casehub.schemas.common import ListArgsSchema, StrictSchema, Text
from casehub.services import emergency
from casehub.services.emergency import Seen


class EmergencyAccessCreateSchema(StrictSchema):
    match_id = ma.fields.UUID(
        required=True,
        metadata={
            "description": "A `match_id` of the caller's agency from `POST /v1/matches`, "
            "valid for 24 hours."
        },
    )
    agency = ma.fields.String(
        required=True,
        validate=validate.Regexp(r"^[a-z0-9][a-z0-9-]{1,39}$"),
        metadata={
            "description": "The agency holding the referrals: one the match listed.",
            "maxLength": 40,
        },
    )
    reason = Text(
        2000,
        required=True,
        min_length=emergency.MIN_REASON_LENGTH,
        metadata={
            "description": "Why the child's safety cannot wait for the holder's decision (at "
            f"least {emergency.MIN_REASON_LENGTH} characters). Recorded as the necessity of "
            "each share, shown to the holder and reviewed by the partnership's auditors."
        },
    )
    purpose = enums.SHARE_PURPOSE.field(required=True)


class EmergencyAccessGrantedSchema(ma.Schema):
    id = ma.fields.UUID(required=True)
    referral_ids = ma.fields.List(
        ma.fields.UUID(),
        required=True,
        metadata={
            "description": "The referrals this emergency access opened, oldest first. Those the "
            "caller's agency could already see through a share are not opened again."
        },
    )
    expires_at = ma.fields.DateTime(
        required=True, metadata={"description": "Four hours after the grant."}
    )

    @ma.pre_dump
    def _view(self, access: Any, **_: Any) -> dict[str, Any]:
        return {
            "id": access.id,
            "referral_ids": access.referral_ids,
            "expires_at": access.expires_at,
        }


class GrantedBySchema(ma.Schema):
    agency = ma.fields.String(required=True)
    client_id = ma.fields.String(required=True)
    user_id = ma.fields.UUID(required=True, allow_none=True)


class EmergencyAccessSchema(ma.Schema):
    """An emergency access as the agency that broke the glass and the holder see it."""

    id = ma.fields.UUID(required=True)
    agency = ma.fields.String(
        required=True, metadata={"description": "The agency that broke the glass."}
    )
    holder_agency = ma.fields.String(
        required=True, metadata={"description": "The agency whose referrals it opened."}
    )
    granted_by = ma.fields.Nested(GrantedBySchema, required=True)
    reason = ma.fields.String(required=True)
    purpose = enums.SHARE_PURPOSE.field(required=True)
    referral_ids = ma.fields.List(ma.fields.UUID(), required=True)
    granted_at = ma.fields.DateTime(required=True)
    expires_at = ma.fields.DateTime(required=True)
    ended_at = ma.fields.DateTime(required=True, allow_none=True)
    ended_by_agency = ma.fields.String(required=True, allow_none=True)
    status = enums.EMERGENCY_ACCESS_STATUS.field(required=True)
    review_status = enums.REVIEW_STATUS.field(required=True)
    review_outcome = enums.REVIEW_OUTCOME.field(
        required=True,
        allow_none=True,
        metadata={"description": "The auditors' judgement, once reviewed (their note is theirs)."},
    )

    @ma.pre_dump
    def _view(self, seen: Seen, **_: Any) -> dict[str, Any]:
        access, now = seen.access, seen.now
        return {
            **_common(access),
            "status": emergency.access_status(access, now),
            "review_status": access.review_status,
            "review_outcome": access.review_outcome,
        }


def _common(access: Any) -> dict[str, Any]:
    return {
        "id": access.id,
        "agency": access.agency_code,
        "holder_agency": access.holder_agency,
        "granted_by": {
            "agency": access.agency_code,
            "client_id": access.created_by_client_id,
            "user_id": access.created_by_user_id,
        },
        "reason": access.reason,
        "purpose": access.purpose,
        "referral_ids": access.referral_ids,
        "granted_at": access.created_at,
        "expires_at": access.expires_at,
        "ended_at": access.ended_at,
        "ended_by_agency": access.ended_by_agency,
    }


class ReviewerSchema(ma.Schema):
    client_id = ma.fields.String(required=True)
    user_id = ma.fields.UUID(required=True, allow_none=True)


class ReviewSchema(ma.Schema):
    """One emergency access in the partnership auditors' review queue."""

    id = ma.fields.UUID(required=True, metadata={"description": "The emergency access's id."})
    agency = ma.fields.String(
        required=True, metadata={"description": "The agency that broke the glass."}
    )
    holder_agency = ma.fields.String(required=True)
    granted_by = ma.fields.Nested(GrantedBySchema, required=True)
    reason = ma.fields.String(required=True)
    purpose = enums.SHARE_PURPOSE.field(required=True)
    referral_ids = ma.fields.List(ma.fields.UUID(), required=True)
    referral_count = ma.fields.Integer(required=True)
    granted_at = ma.fields.DateTime(required=True)
    expires_at = ma.fields.DateTime(required=True)
    ended_at = ma.fields.DateTime(required=True, allow_none=True)
    ended_by_agency = ma.fields.String(required=True, allow_none=True)
    access_status = enums.EMERGENCY_ACCESS_STATUS.field(required=True)
    status = enums.REVIEW_STATUS.field(required=True)
    overdue = ma.fields.Boolean(
        required=True,
        metadata={"description": "Pending more than 72 hours after the grant."},
    )
    outcome = enums.REVIEW_OUTCOME.field(required=True, allow_none=True)
    note = ma.fields.String(required=True, allow_none=True)
    reviewed_at = ma.fields.DateTime(required=True, allow_none=True)
    reviewed_by = ma.fields.Nested(ReviewerSchema, required=True, allow_none=True)

    @ma.pre_dump
    def _view(self, seen: Seen, **_: Any) -> dict[str, Any]:
        access, now = seen.access, seen.now
        return {
            **_common(access),
            "referral_count": len(access.referral_ids),
            "access_status": emergency.access_status(access, now),
            "status": access.review_status,
            "overdue": emergency.is_overdue(access, now),
            "outcome": access.review_outcome,
            "note": access.review_note,
            "reviewed_at": access.reviewed_at,
            "reviewed_by": (
                {"client_id": access.reviewed_by_client_id, "user_id": access.reviewed_by_user_id}
                if access.reviewed_at is not None
                else None
            ),
        }


class ReviewArgsSchema(ListArgsSchema):
    status = enums.REVIEW_STATUS.field(
        metadata={"description": "Only those pending or reviewed; both when omitted."}
    )


class ReviewCreateSchema(StrictSchema):
    outcome = enums.REVIEW_OUTCOME.field(required=True)
    note = Text(2000, required=True, metadata={"description": "The auditor's reasons."})
