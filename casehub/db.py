"""Database plumbing: the declarative base, column types, the engine and request sessions."""

from __future__ import annotations

import logging
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


def new_id() -> uuid.UUID:
    return uuid.uuid4()


CONNECT_TIMEOUT = 5  # seconds to open a PostgreSQL connection (libpq's connect_timeout)


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
    connect_args = (
        {} if "connect_timeout" in make_url(url).query else {"connect_timeout": CONNECT_TIMEOUT}
    )
    engine = create_engine(
        url,
        echo=echo,
        hide_parameters=True,
        pool_size=5,
        max_overflow=5,
        pool_timeout=10,
        connect_args=connect_args,
    )
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
        app.extensions["casehub.db"] = self
        app.teardown_appcontext(self._remove_session)

    def bind_sessions(self, factory: sessionmaker[Session]) -> None:
        """Tests bind sessions to one connection inside a rolled-back transaction."""
        self.sessionmaker = factory

    def new_session(self) -> Session:
        assert self.sessionmaker is not None, "Database.init_app was not called"
        return self.sessionmaker()

    @staticmethod
    def _remove_session(_exc: BaseException | None) -> None:
        session: Session | None = g.pop("casehub_session", None)
        if session is not None:
            session.close()


def get_db(app: Flask | None = None) -> Database:
    return (app or current_app).extensions["casehub.db"]


def get_session() -> Session:
    """The session of the current request or app context, created on first use."""
    session: Session | None = g.get("casehub_session")
    if session is None:
        session = get_db().new_session()
        g.casehub_session = session
    return session


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
