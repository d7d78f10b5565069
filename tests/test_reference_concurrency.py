"""Creating referrals at once does not queue: a create whose transaction is still open holds
nothing another create waits for (issue 10: the per-year counter row did)."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from casehub.services.referrals import next_reference

pytestmark = pytest.mark.postgres_only


@pytest.fixture
def postgres(engine, is_postgres):
    if not is_postgres:
        pytest.skip("needs PostgreSQL: set CASEHUB_TEST_DATABASE_URL")
    return engine


def test_an_open_create_does_not_hold_up_another(postgres):
    year = datetime.now(UTC).year
    first = Session(bind=postgres.connect())
    second = Session(bind=postgres.connect())
    try:
        held = next_reference(first, year)  # its transaction stays open, as a create's does
        second.execute(text("SET LOCAL lock_timeout = '2s'"))
        other = next_reference(second, year)  # waited on the counter row's lock before
        second.commit()
        assert held != other
        for reference in (held, other):
            assert re.fullmatch(rf"CH-{year}-\d{{6,}}", reference)
    finally:
        first.rollback()
        second.rollback()
        first.close()
        second.close()


def test_references_never_repeat_across_many_sessions(postgres):
    year = datetime.now(UTC).year
    seen = []
    for _ in range(20):
        with Session(bind=postgres.connect()) as session:
            seen.append(next_reference(session, year))
            session.rollback()  # a rolled-back create leaves a gap, never a repeat
    assert len(set(seen)) == len(seen)
