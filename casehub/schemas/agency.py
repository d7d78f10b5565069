"""Agency schemas."""

from __future__ import annotations

import marshmallow as ma

from casehub.schemas import enums
from casehub.schemas.common import ListArgsSchema


class AgencySchema(ma.Schema):
    code = ma.fields.String(required=True, metadata={"pattern": "^[a-z0-9][a-z0-9-]{1,39}$"})
    name = ma.fields.String(required=True)
    kind = enums.AGENCY_KIND.field(required=True)
    area = ma.fields.String(allow_none=True)
    active = ma.fields.Boolean(required=True)


class AgencyQueryArgsSchema(ListArgsSchema):
    pass
