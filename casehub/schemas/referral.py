"""Referral, history, transition and note schemas."""

from __future__ import annotations

from typing import Any

import marshmallow as ma
from marshmallow import validate

from casehub.schemas import enums
from casehub.schemas.common import ListArgsSchema, StrictSchema, Text
from casehub.schemas.share import LawfulBasisSchema
from casehub.schemas.subject import SubjectCreateSchema
from casehub.services.reference import CATEGORIES

CATEGORY_FIELD = enums.CATEGORY.field()
INDICATOR_FIELD = ma.fields.String(
    validate=validate.Length(min=1, max=20),
    metadata={"description": "A code from GET /v1/indicators."},
)


class LocationSchema(StrictSchema):
    description = Text(500, allow_none=True)
    postcode = Text(10, allow_none=True, metadata={"description": "A UK postcode."})
    transport_hub = Text(200, allow_none=True, metadata={"description": "e.g. a railway station."})


class ActorRefSchema(ma.Schema):
    agency = ma.fields.String(required=True)
    client_id = ma.fields.String(required=True)
    user_id = ma.fields.UUID(allow_none=True, required=True)


DISCOVERABLE = (
    "Whether existence-only matching (`POST /v1/matches`) may find this referral. `false`: "
    "never matched, e.g. during a covert investigation — no other agency learns from a match "
    "that the lead holds it. Set by the lead agency only; default `true`."
)


class _ReferralFields(StrictSchema):
    categories = ma.fields.List(
        CATEGORY_FIELD,
        validate=validate.Length(min=1, max=len(CATEGORIES)),
        metadata={"description": "At least one."},
    )
    indicators = ma.fields.List(INDICATOR_FIELD, validate=validate.Length(max=60))
    summary = Text(500)
    narrative = Text(20_000, allow_none=True)
    location = ma.fields.Nested(LocationSchema, allow_none=True)
    risk_level = enums.RISK_LEVEL.field()
    immediate_action = Text(
        1000,
        allow_none=True,
        metadata={"description": 'Required when risk_level is immediate, e.g. "999 called".'},
    )
    discoverable = ma.fields.Boolean(metadata={"description": DISCOVERABLE})


class ReferralCreateSchema(_ReferralFields):
    subject_id = ma.fields.UUID(metadata={"description": "An existing subject; or send `subject`."})
    subject = ma.fields.Nested(SubjectCreateSchema, metadata={"description": "A new subject."})
    categories = ma.fields.List(
        CATEGORY_FIELD, required=True, validate=validate.Length(min=1, max=len(CATEGORIES))
    )
    indicators = ma.fields.List(
        INDICATOR_FIELD, load_default=list, validate=validate.Length(max=60)
    )
    summary = Text(500, required=True)
    observed_at = ma.fields.AwareDateTime(
        required=True, metadata={"description": "RFC 3339 with offset; not in the future."}
    )
    risk_level = enums.RISK_LEVEL.field(required=True)
    discoverable = ma.fields.Boolean(load_default=True, metadata={"description": DISCOVERABLE})

    @ma.validates_schema
    def _one_subject(self, data: dict[str, Any], **_: Any) -> None:
        if ("subject_id" in data) == ("subject" in data):
            raise ma.ValidationError("Send exactly one of subject_id or subject.", "subject_id")


class ReferralUpdateSchema(_ReferralFields):
    """Every field optional; only the fields sent change."""


def actor_ref(agency: str, client_id: str, user_id: Any) -> dict[str, Any]:
    return {"agency": agency, "client_id": client_id, "user_id": user_id}


LEGAL_HOLD = (
    "The referral's legal hold (CONTRACT §11), or null: while held, retention never erases it. "
    "Shown to every agency that sees the referral, so that a recipient knows to keep its own "
    "copy too; its placements and releases, with their reasons, are in the history."
)


class LegalHoldSchema(ma.Schema):
    reason = ma.fields.String(required=True)
    since = ma.fields.DateTime(required=True, metadata={"description": "When it was placed."})
    agency = ma.fields.String(required=True, metadata={"description": "The lead that placed it."})


