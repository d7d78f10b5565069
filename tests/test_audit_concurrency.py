"""The audit trail under real commits on a scratch database: many writers at once (threads and
processes), commits that overtake each other, an event that cannot be written, a refused attempt
that survives its rollback, and the `casehub audit` commands."""

from __future__ import annotations

import base64
import multiprocessing
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import Engine, create_engine, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from casehub import audit, create_app, migrate
from casehub.audit.chain import BackgroundSequencer, sequence_all, sequence_once
from casehub.audit.verify import verify
from casehub.cli import main
from casehub.db import make_engine, session_scope
from casehub.models import Agency
from casehub.models.audit import AuditChain, AuditEvent, AuditPending
from casehub.services import agencies as agency_service

THREADS = 6
TRANSACTIONS = 30  # per thread; each writes 1 to 3 events


@pytest.fixture
def scratch_url(database_url: str, tmp_path: Path) -> Iterator[str]:
    """A fresh database of the suite's kind, migrated, where commits are real."""
    if not database_url.startswith("postgresql"):
        url = f"sqlite:///{tmp_path / 'audit-scratch.db'}"
        admin = None
    else:
        base = make_url(database_url)
        name = f"casehub_audit_{uuid.uuid4().hex[:12]}"
        admin = create_engine(base.set(database="postgres"), isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        url = base.set(database=name).render_as_string(hide_password=False)
    engine = make_engine(url)
    migrate.upgrade(engine)
    engine.dispose()
    try:
        yield url
    finally:
        if admin is not None:
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()


@pytest.fixture
def scratch_engine(scratch_url: str) -> Iterator[Engine]:
    engine = make_engine(scratch_url)
    yield engine
    engine.dispose()


class Writer:
    def __init__(self, label: str) -> None:
        self.agency = "btp"
        self.client_id = label
        self.user_id = None
        self.purpose = None


def events_per_thread() -> int:
    return sum(1 + i % 3 for i in range(TRANSACTIONS))


def write_events(
    url: str, label: str, threads: int, sequencers: int = 0, start: Any = None
) -> None:
    """Threads committing audit events as requests do, while `sequencers` threads keep
    chaining (waiting for the lock, unlike the serving processes' background thread).
    `start` is a barrier shared with the other processes, so they all write at once."""
    engine = make_engine(url)
    actor = Writer(label)
    done = threading.Event()

    def write(thread: int) -> None:
        for i in range(TRANSACTIONS):
            with Session(engine) as session:
                for _ in range(1 + i % 3):
                    audit.record(
                        session, actor, "referral.read", subject_ids=[uuid.uuid4()], basis="lead"
                    )
                audit.write_pending(
                    session, audit.RequestInfo(f"{label}-{thread}-{i}", "GET", "/v1/x", None),
                    status=200,
                )
                session.commit()

    failures: list[BaseException] = []

    def chain() -> None:
        try:
            while not done.is_set():
                sequence_once(engine, limit=7, wait=True)
        except BaseException as exc:  # surfaced below: a sequencer must never fail here
            failures.append(exc)

    if start is not None:
        start.wait(timeout=120)
    chainers = [threading.Thread(target=chain) for _ in range(sequencers)]
    for thread in chainers:
        thread.start()
    try:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(write, range(threads)))
    finally:
        done.set()
        for thread in chainers:
            thread.join()
        engine.dispose()
    if failures:
        raise failures[0]


def test_many_threads_and_two_processes_end_with_a_gap_free_chain_that_verifies(
    scratch_url, scratch_engine
):
    spawn = multiprocessing.get_context("spawn")
    start = spawn.Barrier(3)
    others = [
        spawn.Process(target=write_events, args=(scratch_url, f"process-{n}", 3, 1, start))
        for n in (1, 2)
    ]
    background = BackgroundSequencer(scratch_engine, interval=0.005, limit=5)
    background.ensure_running()
    for process in others:
        process.start()
    try:
        write_events(scratch_url, "main", THREADS, start=start)
    finally:
        for process in others:
            process.join(timeout=300)
        background.stop()
    assert [p.exitcode for p in others] == [0, 0]

    sequence_all(scratch_engine)
    expected = events_per_thread() * (THREADS + 3 + 3)
    result = verify(scratch_engine, key=None)
    assert result.ok, result.as_dict()
    assert result.events == result.head_seq == expected
    assert result.pending == 0
    with scratch_engine.connect() as connection:
        chained = connection.execute(
            select(
                func.count(),
                func.count(AuditChain.event_pos.distinct()),
                func.min(AuditChain.seq),
                func.max(AuditChain.seq),
            )
        ).one()
        written = connection.scalar(select(func.count()).select_from(AuditEvent))
    assert tuple(chained) == (expected, expected, 1, expected)
    assert written == expected


