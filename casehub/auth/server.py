"""The authorization server (authlib): token, introspection and revocation endpoints.

Grants: `client_credentials` (a partner system as itself) and RFC 7523 jwt-bearer (a partner
system for one of its agency's users). Client authentication: `client_secret_basic`,
`client_secret_post` and `private_key_jwt`, at every endpoint.

Audit hook points (events are queued with `casehub.audit.record` on the request's session and
written by web.py with the response): `token.issue` (allowed) for every token issued,
`auth.client_failed` (denied) for every failed client authentication at any endpoint,
`token.refused` (denied) for a token request refused after the client authenticated (bad
assertion, unknown user, scope outside what may be granted), `token.revoke` (allowed). No
event carries a secret, an assertion or a token, only the token's `jti`.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import ClientMixin, grants
from authlib.oauth2.rfc6749.errors import (
    InvalidClientError,
    InvalidGrantError,
    InvalidRequestError,
    InvalidScopeError,
    OAuth2Error,
    UnauthorizedClientError,
    UnsupportedGrantTypeError,
)
from authlib.oauth2.rfc6749.util import extract_basic_authorization
from authlib.oauth2.rfc6750.errors import InvalidTokenError
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion, JWTBearerGrant
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from authlib.oauth2.rfc9068 import JWTBearerTokenGenerator
from flask import Flask, current_app
from joserfc import jws
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from casehub import audit
from casehub.auth import assertions
from casehub.auth import scopes as scope_registry
from casehub.auth.actor import Actor, load_actor
from casehub.auth.keys import ALGORITHM, KeyStore
from casehub.auth.secrets import hash_secret, verify_secret
from casehub.auth.tokens import AccessTokenValidator
from casehub.db import get_session
from casehub.errors import Unauthorized
from casehub.models import Agency, Client, RevokedToken, User

CLIENT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "private_key_jwt"]
SECRET_METHODS = ("client_secret_basic", "client_secret_post")
JWT_BEARER = JWTBearerGrant.GRANT_TYPE
# RFC 7523 §2.1 assertions for a user: at most 5 minutes ahead (CONTRACT §2).
USER_ASSERTION_MAX_LIFETIME = 300
# private_key_jwt client assertions: common client libraries (authlib among them) sign them for
# an hour by default; each is still accepted only once.
CLIENT_ASSERTION_MAX_LIFETIME = 3600
_ID_LENGTH = 64  # clients.client_id, audit_events.actor_client_id


class OAuthClient(ClientMixin):
    """Authlib's view of a partner system, created per request from the `clients` row."""

    def __init__(self, row: Client) -> None:
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
        return method in SECRET_METHODS and bool(self.row.secret_hash)

    def check_response_type(self, response_type: str) -> bool:
        return False

    def check_grant_type(self, grant_type: str) -> bool:
        if grant_type == JWT_BEARER:
            return bool(self.row.jwks)  # the user's assertion is signed with the client's key
        return grant_type == "client_credentials"


@dataclass(frozen=True)
class TokenUser:
    """The person a jwt-bearer token is issued for."""

    id: uuid.UUID
    roles: tuple[str, ...]

    def get_user_id(self) -> str:
        return str(self.id)


@dataclass(frozen=True)
class AuditActor:
    """What `audit.record` needs to know about who did something at the token endpoint."""

    agency: str | None
    client_id: str | None
    user_id: uuid.UUID | None = None


def _actor(client: OAuthClient, user: TokenUser | None = None) -> AuditActor:
    return AuditActor(client.row.agency_code, client.client_id, user.id if user else None)


