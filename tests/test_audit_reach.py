"""The audit reach index (audit_event_agencies): written by the sequencer and by migration
0007's backfill, alike; an older release's gaps filled; the time marks in seq order."""

from __future__ import annotations

import json
import threading
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
from tests.helpers import referral_body, share_body, transfer_lead

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


def test_a_notice_to_a_holder_reaches_the_holder_and_not_the_agency_that_asked(db_session):
    """A match that found another agency's child (or an access request to it) is recorded twice:
    the asker's own event, without the referral or children, and a notice on the holder's
    referral, which the asker's auditors never see (it would tell them which referral it was)."""
    for code in ("btp", "notts-cs"):
        agency_service.add_agency(db_session, code=code, name=code, kind="police")
    held = add_referral(db_session, "notts-cs")
    record(db_session, "btp", action="subject.match")  # the asker's own record
    record(db_session, "btp", held, action="subject.match", subject_ids=[uuid.uuid4()])
    record(db_session, "btp", held, action="access_request.create")
    record(db_session, "btp", held, action="referral.read")  # any other action: both
    sequence_pending(db_session.connection(), limit=1000)
    assert agencies_by_seq(db_session.connection()) == {
        1: {REACH_ALL, "btp"},
        2: {REACH_ALL, "notts-cs"},
        3: {REACH_ALL, "notts-cs"},
        4: {REACH_ALL, "btp", "notts-cs"},
    }


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


# -- the auditor's lists over HTTP -------------------------------------------------------------
def chain_now(db_session) -> int:
    return sequence_pending(db_session.connection(), limit=1_000_000)


