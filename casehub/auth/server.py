"""The authorization server (authlib): token, introspection and revocation endpoints."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import ClientMixin, grants
from authlib.oauth2.rfc6749.errors import InvalidScopeError
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from authlib.oauth2.rfc9068 import JWTBearerTokenGenerator
from authlib.oauth2.rfc6750.errors import InvalidTokenError
from flask import Flask
from sqlalchemy import select

from casehub.auth import scopes as scope_registry
from casehub.auth.actor import load_actor
from casehub.auth.keys import ALGORITHM, KeyStore
from casehub.auth.secrets import verify_secret
from casehub.auth.tokens import AccessTokenValidator
from casehub.db import get_session
from casehub.errors import Unauthorized
from casehub.models import Agency, Client, RevokedToken

CLIENT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "private_key_jwt"]


class OAuthClient(ClientMixin):
    """Authlib's view of a partner system, created per request from the `clients` row."""

    def __init__(self, row: Client, secret_n: int) -> None:
        self.row = row
        self.client_id = row.client_id
        self.granted_scope: str | None = None

    def get_client_id(self) -> str:
        return self.row.client_id

    def get_default_redirect_uri(self) -> None:
        return None

    def get_allowed_scope(self, scope: str | None) -> str | None:
        # The grant has already computed (and checked) the scope this request may have.
        return self.granted_scope

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return False

    def check_client_secret(self, client_secret: str) -> bool:
        return verify_secret(client_secret, self.row.secret_hash)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        if method == "private_key_jwt":
            return bool(self.row.jwks)
        return method in ("client_secret_basic", "client_secret_post") and bool(self.row.secret_hash)

    def check_response_type(self, response_type: str) -> bool:
        return False

    def check_grant_type(self, grant_type: str) -> bool:
        return True


def grant_scope(requested: str | None, *ceilings: frozenset[str]) -> str:
    """Requested scope (default: everything allowed) within every ceiling, or invalid_scope."""
    allowed = frozenset(scope_registry.SCOPES)
    for ceiling in ceilings:
        allowed &= ceiling
    if requested is None or not requested.strip():
        granted = [s for s in scope_registry.SCOPES if s in allowed]
        if not granted:
            raise InvalidScopeError(description="No scope can be granted to this client.")
        return " ".join(granted)
    wanted = scope_registry.normalise(requested)
    outside = [s for s in wanted if s not in allowed]
    if outside:
        raise InvalidScopeError(description="Scope not allowed: " + " ".join(outside))
    return " ".join(wanted)


class ClientCredentialsGrant(grants.ClientCredentialsGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = CLIENT_AUTH_METHODS

    def validate_requested_scope(self) -> None:
        client: OAuthClient = self.request.client
        client.granted_scope = grant_scope(
            self.request.payload.scope, frozenset(client.row.scopes)
        )


class AccessTokenGenerator(JWTBearerTokenGenerator):
    """RFC 9068 tokens: audience is casehub's API, with the agency (and roles for a user)."""

    def __init__(self, keys: KeyStore, *, issuer: str, audience: str, ttl: int) -> None:
        super().__init__(issuer=issuer, alg=ALGORITHM, expires_generator=lambda _c, _g: ttl)
        self.keys = keys
        self.audience = audience

    def get_jwks(self) -> Any:
        return self.keys.signing_keys()

    def get_audiences(self, client: OAuthClient, user: Any, scope: str) -> str:
        return self.audience

    def get_extra_claims(self, client: OAuthClient, grant_type: str, user: Any, scope: str) -> dict[str, Any]:
        claims: dict[str, Any] = {"agency": client.row.agency_code}
        if user is not None:
            claims["roles"] = user.role_list
        return claims


class IssuedToken:
    """A verified access token as authlib's introspection and revocation endpoints see it."""

    def __init__(self, claims: Any, *, revoked: bool) -> None:
        self.claims = claims
        self.revoked = revoked

    def check_client(self, client: OAuthClient) -> bool:
        return bool(self.claims["client_id"] == client.get_client_id())

    def is_expired(self) -> bool:
        return bool(self.claims["exp"] <= time.time())

    def is_revoked(self) -> bool:
        return self.revoked


class _TokenLookup:
    validator: AccessTokenValidator

    def query_token(self, token_string: str, token_type_hint: str | None) -> IssuedToken | None:
        if token_type_hint not in (None, "access_token"):
            return None
        try:
            claims = self.validator.authenticate_token(token_string)
        except InvalidTokenError:
            return None
        try:
            load_actor(get_session(), claims)
        except Unauthorized:
            return IssuedToken(claims, revoked=True)
        return IssuedToken(claims, revoked=False)


class Introspection(_TokenLookup, IntrospectionEndpoint):
    CLIENT_AUTH_METHODS = CLIENT_AUTH_METHODS

    def check_permission(self, token: IssuedToken, client: OAuthClient, request: Any) -> bool:
        # A partner system may introspect tokens issued within its own agency only.
        return bool(token.claims.get("agency") == client.row.agency_code)

    def introspect_token(self, token: IssuedToken) -> dict[str, Any]:
        names = ("scope", "client_id", "sub", "aud", "iss", "exp", "iat", "jti", "agency", "roles")
        payload = {name: token.claims[name] for name in names if name in token.claims}
        payload["active"] = True
        payload["token_type"] = "Bearer"
        return payload


class Revocation(_TokenLookup, RevocationEndpoint):
    CLIENT_AUTH_METHODS = CLIENT_AUTH_METHODS

    def revoke_token(self, token: IssuedToken, request: Any) -> None:
        session = get_session()
        jti = token.claims["jti"]
        if session.get(RevokedToken, jti) is None:
            session.add(
                RevokedToken(jti=jti, expires_at=datetime.fromtimestamp(token.claims["exp"], UTC))
            )
        session.flush()


class CasehubAuthorizationServer(AuthorizationServer):
    def __init__(self) -> None:
        super().__init__()
        self.secret_n = 2**14

    def query_client(self, client_id: str) -> OAuthClient | None:
        row = get_session().execute(
            select(Client)
            .join(Agency, Agency.code == Client.agency_code)
            .where(Client.client_id == client_id, Client.active, Agency.active)
        ).scalar_one_or_none()
        return OAuthClient(row, self.secret_n) if row is not None else None

    def save_token(self, token: dict[str, Any], request: Any) -> None:
        # JWT access tokens are not stored; their jti is enough to revoke them.
        return None

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        return super().send_signal(name, *args, **kwargs)


def init_app(app: Flask, keys: KeyStore, validator: AccessTokenValidator) -> CasehubAuthorizationServer:
    server = CasehubAuthorizationServer()
    server.init_app(app)
    server.secret_n = app.config["CLIENT_SECRET_SCRYPT_N"]
    server.register_grant(ClientCredentialsGrant)
    server.register_token_generator(
        "default",
        AccessTokenGenerator(
            keys,
            issuer=app.config["ISSUER"],
            audience=app.config["AUDIENCE"],
            ttl=app.config["TOKEN_TTL"],
        ),
    )
    introspection = Introspection(server)
    introspection.validator = validator
    revocation = Revocation(server)
    revocation.validator = validator
    server.register_endpoint(introspection)
    server.register_endpoint(revocation)
    app.extensions["casehub.oauth_server"] = server
    return server
