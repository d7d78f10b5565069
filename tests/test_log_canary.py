"""Nothing personal reaches a log line or the audit trail, however loud the logging (issue 9,
item 3). A journey through the API with a canary in every personal field — names, aliases, date
of birth, NHS number, address, narrative, notes, reasons, staff names and emails, query strings,
an Idempotency-Key — and requests that fail on it (validation, visibility, a unique constraint,
database errors quoting it), with every logger at DEBUG and SQL echo on; then the canary is
counted in every captured record (formatted as JSON, as text, by pytest, and the record's own
arguments and extras), in every row of every audit table, and in the error bodies the caller's
input did not cause. The same for gunicorn's own error and access logs from a live server.

The request line's keys and the text format are checked at the end of the file."""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import JSON, String, Text, select, text
from sqlalchemy.exc import DataError, IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from casehub import config, create_app, logs
from casehub.db import Base, get_db
from casehub.models import User
from tests.conftest import Factory, Partner
from tests.live_server import casehub, casehub_json, free_port, fresh_database, gunicorn
from tests.live_server import server_environment as live_environment

SUFFIX = uuid.uuid4().hex[:8]
CANARY = f"Zqxcanary{SUFFIX}"
DOB = "2013-07-29"  # a distinctive date of birth; logged, it would read like one of these
DOB_FORMS = (DOB, "2013, 7, 29", "29/07/2013")
POSTCODE = "KW17 2QX"
EMAIL = f"{CANARY.lower()}@example.org"


def _nhs_number(seed: str) -> str:
    """A valid NHS number (modulus 11) made from the run's suffix."""
    digits = [int(c, 16) % 10 for c in seed * 2][:9]
    for start in range(10):
        candidate = [(digits[0] + start) % 10, *digits[1:]]
        check = 11 - sum(d * w for d, w in zip(candidate, range(10, 1, -1), strict=True)) % 11
        if check == 11:
            check = 0
        if check != 10:
            return "".join(map(str, candidate)) + str(check)
    raise AssertionError("no valid NHS number")


NHS = _nhs_number(SUFFIX)
NEEDLES = tuple(
    n.lower()
    for n in (
        "zqxcanary",  # every free-text value below starts with it, so one needle finds them all
        *DOB_FORMS,
        NHS,
        f"{NHS[:3]} {NHS[3:6]} {NHS[6:]}",
        POSTCODE,
        POSTCODE.replace(" ", ""),
    )
)

# Every logger at DEBUG: the root, and the libraries that log a request's work.
LOUD = (
    "",
    "sqlalchemy",
    "sqlalchemy.engine",
    "sqlalchemy.engine.Engine",
    "sqlalchemy.pool",
    "sqlalchemy.orm",
    "werkzeug",
    "authlib",
    "casehub",
    "casehub.request",
    "urllib3",
    "gunicorn",
    "gunicorn.error",
    "gunicorn.access",
    "flask_smorest",
    "limits",
    "alembic",
    "psycopg",
    "joserfc",
)


def hits(text: str) -> int:
    lowered = text.lower()
    return sum(lowered.count(needle) for needle in NEEDLES)


def c(label: str) -> str:
    """The canary for one field."""
    return f"{CANARY}{label}"


# -- capture ------------------------------------------------------------------------------------
class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@dataclass
class Loud:
    """A casehub app whose every logger is at DEBUG, with SQL echo (statements and rows)."""

    app: Flask
    http: FlaskClient
    session: Session
    factory: Factory
    capture: Capture
    as_json: io.StringIO
    as_text: io.StringIO
    responses: list[tuple[str, str, int, str]] = field(default_factory=list)

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = getattr(self.http, method)(path, **kwargs)
        self.responses.append((method.upper(), path, response.status_code, response.get_data(True)))
        return response


