"""The canonical record of a chained event and its SHA-256 hash (format version 1).

The record is one line of tab-separated fields, in this order:

    seq, prev_hash, id, occurred_at, actor_agency, actor_client_id, actor_user_id, action,
    outcome, resource_type, resource_id, referral_id, subject_ids, basis, purpose,
    request_id, request_method, request_path, request_status, request_ip

Each field is text: a missing value is `\\N`; in text values a backslash, backspace, form
feed, newline, carriage return, tab and vertical tab become `\\\\`, `\\b`, `\\f`, `\\n`, `\\r`,
`\\t`, `\\v` (PostgreSQL's COPY text escaping, so PostgreSQL can render the record itself and
verification stays fast); `occurred_at` is UTC as `YYYY-MM-DDTHH:MM:SS.ffffffZ`; ids are
lower-case hyphenated UUIDs; `subject_ids` is the JSON array exactly as stored. `hash` is the
lower-case hex SHA-256 of the record's UTF-8 bytes. The first event's `prev_hash` is 64 zeros.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

GENESIS_HASH = "0" * 64
NULL = "\\N"

# The event columns after `seq` and `prev_hash`, in record order.
EVENT_FIELDS: tuple[str, ...] = (
    "id",
    "occurred_at",
    "actor_agency",
    "actor_client_id",
    "actor_user_id",
    "action",
    "outcome",
    "resource_type",
    "resource_id",
    "referral_id",
    "subject_ids",
    "basis",
    "purpose",
    "request_id",
    "request_method",
    "request_path",
    "request_status",
    "request_ip",
)

_ESCAPES = str.maketrans(
    {"\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v"}
)
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
# The same rendering in PostgreSQL, for verification that lets the database build the record.
PG_TIME_FORMAT = 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'


def field_text(value: object) -> str:
    if value is None:
        return NULL
    if isinstance(value, str):
        return value.translate(_ESCAPES)
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime(TIME_FORMAT)
    if isinstance(value, int | uuid.UUID):
        return str(value)
    raise TypeError(f"no canonical form for {type(value).__name__}")


def record(seq: int, prev_hash: str, values: Sequence[object]) -> bytes:
    """The canonical record of one event; `values` follow EVENT_FIELDS."""
    fields = [str(seq), prev_hash]
    fields.extend(field_text(value) for value in values)
    return "\t".join(fields).encode()


def digest(record_bytes: bytes) -> str:
    return hashlib.sha256(record_bytes).hexdigest()
