"""Rate limits: a budget per client and route class, shared by every process.

Each authenticated request spends one unit of its client's budget for the route's class —
`read` (GET), `write` (POST, PUT, PATCH, DELETE), `search` (subject search), `match`
(existence-only matching, CONTRACT §9) or `audit` (audit queries and exports), as a view
declares with `Blueprint.rate_class` or by its method. Requests without a token (discovery,
keys, docs) spend their address's `public` budget. The OAuth
endpoints are not budgeted by use but by failure: every failed client authentication spends one
unit of the claimed client id's budget and one of the address's, and while either is spent the
endpoint answers 429 without checking any secret. Liveness and readiness are never limited.

The counters live in `CASEHUB_RATE_LIMIT_STORAGE`: `memory://` (one process: the demo) or
`redis://host:6379/0`, which every API process behind the load balancer shares. Answers carry
`RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers) and a 429 also
`Retry-After`. A refused request is audited (`rate.limited`, denied) like every refusal.

The `limits` library counts (a sliding window counter per client, class and window), called
here directly: flask-limiter, which drives it for most Flask apps, resolved every limit of every
request through its decorators and callables, about a seventh of an audited read's CPU. A
request here works out its route class once and spends one counter (the OAuth endpoints test
two, and spend them only on failure).
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any

from flask import Flask, Response, current_app, g, request
from limits import RateLimitItem, parse, parse_many
from limits.storage import MemoryStorage, Storage, storage_from_string
from limits.strategies import SlidingWindowCounterRateLimiter

from casehub.errors import problem

log = logging.getLogger("casehub.limits")

# Route classes and the setting that holds each one's limit (a limit string: "600/minute").
CLASSES: dict[str, str] = {
    "read": "RATE_LIMIT_READ",
    "write": "RATE_LIMIT_WRITE",
    "search": "RATE_LIMIT_SEARCH",
    "match": "RATE_LIMIT_MATCH",
    "audit": "RATE_LIMIT_AUDIT",
    "public": "RATE_LIMIT_PUBLIC",
}
CLIENT_AUTH_FAILURES = "RATE_LIMIT_AUTH_FAILURES"
ADDRESS_AUTH_FAILURES = "RATE_LIMIT_AUTH_FAILURES_ADDRESS"
SETTINGS = (*CLASSES.values(), CLIENT_AUTH_FAILURES, ADDRESS_AUTH_FAILURES)

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
CLIENT_AUTH = "client-auth"  # the OAuth endpoints: budgeted by failed client authentication
UNLIMITED = "none"  # liveness and readiness: an orchestrator calls them every few seconds

FAILURE_POLICY = {CLIENT_AUTH_FAILURES: "client-auth", ADDRESS_AUTH_FAILURES: "address-auth"}

# While the shared store is unreachable, try it again after 1, 2, 4 … 32 seconds, then anew.
RECHECK_BACKOFF_STEPS = 5
INPROCESS_SWEEP_SECONDS = 1.0


def check_settings(settings: dict[str, Any]) -> list[str]:
    """The names of rate-limit settings that are not limit strings ("600/minute")."""
    bad = []
    for key in SETTINGS:
        try:
            parsed = parse_many(str(settings[key]))
        except ValueError:
            parsed = []
        if len(parsed) != 1:
            bad.append(f"CASEHUB_{key}")
    return bad


def route_class() -> str:
    """The class of the current request's route: declared on the view, else by method; worked
    out once per request (the limit, its headers and a 429's detail all ask)."""
    cached = g.get("casehub_rate_class")
    if cached is not None:
        return str(cached)
    from casehub.web import _view_target

    target = _view_target(current_app, request.endpoint, request.method)
    declared = getattr(target, "_casehub_rate_class", None)
    if declared:
        found = str(declared)
    elif g.get("actor") is None:
        found = "public"
    else:
        found = "write" if request.method in WRITE_METHODS else "read"
    g.casehub_rate_class = found
    return found


def _address() -> str:
    return f"address:{request.remote_addr or 'unknown'}"


def _caller() -> str:
    actor = g.get("actor")
    return f"client:{actor.client_id}" if actor is not None else _address()


def _claimed_client() -> str:
    """The client id a caller of an OAuth endpoint claims, hashed: it is whatever an attacker
    typed, and stays out of Redis keys and logs as such."""
    from casehub.auth.server import _claimed_client_id

    claimed = _claimed_client_id(request) or ""
    return "client:" + hashlib.sha256(claimed.encode()).hexdigest()[:32]


class _InProcessStorage(MemoryStorage):
    """limits' memory storage without its expiry thread: MemoryStorage starts a Timer thread
    whenever none is alive, which at this service's pace is on almost every hit. Counters are
    read with their expiry checked either way; the sweep of expired ones (a sliding window
    leaves one key per client and window behind) runs here inline, at most once a second."""

    def __init__(self) -> None:
        super().__init__()  # starts one 10 ms Timer, once
        self._swept = time.monotonic()
        self._sweep_lock = threading.Lock()

    def _MemoryStorage__schedule_expiry(self) -> None:  # overrides MemoryStorage.__schedule_expiry
        now = time.monotonic()
        if now - self._swept < INPROCESS_SWEEP_SECONDS or not self._sweep_lock.acquire(False):
            return
        try:
            self._swept = now
            self._MemoryStorage__expire_events()  # type: ignore[attr-defined]
        finally:
            self._sweep_lock.release()


# The failure budgets of the OAuth endpoints, in the order they are tested.
FAILURE_KEYS = ((CLIENT_AUTH_FAILURES, _claimed_client), (ADDRESS_AUTH_FAILURES, _address))


def _storage(uri: str) -> Storage:
    if uri.startswith("memory://"):
        return _InProcessStorage()
    if uri.startswith(("redis", "rediss")):
        return storage_from_string(uri, socket_connect_timeout=0.5, socket_timeout=0.5)
    return storage_from_string(uri)


@dataclass
class Spent:
    """One limit a request counted against: its policy name (the class, or the failure
    budget), its item and its counter's identifiers."""

    name: str
    item: RateLimitItem
    identifiers: tuple[str, ...]
    breached: bool = False


class RateLimited(Exception):  # a refusal, rendered as 429, not a fault
    def __init__(self, breached: Spent) -> None:
        super().__init__(breached.name)
        self.breached = breached


class Limiter:
    """The counters of one app: the configured store and, for while it is unreachable, counters
    in this process (rather than refuse every request or wave every one through)."""

    def __init__(self, storage_uri: str, key_prefix: str) -> None:
        self.storage = _storage(storage_uri)
        self.counters = SlidingWindowCounterRateLimiter(self.storage)
        self.fallback = SlidingWindowCounterRateLimiter(_InProcessStorage())
        self.key_prefix = key_prefix
        self.storage_dead = False
        self._last_recheck = 0.0
        self._rechecks = 0
        self._items: dict[str, RateLimitItem] = {}

    @property
    def strategy(self) -> SlidingWindowCounterRateLimiter:
        return self.fallback if self.storage_dead else self.counters

    def reset(self) -> None:
        """Forget every counter (tests)."""
        self.storage.reset()
        self.fallback.storage.reset()

    def item(self, setting: str) -> RateLimitItem:
        """The limit a setting holds now (read per request: tests change it at run time)."""
        text = str(current_app.config[setting])
        found = self._items.get(text)
        if found is None:
            found = self._items[text] = parse(text)
        return found

    def _spent(self, name: str, setting: str, key: str) -> Spent:
        identifiers = (self.key_prefix, key, name) if self.key_prefix else (key, name)
        return Spent(name, self.item(setting), identifiers)

    def _store_is_back(self) -> bool:
        if self._rechecks > RECHECK_BACKOFF_STEPS:
            self._rechecks = 0
        if time.time() - self._last_recheck <= 2**self._rechecks:
            return False
        self._last_recheck = time.time()
        self._rechecks += 1
        return bool(self.storage.check())

    def check_request(self) -> None:
        """before_request: spend (or, for the OAuth endpoints, test) this request's budget;
        raise RateLimited when it is spent."""
        if not request.endpoint:
            return  # routes nowhere: 404 or 405 without spending anything
        rate_class = route_class()
        if rate_class == UNLIMITED:
            return
        if rate_class == CLIENT_AUTH:
            spent = [
                self._spent(FAILURE_POLICY[setting], setting, key())
                for setting, key in FAILURE_KEYS
            ]
        else:
            setting = CLASSES.get(rate_class)
            if setting is None:
                return
            spent = [self._spent(rate_class, setting, _caller())]
        g.casehub_rate_limits = spent
        if self.storage_dead and self._store_is_back():
            log.info("rate limit storage recovered")
            self.storage_dead = False
            self._rechecks = 0
        for _attempt in range(2):
            try:
                self._evaluate(spent, deduct=rate_class != CLIENT_AUTH)
                return
            except RateLimited:
                raise
            except Exception:
                if self.storage_dead:
                    log.exception("rate limiting failed; the request is not limited")
                    return
                log.warning("rate limit storage unreachable - falling back to in-process counters")
                self.storage_dead = True

    def _evaluate(self, spent: list[Spent], *, deduct: bool) -> None:
        strategy = self.strategy
        for limit in spent:
            allowed = (strategy.hit if deduct else strategy.test)(limit.item, *limit.identifiers)
            if not allowed:
                limit.breached = True
                raise RateLimited(limit)

    def finish_request(self, response: Response) -> Response:
        """after_request: the IETF headers (not on a 429, which has its own), then a failed
        client authentication spends the failure budgets it was tested against."""
        spent: list[Spent] = g.get("casehub_rate_limits") or []
        if not spent:
            return response
        if response.status_code != 429:
            try:
                for name, value in self.headers(spent).items():
                    response.headers[name] = value
            except Exception:  # the storage went away after the check: the answer stands
                log.warning("rate limit headers unavailable", exc_info=True)
        if response.status_code == 401 and route_class() == CLIENT_AUTH:
            try:
                for limit in spent:
                    self.strategy.hit(limit.item, *limit.identifiers)
            except Exception:
                log.exception("failed client authentication not counted")
        return response

    def _fields(self, limit: Spent) -> tuple[str, str, int]:
        """This limit's RateLimit-Policy and RateLimit items (quota q per window w seconds;
        r remaining, t seconds until a unit is free again) and that t."""
        window = limit.item.get_expiry()
        stats = self.strategy.get_window_stats(limit.item, *limit.identifiers)
        reset = min(max(0, math.ceil(int(stats.reset_time + 1) - time.time())), window)
        return (
            f'"{limit.name}";q={limit.item.amount};w={window}',
            f'"{limit.name}";r={max(0, stats.remaining)};t={reset}',
            reset,
        )

    def headers(self, spent: list[Spent]) -> dict[str, str]:
        fields = [self._fields(limit) for limit in spent]
        return {
            "RateLimit-Policy": ", ".join(f[0] for f in fields),
            "RateLimit": ", ".join(f[1] for f in fields),
        }

    def retry_after(self, limit: Spent) -> int:
        """Whole seconds until the budget has room again (at least 1)."""
        return max(1, self._fields(limit)[2])


def too_many_requests(error: RateLimited) -> Response:
    """429 problem+json with Retry-After (whole seconds until the budget has room again)."""
    from casehub import web

    limiter: Limiter = current_app.extensions["casehub.limiter"]
    retry_after = limiter.retry_after(error.breached)
    headers = {"Retry-After": str(retry_after), **limiter.headers([error.breached])}
    if route_class() == CLIENT_AUTH:
        detail = (
            "Too many failed client authentications from this client id or address; "
            f"retry after {retry_after} s."
        )
    else:
        detail = f"This client's {route_class()} rate limit is spent; retry after {retry_after} s."
    web._audit_refusal(g.get("actor"), action="rate.limited")
    return problem(429, detail=detail, headers=headers)


def init_app(app: Flask) -> Limiter | None:
    """Bind a limiter to `app` (after web.py's authorisation, so the caller is known)."""
    if not app.config["RATE_LIMITS_ENABLED"] or not app.config.get("SERVING", True):
        return None
    limiter = Limiter(str(app.config["RATE_LIMIT_STORAGE"]), app.config["RATE_LIMIT_KEY_PREFIX"])
    app.extensions["casehub.limiter"] = limiter
    app.before_request(limiter.check_request)
    app.after_request(limiter.finish_request)
    app.register_error_handler(RateLimited, too_many_requests)
    return limiter
