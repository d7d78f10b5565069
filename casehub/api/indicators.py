"""GET /v1/indicators: the versioned reference list of signs of exploitation."""

from __future__ import annotations

from typing import Any

import marshmallow as ma
from flask.views import MethodView

from casehub.api.base import Blueprint
from casehub.auth.scopes import ANY_SCOPE
from casehub.schemas import enums
from casehub.schemas.common import ListArgsSchema
from casehub.services.pagination import decode_cursor, encode_cursor
from casehub.services.reference import indicator_list

blp = Blueprint("indicators", __name__, url_prefix="/v1/indicators", description="Reference lists")


class SourceRefSchema(ma.Schema):
    code = ma.fields.String(required=True)
    title = ma.fields.String(required=True)


class IndicatorSchema(ma.Schema):
    code = ma.fields.String(required=True, metadata={"example": "TRV-01"})
    label = ma.fields.String(required=True)
    group = ma.fields.String(required=True)
    kind = enums.INDICATOR_KIND.field(required=True)
    source = ma.fields.String(
        required=True, metadata={"description": "Source codes, comma-separated."}
    )
    source_refs = ma.fields.List(ma.fields.Nested(SourceRefSchema), required=True)


class IndicatorPageSchema(ma.Schema):
    version = ma.fields.String(required=True, metadata={"description": "Version of the list."})
    items = ma.fields.List(ma.fields.Nested(IndicatorSchema), required=True)
    next_cursor = ma.fields.String(required=True, allow_none=True)


@blp.route("")
class Indicators(MethodView):
    @blp.requires(ANY_SCOPE)
    @blp.arguments(ListArgsSchema, location="query")
    @blp.response(200, IndicatorPageSchema)
    @blp.doc(
        operationId="listIndicators",
        summary="Signs of exploitation",
        description="Indicators and vulnerability factors, each with its group and source; "
        "ordered as published. Signs are not proof.",
    )
    def get(self, args: dict[str, Any]) -> dict[str, Any]:
        data = indicator_list()
        items = data["items"]
        start = int(decode_cursor(args["cursor"], [int])[0]) if args.get("cursor") else 0
        page = items[start : start + args["limit"]]
        end = start + len(page)
        return {
            "version": data["version"],
            "items": page,
            "next_cursor": encode_cursor([end]) if end < len(items) else None,
        }
