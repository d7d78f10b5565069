"""Responses kept for `Idempotency-Key` replays."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Integer, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from casehub.db import Base, utcnow


class IdempotencyRecord(Base):
    """The first response, and what it gave access to: a replay is authorised again against the
    record it created (a referral or child the caller may no longer see answers 404) and audited
    with the same resource and children as the original."""

    __tablename__ = "idempotency_records"

    client_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    status: Mapped[int] = mapped_column(Integer)
    headers: Mapped[dict[str, Any]] = mapped_column(JSON)
    body: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(index=True)
    audit_action: Mapped[str | None] = mapped_column(String(60))
    resource_type: Mapped[str | None] = mapped_column(String(30))
    resource_id: Mapped[str | None] = mapped_column(String(64))
    referral_id: Mapped[uuid.UUID | None]
    subject_ids: Mapped[list[str] | None] = mapped_column(JSON)
