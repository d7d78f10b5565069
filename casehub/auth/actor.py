"""Who is calling: the identity behind a verified token, checked live against the database."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from casehub.errors import Unauthorized
from casehub.models import Agency, Client, RevokedToken, User


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
    return Unauthorized(detail, headers={"WWW-Authenticate": 'Bearer realm="casehub", error="invalid_token"'})


def load_actor(session: Session, claims: Any, *, purpose: str | None = None) -> Actor:
    """Build the actor for verified claims; refuse revoked tokens and inactive principals.

    One query per request: the client, its agency, the user (if any) and the revocation list.
    """
    user_id: uuid.UUID | None = None
    if claims.get("sub") != claims.get("client_id"):
        try:
            user_id = uuid.UUID(str(claims["sub"]))
        except ValueError as exc:
            raise invalid_token() from exc
    revoked = select(RevokedToken.jti).where(RevokedToken.jti == claims["jti"]).exists()
    row = session.execute(
        select(
            Client.active,
            Client.tokens_not_before,
            Agency.code,
            Agency.kind,
            Agency.active,
            Agency.is_platform,
            Agency.tokens_not_before,
            revoked,
        )
        .join(Agency, Agency.code == Client.agency_code)
        .where(Client.client_id == claims["client_id"])
    ).one_or_none()
    if row is None:
        raise invalid_token()
    c_active, c_nbf, agency, kind, a_active, platform, a_nbf, is_revoked = row
    issued = datetime.fromtimestamp(int(claims["iat"]), UTC)
    if not c_active or not a_active or is_revoked or agency != claims.get("agency"):
        raise invalid_token()
    not_before = [t for t in (c_nbf, a_nbf) if t is not None]
    if user_id is not None:
        user = session.execute(
            select(User.active, User.agency_code, User.tokens_not_before).where(User.id == user_id)
        ).one_or_none()
        if user is None or not user.active or user.agency_code != agency:
            raise invalid_token()
        if user.tokens_not_before is not None:
            not_before.append(user.tokens_not_before)
    if any(issued < moment.replace(microsecond=0) for moment in not_before):
        raise invalid_token()
    return Actor(
        agency=agency,
        agency_kind=kind,
        is_platform=platform,
        client_id=claims["client_id"],
        user_id=user_id,
        roles=tuple(claims.get("roles") or ()),
        scopes=frozenset(str(claims.get("scope") or "").split()),
        jti=claims["jti"],
        purpose=purpose,
    )
