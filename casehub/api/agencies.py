"""GET /v1/agencies: the partnership's agencies, for any valid token."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView

from casehub.api.base import Blueprint
from casehub.auth.scopes import ANY_SCOPE
from casehub.db import get_session
from casehub.schemas.agency import AgencyQueryArgsSchema, AgencySchema
from casehub.schemas.common import page_of
from casehub.services import agencies

blp = Blueprint("agencies", __name__, url_prefix="/v1/agencies", description="Agencies")


@blp.route("")
class Agencies(MethodView):
    @blp.requires(ANY_SCOPE)
    @blp.arguments(AgencyQueryArgsSchema, location="query")
    @blp.response(200, page_of(AgencySchema))
    @blp.doc(operationId="listAgencies", summary="List agencies", description="Ordered by code.")
    def get(self, args: dict[str, Any]) -> dict[str, Any]:
        items, next_cursor = agencies.list_agencies(
            get_session(), limit=args["limit"], cursor=args.get("cursor")
        )
        return {"items": items, "next_cursor": next_cursor}
