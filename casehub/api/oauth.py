"""OAuth 2 endpoints (RFC 6749, 7009, 7523, 7662, 8414, 9068). Errors here keep RFC 6749's
`error` member, which OAuth client libraries read, beside the problem+json members."""

from __future__ import annotations

import json
from typing import Any

from authlib.oauth2.rfc6749.errors import (
    InvalidRequestError,
    OAuth2Error,
    UnsupportedTokenTypeError,
)
from flask import Response, current_app, request

from casehub.api.base import Blueprint, checks_own_query, public
from casehub.auth import scopes
from casehub.auth.assertions import ADVERTISED_ALGORITHMS
from casehub.auth.keys import ALGORITHM
from casehub.auth.server import CLIENT_AUTH_METHODS, USER_ASSERTION_MAX_LIFETIME
from casehub.schemas.oauth import (
    IntrospectionSchema,
    OAuthErrorSchema,
    PublicJwksSchema,
    RevocationSchema,
    ServerMetadataSchema,
    TokenSchema,
)

blp = Blueprint("oauth", __name__, description="OAuth 2 authorization server")

OAUTH_ERROR = {
    "description": "RFC 6749 §5.2 error (`invalid_client`, `invalid_grant`, `invalid_scope`, ...).",
    "content": {"application/json": {"schema": OAuthErrorSchema}},
}


FORM = "application/x-www-form-urlencoded"


def _server() -> Any:
    return current_app.extensions["casehub.oauth_server"]


def _oauth_response(respond: Any) -> Response:
    """Run an authlib endpoint; parameters belong in the form body, never in the URL (where
    credentials and tokens would end up in logs), so a query string is refused."""
    try:
        if request.args:
            raise InvalidRequestError("Send OAuth parameters in the form body, not the URL.")
        for name, value in request.form.items(multi=True):
            limit = _FORM_LIMITS.get(name)
            if limit is not None and len(value) > limit:
                raise InvalidRequestError(f"{name} is longer than {limit} characters.")
            if "\x00" in name or "\x00" in value:  # PostgreSQL cannot even compare NUL
                raise InvalidRequestError("Parameters must not contain NUL characters.")
        if request.form.get("token_type_hint") == "":
            # authlib reads an empty hint as none, though it is no documented value: refuse it
            # as authlib refuses any other unknown hint.
            raise UnsupportedTokenTypeError()
        return _with_problem_members(respond())
    except OAuth2Error as error:
        # Raised before authlib's own handling starts, e.g. `insecure_transport` when a TLS
        # terminator does not tell the app (X-Forwarded-Proto) that the request came in https.
        status, body, headers = error()
        response = Response(json.dumps(body), status=status, headers=headers)
        return _with_problem_members(response)


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
    operationId="getAuthorizationServerMetadata",
    summary="Authorization server metadata (RFC 8414)",
    description="Where the token, introspection, revocation and key endpoints are, and which "
    "grants, client authentication methods, algorithms and scopes they take.",
    responses={
        "200": {
            "description": "Server metadata",
            "content": {"application/json": {"schema": ServerMetadataSchema}},
        }
    },
)
@public
def metadata() -> dict[str, Any]:
    issuer = current_app.config["ISSUER"]
    methods = list(CLIENT_AUTH_METHODS)
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
        "token_endpoint_auth_signing_alg_values_supported": ADVERTISED_ALGORITHMS,
        "introspection_endpoint_auth_methods_supported": methods,
        "introspection_endpoint_auth_signing_alg_values_supported": ADVERTISED_ALGORITHMS,
        "revocation_endpoint_auth_methods_supported": methods,
        "revocation_endpoint_auth_signing_alg_values_supported": ADVERTISED_ALGORITHMS,
        "access_token_signing_alg_values_supported": [ALGORITHM],
    }


@blp.route("/.well-known/jwks.json")
@blp.doc(
    operationId="getJwks",
    summary="Token-signing public keys",
    description="The active key and any retired key whose tokens may still be live.",
    responses={
        "200": {
            "description": "JWK Set",
            "content": {"application/json": {"schema": PublicJwksSchema}},
        }
    },
)
@public
def jwks() -> dict[str, Any]:
    published: dict[str, Any] = current_app.extensions["casehub.keys"].published()
    return published


def _form_doc(
    operation_id: str,
    summary: str,
    description: str,
    fields: dict[str, Any],
    required: list[str],
    success: type,
) -> Any:
    """Document a form endpoint; the view checks its own query string (refused, in RFC 6749's
    error format, by _oauth_response), so web.py leaves it alone."""

    def decorator(func: Any) -> Any:
        return checks_own_query(documented(func))

    documented = blp.doc(
        operationId=operation_id,
        summary=summary,
        description=description,
        requestBody={
            "required": True,
            "content": {
                FORM: {"schema": {"type": "object", "properties": fields, "required": required}}
            },
        },
        responses={
            "200": {"description": "Success", "content": {"application/json": {"schema": success}}},
            "400": OAUTH_ERROR,
            "401": OAUTH_ERROR,
        },
    )
    return decorator


