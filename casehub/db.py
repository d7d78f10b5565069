"""Database plumbing: the declarative base, column types, the engine and request sessions."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import psycopg
from flask import Flask, current_app, g
from sqlalchemy import DateTime, Engine, MetaData, create_engine, event
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware timestamp, stored in UTC on every database (naive UTC on SQLite)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    @property
    def python_type(self) -> type[datetime]:
        # Keyset cursors decode their values by python_type; without this it is `object`.
        return datetime

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored; pass an aware datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime()}


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_row_values(row: Any) -> dict[str, Any]:
    """A new mapped object's column values for a Core INSERT, without those left unset: Core
    would write None to a JSON column as JSON null, where the unit of work writes SQL NULL."""
    values = {column.key: getattr(row, column.key) for column in row.__table__.columns}
    return {key: value for key, value in values.items() if value is not None}


def new_id() -> uuid.UUID:
    return uuid.uuid4()


CONNECT_TIMEOUT = 5  # seconds to open a PostgreSQL connection (libpq's connect_timeout)
CUSTOM_PLANS = "-c plan_cache_mode=force_custom_plan"


def make_engine(url: str, *, echo: bool = False) -> Engine:
    """An engine tuned per backend; parameters are never echoed into logs or errors."""
    if echo:
        # SQLAlchemy's echo adds its own plain-text handler on standard output unless its
        # logger has one: with this, statements reach only the root handler (casehub.logs).
        engine_log = logging.getLogger("sqlalchemy.engine.Engine")
        if not engine_log.handlers:
            engine_log.addHandler(logging.NullHandler())
    if url.startswith("sqlite"):
        engine = create_engine(url, echo=echo, hide_parameters=True, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            # Let SQLAlchemy (not pysqlite) emit BEGIN, so savepoints and locks behave.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            # IMMEDIATE takes the write lock up front: no deadlock between readers upgrading.
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    # libpq waits for ever for a server that accepts the TCP connection but never answers (a
    # frozen host, a dead path behind a load balancer): bound it, so a request answers 503 in
    # seconds instead of hanging. A connect_timeout in the URL wins.
    query = make_url(url).query
    connect_args: dict[str, Any] = (
        {} if "connect_timeout" in query else {"connect_timeout": CONNECT_TIMEOUT}
    )
    # psycopg prepares a statement after its fifth run, and PostgreSQL may then settle on a
    # generic plan, chosen without the values: at a million referrals that plan walked every
    # referral for `indicator=` (p50 139 and 368 ms, against 34 and 29 ms planned for the
    # values, bench.scale). Every statement is planned for its values; the options of the URL
    # (if any) come first.
    options = " ".join(filter(None, [str(query.get("options") or ""), CUSTOM_PLANS]))
    connect_args["options"] = options
    engine = create_engine(
        url,
        echo=echo,
        hide_parameters=True,
        pool_size=5,
        max_overflow=5,
        pool_timeout=10,
        connect_args=connect_args,
    )
    # Several rows at once (a child's name keys, a referral's lists, a request's audit events)
    # go as one INSERT with many VALUES, as SQLAlchemy's psycopg2 dialect sends them: psycopg's
    # executemany pipelines a statement per row, which costs more CPU than the rows themselves.
    engine.dialect.use_insertmanyvalues_wo_returning = True
    event.listen(engine, "checkout", _check_alive)
    event.listen(engine, "checkin", _note_checkin)
    return engine


# A pooled connection is checked before each request uses it, without a round trip (the pool's
# pre_ping would add one to every request): libpq reads whatever the server sent it while it sat
# in the pool, so a backend that was terminated or a server that went away (both close the
# socket) is noticed here and replaced by a fresh connection before the request starts. Only a
# connection idle for longer than PING_AFTER_IDLE, which a silent network path may have dropped,
# is pinged. A connection that dies after this check fails its request with a 503 (web.py).
PING_AFTER_IDLE = 30.0  # seconds


def _note_checkin(_dbapi_connection: Any, record: Any) -> None:
    record.info["checked_in"] = time.monotonic()


def _check_alive(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
    pgconn = dbapi_connection.pgconn
    try:
        # Twice: the first read takes the server's goodbye (an error message), the second
        # meets the closed socket. Neither waits: they read only what has arrived.
        pgconn.consume_input()
        pgconn.consume_input()
    except psycopg.OperationalError as exc:
        raise DisconnectionError("the server closed the connection") from exc
    if pgconn.status != psycopg.pq.ConnStatus.OK:
        raise DisconnectionError("the connection is broken")
    idle = time.monotonic() - record.info.get("checked_in", time.monotonic())
    if idle > PING_AFTER_IDLE:
        try:
            dbapi_connection.execute("SELECT 1")
            dbapi_connection.rollback()
        except psycopg.Error as exc:
            raise DisconnectionError("the connection did not answer a ping") from exc


class Database:
    """The engine and session factory bound to one Flask app."""

    def __init__(self) -> None:
        self.engine: Engine | None = None
        self.sessionmaker: sessionmaker[Session] | None = None

    def init_app(self, app: Flask) -> None:
        self.engine = make_engine(app.config["DATABASE_URL"], echo=app.config["SQL_ECHO"])
        self.sessionmaker = sessionmaker(bind=self.engine, expire_on_commit=False)
        self.autocommit_sessionmaker = self.sessionmaker
        if self.engine.dialect.name == "postgresql":
            reads = self.engine.execution_options(isolation_level="AUTOCOMMIT")
            event.listen(reads, "before_cursor_execute", _only_the_audit_write)
            self.autocommit_sessionmaker = sessionmaker(bind=reads, expire_on_commit=False)
        app.extensions["casehub.db"] = self
        app.teardown_appcontext(self._remove_session)

    def bind_sessions(self, factory: sessionmaker[Session]) -> None:
        """Tests bind sessions to one connection inside a rolled-back transaction."""
        self.sessionmaker = self.autocommit_sessionmaker = factory

    def new_session(self, *, autocommit: bool = False) -> Session:
        """A session in a transaction; or (`autocommit`, for a read whose only write is its
        audit event) one whose statements each commit as they run, on PostgreSQL: a read then
        costs no BEGIN and no COMMIT round trip, and the INSERT of its audit event is durable
        when it returns. (Under READ COMMITTED each statement reads its own snapshot either
        way.) SQLite keeps its transaction: it has no round trips to save."""
        assert self.sessionmaker is not None, "Database.init_app was not called"
        return (self.autocommit_sessionmaker if autocommit else self.sessionmaker)()

    @staticmethod
    def _remove_session(_exc: BaseException | None) -> None:
        session: Session | None = g.pop("casehub_session", None)
        if session is not None:
            session.close()


def get_db(app: Flask | None = None) -> Database:
    return (app or current_app).extensions["casehub.db"]


def get_session() -> Session:
    """The session of the current request or app context, created on first use: in autocommit
    for a request web.py marked `casehub_autocommit` (see Database.new_session)."""
    session: Session | None = g.get("casehub_session")
    if session is None:
        session = get_db().new_session(autocommit=g.get("casehub_autocommit", False))
        g.casehub_session = session
    return session


class WriteInAutocommitRead(RuntimeError):
    """A view marked as writing nothing but its audit event tried another write."""


_READ_STATEMENTS = ("SELECT", "WITH", "SHOW")
_WRITES = re.compile(r"\b(INSERT|UPDATE|DELETE|MERGE)\b", re.IGNORECASE)
_AUDIT_WRITE = "INSERT INTO audit_events "
_PLAN_ONLY = "EXPLAIN (FORMAT JSON) "  # a plan's estimate, never run (subject search asks one)


def _only_the_audit_write(
    _conn: Any, _cursor: Any, statement: str, _parameters: Any, _context: Any, _many: bool
) -> None:
    """Refuse, before it runs, any write but the audit INSERT on an autocommit read's
    connection: there it would commit at once, and nothing could roll it back."""
    head = statement.lstrip()[:60].removeprefix(_PLAN_ONLY)
    if head.startswith(_AUDIT_WRITE):
        return
    if head.startswith(_READ_STATEMENTS) and not _WRITES.search(statement):
        return  # (a WITH may hide a data-modifying CTE; a SELECT may say FOR UPDATE)
    raise WriteInAutocommitRead(f"a read marked autocommit sent {head.split()[0]!r}")


@contextmanager
def session_scope(app: Flask | None = None) -> Iterator[Session]:
    """A session that commits on success: for the CLI and workers, never for requests."""
    session = get_db(app).new_session()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