@pytest.fixture
def loud(app: Flask, monkeypatch) -> Iterator[Loud]:
    # The suite's settings (database, keys, limits), with SQL echo and DEBUG.
    settings = {key: app.config[key] for key in config.DEFAULTS}
    settings.update(SQL_ECHO=True, LOG_LEVEL="debug", LOG_FORMAT="json")
    loud_app = create_app(settings)
    loud_app.config["TESTING"] = True
    engine = get_db(loud_app).engine
    assert engine is not None
    engine.echo = "debug"  # result rows too, not only statements

    known = [
        logging.getLogger(name)
        for name, value in logging.root.manager.loggerDict.items()
        if isinstance(value, logging.Logger)
    ]
    loggers = [logging.getLogger(name) for name in LOUD] + known
    saved = [(logger, logger.level, logger.disabled) for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.DEBUG)
        logger.disabled = False
    capture = Capture()
    as_json, as_text = io.StringIO(), io.StringIO()
    handlers = [capture, logs.make_handler("json", as_json), logs.make_handler("text", as_text)]
    root = logging.getLogger()
    for handler in handlers:
        root.addHandler(handler)

    # Connections are opened after the levels are set: each decides then what it logs.
    connection = engine.connect()
    outer = connection.begin()
    factory = sessionmaker(
        bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False
    )
    get_db(loud_app).bind_sessions(factory)
    session = factory()
    http = loud_app.test_client()
    try:
        yield Loud(loud_app, http, session, Factory(session, http), capture, as_json, as_text)
    finally:
        monkeypatch.undo()
        session.close()
        outer.rollback()
        connection.close()
        engine.dispose()
        for handler in handlers:
            root.removeHandler(handler)
        for logger, level, disabled in saved:
            logger.setLevel(level)
            logger.disabled = disabled
        logs.configure(app.config["LOG_LEVEL"], app.config["LOG_FORMAT"])


# -- the journey --------------------------------------------------------------------------------
def _subject() -> dict[str, Any]:
    return {
        "given_name": c("given"),
        "family_name": c("family"),
        "aliases": [c("alias"), c("Zoë")],
        "date_of_birth": DOB,
        "gender": "female",
        "identifiers": [
            {"system": "nhs_number", "value": f"{NHS[:3]} {NHS[3:6]} {NHS[6:]}"},
            {"system": "la_case_ref", "value": c("caseref")},
            {"system": "other", "value": c("other-id")},
        ],
        "address": {"line": f"1 {c('street')}", "town": c("town"), "postcode": POSTCODE},
    }


def _referral(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "subject": _subject(),
        "categories": ["county_lines", "missing"],
        "indicators": ["TRV-01", "PHN-01"],
        "summary": c("summary"),
        "narrative": c("narrative"),
        "observed_at": (datetime.now(UTC) - timedelta(hours=2)).isoformat(),
        "location": {
            "description": c("platform"),
            "postcode": POSTCODE,
            "transport_hub": c("station"),
        },
        "risk_level": "immediate",
        "immediate_action": c("action"),
    }
    body.update(overrides)
    return body


def _share(agency: str, access: str = "contribute") -> dict[str, Any]:
    return {
        "agency": agency,
        "access": access,
        "purpose": "safeguard_assess",
        "necessity": c("necessity"),
        "lawful_basis": {
            "article_6": "public_task",
            "condition": "dpa2018_sch1_para18_safeguarding",
            "gateway": c("gateway"),
        },
        "consent": {"status": "not_sought", "rationale": c("rationale")},
    }