_CLIENT_AUTH_FIELDS = {
    "client_id": {"type": "string", "maxLength": 64},
    "client_secret": {"type": "string", "maxLength": 200},
    "client_assertion_type": {"type": "string", "maxLength": 100},
    "client_assertion": {"type": "string", "maxLength": 8000},
}


_TOKEN_DESCRIPTION = f"""\
Grants:

* `client_credentials`: the partner system acting as itself (`sub` = the client id).
* `urn:ietf:params:oauth:grant-type:jwt-bearer` (RFC 7523 §2.1): the partner system acting for
  one of its agency's active users. `assertion` is a JWT signed with a key in the client's
  registered JWKS (ES256, RS256 or Ed25519 — `EdDSA` is accepted as its deprecated name) with
  `iss` = the client id, `sub` = the user's id or email, `aud` = the token endpoint URL or the
  issuer, `exp` at most {USER_ASSERTION_MAX_LIFETIME} s ahead and a `jti` that is accepted once.
  **The client must also authenticate** (below): the assertion alone is not enough, even for a
  client with a JWKS, which then authenticates with `private_key_jwt` (a second, separate JWT).

Client authentication, one method per request: `client_secret_basic`, `client_secret_post` or
`private_key_jwt` (RFC 7523 §2.2: `client_assertion_type` =
`urn:ietf:params:oauth:client-assertion-type:jwt-bearer`, `client_assertion` a JWT with `iss`
and `sub` = the client id, `aud` = the token endpoint URL or the issuer, `exp` at most one hour
ahead, a `jti` accepted once). Any failure is `401 invalid_client`.

The scope granted is the requested one (default: all that may be granted) within the client's
scopes and, for a user, the user's roles' scopes; asking for anything outside that is
`400 invalid_scope`. The response is `{{access_token, token_type: "Bearer", expires_in, scope}}`;
the token is an RFC 9068 JWT (`typ: at+jwt`, ES256, `kid` in /.well-known/jwks.json) valid for at
most 900 s. There are no refresh tokens. OAuth parameters in the URL are refused.
"""


_GRANT_FIELDS = {
    "grant_type": {"type": "string", "maxLength": 100},
    "scope": {"type": "string", "maxLength": 1000},
    "assertion": {"type": "string", "maxLength": 8000},
    **_CLIENT_AUTH_FIELDS,
}


@blp.route("/oauth/token", methods=["POST"])
@_form_doc(
    "requestToken",
    "Issue an access token",
    _TOKEN_DESCRIPTION,
    _GRANT_FIELDS,
    ["grant_type"],
    TokenSchema,
)
@blp.rate_class("client-auth")
@public
def token() -> Response:
    return _oauth_response(_server().create_token_response)


_TOKEN_FIELDS = {
    "token": {"type": "string", "maxLength": 8000},
    "token_type_hint": {"type": "string", "enum": ["access_token", "refresh_token"]},
    **_CLIENT_AUTH_FIELDS,
}

# Every documented maximum holds, here as in the JSON API: a longer parameter is malformed.
_FORM_LIMITS = {
    name: field["maxLength"]
    for fields in (_GRANT_FIELDS, _TOKEN_FIELDS)
    for name, field in fields.items()
    if "maxLength" in field
}


@blp.route("/oauth/introspect", methods=["POST"])
@_form_doc(
    "introspectToken",
    "Introspect an access token (RFC 7662)",
    "For authenticated clients (any method of the token endpoint), about tokens issued within "
    "their own agency: `active: true` with the token's claims. A revoked, expired, malformed "
    "or other agency's token, or one of a deactivated client, user or agency, is reported as "
    '`{"active": false}`.',
    _TOKEN_FIELDS,
    ["token"],
    IntrospectionSchema,
)
@blp.rate_class("client-auth")
@public
def introspect() -> Response:
    return _oauth_response(lambda: _server().create_endpoint_response("introspection"))


@blp.route("/oauth/revoke", methods=["POST"])
@_form_doc(
    "revokeToken",
    "Revoke an access token (RFC 7009)",
    "An authenticated client revokes one of its own tokens; every endpoint refuses the token "
    "once this returns. Another client's token, an unknown or an expired one is left alone "
    "and answered with the same `200 {}` (RFC 7009 §2.2).",
    _TOKEN_FIELDS,
    ["token"],
    RevocationSchema,
)
@blp.rate_class("client-auth")
@public
def revoke() -> Response:
    return _oauth_response(lambda: _server().create_endpoint_response("revocation"))