def grant_scope(
    requested: str | None, *ceilings: frozenset[str], pending: frozenset[str] = frozenset()
) -> str:
    """Requested scope (default: everything allowed) within every ceiling, or invalid_scope.

    `pending` (the client's case scopes awaiting approval) is never granted; it only explains
    the refusal."""
    allowed = frozenset(scope_registry.SCOPES)
    for ceiling in ceilings:
        allowed &= ceiling
    awaiting = " (its case scopes await a second administrator's approval)" if pending else ""
    if requested is None or not requested.strip():
        granted = [s for s in scope_registry.SCOPES if s in allowed]
        if not granted:
            raise InvalidScopeError(
                description=f"No scope can be granted to this client{awaiting}."
            )
        return " ".join(granted)
    wanted = scope_registry.normalise(requested)
    outside = [s for s in wanted if s not in allowed]
    if outside:
        # Only registered scope names are echoed: authlib turns a description holding characters
        # RFC 6749 §5.2 excludes (e.g. non-ASCII) into a 500, and made-up text is no help.
        known = [s for s in outside if s in scope_registry.SCOPES]
        waiting = [s for s in known if s in pending]
        raise InvalidScopeError(
            description=("Scope not allowed: " + " ".join(known) if known else "Unknown scope.")
            + ("; awaiting approval: " + " ".join(waiting) if waiting else "")
        )
    return " ".join(wanted)


def _insert_once(session: Session, row: Any) -> bool:
    """Insert in a savepoint; False (and the request's transaction intact) on a duplicate."""
    try:
        with session.begin_nested():
            session.add(row)
    except IntegrityError:
        return False
    return True


# -- client authentication ------------------------------------------------------------------
class PrivateKeyJWT(JWTBearerClientAssertion):
    """`private_key_jwt` (RFC 7523 §2.2): a JWT signed with a key in the client's JWKS."""

    CLIENT_AUTH_METHOD = "private_key_jwt"

    def __init__(self, issuer: str, token_endpoint: str) -> None:
        super().__init__(validate_jti=True, leeway=assertions.CLOCK_SKEW)
        self.audiences = [issuer, token_endpoint]

    def get_audiences(self) -> list[str]:
        return list(self.audiences)

    def __call__(self, query_client: Any, request: Any) -> OAuthClient | None:
        form = request.form
        assertion = form.get("client_assertion")
        if form.get("client_assertion_type") != assertions.ASSERTION_TYPE or not assertion:
            return None  # not this method: authlib tries the next one
        try:
            _, unverified = assertions.peek(assertion)
            client_id = unverified.get("sub")
            if not isinstance(client_id, str) or len(client_id) > _ID_LENGTH:
                raise assertions.RejectedAssertion("The assertion's sub must be the client id.")
            if form.get("client_id") not in (None, client_id):
                raise assertions.RejectedAssertion("client_id and the assertion's sub differ.")
            client: OAuthClient | None = query_client(client_id)
            if client is None:
                raise InvalidClientError(description="The client does not exist on this server.")
            claims = assertions.verify(
                assertion,
                client.row.jwks,
                audiences=self.audiences,
                max_lifetime=CLIENT_ASSERTION_MAX_LIFETIME,
            )
            if claims["iss"] != client_id or claims["sub"] != client_id:
                raise assertions.RejectedAssertion("iss and sub must be the client id.")
        except assertions.RejectedAssertion as exc:
            raise InvalidClientError(description=str(exc)) from exc
        if not self.validate_jti(claims, claims["jti"]):
            raise InvalidClientError(description="The client assertion was already used.")
        request.client = client
        return client

    def validate_jti(self, claims: dict[str, Any], jti: str) -> bool:
        return assertions.consume_jti(
            get_session(), issuer=claims["iss"], jti=jti, exp=claims["exp"]
        )

    def resolve_client_public_key(self, client: OAuthClient) -> Any:
        # Unused: `__call__` selects the key itself (allowlisted algorithms, EdDSA alias).
        raise NotImplementedError


def _claimed_client_id(request: Any) -> str | None:
    """Who the failed caller said it was (never what it offered as proof)."""
    try:
        claimed, _ = extract_basic_authorization(request.headers)
    except (ValueError, TypeError):
        claimed = None
    claimed = claimed or request.form.get("client_id")
    if not claimed and request.form.get("client_assertion"):
        try:
            _, unverified = assertions.peek(request.form["client_assertion"])
        except assertions.RejectedAssertion:
            unverified = {}
        sub = unverified.get("sub")
        claimed = sub if isinstance(sub, str) else None
    return claimed[:_ID_LENGTH] if claimed else None