def _journey(loud: Loud, monkeypatch: pytest.MonkeyPatch, is_postgres: bool) -> None:
    btp = loud.factory.partner("btp", kind="police")
    ncs = loud.factory.partner("ncs", kind="local_authority")
    outsider = loud.factory.partner("outsider", kind="charity")
    call = loud.call

    def h(partner: Partner, **extra: str) -> dict[str, str]:
        return partner.headers(**extra)

    # Create, read, search, change: every personal field holds the canary.
    first = _referral()
    keyed = h(btp, **{"Idempotency-Key": c("key")})
    created = call("post", "/v1/referrals", json=first, headers=keyed)
    assert created.status_code == 201, created.get_json()
    rid = created.get_json()["id"]
    sid = created.get_json()["subject_id"]
    replayed = call("post", "/v1/referrals", json=first, headers=keyed)
    assert replayed.headers.get("Idempotent-Replayed") == "true", replayed.get_json()
    assert call("get", f"/v1/referrals/{rid}", headers=h(btp)).status_code == 200
    subject = call("get", f"/v1/subjects/{sid}", headers=h(btp))
    assert subject.status_code == 200
    patched_subject = call(
        "patch",
        f"/v1/subjects/{sid}",
        json={"aliases": [c("alias2")], "address": {"line": c("line2"), "town": c("town2")}},
        headers=h(btp, **{"If-Match": subject.headers["ETag"]}),
    )
    assert patched_subject.status_code == 200, patched_subject.get_json()
    for query in (
        f"q={CANARY}",
        f"q={c('given')}%20{c('family')}",
        f"date_of_birth={DOB}",
        f"q={c('alias')}&date_of_birth={DOB}",
    ):
        found = call("get", f"/v1/subjects?{query}", headers=h(btp))
        assert found.status_code == 200, found.get_json()
    assert call("get", "/v1/referrals?risk_level=immediate", headers=h(btp)).status_code == 200
    # Matching (CONTRACT §9) by the names, an alias, the identifiers, and refused on them.
    for asked in (
        {"given_name": c("given"), "family_name": c("family"), "date_of_birth": DOB},
        {"given_name": c("alias"), "family_name": c("family"), "estimated_birth_year": 2013},
        {"identifiers": _subject()["identifiers"]},
    ):
        matched = call("post", "/v1/matches", json=asked, headers=h(outsider))
        assert matched.status_code == 201, matched.get_json()
        assert matched.get_json()["items"], asked
    for refused in (
        {"given_name": c("given")},
        {"given_name": c("given"), "family_name": c("family"), "date_of_birth": "2999-01-01"},
        {"identifiers": [{"system": "nhs_number", "value": c("nhs")}]},
        {**_subject()},
    ):
        assert call("post", "/v1/matches", json=refused, headers=h(outsider)).status_code == 422

    etag = call("get", f"/v1/referrals/{rid}", headers=h(btp)).headers["ETag"]
    patched = call(
        "patch",
        f"/v1/referrals/{rid}",
        json={"narrative": c("narrative2"), "location": {"description": c("platform2")}},
        headers=h(btp, **{"If-Match": etag}),
    )
    assert patched.status_code == 200, patched.get_json()
    shared = call("post", f"/v1/referrals/{rid}/shares", json=_share("ncs"), headers=h(btp))
    assert shared.status_code == 201, shared.get_json()
    share_id = shared.get_json()["id"]
    for partner in (btp, ncs):
        noted = call(
            "post",
            f"/v1/referrals/{rid}/notes",
            json={"body": c("note"), "visibility": "shared"},
            headers=h(partner),
        )
        assert noted.status_code == 201, noted.get_json()
    assert call("get", f"/v1/referrals/{rid}/notes", headers=h(ncs)).status_code == 200
    assert call("get", f"/v1/referrals/{rid}/history", headers=h(ncs)).status_code == 200
    ack = call("post", f"/v1/referrals/{rid}/shares/{share_id}/acknowledge", headers=h(ncs))
    assert ack.status_code == 200, ack.get_json()
    etag = call("get", f"/v1/referrals/{rid}", headers=h(btp)).headers["ETag"]
    for to in ("acknowledged", "in_assessment", "no_further_action", "closed"):
        moved = call(
            "post",
            f"/v1/referrals/{rid}/transitions",
            json={"to": to, "reason": c(f"reason-{to}")},
            headers=h(btp, **{"If-Match": etag}),
        )
        assert moved.status_code == 200, moved.get_json()
        etag = moved.headers["ETag"]
    second = call("post", "/v1/referrals", json=_referral(), headers=h(btp))
    assert second.status_code == 201
    rid2 = second.get_json()["id"]
    shared2 = call("post", f"/v1/referrals/{rid2}/shares", json=_share("ncs"), headers=h(btp))
    assert shared2.status_code == 201
    revoked = call(
        "post",
        f"/v1/referrals/{rid2}/shares/{shared2.get_json()['id']}/revoke",
        json={"reason": c("revoke")},
        headers=h(btp),
    )
    assert revoked.status_code == 200, revoked.get_json()
    etag2 = call("get", f"/v1/referrals/{rid2}", headers=h(btp)).headers["ETag"]
    moved = call(
        "post",
        f"/v1/referrals/{rid2}/transfer",
        json={
            "agency": "ncs",
            "reason": c("transfer"),
            "lawful_basis": {"article_6": "public_task", "gateway": c("gateway2")},
        },
        headers=h(btp, **{"If-Match": etag2}),
    )
    assert moved.status_code == 200, moved.get_json()
    user = call(
        "post",
        "/v1/admin/users",
        json={"email": EMAIL, "name": c("staff"), "roles": ["caseworker"]},
        headers=h(btp),
    )
    assert user.status_code == 201, user.get_json()
    assert call("get", "/v1/admin/users", headers=h(btp)).status_code == 200
    assert call("get", "/v1/audit/events", headers=h(btp)).status_code == 200

    # Refused: validation with the canary in bad fields (422 answers the caller who sent it).
    for body in (
        _referral(summary=CANARY * 40),
        _referral(subject={**_subject(), "date_of_birth": CANARY}),
        _referral(indicators=[CANARY[:20]]),
        _referral(**{c("field"): c("value")}),
        _referral(subject={**_subject(), "address": {"postcode": CANARY}}),
        _referral(
            subject={**_subject(), "identifiers": [{"system": "nhs_number", "value": CANARY}]}
        ),
    ):
        refused = call("post", "/v1/referrals", json=body, headers=h(btp))
        assert refused.status_code == 422, refused.get_json()
    for query in (f"q={CANARY}&{CANARY}=1", f"date_of_birth={CANARY}", f"q={CANARY * 10}"):
        assert call("get", f"/v1/subjects?{query}", headers=h(btp)).status_code == 422
    assert call("get", f"/v1/agencies?{CANARY}=1", headers=h(btp)).status_code == 422
    wrong_purpose = call(
        "get", f"/v1/referrals/{rid}", headers=h(btp, **{"Purpose-Of-Use": CANARY})
    )
    assert wrong_purpose.status_code == 422
    reused = call(
        "post",
        "/v1/referrals",
        json=_referral(summary=c("other")),
        headers=h(btp, **{"Idempotency-Key": c("key")}),
    )
    assert reused.status_code == 422
    bad_user = call(
        "post",
        "/v1/admin/users",
        json={"email": CANARY, "name": c("n"), "roles": ["x"]},
        headers=h(btp),
    )
    assert bad_user.status_code == 422
    # Refused: who may not see it, and who is nobody.
    assert call("get", f"/v1/referrals/{rid}", headers=h(outsider)).status_code == 404
    assert call("get", f"/v1/subjects/{sid}", headers=h(outsider)).status_code == 404
    assert call("get", f"/v1/subjects?q={CANARY}", headers=h(outsider)).status_code == 200
    assert call("get", f"/v1/subjects/{CANARY}", headers=h(btp)).status_code == 404
    forged = call("get", f"/v1/subjects?q={CANARY}", headers={"Authorization": f"Bearer {CANARY}"})
    assert forged.status_code == 401
    basic = call(
        "post",
        "/oauth/token",
        data={"grant_type": "client_credentials"},
        auth=(CANARY, c("secret")),
    )
    assert basic.status_code == 401
    duplicate = call(
        "post",
        "/v1/admin/users",
        json={"email": EMAIL, "name": c("staff"), "roles": ["caseworker"]},
        headers=h(btp),
    )
    assert duplicate.status_code == 409

    # Failures the database describes with the canary in its words.
    from casehub.services import admin, agencies, referrals

    def racing_add_user(session: Session, *, agency_code: str, email: str, name: str, roles):
        # As if another request had added the same email between this one's check and insert.
        user = User(agency_code=agency_code, email=email.lower(), name=name, roles=" ".join(roles))
        session.add(user)
        session.flush()  # IntegrityError: DETAIL: Key (email)=(...) already exists
        return user

    body = {"email": EMAIL, "name": c("staff"), "roles": ["caseworker"]}
    monkeypatch.setattr(agencies, "add_user", racing_add_user)
    assert call("post", "/v1/admin/users", json=body, headers=h(btp)).status_code == 409

    def wrapped_create_user(session: Session, *, actor: Any, email: str, name: str, roles):
        try:
            return racing_add_user(
                session, agency_code=actor.agency, email=email, name=name, roles=roles
            )
        except IntegrityError as error:  # a bug that logs: the message quotes the email too
            raise RuntimeError(f"could not add {email} ({name})") from error

    monkeypatch.setattr(admin, "create_user", wrapped_create_user)
    assert call("post", "/v1/admin/users", json=body, headers=h(btp)).status_code == 500
    monkeypatch.undo()

    def failing_list(session: Session, **_: Any):
        if is_postgres:  # invalid input syntax for type integer: "Zqxcanary..."
            session.execute(text("SELECT CAST(:value AS INTEGER)"), {"value": CANARY})
        raise DataError(
            "SELECT CAST(? AS INTEGER)",
            {"value": CANARY},
            ValueError(f'invalid input syntax for type integer: "{CANARY}"'),
        )

    monkeypatch.setattr(referrals, "list_referrals", failing_list)
    assert call("get", "/v1/referrals", headers=h(btp)).status_code == 500
    monkeypatch.undo()

    real_commit = Session.commit

    def failing_commit(self: Session) -> None:
        if self is not loud.session:
            raise RuntimeError(f"disk full while saving {c('given')}")
        real_commit(self)

    headers = h(btp)
    monkeypatch.setattr(Session, "commit", failing_commit)
    assert call("post", "/v1/referrals", json=_referral(), headers=headers).status_code == 500
    monkeypatch.undo()


