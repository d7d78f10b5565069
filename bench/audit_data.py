"""A scratch PostgreSQL database holding N chained audit events, for the audit benchmarks.

Events are loaded with COPY (the enqueue trigger off, the queue filled in one statement), then
chained by the real sequencer, whose rate is printed. The database is kept between runs and
reused when it already holds N chained events.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import time
import uuid
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from sqlalchemy.engine import make_url

from casehub import migrate
from casehub.audit.chain import sequence_all
from casehub.db import make_engine

SERVER = os.environ.get("BENCH_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
ACTIONS = ["referral.read", "referral.list", "subject.read", "share.create", "access.denied"]
AGENCIES = ["btp", "notts-police", "notts-cs", "tcs", "derby-cs", "em-probation"]
COLUMNS = (
    "id, occurred_at, actor_agency, actor_client_id, actor_user_id, action, outcome, "
    "resource_type, resource_id, referral_id, subject_ids, basis, purpose, request_id, "
    "request_method, request_path, request_status, request_ip"
)


def database_url(name: str) -> str:
    return make_url(SERVER).set(database=name).render_as_string(hide_password=False)


def _libpq(url: str) -> str:
    parsed = make_url(url)
    return (
        f"host={parsed.host or '127.0.0.1'} port={parsed.port or 5432} "
        f"user={parsed.username or 'postgres'} dbname={parsed.database}"
        + (f" password={parsed.password}" if parsed.password else "")
    )


def _rows(count: int, start: datetime) -> io.StringIO:
    rng = random.Random(count)
    subjects = [str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(5000)]
    referrals = [str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(3000)]
    out = io.StringIO()
    for i in range(count):
        action = ACTIONS[i % len(ACTIONS)]
        agency = AGENCIES[i % len(AGENCIES)]
        referral = referrals[i % len(referrals)]
        subject = subjects[i % len(subjects)]
        outcome = "denied" if action == "access.denied" else "allowed"
        when = (start + timedelta(milliseconds=i)).isoformat()
        out.write(
            f"{uuid.uuid4()}\t{when}\t{agency}\tchc_{agency}\t\\N\t{action}\t{outcome}\t"
            f"referral\t{referral}\t{referral}\t[\"{subject}\"]\tlead\tcase_work\t"
            f"{uuid.uuid4().hex}\tGET\t/v1/referrals/{referral}\t200\t127.0.0.1\n"
        )
    out.seek(0)
    return out


def _chunks(data: io.StringIO) -> Iterator[str]:
    while chunk := data.read(1 << 20):
        yield chunk


def load_events(
    conn: psycopg.Connection[Any], chunks: Iterable[str], columns: str = COLUMNS
) -> None:
    """COPY events (text-format lines of `columns`) into audit_events with the enqueue trigger
    off, then queue every event for the sequencer in one statement; the caller commits.

    A trigger per row would queue them one INSERT at a time; the sequencer then chains them
    exactly as it chains events the service wrote (casehub.audit.chain.sequence_all)."""
    conn.execute("SET session_replication_role = replica")  # skip the per-row enqueue
    with conn.cursor() as cur, cur.copy(f"COPY audit_events ({columns}) FROM STDIN") as copy:
        for chunk in chunks:
            copy.write(chunk)
    conn.execute("SET session_replication_role = origin")
    conn.execute("INSERT INTO audit_pending (pos) SELECT pos FROM audit_events")


def chained_count(url: str) -> int:
    with psycopg.connect(_libpq(url)) as conn:
        row = conn.execute("SELECT count(*) FROM audit_chain").fetchone()
        return int(row[0]) if row else 0


def prepare(count: int, name: str = "casehub_bench_audit", *, fresh: bool = False) -> str:
    """The URL of a database with `count` chained events (built if needed; the events that
    earlier benchmark runs added themselves, such as audited exports, are tolerated)."""
    url = database_url(name)
    admin = _libpq(database_url("postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
    if exists and not fresh:
        try:
            chained = chained_count(url)
            if count <= chained < count + 1000:
                print(f"reusing {name}: {chained:,} chained events")
                return url
        except psycopg.Error:
            pass
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    engine = make_engine(url)
    migrate.upgrade(engine)
    started = time.perf_counter()
    with psycopg.connect(_libpq(url)) as conn:
        batch = 200_000
        base = datetime.now(UTC) - timedelta(days=30)
        load_events(
            conn,
            (
                chunk
                for offset in range(0, count, batch)
                for chunk in _chunks(
                    _rows(min(batch, count - offset), base + timedelta(seconds=offset))
                )
            ),
        )
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE audit_events")
        conn.execute("VACUUM ANALYZE audit_pending")
    print(f"loaded {count:,} events in {time.perf_counter() - started:.1f}s")
    started = time.perf_counter()
    chained = sequence_all(engine, limit=20_000)
    elapsed = time.perf_counter() - started
    rate = chained / elapsed
    print(f"sequencer chained {chained:,} events in {elapsed:.1f}s: {rate:,.0f} events/s")
    with psycopg.connect(_libpq(url), autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    engine.dispose()
    return url


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--fresh", action="store_true")
    args = parser.parse_args()
    prepare(args.events, fresh=args.fresh)
