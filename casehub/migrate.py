"""Alembic wiring: the migrations folder is the only source of schema, for the app and tests."""

from __future__ import annotations

import re
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError as AlembicError
from sqlalchemy import Connection, Engine, text

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
# The partitions of the audit tables on PostgreSQL (casehub.audit.partitions names them): the
# models describe the partitioned tables, so comparisons of models and schema leave these out.
_AUDIT_PARTITION = re.compile(
    r"audit_(events|chain|event_subjects|event_agencies)_(p\d{4,}|default)"
)


def is_audit_partition(table: str) -> bool:
    return _AUDIT_PARTITION.fullmatch(table) is not None


def include_name(name: str | None, type_: str, _parents: object = None) -> bool:
    """Alembic's `include_name` hook: every schema object but the audit tables' partitions."""
    return not (type_ == "table" and name is not None and is_audit_partition(name))


def alembic_config(url: str | None = None, connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if url:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


# A migration that rewrites a table on PostgreSQL names it here (`needs_vacuum`): a table
# filled by INSERT … SELECT has no visibility map until it is vacuumed, so every index-only scan
# of it visits the heap (matching at a million children: "Oliver Smith" 34 -> 131 ms p50) until
# autovacuum gets to it. VACUUM cannot run in the migration's transaction; `upgrade` runs it
# once that has committed.
VACUUM_KEY = "casehub.vacuum"


def needs_vacuum(config: Config | None, table: str) -> None:
    """From a migration (`op.get_context().config`): vacuum `table` after the upgrade."""
    if config is not None:
        config.attributes.setdefault(VACUUM_KEY, set()).add(table)


def upgrade(engine: Engine, revision: str = "head") -> None:
    with engine.begin() as connection:
        cfg = alembic_config(connection=connection)
        command.upgrade(cfg, revision)
    tables = sorted(cfg.attributes.get(VACUUM_KEY, ()))
    if tables and engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            for table in tables:
                connection.execute(text(f'VACUUM (ANALYZE) "{table}"'))


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