def test_no_canary_in_any_log_line_audit_row_or_error_body(
    loud: Loud, monkeypatch, is_postgres, caplog, record_property
):
    caplog.set_level(logging.DEBUG)
    _journey(loud, monkeypatch, is_postgres)
    assert any(r.name == "sqlalchemy.engine.Engine" for r in loud.capture.records), "no SQL echo"

    # Every record: as JSON, as text, as pytest writes it, and everything it carries.
    plain = logging.Formatter("%(name)s %(levelname)s %(message)s")
    found: list[str] = []
    for record in loud.capture.records:
        carried = repr(record.__dict__) + plain.format(record)
        if hits(carried):
            found.append(carried[:400])
    json_lines = loud.as_json.getvalue().splitlines()
    for line in json_lines:
        json.loads(line)  # every line is one JSON object
    for output in (loud.as_json.getvalue(), loud.as_text.getvalue(), caplog.text):
        found += [line[:400] for line in output.splitlines() if hits(line)]
    assert any("exc_info" in json.loads(line) for line in json_lines), "no error was logged"
    if is_postgres:  # psycopg's own errors were raised, and logged by their codes alone
        assert "sqlstate=22P02" in loud.as_json.getvalue()  # invalid_text_representation
        assert "sqlstate=23505, constraint=uq_users_email" in loud.as_json.getvalue()

    # Every row of every audit table, every text and JSON column.
    audit_rows = 0
    for table in Base.metadata.sorted_tables:
        if not table.name.startswith("audit"):
            continue
        columns = [col for col in table.columns if isinstance(col.type, String | Text | JSON)]
        if not columns:
            continue  # audit_pending: positions only
        for row in loud.session.connection().execute(select(*columns)):
            audit_rows += 1
            if hits(json.dumps(list(row), default=str)):
                found.append(f"{table.name}: {row}")
    assert audit_rows > 40

    # Error bodies the caller's own input did not cause (422 and 400 echo what was sent).
    errors = [r for r in loud.responses if r[2] >= 400 and r[2] not in (400, 422)]
    assert {404, 401, 409, 500} <= {r[2] for r in errors}
    found += [f"{m} {p} {s}: {body}" for m, p, s, body in errors if hits(body)]

    record_property(
        "figures",
        (
            "log canary",
            {
                "lines scanned": len(json_lines),
                "hits": len(found),
                "audit rows scanned": audit_rows,
            },
        ),
    )
    assert found == []


