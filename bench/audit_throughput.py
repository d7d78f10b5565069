"""Audited reads under gunicorn on PostgreSQL versus a bare read of the same row.

    .venv/bin/python -m bench.audit_throughput [--workers 2] [--threads 4] [--seconds 10]

Starts casehub (deploy/gunicorn.conf.py) on a fresh scratch database, raises one referral,
and loads an authenticated, audited `GET /v1/referrals/{id}`; then serves the same row from
bench/audit_bare_app.py (flask-smorest + SQLAlchemy, nothing else) with the same gunicorn
settings. Prints req/s for both and the ratio (the issue's floor: 0.6). Load comes from `wrk`
when installed (apt-get install wrk), else from Python threads with keep-alive connections;
either way it is bounded in time and count and only ever targets 127.0.0.1.
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import shutil
import socket
import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta

import psycopg

from bench.audit_data import _libpq, database_url
from bench.audit_server import casehub_env, gunicorn, register_client, token, workdir
from casehub import migrate
from casehub.db import make_engine

FLOOR = 0.6
DATABASE = "casehub_bench_http"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fresh_database() -> str:
    with psycopg.connect(_libpq(database_url("postgres")), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{DATABASE}"')
    url = database_url(DATABASE)
    engine = make_engine(url)
    migrate.upgrade(engine)
    engine.dispose()
    return url


REFERRAL = {
    "subject": {
        "given_name": "Jayden",
        "family_name": "Okafor",
        "date_of_birth": "2011-04-02",
        "gender": "male",
    },
    "categories": ["county_lines", "missing"],
    "indicators": ["TRV-01", "PHN-01"],
    "summary": "Boy travelling alone in school hours with two phones at Nottingham station.",
    "observed_at": (datetime.now(UTC) - timedelta(hours=2)).isoformat(),
    "risk_level": "high",
}


def raise_referral(port: int, bearer: str) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request(
        "POST",
        "/v1/referrals",
        body=json.dumps(REFERRAL),
        headers={"Authorization": f"Bearer {bearer}", "Content-Type": "application/json"},
    )
    response = conn.getresponse()
    body = json.loads(response.read())
    assert response.status == 201, body
    return str(body["id"])


def load(port: int, path: str, headers: dict[str, str], *, seconds: float, connections: int,
         max_requests: int) -> float:
    """Requests per second for `path`, all answered 200."""
    if shutil.which("wrk"):
        command = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency"]
        for name, value in headers.items():
            command += ["-H", f"{name}: {value}"]
        output = subprocess.run(
            [*command, f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True, check=True
        ).stdout
        if "Non-2xx" in output:
            raise RuntimeError(output)
        match = re.search(r"Requests/sec:\s+([\d.]+)", output)
        assert match, output
        return float(match.group(1))
    return _python_load(port, path, headers, seconds, connections, max_requests)


def _python_load(port: int, path: str, headers: dict[str, str], seconds: float,
                 connections: int, max_requests: int) -> float:
    deadline = time.monotonic() + seconds
    counts = [0] * connections
    lock = threading.Lock()
    budget = [max_requests]

    def run(index: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while time.monotonic() < deadline:
            with lock:
                if budget[0] <= 0:
                    return
                budget[0] -= 1
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                raise RuntimeError(f"status {response.status}")
            counts[index] += 1

    threads = [threading.Thread(target=run, args=(i,)) for i in range(connections)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts) / (time.monotonic() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--max-requests", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    url = fresh_database()
    port = free_port()
    env = casehub_env(url, port, workdir())
    client_id, secret = register_client(
        env, "btp", "referrals:read referrals:write subjects:read subjects:write", platform=False
    )
    loads = {
        "seconds": args.seconds,
        "connections": args.connections,
        "max_requests": args.max_requests,
    }
    bare_port = free_port()
    with (
        gunicorn("wsgi:app", env, port, workers=args.workers, threads=args.threads) as server,
        gunicorn(
            "bench.audit_bare_app:app", env, bare_port, workers=args.workers, threads=args.threads
        ),
    ):
        referral_id = raise_referral(port, token(server, client_id, secret))
        headers = {"Authorization": f"Bearer {token(server, client_id, secret)}"}
        path = f"/v1/referrals/{referral_id}"
        load(port, path, headers, **{**loads, "seconds": 2})  # warm up both
        load(bare_port, path, {}, **{**loads, "seconds": 2})
        # Alternate, so a noisy neighbour on the machine weighs on both sides alike.
        rounds = []
        for _ in range(args.rounds):
            audited = load(port, path, headers, **loads)
            bare = load(bare_port, path, {}, **loads)
            rounds.append((audited, bare))
        time.sleep(2)  # let the sequencer drain before counting
    with psycopg.connect(_libpq(url)) as conn:
        reads, chained = conn.execute(
            "SELECT (SELECT count(*) FROM audit_events WHERE action = 'referral.read'),"
            " (SELECT count(*) FROM audit_chain)"
        ).fetchone() or (0, 0)
    print(f"gunicorn: {args.workers} workers x {args.threads} threads; "
          f"{args.connections} connections for {args.seconds:.0f}s per run")
    for number, (audited, bare) in enumerate(rounds, 1):
        print(f"round {number}: audited GET /v1/referrals/{{id}} {audited:,.0f} req/s, "
              f"bare read {bare:,.0f} req/s, ratio {audited / bare:.2f}")
    audited, bare = max(r[0] for r in rounds), max(r[1] for r in rounds)
    ratio = audited / bare
    print(f"best: audited {audited:,.0f} req/s ({reads:,} referral.read events written, "
          f"{chained:,} chained); bare {bare:,.0f} req/s")
    verdict = "meets" if ratio >= FLOOR else "MISSES"
    print(f"ratio {ratio:.2f} — {verdict} the {FLOOR} floor")


if __name__ == "__main__":
    main()
