"""Existence-only matching (CONTRACT §9): what a match asks, and what it answers."""

from __future__ import annotations

from typing import Any

import marshmallow as ma
from marshmallow import validate

from casehub.schemas import enums
from casehub.schemas.common import Text
from casehub.schemas.subject import (
    MAX_IDENTIFIERS,
    BirthDate,
    IdentifierSchema,
    _SubjectRules,
)
from casehub.services import names

NEEDS = "Send an identifier, or given_name, family_name and date_of_birth or estimated_birth_year."


class MatchCreateSchema(_SubjectRules):
    """The child asked after: an identifier, or both names and a date of birth or birth year
    (or all of them)."""

    given_name = Text(
        100,
        allow_none=True,
        metadata={"description": "Given name (1..100 characters); case and accents are ignored."},
    )
    family_name = Text(
        100,
        allow_none=True,
        metadata={"description": "Family name (1..100 characters); case and accents are ignored."},
    )
    date_of_birth = BirthDate(
        allow_none=True,
        metadata={"description": "Date of birth: not in the future, and the child under 26."},
    )
    estimated_birth_year = ma.fields.Integer(
        allow_none=True,
        metadata={
            "description": "When the date of birth is unknown: the estimated year of birth. "
            "Not together with date_of_birth."
        },
    )
    identifiers = ma.fields.List(
        ma.fields.Nested(IdentifierSchema),
        load_default=list,
        validate=validate.Length(max=MAX_IDENTIFIERS),
        metadata={
            "description": "At most 10, as on a subject. An NHS number must pass its "
            "modulus-11 check; values are compared in upper case without spaces or hyphens."
        },
    )

    @ma.validates("given_name")
    def _check_given_name(self, value: str | None, data_key: str) -> None:
        _check_name(value)

    @ma.validates("family_name")
    def _check_family_name(self, value: str | None, data_key: str) -> None:
        _check_name(value)

    @ma.validates_schema
    def _enough_to_match(self, data: dict[str, Any], **_: Any) -> None:
        if data.get("identifiers"):
            return
        missing = [name for name in ("given_name", "family_name") if not data.get(name)]
        if data.get("date_of_birth") is None and data.get("estimated_birth_year") is None:
            missing.append("date_of_birth")
        if missing:
            raise ma.ValidationError({name: [NEEDS] for name in missing})


def _check_name(value: str | None) -> None:
    if value is not None and not names.query_tokens(value):
        raise ma.ValidationError("Must contain letters or digits.")


class MatchAgencySchema(ma.Schema):
    code = ma.fields.String(required=True, metadata={"pattern": "^[a-z0-9][a-z0-9-]{1,39}$"})
    name = ma.fields.String(required=True)
    kind = enums.AGENCY_KIND.field(required=True)


class MatchItemSchema(ma.Schema):
    agency = ma.fields.Nested(MatchAgencySchema, required=True)
    confidence = enums.MATCH_CONFIDENCE.field(
        required=True,
        metadata={"description": "The best of the agency's matched children."},
    )
    known_since = ma.fields.DateTime(
        required=True,
        metadata={"description": "When the earliest of the agency's matched referrals was made."},
    )
    open_referrals = ma.fields.Integer(
        required=True,
        metadata={"description": "How many of the agency's matched referrals are not closed."},
    )


class MatchSchema(ma.Schema):
    match_id = ma.fields.UUID(
        required=True,
        metadata={
            "description": "For an access request or emergency access about this answer: "
            "valid for 24 hours, and only for the caller's agency."
        },
    )
    expires_at = ma.fields.DateTime(
        required=True, metadata={"description": "When `match_id` stops being valid."}
    )
    items = ma.fields.List(
        ma.fields.Nested(MatchItemSchema),
        required=True,
        metadata={
            "description": "One per other agency holding a discoverable referral about a child "
            "who matches; best confidence first, then by agency code. Empty: no other agency "
            "is known to hold one."
        },
    )
