"""OAuth 2 endpoints (RFC 6749, 7009, 7523, 7662, 8414, 9068). Errors here keep RFC 6749's
`error` member, which OAuth client libraries read, beside the problem+json members."""

from __future__ import annotations

import json
from typing import Any

from flask import Response, current_app

from casehub.api.base import Blueprint, public
from casehub.auth import scopes
from casehub.auth.keys import ALGORITHM

blp = Blueprint("oauth", __name__, description="OAuth 2 authorization server")

OAUTH_ERROR = {
    "description": "RFC 6749 §5.2 error (`invalid_client`, `invalid_grant`, `invalid_scope`, ...).",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {
                    "error": {"type": "string"},
                    "error_description": {"type": "string"},
                    "status": {"type": "integer"},
                    "title": {"type": "string"},
                    "type": {"type": "string"},
                    "detail": {"type": "string"},
                },
                "required": ["error"],
            }
        }
    },
}

FORM = "application/x-www-form-urlencoded"


def _server() -> Any:
    return current_app.extensions["casehub.oauth_server"]


def _with_problem_members(response: Response) -> Response:
    """Add problem+json members to an RFC 6749 error body; leave successes alone."""
    if response.status_code < 400:
        return response
    try:
        body = json.loads(response.get_data())
    except ValueError:
        return response
    error = str(body.get("error", "invalid_request"))
    body.setdefault("type", f"urn:ietf:params:oauth:error:{error}")
    body.setdefault("title", error)
    body.setdefault("status", response.status_code)
    body.setdefault("detail", body.get("error_description") or error.replace("_", " "))
    response.set_data(json.dumps(body))
    return response


@blp.route("/.well-known/oauth-authorization-server")
@blp.doc(
    summary="Authorization server metadata (RFC 8414)",
    responses={"200": {"description": "Server metadata", "content": {"application/json": {}}}},
)
@public
def metadata() -> dict[str, Any]:
    issuer = current_app.config["ISSUER"]
    methods = ["client_secret_basic", "client_secret_post", "private_key_jwt"]
    return {
        "issuer": issuer,
        "token_endpoint": f"{issuer}/oauth/token",
        "jwks_uri": f"{issuer}/.well-known/jwks.json",
        "introspection_endpoint": f"{issuer}/oauth/introspect",
        "revocation_endpoint": f"{issuer}/oauth/revoke",
        "grant_types_supported": [
            "client_credentials",
            "urn:ietf:params:oauth:grant-type:jwt-bearer",
        ],
        "response_types_supported": [],
        "scopes_supported": list(scopes.SCOPES),
        "token_endpoint_auth_methods_supported": methods,
        "token_endpoint_auth_signing_alg_values_supported": ["ES256", "RS256", "EdDSA"],
        "introspection_endpoint_auth_methods_supported": methods,
        "revocation_endpoint_auth_methods_supported": methods,
        "access_token_signing_alg_values_supported": [ALGORITHM],
    }


@blp.route("/.well-known/jwks.json")
@blp.doc(
    summary="Token-signing public keys",
    description="The active key and any retired key whose tokens may still be live.",
    responses={"200": {"description": "JWK Set", "content": {"application/json": {}}}},
)
@public
def jwks() -> dict[str, Any]:
    published: dict[str, Any] = current_app.extensions["casehub.keys"].published()
    return published


def _form_doc(summary: str, description: str, fields: dict[str, Any], required: list[str]) -> Any:
    return blp.doc(
        summary=summary,
        description=description,
        requestBody={
            "required": True,
            "content": {
                FORM: {
                    "schema": {"type": "object", "properties": fields, "required": required}
                }
            },
        },
        responses={
            "200": {"description": "Success", "content": {"application/json": {}}},
            "400": OAUTH_ERROR,
            "401": OAUTH_ERROR,
        },
    )


_CLIENT_AUTH_FIELDS = {
    "client_id": {"type": "string", "maxLength": 64},
    "client_secret": {"type": "string", "maxLength": 200},
    "client_assertion_type": {"type": "string", "maxLength": 100},
    "client_assertion": {"type": "string", "maxLength": 8000},
}


@blp.route("/oauth/token", methods=["POST"])
@_form_doc(
    "Issue an access token",
    "`client_credentials` (the partner system as itself) or "
    "`urn:ietf:params:oauth:grant-type:jwt-bearer` (for one of the agency's users). Clients "
    "authenticate with client_secret_basic, client_secret_post or private_key_jwt. Tokens are "
    "RFC 9068 JWTs, valid for at most 900 s; there are no refresh tokens.",
    {
        "grant_type": {"type": "string", "maxLength": 100},
        "scope": {"type": "string", "maxLength": 1000},
        "assertion": {"type": "string", "maxLength": 8000},
        **_CLIENT_AUTH_FIELDS,
    },
    ["grant_type"],
)
@public
def token() -> Response:
    return _with_problem_members(_server().create_token_response())


@blp.route("/oauth/introspect", methods=["POST"])
@_form_doc(
    "Introspect an access token (RFC 7662)",
    "For authenticated clients, about tokens issued within their own agency; any other token "
    "is reported as `{\"active\": false}`.",
    {"token": {"type": "string", "maxLength": 8000}, "token_type_hint": {"type": "string"}, **_CLIENT_AUTH_FIELDS},
    ["token"],
)
@public
def introspect() -> Response:
    return _with_problem_members(_server().create_endpoint_response("introspection"))


@blp.route("/oauth/revoke", methods=["POST"])
@_form_doc(
    "Revoke an access token (RFC 7009)",
    "A client revokes its own tokens; every endpoint refuses the token once this returns.",
    {"token": {"type": "string", "maxLength": 8000}, "token_type_hint": {"type": "string"}, **_CLIENT_AUTH_FIELDS},
    ["token"],
)
@public
def revoke() -> Response:
    return _with_problem_members(_server().create_endpoint_response("revocation"))
