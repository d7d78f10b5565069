"""Who is calling: the identity behind a verified token, checked live against the database."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from casehub.auth import scopes as scope_registry
from casehub.errors import Unauthorized
from casehub.models import Agency, Client, RevokedToken, User

INVALID_TOKEN_CHALLENGE = 'Bearer realm="casehub", error="invalid_token"'  # noqa: S105


@dataclass(frozen=True)
class Actor:
    agency: str
    agency_kind: str
    is_platform: bool
    client_id: str
    user_id: uuid.UUID | None = None
    roles: tuple[str, ...] = ()
    scopes: frozenset[str] = field(default_factory=frozenset)
    jti: str | None = None
    purpose: str | None = None  # the Purpose-Of-Use the caller declared, if any

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes


def invalid_token(detail: str = "The access token is invalid, expired or revoked.") -> Unauthorized:
    return Unauthorized(detail, headers={"WWW-Authenticate": INVALID_TOKEN_CHALLENGE})


# Built once (building costs more CPU than running): the client, its agency and the revocation
# list, and for a user's token the user, in one SELECT.
_CLIENT_PRINCIPAL = (
    select(
        Client.active,
        Client.tokens_not_before,
        Client.scope,
        Agency.code,
        Agency.kind,
        Agency.active,
        Agency.is_platform,
        Agency.tokens_not_before,
        select(RevokedToken.jti)
        .where(RevokedToken.jti == bindparam("jti", type_=RevokedToken.jti.type))
        .exists(),
    )
    .join(Agency, Agency.code == Client.agency_code)
    .where(Client.client_id == bindparam("client_id", type_=Client.client_id.type))
)
_USER_PRINCIPAL = _CLIENT_PRINCIPAL.add_columns(
    User.id, User.active, User.agency_code, User.roles, User.tokens_not_before
).outerjoin(User, User.id == bindparam("user_id", type_=User.id.type))


def load_actor(session: Session, claims: Any, *, purpose: str | None = None) -> Actor:
    """Build the actor for verified claims; refuse revoked tokens and inactive principals.

    One query per request: the client, its agency, the user (for a user's token) and the
    revocation list. The token's scope is also narrowed to what the client and the user's
    roles allow *now*, so taking a scope or a role away takes effect at once.
    """
    user_id: uuid.UUID | None = None
    if claims.get("sub") != claims.get("client_id"):
        try:
            user_id = uuid.UUID(str(claims["sub"]))
        except ValueError as exc:
            raise invalid_token() from exc
    params: dict[str, Any] = {"jti": claims["jti"], "client_id": claims["client_id"]}
    if user_id is None:
        stmt = _CLIENT_PRINCIPAL
    else:
        stmt = _USER_PRINCIPAL
        params["user_id"] = user_id
    # Core on the session's connection: a plain SELECT needs none of the ORM's execution.
    row = session.connection().execute(stmt, params).one_or_none()
    if row is None:
        raise invalid_token()
    c_active, c_nbf, c_scope, agency, kind, a_active, platform, a_nbf, is_revoked = row[:9]
    if not c_active or not a_active or is_revoked or agency != claims.get("agency"):
        raise invalid_token()
    not_before = [t for t in (c_nbf, a_nbf) if t is not None]
    allowed = frozenset(c_scope.split())
    roles: tuple[str, ...] = ()
    if user_id is not None:
        found, u_active, u_agency, u_roles, u_nbf = row[9:]
        if found is None or not u_active or u_agency != agency:
            raise invalid_token()
        if u_nbf is not None:
            not_before.append(u_nbf)
        roles = tuple(u_roles.split())
        allowed &= scope_registry.for_roles(list(roles))
    issued = datetime.fromtimestamp(int(claims["iat"]), UTC)
    if any(issued < moment.replace(microsecond=0) for moment in not_before):
        raise invalid_token()
    return Actor(
        agency=agency,
        agency_kind=kind,
        is_platform=platform,
        client_id=claims["client_id"],
        user_id=user_id,
        roles=roles,
        scopes=frozenset(str(claims.get("scope") or "").split()) & allowed,
        jti=claims["jti"],
        purpose=purpose,
    )
