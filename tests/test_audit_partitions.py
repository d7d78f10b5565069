"""The audit tables partitioned by time (PostgreSQL; SQLite keeps one table each): the migration
on data both ways, inserts that always find a partition, rolls that cut all four tables at one
event while requests and the sequencer carry on, and archives: each sealed period goes to a
signed file that verifies on its own, its partitions are dropped, and the chain in the database
still verifies from the newest archive's head while the sequencer links new events on."""

from __future__ import annotations

import gzip
import hashlib
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
from cryptography.hazmat.primitives import serialization
from flask import Flask
from sqlalchemy import Engine, create_engine, func, insert, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from casehub import audit, create_app, migrate
from casehub.audit import archive, chain, partitions
from casehub.audit.checkpoints import CheckpointKey, app_key, sign_head
from casehub.audit.verify import STREAMS, CopyStream, _shares, copy_sql, verify, verify_tail
from casehub.cli import main
from casehub.db import make_engine
from casehub.models.audit import AuditArchive, AuditChain


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
    # (verified once upgraded again: this release reads audit_archives, which 0014 adds)
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
    archived = runner.invoke(
        main, ["audit", "archive", "--before", "2030-01-01", "--to", str(tmp_path / "out")]
    )
    assert archived.exit_code == 2 and "no period to archive" in archived.output
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


# -- archives ----------------------------------------------------------------------------------
TOMORROW = datetime.now(UTC) + timedelta(days=1)


def run_archive(engine: Engine, key: CheckpointKey, directory: Path, **options):
    options.setdefault("before", TOMORROW)
    return archive.archive(engine, key=key, directory=directory, **options)


def tables(engine: Engine) -> set[str]:
    with engine.connect() as connection:
        return set(
            connection.scalars(
                text("SELECT tablename FROM pg_tables WHERE tablename LIKE 'audit_%'")
            )
        )


def test_sealed_periods_go_to_files_and_the_chain_verifies_from_their_end(pg_engine, key, tmp_path):
    three_periods(pg_engine, (5, 3, 2))
    with pg_engine.begin() as connection:
        sign_head(connection, key)  # a checkpoint at seq 10, in the open period
    first = periods(pg_engine)
    assert [(p.name, p.sealed, p.seq_from, p.seq_to) for p in first] == [
        ("p0000", True, 1, 5),
        ("p0001", True, 6, 8),
        ("p0002", False, 9, 10),
    ]

    planned, made = run_archive(pg_engine, key, tmp_path)

    assert [m.period for m in made] == ["p0000", "p0001"] == [p.period.name for p in planned]
    assert [(m.seq_from, m.seq_to, m.events) for m in made] == [(1, 5, 5), (6, 8, 3)]
    present = tables(pg_engine)
    for period in first[:2]:
        for _, name in period.partitions():
            assert name not in present
    assert "audit_chain_p0002" in present
    assert [p.name for p in periods(pg_engine)] == ["p0002"]

    result = verify(pg_engine, key=key)
    assert result.ok, result.as_dict()
    assert (result.from_seq, result.archived_seq, result.events) == (8, 8, 2)
    with pg_engine.begin() as connection:
        tail = verify_tail(connection, key=key)
    assert tail.ok and tail.archived_seq == 8, tail.as_dict()

    # Each file checks out on its own, and they link up: the second begins where the first ends.
    files = [archive.verify_file(Path(m.file), key) for m in made]
    assert all(f.ok for f in files), [f.as_dict() for f in files]
    assert files[0].prev_hash == "0" * 64 and files[1].prev_hash == files[0].head_hash
    assert (files[0].events, files[1].events) == (5, 3)

    # The sequencer links new events to the head, which stayed in the database.
    write(pg_engine, 2)
    assert chain.sequence_all(pg_engine) == 2
    again = verify(pg_engine, key=key)
    assert again.ok and again.events == 4, again.as_dict()


def test_an_archive_file_says_what_it_holds_in_its_header(pg_engine, key, tmp_path):
    three_periods(pg_engine, (4, 1, 1))
    with pg_engine.begin() as connection:
        checkpoint = sign_head(connection, key, (3, chain_hash(connection, 3)))
    _, made = run_archive(pg_engine, key, tmp_path)
    with gzip.open(made[0].file, "rb") as handle:
        lines = handle.read().splitlines()
    header, records, trailer = json.loads(lines[0]), lines[1:-1], json.loads(lines[-1])
    assert header["period"] == "p0000" and header["seq"] == {"from": 1, "to": 4}
    assert header["events"] == 4 == len(records)
    assert header["fields"][:4] == ["seq", "prev_hash", "id", "occurred_at"]
    assert [c["id"] for c in header["checkpoints"]] == [checkpoint.id]
    assert [int(r.split(b"\t")[1]) for r in records] == [1, 2, 3, 4]
    assert set(trailer) == {"head_hash", "content_sha256", "key_id", "signature"}
    assert records[-1][:64].decode() == trailer["head_hash"]
    with pg_engine.connect() as connection:
        row = connection.execute(
            text("SELECT period, seq_from, seq_to, signature FROM audit_archives ORDER BY id")
        ).first()
    assert row is not None and tuple(row) == ("p0000", 1, 4, trailer["signature"])


