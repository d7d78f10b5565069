"""The export's two renderings of a line: on PostgreSQL the database renders it
(casehub.audit.export), elsewhere, and for any event it leaves, Python does. The same events
give the same bytes either way, awkward values included."""

from __future__ import annotations

import csv
import io
import itertools
import json
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import JSON, Text, cast, func, insert, literal, select, text, true
from sqlalchemy.orm import Session

from casehub import audit
from casehub.audit import export
from casehub.audit.chain import sequence_all, sequence_pending
from casehub.models.audit import AuditChain, AuditEvent
from casehub.services import audit_queries
from casehub.services.audit_queries import (
    AUDIT_READ_ALL,
    CSV_COLUMNS,
    ROW_COLUMNS,
    AuditReach,
    Walk,
    event_dict,
    filtered,
    seq_window,
)
from tests.test_audit_concurrency import scratch_engine, scratch_url  # noqa: F401

EVERYTHING = AuditReach(AUDIT_READ_ALL, None)
BASE = datetime(2025, 3, 1, 9, 30, tzinfo=UTC)

PLAIN = {
    "actor_agency": "btp",
    "actor_client_id": "chc_btp",
    "actor_user_id": uuid.UUID(int=11),
    "action": "referral.read",
    "outcome": "allowed",
    "resource_type": "referral",
    "resource_id": str(uuid.UUID(int=12)),
    "referral_id": uuid.UUID(int=12),
    "subject_ids": [str(uuid.UUID(int=13)), str(uuid.UUID(int=14))],
    "basis": "lead",
    "purpose": "case_work",
    "request_id": "9f2c",
    "request_method": "GET",
    "request_path": "/v1/referrals/x",
    "request_status": 200,
    "request_ip": "192.0.2.1",
}
NULLABLE = [name for name, column in AuditEvent.__table__.columns.items() if column.nullable]
CONTROLS = "".join(chr(c) for c in range(1, 32)) + "\x7f"

# Each event is PLAIN with these values; an entry's subject_ids may be the stored JSON text.
AWKWARD: list[dict[str, object]] = [
    {},
    dict.fromkeys(NULLABLE),  # every nullable column NULL
    {"subject_ids": []},
    {"action": 'say "hi"', "resource_id": "a,b"},
    {"resource_id": "a,b"},  # one special character at a time, in turn
    {"request_path": '/v1/"x"'},
    {"actor_client_id": "back\\slash"},
    {"basis": "line\nbreak"},
    {"purpose": "cr\rlf"},
    {"request_ip": "\x1f"},
    {"request_id": "del\x7f"},  # not escaped by either
    {"request_path": '/v1/x?q=a,b&r="c",\\d', "actor_client_id": "back\\slash"},
    {"basis": "line\nbreak", "purpose": "cr\rlf", "request_id": "tab\tsep"},
    {"action": CONTROLS},
    {"resource_type": "", "request_ip": "", "resource_id": ""},
    {"actor_agency": "ünïcødé", "action": "emoji \U0001f600", "request_path": "/\u2028\u2029"},
    {"basis": "日本 \\u0041 \\n", "request_method": "  "},
    {"subject_ids": ["a b"]},
    {"subject_ids": ["a,b"]},
    {"subject_ids": ['q"uote', "back\\slash", "new\nline"]},
    {"subject_ids": ["ünï", "\U0001f600"]},
    {"subject_ids": '["a","b"]'},  # stored compactly
    {"subject_ids": '[ "a" ,\n"b" ]'},
    {"subject_ids": '["\\u00e9", "a\\/b"]'},  # escapes that Python decodes
    {"subject_ids": "[]"},
    {"occurred_at": BASE.replace(microsecond=0)},  # isoformat leaves the fraction out
    {"occurred_at": BASE.replace(microsecond=120000)},
    {},
]


def _subjects(value: object, is_postgres: bool) -> object:
    """subject_ids as stored: a list (SQLAlchemy writes json.dumps), or JSON text as given."""
    if not isinstance(value, str):
        return value
    if is_postgres:
        return cast(literal(value, Text), JSON)
    return json.loads(value)


@pytest.fixture
def awkward_events(db_session, is_postgres) -> int:
    rows = []
    for i, values in enumerate(AWKWARD):
        row = {**PLAIN, "id": uuid.UUID(int=1000 + i), "occurred_at": BASE + timedelta(i)}
        row.update(values)
        row["subject_ids"] = _subjects(row["subject_ids"], is_postgres)
        rows.append(row)
    for row in rows:
        db_session.execute(insert(AuditEvent).values(**row))
    sequence_pending(db_session.connection(), limit=1000)
    db_session.commit()  # the export reads in transactions of its own, as after a request
    return len(rows)


def _walk(db_session, filters: dict[str, object]) -> Walk:
    with db_session.begin():
        return filtered(EVERYTHING, filters, seq_window(db_session.connection(), filters))


def _python_export(db_session, walk: Walk, fmt: str, size: int) -> str:
    return "".join(audit_queries._python_chunks(db_session, walk, fmt, size))


WINDOWS = [{}, {"from": BASE + timedelta(2), "to": BASE + timedelta(days=9, hours=1)}]


