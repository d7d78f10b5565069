"""Rate limits (flask-limiter): a budget per client and route class, shared by every process.

Each authenticated request spends one unit of its client's budget for the route's class —
`read` (GET), `write` (POST, PUT, PATCH, DELETE), `search` (subject search) or `audit` (audit
queries and exports), as a view declares with `Blueprint.rate_class` or by its method. Requests
without a token (discovery, keys, docs) spend their address's `public` budget. The OAuth
endpoints are not budgeted by use but by failure: every failed client authentication spends one
unit of the claimed client id's budget and one of the address's, and while either is spent the
endpoint answers 429 without checking any secret. Liveness and readiness are never limited.

The counters live in `CASEHUB_RATE_LIMIT_STORAGE`: `memory://` (one process: the demo) or
`redis://host:6379/0`, which every API process behind the load balancer shares. Answers carry
`RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers) and a 429 also
`Retry-After`. A refused request is audited (`rate.limited`, denied) like every refusal.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from typing import Any

from flask import Flask, Response, current_app, g, request
from flask_limiter import Limit, Limiter, RequestLimit
from flask_limiter.errors import RateLimitExceeded
from limits import parse_many

from casehub.errors import problem

# Route classes and the setting that holds each one's limit (a flask-limiter limit string).
CLASSES: dict[str, str] = {
    "read": "RATE_LIMIT_READ",
    "write": "RATE_LIMIT_WRITE",
    "search": "RATE_LIMIT_SEARCH",
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
    """The class of the current request's route: declared on the view, else by method. Asked
    several times per request by the limiter (limit, scope, exemptions), so worked out once."""
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


def _not_budgeted() -> bool:
    return route_class() in (UNLIMITED, CLIENT_AUTH)


def _not_client_auth() -> bool:
    return route_class() != CLIENT_AUTH


def _failed_client_auth(response: Response) -> bool:
    return response.status_code == 401


def _setting(key: str) -> Callable[[], str]:
    return lambda: str(current_app.config[key])


def _class_limit() -> str:
    setting = CLASSES.get(route_class())
    return str(current_app.config[setting]) if setting else ""  # "": no limit (exempt routes)


def _policy_name(limit: RequestLimit) -> str:
    return str(limit.request_args[-1])  # [prefix,] key, scope: shared limits' scope is the name


def _fields(limit: RequestLimit) -> tuple[str, str]:
    """This limit's RateLimit-Policy and RateLimit items (quota q per window w seconds;
    r remaining, t seconds until a unit is free again)."""
    name = _policy_name(limit)
    window = limit.limit.get_expiry()
    reset = max(0, math.ceil(limit.reset_at - time.time()))
    remaining = max(0, limit.remaining)
    return (
        f'"{name}";q={limit.limit.amount};w={window}',
        f'"{name}";r={remaining};t={min(reset, window)}',
    )


def _headers(limits: list[RequestLimit]) -> dict[str, str]:
    policies, states = [], []
    for limit in limits:
        policy, state = _fields(limit)
        policies.append(policy)
        states.append(state)
    if not policies:
        return {}
    return {"RateLimit-Policy": ", ".join(policies), "RateLimit": ", ".join(states)}


def _add_headers(response: Response) -> Response:
    limiter: Limiter | None = current_app.extensions.get("casehub.limiter")
    if limiter is None or response.status_code == 429:
        return response
    try:
        for name, value in _headers(limiter.current_limits).items():
            response.headers[name] = value
    except Exception:  # the storage went away after the check: the answer stands without them
        limiter.logger.warning("rate limit headers unavailable", exc_info=True)
    return response


def too_many_requests(error: RateLimitExceeded) -> Response:
    """429 problem+json with Retry-After (whole seconds until the budget has room again)."""
    from casehub import web

    limiter: Limiter = current_app.extensions["casehub.limiter"]
    breached = [limit for limit in limiter.current_limits if limit.breached] or (
        [limiter.current_limit] if limiter.current_limit else []
    )
    now = time.time()
    retry_after = max(
        [1, *(min(math.ceil(limit.reset_at - now), limit.limit.get_expiry()) for limit in breached)]
    )
    headers = {"Retry-After": str(retry_after), **_headers(breached)}
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
    storage = str(app.config["RATE_LIMIT_STORAGE"])
    limiter = Limiter(
        _caller,
        default_limits=[
            Limit(
                _class_limit,
                key_function=_caller,
                scope=lambda _: route_class(),
                shared=True,
                exempt_when=_not_budgeted,
            ),
            Limit(
                _setting(CLIENT_AUTH_FAILURES),
                key_function=_claimed_client,
                scope=FAILURE_POLICY[CLIENT_AUTH_FAILURES],
                shared=True,
                exempt_when=_not_client_auth,
                deduct_when=_failed_client_auth,
            ),
            Limit(
                _setting(ADDRESS_AUTH_FAILURES),
                key_function=_address,
                scope=FAILURE_POLICY[ADDRESS_AUTH_FAILURES],
                shared=True,
                exempt_when=_not_client_auth,
                deduct_when=_failed_client_auth,
            ),
        ],
        storage_uri=storage,
        storage_options=(
            {"socket_connect_timeout": 0.5, "socket_timeout": 0.5}
            if storage.startswith(("redis", "rediss"))
            else {}
        ),
        strategy="sliding-window-counter",
        key_prefix=app.config["RATE_LIMIT_KEY_PREFIX"],
        headers_enabled=False,  # casehub writes the IETF headers itself (_add_headers)
        # Redis unreachable: keep limiting, per process, rather than refuse or wave through.
        in_memory_fallback_enabled=True,
        swallow_errors=True,
    )
    limiter.init_app(app)
    app.extensions["casehub.limiter"] = limiter
    app.after_request(_add_headers)
    app.register_error_handler(RateLimitExceeded, too_many_requests)
    return limiter
