"""casehub under its production gunicorn settings versus a bare flask-smorest stack, with wrk.

    .venv/bin/python -m bench.compare [--quick] [--seconds 10] [--rounds 3] [--referrals 3000]

On a fresh PostgreSQL database (`casehub_bench_compare` on BENCH_PG, default 127.0.0.1:5432,
dropped at the end) it starts

1. casehub: `gunicorn -c deploy/gunicorn.conf.py wsgi:app` with that file's default workers and
   threads, the access log off, log level warning, rate limits set out of reach (memory storage);
2. the baseline (bench/compare_bare_app.py): flask-smorest + marshmallow + SQLAlchemy 2, no token,
   no audit, serving the very referral document casehub returns (stored as one row, lists and
   objects as JSONB columns) under gunicorn's recommended 2 x cores + 1 sync workers.

It seeds casehub through its API (agencies and clients registered in-process as
`casehub clients add` would): two leading agencies, four recipients, `--referrals` referrals,
shares and the audit events they write; copies each referral's document into the baseline's
table; then loads both with wrk (installed with apt-get when missing), 2 threads and 32
connections, in rounds that alternate the two sides (the order swapped each round), and prints
per operation the medians over the rounds of req/s, p50 and p99, the non-2xx count and the
ratios; then a mixed run for casehub alone (reads ≫ writes, six agencies' tokens).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import runpy
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from bench.audit_data import _libpq, database_url
from bench.audit_server import ROOT, casehub_env, register_client, token_over
from tests import helpers

DATABASE = "casehub_bench_compare"
LEADS = ("btp", "notts-police")
RECIPIENTS = ("notts-cs", "derby-cs", "em-probation", "tcs")
LEAD_SCOPES = "referrals:read referrals:write referrals:share subjects:read subjects:write"
RECIPIENT_SCOPES = "referrals:read referrals:write subjects:read"
GIVEN = ["Jayden", "Tyler", "Kai", "Leon", "Amira", "Chloe", "Mason", "Ellie", "Reece", "Zara"]
FAMILY = ["Okafor", "Smith", "Brown", "Nowak", "Patel", "Walker", "Hughes", "Clarke", "Khan"]
RISKS = ("low", "medium", "high")
CONFIG = ROOT / "deploy" / "gunicorn.conf.py"


# -- request bodies: the tests' own, with a name and risk that vary for search and filters ------
def referral_body(rng: random.Random) -> dict[str, Any]:
    birth = f"20{rng.randint(8, 13):02d}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    return helpers.referral_body(
        subject=helpers.subject_body(
            given_name=rng.choice(GIVEN),
            family_name=rng.choice(FAMILY),
            date_of_birth=birth,
            gender=rng.choice(["male", "female"]),
        ),
        risk_level=rng.choice(RISKS),
    )


# -- processes ------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    print("wrk is missing: apt-get install -y wrk", flush=True)
    subprocess.run(["apt-get", "install", "-y", "wrk"], check=True, stdout=subprocess.DEVNULL)
    found = shutil.which("wrk")
    if not found:
        raise SystemExit("wrk could not be installed")
    return found


def production_defaults() -> dict[str, Any]:
    """deploy/gunicorn.conf.py's own workers, threads and timeout (no override in the env)."""
    saved = dict(os.environ)
    for name in ("CASEHUB_WORKERS", "WEB_CONCURRENCY", "CASEHUB_THREADS", "CASEHUB_TIMEOUT"):
        os.environ.pop(name, None)
    try:
        conf = runpy.run_path(str(CONFIG))
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return {k: conf[k] for k in ("workers", "threads", "timeout", "keepalive")}