def listed(client, partner, scope=None, **params) -> list[dict]:
    """Every event the partner's auditor lists with these filters, walking small pages."""
    found, cursor = [], None
    while True:
        query = {"limit": 3, **params, **({"cursor": cursor} if cursor else {})}
        response = client.get(
            "/v1/audit/events", query_string=query, headers=partner.headers(scope)
        )
        assert response.status_code == 200, response.get_json()
        page = response.get_json()
        found.extend(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            return found


@pytest.fixture
def partnership(client, factory, db_session):
    """A police lead sharing with a charity and children's services, a charity's own referral,
    an unrelated force's refused attempt, and the platform auditor."""
    parties = {
        "btp": factory.partner("btp", kind="police"),
        "tcs": factory.partner("tcs", kind="charity"),
        "notts-cs": factory.partner("notts-cs", kind="local_authority"),
        "leics-police": factory.partner("leics-police", kind="police"),
    }
    factory.agency("partnership", "other", platform=True)
    parties["auditor"] = factory.partner("partnership", scopes="audit:read:all")
    btp, tcs = parties["btp"], parties["tcs"]
    created = client.post("/v1/referrals", json=referral_body(), headers=btp.headers())
    assert created.status_code == 201, created.get_json()
    referral = created.get_json()
    rid = referral["id"]
    for agency in ("tcs", "notts-cs"):
        shared = client.post(
            f"/v1/referrals/{rid}/shares", json=share_body(agency), headers=btp.headers()
        )
        assert shared.status_code == 201, shared.get_json()
    assert client.get(f"/v1/referrals/{rid}", headers=tcs.headers()).status_code == 200
    assert (
        client.get(f"/v1/referrals/{rid}", headers=parties["notts-cs"].headers()).status_code == 200
    )
    refused = client.get(f"/v1/referrals/{rid}", headers=parties["leics-police"].headers())
    assert refused.status_code == 404
    own = client.post("/v1/referrals", json=referral_body(), headers=tcs.headers())
    assert own.status_code == 201, own.get_json()
    chain_now(db_session)
    return parties | {"referral": referral, "own": own.get_json()}


def _reaches(agency: str, leads: dict[str, str]):
    return lambda e: e["actor"]["agency"] == agency or leads.get(e["referral_id"]) == agency


def test_an_agency_auditor_lists_what_the_whole_trail_holds_within_its_reach(
    client, partnership, db_session
):
    """For every filter, an agency auditor's list is the partnership auditor's list of the
    same filter, narrowed to its own actors' events and events on the referrals it leads."""
    rid, own = partnership["referral"]["id"], partnership["own"]["id"]
    leads = {rid: "btp", own: "tcs"}
    everything = listed(client, partnership["auditor"])
    middle = everything[len(everything) // 2]["occurred_at"]
    filters = [
        {},
        {"agency": "tcs"},
        {"agency": "btp"},
        {"agency": "leics-police"},
        {"client_id": partnership["tcs"].client_id},
        {"action": "referral.read"},
        {"action": "access.denied"},
        {"outcome": "denied"},
        {"referral_id": rid},
        {"referral_id": own},
        {"subject_id": partnership["referral"]["subject_id"]},
        {"from": middle},
        {"to": middle},
        {"from": everything[1]["occurred_at"], "to": middle, "agency": "btp"},
        {"action": "referral.read", "agency": "notts-cs"},
        {"subject_id": partnership["referral"]["subject_id"], "agency": "tcs"},
    ]
    for agency in ("btp", "tcs", "notts-cs", "leics-police"):
        for params in filters:
            whole = listed(client, partnership["auditor"], **params)
            expected = [e["seq"] for e in whole if _reaches(agency, leads)(e)]
            got = listed(client, partnership[agency], "audit:read", **params)
            assert [e["seq"] for e in got] == expected, (agency, params)
            assert got == [e for e in whole if e["seq"] in set(expected)]
    assert listed(client, partnership["btp"], "audit:read", agency="leics-police")


def test_a_transfer_moves_the_referrals_events_to_the_new_leads_auditor(
    client, partnership, db_session
):
    rid = partnership["referral"]["id"]
    btp, cs, tcs = partnership["btp"], partnership["notts-cs"], partnership["tcs"]

    def on_referral(partner) -> set[tuple[str, str]]:
        return {
            (e["actor"]["agency"], e["action"])
            for e in listed(client, partner, "audit:read", referral_id=rid)
        }

    before_cs, before_btp = on_referral(cs), on_referral(btp)
    assert ("tcs", "referral.read") in before_btp
    assert ("leics-police", "access.denied") in before_btp
    assert before_cs == {("notts-cs", "referral.read")}

    transfer_lead(client, btp, rid, "notts-cs")
    assert client.get(f"/v1/referrals/{rid}", headers=tcs.headers()).status_code == 200
    chain_now(db_session)

    # The new lead sees the referral's earlier events, whoever acted, and the later ones.
    after_cs = on_referral(cs)
    assert before_btp <= after_cs
    assert {("btp", "referral.transfer"), ("tcs", "referral.read")} <= after_cs
    # The old lead keeps its own actors' events and nobody else's.
    after_btp = on_referral(btp)
    assert after_btp == {(a, action) for a, action in before_btp if a == "btp"} | {
        ("btp", "referral.transfer"),
        ("btp", "referral.read"),  # reading the ETag before the transfer
    }
    assert {e["actor"]["agency"] for e in listed(client, btp, "audit:read")} == {"btp"}
    # The whole trail and the charity's own reach are as they were.
    mine = listed(client, tcs, "audit:read", referral_id=rid)
    assert {e["actor"]["agency"] for e in mine} == {"tcs"}
    subject = partnership["referral"]["subject_id"]
    accesses = client.get(f"/v1/audit/subjects/{subject}/accesses", headers=cs.headers())
    assert {a["actor"]["agency"] for a in accesses.get_json()["items"]} >= {"btp", "tcs"}


def test_the_export_keeps_to_the_same_reach_and_window(client, partnership, db_session):
    everything = listed(client, partnership["auditor"])
    middle = everything[len(everything) // 2]["occurred_at"]
    for params in ({}, {"from": middle}, {"to": middle, "action": "referral.read"}):
        response = client.get(
            "/v1/audit/events/export",
            query_string=params,
            headers=partnership["btp"].headers("audit:read"),
        )
        assert response.status_code == 200
        exported = [json.loads(line) for line in response.get_data(as_text=True).splitlines()]
        assert exported == listed(client, partnership["btp"], "audit:read", **params), params


def test_time_windows_find_events_chained_out_of_order(client, factory, db_session):
    """A window by occurred_at over events chained late (a slow request commits after a quick
    one): the seq bounds from the time marks must not cut them off."""
    factory.agency("partnership", "other", platform=True)
    auditor = factory.partner("partnership", scopes="audit:read:all")
    times = [T0 + timedelta(seconds=s) for s in (0, 10, 3, 20, 1, 30, 25, 9)]
    for at in times:
        record(db_session, "btp", at=at)
    chain_now(db_session)
    for start, end in [(2, 11), (0, 1), (9, 10), (21, 40), (1, 3), (4, 9), (31, 50)]:
        window = {
            "from": (T0 + timedelta(seconds=start)).isoformat(),
            "to": (T0 + timedelta(seconds=end)).isoformat(),
        }
        for params in (window, {"from": window["from"]}, {"to": window["to"]}):
            got = listed(client, auditor, client_id="chc_btp", **params)
            expected = [
                at
                for at in times
                if ("from" not in params or at >= T0 + timedelta(seconds=start))
                and ("to" not in params or at < T0 + timedelta(seconds=end))
            ]
            assert [datetime.fromisoformat(e["occurred_at"]) for e in got] == expected, params


# -- a transfer racing the sequencer -----------------------------------------------------------
def _blocked(target) -> tuple[threading.Thread, threading.Event, list[BaseException]]:
    done, failures = threading.Event(), []

    def run() -> None:
        try:
            target()
        except BaseException as exc:  # surfaced by the test
            failures.append(exc)
        finally:
            done.set()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, done, failures


def _agencies_of(engine: Engine, seqs) -> dict[int, set[str]]:
    with engine.connect() as connection:
        return {
            seq: agencies for seq, agencies in agencies_by_seq(connection).items() if seq in seqs
        }


def _pending_event(engine: Engine, agency: str, referral_id) -> None:
    with Session(engine) as session:
        record(session, agency, referral_id)
        session.commit()


@pytest.mark.postgres_only
def test_events_chained_while_the_lead_is_transferred_land_in_the_new_leads_reach(
    scratch_engine, is_postgres
):
    if not is_postgres:
        pytest.skip("SQLite runs one writer at a time: a transfer cannot race the sequencer")
    from casehub.audit.chain import move_lead_reach

    migrate.upgrade(scratch_engine)
    with Session(scratch_engine) as session:
        for code in ("btp", "tcs", "notts-cs"):
            agency_service.add_agency(session, code=code, name=code, kind="police")
        rid = add_referral(session, "btp")
        session.commit()

    def transfer(connection, to: str, source: str) -> None:
        connection.execute(
            text("UPDATE referrals SET lead_agency = :to WHERE id = :id"), {"to": to, "id": rid}
        )
        move_lead_reach(connection, referral_id=rid, old_lead=source, new_lead=to)

    # The sequencer first: it chains under the old lead and holds its lock; the transfer waits
    # for it, then moves what it chained.
    _pending_event(scratch_engine, "tcs", rid)
    sequencer = scratch_engine.connect()
    sequencer.begin()
    assert sequence_pending(sequencer, limit=100) == 1

    def transfer_to_cs() -> None:
        with scratch_engine.begin() as connection:
            transfer(connection, "notts-cs", "btp")

    thread, done, failures = _blocked(transfer_to_cs)
    assert not done.wait(0.5), "the transfer must wait for the sequencing pass"
    sequencer.commit()
    sequencer.close()
    assert done.wait(30)
    thread.join()
    assert failures == []
    assert _agencies_of(scratch_engine, {1}) == {1: {REACH_ALL, "tcs", "notts-cs"}}

    # The transfer first: it holds the lock; the sequencer waits, then reads the new lead.
    _pending_event(scratch_engine, "tcs", rid)
    mover = scratch_engine.connect()
    mover.begin()
    transfer(mover, "btp", "notts-cs")
    thread, done, failures = _blocked(lambda: sequence_all(scratch_engine))
    assert not done.wait(0.5), "the sequencer must wait for the transfer"
    mover.commit()
    mover.close()
    assert done.wait(30)
    thread.join()
    assert failures == []
    assert _agencies_of(scratch_engine, {1, 2}) == {
        1: {REACH_ALL, "tcs", "btp"},
        2: {REACH_ALL, "tcs", "btp"},
    }
