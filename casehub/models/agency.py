"""Agencies, their partner systems (OAuth clients) and their people (users)."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from casehub.db import Base, new_id, utcnow


class AgencyKind(enum.StrEnum):
    POLICE = "police"
    CHARITY = "charity"
    LOCAL_AUTHORITY = "local_authority"
    PROBATION = "probation"
    HEALTH = "health"
    EDUCATION = "education"
    OTHER = "other"


class Agency(Base):
    __tablename__ = "agencies"

    code: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(20))
    area: Mapped[str | None] = mapped_column(String(200))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    is_platform: Mapped[bool] = mapped_column(Boolean, default=False)
    tokens_not_before: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Client(Base):
    """A partner system. Its secret is kept only as a slow hash (see auth.secrets).

    `scope` is what its tokens may carry; `pending_scope` holds the case scopes a person asked
    for when registering it, which no token carries until a second administrator approves
    them (`approved_by_*`, the latest approval). `created_by_*` is null for a client the
    operator added with the CLI.
    """

    __tablename__ = "clients"

    client_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    agency_code: Mapped[str] = mapped_column(ForeignKey("agencies.code"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    secret_hash: Mapped[str | None] = mapped_column(String(255))
    scope: Mapped[str] = mapped_column(Text)
    pending_scope: Mapped[str] = mapped_column(Text, default="", server_default="")
    jwks: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    tokens_not_before: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by_client_id: Mapped[str | None] = mapped_column(String(64))
    created_by_user_id: Mapped[uuid.UUID | None]
    approved_by_agency: Mapped[str | None] = mapped_column(String(40))
    approved_by_client_id: Mapped[str | None] = mapped_column(String(64))
    approved_by_user_id: Mapped[uuid.UUID | None]
    approved_at: Mapped[datetime | None]

    @property
    def scopes(self) -> list[str]:
        return self.scope.split()

    @property
    def pending_scopes(self) -> list[str]:
        return self.pending_scope.split()


class User(Base):
    """A person acting through their agency's partner system (RFC 7523 jwt-bearer)."""

    __tablename__ = "users"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    agency_code: Mapped[str] = mapped_column(ForeignKey("agencies.code"), index=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    roles: Mapped[str] = mapped_column(String(200))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    tokens_not_before: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    @property
    def role_list(self) -> list[str]:
        return self.roles.split()


class RevokedToken(Base):
    """Access tokens refused before their expiry; kept until they would have expired."""

    __tablename__ = "revoked_tokens"

    jti: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(index=True)
    revoked_at: Mapped[datetime] = mapped_column(default=utcnow)


class UsedAssertion(Base):
    """`jti`s of client and jwt-bearer assertions already used: each is accepted once."""

    __tablename__ = "used_assertions"
    __table_args__ = (Index("ix_used_assertions_expires_at", "expires_at"),)

    issuer: Mapped[str] = mapped_column(String(64), primary_key=True)
    jti: Mapped[str] = mapped_column(String(255), primary_key=True)
    expires_at: Mapped[datetime]
