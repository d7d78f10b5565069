"""Share and transfer schemas."""

from __future__ import annotations

from typing import Any

import marshmallow as ma
from marshmallow import validate

from casehub.schemas import enums
from casehub.schemas.common import StrictSchema, Text

AGENCY_CODE = ma.fields.String(
    required=True,
    validate=validate.Regexp(r"^[a-z0-9][a-z0-9-]{1,39}$"),
    metadata={"description": "The recipient agency's code.", "maxLength": 40},
)


class LawfulBasisSchema(StrictSchema):
    article_6 = enums.ARTICLE_6_BASIS.field(required=True)
    condition = enums.PROCESSING_CONDITION.field(
        allow_none=True,
        metadata={"description": "For special-category or law-enforcement sensitive data."},
    )
    gateway = Text(200, allow_none=True, metadata={"description": 'e.g. "Children Act 2004 s11".'})


class ConsentSchema(StrictSchema):
    status = enums.CONSENT_STATUS.field(required=True)
    rationale = Text(
        2000, allow_none=True, metadata={"description": "Required unless consent was given."}
    )


class ShareCreateSchema(StrictSchema):
    agency = AGENCY_CODE
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


class ShareRevokeSchema(StrictSchema):
    reason = Text(2000, required=True)


class TransferSchema(StrictSchema):
    agency = AGENCY_CODE
    reason = Text(2000, required=True)
    lawful_basis = ma.fields.Nested(LawfulBasisSchema, required=True)


class ShareSchema(ma.Schema):
    id = ma.fields.UUID(required=True)
    referral_id = ma.fields.UUID(required=True)
    agency = ma.fields.String(required=True)
    access = enums.SHARE_ACCESS.field(required=True)
    profile = enums.SHARE_PROFILE.field(required=True)
    purpose = enums.SHARE_PURPOSE.field(required=True)
    necessity = ma.fields.String(required=True)
    lawful_basis = ma.fields.Nested(LawfulBasisSchema, required=True)
    consent = ma.fields.Nested(ConsentSchema, required=True)
    expires_at = ma.fields.DateTime(allow_none=True, required=True)
    status = enums.SHARE_STATUS.field(required=True)
    created_at = ma.fields.DateTime(required=True)
    created_by_agency = ma.fields.String(required=True)
    acknowledged_at = ma.fields.DateTime(allow_none=True, required=True)
    revoked_at = ma.fields.DateTime(allow_none=True, required=True)
    revoked_reason = ma.fields.String(allow_none=True, required=True)
    emergency_access_id = ma.fields.UUID(
        allow_none=True,
        required=True,
        metadata={
            "description": "Set on a share an emergency access made (break-glass, §10): "
            "read-only, created by the agency that broke the glass (`created_by_agency`), "
            "`GET /v1/emergency-access/{id}`. Null on a share the lead made."
        },
    )

    @ma.pre_dump
    def _view(self, share: Any, **_: Any) -> dict[str, Any]:
        from casehub.db import utcnow

        if share.revoked_at is not None:
            status = "revoked"
        elif share.expires_at is not None and share.expires_at <= utcnow():
            status = "expired"
        elif share.ended_at is not None:
            status = "ended"
        else:
            status = "active"
        return {
            "id": share.id,
            "referral_id": share.referral_id,
            "agency": share.agency_code,
            "access": share.access,
            "profile": share.profile,
            "purpose": share.purpose,
            "necessity": share.necessity,
            "lawful_basis": {
                "article_6": share.article_6,
                "condition": share.condition,
                "gateway": share.gateway,
            },
            "consent": {"status": share.consent_status, "rationale": share.consent_rationale},
            "expires_at": share.expires_at,
            "status": status,
            "created_at": share.created_at,
            "created_by_agency": share.created_by_agency,
            "acknowledged_at": share.acknowledged_at,
            "revoked_at": share.revoked_at,
            "revoked_reason": share.revoked_reason,
            "emergency_access_id": share.emergency_access_id,
        }