# -- gunicorn, for real -------------------------------------------------------------------------
def _raw(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        try:
            return sock.recv(1024)
        except OSError:
            return b""


def test_gunicorn_error_and_access_logs_hold_no_canary(tmp_path, record_property):
    with fresh_database(tmp_path, "canary") as database_url:
        port = free_port()
        env = live_environment(tmp_path, database_url, port)
        casehub(env, ["db", "upgrade"])
        casehub(env, ["agencies", "add", "btp", "--name", "BTP", "--kind", "police"])
        (partner,) = casehub_json(
            env,
            [
                "clients",
                "add",
                "--agency",
                "btp",
                "--name",
                "btp system",
                "--json",
                "--scopes",
                "referrals:read referrals:write subjects:read subjects:write",
            ],
        )
        loud = {**env, "CASEHUB_LOG_LEVEL": "debug", "CASEHUB_LOG_FORMAT": "json"}
        with gunicorn({**loud, "CASEHUB_SQL_ECHO": "1"}, tmp_path) as server:
            base = server.base_url
            token = httpx.post(
                server.token_url,
                data={"grant_type": "client_credentials"},
                auth=(partner["client_id"], partner["client_secret"]),
            ).json()["access_token"]
            bearer = {"Authorization": f"Bearer {token}", "X-Request-Id": f"canary-{SUFFIX}"}
            created = httpx.post(f"{base}/v1/referrals", json=_referral(), headers=bearer)
            assert created.status_code == 201, created.text
            for query in (f"q={CANARY}", f"date_of_birth={DOB}", f"q={CANARY}&{CANARY}=1"):
                httpx.get(f"{base}/v1/subjects?{query}", headers=bearer)
            assert httpx.get(f"{base}/v1/subjects/{CANARY}", headers=bearer).status_code == 404
            assert (
                httpx.get(
                    f"{base}/v1/referrals", headers={"Authorization": f"Bearer {CANARY}"}
                ).status_code
                == 401
            )
            assert (
                httpx.post(
                    server.token_url, data={"grant_type": "client_credentials"}, auth=(CANARY, "x")
                ).status_code
                == 401
            )
            # Requests gunicorn itself refuses, quoting them: a space in the query, a bad header.
            refused = (
                f"GET /v1/subjects?q={CANARY} {CANARY} HTTP/1.1\r\nHost: x\r\n\r\n",
                f"GET /v1/subjects?q={CANARY} HTTP/1.1\r\nHost: x\r\n"
                f"X-{CANARY}\x01: {CANARY}\r\n\r\n",
                f"GET /v1/subjects?q={CANARY}&x={'a' * 5000} HTTP/1.1\r\nHost: x\r\n\r\n",
            )
            for request in refused:
                assert _raw(port, request.encode()).startswith(b"HTTP/1.1 4")
            time.sleep(0.5)  # let the last lines be written
        output = server.log.read_text()

    lines = output.splitlines()
    parsed = [json.loads(line) for line in lines]  # every line of both logs is JSON
    access = [p for p in parsed if p["logger"] == "gunicorn.access"]
    completed = [p for p in parsed if p["message"] == "request completed"]
    assert access and completed
    assert all(list(p) == list(logs.ACCESS_LINE_FIELDS) for p in access), access[0]
    assert all(list(p) == list(logs.REQUEST_LINE_FIELDS) for p in completed), completed[0]
    assert all(isinstance(p["worker"], int) and p["worker"] != os.getpid() for p in access)
    ours = [p for p in access if p["request_id"] == f"canary-{SUFFIX}"]
    assert {(p["method"], p["route"]) for p in ours} >= {
        ("POST", "/v1/referrals"),
        ("GET", "/v1/subjects"),
        ("GET", None),  # /v1/subjects/<canary> routes nowhere: no route, and never the path
    }
    # The token is read once a route matched: then the caller is named on the line.
    assert {(p["agency"], p["client_id"]) for p in ours if p["route"]} == {
        ("btp", partner["client_id"])
    }
    assert any("Invalid request from ip=" in p["message"] for p in parsed)
    assert any(p["logger"] == "sqlalchemy.engine.Engine" for p in parsed), "no SQL echo"
    found = [line for line in lines if hits(line)]
    record_property("figures", ("log canary", {"lines scanned": len(lines), "hits": len(found)}))
    assert found == []


# -- the line's shape ---------------------------------------------------------------------------
@pytest.fixture
def lines(client) -> Iterator[tuple[io.StringIO, io.StringIO]]:
    as_json, as_text = io.StringIO(), io.StringIO()
    handlers = [logs.make_handler("json", as_json), logs.make_handler("text", as_text)]
    root = logging.getLogger()
    for handler in handlers:
        root.addHandler(handler)
    try:
        yield as_json, as_text
    finally:
        for handler in handlers:
            root.removeHandler(handler)


def test_a_request_line_is_json_with_exactly_the_documented_keys(client, factory, lines):
    btp = factory.partner("btp")
    response = client.get("/v1/referrals?limit=5", headers=btp.headers())
    assert response.status_code == 200
    written = [json.loads(line) for line in lines[0].getvalue().splitlines()]
    (line,) = [w for w in written if w["request_id"] == response.headers["X-Request-Id"]]
    assert list(line) == list(logs.REQUEST_LINE_FIELDS)
    assert line["level"] == "INFO" and line["logger"] == "casehub.request"
    assert line["message"] == "request completed"
    assert (line["method"], line["route"], line["status"]) == ("GET", "/v1/referrals", 200)
    assert (line["client_id"], line["agency"]) == (btp.client_id, "btp")
    assert line["worker"] == os.getpid()
    assert isinstance(line["duration_ms"], float) and line["duration_ms"] >= 0
    assert datetime.fromisoformat(line["time"]).tzinfo is not None

    missing = client.get(f"/v1/referrals/{uuid.uuid4()}", headers=btp.headers())
    assert missing.status_code == 404
    written = [json.loads(line) for line in lines[0].getvalue().splitlines()]
    (line,) = [w for w in written if w["request_id"] == missing.headers["X-Request-Id"]]
    assert (line["route"], line["status"]) == ("/v1/referrals/<uuid:referral_id>", 404)


def test_a_line_logged_during_a_request_carries_its_context(client, factory, lines, monkeypatch):
    from casehub.services import referrals

    def failing(*_args: Any, **_kwargs: Any) -> None:
        raise ValueError(f"{CANARY} is not a number")

    btp = factory.partner("btp")
    monkeypatch.setattr(referrals, "list_referrals", failing)
    response = client.get("/v1/referrals", headers=btp.headers())
    assert response.status_code == 500
    written = [json.loads(line) for line in lines[0].getvalue().splitlines()]
    (error,) = [w for w in written if w["message"] == "unhandled error"]
    assert error["request_id"] == response.headers["X-Request-Id"]
    assert (error["agency"], error["route"], error["level"]) == ("btp", "/v1/referrals", "ERROR")
    assert "ValueError: message withheld" in error["exc_info"]
    assert 'in failing\n    raise ValueError(f"{CANARY} is not a number")' in error["exc_info"]
    assert not hits(lines[0].getvalue() + lines[1].getvalue())


def test_the_text_format(client, factory, lines):
    btp = factory.partner("btp")
    response = client.get("/v1/referrals", headers=btp.headers())
    rid = response.headers["X-Request-Id"]
    (line,) = [line for line in lines[1].getvalue().splitlines() if rid in line]
    assert f" INFO [{os.getpid()}] casehub.request: request completed request_id={rid} " in line
    assert line.endswith(
        f"client_id={btp.client_id} agency=btp method=GET route=/v1/referrals status=200 "
        f"duration_ms={line.rsplit('=', 1)[1]}"
    )
    datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")


def test_the_log_settings_are_checked():
    for setting, value in (("LOG_FORMAT", "xml"), ("LOG_LEVEL", "loud")):
        with pytest.raises(config.ConfigError, match=f"CASEHUB_{setting}"):
            config.load(environ={f"CASEHUB_{setting}": value})
    assert config.load(environ={"CASEHUB_LOG_FORMAT": "text"})["LOG_FORMAT"] == "text"
    with pytest.raises(RuntimeError, match="CASEHUB_LOG_FORMAT"):
        logs.environ_format({"CASEHUB_LOG_FORMAT": "xml"})


class Diag:
    """What psycopg's `diag` holds for a unique violation."""

    constraint_name = "uq_users_email"
    table_name = "users"
    column_name = None
    message_detail = f"Key (email)=({EMAIL}) already exists."
    message_primary = 'duplicate key value violates unique constraint "uq_users_email"'


class UniqueViolation(Exception):
    sqlstate = "23505"
    diag = Diag()


def test_a_database_error_is_described_by_its_codes_never_its_words():
    error = IntegrityError("INSERT INTO users ...", {"email": EMAIL}, UniqueViolation(EMAIL))
    assert logs.describe(error) == (
        "message withheld (from tests.test_log_canary.UniqueViolation, sqlstate=23505, "
        "constraint=uq_users_email, table=users)"
    )
    try:
        try:
            raise error
        except IntegrityError as caught:
            raise RuntimeError(EMAIL) from caught
    except RuntimeError:
        record = logging.getLogger("casehub.test").makeRecord(
            "casehub.test", logging.ERROR, __file__, 1, "failed %s", (error,), exc_info=None
        )
        record.exc_info = sys.exc_info()
        logs.redact(record)
        written = logs.JsonFormatter().format(record) + logs.TextFormatter().format(record)
    assert "sqlalchemy.exc.IntegrityError: message withheld (from tests" in written
    assert "The above exception was the direct cause" in written
    assert "RuntimeError: message withheld" in written
    assert not hits(written)


def test_gunicorn_refuses_an_access_format_that_would_show_the_query():
    from gunicorn.config import Config

    cfg = Config()
    cfg.set("access_log_format", '%(h)s "%(r)s" %(s)s')
    cfg.set("accesslog", "-")
    with pytest.raises(RuntimeError, match="access_log_format may not use r"):
        logs.GunicornLogger(cfg)
