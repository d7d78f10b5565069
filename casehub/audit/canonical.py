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
import re
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

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
_NEEDS_ESCAPE = re.compile(r"[\\\b\f\n\r\t\v]")
# The same rendering in PostgreSQL, for verification that lets the database build the record.
PG_TIME_FORMAT = 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'


def _text(value: str) -> str:
    return value.translate(_ESCAPES) if _NEEDS_ESCAPE.search(value) else value


def _time(value: datetime) -> str:
    """UTC as YYYY-MM-DDTHH:MM:SS.ffffffZ (always six fractional digits)."""
    utc = value.astimezone(UTC).replace(tzinfo=None)
    return utc.isoformat(timespec="microseconds") + "Z"


# Dispatch on the exact type: the sequencer renders every field of every event.
_RENDER: dict[type, Callable[[Any], str]] = {
    str: _text,
    uuid.UUID: str,
    int: str,
    datetime: _time,
}


def field_text(value: object) -> str:
    if value is None:
        return NULL
    render = _RENDER.get(type(value))
    if render is None:
        if isinstance(value, bool) or not isinstance(value, str | int | uuid.UUID | datetime):
            raise TypeError(f"no canonical form for {type(value).__name__}")
        render = _RENDER[next(t for t in _RENDER if isinstance(value, t))]
    return render(value)


def record(seq: int, prev_hash: str, values: Sequence[object]) -> bytes:
    """The canonical record of one event; `values` follow EVENT_FIELDS."""
    fields = [str(seq), prev_hash]
    fields.extend(NULL if value is None else field_text(value) for value in values)
    return "\t".join(fields).encode()


def digest(record_bytes: bytes) -> str:
    return hashlib.sha256(record_bytes).hexdigest()
