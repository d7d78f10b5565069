"""The audit tables partitioned by time (PostgreSQL; SQLite keeps one table each): the migration
on data both ways, inserts that always find a partition, and rolls that cut all four tables at
one event while requests and the sequencer carry on."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from flask import Flask
from sqlalchemy import Engine, create_engine, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from casehub import audit, create_app, migrate
from casehub.audit import chain, partitions
from casehub.audit.checkpoints import CheckpointKey, app_key, sign_head
from casehub.audit.verify import verify, verify_tail
from casehub.cli import main
from casehub.db import make_engine
from casehub.models.audit import AuditChain


@pytest.fixture
def scratch_url(database_url: str, tmp_path: Path) -> Iterator[str]:
    """An empty database of the suite's kind, where commits are real (not migrated)."""
    if not database_url.startswith("postgresql"):
        yield f"sqlite:///{tmp_path / 'partitions.db'}"
        return
    base = make_url(database_url)
    name = f"casehub_parts_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def scratch_engine(scratch_url: str) -> Iterator[Engine]:
    engine = make_engine(scratch_url)
    yield engine
    engine.dispose()


@pytest.fixture
def pg_engine(scratch_engine: Engine) -> Engine:
    """A migrated scratch PostgreSQL database (the test is skipped on SQLite)."""
    if scratch_engine.dialect.name != "postgresql":
        pytest.skip("SQLite keeps one table per audit table: nothing is partitioned")
    migrate.upgrade(scratch_engine)
    return scratch_engine


@pytest.fixture
def key() -> CheckpointKey:
    return CheckpointKey.generate()


class Writer:
    def __init__(self, agency: str = "btp") -> None:
        self.agency = agency
        self.client_id = f"chc_{agency}"
        self.user_id = None
        self.purpose = None


def write(engine: Engine, count: int = 1, *, agency: str = "btp", **fields: Any) -> None:
    with Session(engine) as session:
        for _ in range(count):
            audit.record(
                session,
                Writer(agency),
                fields.get("action", "referral.read"),
                subject_ids=fields.get("subject_ids", [uuid.uuid4()]),
                basis="lead",
            )
        audit.write_pending(session, audit.RequestInfo("r", "GET", "/v1/x", None), status=200)
        session.commit()


def roll(engine: Engine) -> partitions.Roll:
    with partitions.maintenance(engine) as connection:
        return partitions.roll(connection)


def periods(engine: Engine) -> list[partitions.Period]:
    with engine.begin() as connection:
        return partitions.periods(connection)


def three_periods(engine: Engine, sizes: tuple[int, int, int] = (5, 3, 2)) -> None:
    """Events in two sealed periods and an open one, all chained."""
    for at, size in enumerate(sizes):
        write(engine, size)
        chain.sequence_all(engine)
        if at < len(sizes) - 1:
            roll(engine)


def verified(engine: Engine, key: CheckpointKey) -> dict[str, Any]:
    result = verify(engine, key=key)
    assert result.ok, result.as_dict()
    with engine.begin() as connection:
        tail = verify_tail(connection, key=key)
    assert tail.ok, tail.as_dict()
    return result.as_dict()


# -- the migration -----------------------------------------------------------------------------
def _partitioned(engine: Engine) -> dict[str, str]:
    with engine.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT c.relname, pg_get_partkeydef(c.oid) FROM pg_partitioned_table p"
                " JOIN pg_class c ON c.oid = p.partrelid"
            )
        ).all()
    return dict(rows)


def _snapshot(engine: Engine) -> dict[str, Any]:
    with engine.connect() as connection:
        return {
            table: connection.execute(text(f"SELECT * FROM {table} ORDER BY {order}")).all()
            for table, order in (
                ("audit_events", "pos"),
                ("audit_pending", "pos"),
                ("audit_chain", "seq"),
                ("audit_event_subjects", "seq, subject_id"),
                ("audit_event_agencies", "seq, agency"),
                ("audit_checkpoints", "id"),
            )
        }


