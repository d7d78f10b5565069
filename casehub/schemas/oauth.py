"""What the OAuth 2 endpoints answer (RFC 6749 §5.1 and §5.2, RFC 7662, RFC 8414, RFC 7517)."""

from __future__ import annotations

import marshmallow as ma


class TokenSchema(ma.Schema):
    """RFC 6749 §5.1 successful token response."""

    access_token = ma.fields.String(
        required=True, metadata={"description": "An RFC 9068 JWT (`typ: at+jwt`)."}
    )
    token_type = ma.fields.String(required=True, metadata={"enum": ["Bearer"]})
    expires_in = ma.fields.Integer(
        required=True, metadata={"description": "Seconds the token is valid (at most 900)."}
    )
    scope = ma.fields.String(required=True, metadata={"description": "Granted scopes."})


class OAuthErrorSchema(ma.Schema):
    """RFC 6749 §5.2 error response, with the RFC 9457 problem members beside it."""

    error = ma.fields.String(
        required=True,
        metadata={
            "description": "`invalid_request`, `invalid_client`, `invalid_grant`, "
            "`unauthorized_client`, `unsupported_grant_type`, `invalid_scope` or "
            "`unsupported_token_type`."
        },
    )
    error_description = ma.fields.String()
    type = ma.fields.String(metadata={"description": "urn:ietf:params:oauth:error:<error>"})
    title = ma.fields.String()
    status = ma.fields.Integer()
    detail = ma.fields.String()


class IntrospectionSchema(ma.Schema):
    """RFC 7662 §2.2; only `active` for a token that is not active."""

    active = ma.fields.Boolean(required=True)
    token_type = ma.fields.String(metadata={"enum": ["Bearer"]})
    scope = ma.fields.String()
    client_id = ma.fields.String()
    sub = ma.fields.String()
    aud = ma.fields.String()
    iss = ma.fields.String()
    exp = ma.fields.Integer()
    iat = ma.fields.Integer()
    jti = ma.fields.String()
    agency = ma.fields.String(metadata={"description": "The agency code of the token's client."})
    roles = ma.fields.List(ma.fields.String(), metadata={"description": "For a user's token."})


class RevocationSchema(ma.Schema):
    """RFC 7009 §2.2: an empty object, whatever became of the token."""


class ServerMetadataSchema(ma.Schema):
    """RFC 8414 authorization server metadata."""

    issuer = ma.fields.String(required=True)
    token_endpoint = ma.fields.String(required=True)
    jwks_uri = ma.fields.String(required=True)
    introspection_endpoint = ma.fields.String(required=True)
    revocation_endpoint = ma.fields.String(required=True)
    grant_types_supported = ma.fields.List(ma.fields.String(), required=True)
    response_types_supported = ma.fields.List(ma.fields.String(), required=True)
    scopes_supported = ma.fields.List(ma.fields.String(), required=True)
    token_endpoint_auth_methods_supported = ma.fields.List(ma.fields.String(), required=True)
    token_endpoint_auth_signing_alg_values_supported = ma.fields.List(
        ma.fields.String(), required=True
    )
    introspection_endpoint_auth_methods_supported = ma.fields.List(
        ma.fields.String(), required=True
    )
    introspection_endpoint_auth_signing_alg_values_supported = ma.fields.List(
        ma.fields.String(), required=True
    )
    revocation_endpoint_auth_methods_supported = ma.fields.List(ma.fields.String(), required=True)
    revocation_endpoint_auth_signing_alg_values_supported = ma.fields.List(
        ma.fields.String(), required=True
    )
    access_token_signing_alg_values_supported = ma.fields.List(ma.fields.String(), required=True)


class PublicJwkSchema(ma.Schema):
    """A public JSON Web Key (RFC 7517); ES256 keys are EC P-256."""

    class Meta:
        unknown = ma.INCLUDE

    kty = ma.fields.String(required=True)
    kid = ma.fields.String(required=True)
    alg = ma.fields.String()
    use = ma.fields.String()
    crv = ma.fields.String()
    x = ma.fields.String()
    y = ma.fields.String()


class PublicJwksSchema(ma.Schema):
    keys = ma.fields.List(ma.fields.Nested(PublicJwkSchema), required=True)