class LegalHoldCreateSchema(StrictSchema):
    reason = Text(2000, required=True, metadata={"description": "Why the referral is held."})


class LegalHoldReleaseSchema(StrictSchema):
    reason = Text(2000, required=True, metadata={"description": "Why the hold ends."})


def _legal_hold(referral: Any) -> dict[str, Any] | None:
    if referral.legal_hold_at is None:
        return None
    return {
        "reason": str(referral.legal_hold_reason),
        "since": _moment(referral.legal_hold_at),
        "agency": str(referral.legal_hold_by_agency),
    }


class ReferralSchema(ma.Schema):
    id = ma.fields.UUID(required=True)
    reference = ma.fields.String(required=True, metadata={"example": "CH-2026-000123"})
    subject_id = ma.fields.UUID(required=True)
    lead_agency = ma.fields.String(required=True)
    created_by = ma.fields.Nested(ActorRefSchema, required=True)
    categories = ma.fields.List(CATEGORY_FIELD, required=True)
    indicators = ma.fields.List(ma.fields.String(), required=True)
    summary = ma.fields.String(required=True)
    narrative = ma.fields.String(allow_none=True, required=True)
    observed_at = ma.fields.DateTime(required=True)
    location = ma.fields.Nested(LocationSchema, allow_none=True, required=True)
    risk_level = enums.RISK_LEVEL.field(required=True)
    immediate_action = ma.fields.String(allow_none=True, required=True)
    status = enums.REFERRAL_STATUS.field(required=True)
    discoverable = ma.fields.Boolean(required=True, metadata={"description": DISCOVERABLE})
    legal_hold = ma.fields.Nested(
        LegalHoldSchema, allow_none=True, required=True, metadata={"description": LEGAL_HOLD}
    )
    created_at = ma.fields.DateTime(required=True)
    updated_at = ma.fields.DateTime(required=True)

    @ma.pre_dump
    def _view(self, referral: Any, **_: Any) -> dict[str, Any]:
        has_location = any(
            (
                referral.location_description,
                referral.location_postcode,
                referral.location_transport_hub,
            )
        )
        return {
            "id": referral.id,
            "reference": referral.reference,
            "subject_id": referral.subject_id,
            "lead_agency": referral.lead_agency,
            "created_by": actor_ref(
                referral.created_by_agency,
                referral.created_by_client_id,
                referral.created_by_user_id,
            ),
            "categories": referral.categories,
            "indicators": referral.indicators,
            "summary": referral.summary,
            "narrative": referral.narrative,
            "observed_at": referral.observed_at,
            "location": {
                "description": referral.location_description,
                "postcode": referral.location_postcode,
                "transport_hub": referral.location_transport_hub,
            }
            if has_location
            else None,
            "risk_level": referral.risk_level,
            "immediate_action": referral.immediate_action,
            "status": referral.status,
            "discoverable": referral.discoverable,
            "legal_hold": None
            if referral.legal_hold_at is None
            else {
                "reason": referral.legal_hold_reason,
                "since": referral.legal_hold_at,
                "agency": referral.legal_hold_by_agency,
            },
            "created_at": referral.created_at,
            "updated_at": referral.updated_at,
        }


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _moment(value: Any) -> str | None:
    return None if value is None else str(value.isoformat())


def referral_document(referral: Any) -> dict[str, Any]:
    """What `ReferralSchema().dump(referral)` returns, built directly: the audited read's
    answer, where marshmallow's field-by-field dump cost several percent of the request's
    CPU. The same keys in the same order, the same strings; a test compares the two on every
    shape of referral, and any change to ReferralSchema must be made here too."""
    has_location = any(
        (
            referral.location_description,
            referral.location_postcode,
            referral.location_transport_hub,
        )
    )
    return {
        "id": str(referral.id),
        "reference": str(referral.reference),
        "subject_id": str(referral.subject_id),
        "lead_agency": str(referral.lead_agency),
        "created_by": {
            "agency": str(referral.created_by_agency),
            "client_id": str(referral.created_by_client_id),
            "user_id": _text(referral.created_by_user_id),
        },
        "categories": [str(code) for code in referral.categories],
        "indicators": [str(code) for code in referral.indicators],
        "summary": str(referral.summary),
        "narrative": _text(referral.narrative),
        "observed_at": _moment(referral.observed_at),
        "location": {
            "description": _text(referral.location_description),
            "postcode": _text(referral.location_postcode),
            "transport_hub": _text(referral.location_transport_hub),
        }
        if has_location
        else None,
        "risk_level": str(referral.risk_level),
        "immediate_action": _text(referral.immediate_action),
        "status": str(referral.status),
        "discoverable": bool(referral.discoverable),
        "legal_hold": _legal_hold(referral),
        "created_at": _moment(referral.created_at),
        "updated_at": _moment(referral.updated_at),
    }


