"""Test harness: migrations build the schema once per run; each test runs inside an outer
transaction that is rolled back. CASEHUB_TEST_DATABASE_URL picks PostgreSQL (a fresh database
is created and dropped); otherwise a SQLite file in a temporary folder is used."""

from __future__ import annotations

import base64
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from casehub import create_app, migrate
from casehub.db import get_db
from casehub.services import agencies as agency_service
from tests.live_server import fresh_database

ALL_SCOPES = (
    "referrals:read referrals:write referrals:share subjects:read subjects:write "
    "subjects:match referrals:emergency subjects:sar statistics:read audit:read webhooks:manage "
    "admin"
)


RATE_LIMITS_OUT_OF_REACH = {
    key: "1000000/minute"
    for key in (
        "RATE_LIMIT_READ",
        "RATE_LIMIT_WRITE",
        "RATE_LIMIT_SEARCH",
        "RATE_LIMIT_MATCH",
        "RATE_LIMIT_AUDIT",
        "RATE_LIMIT_PUBLIC",
        "RATE_LIMIT_AUTH_FAILURES",
        "RATE_LIMIT_AUTH_FAILURES_ADDRESS",
    )
}


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Iterator[str]:
    with fresh_database(tmp_path_factory.mktemp("db"), f"test_{worker_id}") as url:
        yield url


@pytest.fixture(scope="session")
def is_postgres(database_url: str) -> bool:
    return database_url.startswith("postgresql")


@pytest.fixture(scope="session")
def app(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flask]:
    instance = tmp_path_factory.mktemp("instance")
    application = create_app(
        {
            "DATABASE_URL": database_url,
            "ISSUER": "http://casehub.test",
            "SIGNING_KEYS_FILE": str(instance / "signing-keys.json"),
            "CLIENT_SECRET_SCRYPT_N": 2**10,
            "WEBHOOKS_ALLOW_PRIVATE": True,
            # Limits the suites never reach (tests/test_rate_limits.py sets its own), so that
            # every request still passes through the limiter and carries its headers.
            **RATE_LIMITS_OUT_OF_REACH,
        }
    )
    application.config["TESTING"] = True
    engine = get_db(application).engine
    assert engine is not None
    migrate.upgrade(engine)
    yield application
    engine.dispose()


@pytest.fixture(scope="session")
def engine(app: Flask) -> Engine:
    engine = get_db(app).engine
    assert engine is not None
    return engine


@pytest.fixture
def db_session(app: Flask, engine: Engine) -> Iterator[Session]:
    """A session inside an outer transaction; the app's request sessions join it."""
    connection = engine.connect()
    outer = connection.begin()
    factory = sessionmaker(
        bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False
    )
    database = get_db(app)
    original = database.sessionmaker
    database.bind_sessions(factory)
    session = factory()
    try:
        yield session
    finally:
        session.close()
        database.bind_sessions(original)  # type: ignore[arg-type]
        outer.rollback()
        connection.close()
        app.extensions["casehub.validator"].cache.clear()


@pytest.fixture
def client(app: Flask, db_session: Session) -> FlaskClient:
    return app.test_client()


@dataclass
class Partner:
    """A partner system of one agency, with helpers to call the API as it."""

    agency: str
    client_id: str
    client_secret: str | None
    http: FlaskClient

    def token(self, scope: str | None = None) -> str:
        data = {"grant_type": "client_credentials"}
        if scope is not None:
            data["scope"] = scope
        response = self.http.post(
            "/oauth/token", data=data, headers={"Authorization": self.basic()}
        )
        assert response.status_code == 200, response.get_json()
        return str(response.get_json()["access_token"])

    def basic(self) -> str:
        raw = f"{self.client_id}:{self.client_secret}".encode()
        return "Basic " + base64.b64encode(raw).decode()

    def headers(self, scope: str | None = None, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(scope)}", **extra}


class Factory:
    def __init__(self, session: Session, http: FlaskClient) -> None:
        self.session = session
        self.http = http

    def agency(self, code: str, kind: str = "police", *, platform: bool = False, **kw: Any) -> str:
        agency_service.add_agency(
            self.session,
            code=code,
            name=kw.get("name", code.title()),
            kind=kind,
            area=kw.get("area"),
            is_platform=platform,
        )
        self.session.commit()
        return code

    def partner(self, agency: str, scopes: str = ALL_SCOPES, *, kind: str = "police") -> Partner:
        from casehub.models import Agency

        if self.session.get(Agency, agency) is None:
            self.agency(agency, kind)
        client, secret = agency_service.add_client(
            self.session, agency_code=agency, name=f"{agency} system", scope=scopes, scrypt_n=2**10
        )
        self.session.commit()
        return Partner(
            agency=agency, client_id=client.client_id, client_secret=secret, http=self.http
        )


@pytest.fixture
def factory(db_session: Session, client: FlaskClient) -> Factory:
    return Factory(db_session, client)


# -- figures: one summary line per suite for the CI log (security-notes D.6) -----------------
_FIGURES: dict[str, Counter[str]] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """A test adds to its suite's figures with `record_property("figures", (suite, counts))`;
    under xdist the reports carry them to the controller, which adds them up. The teardown
    report carries everything recorded in setup, call and teardown (a fixture may record after
    its test), once."""
    if report.when != "teardown":
        return
    for name, value in report.user_properties:
        if name == "figures":
            suite, counts = value
            _FIGURES.setdefault(suite, Counter()).update(counts)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for suite, counts in _FIGURES.items():
        terminalreporter.write_line(f"{suite}: " + " ".join(f"{k}={v}" for k, v in counts.items()))
