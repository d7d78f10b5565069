"""Rate limits: a budget per client and route class, failed client authentication throttled per
client id and per address, the IETF headers, and one budget shared by gunicorn workers through
Redis."""

from __future__ import annotations

import json
import os
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
import redis
from flask import Flask
from sqlalchemy import select

from casehub import create_app, migrate
from casehub.config import ConfigError
from casehub.db import get_db
from casehub.models import AuditEvent
from tests.helpers import referral_body
from tests.live_server import casehub_json, free_port, fresh_database, gunicorn, server_environment
from tests.oauth_support import basic
from tests.windows import clear_of_a_window_edge

REDIS_URL = "redis://127.0.0.1:6379/0"
POLICY = re.compile(r'^"(?P<name>[a-z-]+)";q=(?P<q>\d+);w=(?P<w>\d+)$')
STATE = re.compile(r'^"(?P<name>[a-z-]+)";r=(?P<r>\d+);t=(?P<t>\d+)$')

SEEN: Counter[str] = Counter()


@pytest.fixture
def limits(app: Flask) -> Iterator[dict[str, Any]]:
    """Set some of the app's limits for one test, on an empty store; restored afterwards."""
    limiter = app.extensions["casehub.limiter"]
    saved = dict(app.config)
    limiter.reset()
    clear_of_a_window_edge()
    yield app.config
    limiter.reset()
    app.config.update(saved)


@pytest.fixture(autouse=True)
def figures(record_property: Any) -> Iterator[None]:
    before = Counter(SEEN)
    yield
    record_property("figures", ("rate limits", dict(Counter(SEEN) - before)))


def _expect_429(response: Any) -> None:
    SEEN["429 expected"] += 1
    assert response.status_code == 429, response.get_data(as_text=True)
    SEEN["429 seen"] += 1
    assert response.mimetype == "application/problem+json"
    assert int(response.headers["Retry-After"]) >= 1
    assert POLICY.match(response.headers["RateLimit-Policy"].split(", ")[0])
    assert STATE.match(response.headers["RateLimit"].split(", ")[0])


def _denied(db_session: Any, action: str = "rate.limited") -> list[AuditEvent]:
    return list(
        db_session.scalars(
            select(AuditEvent).where(AuditEvent.action == action, AuditEvent.outcome == "denied")
        )
    )


def test_a_client_that_spends_its_read_budget_gets_429_and_others_do_not(
    client, db_session, factory, limits
):
    limits["RATE_LIMIT_READ"] = "3/minute"
    btp = factory.partner("btp")
    other = factory.partner("nottingham-cs", kind="local_authority")
    headers = btp.headers()
    states = []
    for _ in range(3):
        response = client.get("/v1/referrals", headers=headers)
        assert response.status_code == 200
        assert POLICY.match(response.headers["RateLimit-Policy"]).group("q") == "3"
        states.append(STATE.match(response.headers["RateLimit"]))
    assert [int(s.group("r")) for s in states] == [2, 1, 0]
    assert {s.group("name") for s in states} == {"read"}

    refused = client.get("/v1/referrals", headers=headers)
    _expect_429(refused)
    assert refused.get_json()["status"] == 429
    assert "read rate limit" in refused.get_json()["detail"]
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    (event,) = _denied(db_session)
    assert event.actor_client_id == btp.client_id
    assert (event.request_path, event.request_status) == ("/v1/referrals", 429)

    # Another client's budget is its own, and so is this client's write budget.
    assert client.get("/v1/referrals", headers=other.headers()).status_code == 200
    created = client.post("/v1/referrals", json=referral_body(), headers=headers)
    assert created.status_code == 201
    assert STATE.match(created.headers["RateLimit"]).group("name") == "write"


def test_search_and_audit_have_budgets_of_their_own(client, factory, limits):
    limits["RATE_LIMIT_SEARCH"] = "2/minute"
    limits["RATE_LIMIT_AUDIT"] = "1/minute"
    btp = factory.partner("btp")
    headers = btp.headers()
    for _ in range(2):
        assert client.get("/v1/subjects?q=Smith", headers=headers).status_code == 200
    _expect_429(client.get("/v1/subjects?q=Smith", headers=headers))
    assert client.get("/v1/referrals", headers=headers).status_code == 200  # read is separate

    assert client.get("/v1/audit/events", headers=headers).status_code == 200
    refused = client.get("/v1/audit/events/export", headers=headers)
    _expect_429(refused)
    assert refused.headers["RateLimit-Policy"].startswith('"audit";q=1;w=60')


