"""The export's lines rendered by PostgreSQL, byte for byte as casehub.services.audit_queries
renders them in Python (an NDJSON line of `event_dict`, or the flattened CSV row), so that a
million events stream without a Python object per field.

The database renders the common event only: one whose text values hold nothing that either
format escapes or quotes (`"`, `\\`, a control character, a comma) and whose `subject_ids` is
an array of plain strings (subject ids are UUIDs). For any other event the line is NULL and the
caller renders it in Python: what a line looks like is decided once, by the Python rendering,
and this is only a shortcut to the same bytes (tests/test_audit_export.py holds them equal).
"""

from __future__ import annotations

from functools import reduce
from typing import Any

from sqlalchemy import ColumnElement, Select, Text, and_, case, cast, func, literal_column, select
from sqlalchemy.dialects.postgresql import aggregate_order_by

from casehub.models.audit import AuditChain, AuditEvent

# An array of plain strings, as stored by casehub.audit.record (json.dumps: `", "` between
# items) or written compactly: each item can be copied as it stands into the NDJSON line and,
# joined by spaces, into a CSV field that needs no quoting.
_PLAIN_ITEM = r'"[^"\\\x01-\x20,]*"'
PLAIN_SUBJECT_IDS = rf"^\[(?:{_PLAIN_ITEM}(?:, ?{_PLAIN_ITEM})*)?\]$"
# `datetime.isoformat()` of a UTC time: microseconds only when there are any.
_TIME_FORMAT = 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"'

# Every text value of a line but the times and ids (which need no escaping in either format).
TEXT_VALUES = (
    AuditEvent.actor_agency,
    AuditEvent.actor_client_id,
    AuditEvent.action,
    AuditEvent.outcome,
    AuditEvent.resource_type,
    AuditEvent.resource_id,
    AuditEvent.basis,
    AuditEvent.purpose,
    AuditEvent.request_id,
    AuditEvent.request_method,
    AuditEvent.request_path,
    AuditEvent.request_ip,
    AuditChain.prev_hash,
    AuditChain.hash,
)

_Part = ColumnElement[Any] | str


def _sql(text: str) -> ColumnElement[str]:
    """A constant string written into the statement (not a bound parameter)."""
    return literal_column("'" + text.replace("'", "''") + "'", Text)


def _concat(*parts: _Part) -> ColumnElement[str]:
    """`a || b || …`: NULL if any part is NULL (which is how a line becomes NULL)."""
    elements = [_sql(part) if isinstance(part, str) else part for part in parts]
    return reduce(lambda left, right: left.op("||", return_type=Text)(right), elements)


def _text(column: Any) -> ColumnElement[str]:
    return cast(column, Text)


def _plain(values: tuple[Any, ...]) -> ColumnElement[bool]:
    """Whether no value holds a character that JSON escapes (`"`, `\\`, control characters)
    or that makes csv.writer quote a field (those, and a comma).

    One to_json over them all, whose output holds a backslash exactly when it escaped
    something (commas are made backslashes first, so that they count too): PostgreSQL looks up
    the type's output function on every call of to_json, which costs more than the escaping,
    and a regular expression per value costs more still."""
    joined = _concat(*(func.coalesce(value, _sql("")) for value in values))
    escaped = _text(func.to_json(func.replace(joined, _sql(","), _sql("\\"))))
    return func.strpos(escaped, _sql("\\")) == literal_column("0")


def _time(column: Any) -> ColumnElement[str]:
    utc = func.to_char(func.timezone(_sql("UTC"), column), _sql(_TIME_FORMAT))
    return func.replace(utc, _sql(".000000+"), _sql("+"))


def _subject_ids(json_array: Any) -> ColumnElement[str]:
    """The stored array, when plain, in the compact form of json.dumps; otherwise NULL."""
    stored = _text(json_array)
    return case(
        (stored.op("~")(_sql(PLAIN_SUBJECT_IDS)), func.replace(stored, _sql('", "'), _sql('","')))
    )


