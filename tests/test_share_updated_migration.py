"""Migration 0012 gives every share its referral's updated_at, a trigger keeps the copies equal
on both databases whoever updates a referral, and downgrade removes both."""

from __future__ import annotations

import uuid
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy import Engine

from casehub.db import UTCDateTime
from tests.test_migrations import scratch_engine  # noqa: F401  (the fixture)
from tests.test_share_order_migration import START, _share, referrals
from tests.test_subject_keys_migration import _migrate, agencies, subjects

TYPED = {"id": sa.Uuid(), "referral_id": sa.Uuid(), "created_at": UTCDateTime()}
shares = sa.table(
    "shares",
    *(sa.column(name, TYPED.get(name)) for name in _share(uuid.uuid4(), uuid.uuid4(), START)),
    sa.column("referral_created_at", UTCDateTime()),
)
copies = sa.table(
    "shares",
    sa.column("id", sa.Uuid()),
    sa.column("referral_id", sa.Uuid()),
    sa.column("referral_updated_at", UTCDateTime()),
)


def _world(connection: sa.Connection) -> dict[uuid.UUID, uuid.UUID]:
    """Three referrals, each shared once, at 0011; gives each share's referral."""
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
    made: dict[uuid.UUID, uuid.UUID] = {}
    for n in range(3):
        at = START + timedelta(hours=n)
        rid, sid = uuid.uuid4(), uuid.uuid4()
        connection.execute(
            referrals.insert(),
            [{"id": rid, "subject_id": child, "reference": f"CH-2025-{n:06d}",
              "lead_agency": "btp", "created_by_agency": "btp", "created_by_client_id": "c",
              "summary": "Seen at the station.", "observed_at": at, "risk_level": "high",
              "status": "open", "created_at": at, "updated_at": at + timedelta(days=n),
              "version": 1}],
        )  # fmt: skip
        connection.execute(shares.insert(), [{**_share(sid, rid, at), "referral_created_at": at}])
        made[sid] = rid
    return made


def _differing(engine: Engine) -> int:
    """Shares whose copy is not their referral's updated_at."""
    with engine.connect() as connection:
        return int(
            connection.execute(
                sa.select(sa.func.count())
                .select_from(copies)
                .join(referrals, referrals.c.id == copies.c.referral_id)
                .where(copies.c.referral_updated_at != referrals.c.updated_at)
            ).scalar_one()
        )


def test_upgrade_copies_updated_at_a_trigger_keeps_it_and_downgrade_removes_both(
    scratch_engine: Engine,  # noqa: F811
) -> None:
    _migrate(scratch_engine, "upgrade", "0011")
    with scratch_engine.begin() as connection:
        made = _world(connection)
    _migrate(scratch_engine, "upgrade", "0012")
    assert _differing(scratch_engine) == 0
    with scratch_engine.connect() as connection:
        columns = {c["name"]: c for c in sa.inspect(connection).get_columns("shares")}
        share_indexes = {i["name"] for i in sa.inspect(connection).get_indexes("shares")}
        referral_indexes = {i["name"] for i in sa.inspect(connection).get_indexes("referrals")}
    assert columns["referral_updated_at"]["nullable"] is False
    assert "ix_shares_open_agency_updated" in share_indexes
    assert "ix_referrals_lead_agency_updated_at" in referral_indexes
    assert "ix_referrals_updated_at" not in referral_indexes

    # An UPDATE from anywhere (here plain SQL, as the previous release or an operator would)
    # moves the copies of that referral's shares, and only those.
    changed = next(iter(made.values()))
    later = START + timedelta(days=30)
    with scratch_engine.begin() as connection:
        connection.execute(
            referrals.update().where(referrals.c.id == changed).values(updated_at=later)
        )
    assert _differing(scratch_engine) == 0
    with scratch_engine.connect() as connection:
        moved = connection.execute(
            sa.select(copies.c.referral_id).where(copies.c.referral_updated_at == later)
        ).all()
    assert [row.referral_id for row in moved] == [changed]

    _migrate(scratch_engine, "downgrade", "0011")
    with scratch_engine.connect() as connection:
        columns = {c["name"]: c for c in sa.inspect(connection).get_columns("shares")}
        referral_indexes = {i["name"] for i in sa.inspect(connection).get_indexes("referrals")}
    assert "referral_updated_at" not in columns
    assert "ix_referrals_updated_at" in referral_indexes
    with scratch_engine.begin() as connection:  # no trigger is left to name the dropped column
        connection.execute(referrals.update().values(updated_at=later + timedelta(days=1)))