@pytest.mark.parametrize("fmt", ["ndjson", "csv"])
@pytest.mark.parametrize("size", [1, 4, 1000])
@pytest.mark.parametrize("window", WINDOWS, ids=["all", "window"])
def test_postgresql_renders_the_bytes_python_renders(
    db_session, is_postgres, awkward_events, fmt, size, window
):
    if not is_postgres:
        pytest.skip("SQLite has only the Python rendering")
    walk = _walk(db_session, window)
    rendered = "".join(audit_queries._database_chunks(db_session, walk, fmt, size))
    expected = _python_export(db_session, walk, fmt, size)
    assert rendered.splitlines(keepends=True) == expected.splitlines(keepends=True)
    assert rendered == expected
    assert len(expected.splitlines()) >= (awkward_events if not window else 8)


@pytest.mark.parametrize("fmt", ["ndjson", "csv"])
def test_postgresql_renders_plain_events_itself_and_leaves_the_rest(
    db_session, is_postgres, awkward_events, fmt
):
    """The shortcut is taken for the common event, so the test above compares two renderings
    and not Python with itself."""
    if not is_postgres:
        pytest.skip("SQLite has only the Python rendering")
    walk = _walk(db_session, {})
    line = export.LINES[fmt]()
    rows = db_session.execute(
        walk.after(0).with_only_columns(AuditChain.seq, true().label("kept"), line)
    ).all()
    left = [seq for seq, _, line in rows if line is None]
    events = select(*ROW_COLUMNS).join(AuditEvent, AuditEvent.pos == AuditChain.event_pos)
    ids = {row.seq: row.id for row in db_session.execute(events)}
    plain = {uuid.UUID(int=1000 + i) for i, values in enumerate(AWKWARD) if not values}
    assert len(rows) == awkward_events
    assert 0 < len(left) < len(rows)
    assert len(plain) == 2 and not {ids[seq] for seq in left} & plain


def _expected_csv_fields(event: dict) -> list[str]:
    actor, resource, request = event["actor"], event["resource"], event["request"]
    values = [
        event["seq"],
        event["id"],
        event["occurred_at"],
        actor["agency"],
        actor["client_id"],
        actor["user_id"],
        event["action"],
        event["outcome"],
        resource["type"],
        resource["id"],
        event["referral_id"],
        " ".join(event["subject_ids"]),
        event["basis"],
        event["purpose"],
        request["id"],
        request["method"],
        request["path"],
        request["status"],
        request["ip"],
        event["prev_hash"],
        event["hash"],
    ]
    return ["" if value is None else str(value) for value in values]


def test_the_export_holds_every_awkward_value_on_every_backend(db_session, awkward_events):
    """What either rendering writes reads back as the stored events."""
    rows = db_session.execute(
        select(*ROW_COLUMNS).join(AuditEvent, AuditEvent.pos == AuditChain.event_pos)
    ).all()
    events = [event_dict(row) for row in sorted(rows, key=lambda row: row.seq)]
    upto = events[-1]["seq"]
    db_session.commit()
    ndjson = "".join(
        audit_queries.export_lines(
            db_session, reach=EVERYTHING, filters={}, fmt="ndjson", upto=upto, chunk=4
        )
    )
    assert [json.loads(line) for line in ndjson.split("\n")[:-1]] == events
    assert ndjson.endswith("}\n") and "\r" not in ndjson.replace("\\r", "")
    table = "".join(
        audit_queries.export_lines(
            db_session, reach=EVERYTHING, filters={}, fmt="csv", upto=upto, chunk=4
        )
    )
    parsed = list(csv.reader(io.StringIO(table, newline="")))
    assert parsed[0] == list(CSV_COLUMNS)
    assert parsed[1:] == [_expected_csv_fields(event) for event in events]
    assert events[1]["actor"] == {"agency": None, "client_id": None, "user_id": None}
    assert events[-3]["occurred_at"] == "2025-03-01T09:30:00+00:00"
    assert events[-2]["occurred_at"] == "2025-03-01T09:30:00.120000+00:00"


def test_an_export_left_unread_holds_no_transaction(scratch_engine):  # noqa: F811
    """While the client is slow, the next chunk is read ahead (on PostgreSQL) in a
    transaction of its own that has already ended: nothing holds a snapshot meanwhile."""
    with Session(scratch_engine) as session:
        for i in range(30):
            audit.record(session, type("Actor", (), {"agency": "btp"})(), f"read.{i}")
        audit.write_pending(session, None, status=200)
        session.commit()
    sequence_all(scratch_engine)
    with Session(scratch_engine) as session:
        upto = session.scalar(select(func.max(AuditChain.seq)))
        session.commit()
        body = audit_queries.export_lines(
            session, reach=EVERYTHING, filters={}, fmt="ndjson", upto=upto, chunk=4
        )
        first = next(body)
        time.sleep(0.2)  # the read-ahead has fetched the next chunk by now
        if scratch_engine.dialect.name == "postgresql":
            with scratch_engine.connect() as other:
                busy = other.execute(
                    text(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                        " AND pid <> pg_backend_pid()"
                        " AND (state <> 'idle' OR backend_xmin IS NOT NULL)"
                    )
                ).scalar()
            assert busy == 0
        rest = list(itertools.islice(body, 2))
        body.close()  # the client went away: the reader stops, the session stays usable
        assert session.scalar(select(func.count()).select_from(AuditChain)) == 30
    assert len(first.splitlines()) == 4 and [len(r.splitlines()) for r in rest] == [4, 4]
