"""Subject schemas: the child or young person a referral is about."""

from __future__ import annotations

from datetime import date
from typing import Any

import marshmallow as ma
from marshmallow import validate

from casehub.db import utcnow
from casehub.models import Subject
from casehub.schemas import enums
from casehub.schemas.common import ListArgsSchema, StrictSchema, Text
from casehub.services import names
from casehub.services.policy import Summary
from casehub.services.validation import (
    date_of_birth_problem,
    estimated_birth_year_problem,
    is_valid_nhs_number,
    nhs_number_digits,
    normalise_postcode,
)

MAX_ALIASES = 10
MAX_IDENTIFIERS = 10
DATE_LENGTH = 10  # YYYY-MM-DD


def BirthDate(**kwargs: Any) -> ma.fields.Date:
    """An ISO 8601 date (YYYY-MM-DD), documented with its length like every string."""
    metadata = {"maxLength": DATE_LENGTH, **kwargs.pop("metadata", {})}
    return ma.fields.Date(metadata=metadata, **kwargs)


class IdentifierSchema(StrictSchema):
    system = enums.IDENTIFIER_SYSTEM.field(required=True)
    value = Text(
        64,
        required=True,
        metadata={
            "description": "An NHS number must pass its modulus-11 check; it is stored as its "
            "ten digits (spaces and hyphens are dropped)."
        },
    )

    @ma.validates_schema
    def _check_nhs_number(self, data: dict[str, Any], **_: Any) -> None:
        if data["system"] == "nhs_number" and not is_valid_nhs_number(data["value"]):
            raise ma.ValidationError("Not a valid NHS number (modulus 11 check).", "value")

    @ma.post_load
    def _normalise(self, data: dict[str, Any], **_: Any) -> dict[str, Any]:
        if data["system"] == "nhs_number":
            data["value"] = nhs_number_digits(data["value"])
        return data


class AddressSchema(StrictSchema):
    line = Text(200, allow_none=True)
    town = Text(100, allow_none=True)
    postcode = Text(
        10,
        allow_none=True,
        metadata={"description": "A UK postcode; returned in upper case with one space."},
    )

    @ma.validates("postcode")
    def _check_postcode(self, value: str | None, data_key: str) -> None:
        if value is not None and normalise_postcode(value) is None:
            raise ma.ValidationError("Not a valid UK postcode.")

    @ma.post_load
    def _normalise(self, data: dict[str, Any], **_: Any) -> dict[str, Any]:
        if data.get("postcode") is not None:
            data["postcode"] = normalise_postcode(data["postcode"])
        return data


class _SubjectRules(StrictSchema):
    """Rules shared by create and update; the fields themselves differ in what is required."""

    @ma.validates("date_of_birth")
    def _check_date_of_birth(self, value: date | None, data_key: str) -> None:
        # Checked against today's date in UTC, the service's one clock.
        problem = date_of_birth_problem(value, utcnow().date()) if value is not None else None
        if problem:
            raise ma.ValidationError(problem)

    @ma.validates("estimated_birth_year")
    def _check_estimated_birth_year(self, value: int | None, data_key: str) -> None:
        if value is None:
            return
        problem = estimated_birth_year_problem(value, utcnow().date())
        if problem:
            raise ma.ValidationError(problem)

    @ma.validates_schema
    def _one_birth_fact(self, data: dict[str, Any], **_: Any) -> None:
        if data.get("date_of_birth") is not None and data.get("estimated_birth_year") is not None:
            raise ma.ValidationError(
                "Give date_of_birth or estimated_birth_year, not both.", "estimated_birth_year"
            )


_GIVEN = "Given name (1..100 characters)."
_FAMILY = "Family name (1..100 characters)."
_ALIASES = "Other names the child is known by (at most 10, each 1..100 characters)."
_DOB = "Date of birth: not in the future, and the subject must be under 26."
_EBY = (
    "When the date of birth is unknown: the estimated year of birth (subject under 26). "
    "Setting one of date_of_birth and estimated_birth_year clears the other."
)
_IDS = "At most 10. An NHS number must pass its modulus-11 check."


