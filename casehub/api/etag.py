"""ETag / If-Match for records with a `version` (referrals, subjects)."""

from __future__ import annotations

import uuid

from flask import request

from casehub.errors import PreconditionFailed, PreconditionRequired


def etag_for(record_id: uuid.UUID, version: int) -> str:
    return f'"{record_id.hex[:12]}-{version}"'


def expected_version(record_id: uuid.UUID) -> int:
    """The version the caller's If-Match names: 428 when missing, 412 when it is not ours.

    The service compares it with the current version (412 when stale)."""
    header = request.headers.get("If-Match")
    if not header:
        raise PreconditionRequired("Send If-Match with the record's current ETag.")
    value = header.strip()
    if value.startswith("W/"):
        value = value[2:]
    prefix = f'"{record_id.hex[:12]}-'
    if not (value.startswith(prefix) and value.endswith('"')):
        raise PreconditionFailed("If-Match does not match the record's current ETag.")
    try:
        return int(value[len(prefix) : -1])
    except ValueError as exc:
        raise PreconditionFailed("If-Match does not match the record's current ETag.") from exc
