"""Administration schemas: agencies (platform), partner systems (clients) and people (users)."""

from __future__ import annotations

from typing import Any

import marshmallow as ma
from marshmallow import validate

from casehub.auth.scopes import SCOPES
from casehub.schemas import enums
from casehub.schemas.common import ListArgsSchema, StrictSchema, Text
from casehub.schemas.referral import ActorRefSchema, actor_ref

AGENCY_CODE_PATTERN = r"^[a-z0-9][a-z0-9-]{1,39}$"


def _kind(**kw: Any) -> ma.fields.String:
    return enums.AGENCY_KIND.field(**kw)


class _AtLeastOneField(StrictSchema):
    """A PATCH body: any subset of the fields, but not none of them."""

    @ma.validates_schema
    def _not_empty(self, data: dict[str, Any], **_kw: Any) -> None:
        if not data:
            raise ma.ValidationError("Send at least one field to change.", "_schema")


# -- agencies ----------------------------------------------------------------------------------
class AgencyCreateSchema(StrictSchema):
    code = ma.fields.String(
        required=True,
        validate=[
            validate.Length(min=2, max=40),
            validate.Regexp(AGENCY_CODE_PATTERN, error="Must match {regex}."),
        ],
        metadata={"pattern": AGENCY_CODE_PATTERN, "description": "Permanent; cannot be changed."},
    )
    name = Text(200, required=True)
    kind = _kind(required=True)
    area = Text(200, allow_none=True)
    active = ma.fields.Boolean(load_default=True)


class AgencyUpdateSchema(_AtLeastOneField):
    name = Text(200)
    kind = _kind()
    area = Text(200, allow_none=True)
    active = ma.fields.Boolean(
        metadata={
            "description": (
                "false refuses every token of the agency's clients and users at once; "
                "turning it back to true does not revive tokens issued before."
            )
        }
    )


# -- clients -----------------------------------------------------------------------------------
class JwksSchema(StrictSchema):
    keys = ma.fields.List(
        ma.fields.Dict(),
        required=True,
        validate=validate.Length(min=1, max=10),
        metadata={
            "description": "1 to 10 public JWKs (EC, RSA or OKP); private members are refused."
        },
    )


class ClientCreateSchema(StrictSchema):
    name = Text(200, required=True)
    scopes = ma.fields.List(
        enums.SCOPE.field(),
        required=True,
        validate=validate.Length(min=1, max=len(SCOPES)),
        metadata={
            "description": (
                "The most this system may ever be granted. Any scope except `audit:read:all` "
                "and `monitoring:read`, which only the platform agency may hold. Case scopes "
                "(every scope but `admin`, `webhooks:manage`, `audit:read`, `audit:read:all` "
                "and `monitoring:read`) asked for by a person wait in `pending_scopes` for a "
                "second administrator's approval; a system acting as itself may ask only for "
                "case scopes it holds."
            )
        },
    )
    jwks = ma.fields.Nested(
        JwksSchema,
        allow_none=True,
        metadata={"description": "Public keys for `private_key_jwt` and the jwt-bearer grant."},
    )


class ClientSchema(ma.Schema):
    client_id = ma.fields.String(required=True)
    agency = ma.fields.String(required=True, attribute="agency_code")
    name = ma.fields.String(required=True)
    scopes = ma.fields.List(
        enums.SCOPE.field(),
        required=True,
        metadata={"description": "What the system's tokens may carry now."},
    )
    pending_scopes = ma.fields.List(
        enums.SCOPE.field(),
        required=True,
        metadata={
            "description": (
                "Case scopes awaiting a second administrator's approval (POST "
                "/v1/admin/clients/{client_id}/approval): no token carries them yet. Empty when "
                "nothing waits."
            )
        },
    )
    created_by = ma.fields.Nested(
        ActorRefSchema,
        required=True,
        allow_none=True,
        metadata={
            "description": (
                "Who registered the system over the API (`user_id` null for a system acting "
                "as itself); null when the operator added it on the server."
            )
        },
    )
    approved_by = ma.fields.Nested(
        ActorRefSchema,
        required=True,
        allow_none=True,
        metadata={"description": "The administrator who last approved case scopes; or null."},
    )
    approved_at = ma.fields.AwareDateTime(required=True, allow_none=True)
    jwks = ma.fields.Nested(JwksSchema, allow_none=True, required=True)
    active = ma.fields.Boolean(required=True)
    created_at = ma.fields.AwareDateTime(required=True)

    def get_attribute(self, obj: Any, attr: str, default: Any) -> Any:
        if attr == "created_by":
            if obj.created_by_client_id is None:
                return None
            return actor_ref(obj.agency_code, obj.created_by_client_id, obj.created_by_user_id)
        if attr == "approved_by":
            if obj.approved_by_client_id is None:
                return None
            return actor_ref(
                obj.approved_by_agency, obj.approved_by_client_id, obj.approved_by_user_id
            )
        return super().get_attribute(obj, attr, default)


class ClientCreatedSchema(ClientSchema):
    """Dumps a `services.admin.NewClient`: the client's fields plus its one-time secret."""

    client_secret = ma.fields.String(
        required=True,
        allow_none=True,
        metadata={
            "description": (
                "Shown in this response only; casehub keeps only a slow hash. null when the "
                "response is an Idempotency-Key replay."
            )
        },
    )

    def get_attribute(self, obj: Any, attr: str, default: Any) -> Any:
        if attr == "client_secret":
            return obj.secret
        return super().get_attribute(obj.client, attr, default)


class ClientApprovalSchema(StrictSchema):
    scopes = ma.fields.List(
        enums.SCOPE.field(),
        required=True,
        validate=validate.Length(min=1, max=len(SCOPES)),
        metadata={
            "description": (
                "The pending scopes approved; each must be in the client's `pending_scopes`. "
                "Those not listed stay pending."
            )
        },
    )


class ClientQueryArgsSchema(ListArgsSchema):
    active = ma.fields.Boolean(metadata={"description": "Only active (true) or inactive (false)."})


# -- users -------------------------------------------------------------------------------------
def _roles(**kw: Any) -> ma.fields.List:
    return ma.fields.List(
        enums.ROLE.field(),
        validate=validate.Length(min=1, max=len(enums.ROLE.values)),
        **kw,
    )


class UserCreateSchema(StrictSchema):
    email = ma.fields.Email(
        required=True,
        validate=validate.Length(max=254),
        metadata={"description": "Unique across casehub; stored in lower case; cannot be changed."},
    )
    name = Text(200, required=True)
    roles = _roles(required=True)


class UserUpdateSchema(_AtLeastOneField):
    name = Text(200)
    roles = _roles(
        metadata={
            "description": (
                "Taking a role away refuses the user's earlier tokens, so no scope outlives "
                "its role."
            )
        }
    )
    active = ma.fields.Boolean(metadata={"description": "false refuses the user's tokens at once."})


class UserSchema(ma.Schema):
    id = ma.fields.UUID(required=True)
    agency = ma.fields.String(required=True, attribute="agency_code")
    email = ma.fields.String(required=True)
    name = ma.fields.String(required=True)
    roles = ma.fields.List(enums.ROLE.field(), required=True, attribute="role_list")
    active = ma.fields.Boolean(required=True)
    created_at = ma.fields.AwareDateTime(required=True)


class UserQueryArgsSchema(ListArgsSchema):
    active = ma.fields.Boolean(metadata={"description": "Only active (true) or inactive (false)."})
