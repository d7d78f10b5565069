"""The audit reach index (audit_event_agencies): written by the sequencer and by migration
0007's backfill, alike; an older release's gaps filled; the time marks in seq order."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import Engine, create_engine, delete, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from casehub import audit, migrate
from casehub.audit.chain import sequence_all, sequence_pending
from casehub.db import make_engine
from casehub.models import Referral, Subject
from casehub.models.audit import REACH_ALL, AuditEventAgency
from casehub.services import agencies as agency_service

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


class Actor:
    def __init__(self, agency: str | None, client_id: str = "chc_x", user_id=None) -> None:
        self.agency = agency
        self.client_id = client_id
        self.user_id = user_id
        self.purpose = None


def record(session: Session, agency: str | None, referral_id=None, *, at=None, **fields) -> None:
    event = audit.record(
        session,
        Actor(agency, fields.pop("client_id", f"chc_{agency}"), fields.pop("user_id", None)),
        fields.pop("action", "referral.read"),
        referral_id=referral_id,
        **fields,
    )
    if at is not None:
        event.occurred_at = at
    audit.write_pending(session, None, status=200)


def add_referral(session: Session, lead: str) -> uuid.UUID:
    subject = Subject(given_name="Jay", family_name="Doe", created_by_agency=lead)
    session.add(subject)
    session.flush()
    referral = Referral(
        reference=f"R-{uuid.uuid4().hex[:10]}",
        subject_id=subject.id,
        lead_agency=lead,
        created_by_agency=lead,
        created_by_client_id=f"chc_{lead}",
        summary="A boy seen travelling alone.",
        observed_at=T0,
        risk_level="high",
        status="open",
    )
    session.add(referral)
    session.flush()
    return referral.id


def reach_rows(connection) -> list[tuple]:
    reach = AuditEventAgency
    columns = [getattr(reach, column.key) for column in reach.__table__.columns]
    return [
        tuple(row)
        for row in connection.execute(select(*columns).order_by(reach.seq, reach.agency)).all()
    ]


def agencies_by_seq(connection) -> dict[int, set[str]]:
    out: dict[int, set[str]] = {}
    for seq, agency in connection.execute(
        select(AuditEventAgency.seq, AuditEventAgency.agency)
    ).all():
        out.setdefault(seq, set()).add(agency)
    return out


# -- the sequencer -----------------------------------------------------------------------------
def test_the_sequencer_writes_each_event_under_every_agency_that_reaches_it(db_session):
    for code in ("btp", "tcs"):
        agency_service.add_agency(db_session, code=code, name=code, kind="police")
    led_by_btp = add_referral(db_session, "btp")
    user = uuid.uuid4()
    record(db_session, "btp", led_by_btp)  # the lead's own actor: one row
    record(db_session, "tcs", led_by_btp, user_id=user, outcome="denied", action="access.denied")
    record(db_session, None, led_by_btp)  # no actor agency: the lead only
    record(db_session, "tcs")  # no referral: its actor only
    record(db_session, None, uuid.uuid4())  # neither (an unknown referral)
    assert sequence_pending(db_session.connection(), limit=1000) == 5

    connection = db_session.connection()
    assert agencies_by_seq(connection) == {
        1: {REACH_ALL, "btp"},
        2: {REACH_ALL, "tcs", "btp"},
        3: {REACH_ALL, "btp"},
        4: {REACH_ALL, "tcs"},
        5: {REACH_ALL},
    }
    for row in db_session.scalars(select(AuditEventAgency).where(AuditEventAgency.seq == 2)):
        assert (row.actor_agency, row.actor_client_id, row.actor_user_id) == (
            "tcs",
            "chc_tcs",
            user,
        )
        assert (row.action, row.outcome, row.referral_id) == ("access.denied", "denied", led_by_btp)
        # Only the rows under REACH_ALL carry the time marks.
        assert (row.occurred_max is None) == (row.agency != REACH_ALL)


def test_the_time_marks_keep_the_latest_time_and_the_most_an_event_came_late(db_session):
    times = [T0, T0 + timedelta(seconds=5), T0 + timedelta(seconds=2), T0 + timedelta(seconds=6)]
    for at in times:
        record(db_session, "btp", at=at)
        sequence_pending(db_session.connection(), limit=1)  # one per pass: marks carry over
    record(db_session, "btp", at=T0 + timedelta(seconds=1))
    record(db_session, "btp", at=T0 + timedelta(seconds=7))
    sequence_pending(db_session.connection(), limit=1000)
    marks = db_session.execute(
        select(AuditEventAgency.occurred_max, AuditEventAgency.late_max_us)
        .where(AuditEventAgency.agency == REACH_ALL)
        .order_by(AuditEventAgency.seq)
    ).all()
    second = 1_000_000
    assert [tuple(m) for m in marks] == [
        (T0, 0),
        (T0 + timedelta(seconds=5), 0),
        (T0 + timedelta(seconds=5), 3 * second),
        (T0 + timedelta(seconds=6), 3 * second),
        (T0 + timedelta(seconds=6), 5 * second),
        (T0 + timedelta(seconds=7), 5 * second),
    ]


def test_events_an_older_release_chained_are_indexed_before_new_ones(db_session):
    agency_service.add_agency(db_session, code="btp", name="btp", kind="police")
    referral = add_referral(db_session, "btp")
    for agency in ("btp", "tcs", "tcs"):
        record(db_session, agency, referral)
    sequence_pending(db_session.connection(), limit=1000)
    connection = db_session.connection()
    expected = reach_rows(connection)
    # An older release chains without writing reach rows: its last two events have none.
    connection.execute(delete(AuditEventAgency).where(AuditEventAgency.seq > 1))
    record(db_session, "tcs", referral)
    assert sequence_pending(connection, limit=1000) == 2 + 1
    after = reach_rows(connection)
    assert after[: len(expected)] == expected
    assert agencies_by_seq(connection)[4] == {REACH_ALL, "tcs", "btp"}

    # A gap larger than a pass is indexed over several passes before anything new is chained.
    connection.execute(delete(AuditEventAgency))
    record(db_session, "btp")
    assert sequence_pending(connection, limit=3) == 3  # seq 1-3 indexed
    assert sequence_pending(connection, limit=3) == 2  # seq 4 indexed, seq 5 chained
    assert reach_rows(connection)[: len(after)] == after
    assert agencies_by_seq(connection)[5] == {REACH_ALL, "btp"}


# -- migration 0007 ----------------------------------------------------------------------------
@pytest.fixture
def scratch_engine(database_url: str, tmp_path: Path) -> Iterator[Engine]:
    """An empty database of the suite's kind, where commits are real, dropped afterwards."""
    if not database_url.startswith("postgresql"):
        engine = make_engine(f"sqlite:///{tmp_path / 'reach.db'}")
        yield engine
        engine.dispose()
        return
    url = make_url(database_url)
    name = f"casehub_reach_{uuid.uuid4().hex[:12]}"
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    engine = make_engine(url.set(database=name).render_as_string(hide_password=False))
    try:
        yield engine
    finally:
        engine.dispose()
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _migrate(engine: Engine, how: str, revision: str) -> None:
    with engine.begin() as connection:
        getattr(command, how)(migrate.alembic_config(connection=connection), revision)


