"""The outbox's queries at a whole country's scale, shown with EXPLAIN (ANALYZE, BUFFERS).

    .venv/bin/python -m bench.outbox_scale [--events 2000000] [--agencies 1000] [--keep]

Loads a scratch PostgreSQL database (BENCH_PG, default the local server) with rows shaped as the
service writes them: `--events` events over 30 days spread across `--agencies` agencies (each
with two subscriptions), one delivery per event and subscription (nearly all delivered, a
backlog of pending ones, some due now) and the last week's attempt log. Then it runs the
service's own code for each hot query (the feed's first page, a page from a cursor, a
type-filtered page, a share's notification, a worker's claim, the metrics scrape, a day's
retention purge), captures the SQL it sends, and prints the plan, buffers and time of each.
Nothing is asserted: read the plans (index scans, rows read) and the milliseconds.
"""

from __future__ import annotations

import argparse
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import event, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from bench.audit_data import _libpq, database_url
from casehub import create_app, migrate
from casehub.auth.actor import Actor
from casehub.db import get_db, utcnow
from casehub.services import events

NAME = "casehub_bench_outbox_scale"


def load(url: str, *, count: int, agencies: int) -> None:
    """Rows as the service writes them, generated in PostgreSQL (minutes at millions)."""
    started = time.perf_counter()
    with psycopg.connect(_libpq(url), autocommit=True) as db:
        # Secondary indexes are built after the load (as a restore would), not row by row.
        secondary = db.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename IN "
            "('events','webhooks','webhook_deliveries','webhook_attempts') "
            "AND indexname LIKE 'ix_%'"
        ).fetchall()
        for name, _ in secondary:
            db.execute(f'DROP INDEX "{name}"')
        db.execute(
            """
            INSERT INTO agencies (code, name, kind, area, active, is_platform, created_at)
            SELECT 'agency-' || g, 'Agency ' || g,
                   (ARRAY['police','local_authority','charity','probation'])[1 + g %% 4],
                   NULL, true, false, now()
            FROM generate_series(1, %(n)s) AS g
            """,
            {"n": agencies},
        )
        db.execute(
            """
            INSERT INTO webhooks (id, agency_code, url, events, secret_salt, created_at,
                                  created_by_client_id, last_success_at)
            SELECT gen_random_uuid(), 'agency-' || (1 + g %% %(n)s),
                   'https://cases' || g || '.example.org/hooks',
                   '["referral.shared","referral.updated","note.added"]'::json,
                   md5(g::text), now() - interval '90 days', 'chc_bench', now()
            FROM generate_series(0, 2 * %(n)s - 1) AS g
            """,
            {"n": agencies},
        )
        # Three events per transaction, over 30 days; a seventh of them to one big agency
        # (a county's children's services), the rest spread evenly.
        db.execute(
            """
            INSERT INTO events (id, tx, agency_code, type, occurred_at, data)
            SELECT gen_random_uuid(), 1000 + g / 3, CASE WHEN g %% 7 = 0 THEN 'agency-1'
                        ELSE 'agency-' || (2 + abs(hashint4(g)) %% (%(n)s - 1)) END,
                   (ARRAY['referral.shared','referral.updated','note.added',
                          'share.acknowledged'])[1 + g %% 4],
                   now() - interval '30 days' * (%(count)s - g)::float / %(count)s,
                   json_build_object('referral_id', gen_random_uuid(), 'agency', 'agency-1')
            FROM generate_series(1, %(count)s) AS g
            """,
            {"n": agencies, "count": count},
        )
        # Deliveries for the events of subscribed types, to each of the agency's subscriptions:
        # delivered, except a backlog in the last hour (a tenth of it due now).
        db.execute(
            """
            INSERT INTO webhook_deliveries (id, webhook_id, event_pos, status, attempts,
                                            next_attempt_at, created_at, finished_at)
            SELECT gen_random_uuid(), w.id, e.pos,
                   CASE WHEN e.occurred_at > now() - interval '1 hour' THEN 'pending'
                        ELSE 'delivered' END,
                   1,
                   CASE WHEN e.occurred_at > now() - interval '6 minutes' THEN now()
                        ELSE e.occurred_at + interval '2 hours' END,
                   e.occurred_at, e.occurred_at + interval '1 second'
            FROM events e JOIN webhooks w ON w.agency_code = e.agency_code
            WHERE e.type <> 'share.acknowledged'
            """
        )
        db.execute(
            """
            INSERT INTO webhook_attempts (id, delivery_id, webhook_id, event_id, event_type,
                attempt, attempted_at, outcome, http_status, error, duration_ms,
                response_excerpt)
            SELECT gen_random_uuid(), d.id, d.webhook_id, e.id, e.type, 1,
                   d.created_at + interval '1 second', 'delivered', 204, NULL, 40, NULL
            FROM webhook_deliveries d JOIN events e ON e.pos = d.event_pos
            WHERE d.status = 'delivered' AND d.created_at > now() - interval '7 days'
            """
        )
        for _, definition in secondary:
            db.execute(definition)
        db.execute("ANALYZE")
        sizes = db.execute(
            "SELECT relname, n_live_tup FROM pg_stat_user_tables WHERE relname IN "
            "('events','webhooks','webhook_deliveries','webhook_attempts') ORDER BY relname"
        ).fetchall()
    print(
        f"loaded in {time.perf_counter() - started:.0f} s: "
        + ", ".join(f"{name} {rows:,}" for name, rows in sizes)
    )


