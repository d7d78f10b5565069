"""Migrations are the schema: they match the models and go down and up again cleanly."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, create_engine, inspect, text
from sqlalchemy.engine import make_url

import casehub.models  # noqa: F401  (registers every table on Base.metadata)
from casehub import migrate
from casehub.db import Base, make_engine


def _differences(engine: Engine) -> list[object]:
    with engine.connect() as connection:
        context = MigrationContext.configure(
            connection,
            opts={
                "compare_type": True,
                "target_metadata": Base.metadata,
                "include_name": migrate.include_name,
            },
        )
        return list(compare_metadata(context, Base.metadata))


def test_models_match_migrations(engine: Engine) -> None:
    differences = _differences(engine)
    assert differences == [], (
        f"the models and migrations/ disagree on {engine.dialect.name}: {differences}. "
        "Write a migration (alembic revision --autogenerate) or fix the model."
    )


def test_test_database_is_at_head(engine: Engine) -> None:
    with engine.connect() as connection:
        assert migrate.current_revision(connection) == migrate.head_revision()


@pytest.fixture
def scratch_engine(database_url: str, tmp_path: Path) -> Iterator[Engine]:
    """An empty database of the same kind as the suite's, dropped afterwards."""
    if not database_url.startswith("postgresql"):
        engine = make_engine(f"sqlite:///{tmp_path / 'scratch.db'}")
        yield engine
        engine.dispose()
        return
    url = make_url(database_url)
    name = f"casehub_scratch_{uuid.uuid4().hex[:12]}"
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


def _tables(engine: Engine) -> set[str]:
    names = set(inspect(engine).get_table_names()) - {"alembic_version"}
    return {name for name in names if not migrate.is_audit_partition(name)}


def test_upgrade_downgrade_upgrade(scratch_engine: Engine) -> None:
    model_tables = set(Base.metadata.tables)

    migrate.upgrade(scratch_engine)
    assert _tables(scratch_engine) == model_tables

    with scratch_engine.begin() as connection:
        command.downgrade(migrate.alembic_config(connection=connection), "base")
    assert _tables(scratch_engine) == set()
    with scratch_engine.connect() as connection:
        assert migrate.current_revision(connection) is None

    migrate.upgrade(scratch_engine)
    assert _tables(scratch_engine) == model_tables
    assert _differences(scratch_engine) == []
    with scratch_engine.connect() as connection:
        assert migrate.current_revision(connection) == migrate.head_revision()