def test_the_backfill_writes_what_the_sequencer_would_have(scratch_engine):
    migrate.upgrade(scratch_engine)
    with Session(scratch_engine) as session:
        for code in ("btp", "tcs", "notts-cs"):
            agency_service.add_agency(session, code=code, name=code, kind="police")
        first = add_referral(session, "btp")
        second = add_referral(session, "notts-cs")
        session.commit()
        plan = [
            ("btp", first, T0),
            ("tcs", first, T0 + timedelta(seconds=3)),
            ("tcs", None, T0 + timedelta(seconds=1)),  # late by 2 s
            (None, second, T0 + timedelta(seconds=4)),
            ("notts-cs", second, T0 + timedelta(milliseconds=3500, microseconds=7)),
            ("btp", uuid.uuid4(), T0 + timedelta(seconds=5)),
        ]
        for agency, referral, at in plan:
            record(session, agency, referral, at=at, user_id=uuid.uuid4() if agency else None)
            session.commit()
    sequence_all(scratch_engine, limit=2)
    with scratch_engine.connect() as connection:
        by_sequencer = reach_rows(connection)
    assert len(by_sequencer) == 6 + 5 + 2  # every event; its actors' agencies; two leads

    _migrate(scratch_engine, "downgrade", "0006")
    with scratch_engine.connect() as connection:
        assert "audit_event_agencies" not in {
            name for (name,) in connection.execute(text(_TABLES[scratch_engine.dialect.name]))
        }
    _migrate(scratch_engine, "upgrade", "0007")
    with scratch_engine.connect() as connection:
        assert reach_rows(connection) == by_sequencer
    migrate.upgrade(scratch_engine)


_TABLES = {
    "postgresql": "SELECT tablename FROM pg_tables WHERE schemaname = 'public'",
    "sqlite": "SELECT name FROM sqlite_master WHERE type = 'table'",
}