def test_the_migration_keeps_every_row_both_ways(scratch_engine, key):
    migrate.upgrade(scratch_engine, "0012")
    write(scratch_engine, 4)
    chain.sequence_all(scratch_engine)
    with scratch_engine.begin() as connection:
        sign_head(connection, key)
    write(scratch_engine, 2)  # left pending across the migration
    before = _snapshot(scratch_engine)

    migrate.upgrade(scratch_engine)
    assert _snapshot(scratch_engine) == before
    postgres = scratch_engine.dialect.name == "postgresql"
    if postgres:
        assert _partitioned(scratch_engine) == {
            "audit_events": "RANGE (pos)",
            "audit_chain": "RANGE (seq)",
            "audit_event_subjects": "RANGE (seq)",
            "audit_event_agencies": "RANGE (seq)",
        }
    chain.sequence_all(scratch_engine)  # the queue survived, and the enqueue trigger works
    write(scratch_engine, 1)
    assert chain.sequence_all(scratch_engine) == 1
    assert verified(scratch_engine, key)["events"] == 7

    with scratch_engine.begin() as connection:
        from alembic import command

        command.downgrade(migrate.alembic_config(connection=connection), "0012")
    if postgres:
        assert _partitioned(scratch_engine) == {}
    write(scratch_engine, 1)
    assert chain.sequence_all(scratch_engine) == 1
    assert verify(scratch_engine, key=key).ok
    with scratch_engine.connect() as connection:
        assert connection.scalar(select(func.count()).select_from(AuditChain)) == 8
    migrate.upgrade(scratch_engine)
    assert verified(scratch_engine, key)["events"] == 8


@pytest.mark.parametrize("table", ["audit_events", "audit_chain", "audit_event_subjects"])
def test_every_partition_refuses_update_delete_and_truncate(pg_engine, table):
    three_periods(pg_engine)
    key = "pos" if table == "audit_events" else "seq"
    with pg_engine.connect() as connection:
        names = [p.name for p in partitions.partitions(connection, table)]
        holding = [
            name
            for name in names
            if connection.scalar(text(f"SELECT EXISTS (SELECT 1 FROM {name})"))
        ]
    assert len(holding) == 3
    for target in [table, *holding]:  # row triggers fire for the rows there are
        for sql in (f"UPDATE {target} SET {key} = {key}", f"DELETE FROM {target}"):
            with pytest.raises(DBAPIError, match="append-only"), pg_engine.begin() as c:
                c.execute(text(sql))
    for target in [table, *names]:  # and each partition refuses TRUNCATE on its own
        with pytest.raises(DBAPIError, match="append-only"), pg_engine.begin() as c:
            c.execute(text(f"TRUNCATE {target}"))


# -- every insert finds a partition ------------------------------------------------------------
def test_events_far_past_the_ranges_made_ahead_still_land(pg_engine, key):
    """Ranges cover 2**40 positions each and are made ahead; were the sequence ever beyond
    them, the DEFAULT partition takes the event: no request can fail for want of one."""
    write(pg_engine, 1)
    with pg_engine.begin() as connection:
        connection.execute(
            text("SELECT setval(pg_get_serial_sequence('audit_events', 'pos'), :v)"),
            {"v": 50 * partitions.POS_SPAN},
        )
    write(pg_engine, 2)
    assert chain.sequence_all(pg_engine) == 3
    with pg_engine.begin() as connection:
        assert partitions.default_holds_events(connection)
        # The chain tables' newest partition runs to MAXVALUE: any seq fits.
        assert all(
            partitions.partitions(connection, table)[-1].upper is None
            for table in partitions.CHAIN_TABLES
        )
    assert verified(pg_engine, key)["events"] == 3


def test_ensure_keeps_ranges_ahead_of_the_sequence(pg_engine):
    with pg_engine.connect() as connection:
        assert partitions.ensure_ahead(connection) == ["audit_events_p0002"]
        assert partitions.ensure_ahead(connection) == []
    roll(pg_engine)  # nothing to cut yet: the events partition moves on all the same
    with pg_engine.begin() as connection:
        assert partitions.current_index(connection) == 1
        names = [p.name for p in partitions.partitions(connection, "audit_events")]
    assert names == [f"audit_events_p000{i}" for i in range(4)] + ["audit_events_default"]


