"""Agencies, partner systems (clients) and people (users)."""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import Any

from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from sqlalchemy import select
from sqlalchemy.orm import Session

from casehub.auth import scopes as scope_registry
from casehub.auth.assertions import MIN_RSA_BITS, rsa_bits
from casehub.auth.secrets import generate_client_id, generate_secret, hash_secret
from casehub.errors import Conflict, ValidationFailed
from casehub.models import Agency, AgencyKind, Client, User
from casehub.services.pagination import keyset_page

AGENCY_CODE = re.compile(r"^[a-z0-9][a-z0-9-]{1,39}$")


def add_agency(
    session: Session,
    *,
    code: str,
    name: str,
    kind: str,
    area: str | None = None,
    is_platform: bool = False,
) -> Agency:
    if not AGENCY_CODE.match(code):
        raise ValidationFailed.field("code", "Must match ^[a-z0-9][a-z0-9-]{1,39}$.")
    if kind not in {k.value for k in AgencyKind}:
        raise ValidationFailed.field("kind", "Unknown agency kind.")
    if session.get(Agency, code) is not None:
        raise Conflict(f"Agency {code} already exists.")
    agency = Agency(
        code=code, name=name, kind=kind, area=area, active=True, is_platform=is_platform
    )
    session.add(agency)
    session.flush()
    return agency


def list_agencies(
    session: Session, *, limit: int, cursor: str | None
) -> tuple[list[Agency], str | None]:
    return keyset_page(session, select(Agency), keys=[Agency.code], limit=limit, cursor=cursor)


def add_client(
    session: Session,
    *,
    agency_code: str,
    name: str,
    scope: str,
    jwks: dict[str, Any] | None = None,
    with_secret: bool = True,
    scrypt_n: int = 2**14,
    hold_back: Collection[str] = (),
) -> tuple[Client, str | None]:
    """Register a partner system; return it and its secret, which is never retrievable again.

    Requested scopes in `hold_back` are stored as pending, for a second administrator to
    approve (services.admin); no token carries them meanwhile.
    """
    agency = session.get(Agency, agency_code)
    if agency is None:
        raise ValidationFailed.field("agency", "No such agency.")
    wanted = scope_registry.normalise(scope)
    bad = scope_registry.unknown(wanted)
    if bad or not wanted:
        raise ValidationFailed.field(
            "scopes", "Unknown scope: " + " ".join(bad) if bad else "At least one scope."
        )
    reserved = sorted(scope_registry.PLATFORM_ONLY.intersection(wanted))
    if reserved and not agency.is_platform:
        raise ValidationFailed.field(
            "scopes", f"{' '.join(reserved)}: for the platform agency only."
        )
    secret = generate_secret() if with_secret else None
    if jwks is not None:
        jwks = public_jwks(jwks)
    client = Client(
        client_id=generate_client_id(),
        agency_code=agency_code,
        name=name,
        scope=" ".join(s for s in wanted if s not in hold_back),
        pending_scope=" ".join(s for s in wanted if s in hold_back),
        secret_hash=hash_secret(secret, n=scrypt_n) if secret else None,
        jwks=jwks,
        active=True,
    )
    session.add(client)
    session.flush()
    return client, secret


PRIVATE_JWK_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "k", "oth"}


def public_jwks(jwks: dict[str, Any]) -> dict[str, Any]:
    """Validate a client's JWKS: public keys only, each importable, at most 10."""
    keys = jwks.get("keys") if isinstance(jwks, dict) else None
    if not isinstance(keys, list) or not 1 <= len(keys) <= 10:
        raise ValidationFailed.field("jwks", "A JWK Set with 1 to 10 keys.")
    for key in keys:
        if not isinstance(key, dict) or PRIVATE_JWK_MEMBERS & set(key):
            raise ValidationFailed.field("jwks", "Public keys only.")
        if key.get("kty") not in ("EC", "RSA", "OKP"):
            raise ValidationFailed.field("jwks", "Keys must be EC, RSA or OKP.")
        if key["kty"] == "RSA" and rsa_bits(key) < MIN_RSA_BITS:
            raise ValidationFailed.field("jwks", f"RSA keys need at least {MIN_RSA_BITS} bits.")
    try:
        KeySet.import_key_set({"keys": keys})
    except (JoseError, ValueError, TypeError) as exc:
        raise ValidationFailed.field("jwks", "A key could not be read.") from exc
    return {"keys": keys}


def add_user(
    session: Session, *, agency_code: str, email: str, name: str, roles: list[str]
) -> User:
    if session.get(Agency, agency_code) is None:
        raise ValidationFailed.field("agency", "No such agency.")
    bad = [r for r in roles if r not in scope_registry.ROLE_SCOPES]
    if bad or not roles:
        raise ValidationFailed.field(
            "roles", "Unknown role: " + " ".join(bad) if bad else "At least one role."
        )
    email = email.strip().lower()
    if session.execute(select(User.id).where(User.email == email)).first() is not None:
        raise Conflict("A user with this email already exists.")
    user = User(
        agency_code=agency_code, email=email, name=name, roles=" ".join(dict.fromkeys(roles))
    )
    session.add(user)
    session.flush()
    return user
