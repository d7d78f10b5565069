"""bench.match's loader at a tiny scale: what it COPYs is what the service would have written,
and the schema it leaves is the migrations'. PostgreSQL only (the benchmark needs COPY)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url

from bench import match
from bench.audit_data import _libpq

SERVER = os.environ.get("CASEHUB_TEST_DATABASE_URL", "")
pytestmark = [
    pytest.mark.postgres_only,
    pytest.mark.skipif(
        not SERVER.startswith("postgresql"), reason="bench.match loads PostgreSQL only"
    ),
]


@pytest.fixture(scope="module")
def loaded() -> Iterator[match.Loaded]:
    server = make_url(SERVER).render_as_string(hide_password=False)
    name = f"casehub_bench_match_test_{uuid.uuid4().hex[:10]}"
    try:
        yield match.load(300, server, name=name, quiet=True)
    finally:
        match.drop(server, name)


def _one(url: str, sql: str) -> object:
    with psycopg.connect(_libpq(url)) as conn:
        row = conn.execute(sql).fetchone()
    assert row is not None
    return row[0]


def test_every_child_has_referrals_name_keys_and_its_identifiers(loaded: match.Loaded) -> None:
    rows = loaded.marker["rows"]
    assert rows["subjects"] == 300
    assert 300 <= rows["referrals"] <= 900
    assert rows["subject_name_keys"] > 300 * 5
    assert rows["subject_identifiers"] > 0
    assert rows["shares"] > 0
    url = loaded.url
    assert _one(url, "SELECT count(*) FROM subjects s WHERE NOT EXISTS "
                "(SELECT 1 FROM referrals r WHERE r.subject_id = s.id)") == 0  # fmt: skip
    assert _one(url, "SELECT count(*) FROM referrals WHERE NOT discoverable") > 0  # type: ignore[operator]


def test_name_keys_carry_the_subjects_birth_year_and_created_at(loaded: match.Loaded) -> None:
    # What migration 0015 and the PostgreSQL trigger compute, for every row.
    assert (
        _one(
            loaded.url,
            """
            SELECT count(*) FROM subject_name_keys k JOIN subjects s ON s.id = k.subject_id
            WHERE k.subject_created_at <> s.created_at OR k.birth_year IS DISTINCT FROM
                  coalesce(extract(year FROM s.date_of_birth)::int, s.estimated_birth_year)
            """,
        )
        == 0
    )


def test_identifier_rows_are_the_subjects_identifiers_normalised(loaded: match.Loaded) -> None:
    stored = """
        SELECT s.id, e->>'system', replace(replace(upper(e->>'value'), ' ', ''), '-', '')
        FROM subjects s, json_array_elements(s.identifiers) e
    """
    rows = "SELECT subject_id, system, value FROM subject_identifiers"
    assert _one(loaded.url, f"SELECT count(*) FROM ({stored} EXCEPT {rows}) x") == 0
    assert _one(loaded.url, f"SELECT count(*) FROM ({rows} EXCEPT {stored}) x") == 0


def test_the_name_key_trigger_is_on_again(loaded: match.Loaded) -> None:
    enabled = _one(
        loaded.url,
        f"SELECT tgenabled FROM pg_trigger WHERE tgname = '{match.NAME_KEY_TRIGGER}'",
    )
    assert enabled == "O"


def test_query_children_are_found_for_the_cases(loaded: match.Loaded) -> None:
    cases = {case.name: case for case in match.build_cases(loaded.url)}
    for name in ("exact", "typo", "possible", "identifier", "no match"):
        assert cases[name].bodies, name


def test_the_cases_are_answered_as_expected_and_timed(loaded: match.Loaded, tmp_path: Path) -> None:
    bench = match.Bench(loaded, tmp_path)
    try:
        cases = {case.name: case for case in match.build_cases(loaded.url)}
        for name in ("exact", "identifier", "no match"):
            result = bench.measure(cases[name], 3)
            assert result.kept > 0, (name, result.note)
            assert len(result.times) == 3
    finally:
        bench.close()
    assert _one(loaded.url, "SELECT count(*) FROM matches") == 0  # the measurement's, removed