# -- NDJSON ------------------------------------------------------------------------------------
def _json(column: Any) -> ColumnElement[str]:
    """A JSON string of a plain value (nothing to escape), or null."""
    return func.coalesce(_concat('"', _text(column), '"'), _sql("null"))


def _json_int(column: Any) -> ColumnElement[str]:
    return func.coalesce(_text(column), _sql("null"))


def ndjson_line() -> ColumnElement[str]:
    """`_NDJSON.encode(event_dict(row)) + "\\n"`, keys in the same order; NULL unless plain."""
    event, chain = AuditEvent, AuditChain
    line = _concat(
        '{"id":',
        _json(event.id),
        ',"seq":',
        _text(chain.seq),
        ',"occurred_at":"',
        _time(event.occurred_at),
        '","actor":{"agency":',
        _json(event.actor_agency),
        ',"client_id":',
        _json(event.actor_client_id),
        ',"user_id":',
        _json(event.actor_user_id),
        '},"action":',
        _json(event.action),
        ',"outcome":',
        _json(event.outcome),
        ',"resource":{"type":',
        _json(event.resource_type),
        ',"id":',
        _json(event.resource_id),
        '},"referral_id":',
        _json(event.referral_id),
        ',"subject_ids":',
        _subject_ids(event.subject_ids),
        ',"basis":',
        _json(event.basis),
        ',"purpose":',
        _json(event.purpose),
        ',"request":{"id":',
        _json(event.request_id),
        ',"method":',
        _json(event.request_method),
        ',"path":',
        _json(event.request_path),
        ',"status":',
        _json_int(event.request_status),
        ',"ip":',
        _json(event.request_ip),
        '},"prev_hash":',
        _json(chain.prev_hash),
        ',"hash":',
        _json(chain.hash),
        "}\n",
    )
    return case((_plain(TEXT_VALUES), line))


# -- CSV ---------------------------------------------------------------------------------------
def _csv(column: Any) -> ColumnElement[str]:
    """A plain field (nothing to quote); empty for NULL."""
    return func.coalesce(_text(column), _sql(""))


def csv_line() -> ColumnElement[str]:
    """The CSV_COLUMNS row of one event as csv.writer writes it (lineterminator `\\r\\n`);
    NULL unless plain."""
    event, chain = AuditEvent, AuditChain
    subjects = func.translate(_subject_ids(event.subject_ids), _sql(', []"'), _sql(" "))
    fields = [
        _text(chain.seq),
        _csv(event.id),
        _time(event.occurred_at),
        _csv(event.actor_agency),
        _csv(event.actor_client_id),
        _csv(event.actor_user_id),
        _csv(event.action),
        _csv(event.outcome),
        _csv(event.resource_type),
        _csv(event.resource_id),
        _csv(event.referral_id),
        subjects,  # space-separated
        _csv(event.basis),
        _csv(event.purpose),
        _csv(event.request_id),
        _csv(event.request_method),
        _csv(event.request_path),
        _csv(event.request_status),
        _csv(event.request_ip),
        _csv(chain.prev_hash),
        _csv(chain.hash),
    ]
    separated: list[_Part] = []
    for field in fields:
        separated.extend((field, ","))
    separated[-1] = "\r\n"
    return case((_plain(TEXT_VALUES), _concat(*separated)))


LINES = {"ndjson": ndjson_line, "csv": csv_line}


def joined(chunk: Select[Any]) -> Select[Any]:
    """One row for a chunk of (seq, kept, line) rows: how many rows it walked, its last seq,
    its kept lines joined in seq order, and how many kept lines it left NULL (for Python)."""
    rows = chunk.subquery("chunk")
    lines = func.string_agg(rows.c.line, aggregate_order_by(_sql(""), rows.c.seq))
    return select(
        func.count(),
        func.max(rows.c.seq),
        lines.filter(rows.c.kept),
        func.count().filter(and_(rows.c.kept, rows.c.line.is_(None))),
    )
