"""Exporting 1,000,000 audit events over HTTP: rate and the serving worker's peak memory.

    .venv/bin/python -m bench.audit_export [--events N] [--format ndjson|csv]

Runs casehub under gunicorn (one worker) on the scratch database of bench/audit_data.py,
downloads GET /v1/audit/events/export as a platform auditor, and prints events/s and the
worker's resident-memory high-water mark (target: under 150 MB).
"""

from __future__ import annotations

import argparse
import socket
import time

from bench.audit_data import prepare
from bench.audit_server import (
    casehub_env,
    gunicorn,
    peak_rss_mb,
    register_client,
    rss_mb,
    token,
    workdir,
)

LIMIT_MB = 150


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--format", nargs="*", default=["ndjson", "csv"])
    args = parser.parse_args()
    url = prepare(args.events)
    port = free_port()
    env = casehub_env(url, port, workdir())
    client_id, secret = register_client(env, "partnership", "audit:read:all", platform=True)
    with gunicorn("wsgi:app", env, port, workers=1, threads=2) as server:
        bearer = token(server, client_id, secret)
        (worker,) = server.workers()
        for fmt in args.format:
            before = rss_mb(worker)
            conn = server.connection()
            started = time.perf_counter()
            conn.request(
                "GET",
                f"/v1/audit/events/export?format={fmt}",
                headers={"Authorization": f"Bearer {bearer}"},
            )
            response = conn.getresponse()
            assert response.status == 200, response.read()[:500]
            lines = size = 0
            while chunk := response.read(1 << 16):
                lines += chunk.count(b"\n")
                size += len(chunk)
            elapsed = time.perf_counter() - started
            events = lines - (1 if fmt == "csv" else 0)
            peak = peak_rss_mb(worker)
            verdict = "under" if peak < LIMIT_MB else "OVER"
            print(
                f"{fmt}: {events:,} events, {size / 1e6:,.0f} MB in {elapsed:.1f}s = "
                f"{events / elapsed:,.0f} events/s; worker RSS {before:.0f} MB before, "
                f"peak {peak:.0f} MB ({verdict} {LIMIT_MB} MB)"
            )


if __name__ == "__main__":
    main()
