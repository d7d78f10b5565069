"""Migration 0010 gives every share its referral's created_at (the order lists read shares in),
goes down again, and leaves the previous release able to write shares on PostgreSQL."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from casehub.db import UTCDateTime
from tests.test_migrations import scratch_engine  # noqa: F401  (the fixture)
from tests.test_subject_keys_migration import _migrate, agencies, subjects

START = datetime(2025, 1, 1, 9, 30, 0, 250001, tzinfo=UTC)

referrals = sa.table(
    "referrals",
    sa.column("id", sa.Uuid()),
    sa.column("subject_id", sa.Uuid()),
    *(sa.column(name) for name in ("reference", "lead_agency")),
    *(sa.column(name) for name in ("created_by_agency", "created_by_client_id", "summary")),
    sa.column("observed_at", UTCDateTime()),
    sa.column("risk_level"),
    sa.column("status"),
    sa.column("created_at", UTCDateTime()),
    sa.column("updated_at", UTCDateTime()),
    sa.column("version"),
)
# The shares table as the previous release knows it: no referral_created_at.
old_shares = sa.table(
    "shares",
    sa.column("id", sa.Uuid()),
    sa.column("referral_id", sa.Uuid()),
    *(sa.column(name) for name in ("agency_code", "access", "purpose")),
    *(sa.column(name) for name in ("necessity", "article_6", "consent_status")),
    *(sa.column(name) for name in ("created_by_agency", "created_by_client_id")),
    sa.column("created_at", UTCDateTime()),
)
new_shares = sa.table(
    "shares", sa.column("id", sa.Uuid()), sa.column("referral_created_at", UTCDateTime())
)


def _world(connection: sa.Connection, count: int) -> dict[uuid.UUID, datetime]:
    """Agencies, a child, `count` referrals made an hour apart and, for each, a share made in
    the reverse order; gives each share's id and its referral's created_at."""
    connection.execute(
        agencies.insert(),
        [
            {"code": code, "name": code, "kind": kind, "active": True, "is_platform": False,
             "created_at": START}
            for code, kind in (("btp", "police"), ("tcs", "charity"))
        ],
    )  # fmt: skip
    child = uuid.uuid4()
    connection.execute(
        subjects.insert(),
        [{"id": child, "given_name": "Kai", "family_name": "Ward", "aliases": [],
          "gender": "male", "identifiers": [], "created_by_agency": "btp", "created_at": START,
          "updated_at": START, "version": 1}],
    )  # fmt: skip
    expected: dict[uuid.UUID, datetime] = {}
    for n in range(count):
        made = START + timedelta(hours=n, microseconds=n)
        rid, sid = uuid.uuid4(), uuid.uuid4()
        connection.execute(
            referrals.insert(),
            [{"id": rid, "subject_id": child, "reference": f"CH-2025-{n:06d}",
              "lead_agency": "btp", "created_by_agency": "btp", "created_by_client_id": "c",
              "summary": "Seen at the station.", "observed_at": made, "risk_level": "high",
              "status": "open", "created_at": made, "updated_at": made, "version": 1}],
        )  # fmt: skip
        connection.execute(old_shares.insert(), [_share(sid, rid, START + timedelta(days=9 - n))])
        expected[sid] = made
    return expected


def _share(sid: uuid.UUID, rid: uuid.UUID, at: datetime) -> dict[str, object]:
    return {"id": sid, "referral_id": rid, "agency_code": "tcs", "access": "read",
            "purpose": "support_service", "necessity": "Support.",
            "article_6": "legitimate_interests", "consent_status": "given",
            "created_by_agency": "btp", "created_by_client_id": "c", "created_at": at}  # fmt: skip


def _stored(engine: Engine) -> dict[uuid.UUID, datetime]:
    with engine.connect() as connection:
        rows = connection.execute(sa.select(new_shares.c.id, new_shares.c.referral_created_at))
        return {row.id: row.referral_created_at for row in rows}


def test_upgrade_copies_each_referrals_created_at_and_downgrade_drops_it(
    scratch_engine: Engine,  # noqa: F811
) -> None:
    _migrate(scratch_engine, "upgrade", "0009")
    with scratch_engine.begin() as connection:
        expected = _world(connection, 4)
    _migrate(scratch_engine, "upgrade", "0010")
    assert _stored(scratch_engine) == expected
    with scratch_engine.connect() as connection:
        columns = {c["name"]: c for c in sa.inspect(connection).get_columns("shares")}
        indexes = {i["name"] for i in sa.inspect(connection).get_indexes("shares")}
    assert columns["referral_created_at"]["nullable"] is False
    assert "ix_shares_open_agency_order" in indexes

    _migrate(scratch_engine, "downgrade", "0009")
    with scratch_engine.connect() as connection:
        columns = {c["name"]: c for c in sa.inspect(connection).get_columns("shares")}
        assert "referral_created_at" not in columns
        assert len(connection.execute(sa.select(old_shares.c.id)).all()) == 4


def test_the_previous_release_can_still_write_shares(scratch_engine: Engine) -> None:  # noqa: F811
    if scratch_engine.dialect.name != "postgresql":
        pytest.skip("rolling upgrades run on PostgreSQL; SQLite has one writer and no trigger")
    _migrate(scratch_engine, "upgrade", "head")
    with scratch_engine.begin() as connection:
        expected = _world(connection, 2)
    assert _stored(scratch_engine) == expected