def test_an_idempotent_replay_spends_the_budget_like_any_request(client, factory, limits):
    limits["RATE_LIMIT_WRITE"] = "2/minute"
    btp = factory.partner("btp")
    headers = btp.headers(**{"Idempotency-Key": "rate-1"})
    body = referral_body()
    assert client.post("/v1/referrals", json=body, headers=headers).status_code == 201
    replay = client.post("/v1/referrals", json=body, headers=headers)
    assert replay.status_code == 201
    assert replay.headers["Idempotent-Replayed"] == "true"
    _expect_429(client.post("/v1/referrals", json=body, headers=headers))


def test_failed_client_authentication_is_throttled_per_client_id(
    client, db_session, factory, limits
):
    limits["RATE_LIMIT_AUTH_FAILURES"] = "3/minute"
    btp = factory.partner("btp")
    wrong = {"Authorization": basic(btp.client_id, "chs_wrong")}
    form = {"grant_type": "client_credentials"}
    for _ in range(3):
        assert client.post("/oauth/token", data=form, headers=wrong).status_code == 401
    failures = len(_denied(db_session, "auth.client_failed"))
    assert failures == 3

    # Spent: even the right secret is refused now, without being checked at all.
    refused = client.post("/oauth/token", data=form, headers={"Authorization": btp.basic()})
    _expect_429(refused)
    assert "failed client authentications" in refused.get_json()["detail"]
    assert refused.headers["RateLimit-Policy"].startswith('"client-auth";q=3;w=60')
    assert len(_denied(db_session, "auth.client_failed")) == failures
    assert len(_denied(db_session)) == 1

    # Other clients at the same address are not locked out by this one's failures.
    other = factory.partner("nottingham-cs", kind="local_authority")
    assert (
        client.post(
            "/oauth/introspect", data={"token": "x"}, headers={"Authorization": other.basic()}
        ).status_code
        == 200
    )
    assert other.token()


def test_failed_client_authentication_is_throttled_per_address(client, factory, limits):
    limits["RATE_LIMIT_AUTH_FAILURES_ADDRESS"] = "4/minute"
    form = {"grant_type": "client_credentials"}
    attacker = {"REMOTE_ADDR": "203.0.113.9"}
    for n in range(4):
        response = client.post(
            "/oauth/token",
            data=form,
            headers={"Authorization": basic(f"chc_guess{n}", "chs_guess")},
            environ_base=attacker,
        )
        assert response.status_code == 401
    refused = client.post(
        "/oauth/token",
        data=form,
        headers={"Authorization": basic("chc_guess9", "chs_guess")},
        environ_base=attacker,
    )
    _expect_429(refused)
    assert '"address-auth";q=4;w=60' in refused.headers["RateLimit-Policy"]
    # A partner elsewhere is unaffected.
    btp = factory.partner("btp")
    assert btp.token()


def test_successful_token_requests_spend_no_failure_budget(client, factory, limits):
    limits["RATE_LIMIT_AUTH_FAILURES"] = "2/minute"
    btp = factory.partner("btp")
    for _ in range(5):
        assert btp.token()


def test_probes_are_never_limited_and_public_routes_are_limited_per_address(client, limits):
    limits["RATE_LIMIT_PUBLIC"] = "2/minute"
    for _ in range(5):
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 200
    assert client.get("/.well-known/jwks.json").status_code == 200
    assert client.get("/openapi.json").status_code == 200
    _expect_429(client.get("/.well-known/jwks.json"))
    elsewhere = client.get("/.well-known/jwks.json", environ_base={"REMOTE_ADDR": "198.51.100.4"})
    assert elsewhere.status_code == 200


