"""How long a 404 takes for a referral that exists but the caller may not see, against one for
an id that names nothing: the difference tells a prober which ids exist.

    python -m bench.not_found_timing [--url postgresql+psycopg://postgres@127.0.0.1:5432/postgres]
                                     [--rounds 2000]

In process (Flask's test client, real tokens, the whole request lifecycle with its audit write
and commit), on a fresh database: agency `btp` leads 200 referrals; agency `notts` asks for one
of them, then for a random id, alternately, `--rounds` times each, after a warm-up. Prints the
median, p90 and p99 of both, the difference of medians, and the SQL statements each answer ran.
"""

from __future__ import annotations

import argparse
import base64
import os
import random
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from sqlalchemy import event

from casehub import create_app, migrate
from casehub.db import get_db, session_scope
from casehub.services import agencies
from tests.helpers import referral_body
from tests.live_server import fresh_database

RATE_LIMITS_OUT_OF_REACH = {
    key: "100000000/minute" for key in ("RATE_LIMIT_READ", "RATE_LIMIT_WRITE", "RATE_LIMIT_PUBLIC")
}


def _token(http, client_id: str, secret: str) -> str:  # type: ignore[no-untyped-def]
    basic = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    response = http.post(
        "/oauth/token",
        data={"grant_type": "client_credentials"},
        headers={"Authorization": f"Basic {basic}"},
    )
    return str(response.get_json()["access_token"])


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=None, help="a PostgreSQL server (default: SQLite)")
    parser.add_argument("--rounds", type=int, default=2000)
    options = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="casehub-bench-404-"))
    if options.url:
        os.environ["CASEHUB_TEST_DATABASE_URL"] = options.url
    with fresh_database(folder, "bench404") as url:
        app = create_app(
            {
                "DATABASE_URL": url,
                "ISSUER": "http://casehub.bench",
                "SIGNING_KEYS_FILE": str(folder / "keys.json"),
                "CLIENT_SECRET_SCRYPT_N": 1024,
                "AUDIT_SEQUENCER": False,
                "LOG_LEVEL": "warning",  # a line per request would be measured too
                **RATE_LIMITS_OUT_OF_REACH,
            }
        )
        engine = get_db(app).engine
        migrate.upgrade(engine)
        with app.app_context(), session_scope() as session:
            for code, kind in (("btp", "police"), ("notts", "local_authority")):
                agencies.add_agency(session, code=code, name=code, kind=kind, area=None)
            lead, lead_secret = agencies.add_client(
                session,
                agency_code="btp",
                name="lead",
                scope="referrals:read referrals:write",
                scrypt_n=1024,
            )
            prober, prober_secret = agencies.add_client(
                session, agency_code="notts", name="prober", scope="referrals:read", scrypt_n=1024
            )
            credentials = {
                "lead": (lead.client_id, str(lead_secret)),
                "prober": (prober.client_id, str(prober_secret)),
            }
        http = app.test_client()
        lead_headers = {"Authorization": f"Bearer {_token(http, *credentials['lead'])}"}
        ids = [
            http.post("/v1/referrals", json=referral_body(), headers=lead_headers).get_json()["id"]
            for _ in range(200)
        ]
        headers = {"Authorization": f"Bearer {_token(http, *credentials['prober'])}"}
        statements: dict[str, int] = {}
        counting: list[str] = []

        @event.listens_for(engine, "before_cursor_execute")
        def _count(*_: object) -> None:
            if counting:
                statements[counting[0]] = statements.get(counting[0], 0) + 1

        timings: dict[str, list[float]] = {"invisible": [], "random": []}
        for round_ in range(options.rounds + 200):
            order = ["invisible", "random"]
            random.shuffle(order)
            for kind in order:
                target = random.choice(ids) if kind == "invisible" else str(uuid.uuid4())
                if round_ == 200:
                    counting[:] = [kind]
                started = time.perf_counter()
                response = http.get(f"/v1/referrals/{target}", headers=headers)
                elapsed = time.perf_counter() - started
                counting.clear()
                assert response.status_code == 404, response.status_code
                if round_ >= 200:  # the first 200 rounds warm caches and pools
                    timings[kind].append(elapsed * 1000)
        engine.dispose()
    backend = "PostgreSQL" if url.startswith("postgresql") else "SQLite"
    print(f"404 timing, {backend}, {options.rounds} alternating requests of each kind (ms):")
    for kind, values in timings.items():
        print(
            f"  {kind:9}  p50 {statistics.median(values):6.3f}  p90 {_percentile(values, 0.9):6.3f}"
            f"  p99 {_percentile(values, 0.99):6.3f}  statements {statements.get(kind, 0)}"
        )
    gap = statistics.median(timings["invisible"]) - statistics.median(timings["random"])
    print(f"  difference of medians (invisible - random): {gap:+.3f} ms")


if __name__ == "__main__":
    main()