def chain_hash(connection, seq: int) -> str:
    return connection.scalar(text("SELECT hash FROM audit_chain WHERE seq = :s"), {"s": seq})


def test_the_newest_period_holding_events_stays_and_young_periods_stay(pg_engine, key, tmp_path):
    three_periods(pg_engine, (2, 2, 0))  # p0002 is open and empty: p0001 holds the head
    planned, made = run_archive(pg_engine, key, tmp_path)
    assert [m.period for m in made] == ["p0000"]
    assert [p.name for p in periods(pg_engine)] == ["p0001", "p0002"]
    # Periods whose events occurred on or after the day given stay.
    write(pg_engine, 1)
    chain.sequence_all(pg_engine)
    planned, made = run_archive(pg_engine, key, tmp_path, before=datetime.now(UTC) - timedelta(1))
    assert planned == [] and made == []
    assert verify(pg_engine, key=key).ok


def test_a_dry_run_changes_nothing(pg_engine, key, tmp_path):
    three_periods(pg_engine)
    before = tables(pg_engine)
    planned, made = run_archive(pg_engine, key, tmp_path / "out", dry_run=True)
    assert [p.period.name for p in planned] == ["p0000", "p0001"] and made == []
    assert tables(pg_engine) == before and not (tmp_path / "out").exists()
    with pg_engine.connect() as connection:
        assert connection.scalar(text("SELECT count(*) FROM audit_archives")) == 0


def _rewrite(path: Path, change) -> None:
    with gzip.open(path, "rb") as handle:
        lines = handle.read().splitlines(keepends=True)
    with gzip.open(path, "wb") as handle:
        handle.writelines(change(lines))


def redigest(lines: list[bytes]) -> list[bytes]:
    trailer = json.loads(lines[-1])
    trailer["content_sha256"] = hashlib.sha256(b"".join(lines[:-1])).hexdigest()
    return [*lines[:-1], json.dumps(trailer).encode() + b"\n"]


def test_a_file_changed_cut_short_or_signed_by_another_key_fails(pg_engine, key, tmp_path):
    three_periods(pg_engine, (3, 1, 1))
    _, made = run_archive(pg_engine, key, tmp_path)
    original = Path(made[0].file).read_bytes()
    cases = {
        "a changed record": (
            lambda lines: [
                lines[0],
                lines[1].replace(b"referral.read", b"referral.list"),
                *lines[2:],
            ],
            "seq 1 does not match its hash",
        ),
        "a record removed": (lambda lines: [lines[0], *lines[2:]], "seq 1 is missing"),
        "no trailer": (lambda lines: lines[:-1], "ends before its trailer"),
        "a changed header": (
            lambda lines: [lines[0].replace(b'"p0000"', b'"p0009"'), *lines[1:]],
            "does not match the trailer's digest",
        ),
        "a changed header with its digest made again": (
            lambda lines: redigest([lines[0].replace(b'"p0000"', b'"p0009"'), *lines[1:]]),
            "signature does not hold",
        ),
    }
    for what, (change, problem) in cases.items():
        Path(made[0].file).write_bytes(original)
        _rewrite(Path(made[0].file), change)
        checked = archive.verify_file(Path(made[0].file), key)
        assert not checked.ok and problem in (checked.problem or ""), (what, checked.as_dict())
    Path(made[0].file).write_bytes(original)
    assert archive.verify_file(Path(made[0].file), key).ok
    assert not archive.verify_file(Path(made[0].file), CheckpointKey.generate()).ok
    (tmp_path / "junk.gz").write_bytes(b"not gzip")
    assert not archive.verify_file(tmp_path / "junk.gz", key).ok