_UNKNOWN_CLIENT_PROBE = "casehub-unknown-client"  # hashed to spend time, never stored


def _offered_secret(request: Any) -> bool:
    """Whether the failed caller offered a client secret (Basic or in the form)."""
    try:
        _, secret = extract_basic_authorization(request.headers)
    except (ValueError, TypeError):
        secret = None
    return bool(secret or request.form.get("client_secret"))


def _presented_methods(request: Any) -> int:
    form = request.form
    return sum(
        (
            str(request.headers.get("Authorization", "")).lower().startswith("basic "),
            bool(form.get("client_secret")),
            bool(form.get("client_assertion")),
        )
    )


# -- grants -----------------------------------------------------------------------------------
class ClientCredentialsGrant(grants.ClientCredentialsGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = CLIENT_AUTH_METHODS

    def validate_requested_scope(self) -> None:
        client: OAuthClient = self.request.client
        client.granted_scope = grant_scope(
            self.request.payload.scope,
            frozenset(client.row.scopes),
            pending=frozenset(client.row.pending_scopes),
        )


class UserAssertionGrant(JWTBearerGrant):
    """RFC 7523 §2.1: a token for one of the client's agency's active users.

    The client authenticates as at every grant (secret or private_key_jwt): the assertion
    alone is not enough, even though it is signed with the client's key. The assertion names
    the client (`iss`), the user (`sub`: id or email), this server (`aud`), expires within 5
    minutes and is accepted once.
    """

    TOKEN_ENDPOINT_AUTH_METHODS = CLIENT_AUTH_METHODS

    def validate_token_request(self) -> None:
        client: OAuthClient = self.authenticate_token_endpoint_client()
        self.request.client = client
        if not client.check_grant_type(self.GRANT_TYPE):
            raise UnauthorizedClientError(
                "This grant needs a client that has registered public keys (JWKS)."
            )
        assertion = self.request.form.get("assertion")
        if not assertion:
            raise InvalidRequestError("Missing 'assertion' in request.")
        try:
            claims = assertions.verify(
                assertion,
                client.row.jwks,
                audiences=self.get_audiences(),
                max_lifetime=USER_ASSERTION_MAX_LIFETIME,
            )
        except assertions.RejectedAssertion as exc:
            raise InvalidGrantError(description=str(exc)) from exc
        if claims["iss"] != client.client_id:
            raise InvalidGrantError(description="The assertion's iss must be the client id.")
        user = self.authenticate_user(claims["sub"])
        if user is None:
            raise InvalidGrantError(description="The assertion's sub is not an active user here.")
        if not assertions.consume_jti(
            get_session(), issuer=client.client_id, jti=claims["jti"], exp=claims["exp"]
        ):
            raise InvalidGrantError(description="The assertion was already used.")
        self.request.user = user
        client.granted_scope = grant_scope(
            self.request.payload.scope,
            frozenset(client.row.scopes),
            scope_registry.for_roles(list(user.roles)),
            pending=frozenset(client.row.pending_scopes),
        )

    def get_audiences(self) -> list[str]:
        server: CasehubAuthorizationServer = self.server
        return [server.issuer, server.token_endpoint]

    def authenticate_user(self, subject: str) -> TokenUser | None:
        """An active user of the client's own agency, by id or by email."""
        client: OAuthClient = self.request.client
        condition: Any
        try:
            condition = User.id == uuid.UUID(subject)
        except ValueError:
            if "@" not in subject or len(subject) > 254:
                return None
            condition = User.email == subject.strip().lower()
        row = (
            get_session()
            .execute(
                select(User.id, User.roles).where(
                    condition, User.agency_code == client.row.agency_code, User.active
                )
            )
            .one_or_none()
        )
        return TokenUser(row.id, tuple(row.roles.split())) if row is not None else None

    def resolve_issuer_client(self, issuer: str) -> Any:
        # Unused: the client is the one that authenticated (and must equal `iss`).
        raise NotImplementedError

    def resolve_client_public_key(self, client: Any) -> Any:
        # Unused: the grant verifies the assertion against the client's registered JWKS itself
        # (casehub.auth.assertions), with the same algorithm allowlist as private_key_jwt.
        raise NotImplementedError

    def has_granted_permission(self, client: Any, user: Any) -> bool:
        return True  # authenticate_user only finds users of the client's own agency


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

    def get_extra_claims(
        self, client: OAuthClient, grant_type: str, user: TokenUser | None, scope: str
    ) -> dict[str, Any]:
        claims: dict[str, Any] = {"agency": client.row.agency_code}
        if user is not None:
            claims["roles"] = list(user.roles)
        return claims


# -- introspection and revocation ---------------------------------------------------------
class IssuedToken:
    """A verified access token as authlib's introspection and revocation endpoints see it.

    `actor` is what the token may do right now (None: revoked, or its client, user or agency
    is no longer active).
    """

    def __init__(self, claims: Any, actor: Actor | None) -> None:
        self.claims = claims
        self.actor = actor

    def check_client(self, client: OAuthClient) -> bool:
        return bool(self.claims["client_id"] == client.get_client_id())

    def is_expired(self) -> bool:
        return bool(self.claims["exp"] <= time.time())

    def is_revoked(self) -> bool:
        return self.actor is None


class _TokenLookup:
    validator: AccessTokenValidator

    def query_token(self, token_string: str, token_type_hint: str | None) -> IssuedToken | None:
        # The hint is only a hint (RFC 7009 §2.1): there are only access tokens here.
        try:
            claims = self.validator.authenticate_token(token_string)
        except InvalidTokenError:
            return None
        try:
            return IssuedToken(claims, load_actor(get_session(), claims))
        except Unauthorized:
            return IssuedToken(claims, None)


class Introspection(_TokenLookup, IntrospectionEndpoint):
    CLIENT_AUTH_METHODS = CLIENT_AUTH_METHODS

    def check_permission(self, token: IssuedToken, client: OAuthClient, request: Any) -> bool:
        # A partner system may introspect tokens issued within its own agency only.
        return bool(token.claims.get("agency") == client.row.agency_code)

    def introspect_token(self, token: IssuedToken) -> dict[str, Any]:
        actor = token.actor
        if actor is None:  # authlib asks only about live tokens; stay safe if that changes
            return {"active": False}
        names = ("client_id", "sub", "aud", "iss", "exp", "iat", "jti", "agency", "roles")
        payload = {name: token.claims[name] for name in names if name in token.claims}
        # What a resource call with the token would be allowed now: a scope taken from the
        # client, or a role from the user, since the token was issued no longer counts.
        payload["scope"] = " ".join(
            s for s in str(token.claims["scope"]).split() if actor.has_scope(s)
        )
        payload["active"] = True
        payload["token_type"] = "Bearer"  # noqa: S105 - the RFC 6750 token type, not a secret
        return payload


class Revocation(_TokenLookup, RevocationEndpoint):
    CLIENT_AUTH_METHODS = CLIENT_AUTH_METHODS

    def authenticate_token(self, request: Any, client: OAuthClient) -> IssuedToken | None:
        """Another client's token is left alone, with the same 200 as an unknown token (so
        the answer does not reveal whether a token string is valid)."""
        self.check_params(request, client)
        token = self.query_token(request.form["token"], request.form.get("token_type_hint"))
        if token is None or not token.check_client(client):
            return None
        return token

    def revoke_token(self, token: IssuedToken, request: Any) -> None:
        session = get_session()
        expires_at = datetime.fromtimestamp(token.claims["exp"], UTC)
        # Rows of tokens that have expired anyway are no longer needed.
        session.execute(delete(RevokedToken).where(RevokedToken.expires_at < datetime.now(UTC)))
        _insert_once(session, RevokedToken(jti=token.claims["jti"], expires_at=expires_at))
        client: OAuthClient = request.client
        audit.record(
            session,
            _actor(client),
            "token.revoke",
            resource_type="token",
            resource_id=token.claims["jti"],
        )


# -- the server -------------------------------------------------------------------------------
class CasehubAuthorizationServer(AuthorizationServer):
    def __init__(self, *, issuer: str) -> None:
        super().__init__()
        self.issuer = issuer
        self.token_endpoint = f"{issuer}/oauth/token"

    def query_client(self, client_id: str) -> OAuthClient | None:
        if not isinstance(client_id, str) or len(client_id) > _ID_LENGTH:
            return None
        row = (
            get_session()
            .execute(
                select(Client)
                .join(Agency, Agency.code == Client.agency_code)
                .where(Client.client_id == client_id, Client.active, Agency.active)
            )
            .scalar_one_or_none()
        )
        return OAuthClient(row) if row is not None else None

    def authenticate_client(
        self, request: Any, methods: list[str], endpoint: str = "token"
    ) -> OAuthClient:
        """Authlib's client authentication, plus: one method per request (RFC 6749 §2.3),
        every failure a 401 `invalid_client`, and every failure audited."""
        try:
            if _presented_methods(request) > 1:
                raise InvalidClientError(description="Use one client authentication method.")
            try:
                client: OAuthClient = super().authenticate_client(request, methods, endpoint)
            except UnicodeError as exc:  # Basic credentials that are not UTF-8
                raise InvalidClientError(description="Malformed client credentials.") from exc
        except InvalidClientError as error:
            error.status_code = 401
            self._audit_client_failure(request)
            raise
        return client

    def _audit_client_failure(self, request: Any) -> None:
        session = get_session()
        claimed = _claimed_client_id(request)
        agency = None
        if claimed is not None:
            agency = session.execute(
                select(Client.agency_code).where(Client.client_id == claimed)
            ).scalar_one_or_none()
        if agency is None and _offered_secret(request):
            # An unknown id must cost what a wrong secret costs (one scrypt), or the time of
            # the refusal says which client ids exist.
            hash_secret(_UNKNOWN_CLIENT_PROBE, n=current_app.config["CLIENT_SECRET_SCRYPT_N"])
        # An id that names no client is only what was typed: a secret or a child's name pasted
        # into the wrong field, as likely as a client id. The event keeps the ids of clients.
        known = claimed if agency is not None else None
        audit.record(
            session,
            AuditActor(agency, known),
            "auth.client_failed",
            outcome="denied",
            resource_type="client",
            resource_id=known,
        )

    def create_token_response(self, request: Any = None) -> Any:
        """Authlib's token endpoint, with refusals after client authentication audited."""
        oauth_request = self.create_oauth2_request(request)
        try:
            grant = self.get_token_grant(oauth_request)
        except UnsupportedGrantTypeError as error:
            return self.handle_error_response(oauth_request, error)
        try:
            grant.validate_token_request()
            return self.handle_response(*grant.create_token_response())
        except OAuth2Error as error:
            client = oauth_request.client
            if client is not None and not isinstance(error, InvalidClientError):
                audit.record(
                    get_session(),
                    _actor(client),
                    "token.refused",
                    outcome="denied",
                    resource_type="client",
                    resource_id=client.client_id,
                )
            return self.handle_error_response(oauth_request, error)

    def save_token(self, token: dict[str, Any], request: Any) -> None:
        """Access tokens are not stored (their `jti` is enough to revoke them); the issue is
        audited."""
        claims = json.loads(jws.extract_compact(token["access_token"].encode()).payload)
        audit.record(
            get_session(),
            _actor(request.client, request.user),
            "token.issue",
            resource_type="token",
            resource_id=claims["jti"],
        )


def init_app(
    app: Flask, keys: KeyStore, validator: AccessTokenValidator
) -> CasehubAuthorizationServer:
    issuer = app.config["ISSUER"]
    server = CasehubAuthorizationServer(issuer=issuer)
    server.init_app(app)
    server.register_client_auth_method(
        PrivateKeyJWT.CLIENT_AUTH_METHOD, PrivateKeyJWT(issuer, server.token_endpoint)
    )
    server.register_grant(ClientCredentialsGrant)
    server.register_grant(UserAssertionGrant)
    server.register_token_generator(
        "default",
        AccessTokenGenerator(
            keys, issuer=issuer, audience=app.config["AUDIENCE"], ttl=app.config["TOKEN_TTL"]
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
