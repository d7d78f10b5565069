"""Partnership statistics (`GET /v1/statistics/referrals`, CONTRACT §12) at 10,000 and 1,000,000
referrals: loaded with INSERT … SELECT generate_series on PostgreSQL, measured in process with a
real token.

    .venv/bin/python -m bench.statistics [--scales 10000,1000000] [--database-url URL] [--keep]
                                         [--reuse] [--requests N] [--live-runs N] [--json]
                                         [--no-explain] [--load-only]

Each scale loads a fresh database `casehub_bench_statistics_<scale>` on the server of
`--database-url` (default BENCH_PG, else postgresql+psycopg://postgres@127.0.0.1:5432/postgres),
dropped and created again unless `--reuse` finds one a previous `--keep` left at the same seed
version and migration head; without `--keep` it is dropped after the measurement.

Seeding: the schema from casehub's migrations (to head); ten agencies of the contract's kinds
(police, local authorities, charities, probation, health, education) across five areas and an
analyst's client holding `statistics:read` (the caller), registered through
casehub.services.agencies. Then, in SQL (setseed: the same rows every time), N referrals over five
years of `created_at` (volume growing linearly), one child per referral or so, led by the
agencies in skewed shares (a large force leads a quarter); risk low 20 %, medium 45 %, high
28 %, immediate 7 % (with its immediate_action); statuses by age (most older ones closed, with
closed_at); a few in a thousand of those closed over two years ago erased (tombstones: never
counted). Each referral has 1-3 distinct categories
(bench.scale's weights: county_lines and missing most often) and 2-6 distinct indicators from
casehub/data/indicators.json (a few common, a long tail), positions from 0 as the service
writes them. Keys and indexes of the loaded tables are dropped for the load and made again from
their own definitions (the schema is then compared with the migrations'), then VACUUM ANALYZE,
then the rows are checked against the service's rules (codes, positions, immediate_action,
closed_at) and `casehub statistics refresh`'s service function computes the cells (timed).

Measuring: Flask's test client against `create_app` on that database (in process, one thread,
audit sequencer off, rate limits on but out of reach), a client_credentials token from
/oauth/token; per question a warm-up, then `--requests` requests: p50/p99. Then the same
questions counted live from referrals, referral_categories and referral_indicators (the plain
GROUP BY the cells replace, primary suppression included), `--live-runs` times each: p50 and
the slowest. Then EXPLAIN (ANALYZE, BUFFERS) of the slowest route question's statement and of
the slowest live count, at the largest scale.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from bench import match
from bench import scale as sc
from bench.audit_data import SERVER, _libpq
from casehub import create_app, limits, migrate
from casehub.auth.secrets import generate_secret, hash_secret
from casehub.db import get_db, make_engine
from casehub.services import agencies
from casehub.services.reference import CATEGORIES, indicator_codes
from casehub.services.referrals import RISK_LEVELS, STATUSES
from casehub.services.statistics import refresh_statistics

SEED_VERSION = 1  # bump when what load() writes changes
DEFAULT_SCALES = (10_000, 1_000_000)
SPAN_DAYS = 5 * 365
ERASED = 0.005  # of the closed referrals over two years old
CALLER_AGENCY = "em-vru"
CALLER_CLIENT = "analyst-desk"
LOADED = ("subjects", "referrals", "referral_categories", "referral_indicators")
RATE_LIMITS_OUT_OF_REACH = {setting: "100000000/minute" for setting in limits.CLASSES.values()}


@dataclass(frozen=True)
class AgencySpec:
    code: str
    name: str
    kind: str
    area: str
    leads: float  # its part of all referrals


PARTNERSHIP = (
    AgencySpec("btp", "British Transport Police", "police", "East Midlands", 25),
    AgencySpec("notts-police", "Nottinghamshire Police", "police", "Nottinghamshire", 20),
    AgencySpec("derbys-police", "Derbyshire Constabulary", "police", "Derbyshire", 12),
    AgencySpec("notts-cs", "Nottinghamshire Children's Services", "local_authority",
               "Nottinghamshire", 10),
    AgencySpec("derby-cs", "Derby City Children's Services", "local_authority", "Derby", 8),
    AgencySpec("tcs", "The Children's Society", "charity", "East Midlands", 8),
    AgencySpec("barnardos-em", "Barnardo's East Midlands", "charity", "Nottingham", 4),
    AgencySpec("em-probation", "Probation Service East Midlands", "probation", "East Midlands", 5),
    AgencySpec("nuh-safeguarding", "Nottingham University Hospitals Safeguarding", "health",
               "Nottingham", 5),
    AgencySpec("notts-schools", "Nottinghamshire Schools Safeguarding", "education",
               "Nottinghamshire", 3),
)  # fmt: skip
CALLER = AgencySpec(CALLER_AGENCY, "East Midlands Violence Reduction Unit", "other",
                    "East Midlands", 0)  # fmt: skip
RISK_WEIGHTS = {"low": 20, "medium": 45, "high": 28, "immediate": 7}
# By age: a referral older than 200 days has mostly run its course.
OLD_STATUS_WEIGHTS = {"submitted": 0.5, "acknowledged": 0.5, "in_assessment": 4,
                      "action_agreed": 7, "no_further_action": 8, "closed": 80}  # fmt: skip
NEW_STATUS_WEIGHTS = {"submitted": 15, "acknowledged": 20, "in_assessment": 35,
                      "action_agreed": 12, "no_further_action": 8, "closed": 10}  # fmt: skip
CATEGORY_COUNT = {1: 50, 2: 35, 3: 15}
SUMMARIES = (
    "Seen at the station with two phones in school hours.",
    "Missing overnight; returned with new clothes and cash.",
    "Older associates collecting from school; unexplained injuries.",
    "Found in a flat used for supply; would not give an address.",
)


def say(started: float, text: str) -> None:
    print(f"  [{time.perf_counter() - started:7.1f}s] {text}", flush=True)


def database_name(referrals: int) -> str:
    return f"casehub_bench_statistics_{referrals}"


# -- the SQL that writes the rows -------------------------------------------------------------
def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def weighted_case(column: str, weights: dict[str, float]) -> str:
    """A CASE that maps a uniform [0, 1) in `column` to a value with these weights."""
    total = sum(weights.values())
    parts, running = [], 0.0
    items = list(weights.items())
    for value, weight in items[:-1]:
        running += weight / total
        parts.append(f"WHEN {column} < {running:.6f} THEN {_literal(value)}")
    return f"CASE {' '.join(parts)} ELSE {_literal(items[-1][0])} END"


def indicator_order() -> list[str]:
    """The indicators, shuffled reproducibly: the first few are the common ones."""
    codes = sorted(indicator_codes())
    random.Random("casehub-statistics-indicators").shuffle(codes)
    return codes


def load_statements(referrals: int, end: datetime) -> list[tuple[str, str]]:
    """(what, SQL) in order: a plan of uniforms per referral, then each table from it."""
    leads = {a.code: a.leads for a in PARTNERSHIP}
    span = SPAN_DAYS * 86_400
    start = end.timestamp() - span
    codes = indicator_order()
    code_array = "ARRAY[" + ",".join(_literal(c) for c in codes) + "]"
    categories = {c: float(w) for c, w in sc.CATEGORY_WEIGHTS.items()}
    return [
        ("seed", "SELECT setseed(0.4217)"),
        (
            "plan",
            f"""
            CREATE TEMP TABLE plan AS
            SELECT n, gen_random_uuid() AS id, gen_random_uuid() AS subject_id,
                   to_timestamp({start} + (sqrt(0.25 + 2 * random()) - 0.5) * {span})
                       AS created_at,
                   random() AS u_lead, random() AS u_risk, random() AS u_status,
                   random() AS u_categories, random() AS u_indicators, random() AS u_erased,
                   random() AS u_summary, random() AS u_days
            FROM generate_series(1, {referrals}) n
            """,
        ),
        ("index plan", "CREATE INDEX ON plan (n)"),
        (
            "subjects",
            """
            INSERT INTO subjects (id, given_name, family_name, aliases, gender, identifiers,
                                  created_by_agency, created_at, updated_at, version)
            SELECT p.subject_id, 'Child', 'Seeded', '[]', 'unknown', '[]', r.lead, p.created_at,
                   p.created_at, 1
            FROM plan p CROSS JOIN LATERAL (SELECT {lead} AS lead) r
            """.replace("{lead}", weighted_case("p.u_lead", leads)),
        ),
        (
            "referrals",
            f"""
            INSERT INTO referrals (id, reference, subject_id, lead_agency, created_by_agency,
                                   created_by_client_id, summary, observed_at, risk_level,
                                   immediate_action, status, discoverable, closed_at, erased_at,
                                   created_at, updated_at, version)
            SELECT p.id,
                   'CH-' || extract(year FROM p.created_at AT TIME ZONE 'UTC')::int || '-'
                       || lpad(p.n::text, 6, '0'),
                   p.subject_id, s.created_by_agency, s.created_by_agency, c.client_id,
                   (ARRAY[{",".join(_literal(t) for t in SUMMARIES)}])
                       [1 + floor(p.u_summary * {len(SUMMARIES)})::int],
                   p.created_at - interval '3 hours' * p.u_days,
                   x.risk,
                   CASE WHEN x.risk = 'immediate' THEN '999 called' END,
                   x.status, true,
                   CASE WHEN x.status = 'closed'
                        THEN least(now(), p.created_at + interval '1 day' * (14 + 180 * p.u_days))
                   END,
                   CASE WHEN x.status = 'closed' AND p.u_erased < {ERASED}
                             AND p.created_at < now() - interval '2 years'
                        THEN now() END,
                   p.created_at,
                   CASE WHEN x.status = 'closed'
                        THEN least(now(), p.created_at + interval '1 day' * (14 + 180 * p.u_days))
                        ELSE p.created_at END,
                   1
            FROM plan p
            JOIN subjects s ON s.id = p.subject_id
            JOIN clients c ON c.agency_code = s.created_by_agency AND c.name = 'case-system'
            CROSS JOIN LATERAL (
                SELECT {weighted_case("p.u_risk", RISK_WEIGHTS)} AS risk,
                       CASE WHEN p.created_at < now() - interval '200 days'
                            THEN {weighted_case("p.u_status", OLD_STATUS_WEIGHTS)}
                            ELSE {weighted_case("p.u_status", NEW_STATUS_WEIGHTS)} END AS status
            ) x
            """,
        ),
        (
            "referral_categories",
            f"""
            INSERT INTO referral_categories (referral_id, category, position)
            SELECT id, category, (row_number() OVER (PARTITION BY id ORDER BY slot) - 1)::int
            FROM (
                SELECT DISTINCT ON (p.id, d.category) p.id, d.category, d.slot
                FROM plan p
                CROSS JOIN LATERAL (
                    SELECT slot, {weighted_case("u", categories)} AS category
                    FROM (
                        SELECT slot, random() AS u
                        FROM generate_series(1, {
                weighted_case("p.u_categories", {str(k): v for k, v in CATEGORY_COUNT.items()})
            }::int) slot
                    ) drawn_slots
                ) d
                ORDER BY p.id, d.category, d.slot
            ) drawn
            """,
        ),
        (
            "referral_indicators",
            f"""
            INSERT INTO referral_indicators (referral_id, code, position)
            SELECT id, code, (row_number() OVER (PARTITION BY id ORDER BY slot) - 1)::int
            FROM (
                SELECT DISTINCT ON (p.id, d.code) p.id, d.code, d.slot
                FROM plan p
                CROSS JOIN LATERAL (
                    SELECT slot,
                           ({code_array})[1 + floor(power(random(), 2.2)
                                                    * {len(codes)})::int] AS code
                    FROM generate_series(1, 2 + floor(p.u_indicators * 5)::int) slot
                ) d
                ORDER BY p.id, d.code, d.slot
            ) drawn
            """,
        ),
        ("sequence", f"SELECT setval('referral_reference_seq', {referrals})"),
    ]


CHECKS = {
    "a category outside the contract's list": (
        "SELECT count(*) FROM referral_categories WHERE category <> ALL(%(categories)s)"
    ),
    "an indicator outside casehub/data/indicators.json": (
        "SELECT count(*) FROM referral_indicators WHERE code <> ALL(%(indicators)s)"
    ),
    "a referral without a category": (
        "SELECT count(*) FROM referrals r WHERE NOT EXISTS "
        "(SELECT 1 FROM referral_categories c WHERE c.referral_id = r.id)"
    ),
    "category positions that are not 0..n-1": (
        "SELECT count(*) FROM (SELECT referral_id FROM referral_categories GROUP BY referral_id "
        "HAVING max(position) <> count(*) - 1 OR min(position) <> 0) x"
    ),
    "indicator positions that are not 0..n-1": (
        "SELECT count(*) FROM (SELECT referral_id FROM referral_indicators GROUP BY referral_id "
        "HAVING max(position) <> count(*) - 1 OR min(position) <> 0) x"
    ),
    "a risk level or status outside the contract's": (
        "SELECT count(*) FROM referrals WHERE risk_level <> ALL(%(risks)s) "
        "OR status <> ALL(%(statuses)s)"
    ),
    "immediate risk without immediate_action, or the reverse": (
        "SELECT count(*) FROM referrals "
        "WHERE (risk_level = 'immediate') <> (immediate_action IS NOT NULL)"
    ),
    "closed_at that does not go with status closed": (
        "SELECT count(*) FROM referrals WHERE (status = 'closed') <> (closed_at IS NOT NULL)"
    ),
}


def check_rows(conn: psycopg.Connection[Any]) -> None:
    """Stop loudly if a row breaks a rule the service applies to what it writes."""
    params = {
        "categories": list(CATEGORIES),
        "indicators": sorted(indicator_codes()),
        "risks": list(RISK_LEVELS),
        "statuses": list(STATUSES),
    }
    for what, sql in CHECKS.items():
        row = conn.execute(sql, params).fetchone()
        if row is None or row[0]:
            raise SystemExit(f"bench/statistics.py wrote {what}: {row[0] if row else '?'} rows")


# -- loading ------------------------------------------------------------------------------------
@dataclass
class Loaded:
    url: str
    marker: dict[str, Any]


def load(referrals: int, server: str, *, name: str | None = None, quiet: bool = False) -> Loaded:
    started = time.perf_counter()
    report: Callable[[str], None] = (lambda _t: None) if quiet else (lambda t: say(started, t))
    name = name or database_name(referrals)
    url = match.database_url(server, name)
    seconds: dict[str, float] = {}
    with psycopg.connect(_libpq(match.database_url(server, "postgres")), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    engine = make_engine(url)
    migrate.upgrade(engine, "head")
    with Session(engine) as session, session.begin():
        for spec in (*PARTNERSHIP, CALLER):
            agencies.add_agency(
                session, code=spec.code, name=spec.name, kind=spec.kind, area=spec.area
            )
            if spec.leads:
                agencies.add_client(
                    session,
                    agency_code=spec.code,
                    name="case-system",
                    scope=sc.CASEWORK,
                    scrypt_n=sc.SCRYPT_N,
                )
        caller, _secret = agencies.add_client(
            session,
            agency_code=CALLER_AGENCY,
            name=CALLER_CLIENT,
            scope="statistics:read",
            scrypt_n=sc.SCRYPT_N,
        )
        caller_id = caller.client_id
    seconds["schema"] = time.perf_counter() - started
    report(f"{name}: migrated to {migrate.head_revision()}, {len(PARTNERSHIP)} lead agencies")

    counts: dict[str, int] = {}
    with psycopg.connect(_libpq(url)) as conn:
        migrated = sc.schema_of(conn)
        rebuild_after = match.drop_for_load(conn, LOADED)
        conn.commit()
        conn.execute("SET synchronous_commit = off")
        conn.execute("SET max_parallel_workers_per_gather = 0")  # setseed: one process draws
        conn.execute("SET work_mem = '256MB'")
        for what, sql in load_statements(referrals, datetime.now(UTC)):
            mark = time.perf_counter()
            cursor = conn.execute(sql)
            seconds[what] = time.perf_counter() - mark
            if what in LOADED:
                counts[what] = cursor.rowcount
                report(f"{what}: {counts[what]:,} rows in {seconds[what]:.1f}s")
        conn.execute("DROP TABLE plan")
        conn.commit()
        mark = time.perf_counter()
        sc.rebuild(conn, rebuild_after)
        conn.commit()
        seconds["indexes"] = time.perf_counter() - mark
        report(f"{len(rebuild_after)} keys, indexes and foreign keys made again in "
               f"{seconds['indexes']:.1f}s")  # fmt: skip
        if sc.schema_of(conn) != migrated:
            raise SystemExit("the rebuilt schema differs from the migrations'")
        conn.commit()
        conn.autocommit = True
        mark = time.perf_counter()
        conn.execute(f"VACUUM ANALYZE {', '.join(LOADED)}")
        seconds["vacuum analyze"] = time.perf_counter() - mark
        report(f"VACUUM ANALYZE in {seconds['vacuum analyze']:.1f}s")
        check_rows(conn)
        erased = conn.execute("SELECT count(*) FROM referrals WHERE erased_at IS NOT NULL")
        counts["erased"] = int(erased.fetchone()[0])  # type: ignore[index]
    with Session(engine) as session, session.begin():
        refreshed = refresh_statistics(session, now=datetime.now(UTC))
        refresh_seconds, counted = refreshed.seconds, refreshed.referrals
    with psycopg.connect(_libpq(url), autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE statistics_cells, statistics_refreshes")
        row = conn.execute("SELECT count(*) FROM statistics_cells").fetchone()
        counts["statistics_cells"] = int(row[0]) if row else 0
        row = conn.execute("SELECT coalesce(max(pos), 0) FROM audit_events").fetchone()
        max_pos = int(row[0]) if row else 0
    engine.dispose()
    seconds["refresh"] = refresh_seconds
    report(
        f"statistics refreshed: {counts['statistics_cells']:,} cells over "
        f"{counted:,} referrals ({counts['erased']:,} erased, not counted) in "
        f"{refresh_seconds:.1f}s"
    )
    seconds["total"] = time.perf_counter() - started
    marker = {
        "bench": "bench.statistics",
        "seed": SEED_VERSION,
        "referrals": referrals,
        "revision": migrate.head_revision(),
        "caller": caller_id,
        "rows": counts,
        "max_pos": max_pos,
        "seeded_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
    }
    with psycopg.connect(_libpq(match.database_url(server, "postgres")), autocommit=True) as conn:
        literal = json.dumps(marker).replace("'", "''")
        conn.execute(f"COMMENT ON DATABASE \"{name}\" IS '{literal}'")
    report(f"loaded in {seconds['total']:.1f}s")
    return Loaded(url, marker)


def prepare(referrals: int, server: str, *, reuse: bool) -> Loaded:
    name = database_name(referrals)
    if reuse:
        marker = match._marker(server, name)
        why = None
        if marker is None:
            why = "there is none"
        elif marker.get("seed") != SEED_VERSION or marker.get("referrals") != referrals:
            why = "it was loaded by another version of this script"
        elif marker.get("revision") != migrate.head_revision():
            why = f"the migrations moved on (loaded at {marker.get('revision')})"
        if why is None and marker is not None:
            print(f"{name}: reused (loaded {marker['seeded_at']})")
            return Loaded(match.database_url(server, name), marker)
        print(f"{name}: not reused: {why}")
    print(f"{name}: loading {referrals:,} referrals")
    return load(referrals, server)


# -- the questions ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Question:
    group_by: tuple[str, ...]
    last_year: bool = False  # from/to: the last twelve whole months

    @property
    def name(self) -> str:
        shown = " x ".join(self.group_by) or "total"
        return shown + (" (12 months)" if self.last_year else "")


QUESTIONS = (
    Question(()),
    Question(("month",)),
    Question(("category",)),
    Question(("indicator",)),
    Question(("category", "month")),
    Question(("category", "indicator")),
    Question(("indicator", "month")),
    Question(("indicator", "lead_agency_kind")),
    Question(("area", "risk_level")),
    Question(("status", "risk_level")),
    Question(("category", "month"), last_year=True),
)


def _months(now: datetime) -> tuple[str, str]:
    year, month = now.year, now.month - 1 or 12
    if now.month == 1:
        year -= 1
    last = f"{year:04d}-{month:02d}"
    first = f"{year - 1:04d}-{month + 1:02d}" if month < 12 else f"{year:04d}-01"
    return first, last


def query_string(question: Question, now: datetime) -> str:
    parts = [f"group_by={','.join(question.group_by)}"] if question.group_by else []
    if question.last_year:
        first, last = _months(now)
        parts += [f"from={first}", f"to={last}"]
    return "?" + "&".join(parts) if parts else ""


LIVE_DIMENSIONS = {
    "category": "c.category",
    "indicator": "i.code",
    "month": "to_char(r.created_at AT TIME ZONE 'UTC', 'YYYY-MM')",
    "lead_agency_kind": "a.kind",
    "area": "a.area",
    "risk_level": "r.risk_level",
    "status": "r.status",
}


def live_sql(question: Question, now: datetime) -> str:
    """The plain live GROUP BY the cells stand in for (primary suppression included)."""
    dims = [LIVE_DIMENSIONS[d] for d in question.group_by]
    sql = "SELECT " + "".join(f"{d}, " for d in dims)
    sql += "CASE WHEN count(*) < 5 THEN NULL ELSE count(*) END FROM referrals r"
    if "category" in question.group_by:
        sql += " JOIN referral_categories c ON c.referral_id = r.id"
    if "indicator" in question.group_by:
        sql += " JOIN referral_indicators i ON i.referral_id = r.id"
    if {"lead_agency_kind", "area"} & set(question.group_by):
        sql += " JOIN agencies a ON a.code = r.lead_agency"
    sql += " WHERE r.erased_at IS NULL"
    if question.last_year:
        first, last = _months(now)
        sql += (
            f" AND r.created_at >= '{first}-01'::timestamptz"
            f" AND r.created_at < ('{last}-01'::timestamptz + interval '1 month')"
        )
    if dims:
        sql += " GROUP BY " + ", ".join(str(n) for n in range(1, len(dims) + 1))
    return sql


# -- measuring ----------------------------------------------------------------------------------
def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))]


@dataclass
class Result:
    question: Question
    times: list[float]
    items: int
    suppressed: int
    live: list[float] = field(default_factory=list)

    def p(self, share: float) -> float:
        return _percentile(self.times, share)


class Bench:
    def __init__(self, loaded: Loaded, folder: Path) -> None:
        self.loaded = loaded
        self.app = create_app(
            {
                "DATABASE_URL": loaded.url,
                "ISSUER": "http://casehub.bench",
                "SIGNING_KEYS_FILE": str(folder / "signing-keys.json"),
                "WEBHOOK_KEY_FILE": str(folder / "webhook-key"),
                "CLIENT_SECRET_SCRYPT_N": sc.SCRYPT_N,
                "AUDIT_SEQUENCER": False,
                "LOG_LEVEL": "warning",
                "RATE_LIMITS_ENABLED": True,
                **RATE_LIMITS_OUT_OF_REACH,
            }
        )
        engine = get_db(self.app).engine
        assert engine is not None
        self.engine = engine
        self.http = self.app.test_client()
        self.client_id = str(loaded.marker["caller"])
        self.secret = generate_secret()
        with psycopg.connect(_libpq(loaded.url)) as conn:
            conn.execute(
                "UPDATE clients SET secret_hash = %s WHERE client_id = %s",
                (hash_secret(self.secret, n=sc.SCRYPT_N), self.client_id),
            )
        self.token: tuple[float, str] | None = None
        self.now = datetime.now(UTC)

    def headers(self) -> dict[str, str]:
        if self.token is None or time.monotonic() - self.token[0] > 600:
            basic = sc.base64_credentials(self.client_id, self.secret)
            response = self.http.post(
                "/oauth/token",
                data={"grant_type": "client_credentials"},
                headers={"Authorization": f"Basic {basic}"},
            )
            assert response.status_code == 200, response.get_json()
            self.token = (time.monotonic(), str(response.get_json()["access_token"]))
        return {"Authorization": f"Bearer {self.token[1]}"}

    def ask(self, question: Question) -> tuple[float, dict[str, Any]]:
        headers = self.headers()
        path = "/v1/statistics/referrals" + query_string(question, self.now)
        started = time.perf_counter()
        response = self.http.get(path, headers=headers)
        elapsed = (time.perf_counter() - started) * 1000
        if response.status_code != 200:
            raise SystemExit(f"GET {path} answered {response.status_code}: {response.text[:500]}")
        return elapsed, response.get_json()

    def measure(self, question: Question, requests: int, live_runs: int) -> Result:
        for _ in range(max(10, requests // 10)):
            self.ask(question)
        gc.collect()
        gc.freeze()
        times: list[float] = []
        answer: dict[str, Any] = {}
        for _ in range(requests):
            elapsed, answer = self.ask(question)
            times.append(elapsed)
        gc.unfreeze()
        items = answer.get("items", [])
        result = Result(question, times, len(items), sum(1 for i in items if i["suppressed"]))
        if live_runs:
            sql = live_sql(question, self.now)
            with psycopg.connect(_libpq(self.loaded.url)) as conn:
                for _ in range(live_runs):
                    started = time.perf_counter()
                    conn.execute(sql).fetchall()
                    result.live.append((time.perf_counter() - started) * 1000)
        return result

    def route_statement(self, question: Question) -> tuple[str, Any]:
        sent: list[tuple[str, Any]] = []

        def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
            sent.append((statement, parameters))

        self.headers()
        event.listen(self.engine, "before_cursor_execute", capture)
        try:
            self.ask(question)
        finally:
            event.remove(self.engine, "before_cursor_execute", capture)
        return next((s, p) for s, p in sent if "statistics_cells" in s and "sum(" in s)

    def explain_route(self, question: Question) -> list[str]:
        statement, parameters = self.route_statement(question)
        out = [f"-- GET /v1/statistics/referrals{query_string(question, self.now)}",
               f"   {' '.join(statement.split())}", f"   parameters: {parameters!r}"]  # fmt: skip
        with self.engine.connect() as connection:
            plan = connection.exec_driver_sql(
                "EXPLAIN (ANALYZE, BUFFERS) " + statement, parameters
            ).scalars()
            out.extend(f"   {line}" for line in plan)
            connection.rollback()
        return out

    def explain_live(self, question: Question) -> list[str]:
        sql = live_sql(question, self.now)
        out = [f"-- live count for {question.name}", f"   {sql}"]
        with psycopg.connect(_libpq(self.loaded.url)) as conn:
            plan = conn.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql).fetchall()
        out.extend(f"   {row[0]}" for row in plan)
        return out

    def close(self) -> None:
        self.engine.dispose()
        forget_measurements(self.loaded)


def forget_measurements(loaded: Loaded) -> None:
    """Remove the audit events measuring wrote (never chained: the sequencer is off), as
    bench.match does, so a kept database meets the next run as loaded."""
    with psycopg.connect(_libpq(loaded.url), autocommit=True) as conn:
        with conn.transaction():
            conn.execute("SET LOCAL session_replication_role = replica")
            after = loaded.marker.get("max_pos", 0)
            conn.execute("DELETE FROM audit_pending WHERE pos > %s", (after,))
            conn.execute("DELETE FROM audit_events WHERE pos > %s", (after,))
        conn.execute("VACUUM ANALYZE audit_events, audit_pending")


def print_results(referrals: int, results: list[Result]) -> None:
    print(
        f"\n{database_name(referrals)}: GET /v1/statistics/referrals, ms (in process, Flask test "
        "client, real token, after a warm-up); live: the same count from the live tables"
    )
    print(
        f"  {'question':40} {'n':>5} {'p50':>8} {'p99':>8} {'items':>6} {'supp.':>6} "
        f"{'live p50':>9} {'live max':>9}"
    )
    for r in results:
        live = (
            f"{_percentile(r.live, 0.5):9.1f} {max(r.live):9.1f}"
            if r.live
            else f"{'—':>9} {'—':>9}"
        )
        print(
            f"  {r.question.name:40} {len(r.times):>5} {r.p(0.5):8.1f} {r.p(0.99):8.1f} "
            f"{r.items:>6} {r.suppressed:>6} {live}"
        )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", default=",".join(str(s) for s in DEFAULT_SCALES))
    parser.add_argument("--database-url", default=None, help="a PostgreSQL server")
    parser.add_argument("--keep", action="store_true", help="keep each database afterwards")
    parser.add_argument("--reuse", action="store_true", help="reuse a kept database")
    parser.add_argument("--requests", type=int, default=200, help="timed requests per question")
    parser.add_argument("--live-runs", type=int, default=3, help="live counts per question")
    parser.add_argument("--json", action="store_true", help="the figures as JSON too")
    parser.add_argument("--no-explain", action="store_true")
    parser.add_argument("--load-only", action="store_true", help="load, do not measure")
    options = parser.parse_args(argv)
    scales = [int(s.replace("_", "")) for s in options.scales.split(",") if s]
    server = options.database_url or SERVER
    if make_url(server).get_backend_name() != "postgresql":
        raise SystemExit(
            "bench.statistics needs PostgreSQL (--database-url postgresql+psycopg://…)"
        )
    folder = Path(tempfile.mkdtemp(prefix="casehub-bench-statistics-"))
    print(f"load average at start {match._uptime()}")
    figures: dict[str, Any] = {}
    for index, referrals in enumerate(scales):
        loaded = prepare(referrals, server, reuse=options.reuse)
        entry: dict[str, Any] = {
            "loaded_at": loaded.marker["seeded_at"],
            "load_seconds": loaded.marker["seconds"],
            "rows": loaded.marker["rows"],
        }
        print(
            f"{database_name(referrals)}: loaded {loaded.marker['seeded_at']} in "
            f"{loaded.marker['seconds']['total']:.0f}s; rows "
            + ", ".join(f"{t} {n:,}" for t, n in loaded.marker["rows"].items())
            + f"; refresh {loaded.marker['seconds']['refresh']:.1f}s"
        )
        figures[str(referrals)] = entry
        try:
            if options.load_only:
                continue
            bench = Bench(loaded, folder)
            try:
                results = [bench.measure(q, options.requests, options.live_runs) for q in QUESTIONS]
                print_results(referrals, results)
                entry["load_average"] = match._uptime()
                print(f"  load average after: {entry['load_average']}")
                entry["questions"] = {
                    r.question.name: {
                        "p50_ms": round(r.p(0.5), 2),
                        "p99_ms": round(r.p(0.99), 2),
                        "requests": len(r.times),
                        "items": r.items,
                        "suppressed": r.suppressed,
                        "live_p50_ms": round(_percentile(r.live, 0.5), 1) if r.live else None,
                        "live_max_ms": round(max(r.live), 1) if r.live else None,
                    }
                    for r in results
                }
                if index == len(scales) - 1 and not options.no_explain:
                    slowest = max(
                        (r for r in results if len(r.question.group_by) == 2),
                        key=lambda r: r.p(0.99),
                    )
                    explained = bench.explain_route(slowest.question)
                    if any(r.live for r in results):
                        live = max((r for r in results if r.live), key=lambda r: max(r.live))
                        explained += ["", *bench.explain_live(live.question)]
                    entry["explain"] = explained
                    print(f"\nEXPLAIN (ANALYZE, BUFFERS) on {database_name(referrals)}:")
                    print("\n".join(explained))
            finally:
                bench.close()
        finally:
            if not options.keep:
                match.drop(server, database_name(referrals))
    if options.json:
        print(json.dumps({"scales": figures}, indent=2, default=str))


if __name__ == "__main__":
    main(sys.argv[1:])