def test_every_operation_documents_its_limit(app):
    spec = app.extensions["casehub.api"].spec.to_dict()
    assert {"RATE_LIMIT", "RATE_LIMIT_POLICY", "RETRY_AFTER"} <= set(spec["components"]["headers"])
    classes: Counter[str] = Counter()
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            if operation["operationId"] in ("getHealth", "getReadiness"):
                assert "429" not in operation["responses"]
                continue
            rate_class = operation["x-rate-limit-class"]
            classes[rate_class] += 1
            refused = operation["responses"]["429"]
            assert set(refused["headers"]) >= {"Retry-After", "RateLimit", "RateLimit-Policy"}
            for status, response in operation["responses"].items():
                if status.startswith("2"):
                    assert "RateLimit" in response["headers"], (method, path)
    assert spec["paths"]["/v1/subjects"]["get"]["x-rate-limit-class"] == "search"
    assert spec["paths"]["/oauth/token"]["post"]["x-rate-limit-class"] == "client-auth"
    assert spec["paths"]["/v1/matches"]["post"]["x-rate-limit-class"] == "match"
    assert set(classes) == {"read", "write", "search", "match", "audit", "public", "client-auth"}


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("RATE_LIMIT_READ", "lots"),
        ("RATE_LIMIT_WRITE", "1/minute;2/hour"),
        ("RATE_LIMIT_MATCH", "often"),
        ("RATE_LIMIT_STORAGE", "mongodb://x"),
    ],
)
def test_a_limit_that_is_not_a_limit_refuses_to_start(setting, value):
    with pytest.raises(ConfigError, match=f"CASEHUB_{setting}"):
        create_app({setting: value})


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({}, "RATE_LIMIT_STORAGE"),
        ({"RATE_LIMITS_ENABLED": False, "RATE_LIMIT_STORAGE": REDIS_URL}, "RATE_LIMITS_ENABLED"),
    ],
)
def test_production_refuses_per_process_counters_or_no_limits(tmp_path, settings, named):
    with pytest.raises(ConfigError, match=named):
        create_app(
            {
                "ENV": "production",
                "DATABASE_URL": f"sqlite:///{tmp_path}/x.db",
                "ISSUER": "https://casehub.example",
                "SIGNING_KEYS_FILE": str(tmp_path / "keys.json"),
                "WEBHOOK_KEY_FILE": str(tmp_path / "webhook-key"),
                **settings,
            }
        )


def test_an_unreachable_redis_still_limits_in_each_process(tmp_path):
    """Redis down: the limiter falls back to counters in the process, rather than refuse every
    request or wave every request through."""
    app = create_app(
        {
            "DATABASE_URL": f"sqlite:///{tmp_path}/fallback.db",
            "ISSUER": "http://casehub.test",
            "SIGNING_KEYS_FILE": str(tmp_path / "keys.json"),
            "RATE_LIMIT_STORAGE": "redis://127.0.0.1:1/0",  # nothing listens there
            "RATE_LIMIT_PUBLIC": "2/minute",
            "AUDIT_SEQUENCER": False,
        }
    )
    migrate.upgrade(get_db(app).engine)
    http = app.test_client()
    assert http.get("/.well-known/jwks.json").status_code == 200
    assert http.get("/.well-known/jwks.json").status_code == 200
    _expect_429(http.get("/.well-known/jwks.json"))
    get_db(app).engine.dispose()


def test_in_process_counters_start_no_thread_per_request_and_sweep_what_expired(monkeypatch):
    """limits' MemoryStorage starts a Timer thread whenever none is alive (on almost every hit
    at a service's pace); casehub's in-process counters sweep inline instead."""
    from limits import parse
    from limits.strategies import SlidingWindowCounterRateLimiter

    from casehub.limits import _InProcessStorage

    storage = _InProcessStorage()
    started: list[object] = []
    monkeypatch.setattr(threading.Timer, "start", lambda timer: started.append(timer))
    counters = SlidingWindowCounterRateLimiter(storage)
    item = parse("1000/minute")
    for _ in range(50):
        assert counters.hit(item, "client:x", "read")
    assert started == []
    assert counters.get_window_stats(item, "client:x", "read").remaining == 950

    storage.incr("gone", 0.001)
    time.sleep(0.01)
    storage._swept = float("-inf")  # a second has passed since the last sweep
    assert counters.hit(item, "client:x", "read")
    assert "gone" not in storage.storage
    assert started == []


# -- many processes, one budget ----------------------------------------------------------------
def _redis_or_skip() -> redis.Redis:
    connection = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
    try:
        connection.ping()
    except redis.RedisError:
        if os.environ.get("CI"):  # CI has Redis at 127.0.0.1:6379: its absence is a failure
            raise
        pytest.skip("no Redis at 127.0.0.1:6379")
    return connection


