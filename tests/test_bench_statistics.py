"""bench.statistics at a tiny scale: what it loads keeps the service's rules, the cells it has
refreshed count what the live tables hold, and the route answers every question it measures.
PostgreSQL only (the benchmark loads with PostgreSQL's generate_series)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url

from bench import match
from bench import statistics as bench
from bench.audit_data import _libpq

SERVER = os.environ.get("CASEHUB_TEST_DATABASE_URL", "")
pytestmark = [
    pytest.mark.postgres_only,
    pytest.mark.skipif(
        not SERVER.startswith("postgresql"), reason="bench.statistics loads PostgreSQL only"
    ),
]


@pytest.fixture(scope="module")
def loaded() -> Iterator[bench.Loaded]:
    server = make_url(SERVER).render_as_string(hide_password=False)
    name = f"casehub_bench_statistics_test_{uuid.uuid4().hex[:10]}"
    try:
        yield bench.load(400, server, name=name, quiet=True)
    finally:
        match.drop(server, name)


def _rows(url: str, sql: str) -> list[tuple[object, ...]]:
    with psycopg.connect(_libpq(url)) as conn:
        return [tuple(row) for row in conn.execute(sql).fetchall()]


def _one(url: str, sql: str) -> tuple[object, ...]:
    rows = _rows(url, sql)
    assert len(rows) == 1
    return rows[0]


PER_REFERRAL = "SELECT min(n), max(n) FROM (SELECT count(*) n FROM {} GROUP BY referral_id) x"


def test_each_referral_has_one_to_three_categories_and_two_to_six_indicators(
    loaded: bench.Loaded,
) -> None:
    rows = loaded.marker["rows"]
    assert rows["referrals"] == 400 and rows["subjects"] == 400
    assert 400 <= rows["referral_categories"] <= 1200
    assert 800 <= rows["referral_indicators"] <= 2400
    assert _one(loaded.url, PER_REFERRAL.format("referral_categories")) == (1, 3)
    low, high = _one(loaded.url, PER_REFERRAL.format("referral_indicators"))
    assert 1 <= int(low) <= 2 and 5 <= int(high) <= 6  # type: ignore[call-overload]
    (span,) = _one(loaded.url, "SELECT max(created_at) - min(created_at) FROM referrals")
    assert span.days > 4 * 365  # type: ignore[attr-defined]
    kinds = {k for (k,) in _rows(loaded.url, "SELECT DISTINCT kind FROM agencies")}
    assert {"police", "local_authority", "charity", "probation", "health", "education"} <= kinds


def test_the_route_answers_what_the_live_tables_count(loaded: bench.Loaded, tmp_path: Path) -> None:
    measured = bench.Bench(loaded, tmp_path)
    try:
        for question in bench.QUESTIONS:
            result = measured.measure(question, requests=2, live_runs=1)
            assert len(result.times) == 2 and result.live
            counted = bench.live_sql(question, measured.now).replace(
                "CASE WHEN count(*) < 5 THEN NULL ELSE count(*) END", "count(*)"
            )
            live = {row[:-1]: int(row[-1]) for row in _rows(loaded.url, counted)}  # type: ignore[call-overload]
            _, answer = measured.ask(question)
            cells = {tuple(i[d] for d in question.group_by): i for i in answer["items"]}
            assert set(cells) == set(live), question.name
            for key, item in cells.items():
                if item["suppressed"]:
                    assert item["count"] is None
                else:
                    assert item["count"] == live[key] >= 5, (question.name, key)
            assert all(cells[k]["suppressed"] for k, n in live.items() if n < 5)
        plan = measured.explain_route(bench.Question(("category", "indicator")))
        assert any("statistics_cells" in line for line in plan)
    finally:
        measured.close()