def test_a_roll_cuts_all_four_tables_at_one_event(pg_engine, key):
    write(pg_engine, 5)
    chain.sequence_all(pg_engine)
    write(pg_engine, 2)  # committed before the roll, not yet chained: the roll chains them
    done = roll(pg_engine)
    assert (done.cut_seq, done.chained) == (8, 2)
    assert done.cut_pos == partitions.POS_SPAN
    write(pg_engine, 3)
    chain.sequence_all(pg_engine)
    first, second = periods(pg_engine)
    assert (first.sealed, first.seq_from, first.seq_to) == (True, 1, 7)
    assert (second.sealed, second.seq_from, second.seq_to) == (False, 8, 10)
    assert first.events_partitions == ["audit_events_p0000"]
    assert second.events_partitions[0] == "audit_events_p0001"
    with pg_engine.connect() as connection:
        positions = connection.execute(
            select(AuditChain.seq, AuditChain.event_pos).order_by(AuditChain.seq)
        ).all()
    assert all((seq < 8) == (pos < partitions.POS_SPAN) for seq, pos in positions)
    verified(pg_engine, key)


def test_writers_racing_a_roll_neither_fail_nor_cross_the_cut(pg_engine, key):
    """Requests keep committing events while periods roll: none fails, and each period's
    chain partitions hold exactly the events of its events partitions."""
    stop = threading.Event()
    failures: list[BaseException] = []

    def keep_writing() -> None:
        try:
            while not stop.is_set():
                write(pg_engine, 2)
        except BaseException as error:
            failures.append(error)

    def keep_chaining() -> None:
        try:
            while not stop.is_set():
                if chain.sequence_once(pg_engine, wait=False) == 0:
                    stop.wait(0.01)
        except BaseException as error:
            failures.append(error)

    with ThreadPoolExecutor(4) as pool:
        work = [pool.submit(keep_writing) for _ in range(3)] + [pool.submit(keep_chaining)]
        for _ in range(3):
            roll(pg_engine)
        stop.set()
        for future in work:
            future.result()
    assert failures == []
    chain.sequence_all(pg_engine)
    found = periods(pg_engine)
    assert len(found) >= 3 and all(p.sealed for p in found[:-1])
    with pg_engine.connect() as connection:
        assert sum(p.events for p in found) == chain.chain_head(connection)[0]
    with pg_engine.connect() as connection:
        for period in found:
            low = period.pos_from if period.pos_from is not None else -1
            high = period.pos_until or 1 << 62
            outside = connection.scalar(
                select(func.count())
                .select_from(AuditChain)
                .where(
                    AuditChain.seq.between(period.seq_from, period.seq_to or 0),
                    (AuditChain.event_pos < low) | (AuditChain.event_pos >= high),
                )
            )
            assert outside == 0, period.as_dict()
    verified(pg_engine, key)


def test_an_interrupted_roll_is_undone_by_the_sequencer(pg_engine, key):
    """A roll that died between bounding the open chain partitions and swapping them leaves a
    constraint the next seq breaks: the background sequencer's failing pass frees it."""
    write(pg_engine, 3)
    chain.sequence_all(pg_engine)
    with pg_engine.begin() as connection:
        for part in partitions._open_chain_partitions(connection):
            connection.execute(
                text(
                    f"ALTER TABLE {part.name} ADD CONSTRAINT ck_{part.name}_cut "
                    "CHECK (seq < 4) NOT VALID"
                )
            )
    write(pg_engine, 2)
    with pytest.raises(psycopg.errors.CheckViolation):  # (the sequencer's COPY, unwrapped)
        chain.sequence_all(pg_engine)
    sequencer = chain.BackgroundSequencer(pg_engine, interval=0.01)
    thread = threading.Thread(target=sequencer.run)
    thread.start()
    try:
        for _ in range(500):
            with pg_engine.connect() as connection:
                if chain.pending_count(connection) == 0:
                    break
            threading.Event().wait(0.01)
    finally:
        sequencer._stop.set()
        thread.join()
    assert verified(pg_engine, key)["events"] == 5


