"""/v1/admin: agencies (platform admins), and the clients and users of the caller's own agency."""

from __future__ import annotations

import uuid
from typing import Any

from flask import current_app
from flask.views import MethodView

from casehub.api.base import Blueprint, current_actor, problem_response
from casehub.db import get_session
from casehub.models import Agency, Client, User
from casehub.schemas.admin import (
    AgencyCreateSchema,
    AgencyUpdateSchema,
    ClientApprovalSchema,
    ClientCreatedSchema,
    ClientCreateSchema,
    ClientQueryArgsSchema,
    ClientSchema,
    UserCreateSchema,
    UserQueryArgsSchema,
    UserSchema,
    UserUpdateSchema,
)
from casehub.schemas.agency import AgencySchema
from casehub.schemas.common import page_of
from casehub.services import admin

blp = Blueprint(
    "admin",
    __name__,
    url_prefix="/v1/admin",
    description=(
        "Administration (scope `admin`). Agencies are administered by the platform agency's "
        "admins only; clients and users only within the caller's own agency — another "
        "agency's client or user answers 404."
    ),
)

NOT_FOUND = "No such record in the caller's agency."


def problems(**descriptions: str) -> Any:
    """Document problem+json responses by status, e.g. `problems(_404="No such agency.")`."""
    return blp.doc(
        responses={code.lstrip("_"): problem_response(text) for code, text in descriptions.items()}
    )


@blp.route("/agencies")
class Agencies(MethodView):
    @blp.requires("admin")
    @blp.idempotent
    @blp.arguments(AgencyCreateSchema)
    @blp.response(201, AgencySchema)
    @problems(_409="An agency with this code exists.")
    @blp.doc(
        operationId="createAgency",
        summary="Add an agency",
        description=(
            "Platform admins only. The `code` is permanent. The platform flag itself is never "
            "granted over the API."
        ),
    )
    def post(self, args: dict[str, Any]) -> Agency:
        return admin.create_agency(get_session(), actor=current_actor(), **args)


@blp.route("/agencies/<string:code>")
class AgencyByCode(MethodView):
    @blp.requires("admin")
    @blp.arguments(AgencyUpdateSchema)
    @blp.response(200, AgencySchema)
    @problems(_404="No such agency.", _409="The platform agency cannot be deactivated.")
    @blp.doc(
        operationId="updateAgency",
        summary="Change an agency",
        description=(
            "Platform admins only. Any of `name, kind, area, active`; the `code` cannot change. "
            "`active: false` refuses every token of the agency's clients and users from the "
            "next request, and its clients can get no new tokens; reactivating does not revive "
            "tokens issued before the deactivation."
        ),
    )
    def patch(self, args: dict[str, Any], code: str) -> Agency:
        return admin.update_agency(get_session(), actor=current_actor(), code=code, changes=args)


@blp.route("/clients")
class Clients(MethodView):
    @blp.requires("admin")
    @blp.arguments(ClientQueryArgsSchema, location="query")
    @blp.response(200, page_of(ClientSchema))
    @blp.doc(
        operationId="listClients",
        summary="List the agency's partner systems",
        description="Ordered by `created_at`, then `client_id`. Secrets are never shown again.",
    )
    def get(self, args: dict[str, Any]) -> dict[str, Any]:
        items, next_cursor = admin.list_clients(
            get_session(),
            actor=current_actor(),
            active=args.get("active"),
            limit=args["limit"],
            cursor=args.get("cursor"),
        )
        return {"items": items, "next_cursor": next_cursor}

    @blp.requires("admin")
    @blp.idempotent
    @blp.replay_without("client_secret")
    @blp.arguments(ClientCreateSchema)
    @blp.response(201, ClientCreatedSchema)
    @blp.doc(
        operationId="createClient",
        summary="Register a partner system of the agency",
        description=(
            "Returns `client_secret` once: casehub keeps only a slow (scrypt) hash of it. "
            "Repeating the request with the same `Idempotency-Key` creates nothing and answers "
            "the first response with `client_secret: null`, because the secret is never stored; "
            "if it was lost, delete that client and register a new one. An agency admin may "
            "grant any scope except `audit:read:all` and `monitoring:read`, which only the "
            "platform agency may hold.\n\n"
            "**Case scopes need a second administrator.** Case scopes are every scope that "
            "gives sight of case content: all but `admin`, `webhooks:manage`, `audit:read`, "
            "`audit:read:all` and `monitoring:read`. Registered by a person (a token from the "
            "jwt-bearer grant), the system gets its other scopes at once and its case scopes "
            "in `pending_scopes`, which no token carries — asking for one is `invalid_scope` — "
            "until another administrator approves them with `approveClientScopes`. The audit "
            "event `admin.client.create` then has `basis: approval_pending`. A system acting "
            "as itself (client_credentials) may ask only for case scopes it holds itself, which "
            "are granted at once; any other is 422. Systems the operator adds on the server "
            "(`casehub clients add`) need no approval."
        ),
    )
    def post(self, args: dict[str, Any]) -> admin.NewClient:
        return admin.create_client(
            get_session(),
            actor=current_actor(),
            name=args["name"],
            scopes=args["scopes"],
            jwks=args.get("jwks"),
            scrypt_n=current_app.config["CLIENT_SECRET_SCRYPT_N"],
        )


