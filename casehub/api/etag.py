"""ETag / If-Match for records with a `version` (referrals, subjects)."""

from __future__ import annotations

import uuid

from flask import request

from casehub.errors import PreconditionRequired


def etag_for(record_id: uuid.UUID, version: int) -> str:
    return f'"{record_id.hex[:12]}-{version}"'


STALE = -1  # no record ever has this version, so the service answers 412 after its 404 check


def expected_version(record_id: uuid.UUID) -> int:
    """The version the caller's If-Match names; 428 when it is missing.

    An ETag that is not one of this record's is not refused here: the service looks the record
    up first (404 when invisible) and only then compares versions (412 when stale)."""
    header = request.headers.get("If-Match")
    if not header:
        raise PreconditionRequired("Send If-Match with the record's current ETag.")
    value = header.strip()
    if value.startswith("W/"):
        value = value[2:]
    prefix = f'"{record_id.hex[:12]}-'
    if not (value.startswith(prefix) and value.endswith('"')):
        return STALE
    try:
        return int(value[len(prefix) : -1])
    except ValueError:
        return STALE