@contextmanager
def captured(engine: Engine) -> Iterator[list[tuple[str, Any]]]:
    statements: list[tuple[str, Any]] = []

    def keep(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        statements.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", keep)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", keep)


def explain(engine: Engine, title: str, work: Callable[[Session], Any], pick: str) -> Any:
    """Run `work` (rolled back), then EXPLAIN (ANALYZE, BUFFERS) the statement it sent that
    matches `pick`, with the same parameters, in a transaction rolled back too."""
    with captured(engine) as statements, Session(engine) as session:
        result = work(session)
        session.rollback()
    chosen = [(s, p) for s, p in statements if re.search(pick, s, re.S)]
    if not chosen:
        raise SystemExit(f"{title}: no statement matched {pick!r}")
    explain_sql(engine, title, chosen[0])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--agencies", type=int, default=1000)
    parser.add_argument("--keep", action="store_true", help="keep (and reuse) the database")
    args = parser.parse_args()
    url = database_url(NAME)
    admin = _libpq(database_url("postgres"))
    with psycopg.connect(admin, autocommit=True) as db:
        exists = db.execute("SELECT 1 FROM pg_database WHERE datname = %s", (NAME,)).fetchone()
        if exists and not args.keep:
            db.execute(f'DROP DATABASE "{NAME}" WITH (FORCE)')
            exists = None
        if not exists:
            db.execute(f'CREATE DATABASE "{NAME}"')
    folder = Path(tempfile.mkdtemp(prefix="casehub-bench-"))
    app = create_app(
        {
            "DATABASE_URL": url,
            "SIGNING_KEYS_FILE": str(folder / "signing-keys.json"),
            "WEBHOOK_KEY_FILE": str(folder / "webhook-key"),
            "AUDIT_SEQUENCER": False,
        }
    )
    engine = get_db(app).engine
    assert engine is not None
    try:
        with engine.connect() as connection:
            loaded = connection.execute(text("SELECT to_regclass('events')")).scalar()
        if loaded is None:
            migrate.upgrade(engine)
            load(url, count=args.events, agencies=args.agencies)
        from casehub.webhooks.worker import Worker

        run(engine, args.agencies, Worker(app))
    finally:
        engine.dispose()
        shutil.rmtree(folder, ignore_errors=True)
        if not args.keep:
            with psycopg.connect(admin, autocommit=True) as db:
                db.execute(f'DROP DATABASE "{NAME}" WITH (FORCE)')


