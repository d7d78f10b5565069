"""Alembic wiring: the migrations folder is the only source of schema, for the app and tests."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError as AlembicError
from sqlalchemy import Connection, Engine

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(url: str | None = None, connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if url:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    with engine.begin() as connection:
        command.upgrade(alembic_config(connection=connection), revision)


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def schema_behind(current: str | None) -> bool:
    """Whether a database at `current` lacks migrations this code needs. A revision this code
    does not know comes from a newer release (migrations are additive: the old code still runs
    on the new schema during a rolling upgrade, and after a rollback), so it is not behind."""
    script = ScriptDirectory.from_config(alembic_config())
    if current is None:
        return True
    if current == script.get_current_head():
        return False
    try:
        script.get_revision(current)
    except AlembicError:
        return False  # newer than this code
    return True
