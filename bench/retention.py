"""Retention on PostgreSQL: what a dry run and a real `casehub retention run` cost per referral.

    .venv/bin/python -m bench.retention [--referrals N]

Builds a fresh scratch database `casehub_bench_retention_*` (on BENCH_PG, as bench/audit_data.py
reads it; dropped at the end) holding N referrals closed six years and a day ago and N/10 closed
recently, each about its own child, with two shares and a note; then times, in-process, what
`casehub retention run --dry-run`, `casehub retention run` and a second (idle) run do.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import date, timedelta
from pathlib import Path

import psycopg
from flask import Flask
from sqlalchemy import update

from bench.audit_data import _libpq, database_url
from casehub import audit, create_app, migrate
from casehub.auth.actor import Actor
from casehub.db import get_db, session_scope, utcnow
from casehub.models import Referral
from casehub.services import agencies as agency_service
from casehub.services import referrals, retention, shares

SHARE = {
    "access": "read",
    "purpose": "safeguard_assess",
    "necessity": "Assess the risk of exploitation.",
    "lawful_basis": {"article_6": "public_task", "gateway": "Children Act 2004 s11"},
    "consent": {"status": "not_sought", "rationale": "Would place the child at risk."},
}


@contextmanager
def scratch_database() -> Iterator[str]:
    name = f"casehub_bench_retention_{uuid.uuid4().hex[:8]}"
    admin = _libpq(database_url("postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield database_url(name)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def seed(app: Flask, due: int, kept: int) -> None:
    lead = Actor(agency="btp", agency_kind="police", is_platform=False, client_id="bench")
    with session_scope(app) as session:
        for code, kind in (("btp", "police"), ("notts-cs", "local_authority"), ("tcs", "charity")):
            agency_service.add_agency(session, code=code, name=code.title(), kind=kind)
        session.flush()
        now = utcnow()
        for n in range(due + kept):
            referral = referrals.create_referral(
                session,
                actor=lead,
                data={
                    "subject": {
                        "given_name": f"Child{n}",
                        "family_name": "Okafor",
                        "date_of_birth": date(2011, 4, 2),
                    },
                    "categories": ["county_lines"],
                    "indicators": [],
                    "summary": "Seen at the station.",
                    "narrative": "Two phones, school hours.",
                    "observed_at": now - timedelta(days=1),
                    "risk_level": "high",
                },
                now=now,
            )
            for agency in ("notts-cs", "tcs"):
                shares.create_share(
                    session,
                    actor=lead,
                    referral_id=referral.id,
                    data={**SHARE, "agency": agency},
                    now=now,
                )
            referrals.add_note(
                session,
                actor=lead,
                referral_id=referral.id,
                body="Called the school.",
                visibility="shared",
                now=now,
            )
            ago = timedelta(days=2191 if n < due else 10)
            session.execute(
                update(Referral)
                .where(Referral.id == referral.id)
                .values(status="closed", closed_at=now - ago)
            )
            if n % 500 == 499:
                audit.write_pending(session, None, status=201)
                session.commit()
        audit.write_pending(session, None, status=201)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--referrals", type=int, default=1000, help="referrals due (default 1000)")
    args = parser.parse_args(argv)
    with scratch_database() as url, tempfile.TemporaryDirectory() as folder:
        app = create_app(
            {
                "DATABASE_URL": url,
                "SIGNING_KEYS_FILE": str(Path(folder) / "keys.json"),
                "AUDIT_SEQUENCER": False,
                "SERVING": False,
            }
        )
        engine = get_db(app).engine
        assert engine is not None
        migrate.upgrade(engine)
        started = time.perf_counter()
        seed(app, args.referrals, args.referrals // 10)
        print(
            f"seeded {args.referrals} referrals due and {args.referrals // 10} not "
            f"({time.perf_counter() - started:.1f}s)"
        )
        with app.app_context():
            for label, dry in (("dry run", True), ("run", False), ("second run", False)):
                report = retention.run(
                    lambda: session_scope(app), now=utcnow(), days=2190, dry_run=dry
                )
                each = (
                    f" ({1000 * report.erase_seconds / report.referrals:.2f} ms each)"
                    if report.referrals
                    else ""
                )
                print(
                    f"{label:>10}: {report.referrals} referrals in {report.erase_seconds:.3f}s"
                    f"{each}, {report.subjects} children, {report.notifications} "
                    f"notifications; pruning {report.prune_seconds:.3f}s"
                )
        engine.dispose()


if __name__ == "__main__":
    main()
