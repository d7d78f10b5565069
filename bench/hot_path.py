"""Where an audited read and a create spend their time, in process, against the bare baseline.

    python -m bench.hot_path [--url postgresql+psycopg://postgres@127.0.0.1:5432/postgres]
                             [--requests 2000] [--profile lead|recipient|create|bare-read]

Flask's test client, one thread, a fresh PostgreSQL database, real ES256 tokens and the whole
request lifecycle (token, limiter, actor check, visibility, audit insert, commit), the audit
sequencer off (it runs beside the requests in production and is measured by bench.compare). The
bare baseline of bench.compare (`bench/compare_bare_app.py`) serves the same documents from the
same database. For each operation it prints the wall time and the process CPU time per request
(medians over `--requests`, after a warm-up) and the SQL statements one request sends; CPU is
what limits throughput on a machine whose cores the server, PostgreSQL and the load share.
`--profile` adds a pyinstrument profile of that operation (sampling every 0.2 ms; the
figures of a profiled operation include the sampler's cost); `--cpu-profile` a cProfile of
its CPU time alone (waits for PostgreSQL left out), by cumulative time.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import event, text

from casehub import create_app, migrate
from casehub.db import get_db, session_scope
from casehub.services import agencies
from tests.helpers import referral_body, share_body
from tests.live_server import fresh_database

from .not_found_timing import RATE_LIMITS_OUT_OF_REACH, _token

SERVER = os.environ.get("BENCH_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def _measure(
    call: Callable[[int], Any], count: int, profile: bool, cpu_profile: bool = False
) -> tuple[float, float, str | None]:
    for i in range(min(200, count)):
        call(i)
    walls: list[float] = []
    cpus: list[float] = []
    profiler: Any = None
    if cpu_profile:
        profiler = cProfile.Profile(time.process_time)  # CPU time: waits do not count
        profiler.enable()
    elif profile:
        from pyinstrument import Profiler  # pip install -e '.[bench]'

        profiler = Profiler(interval=0.0002)
        profiler.start()
    for i in range(count):
        wall, cpu = time.perf_counter(), time.process_time()
        call(i)
        cpus.append(time.process_time() - cpu)
        walls.append(time.perf_counter() - wall)
    report = None
    if cpu_profile:
        profiler.disable()
        out = io.StringIO()
        if os.environ.get("BENCH_PROFILE_OUT"):  # the whole profile, for pstats or snakeviz
            profiler.dump_stats(os.environ["BENCH_PROFILE_OUT"])
        pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(45)
        report = out.getvalue()
    elif profiler:
        profiler.stop()
        report = profiler.output_text(
            show_all=bool(os.environ.get("BENCH_SHOW_ALL")),  # every frame, not only ours
            color=False,
            time="percent_of_total",
        )
    return statistics.median(walls) * 1e6, statistics.mean(cpus) * 1e6, report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=SERVER, help="the PostgreSQL server")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--profile", choices=["lead", "recipient", "create", "bare-read"])
    parser.add_argument(
        "--cpu-profile",
        choices=["lead", "recipient", "create", "bare-read"],
        help="a cProfile of CPU time (process_time) instead, the 45 costliest calls",
    )
    options = parser.parse_args()
    os.environ["CASEHUB_TEST_DATABASE_URL"] = options.url
    folder = Path(tempfile.mkdtemp(prefix="casehub-bench-hot-"))
    with fresh_database(folder, "benchhot") as url:
        app = create_app(
            {
                "DATABASE_URL": url,
                "ISSUER": "http://casehub.bench",
                "SIGNING_KEYS_FILE": str(folder / "keys.json"),
                "CLIENT_SECRET_SCRYPT_N": 1024,
                "AUDIT_SEQUENCER": False,
                "LOG_LEVEL": "warning",
                **RATE_LIMITS_OUT_OF_REACH,
            }
        )
        engine = get_db(app).engine
        migrate.upgrade(engine)
        with app.app_context(), session_scope() as session:
            for code, kind in (("btp", "police"), ("notts-cs", "local_authority")):
                agencies.add_agency(session, code=code, name=code, kind=kind, area=None)
            lead, lead_secret = agencies.add_client(
                session,
                agency_code="btp",
                name="lead",
                scope="referrals:read referrals:write referrals:share",
                scrypt_n=1024,
            )
            other, other_secret = agencies.add_client(
                session,
                agency_code="notts-cs",
                name="recipient",
                scope="referrals:read",
                scrypt_n=1024,
            )
            lead_credentials = (lead.client_id, str(lead_secret))
            other_credentials = (other.client_id, str(other_secret))
        http = app.test_client()
        lead_auth = {"Authorization": f"Bearer {_token(http, *lead_credentials)}"}
        other_auth = {"Authorization": f"Bearer {_token(http, *other_credentials)}"}
        ids = []
        for _ in range(200):
            created = http.post("/v1/referrals", json=referral_body(), headers=lead_auth)
            ids.append(created.get_json()["id"])
        for referral_id in ids[:100]:
            shared = http.post(
                f"/v1/referrals/{referral_id}/shares",
                json=share_body("notts-cs"),
                headers=lead_auth,
            )
            assert shared.status_code == 201, shared.get_json()

        os.environ["BARE_DATABASE_URL"] = url
        from bench import compare_bare_app as bare

        bare.Base.metadata.create_all(bare.engine)
        documents = [http.get(f"/v1/referrals/{i}", headers=lead_auth).get_json() for i in ids]
        with bare.engine.begin() as connection:
            connection.execute(
                bare.BareReferral.__table__.insert(),
                [{c: d[c] for c in bare.COLUMNS} for d in documents],
            )
        bare_http = bare.app.test_client()
        body = referral_body()

        def lead_read(i: int) -> None:
            assert http.get(f"/v1/referrals/{ids[i % 200]}", headers=lead_auth).status_code == 200

        def recipient_read(i: int) -> None:
            response = http.get(f"/v1/referrals/{ids[i % 100]}", headers=other_auth)
            assert response.status_code == 200

        def create(_: int) -> None:
            assert http.post("/v1/referrals", json=body, headers=lead_auth).status_code == 201

        def bare_read(i: int) -> None:
            assert bare_http.get(f"/v1/referrals/{ids[i % 200]}").status_code == 200

        def bare_create(_: int) -> None:
            assert bare_http.post("/v1/referrals", json=body).status_code == 201

        operations = {
            "lead": lead_read,
            "recipient": recipient_read,
            "create": create,
            "bare-read": bare_read,
            "bare-create": bare_create,
        }
        statements: list[str] = []

        def _count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
            statements.append(statement.split(None, 1)[0].upper())

        results = {}
        for name, call in operations.items():
            results[name] = _measure(
                call, options.requests, options.profile == name, options.cpu_profile == name
            )
            statements.clear()
            event.listen(engine, "before_cursor_execute", _count)
            event.listen(bare.engine, "before_cursor_execute", _count)
            call(0)
            event.remove(engine, "before_cursor_execute", _count)
            event.remove(bare.engine, "before_cursor_execute", _count)
            results[name] += (list(statements),)
        with engine.connect() as connection:
            version = connection.execute(text("SHOW server_version")).scalar()
        engine.dispose()
        bare.engine.dispose()
    print(
        f"in process, one thread, PostgreSQL {version}, {options.requests} requests each "
        "(median wall, mean CPU per request; statements as sent by SQLAlchemy, BEGIN and "
        "COMMIT being separate round trips on psycopg):"
    )
    for name, (wall, cpu, _report, sent) in results.items():
        print(f"  {name:12} wall {wall:7.0f} µs  cpu {cpu:7.0f} µs  statements {' '.join(sent)}")
    pairs = (("lead", "bare-read"), ("recipient", "bare-read"), ("create", "bare-create"))
    for pair, base in pairs:
        print(f"  {pair} / {base}: cpu x {results[pair][1] / results[base][1]:.2f}")
    for _name, (_w, _c, report, _s) in results.items():
        if report:
            print(report)


if __name__ == "__main__":
    main()