def explain_sql(engine: Engine, title: str, captured_sql: tuple[str, Any] | None) -> None:
    print(f"\n== {title}")
    if captured_sql is None:
        print("   (no statement captured)")
        return
    statement, parameters = captured_sql
    print("   " + " ".join(statement.split())[:400])
    with engine.connect() as connection:
        raw = connection.connection.dbapi_connection
        assert raw is not None
        with raw.cursor() as cursor:
            cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + statement, parameters)
            for (line,) in cursor.fetchall():
                print("   " + line)
        connection.rollback()


def run(engine: Engine, agencies: int, worker: Any) -> None:

    agency = f"agency-{agencies // 2}"
    reader = Actor(agency=agency, agency_kind="police", is_platform=False, client_id="bench")
    big = Actor(agency="agency-1", agency_kind="local_authority", is_platform=False, client_id="b")
    with Session(engine) as session:
        held = session.execute(
            text("SELECT count(*) FROM events WHERE agency_code = 'agency-1'")
        ).scalar_one()
    big_first = explain(
        engine,
        f"feed: the big agency's first page ({held:,} events held)",
        lambda s: events.feed(s, actor=big, types=[], limit=50, cursor=None),
        r"FROM events",
    )
    explain(
        engine,
        "feed: the big agency's next page",
        lambda s: events.feed(s, actor=big, types=[], limit=50, cursor=big_first.next_cursor),
        r"FROM events",
    )
    explain(
        engine,
        "feed: the big agency, only share.acknowledged",
        lambda s: events.feed(s, actor=big, types=["share.acknowledged"], limit=50, cursor=None),
        r"FROM events",
    )
    first = explain(
        engine,
        "feed: an agency's first page (limit 50)",
        lambda s: events.feed(s, actor=reader, types=[], limit=50, cursor=None),
        r"FROM events",
    )
    explain(
        engine,
        "feed: the next page from a cursor",
        lambda s: events.feed(s, actor=reader, types=[], limit=50, cursor=first.next_cursor),
        r"FROM events",
    )
    explain(
        engine,
        "feed: only share.acknowledged (a quarter of the agency's events)",
        lambda s: events.feed(s, actor=reader, types=["share.acknowledged"], limit=50, cursor=None),
        r"FROM events",
    )
    now = utcnow()
    explain(
        engine,
        "outbox: a share's notification, one statement (event + deliveries to 2 subscriptions)",
        lambda s: events.emit(
            s,
            type="referral.shared",
            recipients={agency},
            actor=None,
            data={"referral_id": uuid.uuid4(), "share_id": uuid.uuid4()},
            now=now,
        ),
        r"INSERT INTO events",
    )
    with captured(engine) as statements:
        claims = worker.claim(50)
    claim_sql = next((sp for sp in statements if "FOR UPDATE" in sp[0]), None)
    if claim_sql is not None:
        # Those 50 are leased now: explain the same claim as the next one, which finds the
        # rest of the backlog (due within the next hour).
        statement, parameters = claim_sql
        later = {
            k: (v + timedelta(hours=1) if isinstance(v, datetime) else v)
            for k, v in parameters.items()
        }
        claim_sql = (statement, later)
    explain_sql(engine, f"worker: claim 50 due deliveries (claimed {len(claims)})", claim_sql)
    from casehub.api.ops import _OutboxCollector

    def scrape(session: Session) -> Any:
        return list(_OutboxCollector(session).collect())

    explain(engine, "metrics: pending count and oldest pending", scrape, r"count")
    # A day's purge: the worker's clock a day on, so a thirtieth of the events fall out.
    worker.clock = lambda: utcnow() + timedelta(days=1)
    with captured(engine) as statements:
        started = time.perf_counter()
        purged = worker.purge_events()
        elapsed = time.perf_counter() - started
    batches = [sp for sp in statements if sp[0].lstrip().upper().startswith("DELETE")]
    print(
        f"\n== retention: purged {purged:,} events (and their deliveries and attempts) in "
        f"{len(batches)} batches, {elapsed:.1f} s ({elapsed / max(len(batches), 1) * 1000:.0f} "
        "ms a batch)"
    )


if __name__ == "__main__":
    main()