class SubjectCreateSchema(_SubjectRules):
    given_name = Text(100, required=True, metadata={"description": _GIVEN})
    family_name = Text(100, required=True, metadata={"description": _FAMILY})
    aliases = ma.fields.List(
        Text(100),
        load_default=list,
        validate=validate.Length(max=MAX_ALIASES),
        metadata={"description": _ALIASES},
    )
    date_of_birth = BirthDate(load_default=None, allow_none=True, metadata={"description": _DOB})
    estimated_birth_year = ma.fields.Integer(
        load_default=None, allow_none=True, metadata={"description": _EBY}
    )
    gender = enums.GENDER.field(load_default="unknown")
    identifiers = ma.fields.List(
        ma.fields.Nested(IdentifierSchema),
        load_default=list,
        validate=validate.Length(max=MAX_IDENTIFIERS),
        metadata={"description": _IDS},
    )
    address = ma.fields.Nested(AddressSchema, load_default=None, allow_none=True)


class SubjectUpdateSchema(_SubjectRules):
    """Only the fields sent change; lists and the address are replaced whole."""

    given_name = Text(100, metadata={"description": _GIVEN})
    family_name = Text(100, metadata={"description": _FAMILY})
    aliases = ma.fields.List(
        Text(100), validate=validate.Length(max=MAX_ALIASES), metadata={"description": _ALIASES}
    )
    date_of_birth = BirthDate(allow_none=True, metadata={"description": _DOB})
    estimated_birth_year = ma.fields.Integer(allow_none=True, metadata={"description": _EBY})
    gender = enums.GENDER.field()
    identifiers = ma.fields.List(
        ma.fields.Nested(IdentifierSchema),
        validate=validate.Length(max=MAX_IDENTIFIERS),
        metadata={"description": _IDS},
    )
    address = ma.fields.Nested(AddressSchema, allow_none=True)


class SubjectSchema(ma.Schema):
    id = ma.fields.UUID(required=True)
    given_name = Text(100, required=True)
    family_name = Text(100, required=True)
    aliases = ma.fields.List(Text(100), required=True)
    date_of_birth = BirthDate(allow_none=True)
    estimated_birth_year = ma.fields.Integer(allow_none=True)
    gender = enums.GENDER.field(required=True)
    identifiers = ma.fields.List(ma.fields.Nested(IdentifierSchema), required=True)
    address = ma.fields.Nested(AddressSchema, allow_none=True)
    created_by_agency = ma.fields.String(
        required=True,
        validate=validate.Length(max=40),
        metadata={"description": "The agency that recorded the subject; only it may change it."},
    )
    merged_into = ma.fields.UUID(
        required=True,
        allow_none=True,
        metadata={
            "readOnly": True,
            "description": "Null, or the id of the subject this record was merged into as a "
            "duplicate (`POST /v1/subjects/{id}/merge`): both are one child. Set and cleared by "
            "merge and unmerge only. It names the survivor even to an agency that cannot see "
            "the survivor (which then answers 404 to it).",
        },
    )
    created_at = ma.fields.DateTime(required=True)
    updated_at = ma.fields.DateTime(required=True)

    @ma.pre_dump
    def _from_model(self, subject: Any, **_: Any) -> Any:
        if not isinstance(subject, (Subject, Summary)):
            return subject
        parts = {
            "line": subject.address_line,
            "town": subject.address_town,
            "postcode": subject.address_postcode,
        }
        return {
            "id": subject.id,
            "given_name": subject.given_name,
            "family_name": subject.family_name,
            "aliases": subject.aliases,
            "date_of_birth": subject.date_of_birth,
            "estimated_birth_year": subject.estimated_birth_year,
            "gender": subject.gender,
            "identifiers": subject.identifiers,
            "address": parts if any(v is not None for v in parts.values()) else None,
            "created_by_agency": subject.created_by_agency,
            "merged_into": subject.merged_into,
            "created_at": subject.created_at,
            "updated_at": subject.updated_at,
        }


class SubjectQueryArgsSchema(ListArgsSchema):
    q = Text(
        100,
        min_length=2,
        metadata={
            "description": "Name or alias (2..100 characters). Case and accents are ignored, and "
            "each word of three letters or more may be one typo away (a letter missing, extra, "
            "wrong, or two neighbouring letters swapped). Every word must match one of the "
            "child's names."
        },
    )
    date_of_birth = BirthDate(metadata={"description": "Only subjects born on this date."})

    @ma.validates("q")
    def _check_q(self, value: str, data_key: str) -> None:
        if not names.query_tokens(value):
            raise ma.ValidationError("Must contain letters or digits.")
