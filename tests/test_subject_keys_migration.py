"""Migration 0008 recomputes every subject's name keys exactly as the service writes them, goes
down to the previous keys, and leaves the previous release able to write keys."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from casehub import migrate
from casehub.db import UTCDateTime
from casehub.services import names
from tests.test_migrations import scratch_engine  # noqa: F401  (the fixture)

REVISION = "0008"
BATCH = 5000  # the migration's subjects per round trip: the test crosses a batch boundary

agencies = sa.table(
    "agencies",
    sa.column("code", sa.String()),
    sa.column("name", sa.String()),
    sa.column("kind", sa.String()),
    sa.column("active", sa.Boolean()),
    sa.column("is_platform", sa.Boolean()),
    sa.column("created_at", UTCDateTime()),
)
subjects = sa.table(
    "subjects",
    sa.column("id", sa.Uuid()),
    sa.column("given_name", sa.String()),
    sa.column("family_name", sa.String()),
    sa.column("aliases", sa.JSON()),
    sa.column("gender", sa.String()),
    sa.column("identifiers", sa.JSON()),
    sa.column("created_by_agency", sa.String()),
    sa.column("created_at", UTCDateTime()),
    sa.column("updated_at", UTCDateTime()),
    sa.column("version", sa.Integer()),
)
old_keys = sa.table(
    "subject_name_keys", sa.column("key", sa.String()), sa.column("subject_id", sa.Uuid())
)
new_keys = sa.table(
    "subject_name_keys",
    sa.column("key", sa.String()),
    sa.column("subject_id", sa.Uuid()),
    sa.column("whole_word", sa.Boolean()),
    sa.column("subject_created_at", UTCDateTime()),
)
NAMES = ["Li", "Lia", "Jon", "John", "Johns", "Zoë", "O'Brien", "Smith-Jones", "Al", "Kwame"]


def _previous_revision() -> str:
    revision = ScriptDirectory.from_config(migrate.alembic_config()).get_revision(REVISION)
    assert revision is not None and isinstance(revision.down_revision, str)
    return revision.down_revision


def _migrate(engine: Engine, verb: str, revision: str) -> None:
    with engine.begin() as connection:
        getattr(command, verb)(migrate.alembic_config(connection=connection), revision)


def _subject(rng: random.Random, n: int, start: datetime) -> dict[str, object]:
    return {
        "id": uuid.UUID(int=rng.getrandbits(128), version=4),
        "given_name": " ".join(rng.sample(NAMES, rng.choice([1, 2]))),
        "family_name": rng.choice(NAMES),
        "aliases": [rng.choice(NAMES)] if n % 3 == 0 else [],
        "gender": "unknown",
        "identifiers": [],
        "created_by_agency": "btp",
        "created_at": start + timedelta(seconds=n, microseconds=n % 997),
        "updated_at": start,
        "version": 1,
    }


def test_upgrade_recomputes_the_keys_as_the_service_writes_them(scratch_engine: Engine) -> None:  # noqa: F811
    _migrate(scratch_engine, "upgrade", _previous_revision())
    rng = random.Random(8)
    start = datetime(2025, 1, 1, tzinfo=UTC)
    rows = [_subject(rng, n, start) for n in range(BATCH + 3)]
    with scratch_engine.begin() as connection:
        connection.execute(
            agencies.insert(),
            [{"code": "btp", "name": "BTP", "kind": "police", "active": True,
              "is_platform": False, "created_at": start}],
        )  # fmt: skip
        connection.execute(subjects.insert(), rows)
        # As the previous release left them: the keys of most subjects, none for some, and a
        # stale key that no name gives any more.
        connection.execute(
            old_keys.insert(),
            [
                {"key": key, "subject_id": row["id"]}
                for row in rows[::2]
                for key in names.subject_keys(row["given_name"], row["family_name"], row["aliases"])
            ]
            + [{"key": "stale", "subject_id": rows[0]["id"]}],
        )

    _migrate(scratch_engine, "upgrade", "head")
    with scratch_engine.connect() as connection:
        stored: dict[uuid.UUID, dict[str, tuple[bool, datetime]]] = {}
        for key in connection.execute(sa.select(new_keys)):
            stored.setdefault(key.subject_id, {})[key.key] = (
                key.whole_word,
                key.subject_created_at,
            )
    assert stored == {
        row["id"]: {
            key: (whole, row["created_at"])
            for key, whole in names.subject_key_kinds(
                row["given_name"], row["family_name"], row["aliases"]
            ).items()
        }
        for row in rows
    }

    _migrate(scratch_engine, "downgrade", _previous_revision())
    with scratch_engine.connect() as connection:
        assert {c["name"] for c in sa.inspect(connection).get_columns("subject_name_keys")} == {
            "key",
            "subject_id",
        }
        kept = set(connection.execute(sa.select(old_keys.c.subject_id, old_keys.c.key)))
    assert kept == {
        (row["id"], key)
        for row in rows
        for key in names.subject_keys(row["given_name"], row["family_name"], row["aliases"])
    }


def test_the_previous_release_can_still_write_keys(scratch_engine: Engine) -> None:  # noqa: F811
    """It knows only key and subject_id: its rows count as whole words (search checks them
    against the names anyway) and PostgreSQL fills in the subject's created_at."""
    if scratch_engine.dialect.name != "postgresql":
        pytest.skip("rolling upgrades run on PostgreSQL; SQLite has one writer and no trigger")
    _migrate(scratch_engine, "upgrade", "head")
    start = datetime(2025, 1, 1, 12, 30, 1, 123456, tzinfo=UTC)
    row = _subject(random.Random(1), 1, start)
    with scratch_engine.begin() as connection:
        connection.execute(
            agencies.insert(),
            [{"code": "btp", "name": "BTP", "kind": "police", "active": True,
              "is_platform": False, "created_at": start}],
        )  # fmt: skip
        connection.execute(subjects.insert(), [row])
        connection.execute(old_keys.insert(), [{"key": "li", "subject_id": row["id"]}])
        written = connection.execute(sa.select(new_keys)).one()
    assert written.whole_word is True
    assert written.subject_created_at == row["created_at"]