def test_an_event_committed_after_a_later_one_is_chained_not_skipped(scratch_engine):
    if scratch_engine.dialect.name == "sqlite":
        pytest.skip("SQLite admits one writer at a time: a commit cannot overtake another")
    slow, fast = Session(scratch_engine), Session(scratch_engine)
    try:
        audit.record(slow, Writer("slow"), "referral.read")
        audit.write_pending(slow, None, status=200)  # takes the lower pos, commits later
        audit.record(fast, Writer("fast"), "referral.read")
        audit.write_pending(fast, None, status=200)
        fast.commit()
        assert sequence_all(scratch_engine) == 1
        slow.commit()
        assert sequence_all(scratch_engine) == 1
    finally:
        slow.close()
        fast.close()
    with scratch_engine.connect() as connection:
        order = connection.execute(
            select(AuditEvent.actor_client_id, AuditEvent.pos)
            .join(AuditChain, AuditChain.event_pos == AuditEvent.pos)
            .order_by(AuditChain.seq)
        ).all()
    assert [client for client, _ in order] == ["fast", "slow"]
    assert order[0].pos > order[1].pos
    assert verify(scratch_engine, key=None).ok


def test_a_sequencer_that_cannot_get_the_lock_skips_its_turn(scratch_engine):
    if scratch_engine.dialect.name == "sqlite":
        pytest.skip("SQLite's sequencer waits for the database's single write lock instead")
    with Session(scratch_engine) as session:
        audit.record(session, Writer("w"), "referral.read")
        audit.write_pending(session, None, status=200)
        session.commit()
    with scratch_engine.begin() as holder:
        holder.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": 0x6361736568756201})
        assert sequence_once(scratch_engine, wait=False) == 0
    assert sequence_once(scratch_engine, wait=False) == 1


# -- the request lifecycle with real commits ---------------------------------------------------
@pytest.fixture
def scratch_app(scratch_url: str, tmp_path: Path) -> Iterator[Flask]:
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
    yield app
    engine = app.extensions["casehub.db"].engine
    engine.dispose()


def _bearer(app: Flask, agency: str, *, platform: bool) -> dict[str, str]:
    with app.app_context(), session_scope() as session:
        agency_service.add_agency(
            session, code=agency, name=agency.title(), kind="other", is_platform=platform
        )
        client, secret = agency_service.add_client(
            session, agency_code=agency, name="admin system", scope="admin", scrypt_n=2**10
        )
        client_id = client.client_id
    basic = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    token = app.test_client().post(
        "/oauth/token",
        data={"grant_type": "client_credentials"},
        headers={"Authorization": f"Basic {basic}"},
    )
    return {"Authorization": f"Bearer {token.get_json()['access_token']}"}


def _counts(engine: Engine) -> tuple[int, int]:
    with engine.connect() as connection:
        return (
            connection.scalar(select(func.count()).select_from(Agency)) or 0,
            connection.scalar(select(func.count()).select_from(AuditEvent)) or 0,
        )


def _break_audit_inserts(engine: Engine, how: str = "disk") -> None:
    """Make every audit insert fail: like a full disk, or as a constraint violation (which the
    driver reports as an IntegrityError — still a server fault, not a conflict)."""
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            errcode = " USING ERRCODE = 'check_violation'" if how == "constraint" else ""
            connection.execute(
                text(
                    "CREATE FUNCTION audit_disk_full() RETURNS trigger LANGUAGE plpgsql AS $$ "
                    f"BEGIN RAISE EXCEPTION 'could not extend file'{errcode}; END $$"
                )
            )
            connection.execute(
                text(
                    "CREATE TRIGGER audit_disk_full BEFORE INSERT ON audit_events "
                    "FOR EACH ROW EXECUTE FUNCTION audit_disk_full()"
                )
            )
        else:
            failure = "RAISE(ABORT, 'constraint')" if how == "constraint" else "audit_disk_full()"
            connection.execute(
                text(
                    "CREATE TRIGGER audit_disk_full BEFORE INSERT ON audit_events "
                    f"BEGIN SELECT {failure}; END"
                )
            )


def _mend_audit_inserts(engine: Engine) -> None:
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            connection.execute(text("DROP TRIGGER audit_disk_full ON audit_events"))
        else:
            connection.execute(text("DROP TRIGGER audit_disk_full"))


