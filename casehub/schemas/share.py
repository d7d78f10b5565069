"""Share and transfer schemas."""

from __future__ import annotations

from typing import Any

import marshmallow as ma
from marshmallow import validate

from casehub.schemas.common import StrictSchema, Text
from casehub.services.purposes import SHARE_PURPOSES
from casehub.services.shares import ARTICLE_6, CONDITIONS, CONSENT_STATUSES

AGENCY_CODE = ma.fields.String(
    required=True,
    validate=validate.Regexp(r"^[a-z0-9][a-z0-9-]{1,39}$"),
    metadata={"description": "The recipient agency's code.", "maxLength": 40},
)


class LawfulBasisSchema(StrictSchema):
    article_6 = ma.fields.String(required=True, validate=validate.OneOf(ARTICLE_6))
    condition = ma.fields.String(
        allow_none=True,
        validate=validate.OneOf(CONDITIONS),
        metadata={"description": "For special-category or law-enforcement sensitive data."},
    )
    gateway = Text(200, allow_none=True, metadata={"description": 'e.g. "Children Act 2004 s11".'})


class ConsentSchema(StrictSchema):
    status = ma.fields.String(required=True, validate=validate.OneOf(CONSENT_STATUSES))
    rationale = Text(
        2000, allow_none=True, metadata={"description": "Required unless consent was given."}
    )


class ShareCreateSchema(StrictSchema):
    agency = AGENCY_CODE
    access = ma.fields.String(required=True, validate=validate.OneOf(["read", "contribute"]))
    purpose = ma.fields.String(required=True, validate=validate.OneOf(SHARE_PURPOSES))
    necessity = Text(
        2000,
        required=True,
        metadata={"description": "Why sharing this is necessary and proportionate."},
    )
    lawful_basis = ma.fields.Nested(LawfulBasisSchema, required=True)
    consent = ma.fields.Nested(ConsentSchema, required=True)
    expires_at = ma.fields.AwareDateTime(allow_none=True)


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
    access = ma.fields.String(required=True)
    purpose = ma.fields.String(required=True)
    necessity = ma.fields.String(required=True)
    lawful_basis = ma.fields.Nested(LawfulBasisSchema, required=True)
    consent = ma.fields.Nested(ConsentSchema, required=True)
    expires_at = ma.fields.DateTime(allow_none=True, required=True)
    status = ma.fields.String(
        required=True, metadata={"enum": ["active", "expired", "revoked", "ended"]}
    )
    created_at = ma.fields.DateTime(required=True)
    created_by_agency = ma.fields.String(required=True)
    acknowledged_at = ma.fields.DateTime(allow_none=True, required=True)
    revoked_at = ma.fields.DateTime(allow_none=True, required=True)
    revoked_reason = ma.fields.String(allow_none=True, required=True)

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
        }
