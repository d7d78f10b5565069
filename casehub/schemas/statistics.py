"""Partnership statistics (CONTRACT §12): the question and the answer."""

from __future__ import annotations

from typing import Any

import marshmallow as ma
from marshmallow import validate

from casehub.schemas import enums
from casehub.schemas.common import StrictSchema

MONTH = r"^[0-9]{4}-(0[1-9]|1[0-2])$"


class DimensionList(ma.fields.List):
    """`group_by=category,month` or `group_by=category&group_by=month`: both are one list."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> list[Any]:
        values = value if isinstance(value, list | tuple) else [value]
        parts = [
            part.strip() for item in values if isinstance(item, str) for part in item.split(",")
        ]
        if any(not isinstance(item, str) for item in values):
            raise ma.ValidationError("Not a valid list of dimensions.")
        return super()._deserialize([p for p in parts if p], attr, data, **kwargs)


def _month(description: str, **kwargs: Any) -> ma.fields.String:
    return ma.fields.String(
        **kwargs,
        validate=[
            validate.Length(min=7, max=7),
            validate.Regexp(MONTH, error="Must be a month, YYYY-MM."),
        ],
        metadata={"description": description, "example": "2026-04", "pattern": MONTH},
    )


class StatisticsQueryArgsSchema(StrictSchema):
    group_by = DimensionList(
        enums.STATISTICS_DIMENSION.field(),
        load_default=list,
        metadata={
            "maxItems": 2,
            "uniqueItems": True,
            "description": "Up to two dimensions, comma-separated (`group_by=category,month`) "
            "or repeated (`group_by=category&group_by=month`); none: one total. An unknown, "
            "repeated or third dimension is 422 naming `group_by`.",
        },
    )
    from_ = _month(
        "The first calendar month (UTC) of `created_at` counted, `YYYY-MM`, included. "
        "After `to`: 422 naming `from`.",
        data_key="from",
    )
    to = _month("The last calendar month (UTC) of `created_at` counted, `YYYY-MM`, included.")


class StatisticsItemSchema(ma.Schema):
    """One cell: the value of each dimension asked (only those), its count and whether that was
    suppressed."""

    category = enums.CATEGORY.field()
    indicator = ma.fields.String(
        metadata={"description": "An indicator code (GET /v1/indicators)."}
    )
    month = ma.fields.String(metadata={"description": "YYYY-MM (UTC).", "example": "2026-04"})
    lead_agency_kind = enums.AGENCY_KIND.field()
    area = ma.fields.String(
        allow_none=True, metadata={"description": "The lead agency's area (null: none given)."}
    )
    risk_level = enums.RISK_LEVEL.field()
    status = enums.REFERRAL_STATUS.field()
    count = ma.fields.Integer(
        required=True,
        allow_none=True,
        metadata={"description": "Referrals in this cell; null when suppressed."},
    )
    suppressed = ma.fields.Boolean(
        required=True,
        metadata={
            "description": "True when the count is from 1 to 4, or would let such a count be "
            "worked out from a total; the count is then null."
        },
    )


class ReferralStatisticsSchema(ma.Schema):
    group_by = ma.fields.List(enums.STATISTICS_DIMENSION.field(), required=True)
    from_ = ma.fields.String(
        attribute="from", data_key="from", required=True, allow_none=True,
        metadata={"description": "The first month counted, as asked (null: from the start)."},
    )  # fmt: skip
    to = ma.fields.String(
        required=True,
        allow_none=True,
        metadata={"description": "The last month counted, as asked (null: to date)."},
    )
    as_of = ma.fields.AwareDateTime(
        required=True,
        allow_none=True,
        metadata={
            "description": "When the counts were computed (`casehub statistics refresh`): "
            "referrals made or changed since are not in them yet. Null: never computed."
        },
    )
    items = ma.fields.List(ma.fields.Nested(StatisticsItemSchema), required=True)