@pytest.mark.parametrize("how", ["disk", "constraint"])
def test_when_the_event_cannot_be_written_the_work_does_not_happen(scratch_app, how):
    engine = scratch_app.extensions["casehub.db"].engine
    headers = _bearer(scratch_app, "partnership", platform=True)
    http = scratch_app.test_client()
    body = {"code": "derby-cs", "name": "Derby Children's Services", "kind": "local_authority"}
    before = _counts(engine)

    _break_audit_inserts(engine, how)
    response = http.post("/v1/admin/agencies", json=body, headers=headers)
    assert response.status_code == 500
    assert response.mimetype == "application/problem+json"
    assert "nothing was saved" in response.get_json()["detail"]
    assert _counts(engine) == before

    _mend_audit_inserts(engine)
    response = http.post("/v1/admin/agencies", json=body, headers=headers)
    assert response.status_code == 201, response.get_json()
    agencies, events = _counts(engine)
    assert (agencies, events) == (before[0] + 1, before[1] + 1)
    with engine.connect() as connection:
        last = connection.execute(
            select(AuditEvent.action, AuditEvent.resource_id, AuditEvent.request_status)
            .order_by(AuditEvent.pos.desc())
            .limit(1)
        ).one()
    assert tuple(last) == ("admin.agency.create", "derby-cs", 201)


def test_a_refused_attempt_is_recorded_although_its_request_rolls_back(scratch_app):
    engine = scratch_app.extensions["casehub.db"].engine
    headers = _bearer(scratch_app, "notts-cs", platform=False)
    body = {"code": "rogue", "name": "Rogue", "kind": "other"}
    response = scratch_app.test_client().post("/v1/admin/agencies", json=body, headers=headers)
    assert response.status_code == 403
    with engine.connect() as connection:
        refused = connection.execute(
            select(AuditEvent.action, AuditEvent.outcome, AuditEvent.request_status).where(
                AuditEvent.outcome == "denied"
            )
        ).all()
        assert connection.scalar(select(func.count()).where(Agency.code == "rogue")) == 0
    assert [tuple(r) for r in refused] == [("admin.agency.create", "denied", 403)]


# -- the commands ------------------------------------------------------------------------------
def test_the_audit_commands_sequence_checkpoint_and_verify(scratch_app, tmp_path):
    engine = scratch_app.extensions["casehub.db"].engine
    runner = scratch_app.test_cli_runner()
    _bearer(scratch_app, "partnership", platform=True)  # the token issue is audited

    sequenced = runner.invoke(main, ["audit", "sequence", "--once"])
    assert sequenced.exit_code == 0 and "chained" in sequenced.output
    signed = runner.invoke(main, ["audit", "checkpoint"])
    assert signed.exit_code == 0, signed.output
    assert (tmp_path / "audit-key.pem").exists()
    checked = runner.invoke(main, ["audit", "verify"])
    assert checked.exit_code == 0, checked.output
    assert checked.output.startswith("ok:")

    # Newer events, past the checkpoint; then one of them is changed behind the triggers' back.
    _bearer(scratch_app, "notts-cs", platform=False)
    assert runner.invoke(main, ["audit", "sequence", "--once"]).exit_code == 0
    with engine.connect() as connection:
        seq, pos = connection.execute(
            select(AuditChain.seq, AuditChain.event_pos).order_by(AuditChain.seq.desc()).limit(1)
        ).one()
    with engine.begin() as connection:
        tamper = text("UPDATE audit_events SET action = 'nothing' WHERE pos = :pos")
        if engine.dialect.name == "postgresql":
            connection.execute(text("SET LOCAL session_replication_role = replica"))
        else:
            connection.execute(text("DROP TRIGGER audit_events_no_update"))
        connection.execute(tamper, {"pos": pos})
    broken = runner.invoke(main, ["audit", "verify"])
    assert broken.exit_code == 1, broken.output
    assert f"BROKEN at seq {seq}" in broken.output
    # A checkpoint vouches for what it signs: it verifies since the last one and refuses.
    refused = runner.invoke(main, ["audit", "checkpoint"])
    assert refused.exit_code == 1 and f"seq {seq}" in refused.output

    with engine.connect() as connection:
        operator_reads = connection.scalar(
            select(func.count()).where(AuditEvent.action == "audit.verify")
        )
        assert connection.scalar(select(func.count()).select_from(AuditPending)) >= 1
    assert operator_reads == 2
