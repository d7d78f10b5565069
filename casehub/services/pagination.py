"""Keyset pagination with opaque cursors: stable under inserts, no OFFSET scans."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Select, tuple_
from sqlalchemy.orm import InstrumentedAttribute, Session

from casehub.errors import ValidationFailed

T = TypeVar("T")


def encode_cursor(values: Sequence[Any]) -> str:
    plain = [
        v.isoformat() if isinstance(v, datetime) else str(v) if isinstance(v, uuid.UUID) else v
        for v in values
    ]
    return (
        base64.urlsafe_b64encode(json.dumps(plain, separators=(",", ":")).encode())
        .decode()
        .rstrip("=")
    )


def decode_cursor(cursor: str, kinds: Sequence[type]) -> list[Any]:
    try:
        raw = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not isinstance(raw, list) or len(raw) != len(kinds):
            raise ValueError("shape")
        values: list[Any] = []
        for kind, value in zip(kinds, raw, strict=True):
            if kind is datetime:
                values.append(datetime.fromisoformat(value))
            elif kind is uuid.UUID:
                values.append(uuid.UUID(value))
            elif kind is int:
                values.append(int(value))
            else:
                values.append(str(value))
    except (ValueError, TypeError) as exc:
        raise ValidationFailed(
            "The cursor is not valid.", errors={"query": {"cursor": ["Not a valid cursor."]}}
        ) from exc
    return values


def keyset_page(
    session: Session,
    stmt: Select[tuple[T]],
    *,
    keys: Sequence[InstrumentedAttribute[Any]],
    limit: int,
    cursor: str | None,
) -> tuple[list[T], str | None]:
    """One page of `stmt` ordered by `keys` ascending, and the cursor of the next page."""
    kinds = [key.type.python_type for key in keys]
    if cursor:
        after = decode_cursor(cursor, kinds)
        stmt = stmt.where(tuple_(*keys) > tuple_(*after))
    rows = list(session.execute(stmt.order_by(*keys).limit(limit + 1)).scalars().unique())
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    last = rows[-1]
    return rows, encode_cursor([getattr(last, key.key) for key in keys])