def test_a_roll_is_due_when_the_current_partition_began_in_an_earlier_period(pg_engine):
    now = datetime(2026, 3, 2, 12, tzinfo=UTC)  # a Monday
    assert partitions.period_start(now, "day") == datetime(2026, 3, 2, tzinfo=UTC)
    assert partitions.period_start(now, "week") == datetime(2026, 3, 2, tzinfo=UTC)
    assert partitions.period_start(now - timedelta(days=1), "week") == datetime(
        2026, 2, 23, tzinfo=UTC
    )
    assert partitions.period_start(now, "month") == datetime(2026, 3, 1, tzinfo=UTC)
    with pg_engine.connect() as connection:
        assert not partitions.roll_due(connection, now=now, period="day")  # empty
    write(pg_engine, 1)
    with pg_engine.connect() as connection:
        today = datetime.now(UTC)
        assert not partitions.roll_due(connection, now=today, period="month")
        assert partitions.roll_due(connection, now=today + timedelta(days=40), period="month")
    result = partitions.ensure(pg_engine, now=datetime.now(UTC) + timedelta(days=2), period="day")
    assert result.rolled is not None  # and the event written before it is chained by it
    assert (result.rolled.chained, result.rolled.cut_seq) == (1, 2)
    result = partitions.ensure(pg_engine, now=datetime.now(UTC) + timedelta(days=2), period="day")
    assert result.rolled is None  # the new partition holds nothing yet


# -- the command -------------------------------------------------------------------------------
@pytest.fixture
def pg_app(pg_engine: Engine, scratch_url: str, tmp_path: Path) -> Iterator[Flask]:
    app = create_app(
        {
            "DATABASE_URL": scratch_url,
            "ISSUER": "http://casehub.test",
            "SIGNING_KEYS_FILE": str(tmp_path / "signing-keys.json"),
            "AUDIT_CHECKPOINT_KEY_FILE": str(tmp_path / "audit-key.pem"),
            "CLIENT_SECRET_SCRYPT_N": 2**10,
        }
    )
    app.config["TESTING"] = True
    app_key(app, create=True)
    yield app
    app.extensions["casehub.db"].engine.dispose()


def test_the_partitions_command_lists_ensures_and_rolls(pg_app):
    engine = pg_app.extensions["casehub.db"].engine
    write(engine, 3)
    chain.sequence_all(engine)
    runner = pg_app.test_cli_runner()
    listed = runner.invoke(main, ["audit", "partitions"])
    assert listed.exit_code == 0 and listed.output.startswith("p0000  open"), listed.output
    rolled = runner.invoke(main, ["audit", "partitions", "--ensure", "--roll"])
    assert rolled.exit_code == 0 and "rolled: events from pos" in rolled.output, rolled.output
    body = json.loads(runner.invoke(main, ["audit", "partitions", "--json"]).output)
    assert [(p["period"], p["sealed"], p["events"]) for p in body["periods"]] == [
        ("p0000", True, 3),
        ("p0001", False, 0),
    ]
    assert body["default_partition_holds_events"] is False
    assert runner.invoke(main, ["audit", "partitions", "--roll"]).exit_code == 2


def test_on_sqlite_nothing_is_partitioned(scratch_url, tmp_path):
    if not scratch_url.startswith("sqlite"):
        pytest.skip("the SQLite side")
    engine = make_engine(scratch_url)
    migrate.upgrade(engine)
    app = create_app(
        {
            "DATABASE_URL": scratch_url,
            "SIGNING_KEYS_FILE": str(tmp_path / "keys.json"),
            "AUDIT_CHECKPOINT_KEY_FILE": str(tmp_path / "audit-key.pem"),
        }
    )
    app_key(app, create=True)
    runner = app.test_cli_runner()
    listed = runner.invoke(main, ["audit", "partitions", "--ensure"])
    assert listed.exit_code == 0 and "nothing is partitioned" in listed.output
    engine.dispose()
    app.extensions["casehub.db"].engine.dispose()


def test_the_partition_period_is_a_day_a_week_or_a_month():
    from casehub import config

    assert config.load(environ={})["AUDIT_PARTITION_PERIOD"] == "month"
    assert (
        config.load(environ={"CASEHUB_AUDIT_PARTITION_PERIOD": "week"})["AUDIT_PARTITION_PERIOD"]
        == "week"
    )
    with pytest.raises(config.ConfigError, match="AUDIT_PARTITION_PERIOD"):
        config.load(environ={"CASEHUB_AUDIT_PARTITION_PERIOD": "year"})