def test_two_gunicorn_workers_share_one_budget_through_redis(tmp_path):
    store = _redis_or_skip()
    prefix = f"casehub-test-{uuid.uuid4().hex[:12]}"
    budget = 12
    with fresh_database(tmp_path, "ratelimit") as url:
        env = server_environment(tmp_path, url, free_port())
        env.update(
            {
                "CASEHUB_RATE_LIMIT_STORAGE": REDIS_URL,
                "CASEHUB_RATE_LIMIT_KEY_PREFIX": prefix,
                "CASEHUB_RATE_LIMIT_READ": f"{budget}/minute",
                "CASEHUB_WORKERS": "2",
                "CASEHUB_THREADS": "1",
            }
        )
        from tests.live_server import casehub

        casehub(env, ["db", "upgrade"])
        casehub(env, ["agencies", "add", "btp", "--name", "BTP", "--kind", "police"])
        (registered,) = casehub_json(
            env,
            [
                "clients",
                "add",
                "--agency",
                "btp",
                "--name",
                "BTP case system",
                "--scopes",
                "referrals:read",
                "--json",
            ],
        )
        try:
            with gunicorn(env, tmp_path) as server:
                token = httpx.post(
                    server.token_url,
                    data={"grant_type": "client_credentials", "scope": "referrals:read"},
                    auth=(registered["client_id"], registered["client_secret"]),
                    timeout=10,
                ).json()["access_token"]
                _until_both_workers_answer(server)
                statuses: Counter[int] = Counter()

                def call(n: int) -> httpx.Response:
                    # A new connection each time, several at once: both workers must accept.
                    return httpx.get(
                        f"{server.base_url}/v1/referrals",
                        headers={"Authorization": f"Bearer {token}", "X-Request-Id": f"rl-{n}"},
                        timeout=10,
                    )

                clear_of_a_window_edge()
                with ThreadPoolExecutor(4) as pool:
                    responses = list(pool.map(call, range(budget + 8)))
                for response in responses:
                    statuses[response.status_code] += 1
                    if response.status_code == 429:
                        SEEN["429 expected"] += 1
                        SEEN["429 seen"] += 1
                        assert int(response.headers["Retry-After"]) >= 1
                time.sleep(0.3)  # the access log is written after the response
                workers = _workers_that_served(server.log.read_text(), "rl-")
        finally:
            for key in store.scan_iter(f"*{prefix}*"):
                store.delete(key)
    assert statuses == {200: budget, 429: 8}, statuses
    assert len(workers) == 2, f"one worker served everything: {workers}"


def _until_both_workers_answer(server: Any) -> None:
    """/readyz answered once one worker was up; the other may still be importing the app.
    Unlimited probes, several at once, until the access log shows both workers serving."""
    deadline = time.monotonic() + 30
    round_ = 0
    while time.monotonic() < deadline:
        round_ += 1
        with ThreadPoolExecutor(6) as pool:
            list(
                pool.map(
                    lambda n: httpx.get(
                        f"{server.base_url}/healthz",
                        headers={"X-Request-Id": f"warm-{n}"},
                        timeout=10,
                    ),
                    range(round_ * 6, round_ * 6 + 6),
                )
            )
        time.sleep(0.2)
        if len(_workers_that_served(server.log.read_text(), "warm-")) == 2:
            return
    raise AssertionError(f"the second worker never answered:\n{server.log_tail()}")


def _workers_that_served(log: str, request_prefix: str) -> set[str]:
    """The worker pids in the access log's lines for these requests (text or JSON lines)."""
    workers = set()
    for line in log.splitlines():
        if request_prefix not in line:
            continue
        try:
            entry = json.loads(line[line.index("{") :])
        except ValueError:
            found = re.search(r"worker=<?(\d+)", line)
            if found:
                workers.add(found.group(1))
            continue
        if isinstance(entry, dict) and entry.get("worker"):
            workers.add(str(entry["worker"]))
    return workers


def test_commands_serve_nothing_so_production_does_not_ask_them_for_redis(tmp_path, monkeypatch):
    """A migration Job or an offline key rotation holds no Redis credentials it never uses."""
    from click.testing import CliRunner

    from casehub.cli import main

    for name, value in {
        "ENV": "production",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'prod.db'}",
        "ISSUER": "https://casehub.example",
        "SIGNING_KEYS_FILE": str(tmp_path / "keys.json"),
        "WEBHOOK_KEY_FILE": str(tmp_path / "webhook-key"),
        "AUDIT_SEQUENCER": "0",
    }.items():
        monkeypatch.setenv(f"CASEHUB_{name}", value)
    for command in (["db", "upgrade"], ["keys", "rotate"]):
        result = CliRunner().invoke(main, command)
        assert result.exit_code == 0, result.output
    with pytest.raises(ConfigError, match="RATE_LIMIT_STORAGE"):
        create_app()  # the serving app still refuses
