"""What the transactional outbox costs a request, and how fast one worker delivers it.

    .venv/bin/python -m bench.outbox [--rounds 3] [--requests 200] [--deliveries 2000]

Both parts run on a fresh PostgreSQL database (`casehub_bench_outbox_*` on BENCH_PG, default
127.0.0.1:5432), dropped at the end.

1. Outbox cost. In this process, through the Flask test client with real bearer tokens, the lead
   agency raises referrals (`POST /v1/referrals`, which emits nothing), shares each one
   (`POST /v1/referrals/{id}/shares`: one event, two deliveries), and changes referrals shared
   with two agencies (`PATCH /v1/referrals/{id}`: two events, four deliveries). Both recipients
   have two active subscriptions each. The same requests run with the outbox as built and with
   `casehub.services.events.emit` replaced by a no-op (the baseline: the identical app writing no
   events and no deliveries), in alternating rounds. Prints mean, p50 and p99 per operation
   (medians over the rounds), the added cost (target: at most +10 %), and the statements the
   outbox adds to each request with their measured time.
2. Worker throughput. A loopback receiver (http.server, 204 at once) counts `webhook-id`s;
   `--deliveries` events are queued for an agency whose one subscription points at it (the rows
   emit() writes, in one statement), and `casehub webhooks worker --once` (a subprocess)
   delivers them, at the default concurrency (8), then an eighth as many at concurrency 1.
   Prints deliveries/s and checks the receiver saw every event exactly once.

Timings are printed, never asserted.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import event as sa_event
from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session

from bench.audit_data import _libpq, database_url
from bench.audit_server import RATE_LIMITS
from casehub import create_app, migrate
from casehub.db import get_db, make_engine, session_scope
from casehub.services import agencies, events
from tests.helpers import share_body

TARGET = 0.10  # the outbox may add at most 10 % to a request
LEAD = "btp"
RECIPIENTS = ("notts-cs", "tcs")  # two subscriptions each
RECEIVER_AGENCY = "rcv"  # part 2: one subscription, pointing at the loopback receiver
SUBSCRIBED = ["referral.shared", "referral.updated", "referral.status_changed", "note.added"]
LEAD_SCOPES = "referrals:read referrals:write referrals:share subjects:read subjects:write"
PATCH_POOL = 50  # referrals shared with both recipients, PATCHed in turn
WARM_UP = 30  # requests of each operation and mode before the measured rounds
ROOT = Path(__file__).resolve().parent.parent
WORKER_COMMAND = ("webhooks", "worker", "--once")


# -- the database -------------------------------------------------------------------------------
@contextmanager
def scratch_database() -> Iterator[tuple[str, str]]:
    name = f"casehub_bench_outbox_{uuid.uuid4().hex[:8]}"
    admin = _libpq(database_url("postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
        version = conn.execute("SHOW server_version").fetchone()
    url = database_url(name)
    try:
        engine = make_engine(url)
        migrate.upgrade(engine)
        engine.dispose()
        yield url, f"PostgreSQL {version[0] if version else '?'}"
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        print(f"dropped database {name}")


def settings(url: str, folder: Path) -> dict[str, str]:
    """The CASEHUB_* settings the bench app and the worker subprocess share."""
    return {
        "CASEHUB_DATABASE_URL": url,
        "CASEHUB_ISSUER": "http://casehub.bench",
        "CASEHUB_SIGNING_KEYS_FILE": str(folder / "signing-keys.json"),
        "CASEHUB_WEBHOOK_KEY_FILE": str(folder / "webhook-key"),
        "CASEHUB_AUDIT_CHECKPOINT_KEY_FILE": str(folder / "audit-key.pem"),
        "CASEHUB_CLIENT_SECRET_SCRYPT_N": "1024",
        "CASEHUB_WEBHOOKS_ALLOW_PRIVATE": "1",
        "CASEHUB_LOG_LEVEL": "warning",
        "CASEHUB_ACCESS_LOG": "",
        # A load test's one client is meant to exceed any partner's budget (still counted).
        **{f"CASEHUB_{key}": "100000000/minute" for key in RATE_LIMITS},
    }


def make_app(env: dict[str, str]) -> Flask:
    overrides: dict[str, Any] = {
        "DATABASE_URL": env["CASEHUB_DATABASE_URL"],
        "ISSUER": env["CASEHUB_ISSUER"],
        "SIGNING_KEYS_FILE": env["CASEHUB_SIGNING_KEYS_FILE"],
        "WEBHOOK_KEY_FILE": env["CASEHUB_WEBHOOK_KEY_FILE"],
        "AUDIT_CHECKPOINT_KEY_FILE": env["CASEHUB_AUDIT_CHECKPOINT_KEY_FILE"],
        "CLIENT_SECRET_SCRYPT_N": 1024,
        "WEBHOOKS_ALLOW_PRIVATE": True,
        **{key: env[f"CASEHUB_{key}"] for key in RATE_LIMITS},
        "LOG_LEVEL": env["CASEHUB_LOG_LEVEL"],  # a line per request would be measured too
    }
    return create_app(overrides)


def bearer(app: Flask, http: FlaskClient, agency: str, kind: str, scopes: str) -> dict[str, str]:
    """Register `agency` and a partner system of it; a real access token for that system."""
    with app.app_context(), session_scope() as session:
        agencies.add_agency(session, code=agency, name=agency.title(), kind=kind)
        client, secret = agencies.add_client(
            session, agency_code=agency, name="bench", scope=scopes, scrypt_n=1024
        )
        client_id = client.client_id
    response = http.post(
        "/oauth/token",
        data={"grant_type": "client_credentials"},
        auth=(client_id, secret or ""),
    )
    assert response.status_code == 200, response.get_json()
    return {"Authorization": f"Bearer {response.get_json()['access_token']}"}


def subscribe(http: FlaskClient, headers: dict[str, str], url: str, types: list[str]) -> str:
    response = http.post("/v1/webhooks", json={"url": url, "events": types}, headers=headers)
    assert response.status_code == 201, response.get_json()
    return str(response.get_json()["id"])


# -- part 1: the cost of the outbox -------------------------------------------------------------
def referral_body(i: int) -> dict[str, Any]:
    return {
        "subject": {
            "given_name": "Jayden",
            "family_name": f"Okafor{i}",
            "date_of_birth": "2011-04-02",
            "gender": "male",
        },
        "categories": ["county_lines", "missing"],
        "indicators": ["TRV-01", "PHN-01"],
        "summary": "Boy travelling alone in school hours with two phones at Nottingham station.",
        "narrative": "Seen by BTP officers at 10:40; would not say where he was going.",
        "observed_at": (datetime.now(UTC) - timedelta(hours=2)).isoformat(),
        "location": {"description": "Platform 4", "postcode": "ng2 3aq"},
        "risk_level": "high",
    }


OPERATIONS = {
    "create": "POST /v1/referrals (emits nothing)",
    "share": "POST /v1/referrals/{id}/shares (1 event, 2 deliveries)",
    "patch": "PATCH /v1/referrals/{id} shared with 2 (2 events, 4 deliveries)",
}


@dataclass
class Probe:
    """Per (mode, operation), for the request thread only (not the audit sequencer's): each
    statement's execution times, COMMIT time, and the time spent inside emit() split into its
    own statements, autoflushes and the rest."""

    thread: int = field(default_factory=threading.get_ident)
    key: tuple[str, str] | None = None
    statements: dict[tuple[str, str], dict[str, list[float]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(list))
    )
    calls: dict[tuple[str, str], Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    seconds: dict[tuple[str, str], Counter[str]] = field(
        default_factory=lambda: defaultdict(Counter)
    )
    _started: dict[int, float] = field(default_factory=dict)
    in_emit: bool = False
    _flush_started: float | None = None

    def install(self, app: Flask) -> None:
        engine = get_db(app).engine
        assert engine is not None
        sa_event.listen(engine, "before_cursor_execute", self._before)
        sa_event.listen(engine, "after_cursor_execute", self._after)
        # An autoflush inside emit() writes the request's own changes (baseline work too).
        sa_event.listen(Session, "before_flush", self._flush_starts)
        sa_event.listen(Session, "after_flush_postexec", self._flush_ends)
        dialect = engine.dialect
        commit = dialect.do_commit

        def timed_commit(connection: Any) -> None:
            started = time.perf_counter()
            try:
                commit(connection)
            finally:
                if self.key is not None and threading.get_ident() == self.thread:
                    self.seconds[self.key]["commit"] += time.perf_counter() - started

        dialect.do_commit = timed_commit  # type: ignore[method-assign]

    def _flush_starts(self, *_args: Any) -> None:
        if self.in_emit and threading.get_ident() == self.thread:
            self._flush_started = time.perf_counter()

    def _flush_ends(self, *_args: Any) -> None:
        if self._flush_started is not None and self.key is not None:
            self.seconds[self.key]["flush in emit"] += time.perf_counter() - self._flush_started
            self._flush_started = None

    def _before(self, _conn: Any, cursor: Any, *_args: Any) -> None:
        if self.key is not None and threading.get_ident() == self.thread:
            self._started[id(cursor)] = time.perf_counter()

    def _after(self, _conn: Any, cursor: Any, statement: str, *_args: Any) -> None:
        started = self._started.pop(id(cursor), None)
        if started is not None and self.key is not None:
            elapsed = time.perf_counter() - started
            self.statements[self.key][statement_label(statement)].append(elapsed)
            if self.in_emit and self._flush_started is None:
                self.seconds[self.key]["sql in emit"] += elapsed

    def timed(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            self.in_emit = True
            try:
                return function(*args, **kwargs)
            finally:
                self.in_emit = False
                if self.key is not None:
                    self.calls[self.key][name] += 1
                    self.seconds[self.key][name] += time.perf_counter() - started

        return wrapper


def statement_label(statement: str) -> str:
    words = " ".join(statement.split())
    for marker in (" WHERE ", " VALUES ", " SET ", " (", " ON CONFLICT"):
        cut = words.find(marker)
        if 0 < cut < 90:
            words = words[:cut]
    return words[:90]


def no_emit(*_args: Any, **_kwargs: Any) -> list[uuid.UUID]:
    return []


def percentile(sorted_values: list[float], fraction: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(fraction * len(sorted_values) + 0.5) - 1))
    return sorted_values[index]


def summary(samples: list[float]) -> tuple[float, float, float]:
    ordered = sorted(samples)
    return statistics.fmean(ordered), percentile(ordered, 0.50), percentile(ordered, 0.99)


class Bench:
    def __init__(self, app: Flask, probe: Probe) -> None:
        self.app = app
        self.probe = probe
        self.http = app.test_client()
        self.real_emit = events.emit
        self.lead = bearer(app, self.http, LEAD, "police", LEAD_SCOPES)
        self.serial = 0
        for code, kind in zip(RECIPIENTS, ("local_authority", "charity"), strict=True):
            headers = bearer(app, self.http, code, kind, "webhooks:manage referrals:read")
            for n in (1, 2):
                # Nothing listens there: part 1 only queues; part 2 cancels these deliveries.
                subscribe(self.http, headers, f"http://127.0.0.1:9/{code}/{n}", SUBSCRIBED)
        # The PATCHed referrals: shared with both recipients, changed in turn (risk high⇄medium).
        self.shared: list[list[str]] = []  # [id, etag, risk level]
        for _ in range(PATCH_POOL):
            self.serial += 1
            response = self.http.post(
                "/v1/referrals", json=referral_body(self.serial), headers=self.lead
            )
            assert response.status_code == 201, response.get_json()
            rid = response.get_json()["id"]
            for agency in RECIPIENTS:
                shared = self.http.post(
                    f"/v1/referrals/{rid}/shares", json=share_body(agency), headers=self.lead
                )
                assert shared.status_code == 201, shared.get_json()
            self.shared.append([rid, response.headers["ETag"], "high"])
        self.turn = 0

    @contextmanager
    def mode(self, outbox: bool) -> Iterator[None]:
        events.emit = self.probe.timed("emit", self.real_emit if outbox else no_emit)
        try:
            yield
        finally:
            events.emit = self.real_emit

    def _timed(self, key: tuple[str, str], call: Callable[[], Any], status: int) -> float:
        self.probe.key = key
        started = time.perf_counter()
        response = call()
        elapsed = time.perf_counter() - started
        self.probe.key = None
        assert response.status_code == status, (key, response.status_code, response.get_json())
        return elapsed

    def round(self, mode: str, requests: int) -> dict[str, list[float]]:
        """`requests` of each operation in `mode` ("baseline" or "outbox"); seconds each."""
        times: dict[str, list[float]] = {op: [] for op in OPERATIONS}
        created: list[str] = []
        with self.mode(mode == "outbox"):
            gc.collect()
            for _ in range(requests):
                self.serial += 1
                body = referral_body(self.serial)
                holder: list[Any] = []

                def post(body: dict[str, Any] = body, holder: list[Any] = holder) -> Any:
                    response = self.http.post("/v1/referrals", json=body, headers=self.lead)
                    holder.append(response)
                    return response

                times["create"].append(self._timed((mode, "create"), post, 201))
                created.append(holder[0].get_json()["id"])
            for rid in created:
                path = f"/v1/referrals/{rid}/shares"
                share = share_body(RECIPIENTS[0])
                times["share"].append(
                    self._timed(
                        (mode, "share"),
                        lambda path=path, share=share: self.http.post(
                            path, json=share, headers=self.lead
                        ),
                        201,
                    )
                )
            for _ in range(requests):
                referral = self.shared[self.turn % len(self.shared)]
                self.turn += 1
                risk = "medium" if referral[2] == "high" else "high"
                path = f"/v1/referrals/{referral[0]}"
                headers = {**self.lead, "If-Match": referral[1]}
                holder = []

                def patch(
                    path: str = path,
                    headers: dict[str, str] = headers,
                    risk: str = risk,
                    holder: list[Any] = holder,
                ) -> Any:
                    response = self.http.patch(path, json={"risk_level": risk}, headers=headers)
                    holder.append(response)
                    return response

                times["patch"].append(self._timed((mode, "patch"), patch, 200))
                referral[1:] = [holder[0].headers["ETag"], risk]
        return times


def outbox_cost(app: Flask, database: str, rounds: int, requests: int) -> None:
    probe = Probe()
    probe.install(app)
    bench = Bench(app, probe)
    started = time.monotonic()
    bench.round("baseline", min(WARM_UP, requests))  # warm-up: imports, caches, the pool
    bench.round("outbox", min(WARM_UP, requests))
    probe.statements.clear()
    probe.calls.clear()
    probe.seconds.clear()
    results: dict[str, list[dict[str, list[float]]]] = {"baseline": [], "outbox": []}
    for r in range(rounds):
        order = ("baseline", "outbox") if r % 2 == 0 else ("outbox", "baseline")
        for mode in order:
            results[mode].append(bench.round(mode, requests))
        line = ", ".join(
            f"{op} {statistics.fmean(results['baseline'][-1][op]) * 1e3:.2f}/"
            f"{statistics.fmean(results['outbox'][-1][op]) * 1e3:.2f} ms"
            for op in OPERATIONS
        )
        print(f"  round {r + 1} ({' then '.join(order)}; mean baseline/outbox): {line}")
    elapsed = time.monotonic() - started
    with app.app_context(), session_scope() as session:
        queued = session.execute(text("SELECT count(*) FROM webhook_deliveries")).scalar_one()
        written = session.execute(text("SELECT count(*) FROM events")).scalar_one()

    print()
    print(
        f"{'operation':<66} {'baseline mean/p50/p99 ms':>25} {'outbox mean/p50/p99 ms':>25} "
        f"{'added mean / p50':>17}"
    )
    for op, label in OPERATIONS.items():
        figures = {}
        for mode in ("baseline", "outbox"):
            per_round = [summary(times[op]) for times in results[mode]]
            figures[mode] = tuple(
                statistics.median(values) for values in zip(*per_round, strict=True)
            )
        base, box = figures["baseline"], figures["outbox"]
        added_mean = box[0] / base[0] - 1
        added_p50 = box[1] / base[1] - 1
        verdict = "" if max(added_mean, added_p50) <= TARGET else "  > +10 %"
        print(
            f"{label:<66} {' / '.join(f'{v * 1e3:.2f}' for v in base):>25} "
            f"{' / '.join(f'{v * 1e3:.2f}' for v in box):>25} "
            f"{added_mean:>+8.1%} /{added_p50:>+6.1%}{verdict}"
        )
    print()
    print("statements the outbox adds per request (outbox minus baseline, request thread only):")
    for op, label in OPERATIONS.items():
        base = probe.statements[("baseline", op)]
        box = probe.statements[("outbox", op)]
        n_base = sum(len(times) for times in base.values()) / (rounds * requests)
        n_box = sum(len(times) for times in box.values()) / (rounds * requests)
        sql_ms = {
            mode: sum(sum(times) for times in probe.statements[(mode, op)].values())
            / (rounds * requests)
            * 1e3
            for mode in ("baseline", "outbox")
        }
        commit_ms = {
            mode: probe.seconds[(mode, op)]["commit"] / (rounds * requests) * 1e3
            for mode in ("baseline", "outbox")
        }
        emit_calls = probe.calls[("outbox", op)]["emit"]
        emit_ms = probe.seconds[("outbox", op)]["emit"] / max(1, emit_calls) * 1e3
        flush_ms = probe.seconds[("outbox", op)]["flush in emit"] / max(1, emit_calls) * 1e3
        added_sql = probe.seconds[("outbox", op)]["sql in emit"] / max(1, emit_calls) * 1e3
        print(
            f"  {label}: {n_base:.1f} -> {n_box:.1f} statements; "
            + (
                f"emit() {emit_calls / (rounds * requests):.0f} call(s), {emit_ms:.2f} ms each: "
                f"{added_sql:.2f} ms executing its own statements, {flush_ms:.2f} ms autoflushing "
                f"the request's own changes, {emit_ms - added_sql - flush_ms:.2f} ms in Python "
                f"(ORM bulk inserts, building rows)"
                if emit_calls
                else "emit() not called"
            )
        )
        print(
            f"      all statements {sql_ms['baseline']:.2f} -> {sql_ms['outbox']:.2f} ms, "
            f"COMMIT {commit_ms['baseline']:.2f} -> {commit_ms['outbox']:.2f} ms per request"
        )
        for statement in sorted(box):
            extra = (len(box[statement]) - len(base.get(statement, []))) / (rounds * requests)
            if extra > 0.01:
                ms = statistics.fmean(box[statement]) * 1e3
                print(f"      +{extra:.1f} x {statement} — {ms:.3f} ms each")
    print()
    print(
        f"configuration: {database} on 127.0.0.1:5432 (a fresh database, dropped at the end); "
        f"in-process Flask test client, one thread, real bearer tokens, the audit sequencer "
        f"running as in a server process; {rounds} rounds of {requests} requests per operation "
        f"and mode after a {WARM_UP}-request warm-up, baseline and outbox rounds alternating "
        f"(the order swapped each round); each share is a new referral's first, each PATCH "
        f"changes one of {PATCH_POOL} referrals shared with both recipients in turn; "
        f"figures are medians over the rounds of each round's mean/p50/p99. Baseline: the same "
        f"app with casehub.services.events.emit replaced by a no-op (no events, no deliveries; "
        f"the audience lookup feeding emit still runs). Each recipient ({', '.join(RECIPIENTS)}) "
        f"has 2 active subscriptions. Part 1 took {elapsed:.0f} s and left {written:,} events "
        f"and {queued:,} queued deliveries. Target: at most +{TARGET:.0%}."
    )


# -- part 2: worker throughput ------------------------------------------------------------------
class Receiver:
    """A loopback webhook receiver: 204 for every POST, counting `webhook-id`s."""

    def __init__(self) -> None:
        self.seen: Counter[str] = Counter()
        self.unsigned = 0
        self.first: float | None = None
        self.last: float | None = None
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                msg_id = self.headers.get("webhook-id", "")
                signed = (self.headers.get("webhook-signature") or "").startswith("v1,")
                now = time.monotonic()
                with receiver.lock:
                    receiver.seen[msg_id] += 1
                    receiver.unsigned += not signed
                    receiver.first = receiver.first or now
                    receiver.last = now
                self.send_response(204)
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def reset(self) -> None:
        with self.lock:
            self.seen.clear()
            self.unsigned = 0
            self.first = self.last = None

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


ENQUEUE = text(
    """
    WITH e AS (
        INSERT INTO events (id, tx, agency_code, type, occurred_at, data)
        SELECT gen_random_uuid(), pg_current_xact_id()::text::bigint, :agency,
               'referral.updated', :now, json_build_object('referral_id', gen_random_uuid()::text)
        FROM generate_series(1, :count)
        RETURNING pos, id
    ), d AS (
        INSERT INTO webhook_deliveries
            (id, webhook_id, event_pos, status, attempts, next_attempt_at, created_at)
        SELECT gen_random_uuid(), :webhook, e.pos, 'pending', 0, :now, :now FROM e
    )
    SELECT id FROM e
    """
)


def enqueue(app: Flask, webhook: str, count: int) -> set[str]:
    """`count` events for the receiving agency, each with one pending delivery, written in one
    statement as emit() writes them (emit() itself takes ~8 ms a call here: too slow to queue
    thousands within the time budget); their ids."""
    with app.app_context(), session_scope() as session:
        ids = session.execute(
            ENQUEUE,
            {
                "agency": RECEIVER_AGENCY,
                "now": datetime.now(UTC),
                "count": count,
                "webhook": uuid.UUID(webhook),
            },
        ).scalars()
        return {str(event_id) for event_id in ids}


@dataclass
class WorkerRun:
    seconds: float
    cpu: float  # user + system seconds of the worker process
    code: int
    tail: str


def run_worker(env: dict[str, str], folder: Path, concurrency: int, label: str) -> WorkerRun:
    """One `casehub webhooks worker --once` process, waited for."""
    worker_env = {k: v for k, v in os.environ.items() if not k.startswith("CASEHUB_")}
    worker_env.update(env, CASEHUB_WEBHOOK_CONCURRENCY=str(concurrency))
    log = folder / f"worker-{label}.log"
    started = time.monotonic()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with log.open("w") as out:
        process = subprocess.run(
            # `casehub webhooks worker --once`: the console script's entry point, run from the
            # checkout this benchmark is in (so both parts measure the same code).
            [sys.executable, "-c", "from casehub.cli import main; main()", *WORKER_COMMAND],
            cwd=ROOT,
            env=worker_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=300,
            check=False,
        )
    elapsed = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-5:])
    return WorkerRun(elapsed, cpu, process.returncode, tail)


def worker_throughput(app: Flask, env: dict[str, str], folder: Path, deliveries: int) -> None:
    from casehub.models import Webhook, WebhookDelivery

    with app.app_context(), session_scope() as session:
        # Part 1's queue points at nothing: cancel it, so the worker only sees part 2's.
        session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.status == "pending")
            .values(status="cancelled", finished_at=datetime.now(UTC))
        )
    http = app.test_client()
    with Receiver() as receiver:
        headers = bearer(app, http, RECEIVER_AGENCY, "other", "webhooks:manage")
        hook = subscribe(
            http, headers, f"http://127.0.0.1:{receiver.port}/hooks", ["referral.updated"]
        )
        idle = run_worker(env, folder, 8, "idle")
        if idle.code != 0:
            raise RuntimeError(f"the worker exited {idle.code}:\n{idle.tail}")
        print(
            f"an idle worker --once (start-up, nothing due) takes {idle.seconds:.2f} s, "
            f"{idle.cpu:.2f} s CPU: subtracted below as 'net'"
        )
        # One worker process at the default concurrency, then (an eighth as many) at 1.
        for concurrency, count in ((8, deliveries), (1, max(100, deliveries // 8))):
            receiver.reset()
            batch_start = datetime.now(UTC)
            started = time.monotonic()
            expected = enqueue(app, hook, count)
            queued_in = time.monotonic() - started
            runs, seconds, cpu = 0, 0.0, 0.0
            while True:
                run = run_worker(env, folder, concurrency, f"c{concurrency}")
                runs += 1
                seconds += run.seconds
                cpu += run.cpu
                if run.code != 0:
                    raise RuntimeError(f"the worker exited {run.code}:\n{run.tail}")
                with app.app_context(), session_scope() as session:
                    pending = session.execute(
                        select(func.count())
                        .select_from(WebhookDelivery)
                        .where(
                            WebhookDelivery.webhook_id == uuid.UUID(hook),
                            WebhookDelivery.status == "pending",
                        )
                    ).scalar_one()
                if pending == 0 or runs == 3:
                    break
            with app.app_context(), session_scope() as session:
                states = dict(
                    session.execute(
                        select(WebhookDelivery.status, func.count())
                        .where(
                            WebhookDelivery.webhook_id == uuid.UUID(hook),
                            WebhookDelivery.created_at >= batch_start,
                        )
                        .group_by(WebhookDelivery.status)
                    ).all()
                )
                disabled = session.get(Webhook, uuid.UUID(hook)).disabled_at  # type: ignore[union-attr]
            with receiver.lock:
                seen = dict(receiver.seen)
                window = (receiver.last or 0) - (receiver.first or 0)
                unsigned = receiver.unsigned
            once = sum(1 for n in seen.values() if n == 1)
            dupes = sum(1 for n in seen.values() if n > 1)
            exact = set(seen) == expected and dupes == 0
            net = seconds - runs * idle.seconds
            net_cpu = cpu - runs * idle.cpu
            print(
                f"concurrency {concurrency}: {count:,} deliveries queued in {queued_in:.1f} s; "
                f"worker --once (x{runs}) took {seconds:.2f} s: {count / seconds:,.0f} "
                f"deliveries/s with start-up, {count / net:,.0f}/s net; first to last receipt "
                f"{window:.2f} s: {(count - 1) / window if window else 0:,.0f} deliveries/s; "
                f"worker CPU {net_cpu * 1e3 / count:.1f} ms per delivery net"
            )
            print(
                f"  receiver: {len(seen):,} distinct webhook-ids, {once:,} exactly once, "
                f"{dupes} more than once, {len(expected - set(seen))} missing, "
                f"{len(set(seen) - expected)} unexpected, {unsigned} unsigned — "
                f"{'every event exactly once' if exact else 'NOT every event exactly once'}; "
                f"deliveries in the database: {json.dumps(states)}"
                + ("; the subscription was DISABLED" if disabled else "")
            )
    print(
        "configuration: one `casehub webhooks worker --once` subprocess at a time "
        "(CASEHUB_WEBHOOKS_ALLOW_PRIVATE=1, CASEHUB_WEBHOOK_CONCURRENCY as shown), posting over "
        "plain HTTP to a ThreadingHTTPServer on 127.0.0.1 that answers 204 at once, on the "
        "same 2 cores as the database."
    )


def code_state() -> str:
    """Which casehub code ran: the checkout's commit and its uncommitted changes, if any."""
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "log", "-1", "--format=%h %cs"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "casehub"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split("\n")
    except (OSError, subprocess.CalledProcessError):
        return "casehub from " + str(ROOT) + " (not a git checkout)"
    dirty = [line[3:] for line in changed if line.strip()]
    return f"casehub at {head}" + (f", uncommitted changes in {', '.join(dirty)}" if dirty else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=200, help="per operation and round")
    parser.add_argument("--deliveries", type=int, default=2000)
    parser.add_argument("--skip-worker", action="store_true", help="part 1 only")
    args = parser.parse_args()
    started = time.monotonic()
    print(f"{code_state()}; {os.cpu_count()} CPUs")
    folder = Path(tempfile.mkdtemp(prefix="casehub-bench-outbox-"))
    with scratch_database() as (url, server):
        env = settings(url, folder)
        app = make_app(env)
        try:
            name = url.rsplit("/", 1)[-1]
            print(f"== outbox cost ({server}, database {name}) ==")
            outbox_cost(app, f"{server}, database {name}", args.rounds, args.requests)
            if not args.skip_worker:
                print()
                print("== worker throughput ==")
                worker_throughput(app, env, folder, args.deliveries)
        finally:
            sequencer = app.extensions.get("casehub.audit.sequencer")
            if sequencer is not None:
                sequencer.stop()
            engine = get_db(app).engine
            if engine is not None:
                engine.dispose()
    print(f"total {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