class ReferralQueryArgsSchema(ListArgsSchema):
    status = enums.REFERRAL_STATUS.field()
    risk_level = enums.RISK_LEVEL.field()
    category = enums.CATEGORY.field()
    indicator = ma.fields.String(validate=validate.Length(min=1, max=20))
    subject_id = ma.fields.UUID()
    lead_agency = ma.fields.String(validate=validate.Length(min=2, max=40))
    shared_with_me = ma.fields.Boolean(
        metadata={
            "description": (
                "true: only referrals shared with the caller's agency; false: only those it leads."
            )
        }
    )
    updated_since = ma.fields.AwareDateTime(
        metadata={
            "description": (
                "Only referrals whose updated_at is at or after this moment (with an offset). "
                "An update, a status change and a transfer of the lead change updated_at; a "
                "share, a note or an acknowledgement does not. The list keeps its "
                "(created_at, id) order, so a cursor walk returns each such referral once."
            )
        }
    )


class TransitionCreateSchema(StrictSchema):
    to = enums.REFERRAL_STATUS.field(required=True)
    reason = Text(
        2000,
        allow_none=True,
        metadata={"description": "Required for no_further_action, closed and reopening."},
    )


class HistoryEntrySchema(ma.Schema):
    id = ma.fields.UUID(required=True)
    kind = enums.HISTORY_KIND.field(required=True)
    from_status = enums.REFERRAL_STATUS.field(allow_none=True, required=True)
    to_status = enums.REFERRAL_STATUS.field(allow_none=True, required=True)
    from_agency = ma.fields.String(allow_none=True, required=True)
    to_agency = ma.fields.String(allow_none=True, required=True)
    reason = ma.fields.String(allow_none=True, required=True)
    lawful_basis = ma.fields.Nested(
        LawfulBasisSchema,
        allow_none=True,
        required=True,
        metadata={"description": "The basis of a transfer; null otherwise."},
    )
    actor = ma.fields.Nested(ActorRefSchema, required=True)
    occurred_at = ma.fields.DateTime(required=True)

    @ma.pre_dump
    def _view(self, entry: Any, **_: Any) -> dict[str, Any]:
        view = {
            name: getattr(entry, name)
            for name in (
                "id",
                "kind",
                "from_status",
                "to_status",
                "from_agency",
                "to_agency",
                "reason",
                "lawful_basis",
                "occurred_at",
            )
        }
        view["actor"] = actor_ref(entry.actor_agency, entry.actor_client_id, entry.actor_user_id)
        return view


class NoteCreateSchema(StrictSchema):
    body = Text(10_000, required=True)
    visibility = enums.NOTE_VISIBILITY.field(required=True)


class NoteSchema(ma.Schema):
    id = ma.fields.UUID(required=True)
    referral_id = ma.fields.UUID(required=True)
    body = ma.fields.String(required=True)
    visibility = enums.NOTE_VISIBILITY.field(required=True)
    author = ma.fields.Nested(ActorRefSchema, required=True)
    created_at = ma.fields.DateTime(required=True)

    @ma.pre_dump
    def _view(self, note: Any, **_: Any) -> dict[str, Any]:
        return {
            "id": note.id,
            "referral_id": note.referral_id,
            "body": note.body,
            "visibility": note.visibility,
            "author": actor_ref(note.author_agency, note.author_client_id, note.author_user_id),
            "created_at": note.created_at,
        }