def _wait_healthy(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 90
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        if time.monotonic() > deadline or process.poll() is not None:
            raise RuntimeError(f"the server on port {port} did not come up")
        time.sleep(0.3)


@contextmanager
def serve(command: list[str], env: dict[str, str], port: int) -> Iterator[None]:
    process = subprocess.Popen(command, cwd=ROOT, env=env)
    try:
        _wait_healthy(port, process)
        yield
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# -- HTTP helpers ---------------------------------------------------------------------------------
@dataclass
class Agency:
    code: str
    clients: list[tuple[str, str]]
    tokens: list[str] = field(default_factory=list)


def call(
    port: int, method: str, path: str, token: str | None = None, body: Any = None
) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Content-Type": "application/json"} if body is not None else {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
    response = conn.getresponse()
    raw = response.read()
    conn.close()
    return response.status, json.loads(raw) if raw else None


def fetch_token(port: int, client_id: str, secret: str) -> str:
    return token_over(http.client.HTTPConnection("127.0.0.1", port, timeout=60), client_id, secret)


def refresh_tokens(port: int, agencies: dict[str, Agency]) -> None:
    """Tokens live 15 minutes: every round takes fresh ones."""
    for agency in agencies.values():
        agency.tokens = [fetch_token(port, cid, secret) for cid, secret in agency.clients]


# -- wrk ------------------------------------------------------------------------------------------
@dataclass
class Req:
    method: str
    path: str
    token: str | None = None
    body: str | None = None
    once: bool = False  # mixed runs: never sent twice (a share), skipped when the list wraps


LUA = r"""
local tokens = {
%(tokens)s
}
local bodies = {
%(bodies)s
}
local reqs = {
%(entries)s
}
local threads = {}
local counter = 0
function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
  table.insert(threads, thread)
end
function init(args)
  bad = 0
  firstbad = 0
  mine = {}
  local n = %(nthreads)d
  local first, step = tid + 1, n
  if #reqs < n then first, step = 1, 1 end
  for i = first, #reqs, step do
    local e = reqs[i]
    local headers = {}
    if e[3] > 0 then headers["Authorization"] = "Bearer " .. tokens[e[3]] end
    local body = nil
    if e[4] > 0 then
      headers["Content-Type"] = "application/json"
      body = bodies[e[4]]
    end
    table.insert(mine, {wrk.format(e[1], e[2], headers, body), e[5], false})
  end
  pos = 1
end
function request()
  for _ = 1, #mine do
    local e = mine[pos]
    pos = pos %% #mine + 1
    if not (e[2] and e[3]) then
      e[3] = true
      return e[1]
    end
  end
  return mine[1][1]
end
function response(status, headers, body)
  if status < 200 or status > 299 then
    bad = bad + 1
    if firstbad == 0 then firstbad = status end
  end
end
function done(summary, latency, requests)
  local nbad, first = 0, 0
  for _, t in ipairs(threads) do
    nbad = nbad + t:get("bad")
    if first == 0 then first = t:get("firstbad") end
  end
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %%d, "duration_us": %%d, "non2xx": %%d, "first_non2xx": %%d, ' ..
    '"socket_errors": %%d, "timeouts": %%d, "p50_us": %%d, "p90_us": %%d, "p99_us": %%d, ' ..
    '"max_us": %%d}\n',
    summary.requests, summary.duration, nbad, first, e.connect + e.read + e.write,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max))
end
"""


def _lua_string(value: str) -> str:
    level = "=" * 3
    assert f"]{level}]" not in value
    return f"[{level}[{value}]{level}]"


def lua_script(reqs: list[Req], nthreads: int) -> str:
    """Tokens and bodies are listed once and referred to by index (1-based; 0: none)."""
    tokens: dict[str, int] = {}
    bodies: dict[str, int] = {}

    def index(table: dict[str, int], value: str | None) -> int:
        if not value:
            return 0
        return table.setdefault(value, len(table) + 1)

    entries = ",\n".join(
        f"{{{_lua_string(r.method)}, {_lua_string(r.path)}, {index(tokens, r.token)}, "
        f"{index(bodies, r.body)}, {'true' if r.once else 'false'}}}"
        for r in reqs
    )
    return LUA % {
        "tokens": ",\n".join(_lua_string(t) for t in tokens),
        "bodies": ",\n".join(_lua_string(b) for b in bodies),
        "entries": entries,
        "nthreads": nthreads,
    }


@dataclass
class Result:
    rps: float
    p50: float  # ms
    p99: float
    non2xx: int
    requests: int
    socket_errors: int
    first_non2xx: int


def run_wrk(
    wrk: str, port: int, reqs: list[Req], *, seconds: float, threads: int, connections: int
) -> Result:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(lua_script(reqs, threads))
    try:
        completed = subprocess.run(
            [
                wrk,
                f"-t{threads}",
                f"-c{connections}",
                f"-d{seconds:g}s",
                "--timeout",
                "30s",
                "-s",
                script.name,
                f"http://127.0.0.1:{port}",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
    finally:
        os.unlink(script.name)
    line = next((x for x in completed.stdout.splitlines() if x.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(completed.stdout + completed.stderr)
    data = json.loads(line.removeprefix("WRKJSON "))
    return Result(
        rps=data["requests"] / (data["duration_us"] / 1e6),
        p50=data["p50_us"] / 1000,
        p99=data["p99_us"] / 1000,
        non2xx=data["non2xx"],
        requests=data["requests"],
        socket_errors=data["socket_errors"],
        first_non2xx=data["first_non2xx"],
    )


# -- seeding --------------------------------------------------------------------------------------
def fresh_database() -> str:
    with psycopg.connect(_libpq(database_url("postgres")), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{DATABASE}"')
    from casehub import migrate
    from casehub.db import make_engine

    url = database_url(DATABASE)
    engine = make_engine(url)
    migrate.upgrade(engine)
    engine.dispose()
    return url


def drop_database() -> None:
    with psycopg.connect(_libpq(database_url("postgres")), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')


def register(env: dict[str, str]) -> tuple[dict[str, Agency], Agency]:
    agencies: dict[str, Agency] = {}
    for code in LEADS:
        agencies[code] = Agency(
            code, [register_client(env, code, LEAD_SCOPES, platform=False) for _ in range(3)]
        )
    for code in RECIPIENTS:
        count = 3 if code == RECIPIENTS[0] else 1
        agencies[code] = Agency(
            code,
            [register_client(env, code, RECIPIENT_SCOPES, platform=False) for _ in range(count)],
        )
    auditor = Agency("btp", [register_client(env, "btp", "audit:read", platform=False)])
    return agencies, auditor


def parallel(jobs: list[Callable[[], Any]], workers: int = 8) -> list[Any]:
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda job: job(), jobs))


def seed(port: int, agencies: dict[str, Agency], count: int) -> dict[str, list[str]]:
    """Referrals raised by the leads (two thirds BTP), and shares: half of each lead's referrals
    with children's services, a sixth with each other recipient. Returns each agency's visible
    referral ids."""
    rng = random.Random(10)
    visible: dict[str, list[str]] = {code: [] for code in agencies}
    jobs = []
    for i in range(count):
        lead = LEADS[0] if i % 3 else LEADS[1]
        token = agencies[lead].tokens[i % len(agencies[lead].tokens)]
        body = referral_body(rng)
        jobs.append(lambda token=token, body=body: call(port, "POST", "/v1/referrals", token, body))
    started = time.monotonic()
    for status, body in parallel(jobs):
        assert status == 201, body
        visible[body["lead_agency"]].append(body["id"])
    print(f"  {count:,} referrals raised in {time.monotonic() - started:.0f}s", flush=True)
    jobs, targets = [], []
    for lead in LEADS:
        token = agencies[lead].tokens[0]
        for n, rid in enumerate(visible[lead]):
            recipients = [RECIPIENTS[0]] if n % 2 == 0 else []
            if n % 6 == 1:
                recipients.append(RECIPIENTS[1 + (n // 6) % (len(RECIPIENTS) - 1)])
            for agency in recipients:
                path = f"/v1/referrals/{rid}/shares"
                body = helpers.share_body(agency)
                jobs.append(lambda p=path, b=body, t=token: call(port, "POST", p, t, b))
                targets.append((agency, rid))
    started = time.monotonic()
    for (agency, rid), (status, body) in zip(targets, parallel(jobs), strict=True):
        assert status == 201, body
        visible[agency].append(rid)
    print(f"  {len(jobs):,} shares made in {time.monotonic() - started:.0f}s", flush=True)
    return visible


def copy_to_baseline(url: str, port: int, agencies: dict[str, Agency]) -> tuple[str, str]:
    """Fetch one referral document from casehub; store it once per casehub referral (that
    referral's id, reference, lead, risk level and times) in the baseline's table."""
    from sqlalchemy import create_engine

    from bench.compare_bare_app import COLUMNS, Base

    engine = create_engine(url)
    Base.metadata.create_all(engine)
    engine.dispose()
    with psycopg.connect(_libpq(url)) as conn:
        rows = conn.execute(
            "SELECT id, reference, subject_id, lead_agency, risk_level, created_at, updated_at"
            " FROM referrals ORDER BY created_at"
        ).fetchall()
        first = str(rows[0][0])
        status, document = call(
            port, "GET", f"/v1/referrals/{first}", agencies[rows[0][3]].tokens[0]
        )
        assert status == 200, document
        copy_sql = f"COPY bare_referrals ({', '.join(COLUMNS)}) FROM STDIN"
        with conn.cursor() as cur, cur.copy(copy_sql) as copy:
            for rid, reference, subject, lead, risk, created, updated in rows:
                doc = {
                    **document,
                    "id": rid,
                    "reference": reference,
                    "subject_id": subject,
                    "lead_agency": lead,
                    "risk_level": risk,
                    "created_at": created,
                    "updated_at": updated,
                }
                copy.write_row(
                    [Jsonb(doc[c]) if isinstance(doc[c], dict | list) else doc[c] for c in COLUMNS]
                )
        conn.commit()
        conn.execute("ANALYZE bare_referrals")
        conn.commit()
    return first, str(rows[0][3])


# -- the operations -------------------------------------------------------------------------------
@dataclass
class Operation:
    name: str
    casehub: Callable[[], list[Req]]
    bare: Callable[[], list[Req]] | None = None


def rotate(ids: list[str], tokens: list[str], limit: int = 4000) -> list[Req]:
    rng = random.Random(len(ids))
    picked = rng.sample(ids, min(limit, len(ids)))
    return [
        Req("GET", f"/v1/referrals/{rid}", tokens[i % len(tokens)]) for i, rid in enumerate(picked)
    ]


def unshared_pairs(url: str, limit: int) -> list[tuple[str, str, str]]:
    """(lead, referral id, recipient) with no open share yet, one recipient's newest referrals
    after another's: neighbours in the list (sent at once) are different referrals."""
    with psycopg.connect(_libpq(url)) as conn:
        return [
            (str(lead), str(rid), str(agency))
            for lead, rid, agency in conn.execute(
                "SELECT r.lead_agency, r.id, a.code FROM referrals r"
                " CROSS JOIN unnest(%s::text[]) AS a(code)"
                " WHERE NOT EXISTS (SELECT 1 FROM shares s WHERE s.referral_id = r.id"
                "   AND s.agency_code = a.code AND s.ended_at IS NULL)"
                " AND r.lead_agency <> a.code"
                " ORDER BY a.code, r.created_at DESC LIMIT %s",
                (list(RECIPIENTS), limit),
            )
        ]


def share_reqs(url: str, agencies: dict[str, Agency], limit: int) -> list[Req]:
    reqs = []
    for n, (lead, rid, agency) in enumerate(unshared_pairs(url, limit)):
        tokens = agencies[lead].tokens
        body = json.dumps(helpers.share_body(agency))
        reqs.append(Req("POST", f"/v1/referrals/{rid}/shares", tokens[n % len(tokens)], body, True))
    return reqs


def create_reqs(tokens: list[str] | None, count: int = 200) -> list[Req]:
    rng = random.Random(count)
    return [
        Req(
            "POST",
            "/v1/referrals",
            tokens[i % len(tokens)] if tokens else None,
            json.dumps(referral_body(rng)),
        )
        for i in range(count)
    ]


LIST_PATH = "/v1/referrals?limit=50&risk_level=high"


def operations(
    url: str,
    agencies: dict[str, Agency],
    auditor: Agency,
    visible: dict[str, list[str]],
    share_budget: int,
) -> list[Operation]:
    lead, recipient = agencies[LEADS[0]], agencies[RECIPIENTS[0]]
    return [
        Operation(
            "GET /v1/referrals/{id} (lead)",
            lambda: rotate(visible[lead.code], lead.tokens),
            lambda: rotate(visible[lead.code], [""]),
        ),
        Operation(
            "GET /v1/referrals/{id} (share recipient)",
            lambda: rotate(visible[recipient.code], recipient.tokens),
            lambda: rotate(visible[recipient.code], [""]),
        ),
        Operation(
            "GET /v1/referrals?limit=50&risk_level=high",
            lambda: [Req("GET", LIST_PATH, t) for t in lead.tokens],
            lambda: [Req("GET", LIST_PATH)],
        ),
        Operation(
            "GET /v1/subjects?q=<family name>",
            lambda: [
                Req("GET", f"/v1/subjects?q={name}&limit=50", lead.tokens[i % len(lead.tokens)])
                for i, name in enumerate(FAMILY)
            ],
        ),
        Operation(
            "GET /v1/audit/events?limit=50",
            lambda: [Req("GET", "/v1/audit/events?limit=50", t) for t in auditor.tokens],
        ),
        Operation(
            "POST /v1/referrals",
            lambda: create_reqs(lead.tokens),
            lambda: create_reqs(None),
        ),
        Operation(
            "POST /v1/referrals/{id}/shares",
            lambda: [
                Req(r.method, r.path, r.token, r.body)  # not `once`: a wrap shows as 409s
                for r in share_reqs(url, agencies, share_budget)
            ],
        ),
    ]


MIX = (  # (weight, kind)
    (40, "read-lead"),
    (25, "read-recipient"),
    (12, "list"),
    (8, "search"),
    (5, "audit"),
    (6, "create"),
    (4, "share"),
)


def mixed_reqs(
    url: str,
    agencies: dict[str, Agency],
    auditor: Agency,
    visible: dict[str, list[str]],
    size: int,
) -> list[Req]:
    rng = random.Random(size)
    kinds = [kind for weight, kind in MIX for _ in range(weight)]
    shares = iter(share_reqs(url, agencies, size))
    create_rng = random.Random(1)
    reqs: list[Req] = []
    for _ in range(size):
        kind = rng.choice(kinds)
        if kind == "read-lead":
            agency = agencies[rng.choice(LEADS)]
        elif kind == "read-recipient":
            agency = agencies[rng.choice(RECIPIENTS)]
        else:
            agency = agencies[rng.choice(LEADS)]
        token = rng.choice(agency.tokens)
        if kind.startswith("read"):
            reqs.append(Req("GET", f"/v1/referrals/{rng.choice(visible[agency.code])}", token))
        elif kind == "list":
            filt = rng.choice(["risk_level=high", "status=submitted", "category=missing"])
            reqs.append(Req("GET", f"/v1/referrals?limit=50&{filt}", token))
        elif kind == "search":
            reqs.append(Req("GET", f"/v1/subjects?q={rng.choice(FAMILY)}&limit=50", token))
        elif kind == "audit":
            reqs.append(Req("GET", "/v1/audit/events?limit=50", rng.choice(auditor.tokens)))
        elif kind == "create":
            body = json.dumps(referral_body(create_rng))
            reqs.append(Req("POST", "/v1/referrals", token, body, True))
        else:
            share = next(shares, None)
            if share is not None:
                reqs.append(share)
    return reqs


# -- main -----------------------------------------------------------------------------------------
def fmt_ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 s rounds, 1 round each")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--referrals", type=int, default=3000)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--only", default="", help="run only the operations whose name contains this text"
    )
    parser.add_argument("--no-mixed", action="store_true", help="skip the mixed run")
    parser.add_argument(
        "--workers", type=int, help="override casehub's workers (the report says so)"
    )
    parser.add_argument("--worker-threads", type=int, help="override casehub's threads per worker")
    parser.add_argument(
        "--no-sequencer",
        action="store_true",
        help="an experiment: casehub's workers do not chain audit events (the report says so)",
    )
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.rounds = 3, 1
    warmup = min(2.0, args.seconds)
    wrk = ensure_wrk()
    cores = os.cpu_count() or 1
    bare_workers = 2 * cores + 1
    defaults = production_defaults()
    overridden = []
    for key, value in (("workers", args.workers), ("threads", args.worker_threads)):
        if value is not None and value != defaults[key]:
            defaults[key] = value
            overridden.append(key)
    defaults["overridden"] = overridden
    work = Path(tempfile.mkdtemp(prefix="casehub-bench-compare-"))
    started = time.monotonic()
    print(f"fresh database {DATABASE} ...", flush=True)
    url = fresh_database()
    try:
        with psycopg.connect(_libpq(url)) as conn:
            pg = {
                name: conn.execute(f"SHOW {name}").fetchone()[0]  # type: ignore[index]
                for name in ("server_version", "fsync", "synchronous_commit", "shared_buffers")
            }
        port, bare_port = free_port(), free_port()
        env = casehub_env(url, port, work)
        for name in ("CASEHUB_WORKERS", "WEB_CONCURRENCY", "CASEHUB_THREADS", "CASEHUB_TIMEOUT"):
            env.pop(name, None)
        if args.workers is not None:
            env["CASEHUB_WORKERS"] = str(args.workers)
        if args.worker_threads is not None:
            env["CASEHUB_THREADS"] = str(args.worker_threads)
        env.update(CASEHUB_BIND=f"127.0.0.1:{port}", CASEHUB_RATE_LIMIT_STORAGE="memory://")
        if args.no_sequencer:
            env["CASEHUB_AUDIT_SEQUENCER"] = "false"
        bare_env = dict(os.environ, BARE_DATABASE_URL=url)
        agencies, auditor = register(env)
        casehub_cmd = [sys.executable, "-m", "gunicorn", "-c", str(CONFIG), "wsgi:app"]
        bare_cmd = [
            sys.executable, "-m", "gunicorn", "--workers", str(bare_workers),
            "--worker-class", "sync", "--bind", f"127.0.0.1:{bare_port}",
            "--log-level", "warning", "--no-control-socket", "bench.compare_bare_app:app",
        ]  # fmt: skip
        with serve(casehub_cmd, env, port):
            refresh_tokens(port, agencies)
            refresh_tokens(port, {"auditor": auditor})
            print("seeding casehub through its API ...", flush=True)
            visible = seed(port, agencies, args.referrals)
            template, template_lead = copy_to_baseline(url, port, agencies)
            with serve(bare_cmd, bare_env, bare_port):
                lead_token = agencies[template_lead].tokens[0]
                same = (
                    call(port, "GET", f"/v1/referrals/{template}", lead_token)[1]
                    == call(bare_port, "GET", f"/v1/referrals/{template}")[1]
                )
                report_config(defaults, bare_workers, cores, pg, args, same)
                share_budget = 8_000
                ops = [
                    op
                    for op in operations(url, agencies, auditor, visible, share_budget)
                    if args.only in op.name
                ]
                table = bench_operations(wrk, ops, port, bare_port, agencies, auditor, args, warmup)
                print_table(table, args)
                if not args.no_mixed:
                    mixed_run(url, port, agencies, auditor, visible, table, wrk, args)
            time.sleep(2)  # let the sequencer chain what the last round wrote
        with psycopg.connect(_libpq(url)) as conn:
            counts = conn.execute(
                "SELECT (SELECT count(*) FROM referrals), (SELECT count(*) FROM shares),"
                " (SELECT count(*) FROM audit_events), (SELECT count(*) FROM audit_chain)"
            ).fetchone()
        assert counts is not None
        print(
            f"\ndatabase at the end: {counts[0]:,} referrals, {counts[1]:,} shares, "
            f"{counts[2]:,} audit events ({counts[3]:,} chained)"
        )
        load = os.getloadavg()
        print(
            f"load average at the end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} on {cores} "
            f"cores; {time.monotonic() - started:.0f} s in all"
        )
    finally:
        drop_database()
        shutil.rmtree(work, ignore_errors=True)


def mixed_run(
    url: str, port: int, agencies: dict[str, Agency], auditor: Agency,
    visible: dict[str, list[str]], table: dict[str, tuple[list[Result], list[Result]]],
    wrk: str, args: argparse.Namespace,
) -> None:  # fmt: skip
    """The realistic mix (MIX) against casehub alone, for twice a round's length."""
    refresh_tokens(port, agencies)
    refresh_tokens(port, {"auditor": auditor})
    estimate = max(r[0].rps for r, _ in table.values())
    size = int(max(2000, estimate * args.seconds * 1.5))
    time.sleep(2)
    mixed = mixed_reqs(url, agencies, auditor, visible, size)
    result = run_wrk(
        wrk, port, mixed, seconds=args.seconds * 2, threads=args.threads,
        connections=args.connections,
    )  # fmt: skip
    mix = ", ".join(f"{kind} {weight} %" for weight, kind in MIX)
    clients = sum(len(a.clients) for a in agencies.values()) + 1
    print(
        f"\nmixed run, casehub only, {args.seconds * 2:g} s ({mix}; leads "
        f"{'/'.join(LEADS)}, recipients {'/'.join(RECIPIENTS)}, {clients} clients):"
        f"\n  {result.rps:,.0f} req/s, p50 {result.p50:.1f} ms, "
        f"p99 {result.p99:.1f} ms, non-2xx {result.non2xx}"
        + (f" (first {result.first_non2xx})" if result.non2xx else "")
        + (f", socket errors {result.socket_errors}" if result.socket_errors else "")
    )


def report_config(
    defaults: dict[str, Any], bare_workers: int, cores: int, pg: dict[str, str],
    args: argparse.Namespace, same: bool,
) -> None:  # fmt: skip
    kind = "gthread" if defaults["threads"] > 1 else "sync"
    print(
        f"\nmachine: {cores} cores, load average {os.getloadavg()[0]:.1f} (shared: other work "
        "may run beside this)\n"
        f"database: PostgreSQL {pg['server_version']} at 127.0.0.1 ({DATABASE}, fresh; fsync "
        f"{pg['fsync']}, synchronous_commit {pg['synchronous_commit']}, shared_buffers "
        f"{pg['shared_buffers']}); both sides use it\n"
        "casehub: gunicorn -c deploy/gunicorn.conf.py wsgi:app — "
        + (
            f"OVERRIDDEN by --{'/--'.join(defaults['overridden'])}, otherwise its defaults: "
            if defaults["overridden"]
            else "its defaults: "
        )
        + f"{defaults['workers']} workers x {defaults['threads']} threads ({kind} worker), "
        f"keepalive {defaults['keepalive']} s, timeout {defaults['timeout']} s; "
        "CASEHUB_LOG_LEVEL=warning, no access log, rate limits 100000000/minute (memory://), "
        + (
            "audit sequencer OFF (--no-sequencer: events stay queued), "
            if args.no_sequencer
            else "audit sequencer on, "
        )
        + "bearer tokens (ES256 JWT, client_credentials)\n"
        f"baseline: gunicorn bench.compare_bare_app:app — {bare_workers} sync workers "
        f"(2 x {cores} cores + 1, gunicorn's recommendation; sync workers close each "
        "connection), flask-smorest + marshmallow + SQLAlchemy 2 ORM, no token, no audit; "
        "the referral document stored as one row (JSONB lists/objects); "
        f"same document as casehub's: {'yes' if same else 'NO'}\n"
        f"load: wrk -t{args.threads} -c{args.connections}, {args.seconds:g} s rounds, "
        f"{args.rounds} round(s) per side alternating (order swapped each round), medians; "
        "Lua scripts rotate ids and tokens",
        flush=True,
    )


def bench_operations(
    wrk: str, ops: list[Operation], port: int, bare_port: int, agencies: dict[str, Agency],
    auditor: Agency, args: argparse.Namespace, warmup: float,
) -> dict[str, tuple[list[Result], list[Result]]]:  # fmt: skip
    table: dict[str, tuple[list[Result], list[Result]]] = {}
    load = {"threads": args.threads, "connections": args.connections}
    for op in ops:
        print(f"\n{op.name}", flush=True)
        refresh_tokens(port, agencies)
        refresh_tokens(port, {"auditor": auditor})
        sides: list[tuple[str, int, Callable[[], list[Req]]]] = [("casehub", port, op.casehub)]
        if op.bare is not None:
            sides.append(("bare", bare_port, op.bare))
        for _, side_port, build in sides:
            run_wrk(wrk, side_port, build(), seconds=warmup, **load)
        results: dict[str, list[Result]] = {"casehub": [], "bare": []}
        for number in range(args.rounds):
            order = sides if number % 2 == 0 else sides[::-1]
            for side, side_port, build in order:
                # wrk stops with requests in flight; let them finish (and commit) before the
                # next round's script is built from the database (the shares not yet made).
                time.sleep(2)
                result = run_wrk(wrk, side_port, build(), seconds=args.seconds, **load)
                results[side].append(result)
                print(
                    f"  round {number + 1} {side:7}: {result.rps:8,.0f} req/s  p50 "
                    f"{result.p50:6.1f} ms  p99 {result.p99:7.1f} ms  non-2xx {result.non2xx}"
                    + (f" (first {result.first_non2xx})" if result.non2xx else "")
                    + (f"  socket errors {result.socket_errors}" if result.socket_errors else ""),
                    flush=True,
                )
        table[op.name] = (results["casehub"], results["bare"])
    return table


def _median(results: list[Result], attr: str) -> float:
    return statistics.median(getattr(r, attr) for r in results)


def print_table(
    table: dict[str, tuple[list[Result], list[Result]]], args: argparse.Namespace
) -> None:
    print(f"\nmedians of {args.rounds} round(s) of {args.seconds:g} s")
    header = (
        f"{'operation':44} {'casehub req/s':>13} {'p50':>7} {'p99':>7} {'non2xx':>6} | "
        f"{'bare req/s':>10} {'p50':>7} {'p99':>7} {'non2xx':>6} | {'req/s x':>7} {'p99 x':>6}"
    )
    print(header)
    print("-" * len(header))
    for name, (ours, bare) in table.items():
        rps, p50, p99 = (_median(ours, a) for a in ("rps", "p50", "p99"))
        bad = sum(r.non2xx + r.socket_errors for r in ours)
        line = f"{name:44} {rps:13,.0f} {p50:7.1f} {p99:7.1f} {bad:6} | "
        if bare:
            b_rps, b_p50, b_p99 = (_median(bare, a) for a in ("rps", "p50", "p99"))
            b_bad = sum(r.non2xx + r.socket_errors for r in bare)
            line += (
                f"{b_rps:10,.0f} {b_p50:7.1f} {b_p99:7.1f} {b_bad:6} | "
                f"{fmt_ratio(rps, b_rps):>7} {fmt_ratio(p99, b_p99):>6}"
            )
        else:
            line += f"{'(no equivalent)':>34} |"
        print(line)
    print(
        "(p50/p99 in ms; req/s x = casehub / bare; p99 x = casehub p99 / bare p99; non-2xx "
        "includes socket errors)"
    )


if __name__ == "__main__":
    main()
