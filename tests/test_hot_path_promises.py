"""What the fast path keeps (issue 10): a read is not answered before its audit event is
committed, an audited read and a create cost a fixed set of statements, and creates made at the
same moment do not wait for each other."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from sqlalchemy import create_engine, event, func, select, text
from sqlalchemy.orm import Session

from casehub import create_app, migrate
from casehub.auth.actor import Actor
from casehub.db import get_db, session_scope
from casehub.models import AuditEvent, ReferralHistory
from casehub.services import agencies, referrals
from tests.helpers import referral_body, subject_body
from tests.live_server import fresh_database


def test_a_create_costs_a_fixed_set_of_statements(client, db_session, factory, is_postgres):
    """The actor check; one INSERT into each table a create writes (the child, its name keys,
    the referral, its lists, its history, the audit event), however many names, categories or
    indicators; and on PostgreSQL the next reference number. Not a statement per item."""
    btp = factory.partner("btp")
    headers = btp.headers()  # the token is fetched before counting
    bodies = (
        referral_body(),
        referral_body(
            indicators=["TRV-01", "TRV-02", "PHN-01"],
            subject=subject_body(given_name="Jo Ann", family_name="Smith-Jones", aliases=["JJ"]),
        ),
    )
    for body in bodies:
        seen: list[str] = []

        def note(_conn, _cursor, statement, *_, seen=seen):  # type: ignore[no-untyped-def]
            words = statement.split()
            seen.append(" ".join(words[:3]) if words[0].upper() == "INSERT" else words[0].upper())

        connection = db_session.connection()
        event.listen(connection, "before_cursor_execute", note)
        try:
            response = client.post("/v1/referrals", json=body, headers=headers)
        finally:
            event.remove(connection, "before_cursor_execute", note)
        assert response.status_code == 201, response.get_json()
        work = [s for s in seen if s not in ("SAVEPOINT", "RELEASE")]  # the suite's own
        inserts = sorted(s.removeprefix("INSERT INTO ") for s in work if s.startswith("INSERT"))
        # SQLite numbers references from a counter row (one writer at a time there).
        expected = [*WRITTEN_BY_A_CREATE, *([] if is_postgres else ["reference_counters"])]
        assert inserts == sorted(expected), work
        # The actor; on PostgreSQL the reference number, unless the INSERT takes it.
        assert work.count("SELECT") <= (2 if is_postgres else 1), work
        assert len(work) == len(inserts) + work.count("SELECT"), work


WRITTEN_BY_A_CREATE = (
    "subjects",
    "subject_name_keys",
    "referrals",
    "referral_categories",
    "referral_indicators",
    "referral_history",
    "audit_events",
)


@pytest.fixture
def own_app(tmp_path):
    """The app on its own fresh database (not the suite's rolled-back transaction), a lead
    client's token, and one referral it created: (app, url, headers, referral)."""
    with fresh_database(tmp_path, "promise") as url:
        app = create_app(
            {
                "DATABASE_URL": url,
                "ISSUER": "http://casehub.test",
                "SIGNING_KEYS_FILE": str(tmp_path / "keys.json"),
                "CLIENT_SECRET_SCRYPT_N": 1024,
                "AUDIT_SEQUENCER": False,
            }
        )
        migrate.upgrade(get_db(app).engine)
        with app.app_context(), session_scope() as session:
            agencies.add_agency(session, code="btp", name="BTP", kind="police", area=None)
            lead, secret = agencies.add_client(
                session,
                agency_code="btp",
                name="lead",
                scope="referrals:read referrals:write subjects:read audit:read",
                scrypt_n=1024,
            )
            credentials = (lead.client_id, str(secret))
        http = app.test_client()
        token = http.post(
            "/oauth/token", data={"grant_type": "client_credentials"}, auth=credentials
        ).get_json()["access_token"]
        headers = {"Authorization": f"Bearer {token}"}
        created = http.post("/v1/referrals", json=referral_body(), headers=headers).get_json()
        try:
            yield app, url, headers, created
        finally:
            get_db(app).engine.dispose()


def test_a_read_is_answered_only_once_its_audit_event_is_committed(own_app):
    """The moment a read's response is in the caller's hands, another connection already
    sees its audit event."""
    app, url, headers, created = own_app
    http = app.test_client()
    observer = create_engine(url)
    try:
        for _ in range(5):
            response = http.get(f"/v1/referrals/{created['id']}", headers=headers)
            assert response.status_code == 200
            request_id = response.headers["X-Request-Id"]
            with observer.connect() as connection:
                seen = connection.execute(
                    select(AuditEvent.action, AuditEvent.request_status).where(
                        AuditEvent.request_id == request_id
                    )
                ).all()
            assert [tuple(row) for row in seen] == [("referral.read", 200)]
    finally:
        observer.dispose()


@pytest.mark.postgres_only
def test_a_read_opens_no_transaction_on_postgresql(own_app, is_postgres):
    """An audited read sends its SELECTs and its audit INSERT in autocommit: no statement
    leaves a transaction open (no BEGIN was sent, so none needs a COMMIT). A create runs
    in one transaction."""
    if not is_postgres:
        pytest.skip("SQLite keeps its transaction: it has no round trips to save")
    app, _url, headers, created = own_app
    http = app.test_client()
    states: list[str] = []

    def note(conn, *_):  # type: ignore[no-untyped-def]
        states.append(conn.connection.driver_connection.info.transaction_status.name)

    engine = get_db(app).engine
    event.listen(engine, "after_cursor_execute", note)
    try:
        rid, sid = created["id"], created["subject_id"]
        reads = {  # every read marked autocommit, and a refusal
            f"/v1/referrals/{rid}": 200,
            "/v1/referrals?limit=5": 200,
            f"/v1/referrals/{rid}/history": 200,
            f"/v1/referrals/{rid}/notes": 200,
            f"/v1/referrals/{rid}/accesses": 200,
            "/v1/subjects?q=Smith": 200,
            "/v1/subjects?q=Jo+Smith": 200,
            f"/v1/subjects/{sid}": 200,
            "/v1/audit/events": 200,
            f"/v1/audit/subjects/{sid}/accesses": 200,
            f"/v1/referrals/{uuid.uuid4()}": 404,
        }
        for path, status in reads.items():
            states.clear()
            assert http.get(path, headers=headers).status_code == status, path
            assert states and set(states) == {"IDLE"}, (path, states)
        states.clear()
        assert http.post("/v1/referrals", json=referral_body(), headers=headers).status_code == 201
        assert set(states) == {"INTRANS"}, states
    finally:
        event.remove(engine, "after_cursor_execute", note)


@pytest.mark.postgres_only
def test_a_read_that_tried_to_write_is_stopped_before_the_write(own_app, monkeypatch, is_postgres):
    """In autocommit a write would commit at once: any statement but the audit INSERT from a
    read is refused before it is sent, and the caller gets a 500 with nothing changed."""
    if not is_postgres:
        pytest.skip("SQLite keeps its transaction: the read's write is rolled back there")
    app, url, headers, created = own_app
    real = referrals.get_referral

    def writes_too(session, **kwargs):  # type: ignore[no-untyped-def]
        session.execute(text("UPDATE referrals SET summary = 'changed by a read'"))
        return real(session, **kwargs)

    monkeypatch.setattr(referrals, "get_referral", writes_too)
    response = app.test_client().get(f"/v1/referrals/{created['id']}", headers=headers)
    assert response.status_code == 500
    observer = create_engine(url)
    try:
        with observer.connect() as connection:
            summaries = connection.execute(text("SELECT DISTINCT summary FROM referrals")).all()
    finally:
        observer.dispose()
    assert summaries == [(created["summary"],)]


@pytest.mark.postgres_only
def test_creates_in_open_transactions_do_not_wait_for_each_other(engine, is_postgres):
    """Three whole creates (child, name keys, reference, referral, lists, history), each in a
    transaction still open, as a slow request's would be: each completes under a 2 s lock
    timeout instead of queuing behind the others (the per-year counter row made them queue)."""
    if not is_postgres:
        pytest.skip("needs PostgreSQL: set CASEHUB_TEST_DATABASE_URL")
    code = f"p{uuid.uuid4().hex[:8]}"
    with Session(bind=engine) as setup:
        agencies.add_agency(setup, code=code, name=code, kind="police", area=None)
        client, _ = agencies.add_client(
            setup, agency_code=code, name="c", scope="referrals:write", scrypt_n=1024
        )
        client_id = client.client_id
        setup.commit()
    actor = Actor(
        agency=code,
        agency_kind="police",
        is_platform=False,
        client_id=client_id,
        scopes=frozenset({"referrals:write"}),
    )
    sessions = [Session(bind=engine.connect()) for _ in range(3)]
    try:
        references = []
        for session in sessions:  # all three stay open until the end
            session.execute(text("SET LOCAL lock_timeout = '2s'"))
            made = referrals.create_referral(
                session, actor=actor, data=_loaded(referral_body()), now=datetime.now(UTC)
            )
            references.append(made.reference)
        assert len(set(references)) == 3
    finally:
        for session in sessions:
            session.rollback()
            session.close()
        with Session(bind=engine) as cleanup:
            cleanup.execute(text("DELETE FROM clients WHERE agency_code = :c"), {"c": code})
            cleanup.execute(text("DELETE FROM agencies WHERE code = :c"), {"c": code})
            cleanup.commit()


def _loaded(body: dict) -> dict:  # type: ignore[type-arg]
    """The create schema's loaded data for a body, as the view passes it to the service."""
    from casehub.schemas.referral import ReferralCreateSchema

    return ReferralCreateSchema().load(body)  # type: ignore[no-any-return]


def test_a_create_leaves_unset_columns_sql_null(client, db_session, factory):
    """The Core INSERTs of a create store an unset JSON column as SQL NULL, as the unit of work
    does, not as JSON null: a query `IS NULL` (and a transition's row) treat them alike."""
    btp = factory.partner("btp")
    created = client.post("/v1/referrals", json=referral_body(), headers=btp.headers())
    referral_id = uuid.UUID(created.get_json()["id"])
    nulls = db_session.execute(
        select(func.count())
        .select_from(ReferralHistory)
        .where(
            ReferralHistory.referral_id == referral_id,
            ReferralHistory.lawful_basis.is_(None),
            ReferralHistory.reason.is_(None),
        )
    ).scalar_one()
    assert nulls == 1


@pytest.mark.parametrize(
    ("statement", "allowed"),
    [
        ("SELECT referrals.id FROM referrals", True),
        ("WITH x AS (SELECT 1) SELECT * FROM x", True),
        ("WITH gone AS (DELETE FROM shares RETURNING id) SELECT * FROM gone", False),
        ("SELECT referrals.id FROM referrals FOR UPDATE", False),
        ("INSERT INTO audit_events (id, pos) VALUES (%(id)s, %(pos)s)", True),
        # subject search asks the planner how rare a word is: planned, never run
        ("EXPLAIN (FORMAT JSON) SELECT count(*) FROM subject_name_keys", True),
        ("EXPLAIN (ANALYZE) UPDATE referrals SET summary = 'x'", False),
        ("UPDATE referrals SET summary = 'x'", False),
        ("INSERT INTO audit_events_copy VALUES (1)", False),
        ("INSERT INTO referrals (id) VALUES (%(id)s)", False),
        ("DELETE FROM shares", False),
    ],
)
def test_an_autocommit_read_may_send_reads_and_its_audit_insert_only(statement, allowed):
    from casehub.db import WriteInAutocommitRead, _only_the_audit_write

    if allowed:
        _only_the_audit_write(None, None, statement, {}, None, False)
    else:
        with pytest.raises(WriteInAutocommitRead):
            _only_the_audit_write(None, None, statement, {}, None, False)
