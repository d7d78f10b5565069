"""Every route is either in the short public list or refuses callers without a valid token."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

from flask import Flask
from flask.testing import FlaskClient
from werkzeug.routing import Rule
from werkzeug.routing.converters import NumberConverter

from casehub.auth.scopes import SCOPES
from casehub.web import endpoint_policy

IGNORED_METHODS = {"HEAD", "OPTIONS"}

# The whole token-less surface of the service. Adding to it is a security decision: do it here,
# on purpose, in the same change that adds the route.
PUBLIC = {
    ("GET", "/.well-known/oauth-authorization-server"),
    ("GET", "/.well-known/jwks.json"),
    ("POST", "/oauth/token"),
    ("POST", "/oauth/introspect"),
    ("POST", "/oauth/revoke"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
    ("GET", "/docs/assets/<path:filename>"),
}

BAD_CREDENTIALS = {
    "no Authorization header": {},
    "a bearer token that is not a JWT": {"Authorization": "Bearer not-a-token"},
    "a well-formed but unsigned JWT": {
        # {"alg":"none","typ":"at+jwt"}.{"sub":"x","scope":"admin"}.
        "Authorization": "Bearer eyJhbGciOiJub25lIiwidHlwIjoiYXQrand0In0"
        ".eyJzdWIiOiJ4Iiwic2NvcGUiOiJhZG1pbiJ9."
    },
}


def routes(app: Flask) -> Iterator[tuple[str, Rule]]:
    for rule in app.url_map.iter_rules():
        for method in sorted((rule.methods or set()) - IGNORED_METHODS):
            yield method, rule


def concrete_path(app: Flask, rule: Rule, method: str) -> str:
    """The rule with every path parameter filled in (a fresh UUID, or 1 for numbers)."""
    converters = getattr(rule, "_converters", {})
    values: dict[str, object] = {
        name: 1 if isinstance(converters.get(name), NumberConverter) else str(uuid.uuid4())
        for name in rule.arguments
    }
    adapter = app.url_map.bind("localhost")
    path = adapter.build(rule.endpoint, values, method=method)
    matched, _ = adapter.match(path, method=method)
    assert matched == rule.endpoint, f"{path} routes to {matched}, not {rule.endpoint}"
    return path


def test_public_routes_are_exactly_the_expected_ones(app: Flask) -> None:
    public = {
        (method, rule.rule)
        for method, rule in routes(app)
        if endpoint_policy(app, rule.endpoint, method)[0] == "public"
    }
    assert public == PUBLIC, (
        f"unexpectedly public: {sorted(public - PUBLIC)}; "
        f"expected public but not: {sorted(PUBLIC - public)}"
    )


def test_every_other_route_declares_a_known_scope(app: Flask) -> None:
    problems = []
    for method, rule in routes(app):
        kind, accepted = endpoint_policy(app, rule.endpoint, method)
        if kind == "public":
            continue
        if kind != "scope":
            problems.append(f"{method} {rule.rule}: no scope declared (@blp.requires)")
        for scope in accepted or ():
            if scope not in SCOPES:
                problems.append(f"{method} {rule.rule}: unknown scope {scope!r}")
    assert not problems, "\n".join(problems)


def test_every_other_route_refuses_requests_without_a_valid_token(
    app: Flask, client: FlaskClient
) -> None:
    checked = 0
    problems = []
    for method, rule in routes(app):
        if endpoint_policy(app, rule.endpoint, method)[0] == "public":
            continue
        path = concrete_path(app, rule, method)
        for label, headers in BAD_CREDENTIALS.items():
            response = client.open(path, method=method, headers=headers)
            challenge = response.headers.get("WWW-Authenticate", "")
            body = response.get_json(silent=True) or {}
            if (
                response.status_code != 401
                or not challenge.startswith("Bearer ")
                or 'error="invalid_token"' not in challenge
                or response.mimetype != "application/problem+json"
                or body.get("status") != 401
            ):
                problems.append(
                    f"{method} {path} with {label}: {response.status_code} "
                    f"{response.mimetype} WWW-Authenticate={challenge!r}"
                )
            checked += 1
    assert not problems, "\n".join(problems)
    assert checked >= len(BAD_CREDENTIALS), "no protected route was found at all"


def test_public_routes_answer_without_a_token(app: Flask, client: FlaskClient) -> None:
    # Parameterised public routes (the docs assets) are exercised in test_ops.py.
    for method, rule in routes(app):
        if (method, rule.rule) in PUBLIC and method == "GET" and not rule.arguments:
            response = client.get(rule.rule)
            assert response.status_code == 200, f"{rule.rule}: {response.status_code}"