def test_archives_are_append_only_and_a_forged_one_breaks_verification(pg_engine, key, tmp_path):
    three_periods(pg_engine, (2, 2, 1))
    run_archive(pg_engine, key, tmp_path)
    for statement in ("UPDATE audit_archives SET events = 1", "DELETE FROM audit_archives"):
        with pytest.raises(DBAPIError, match="append-only"), pg_engine.begin() as connection:
            connection.execute(text(statement))
    with pg_engine.begin() as connection:
        connection.execute(
            insert(AuditArchive).values(
                period="p0099",
                seq_from=5,
                seq_to=5,
                prev_hash=connection.scalar(
                    text("SELECT max(head_hash) FILTER (WHERE seq_to = 4) FROM audit_archives")
                ),
                head_hash=chain_hash(connection, 5),
                events=1,
                file_name="forged",
                content_sha256="0" * 64,
                archived_at=datetime.now(UTC),
                key_id=key.key_id,
                signature="forged",
            )
        )
    result = verify(pg_engine, key=key)
    assert not result.ok and "archive p0099 has no valid signature" in (result.problem or "")


def test_a_period_whose_chain_was_altered_is_not_archived(pg_engine, key, tmp_path):
    three_periods(pg_engine, (3, 1, 1))
    with pg_engine.begin() as connection:
        connection.execute(text("SET LOCAL session_replication_role = replica"))  # no triggers
        connection.execute(text("UPDATE audit_events SET action = 'referral.list' WHERE pos = 2"))
    with pytest.raises(archive.ArchiveError, match=r"does not verify.*seq 2 does not match"):
        run_archive(pg_engine, key, tmp_path)
    assert [p.name for p in periods(pg_engine)] == ["p0000", "p0001", "p0002"]
    assert list(tmp_path.iterdir()) == []


def test_archiving_needs_the_private_key(pg_engine, key, tmp_path):
    three_periods(pg_engine)
    with pytest.raises(archive.ArchiveError, match="private half"):
        run_archive(pg_engine, CheckpointKey(key.public), tmp_path)


def test_two_verification_streams_split_the_events_evenly_across_periods(pg_engine):
    three_periods(pg_engine, (6, 2, 2))  # positions jump by 2**40 at each roll
    with pg_engine.connect() as connection:
        shares = _shares(connection, STREAMS, 0, 10)
        counts = []
        for share in shares:
            with CopyStream(connection, copy_sql(0, 10, share), borrowed=True) as stream:
                counts.append(sum(1 for _ in stream.rows()))
    assert counts == [5, 5]


def test_the_archive_commands(pg_app, tmp_path):
    engine = pg_app.extensions["casehub.db"].engine
    three_periods(engine, (3, 2, 1))
    runner = pg_app.test_cli_runner()
    out = tmp_path / "archives"
    day = TOMORROW.strftime("%Y-%m-%d")
    dry = runner.invoke(main, ["audit", "archive", "--before", day, "--to", str(out), "--dry-run"])
    assert dry.exit_code == 0 and dry.output.count("would archive p000") == 2, dry.output
    done = runner.invoke(main, ["audit", "archive", "--before", day, "--to", str(out), "--json"])
    assert done.exit_code == 0, done.output
    body = json.loads(done.output)
    assert [a["period"] for a in body["archived"]] == ["p0000", "p0001"]
    file = body["archived"][0]["file"]
    checked = runner.invoke(main, ["audit", "verify-archive", file])
    assert checked.exit_code == 0 and checked.output.startswith("ok: p0000, seq 1..3, 3 events")
    public = tmp_path / "public.pem"
    service_key = app_key(pg_app)
    assert service_key is not None
    public.write_bytes(
        service_key.public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    assert (
        runner.invoke(main, ["audit", "verify-archive", file, "--key", str(public)]).exit_code == 0
    )
    verified = runner.invoke(main, ["audit", "verify", "--json"])
    assert verified.exit_code == 0 and json.loads(verified.output)["archived_seq"] == 5
    with engine.connect() as connection:
        actions = connection.scalars(
            text("SELECT action FROM audit_events WHERE action LIKE 'audit.%' ORDER BY pos")
        ).all()
    assert actions == ["audit.archive", "audit.verify"]
    nothing = runner.invoke(main, ["audit", "archive", "--before", day, "--to", str(out)])
    assert nothing.exit_code == 0 and "nothing to archive" in nothing.output


def test_partitions_module_knows_no_archived_period(pg_engine, key, tmp_path):
    """After an archive, rolls and listings go on as before over what is left."""
    three_periods(pg_engine, (2, 1, 1))
    run_archive(pg_engine, key, tmp_path)
    with partitions.maintenance(pg_engine) as connection:
        partitions.roll(connection)
    write(pg_engine, 2)
    chain.sequence_all(pg_engine)
    assert [(p.name, p.seq_from, p.seq_to) for p in periods(pg_engine)] == [
        ("p0002", 4, 4),
        ("p0003", 5, 6),
    ]
    assert verify(pg_engine, key=key).ok