@blp.route("/clients/<string:client_id>/approval")
class ClientApproval(MethodView):
    @blp.requires("admin")
    @blp.arguments(ClientApprovalSchema)
    @blp.response(200, ClientSchema)
    @problems(
        _404="No such client in the caller's agency (the platform agency sees every agency's).",
        _409="Nothing of this client awaits approval.",
    )
    @blp.doc(
        operationId="approveClientScopes",
        summary="Approve a partner system's pending case scopes",
        description=(
            "The second pair of eyes on case access: moves the listed scopes from "
            "`pending_scopes` to `scopes`, so the system's next tokens may carry them (tokens "
            "already issued do not change). Scopes not listed stay pending; to refuse them, "
            "deactivate the client (`deactivateClient`) and register one with the right "
            "scopes.\n\n"
            "The approver is a person — a token from the jwt-bearer grant for an administrator, "
            "not a system's own token — other than the person who registered the client, "
            "of the client's agency or of the platform agency; otherwise 403, or 404 for "
            "another agency's client, both audited as denied (`admin.client.approve`, outcome "
            "`denied`). An approval is audited as `admin.client.approve` (allowed) and shown "
            "in the client's `approved_by` and `approved_at`. A system that also holds `admin` "
            "may pass its approved case scopes on to systems it registers."
        ),
    )
    def post(self, args: dict[str, Any], client_id: str) -> Client:
        return admin.approve_client_scopes(
            get_session(), actor=current_actor(), client_id=client_id, scopes=args["scopes"]
        )


@blp.route("/clients/<string:client_id>")
class ClientById(MethodView):
    @blp.requires("admin")
    @blp.response(204)
    @problems(_404=NOT_FOUND)
    @blp.doc(
        operationId="deactivateClient",
        summary="Deactivate a partner system",
        description=(
            "The client's tokens are refused from the next request and it can get no new "
            "ones. The record stays (listed with `active: false`) for the audit trail. "
            "Repeating the call is harmless."
        ),
    )
    def delete(self, client_id: str) -> None:
        admin.deactivate_client(get_session(), actor=current_actor(), client_id=client_id)


@blp.route("/users")
class Users(MethodView):
    @blp.requires("admin")
    @blp.arguments(UserQueryArgsSchema, location="query")
    @blp.response(200, page_of(UserSchema))
    @blp.doc(
        operationId="listUsers",
        summary="List the agency's users",
        description="Ordered by `created_at`, then `id`.",
    )
    def get(self, args: dict[str, Any]) -> dict[str, Any]:
        items, next_cursor = admin.list_users(
            get_session(),
            actor=current_actor(),
            active=args.get("active"),
            limit=args["limit"],
            cursor=args.get("cursor"),
        )
        return {"items": items, "next_cursor": next_cursor}

    @blp.requires("admin")
    @blp.idempotent
    @blp.arguments(UserCreateSchema)
    @blp.response(201, UserSchema)
    @problems(_409="A user with this email exists.")
    @blp.doc(
        operationId="createUser",
        summary="Add a person of the agency",
        description="The agency's partner systems then act for them with the jwt-bearer grant.",
    )
    def post(self, args: dict[str, Any]) -> User:
        return admin.create_user(get_session(), actor=current_actor(), **args)


@blp.route("/users/<uuid:user_id>")
class UserById(MethodView):
    @blp.requires("admin")
    @blp.arguments(UserUpdateSchema)
    @blp.response(200, UserSchema)
    @problems(_404=NOT_FOUND)
    @blp.doc(
        operationId="updateUser",
        summary="Change a user",
        description=(
            "Any of `name, roles, active`; the email cannot change. `active: false` refuses the "
            "user's tokens from the next request. Taking a role away also refuses the user's "
            "earlier tokens, so no scope outlives the role that granted it."
        ),
    )
    def patch(self, args: dict[str, Any], user_id: uuid.UUID) -> User:
        return admin.update_user(
            get_session(), actor=current_actor(), user_id=user_id, changes=args
        )
