"""Migration 0015 fills in what matching reads for the children stored before it: each name
key's birth year (the date of birth's, else the estimated year) and each identifier as a row,
normalised as the service writes them; and on PostgreSQL a key row the previous release writes
during a rolling upgrade still gets its birth year."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime

import sqlalchemy as sa
from alembic import command
from sqlalchemy import Engine

from casehub import migrate
from casehub.db import UTCDateTime
from casehub.services import names
from tests.test_migrations import scratch_engine  # noqa: F401  (the fixture)

START = datetime(2025, 1, 1, tzinfo=UTC)
agencies = sa.table(
    "agencies",
    *(sa.column(c) for c in ("code", "name", "kind", "active", "is_platform")),
    sa.column("created_at", UTCDateTime()),
)
subjects = sa.table(
    "subjects",
    sa.column("id", sa.Uuid()),
    *(sa.column(c) for c in ("given_name", "family_name", "gender", "created_by_agency")),
    sa.column("aliases", sa.JSON()),
    sa.column("identifiers", sa.JSON()),
    sa.column("date_of_birth", sa.Date()),
    sa.column("estimated_birth_year", sa.Integer()),
    sa.column("created_at", UTCDateTime()),
    sa.column("updated_at", UTCDateTime()),
    sa.column("version", sa.Integer()),
)
keys = sa.table(
    "subject_name_keys",
    sa.column("key", sa.String()),
    sa.column("subject_id", sa.Uuid()),
    sa.column("whole_word", sa.Boolean()),
    sa.column("subject_created_at", UTCDateTime()),
)


def _migrate(engine: Engine, verb: str, revision: str) -> None:
    with engine.begin() as connection:
        getattr(command, verb)(migrate.alembic_config(connection=connection), revision)


def _child(given: str, **fields: object) -> dict[str, object]:
    return {
        "id": uuid.uuid4(),
        "given_name": given,
        "family_name": "Mensah",
        "gender": "unknown",
        "created_by_agency": "notts-cs",
        "aliases": [],
        "identifiers": [],
        "date_of_birth": None,
        "estimated_birth_year": None,
        "created_at": START,
        "updated_at": START,
        "version": 1,
        **fields,
    }


def test_upgrade_gives_stored_children_their_birth_years_and_identifier_rows(
    scratch_engine: Engine,  # noqa: F811
) -> None:
    _migrate(scratch_engine, "upgrade", "0014")
    kyle = _child(
        "Kyle",
        date_of_birth=date(2010, 8, 14),
        identifiers=[
            {"system": "nhs_number", "value": "943 476 5919"},
            {"system": "la_case_ref", "value": "nc-2024-0017"},
            {"system": "other", "value": "- -"},  # identifies nobody
        ],
    )
    ama = _child("Ama", estimated_birth_year=2011)
    unknown = _child("Kofi")
    with scratch_engine.begin() as connection:
        connection.execute(
            agencies.insert(),
            [{"code": "notts-cs", "name": "NCS", "kind": "local_authority", "active": True,
              "is_platform": False, "created_at": START}],
        )  # fmt: skip
        connection.execute(subjects.insert(), [kyle, ama, unknown])
        connection.execute(
            keys.insert(),
            [
                {"key": key, "subject_id": row["id"], "whole_word": whole,
                 "subject_created_at": START}
                for row in (kyle, ama, unknown)
                for key, whole in names.subject_key_kinds(
                    str(row["given_name"]), str(row["family_name"]), []
                ).items()
            ],
        )  # fmt: skip

    _migrate(scratch_engine, "upgrade", "0015")
    with scratch_engine.connect() as connection:
        years = dict(
            connection.execute(
                sa.text("SELECT DISTINCT subject_id, birth_year FROM subject_name_keys")
            ).all()
        )
        identifiers = connection.execute(
            sa.text("SELECT subject_id, system, value FROM subject_identifiers ORDER BY system")
        ).all()
    years = {uuid.UUID(str(subject_id)): year for subject_id, year in years.items()}
    identifiers = [(uuid.UUID(str(s)), system, value) for s, system, value in identifiers]
    assert years == {kyle["id"]: 2010, ama["id"]: 2011, unknown["id"]: None}
    assert identifiers == [
        (kyle["id"], "la_case_ref", "NC20240017"),
        (kyle["id"], "nhs_number", "9434765919"),
    ]
    # What the service would store for the same identifiers.
    assert names.identifier_value("nc-2024-0017") == "NC20240017"

    _migrate(scratch_engine, "downgrade", "0014")
    _migrate(scratch_engine, "upgrade", "head")


def test_a_key_row_without_a_birth_year_takes_its_subjects_on_postgresql(
    scratch_engine: Engine,  # noqa: F811
) -> None:
    import pytest

    if scratch_engine.dialect.name != "postgresql":
        pytest.skip("rolling upgrades run on PostgreSQL; SQLite has one writer and no trigger")
    _migrate(scratch_engine, "upgrade", "head")
    kyle = _child("Kyle", date_of_birth=date(2010, 8, 14))
    with scratch_engine.begin() as connection:
        connection.execute(
            agencies.insert(),
            [{"code": "notts-cs", "name": "NCS", "kind": "local_authority", "active": True,
              "is_platform": False, "created_at": START}],
        )  # fmt: skip
        connection.execute(subjects.insert(), [kyle])
        # As the previous release writes them: neither the created_at nor the birth year.
        connection.execute(
            sa.text("INSERT INTO subject_name_keys (subject_id, key) VALUES (:id, 'kyle')"),
            {"id": kyle["id"]},
        )
        year = connection.execute(sa.text("SELECT birth_year FROM subject_name_keys")).scalar()
    assert year == 2010


def test_casehub_upgrade_vacuums_the_rebuilt_keys_on_postgresql(
    scratch_engine: Engine,  # noqa: F811
) -> None:
    """The key table 0015 rebuilds has no visibility map until vacuumed (every index-only scan
    of a match would read its heap): `migrate.upgrade` vacuums it after the migration commits."""
    import pytest

    if scratch_engine.dialect.name != "postgresql":
        pytest.skip("SQLite has no visibility map; 0015 updates its rows in place there")
    migrate.upgrade(scratch_engine, "0014")
    kyle = _child("Kyle", date_of_birth=date(2010, 8, 14))
    with scratch_engine.begin() as connection:
        connection.execute(
            agencies.insert(),
            [{"code": "notts-cs", "name": "NCS", "kind": "local_authority", "active": True,
              "is_platform": False, "created_at": START}],
        )  # fmt: skip
        connection.execute(subjects.insert(), [kyle])
        connection.execute(
            keys.insert(),
            [{"key": "kyle", "subject_id": kyle["id"], "whole_word": True,
              "subject_created_at": START}],
        )  # fmt: skip
    migrate.upgrade(scratch_engine, "head")
    with scratch_engine.connect() as connection:
        visible = connection.execute(
            sa.text("SELECT relallvisible FROM pg_class WHERE relname = 'subject_name_keys'")
        ).scalar()
    assert visible == 1  # its one page is all-visible: index-only scans skip the heap
